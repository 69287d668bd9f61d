//! The protocol, tested in-process: every rule of the distribution spec (PROTOCOL.md §1-§4) as
//! requests sent with `tower::ServiceExt::oneshot` to the router of a [`Registry`] built by the
//! library on filesystem storage in a temporary directory, as `registry serve` would build it.
//! (What needs the binary or a real network, such as signals, TLS and real clients, is tested
//! in `registry-cli`.)

use std::convert::Infallible;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use registry_core::{Algorithm, Digest};
use registry_http::{ApiConfig, Registry, RegistryBuilder};
use serde_json::{json, Value};
use tower::ServiceExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A registry on filesystem storage in a temporary directory, and its router.
struct T {
    app: Router,
    dir: tempfile::TempDir,
    configure: fn(RegistryBuilder) -> RegistryBuilder,
}

fn build(dir: &std::path::Path, configure: fn(RegistryBuilder) -> RegistryBuilder) -> Router {
    let location = dir.join("data").to_string_lossy().parse().unwrap();
    configure(Registry::builder(location).request_log(false))
        .build()
        .unwrap()
        .router()
}

impl T {
    fn new() -> T {
        T::with(|b| b)
    }

    fn with(configure: fn(RegistryBuilder) -> RegistryBuilder) -> T {
        let dir = tempfile::tempdir().unwrap();
        T {
            app: build(dir.path(), configure),
            dir,
            configure,
        }
    }

    /// The storage directory.
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new registry on the same storage, as after a restart (or on another node).
    fn restart(&mut self) {
        self.app = build(self.dir.path(), self.configure);
    }

    fn req(&self, method: Method, path: &str) -> Req {
        Req {
            app: self.app.clone(),
            request: Request::builder().method(method).uri(path),
            body: Body::empty(),
        }
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    /// The bytes of a blob, which must be readable.
    async fn blob(&self, repo: &str, digest: &str) -> Bytes {
        let r = self.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), StatusCode::OK, "blob {digest} in {repo}");
        r.bytes().await.unwrap()
    }

    /// Pushes a blob with a single POST; returns its digest.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            )
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        d
    }

    /// Starts an upload session; returns its Location.
    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "range"), "0-0");
        assert!(!header(&r, "docker-upload-uuid").is_empty());
        let loc = header(&r, "location");
        assert!(
            loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")),
            "{loc}"
        );
        loc
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes config + one layer + a manifest tagged `tag`; returns (manifest bytes, digest).
    async fn push_image(&self, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, String) {
        let config = format!(r#"{{"seed":{seed}}}"#).into_bytes();
        let layer = data(1000 + seed as usize, seed);
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let m = manifest(&cd, config.len(), &[(ld, layer.len())], None);
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        (m.clone(), sha256(&m))
    }

    /// Sends `bytes` as PATCH chunks of the given sizes and finishes; returns the digest.
    async fn chunked_push(&self, repo: &str, bytes: &[u8], sizes: &[usize]) -> String {
        let mut location = self.start_upload(repo).await;
        let mut offset = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let r = self
                .req(Method::PATCH, &location)
                .header("content-range", format!("{}-{}", offset, offset + n - 1))
                .body(bytes[offset..offset + n].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED, "chunk {i}");
            location = header(&r, "location");
            offset += n;
        }
        let digest = sha256(bytes);
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .req(Method::PUT, &format!("{location}{sep}digest={digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        digest
    }
}

/// A request being built, in the manner of an HTTP client's builder.
struct Req {
    app: Router,
    request: axum::http::request::Builder,
    body: Body,
}

impl Req {
    fn header(mut self, name: &str, value: impl AsRef<str>) -> Req {
        self.request = self
            .request
            .header(name, HeaderValue::from_str(value.as_ref()).unwrap());
        self
    }

    fn body(mut self, body: impl Into<Body>) -> Req {
        self.body = body.into();
        self
    }

    /// Sends it to the router and reads the whole answer.
    async fn send(self) -> Result<Response, Infallible> {
        let request = self.request.body(self.body).unwrap();
        let response = self.app.oneshot(request).await?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// An answer, read whole.
struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Response {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    async fn bytes(self) -> Result<Bytes, Infallible> {
        Ok(self.body)
    }

    async fn text(self) -> Result<String, Infallible> {
        Ok(String::from_utf8_lossy(&self.body).into_owned())
    }

    async fn json(self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A streamed request body, as a client that does not know the length sends it.
fn streamed<S>(chunks: S) -> Body
where
    S: futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static,
{
    Body::from_stream(chunks)
}

fn sha256(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).to_string()
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `n` PATCH chunk sizes: mostly 1 to 997 bytes, with a chunk of `big` bytes (plus a little)
/// every 2 500.
fn mixed_chunk_sizes(n: usize, big: usize) -> Vec<usize> {
    (0..n)
        .map(|i| match i % 2500 {
            1250 => big + i,
            _ => 1 + (i * 7919) % 997,
        })
        .collect()
}

/// Sends a request given as the text of its head (a path a client would normalize away, a
/// length that the body does not bring); returns `HTTP/1.1 <status>` and the body.
async fn raw_http(t: &T, head: &str) -> String {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let (method, path) = (request_line.next().unwrap(), request_line.next().unwrap());
    let mut req = t.req(method.parse().unwrap(), path);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        req = req.header(name.trim(), value.trim());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    format!("HTTP/1.1 {status}\r\n\r\n{}", r.text().await.unwrap())
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn error_code(r: Response) -> String {
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let body: Value = r.json().await.expect("error body is JSON");
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

async fn expect_error(r: Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status, "expected {code}");
    assert_eq!(error_code(r).await, code);
}

fn manifest(
    config: &str,
    config_size: usize,
    layers: &[(String, usize)],
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(d, n)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}))
        .collect();
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers,
    });
    if let Some((d, n)) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d, "size": n});
    }
    serde_json::to_vec(&m).unwrap()
}

