//! The workloads, each a function of a target and a round that returns a [`Sample`]. Write
//! workloads push new content every round (seeds differ per round and per target); read
//! workloads use what [`prepare`] pushed before measuring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, Method, StatusCode};

use crate::data::{BigBlob, Blob};
use crate::report::Sample;

/// How big the runs are; `scale` shrinks every size and count (for smoke tests).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Multiplier for counts and sizes (1.0 = the full benchmark).
    pub scale: f64,
    /// The PATCH size of `push-chunked`.
    pub chunk: usize,
}

impl Sizes {
    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(2)
    }
    fn bytes(&self, n: u64) -> u64 {
        ((n as f64 * self.scale) as u64).max(64 * 1024)
    }
    fn small_blobs(&self) -> usize {
        self.count(64)
    }
    fn small_blob_len(&self) -> usize {
        4 * 1024 * 1024
    }
    fn big_len(&self) -> u64 {
        self.bytes(1024 * 1024 * 1024)
    }
    fn small_requests(&self) -> usize {
        self.count(20_000)
    }
    fn repositories(&self) -> usize {
        self.count(1000)
    }
    fn ui_repositories(&self) -> usize {
        self.count(10_000)
    }
}

/// The workloads, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Monolithic push (POST, then PUT with the body) of 4 MiB blobs, concurrency 8.
    PushMono,
    /// One 1 GiB blob in PATCHes of `--chunk-mib` (8 MiB) with Content-Range.
    PushChunked,
    /// One 1 GiB blob in a single streamed PATCH (the Docker client's way).
    PushStreamed,
    /// GET of 4 MiB blobs, concurrency 8.
    Pull,
    /// GET of one 1 GiB blob.
    PullBig,
    /// Manifest PUT by tag, concurrency 8.
    ManifestPut,
    /// Manifest GET by tag, concurrency 48.
    ManifestGet,
    /// Manifest HEAD by tag, concurrency 48.
    ManifestHead,
    /// Blob HEAD, concurrency 48.
    BlobHead,
    /// Tags list of a repository with 1 000 tags, concurrency 8.
    TagsList,
    /// Catalog of 1 000 repositories (`n=1000`), concurrency 8.
    Catalog,
    /// The web interface's repository list with 10 000 repositories: the first page, a
    /// search for the last one, and a page in the middle, one request at a time (render time). Not in the
    /// default set (Distribution has no web interface).
    UiRepositories,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 11] = [
        Workload::PushMono,
        Workload::PushChunked,
        Workload::PushStreamed,
        Workload::Pull,
        Workload::PullBig,
        Workload::ManifestPut,
        Workload::ManifestGet,
        Workload::ManifestHead,
        Workload::BlobHead,
        Workload::TagsList,
        Workload::Catalog,
    ];

    /// Whether the workload is measured in bytes (else in requests).
    pub fn moves_bytes(self) -> bool {
        matches!(
            self,
            Workload::PushMono
                | Workload::PushChunked
                | Workload::PushStreamed
                | Workload::Pull
                | Workload::PullBig
        )
    }

    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::PushMono => "push-mono",
            Workload::PushChunked => "push-chunked",
            Workload::PushStreamed => "push-streamed",
            Workload::Pull => "pull",
            Workload::PullBig => "pull-big",
            Workload::ManifestPut => "manifest-put",
            Workload::ManifestGet => "manifest-get",
            Workload::ManifestHead => "manifest-head",
            Workload::BlobHead => "blob-head",
            Workload::TagsList => "tags-list",
            Workload::Catalog => "catalog",
            Workload::UiRepositories => "ui-repositories",
        }
    }
}

/// One registry under test.
pub struct Target {
    /// Label in reports.
    pub label: String,
    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub base: String,
    /// Server PID, for CPU and RSS.
    pub pid: Option<u32>,
    /// Seed space of this target, so two targets never push the same content.
    pub id: u64,
    client: Client,
    /// `Authorization` sent with every request, if the registry wants credentials.
    authorization: Option<String>,
    prepared: Option<Prepared>,
}

