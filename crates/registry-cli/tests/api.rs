//! The API through the binary: what needs a process (signals, `serve`'s flags and its own
//! metrics listener). Every protocol rule is tested in-process in `registry-http/tests/api.rs`.

mod common;

use common::{sha256, Server};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::Value;

struct T {
    server: Server,
    http: Client,
}

impl T {
    fn new() -> T {
        T::with(&[])
    }
    fn with(args: &[&str]) -> T {
        T {
            server: Server::start(args),
            http: Client::new(),
        }
    }
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{}", self.server.url(), path)
        }
    }
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }
    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    /// Pushes a blob with a single POST; returns its digest.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        common::push_blob(&self.http, &self.server.url(), repo, bytes).await
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

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut t = T::new();
    t.push_blob("x", b"y").await;
    assert!(
        t.server.terminate(),
        "registry did not exit cleanly on SIGTERM"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish() {
    let mut t = T::new();
    let loc = t.start_upload("inflight").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let patch = tokio::spawn(t.req(Method::PATCH, &loc).body(body).send());
    tx.send(Ok(vec![1u8; 100_000])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The server is told to stop while the body is still arriving.
    let pid = t.server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(Ok(vec![2u8; 100_000])).await.unwrap();
    drop(tx);
    let r = patch.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-199999");
    assert!(t.server.child.wait().unwrap().success());
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn abandoned_uploads_are_purged() {
    let t = T::with(&["--upload-max-age", "1s"]);
    let loc = t.start_upload("idle").await;
    let r = t
        .req(Method::PATCH, &loc)
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = t.get(&loc).await;
        if r.status() == StatusCode::NOT_FOUND {
            assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session was not purged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let leftovers = std::fs::read_dir(t.server.data().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "purged session left files behind");
}

#[tokio::test]
async fn metrics_on_their_own_listener_or_off() {
    let port = common::free_port();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let t = T::with(&["--config", config.path().to_str().unwrap()]);
    expect_error(t.get("/metrics").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let r = t.get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("registry_uploads_in_progress"));

    std::fs::write(config.path(), "[metrics]\nenabled = false\n").unwrap();
    let t = T::with(&["--config", config.path().to_str().unwrap()]);
    assert_eq!(t.get("/metrics").await.status(), StatusCode::NOT_FOUND);
}

/// Reads one HTTP/1.1 answer from `reader`: its status and headers (names lowercased), and its
/// body (none for a HEAD).
fn read_answer(
    reader: &mut impl std::io::BufRead,
    head_only: bool,
) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; if head_only { 0 } else { length }];
    reader.read_exact(&mut body).unwrap();
    (code, headers, body)
}

/// One request of a pipeline and the answer it must get.
struct Ask {
    method: &'static str,
    digest: String,
    range: Option<&'static str>,
    status: u16,
    body: Vec<u8>,
}

fn ask(
    method: &'static str,
    digest: &str,
    range: Option<&'static str>,
    status: u16,
    body: &[u8],
) -> Ask {
    Ask {
        method,
        digest: digest.to_owned(),
        range,
        status,
        body: body.to_vec(),
    }
}

/// Blob answers arrive byte for byte and in order when a client pipelines requests on one
/// HTTP/1.1 connection: whole blobs of several read chunks (read ahead from 32 MiB), ranges, a
/// HEAD and an error answer between them; and the same blob over HTTP/2.
#[tokio::test]
async fn pipelined_blob_reads_arrive_intact() {
    use std::io::{BufReader, Write};
    let t = T::new();
    let base = t.server.url();
    let big = common::data(40_000_000, 7); // read ahead, in 1 MiB chunks
    let small = common::data(1_000, 8);
    let big_d = t.push_blob("pipe/a", &big).await;
    let small_d = t.push_blob("pipe/a", &small).await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let asks = [
        ask("GET", &big_d, None, 200, &big),
        ask("HEAD", &small_d, None, 200, &[]),
        ask(
            "GET",
            &small_d,
            Some("bytes=100-199"),
            206,
            &small[100..200],
        ),
        ask("GET", &missing, None, 404, &[]),
        ask(
            "GET",
            &big_d,
            Some("bytes=4194000-38388700"),
            206,
            &big[4194000..38388701],
        ),
        ask("GET", &small_d, None, 200, &small),
        ask("GET", &big_d, None, 200, &big),
    ];
    let mut pipeline = Vec::new();
    for a in &asks {
        let (method, digest, host) = (a.method, &a.digest, &t.server.addr);
        write!(
            pipeline,
            "{method} /v2/pipe/a/blobs/{digest} HTTP/1.1\r\nhost: {host}\r\n"
        )
        .unwrap();
        if let Some(range) = a.range {
            write!(pipeline, "range: {range}\r\n").unwrap();
        }
        pipeline.extend_from_slice(b"\r\n");
    }
    let heads: Vec<bool> = asks.iter().map(|a| a.method == "HEAD").collect();
    let addr = t.server.addr.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        // Every request at once: the answers queue up behind each other.
        stream.write_all(&pipeline).unwrap();
        let mut reader = BufReader::new(stream);
        heads
            .iter()
            .map(|head| read_answer(&mut reader, *head))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (a, (status, headers, body)) in asks.iter().zip(&answers) {
        let what = format!("{} {} {:?}", a.method, a.digest, a.range);
        assert_eq!(*status, a.status, "{what}");
        if a.status == 404 {
            assert!(
                String::from_utf8_lossy(body).contains("BLOB_UNKNOWN"),
                "{what}"
            );
            continue;
        }
        assert_eq!(headers["docker-content-digest"], a.digest, "{what}");
        assert_eq!(body.len(), a.body.len(), "{what}");
        assert!(*body == a.body, "{what}: the bytes differ");
    }
    assert_eq!(answers[1].1["content-length"], "1000");

    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2
        .get(format!("{base}/v2/pipe/a/blobs/{big_d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(sha256(&r.bytes().await.unwrap()), big_d);
}