#[tokio::test]
async fn base_check_health_and_version_header() {
    let t = T::new();
    for path in ["/v2/", "/v2"] {
        let r = t.get(path).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(r.text().await.unwrap(), "{}");
    }
    let r = t.req(Method::HEAD, "/v2/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(t.get("/healthz").await.status(), StatusCode::OK);
    expect_error(t.get("/v2/foo").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

#[tokio::test]
async fn monolithic_uploads_and_blob_reads() {
    let t = T::new();
    let bytes = data(100_000, 1);
    let d = sha256(&bytes);
    // Single POST with ?digest=.
    let r = t
        .req(
            Method::POST,
            &format!("/v2/lib/app/blobs/uploads/?digest={d}"),
        )
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/lib/app/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    // POST, then PUT with the body.
    let other = data(5000, 2);
    let od = sha256(&other);
    let loc = t.start_upload("lib/app").await;
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={od}"))
        .header("content-type", "application/octet-stream")
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), od);

    let r = t
        .req(Method::HEAD, &format!("/v2/lib/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "100000");
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    let r = t.get(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    let r = t.get(&format!("/v2/lib/app/blobs/{od}")).await;
    assert_eq!(r.bytes().await.unwrap(), other);
}

#[tokio::test]
async fn range_reads() {
    let t = T::new();
    let bytes = data(1000, 3);
    let d = t.push_blob("r", &bytes).await;
    let path = format!("/v2/r/blobs/{d}");
    for (range, want, content_range) in [
        ("bytes=0-9", &bytes[0..10], "bytes 0-9/1000"),
        ("bytes=990-", &bytes[990..], "bytes 990-999/1000"),
        ("bytes=-5", &bytes[995..], "bytes 995-999/1000"),
        ("bytes=995-5000", &bytes[995..], "bytes 995-999/1000"),
    ] {
        let r = t
            .req(Method::GET, &path)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&r, "content-range"), content_range);
        assert_eq!(r.bytes().await.unwrap(), want);
    }
    let r = t
        .req(Method::GET, &path)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */1000");
    // If-Range (RFC 9110 §13.1.5): the right strong ETag keeps the range; anything else (another
    // tag, a weak one, a date) gets the whole blob with 200.
    let etag = format!("\"{d}\"");
    for (if_range, partial) in [
        (etag.as_str(), true),
        ("\"sha256:0000\"", false),
        (&format!("W/{etag}"), false),
        ("Wed, 21 Oct 2015 07:28:00 GMT", false),
    ] {
        let r = t
            .req(Method::GET, &path)
            .header("range", "bytes=0-9")
            .header("if-range", if_range)
            .send()
            .await
            .unwrap();
        if partial {
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{if_range}");
            assert_eq!(r.bytes().await.unwrap(), &bytes[..10]);
        } else {
            assert_eq!(r.status(), StatusCode::OK, "{if_range}");
            assert!(r.headers().get("content-range").is_none());
            assert_eq!(r.bytes().await.unwrap(), bytes);
        }
    }
}

#[tokio::test]
async fn chunked_upload_rules() {
    let t = T::new();
    let bytes = data(3000, 4);
    let d = sha256(&bytes);
    let loc = t.start_upload("chunks").await;
    let patch = |start: usize, end: usize| {
        t.req(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{}", end - 1))
            .header("content-length", (end - start).to_string())
            .body(bytes[start..end].to_vec())
            .send()
    };
    let r = patch(0, 1000).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-999");
    let loc2 = header(&r, "location");
    assert_eq!(loc2, loc);
    // Repeated and out-of-order chunks: 416 with the current range.
    for (a, b) in [(0, 1000), (1500, 2000)] {
        let r = patch(a, b).await.unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&r, "range"), "0-999");
    }
    let r = t.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-999");
    assert_eq!(header(&r, "location"), loc);
    assert_eq!(
        patch(1000, 2000).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // A malformed Content-Range is refused.
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-range", "bytes=abc")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Last chunk with the PUT.
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .header("content-range", "2000-2999")
        .header("content-type", "application/octet-stream")
        .body(bytes[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/chunks/blobs/{d}"));
    assert_eq!(t.blob("chunks", &d).await, bytes);
    // The session is gone.
    expect_error(
        t.get(&loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let t = T::new();
    let bytes = data(2_000_000, 5);
    let d = sha256(&bytes);
    let loc = t.start_upload("stream").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(65_536).map(|c| Ok(c.to_vec())).collect();
    let r = t
        .req(Method::PATCH, &loc)
        .body(streamed(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-1999999");
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.blob("stream", &d).await, bytes);
}

/// Two PATCHes to one session at once (a client's parallel chunks, a retry racing its
/// original): one is accepted, the other gets 416 with the session's true range, so nothing
/// the client was told is stored can be silently dropped; the client resumes from the range.
#[tokio::test]
async fn concurrent_patches_to_one_session() {
    let t = T::new();
    let loc = t.start_upload("race").await;
    let (a, b) = (data(200_000, 1), data(200_000, 2));
    let slow = |bytes: &Vec<u8>| {
        let chunks: Vec<Vec<u8>> = bytes.chunks(20_000).map(<[u8]>::to_vec).collect();
        streamed(futures::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(c)
        }))
    };
    let (ra, rb) = tokio::join!(
        t.req(Method::PATCH, &loc).body(slow(&a)).send(),
        t.req(Method::PATCH, &loc).body(slow(&b)).send(),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut statuses = [ra.status(), rb.status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::RANGE_NOT_SATISFIABLE]
    );
    for r in [&ra, &rb] {
        assert_eq!(header(r, "range"), "0-199999", "both learn the true range");
    }
    let winner = if ra.status() == StatusCode::ACCEPTED {
        a
    } else {
        b
    };
    let loser = if ra.status() == StatusCode::ACCEPTED {
        rb
    } else {
        ra
    };
    assert_eq!(error_code(loser).await, "RANGE_INVALID");
    let r = t.get(&loc).await;
    assert_eq!(header(&r, "range"), "0-199999");
    let d = sha256(&winner);
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.blob("race", &d).await, winner);
}

/// More than 10 000 PATCH chunks of mixed sizes (S3 allows 10 000 parts per object): small
/// chunks are merged as they arrive, the blob is intact, and no session data is left behind.
#[tokio::test]
async fn ten_thousand_and_one_chunks() {
    let t = T::new();
    let sizes = mixed_chunk_sizes(10_001, 3 * 1024 * 1024);
    let bytes = data(sizes.iter().sum(), 9);
    let d = t.chunked_push("many", &bytes, &sizes).await;
    assert_eq!(t.blob("many", &d).await, bytes);
    let uploads = t.data().join("uploads");
    let left = std::fs::read_dir(&uploads).map_or(0, |d| d.count());
    assert_eq!(left, 0, "session data left in {}", uploads.display());
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_and_cancel_works() {
    let t = T::new();
    let bytes = data(1000, 6);
    let wrong = sha256(b"other");
    let loc = t.start_upload("bad").await;
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={wrong}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [&wrong, &sha256(&bytes)] {
        expect_error(
            t.get(&format!("/v2/bad/blobs/{d}")).await,
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        )
        .await;
    }
    expect_error(
        t.get(&loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // POST ?digest= with the wrong digest.
    let r = t
        .req(
            Method::POST,
            &format!("/v2/bad/blobs/uploads/?digest={wrong}"),
        )
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // PUT without a digest, and with a malformed one.
    let loc = t.start_upload("bad").await;
    expect_error(
        t.req(Method::PUT, &loc).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    let r = t
        .req(Method::PUT, &format!("{loc}?digest=sha256:xyz"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // Cancel.
    let r = t.req(Method::DELETE, &loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expect_error(
        t.get(&loc).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    let r = t.req(Method::DELETE, &loc).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    // Sessions of another repository, and ids that are not ids.
    let loc = t.start_upload("bad").await;
    let id = loc.rsplit('/').next().unwrap();
    expect_error(
        t.get(&format!("/v2/other/blobs/uploads/{id}")).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        t.get("/v2/bad/blobs/uploads/..%2F..%2Fx").await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn upload_continues_after_server_restart() {
    let mut t = T::new();
    let bytes = data(300_000, 7);
    let d = sha256(&bytes);
    let loc = t.start_upload("resume").await;
    let r = t
        .req(Method::PATCH, &loc)
        .body(bytes[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    t.restart();
    let r = t.get(&loc).await;
    assert_eq!(header(&r, "range"), "0-99999");
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-range", "100000-299999")
        .body(bytes[100_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.blob("resume", &d).await, bytes);
}

#[tokio::test]
async fn blobs_are_scoped_and_mountable() {
    let t = T::new();
    let d = t.push_blob("src", b"layer").await;
    expect_error(
        t.get(&format!("/v2/dst/blobs/{d}")).await,
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    let r = t
        .req(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(t.blob("dst", &d).await, &b"layer"[..]);
    // Unknown source repository or blob: a new upload session instead.
    let missing = sha256(b"missing");
    for q in [
        format!("mount={d}&from=nowhere"),
        format!("mount={missing}&from=src"),
        format!("mount={d}"),
    ] {
        let r = t
            .req(Method::POST, &format!("/v2/third/blobs/uploads/?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{q}");
        assert!(header(&r, "location").starts_with("/v2/third/blobs/uploads/"));
    }
}

#[tokio::test]
async fn manifest_push_pull_and_validation() {
    let t = T::new();
    let config = br#"{"architecture":"amd64"}"#;
    let layer = data(4000, 8);
    let cd = t.push_blob("img", config).await;
    let ld = t.push_blob("img", &layer).await;
    let missing = sha256(b"nope");

    let bad = manifest(&cd, config.len(), &[(missing.clone(), 4)], None);
    let r = t.put_manifest("img", "latest", OCI_MANIFEST, &bad).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], missing);

    let m = manifest(&cd, config.len(), &[(ld, layer.len())], None);
    let md = sha256(&m);
    let r = t.put_manifest("img", "latest", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/img/manifests/{md}"));
    assert_eq!(header(&r, "docker-content-digest"), md);
    assert!(r.headers().get("oci-subject").is_none());

    for reference in ["latest", &md] {
        let r = t
            .req(Method::GET, &format!("/v2/img/manifests/{reference}"))
            .header(
                "accept",
                format!("{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), md);
        assert_eq!(r.bytes().await.unwrap(), m);
        let r = t
            .req(Method::HEAD, &format!("/v2/img/manifests/{reference}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), m.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), md);
    }
    // An Accept that lists only other manifest types excludes this one.
    let r = t
        .req(Method::GET, "/v2/img/manifests/latest")
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Push by digest with extra tags.
    let r = t
        .req(
            Method::PUT,
            &format!("/v2/img/manifests/{md}?tag=v1&tag=v2"),
        )
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<_> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["v1", "v2"]);
    assert_eq!(t.get("/v2/img/manifests/v2").await.status(), StatusCode::OK);

    // Digest mismatch, bad documents, schema 1, oversize, unknown references.
    let r = t.put_manifest("img", &missing, OCI_MANIFEST, &m).await;
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    expect_error(
        t.put_manifest("img", "x", OCI_MANIFEST, b"{not json").await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    )
    .await;
    let r = t.put_manifest("img", "x", OCI_INDEX, &m).await;
    expect_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    let s1 = br#"{"schemaVersion":1,"name":"img","tag":"x","fsLayers":[],"history":[]}"#;
    let r = t
        .put_manifest(
            "img",
            "x",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            s1,
        )
        .await;
    expect_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Oversize: refused from the declared length, before the body is read.
    let head = format!("PUT /v2/img/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 4194305\r\n\r\n");
    let answer = raw_http(&t, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("SIZE_INVALID"), "{answer}");
    expect_error(
        t.get("/v2/img/manifests/nope").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        t.get(&format!("/v2/img/manifests/{missing}")).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        t.get("/v2/nothere/manifests/latest").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // An index over the manifest, and an index referencing an unknown child.
    let index = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[{"mediaType":OCI_MANIFEST,"digest":md,"size":m.len()}]})).unwrap();
    assert_eq!(
        t.put_manifest("img", "multi", OCI_INDEX, &index)
            .await
            .status(),
        StatusCode::CREATED
    );
    let orphan = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[{"mediaType":OCI_MANIFEST,"digest":missing,"size":3}]})).unwrap();
    expect_error(
        t.put_manifest("img", "o", OCI_INDEX, &orphan).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn referrers_api() {
    let t = T::new();
    let (m, md) = t.push_image("art", "latest", 1).await;
    let empty_cfg = t.push_blob("art", b"{}").await;
    let mut sigs = Vec::new();
    for (artifact_type, n) in [
        ("application/vnd.example.sig", 1),
        ("application/vnd.example.sbom", 2),
    ] {
        let mut doc: Value =
            serde_json::from_slice(&manifest(&empty_cfg, 2, &[], Some((&md, m.len())))).unwrap();
        doc["config"]["mediaType"] = json!("application/vnd.oci.empty.v1+json");
        doc["artifactType"] = json!(artifact_type);
        doc["annotations"] = json!({"n": n.to_string()});
        let bytes = serde_json::to_vec(&doc).unwrap();
        let d = sha256(&bytes);
        let r = t.put_manifest("art", &d, OCI_MANIFEST, &bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), md);
        sigs.push(d);
    }
    // A referrer whose subject does not exist (yet) is accepted.
    let ghost = sha256(b"ghost");
    let dangling = manifest(&empty_cfg, 2, &[], Some((&ghost, 10)));
    let r = t
        .put_manifest("art", "dangling", OCI_MANIFEST, &dangling)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), ghost);

    let r = t.get(&format!("/v2/art/referrers/{md}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let list = index["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for entry in list {
        assert!(sigs.contains(&entry["digest"].as_str().unwrap().to_owned()));
        assert!(entry["artifactType"]
            .as_str()
            .unwrap()
            .starts_with("application/vnd.example."));
        assert!(entry["annotations"]["n"].is_string());
        assert_eq!(entry["mediaType"], OCI_MANIFEST);
    }
    let r = t
        .get(&format!(
            "/v2/art/referrers/{md}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.example.sbom"
    );
    // Nothing refers to it: an empty index, not 404.
    let r = t
        .get(&format!("/v2/art/referrers/{}", sha256(b"none")))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let index: Value = r.json().await.unwrap();
    assert_eq!(index["manifests"], json!([]));
    expect_error(
        t.get("/v2/art/referrers/sha256:12").await,
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    let dangling_entry: Value = t
        .get(&format!("/v2/art/referrers/{ghost}"))
        .await
        .json()
        .await
        .unwrap();
    // An image config's media type stands in for a missing artifactType.
    assert_eq!(
        dangling_entry["manifests"][0]["artifactType"],
        "application/vnd.oci.image.config.v1+json"
    );
}

#[tokio::test]
async fn tag_and_catalog_pagination() {
    let t = T::new();
    for (i, tag) in ["e", "a", "c", "b", "d"].iter().enumerate() {
        t.push_image("pages", tag, i as u64).await;
    }
    let r = t.get("/v2/pages/tags/list").await;
    assert_eq!(header(&r, "content-type"), "application/json");
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name":"pages","tags":["a","b","c","d","e"]}));

    let r = t.get("/v2/pages/tags/list?n=2").await;
    assert_eq!(
        header(&r, "link"),
        r#"</v2/pages/tags/list?n=2&last=b>; rel="next""#
    );
    assert_eq!(r.json().await.unwrap()["tags"], json!(["a", "b"]));
    let r = t.get("/v2/pages/tags/list?n=2&last=b").await;
    assert_eq!(r.json().await.unwrap()["tags"], json!(["c", "d"]));
    let r = t.get("/v2/pages/tags/list?n=2&last=d").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json().await.unwrap()["tags"], json!(["e"]));
    let r = t.get("/v2/pages/tags/list?n=0").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json().await.unwrap()["tags"], json!([]));
    let r = t.get("/v2/pages/tags/list?last=c").await;
    assert_eq!(r.json().await.unwrap()["tags"], json!(["d", "e"]));
    for bad in ["-1", "x", "1.5"] {
        let r = t.get(&format!("/v2/pages/tags/list?n={bad}")).await;
        expect_error(r, StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID").await;
    }
    expect_error(
        t.get("/v2/unknown/tags/list").await,
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    )
    .await;

    for repo in ["z", "m/n", "b"] {
        t.push_blob(repo, b"x").await;
    }
    let v: Value = t.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(v, json!({"repositories":["b","m/n","pages","z"]}));
    let r = t.get("/v2/_catalog?n=2").await;
    assert_eq!(
        header(&r, "link"),
        r#"</v2/_catalog?n=2&last=m%2Fn>; rel="next""#
    );
    assert_eq!(r.json().await.unwrap()["repositories"], json!(["b", "m/n"]));
    let v: Value = t
        .get("/v2/_catalog?n=2&last=m%2Fn")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["repositories"], json!(["pages", "z"]));
    expect_error(
        t.get("/v2/_catalog?n=abc").await,
        StatusCode::BAD_REQUEST,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;
}

#[tokio::test]
async fn delete_semantics() {
    let t = T::new();
    let (_, md) = t.push_image("del", "one", 1).await;
    let r = t
        .put_manifest(
            "del",
            "two",
            OCI_MANIFEST,
            &t.get("/v2/del/manifests/one").await.bytes().await.unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Deleting a tag leaves the manifest and other tags.
    assert_eq!(
        t.req(Method::DELETE, "/v2/del/manifests/one")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        t.get("/v2/del/manifests/one").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        t.get(&format!("/v2/del/manifests/{md}")).await.status(),
        StatusCode::OK
    );
    let r = t
        .req(Method::DELETE, "/v2/del/manifests/one")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Deleting the manifest removes every tag that points at it.
    let r = t
        .req(Method::DELETE, &format!("/v2/del/manifests/{md}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expect_error(
        t.get("/v2/del/manifests/two").await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        t.get(&format!("/v2/del/manifests/{md}")).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        t.get("/v2/del/tags/list").await.json().await.unwrap()["tags"],
        json!([])
    );
    // Blobs.
    let d = t.push_blob("del", b"blob").await;
    assert_eq!(
        t.req(Method::DELETE, &format!("/v2/del/blobs/{d}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    expect_error(
        t.get(&format!("/v2/del/blobs/{d}")).await,
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    )
    .await;
    let r = t
        .req(Method::DELETE, &format!("/v2/del/blobs/{d}"))
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn delete_can_be_disabled() {
    let t = T::with(|b| {
        b.api(ApiConfig {
            delete_enabled: false,
            ..ApiConfig::default()
        })
    });
    let (_, md) = t.push_image("keep", "v1", 1).await;
    let d = t.push_blob("keep", b"blob").await;
    for path in [
        "/v2/keep/manifests/v1".to_owned(),
        format!("/v2/keep/manifests/{md}"),
        format!("/v2/keep/blobs/{d}"),
    ] {
        let r = t.req(Method::DELETE, &path).send().await.unwrap();
        expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    }
    assert_eq!(
        t.get("/v2/keep/manifests/v1").await.status(),
        StatusCode::OK
    );
    // Cancelling an upload is part of pushing and stays allowed.
    let loc = t.start_upload("keep").await;
    assert_eq!(
        t.req(Method::DELETE, &loc).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn bad_input_gets_spec_errors() {
    let t = T::new();
    let d = sha256(b"x");
    for (path, status, code) in [
        (
            "/v2/UPPER/tags/list".to_owned(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a%2Fb/tags/list".to_owned(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            format!("/v2/{}/tags/list", "a".repeat(300)),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        // A reference that is neither a tag nor a digest names nothing (conformance: 404).
        (
            "/v2/a/manifests/-bad".to_owned(),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/a/manifests/{}", "t".repeat(129)),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/a/blobs/sha256:1234".to_owned(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/a/blobs/md5:{}", "0".repeat(32)),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!(
                "/v2/a/blobs/{}",
                d.to_uppercase().replace("SHA256", "sha256")
            ),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/a/blobs/{d}"),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            "/v2/a/blobs/uploads/not-an-id".to_owned(),
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
    ] {
        expect_error(t.get(&path).await, status, code).await;
    }
    // Path tricks that HTTP clients would normalize away, sent raw.
    for path in [
        "/v2/a/../b/tags/list",
        "/v2/a/%2E%2E/b/tags/list",
        "/v2/a/./b/tags/list",
        "/v2/../v2/a%2fb/tags/list",
    ] {
        let answer = raw_http(
            &t,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("NAME_INVALID"), "{path}: {answer}");
    }
    // Methods an endpoint does not have.
    let r = t
        .req(Method::POST, "/v2/a/manifests/latest")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    let r = t.req(Method::PUT, "/v2/a/tags/list").send().await.unwrap();
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    // Unsupported digest algorithm for an upload.
    let r = t
        .req(Method::POST, "/v2/a/blobs/uploads/?digest-algorithm=md5")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // A declared length that the body does not meet.
    let loc = t.start_upload("a").await;
    let r = t
        .req(Method::PATCH, &loc)
        .header("content-range", "0-9")
        .body(vec![1u8; 5])
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    // Pushing to a reference that is neither a tag nor a digest is a client error.
    for (reference, code) in [
        ("-bad", "TAG_INVALID"),
        (".INVALID_MANIFEST_NAME", "TAG_INVALID"),
        ("sha256:1234", "DIGEST_INVALID"),
    ] {
        let r = t
            .req(Method::PUT, &format!("/v2/a/manifests/{reference}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body("{}")
            .send()
            .await
            .unwrap();
        expect_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    // A bad tag in ?tag=.
    let r = t
        .req(Method::PUT, &format!("/v2/a/manifests/{d}?tag=-x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, StatusCode::BAD_REQUEST, "TAG_INVALID").await;
}

/// The OCI conformance suite (v1.1.1) asks for `.INVALID_MANIFEST_NAME` in an existing
/// repository and requires 404 for GET, HEAD and DELETE.
#[tokio::test]
async fn invalid_manifest_references_are_unknown() {
    let t = T::new();
    t.push_image("conformance", "v1", 1).await;
    for reference in [".INVALID_MANIFEST_NAME", "sha256:abc", "a:b:c", "-x"] {
        let path = format!("/v2/conformance/manifests/{reference}");
        for method in [Method::GET, Method::DELETE] {
            let r = t.req(method.clone(), &path).send().await.unwrap();
            expect_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        }
        let r = t.req(Method::HEAD, &path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {reference}");
    }
    // Nothing was deleted on the way.
    assert_eq!(
        t.get("/v2/conformance/manifests/v1").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn sha512_uploads() {
    let t = T::new();
    let bytes = data(10_000, 9);
    let d = Digest::of(Algorithm::Sha512, &bytes).to_string();
    let r = t
        .req(
            Method::POST,
            "/v2/long/blobs/uploads/?digest-algorithm=sha512",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = header(&r, "location");
    let r = t
        .req(Method::PUT, &format!("{loc}?digest={d}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.blob("long", &d).await, bytes);
}

#[tokio::test]
async fn fifty_concurrent_pushes_of_one_blob_and_manifest() {
    let t = T::new();
    let bytes = data(500_000, 10);
    let pushes = (0..50).map(|_| t.push_blob("same", &bytes));
    let digests = futures::future::join_all(pushes).await;
    let d = &digests[0];
    assert_eq!(t.blob("same", d).await, bytes);
    let m = manifest(d, bytes.len(), &[], None);
    let puts = (0..50).map(|_| t.put_manifest("same", "latest", OCI_MANIFEST, &m));
    for r in futures::future::join_all(puts).await {
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    assert_eq!(
        t.get("/v2/same/manifests/latest")
            .await
            .bytes()
            .await
            .unwrap(),
        m
    );
    // One copy of the bytes.
    let hex = &d[7..];
    let blob_dir = t.data().join("blobs/sha256").join(&hex[..2]);
    let entries: Vec<_> = std::fs::read_dir(&blob_dir).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let files: Vec<_> = std::fs::read_dir(blob_dir.join(hex))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["data"]);
}

#[tokio::test]
async fn prometheus_metrics() {
    let t = T::new();
    let d = t.push_blob("m", &data(5000, 1)).await;
    // Read the whole body: response bytes are counted as they are sent.
    assert_eq!(t.blob("m", &d).await.len(), 5000);
    assert_eq!(
        t.get("/v2/m/manifests/nope").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = t.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    for line in [
        r#"registry_http_requests_total{endpoint="upload",method="POST",status="201"} 1"#,
        r#"registry_http_requests_total{endpoint="blob",method="GET",status="200"} 1"#,
        r#"registry_http_requests_total{endpoint="manifest",method="GET",status="404"} 1"#,
        "registry_http_request_body_bytes_total 5000",
        "registry_uploads_in_progress 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains(r#"registry_http_request_duration_seconds_bucket{le="#));
    assert!(text.contains(r#"registry_storage_operation_duration_seconds_count{op="put"}"#));
    let out: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("registry_http_response_body_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(out >= 5000, "{out}");
}