/// Content pushed before measuring, used by the read workloads.
struct Prepared {
    blobs: Vec<Blob>,
    big: String,
    config: Blob,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl Target {
    /// A target at `base`; `authorization` (`Basic …`, `Bearer …`) is sent with every request
    /// to registries that want credentials.
    pub fn new(
        label: &str,
        base: &str,
        pid: Option<u32>,
        id: u64,
        authorization: Option<String>,
    ) -> Result<Target> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(a) = &authorization {
            headers.insert("authorization", a.parse()?);
        }
        let client = Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(128)
            .http1_only()
            .default_headers(headers)
            .build()?;
        Ok(Target {
            label: label.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            pid,
            id,
            client,
            authorization,
            prepared: None,
        })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        want: StatusCode,
    ) -> Result<reqwest::Response> {
        let mut req = self.client.request(method.clone(), self.url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/octet-stream")
                .body(b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        if r.status() != want {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            bail!("{method} {path}: expected {want}, got {status}: {text}");
        }
        Ok(r)
    }

    /// Monolithic push the way containerd and Docker do it, and the way every registry
    /// supports: POST to open a session, then one PUT with the whole body and the digest.
    async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let loc = self.start_upload(repo).await?;
        let put = Target::with_query(&loc, &format!("digest={}", blob.digest));
        self.send(
            Method::PUT,
            &put,
            Some(blob.bytes.clone().into()),
            StatusCode::CREATED,
        )
        .await?;
        Ok(())
    }

    async fn start_upload(&self, repo: &str) -> Result<String> {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                None,
                StatusCode::ACCEPTED,
            )
            .await?;
        location(&r)
    }

    fn with_query(loc: &str, query: &str) -> String {
        if loc.contains('?') {
            format!("{loc}&{query}")
        } else {
            format!("{loc}?{query}")
        }
    }

    async fn put_manifest(&self, repo: &str, tag: &str, body: Bytes) -> Result<()> {
        let r = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!(
                "manifest PUT {repo}:{tag}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn seed(&self, round: usize, salt: u64) -> u64 {
        (self.id << 48) ^ ((round as u64) << 32) ^ salt
    }
}

fn manifest(config: &Blob, layers: &[&Blob], note: &str) -> Bytes {
    let layers: Vec<_> = layers
        .iter()
        .map(|b| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": b.digest, "size": b.bytes.len()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.bytes.len()},
        "layers": layers,
        "annotations": {"bench": note},
    }))
    .expect("json")
    .into()
}

/// Runs `n` requests made by `make`, `concurrency` at a time, recording each latency.
async fn closed_loop<F, Fut>(n: usize, concurrency: usize, make: F) -> Result<Sample>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let start = Instant::now();
    let results: Vec<(Duration, u64)> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = make(i);
            async move {
                let t = Instant::now();
                let bytes = fut.await?;
                Ok::<_, anyhow::Error>((t.elapsed(), bytes))
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    Ok(Sample {
        elapsed: start.elapsed(),
        requests: n as u64,
        bytes: results.iter().map(|r| r.1).sum(),
        latencies: results.into_iter().map(|r| r.0).collect(),
        ..Sample::default()
    })
}

/// A GET over a plain blocking TCP connection, read on a thread of its own: for the single big
/// pull, where an async HTTP client's per-read work would bound the figure before the server
/// does. Reads go into a 32 KiB buffer, as Go's `io.Copy` (docker, containerd, skopeo) and
/// curl (16 KiB) read: a 4 MiB buffer made this client the bound instead, copying each read
/// through memory rather than cache (both servers ran at 2.8-3.0 GB/s with it; with 32 KiB
/// this registry ran at 4.0-4.5 and Distribution at 2.9-3.1). Checks the body against
/// `Content-Length` and returns its length.
async fn raw_get(base: &str, path: &str, authorization: Option<String>) -> Result<u64> {
    let authority = base
        .strip_prefix("http://")
        .context("raw GET needs an http:// URL")?
        .to_owned();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || blocking_get(&authority, &path, authorization)).await?
}

fn blocking_get(authority: &str, path: &str, authorization: Option<String>) -> Result<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(authority)?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 32 << 10];
    let mut head = Vec::new();
    let (mut body, header_end) = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break ((head.len() - i - 4) as u64, i);
        }
    };
    let text = String::from_utf8_lossy(&head[..header_end]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        bail!("GET {path}: {}", text.lines().next().unwrap_or(""));
    }
    let length: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no Content-Length")?
        .trim()
        .parse()?;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body += n as u64;
    }
    if body != length {
        bail!("GET {path}: {body} of {length} bytes");
    }
    Ok(body)
}

async fn drain(r: reqwest::Response) -> Result<u64> {
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n)
}

/// Pushes what the read workloads need. Runs once per target, before any measurement.
pub async fn prepare(t: &mut Target, sizes: Sizes, workloads: &[Workload]) -> Result<()> {
    let config = Blob::generate(512, t.seed(0, 0xc0f));
    t.push_blob("bench/read", &config).await?;
    let blobs: Vec<Blob> = (0..sizes.small_blobs())
        .map(|i| Blob::generate(sizes.small_blob_len(), t.seed(0, 0x1000 + i as u64)))
        .collect();
    futures::stream::iter(blobs.iter().map(|b| t.push_blob("bench/read", b)))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let m = manifest(&config, &[&blobs[0]], "read");
    for tag in ["a", "b", "c", "d"] {
        t.put_manifest("bench/read", tag, m.clone()).await?;
    }
    let mut big = String::new();
    if workloads.contains(&Workload::PullBig) {
        let blob = BigBlob {
            len: sizes.big_len(),
            chunk: 8 << 20,
            seed: t.seed(0, 0xb16),
        };
        big = blob.digest();
        push_streamed(t, "bench/read", blob, &big).await?;
    }
    if workloads.contains(&Workload::TagsList) {
        let n = sizes.repositories();
        t.push_blob("bench/tags", &config).await?;
        t.push_blob("bench/tags", &blobs[0]).await?;
        let t = &*t;
        futures::stream::iter((0..n).map(|i| {
            let m = m.clone();
            async move {
                t.put_manifest("bench/tags", &format!("tag-{i:05}"), m)
                    .await
            }
        }))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    }
    let image = (&config, &blobs[0], &m);
    if workloads.contains(&Workload::Catalog) {
        push_repositories(t, "bench/catalog", sizes.repositories(), image).await?;
    }
    if workloads.contains(&Workload::UiRepositories) {
        push_repositories(t, "bench/ui", sizes.ui_repositories(), image).await?;
    }
    t.prepared = Some(Prepared { blobs, big, config });
    Ok(())
}

/// Pushes `n` repositories `<prefix>/repo-NNNNN`, each with the image (config, layer,
/// manifest) tagged `latest`.
async fn push_repositories(
    t: &Target,
    prefix: &str,
    n: usize,
    (config, layer, manifest): (&Blob, &Blob, &Bytes),
) -> Result<()> {
    futures::stream::iter((0..n).map(|i| async move {
        let repo = format!("{prefix}/repo-{i:05}");
        t.push_blob(&repo, config).await?;
        t.push_blob(&repo, layer).await?;
        t.put_manifest(&repo, "latest", manifest.clone()).await
    }))
    .buffer_unordered(8)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

fn location(r: &reqwest::Response) -> Result<String> {
    Ok(r.headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned())
}

async fn push_streamed(
    t: &Target,
    repo: &str,
    blob: BigBlob,
    digest: &str,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::new();
    let s = Instant::now();
    let loc = t.start_upload(repo).await?;
    lat.push(s.elapsed());
    let chunks = futures::stream::iter(0..blob.chunks())
        .map(move |i| Ok::<_, std::io::Error>(blob.chunk(i)));
    let s = Instant::now();
    let r = t
        .send(
            Method::PATCH,
            &loc,
            Some(reqwest::Body::wrap_stream(chunks)),
            StatusCode::ACCEPTED,
        )
        .await?;
    // The session's URL may change with every answer (Distribution carries state in it).
    let loc = location(&r)?;
    lat.push(s.elapsed());
    lat.push(finish_upload(t, &loc, digest).await?);
    Ok(lat)
}

/// Closes an upload session with its digest; returns the request's latency.
async fn finish_upload(t: &Target, loc: &str, digest: &str) -> Result<Duration> {
    let s = Instant::now();
    let url = Target::with_query(loc, &format!("digest={digest}"));
    t.send(Method::PUT, &url, None, StatusCode::CREATED).await?;
    Ok(s.elapsed())
}

/// Readies a round, unmeasured: the pull workloads read their blobs once, so that every round
/// of both servers reads them from the page cache (otherwise a round read them from disk or
/// from memory depending on what other workloads had written meanwhile: pull-big went from
/// 778 to 2476 MiB/s in one run).
pub async fn warm(t: &Target, w: Workload) -> Result<()> {
    let p = t.prepared.as_ref().context("prepare() first")?;
    let digests: Vec<&str> = match w {
        Workload::PullBig => vec![p.big.as_str()],
        Workload::Pull => p.blobs.iter().map(|b| b.digest.as_str()).collect(),
        _ => Vec::new(),
    };
    for d in digests {
        let path = format!("/v2/bench/read/blobs/{d}");
        raw_get(&t.base, &path, t.authorization.clone()).await?;
    }
    Ok(())
}

/// Runs one round of one workload against one target.
pub async fn run(t: &Target, w: Workload, round: usize, sizes: Sizes) -> Result<Sample> {
    let p = t.prepared.as_ref().context("prepare() first")?;
    let repo = format!("bench/{}/r{round}", w.name());
    let sample = match w {
        Workload::PushMono => {
            let blobs: Vec<Blob> = (0..sizes.small_blobs())
                .map(|i| {
                    Blob::generate(sizes.small_blob_len(), t.seed(round + 1, 0x2000 + i as u64))
                })
                .collect();
            let blobs = Arc::new(blobs);
            closed_loop(blobs.len(), 8, |i| {
                let (blobs, repo) = (blobs.clone(), repo.clone());
                async move {
                    t.push_blob(&repo, &blobs[i]).await?;
                    Ok(blobs[i].bytes.len() as u64)
                }
            })
            .await?
        }
        Workload::PushChunked => {
            let blob = BigBlob {
                len: sizes.big_len(),
                chunk: sizes.chunk,
                seed: t.seed(round + 1, 0x3000),
            };
            let digest = blob.digest();
            let start = Instant::now();
            let mut lat = Vec::new();
            let mut loc = t.start_upload(&repo).await?;
            for i in 0..blob.chunks() {
                let chunk = blob.chunk(i);
                let first = i * blob.chunk as u64;
                let s = Instant::now();
                let r = t
                    .client
                    .patch(t.url(&loc))
                    .header("content-type", "application/octet-stream")
                    .header(
                        "content-range",
                        format!("{first}-{}", first + chunk.len() as u64 - 1),
                    )
                    .body(chunk)
                    .send()
                    .await?;
                if r.status() != StatusCode::ACCEPTED {
                    bail!("PATCH: {}", r.status());
                }
                loc = location(&r)?;
                lat.push(s.elapsed());
            }
            lat.push(finish_upload(t, &loc, &digest).await?);
            Sample {
                elapsed: start.elapsed(),
                requests: lat.len() as u64 + 1,
                bytes: blob.len,
                latencies: lat,
                ..Sample::default()
            }
        }
        Workload::PushStreamed => {
            let blob = BigBlob {
                len: sizes.big_len(),
                chunk: 8 << 20,
                seed: t.seed(round + 1, 0x4000),
            };
            let digest = blob.digest();
            let start = Instant::now();
            let lat = push_streamed(t, &repo, blob, &digest).await?;
            Sample {
                elapsed: start.elapsed(),
                requests: 3,
                bytes: blob.len,
                latencies: lat,
                ..Sample::default()
            }
        }
        Workload::Pull => {
            closed_loop(p.blobs.len(), 8, |i| async move {
                let r = t
                    .send(
                        Method::GET,
                        &format!("/v2/bench/read/blobs/{}", p.blobs[i].digest),
                        None,
                        StatusCode::OK,
                    )
                    .await?;
                drain(r).await
            })
            .await?
        }
        Workload::PullBig => {
            let path = format!("/v2/bench/read/blobs/{}", p.big);
            closed_loop(1, 1, |_| raw_get(&t.base, &path, t.authorization.clone())).await?
        }
        Workload::ManifestPut => {
            let n = sizes.count(2000);
            closed_loop(n, 8, |i| {
                let body = manifest(
                    &p.config,
                    &[&p.blobs[i % p.blobs.len()]],
                    &format!("{round}-{i}"),
                );
                async move {
                    t.put_manifest("bench/read", &format!("put-{round}-{i}"), body)
                        .await?;
                    Ok(0)
                }
            })
            .await?
        }
        Workload::ManifestGet | Workload::ManifestHead => {
            let method = if w == Workload::ManifestGet {
                Method::GET
            } else {
                Method::HEAD
            };
            closed_loop(sizes.small_requests(), 48, |i| {
                let method = method.clone();
                async move {
                    let tag = ["a", "b", "c", "d"][i % 4];
                    let r = t
                        .client
                        .request(method, t.url(&format!("/v2/bench/read/manifests/{tag}")))
                        .header("accept", OCI_MANIFEST)
                        .send()
                        .await?;
                    if r.status() != StatusCode::OK {
                        bail!("manifest {tag}: {}", r.status());
                    }
                    drain(r).await.map(|_| 0)
                }
            })
            .await?
        }
        Workload::BlobHead => {
            closed_loop(sizes.small_requests(), 48, |i| async move {
                let d = &p.blobs[i % p.blobs.len()].digest;
                t.send(
                    Method::HEAD,
                    &format!("/v2/bench/read/blobs/{d}"),
                    None,
                    StatusCode::OK,
                )
                .await?;
                Ok(0)
            })
            .await?
        }
        Workload::TagsList => {
            closed_loop(sizes.count(500), 8, |_| async move {
                let r = t
                    .send(
                        Method::GET,
                        "/v2/bench/tags/tags/list",
                        None,
                        StatusCode::OK,
                    )
                    .await?;
                drain(r).await.map(|_| 0)
            })
            .await?
        }
        Workload::UiRepositories => {
            let n = sizes.ui_repositories();
            let middle = format!("bench/ui/repo-{:05}", n / 2);
            let pages = [
                "/".to_owned(),
                format!("/?q=repo-{:05}", n - 1),
                format!("/?after={}", middle.replace('/', "%2F")),
            ];
            let pages = &pages;
            closed_loop(sizes.count(300), 1, |i| async move {
                let r = t
                    .send(Method::GET, &pages[i % pages.len()], None, StatusCode::OK)
                    .await?;
                let body = r.text().await?;
                if !body.contains("bench/ui/repo-") {
                    bail!("{}: no repository listed", pages[i % pages.len()]);
                }
                Ok(body.len() as u64)
            })
            .await?
        }
        Workload::Catalog => {
            closed_loop(sizes.count(200), 8, |_| async move {
                let r = t
                    .send(Method::GET, "/v2/_catalog?n=1000", None, StatusCode::OK)
                    .await?;
                drain(r).await.map(|_| 0)
            })
            .await?
        }
    };
    Ok(sample)
}
