//! The pull-through cache end to end: an upstream registry (this registry's binary behind
//! HTTP Basic) on loopback with images pushed by skopeo, and an instance that mirrors it beside
//! repositories of its own. Upstream requests are counted from the upstream's `/metrics`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tools::{run, run_fails, skopeo};
use common::{bcrypt_user, data, metrics_text, tar, write_oci_layout, Server};

/// The sum of a counter's samples whose labels include every one of `labels`.
fn counter(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Blob GETs the upstream answered with 200.
async fn upstream_blob_gets(http: &reqwest::Client, upstream: &Server) -> u64 {
    let text = http
        .get(format!("{}/metrics", upstream.url()))
        .basic_auth("ann", Some("up-secret"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    counter(
        &text,
        "registry_http_requests_total",
        &[r#"endpoint="blob""#, r#"method="GET""#, r#"status="200""#],
    )
}

/// Pushes an OCI layout image with `layers` to `image:tag` with skopeo; returns its digest.
fn push(work: &Path, name: &str, image: &str, layers: &[Vec<u8>], creds: &str) -> String {
    let layout = work.join(name);
    let digest = write_oci_layout(&layout, "t", layers);
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &format!("oci:{}:t", layout.display()),
        &format!("docker://{image}"),
    ]));
    digest
}

/// Pulls `image` through skopeo into a fresh OCI layout; returns the manifest digest.
fn pull(work: &Path, image: &str) -> String {
    let out = work.join(format!("pulled-{}", rand_suffix()));
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{image}"),
        &format!("oci:{}:p", out.display()),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_the_cache_beside_own_repositories() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let upstream = Server::start(&[
        "--htpasswd",
        bcrypt_user(w, "ann", "up-secret").to_str().unwrap(),
    ]);
    let layers = vec![
        tar(&[("hello", b"hello from upstream\n")]),
        tar(&[("big", &data(3_000_000, 7)[..])]),
    ];
    let first = push(
        w,
        "first",
        &format!("{}/team/img:v1", upstream.addr),
        &layers,
        "ann:up-secret",
    );
    let config = w.join("registry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[proxy]]
prefix = "up"
url = "{}"
username = "ann"
password = "up-secret"
revalidate = "1s"
default = true
timeout = "5s"
"#,
            upstream.url()
        ),
    )
    .unwrap();
    let cache = Server::start(&["--config", config.to_str().unwrap()]);
    let http = reqwest::Client::new();

    // First pull fetches; the second makes no upstream blob request.
    let before = upstream_blob_gets(&http, &upstream).await;
    assert_eq!(pull(w, &format!("{}/up/team/img:v1", cache.addr)), first);
    let fetched = upstream_blob_gets(&http, &upstream).await - before;
    assert_eq!(fetched, 3, "config and two layers, once each");
    assert_eq!(pull(w, &format!("{}/up/team/img:v1", cache.addr)), first);
    // Through the default mirror (names without the prefix, as Docker's mirrors ask): the
    // same cache.
    assert_eq!(pull(w, &format!("{}/team/img:v1", cache.addr)), first);
    assert_eq!(
        upstream_blob_gets(&http, &upstream).await - before,
        fetched,
        "cached pulls made upstream blob requests"
    );
    let text = metrics_text(&http, &cache.url()).await;
    assert!(
        counter(&text, "registry_mirror_hits_total", &[r#"prefix="up""#]) >= 6,
        "{text}"
    );
    assert_eq!(
        counter(&text, "registry_mirror_misses_total", &[r#"prefix="up""#]),
        4,
        "a manifest and three blobs: {text}"
    );
    let bytes = counter(
        &text,
        "registry_mirror_upstream_bytes_total",
        &[r#"prefix="up""#],
    );
    assert!((3_000_000..3_100_000).contains(&bytes), "{bytes}: {text}");
    assert!(
        text.contains(&format!(r#"upstream="{}""#, upstream.addr)),
        "{text}"
    );

    // Pushes under the prefix are refused; the instance's own repositories work as before,
    // also ones the default mirror would answer for.
    let refused = http
        .post(format!("{}/v2/up/team/img/blobs/uploads/", cache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let own = push(
        w,
        "own",
        &format!("{}/mine/app:v1", cache.addr),
        &[tar(&[("own", b"mine\n")])],
        "x:y",
    );
    assert_eq!(pull(w, &format!("{}/mine/app:v1", cache.addr)), own);
    let shadow = push(
        w,
        "shadow",
        &format!("{}/team/img:v1", cache.addr),
        &[tar(&[("own", b"the instance's own team/img\n")])],
        "x:y",
    );
    assert_eq!(pull(w, &format!("{}/team/img:v1", cache.addr)), shadow);
    assert_eq!(pull(w, &format!("{}/up/team/img:v1", cache.addr)), first);

    // A tag changed upstream is seen once the interval has passed.
    let second = push(
        w,
        "second",
        &format!("{}/team/img:v1", upstream.addr),
        &[tar(&[("v2", b"second version\n")])],
        "ann:up-secret",
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pull(w, &format!("{}/up/team/img:v1", cache.addr)), second);
    let by_digest = format!("{}/up/team/img@{first}", cache.addr);
    assert_eq!(pull(w, &by_digest), first);

    // Upstream gone: what is cached is served (tags stale, digests as ever); what is not
    // fails at once with 503.
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pull(w, &format!("{}/up/team/img:v1", cache.addr)), second);
    assert_eq!(pull(w, &by_digest), first);
    let started = Instant::now();
    let missing = http
        .get(format!("{}/v2/up/team/other/manifests/v1", cache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains("up-secret"), "{message}");
    let err = run_fails(skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/up/team/other:v1", cache.addr),
    ]));
    assert!(err.contains("503") || err.contains("unavailable"), "{err}");
    let text = metrics_text(&http, &cache.url()).await;
    assert!(counter(&text, "registry_mirror_stale_total", &[r#"prefix="up""#]) >= 1);
}

/// What the fake upstream answers.
enum Reply {
    /// Status, extra headers, body (`Content-Length` is the body's).
    Full(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// 200 with `Content-Length: declared`, then only `body` and a closed connection.
    Cut(u64, Vec<u8>),
    /// Reads the request, never answers.
    Stall,
    /// 200 with the whole body's length; sends `split` bytes, then the rest once `gate` is open.
    Gated(
        std::sync::Arc<Vec<u8>>,
        usize,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ),
}

/// A request the fake upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorized: bool,
}

/// An HTTP/1.1 upstream that answers each request (one per connection) as `answer` says, and
/// records what it was asked.
struct Fake {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(answer: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Fake {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = std::sync::Arc::new(answer);
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (answer, record) = (answer.clone(), record.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let mut words = text.split_whitespace();
                    let method = words.next().unwrap_or("").to_owned();
                    let path = words.next().unwrap_or("").to_owned();
                    let authorized = text.to_ascii_lowercase().contains("\r\nauthorization:");
                    record.lock().unwrap().push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        authorized,
                    });
                    let (status, headers, body, declared) = match answer(&method, &path) {
                        Reply::Stall => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        Reply::Gated(body, split, gate) => {
                            let head = format!(
                                "HTTP/1.1 200 X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = socket.write_all(head.as_bytes()).await;
                            let _ = socket.write_all(&body[..split]).await;
                            while !gate.load(std::sync::atomic::Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            let _ = socket.write_all(&body[split..]).await;
                            let _ = socket.shutdown().await;
                            return;
                        }
                        Reply::Full(s, h, b) => {
                            let n = b.len() as u64;
                            (s, h, b, n)
                        }
                        Reply::Cut(n, b) => (200, vec![], b, n),
                    };
                    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {declared}\r\nconnection: close\r\n");
                    for (k, v) in headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let _ = socket.write_all(out.as_bytes()).await;
                    if method != "HEAD" {
                        let _ = socket.write_all(&body).await;
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Fake { addr, seen }
    }

    fn seen(&self, path_part: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.path.contains(path_part))
            .cloned()
            .collect()
    }
}

/// A cache instance mirroring `url` under `up/`, with credentials and `timeout`.
fn cache_of(work: &Path, url: &str, timeout: &str) -> Server {
    let config = work.join("cache.toml");
    std::fs::write(
        &config,
        format!(
            "[[proxy]]\nprefix = \"up\"\nurl = \"{url}\"\nusername = \"ann\"\npassword = \"up-secret\"\ntimeout = \"{timeout}\"\n"
        ),
    )
    .unwrap();
    Server::start_logged(&["--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_of_an_upstream_are_caught_and_nothing_corrupt_is_stored() {
    use common::{oci_manifest, sha256};
    let good = data(300_000, 1);
    let good_d = sha256(&good);
    let corrupt = data(300_000, 2);
    let corrupt_d = sha256(&data(300_000, 3)); // what the upstream claims it is
    let short = data(300_000, 4);
    let short_d = sha256(&short);
    let redirected = data(200_000, 5);
    let redirected_d = sha256(&redirected);
    let manifest_a = oci_manifest((&good_d, good.len()), &[]);
    let manifest_b = oci_manifest((&redirected_d, redirected.len()), &[]);
    let (a_d, b_d) = (sha256(&manifest_a), sha256(&manifest_b));
    let wrong_d = sha256(b"not the manifest");

    // Where blobs are redirected to: another origin, which must not see the credentials.
    let storage = {
        let redirected = redirected.clone();
        Fake::start(move |_, _| Reply::Full(200, vec![], redirected.clone())).await
    };
    let storage_url = format!("http://{}/bucket/blob", storage.addr);
    let upstream = {
        let (good, good_d) = (good.clone(), good_d.clone());
        let (corrupt, corrupt_d) = (corrupt.clone(), corrupt_d.clone());
        let (short, short_d, redirected_d) = (short.clone(), short_d.clone(), redirected_d.clone());
        let (manifest_a, manifest_b) = (manifest_a.clone(), manifest_b.clone());
        let (a_d, b_d, wrong_d) = (a_d.clone(), b_d.clone(), wrong_d.clone());
        let oci = || {
            (
                "content-type",
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            )
        };
        Fake::start(move |method, path| {
            let blob = |d: &str| path.ends_with(&format!("/blobs/{d}"));
            let manifest = |r: &str| path.ends_with(&format!("/manifests/{r}"));
            if blob(&good_d) {
                Reply::Full(200, vec![], good.clone())
            } else if blob(&corrupt_d) {
                Reply::Full(200, vec![], corrupt.clone())
            } else if blob(&short_d) {
                Reply::Cut(short.len() as u64, short[..100_000].to_vec())
            } else if blob(&redirected_d) {
                Reply::Full(307, vec![("location", storage_url.clone())], vec![])
            } else if manifest("moving") && method == "HEAD" {
                // The tag moves between the HEAD and a GET by tag: the GET is by digest.
                Reply::Full(
                    200,
                    vec![("docker-content-digest", a_d.clone()), oci()],
                    manifest_a.clone(),
                )
            } else if manifest("moving") {
                Reply::Full(200, vec![oci()], manifest_b.clone())
            } else if manifest(&a_d) {
                Reply::Full(200, vec![oci()], manifest_a.clone())
            } else if manifest(&b_d) || manifest(&wrong_d) {
                // Bytes that are not what the digest names.
                Reply::Full(200, vec![oci()], manifest_b.clone())
            } else if manifest("huge") {
                Reply::Cut(64 * 1024 * 1024, vec![b' '; 1000])
            } else if manifest("slow") {
                Reply::Stall
            } else {
                Reply::Full(404, vec![], b"{}".to_vec())
            }
        })
        .await
    };
    let work = tempfile::tempdir().unwrap();
    let cache = cache_of(work.path(), &format!("http://{}", upstream.addr), "2s");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}/v2/up/r/{p}", cache.url());

    // A good blob streams through, with the upstream's credentials sent to it.
    let r = http
        .get(url(&format!("blobs/{good_d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), good);
    let asked = upstream.seen(&good_d);
    assert!(
        !asked.is_empty() && asked.iter().all(|s| s.authorized && s.method == "GET"),
        "{asked:?}"
    );

    // Bytes that do not match their digest reach no client whole, and are not stored: the
    // next request asks the upstream again.
    for _ in 0..2 {
        let r = http
            .get(url(&format!("blobs/{corrupt_d}")))
            .send()
            .await
            .unwrap();
        if let Ok(b) = r.bytes().await {
            assert_ne!(b.len(), corrupt.len(), "a corrupt blob was served whole");
        }
    }
    assert_eq!(upstream.seen(&corrupt_d).len(), 2);
    // A body cut short: the same.
    for _ in 0..2 {
        let r = http
            .get(url(&format!("blobs/{short_d}")))
            .send()
            .await
            .unwrap();
        assert!(r.bytes().await.map_or(true, |b| b.len() < short.len()));
    }
    assert_eq!(upstream.seen(&short_d).len(), 2);

    // A redirect to another origin is followed without the credentials.
    let r = http
        .get(url(&format!("blobs/{redirected_d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), redirected);
    let at_storage = storage.seen("/bucket/blob");
    assert_eq!(at_storage.len(), 1);
    assert!(
        !at_storage[0].authorized,
        "credentials went to another host"
    );

    // A tag that moves during a pull: the manifest is the one the HEAD named.
    let r = http
        .get(url("manifests/moving"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], a_d.as_str());
    assert_eq!(r.bytes().await.unwrap(), manifest_a);

    // A manifest whose bytes are not its digest: 502, not stored.
    for _ in 0..2 {
        let r = http
            .get(url(&format!("manifests/{wrong_d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("hashes to"),
            "{body}"
        );
    }
    assert_eq!(upstream.seen(&wrong_d).len(), 2);
    // A huge manifest is refused before it is read; a stalled upstream is given up on.
    let r = http.get(url("manifests/huge")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let started = Instant::now();
    let r = http.get(url("manifests/slow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    let text = metrics_text(&http, &cache.url()).await;
    let errors = counter(&text, "registry_mirror_errors_total", &[r#"prefix="up""#]);
    assert!(
        errors >= 7,
        "corrupt 2, short 2, wrong manifest 2, huge, slow: {text}"
    );
    let log = cache.logged();
    assert!(
        !log.contains("up-secret"),
        "the upstream password was logged"
    );
}

/// 20 clients pull one uncached 200 MiB layer at once: one upstream fetch, and each client
/// receives bytes before the upstream has sent the whole layer.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_an_uncached_layer_make_one_upstream_fetch() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let layer = Arc::new(data(200 * 1024 * 1024, 9));
    let digest = common::sha256(&layer);
    let gate = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (layer, digest, gate) = (layer.clone(), digest.clone(), gate.clone());
        Fake::start(move |_, path| {
            if path.ends_with(&format!("/blobs/{digest}")) {
                Reply::Gated(layer.clone(), 4 * 1024 * 1024, gate.clone())
            } else {
                Reply::Full(404, vec![], b"{}".to_vec())
            }
        })
        .await
    };
    let work = tempfile::tempdir().unwrap();
    // 20 clients hashing 4 GiB in this process and the server share 2 cores: the default
    // timeout.
    let cache = cache_of(work.path(), &format!("http://{}", upstream.addr), "30s");
    let http = reqwest::Client::new();
    let started = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}/v2/up/r/blobs/{digest}", cache.url());
            let (http, started, layer) = (http.clone(), started.clone(), layer.clone());
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let mut body = r.bytes_stream();
                let (mut same, mut n, mut counted) = (true, 0usize, false);
                while let Some(chunk) = body.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => return Err(format!("after {n} bytes: {e}")),
                    };
                    same &= layer.get(n..n + chunk.len()) == Some(&chunk[..]);
                    n += chunk.len();
                    if n >= 1024 * 1024 && !counted {
                        counted = true;
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok((n, same))
            })
        })
        .collect();
    // Every client has its first MiB while the upstream still holds back all but 4 MiB.
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "clients waited for the whole layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.store(true, Ordering::SeqCst);
    for c in clients {
        let (n, same) = c
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}; the cache's log:\n{}", cache.logged()));
        assert_eq!((n, same), (layer.len(), true));
    }
    assert_eq!(upstream.seen(&digest).len(), 1, "one upstream fetch");
    // Now cached: served without the upstream.
    let r = http
        .head(format!("{}/v2/up/r/blobs/{digest}", cache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.seen(&digest).len(), 1);
}

/// An upstream with Docker token authentication (this registry in token mode) and a scoped
/// pull-only token as the mirror's credentials: the cache follows the Bearer challenge.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_authenticated_upstream_is_mirrored_with_a_scoped_token() {
    use common::cli::{ok, serve};
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let addr = format!("127.0.0.1:{}", common::free_port());
    ok(
        h,
        &["instance", "create", "default", "--listen", &addr],
        None,
    );
    ok(
        h,
        &["user", "add", "bob", "--password-stdin"],
        Some("bob-password-1"),
    );
    ok(h, &["token", "init"], None);
    let created = ok(
        h,
        &[
            "token",
            "create",
            "--name",
            "mirror",
            "--scope",
            "repository:lib/*:pull",
            "--expires",
            "1d",
        ],
        None,
    );
    let secret = created
        .lines()
        .find(|l| l.starts_with("rgt_"))
        .unwrap()
        .to_owned();
    let _upstream = serve(h, &addr);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = push(
        w,
        "img",
        &format!("{addr}/lib/app:v1"),
        &[tar(&[("a", b"token-guarded layer\n")])],
        "bob:bob-password-1",
    );
    let config = w.join("cache.toml");
    std::fs::write(w.join("token"), format!("{secret}\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[proxy]]\nprefix = \"up\"\nurl = \"http://{addr}\"\nusername = \"mirror\"\npassword_file = \"{}\"\n",
            w.join("token").display()
        ),
    )
    .unwrap();
    let cache = Server::start(&["--config", config.to_str().unwrap()]);
    assert_eq!(pull(w, &format!("{}/up/lib/app:v1", cache.addr)), image);
    // Outside the token's scope the upstream refuses: 502 with what it said, not a hang.
    let r = reqwest::get(format!("{}/v2/up/other/app/manifests/v1", cache.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("refused access to other/app"), "{message}");
    assert!(!message.contains(&secret), "{message}");
}

/// Docker (`--registry-mirror`), podman (a `registries.conf` mirror) and containerd (a
/// `hosts.toml` mirror) pull "Docker Hub" images through the instance, which mirrors a stand-in
/// for Docker Hub as its default mirror and a second upstream (behind Basic) under its prefix,
/// while images of its own are pushed to and pulled from it. Only the first pull of an image
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn docker_podman_and_containerd_use_the_instance_as_a_mirror() {
    use common::tools::{podman, podman_root, Containerd, Docker};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let hub = Server::start(&[]);
    let second = Server::start(&[
        "--htpasswd",
        bcrypt_user(w, "ann", "up-secret").to_str().unwrap(),
    ]);
    let alpine = push(
        w,
        "alpine",
        &format!("{}/library/alpine:latest", hub.addr),
        &[tar(&[("hello", b"an official image\n")])],
        "x:y",
    );
    let app = push(
        w,
        "app",
        &format!("{}/org/app:v1", second.addr),
        &[tar(&[("app", b"from the second upstream\n")])],
        "ann:up-secret",
    );
    let config = w.join("cache.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[proxy]]
prefix = "docker.io"
url = "{}"
default = true
library = true

[[proxy]]
prefix = "quay.test"
url = "{}"
username = "ann"
password = "up-secret"
"#,
            hub.url(),
            second.url()
        ),
    )
    .unwrap();
    let cache = Server::start(&["--config", config.to_str().unwrap()]);
    let c = &cache.addr;
    let http = reqwest::Client::new();
    let hub_gets = || async {
        let text = metrics_text(&http, &hub.url()).await;
        counter(
            &text,
            "registry_http_requests_total",
            &[r#"endpoint="blob""#, r#"method="GET""#, r#"status="200""#],
        )
    };

    // Docker: docker.io pulls go to the mirror (there is no other way out of this machine).
    let docker = Docker::start_with(
        &w.join("docker"),
        &["--registry-mirror", &format!("http://{c}")],
    );
    run(docker.cmd(&["pull", "alpine"]));
    let digests = run(docker.cmd(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "alpine",
    ]));
    assert!(
        String::from_utf8_lossy(&digests.stdout).contains(&alpine),
        "{digests:?}"
    );
    assert_eq!(hub_gets().await, 2, "config and layer, fetched once");
    // The second upstream by its prefix, and a push of the instance's own.
    run(docker.cmd(&["pull", &format!("{c}/quay.test/org/app:v1")]));
    run(docker.cmd(&["tag", "alpine", &format!("{c}/own/docker:v1")]));
    run(docker.cmd(&["push", &format!("{c}/own/docker:v1")]));
    run(docker.cmd(&["tag", "alpine", &format!("{c}/quay.test/org/app:mine")]));
    let err = run_fails(docker.cmd(&["push", &format!("{c}/quay.test/org/app:mine")]));
    assert!(err.contains("denied") || err.contains("read-only"), "{err}");
    drop(docker);

    // podman: a mirror entry for docker.io in registries.conf.
    let root = w.join("podman");
    podman_root(&root);
    let registries = root.join("registries.conf");
    std::fs::write(
        &registries,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{c}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    let podman_env = |args: &[&str]| {
        let mut cmd = podman(&root, args);
        cmd.env("CONTAINERS_REGISTRIES_CONF", &registries);
        cmd
    };
    run(podman_env(&["pull", "docker.io/library/alpine:latest"]));
    run(podman_env(&[
        "pull",
        "--tls-verify=false",
        &format!("{c}/quay.test/org/app:v1"),
    ]));
    run(podman_env(&[
        "pull",
        "--tls-verify=false",
        &format!("{c}/own/docker:v1"),
    ]));

    // containerd: a hosts.toml mirror for docker.io.
    let hosts = w.join("hosts/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{c}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let containerd = Containerd::start(&w.join("containerd"));
    let hosts_dir = w.join("hosts");
    run(containerd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir.to_str().unwrap(),
        "docker.io/library/alpine:latest",
    ]));
    run(containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        &format!("{c}/quay.test/org/app:v1"),
    ]));
    let listed = run(containerd.ctr(&["images", "ls"]));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains(&alpine) && listed.contains(&app),
        "{listed}"
    );

    // Three clients, one upstream fetch of each blob.
    assert_eq!(hub_gets().await, 2);
}

/// Eviction: `registry gc --mirror-max-unused` removes a cache no one pulled from while the
/// instance serves; its own repositories stay; the next pull fetches again.
#[tokio::test(flavor = "multi_thread")]
async fn unused_caches_are_evicted_by_garbage_collection() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let upstream = Server::start(&[]);
    let image = push(
        w,
        "img",
        &format!("{}/lib/app:v1", upstream.addr),
        &[tar(&[("a", &data(500_000, 3)[..])])],
        "x:y",
    );
    let config = w.join("cache.toml");
    std::fs::write(
        &config,
        format!("[[proxy]]\nprefix = \"up\"\nurl = \"{}\"\n", upstream.url()),
    )
    .unwrap();
    let cache = Server::start(&["--config", config.to_str().unwrap()]);
    let own = push(
        w,
        "own",
        &format!("{}/mine/app:v1", cache.addr),
        &[tar(&[("own", b"kept\n")])],
        "x:y",
    );
    let http = reqwest::Client::new();
    let gets = || async {
        let text = metrics_text(&http, &upstream.url()).await;
        counter(
            &text,
            "registry_http_requests_total",
            &[r#"endpoint="blob""#, r#"method="GET""#, r#"status="200""#],
        )
    };
    assert_eq!(pull(w, &format!("{}/up/lib/app:v1", cache.addr)), image);
    assert_eq!(gets().await, 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let storage = cache.data();
    let gc = |max: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_registry"))
            .args([
                "gc",
                "--storage",
                storage.to_str().unwrap(),
                "--grace-period",
                "0s",
            ])
            .args(["--mirror-max-unused", max])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let kept = gc("1h");
    assert!(!kept.contains("evicted"), "{kept}");
    // A quota the cache fits in changes nothing either.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_registry"))
        .args([
            "gc",
            "--storage",
            storage.to_str().unwrap(),
            "--grace-period",
            "0s",
        ])
        .args(["--mirror-max-bytes", "1MiB"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains("deleted: ") && !out.contains("evicted"),
        "{out}"
    );
    let evicted = gc("2s");
    assert!(
        evicted.contains("evicted 1 pull-through caches (1 tags)"),
        "{evicted}"
    );
    assert!(!evicted.contains("mine/app"), "{evicted}");
    assert_eq!(pull(w, &format!("{}/mine/app:v1", cache.addr)), own);
    // Fetched again (the metadata cache of the serving instance forgets within a second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pull(w, &format!("{}/up/lib/app:v1", cache.addr)), image);
    assert_eq!(gets().await, 4);
}

/// A multi-platform index is cached with the platforms that are pulled, no others; deleting a
/// cached manifest evicts it (the next pull fetches it again).
#[tokio::test(flavor = "multi_thread")]
async fn an_index_caches_the_platforms_pulled() {
    use common::{oci_manifest, sha256};
    let upstream = Server::start_logged(&[]);
    let http = reqwest::Client::new();
    let up = upstream.url();
    let blob = |bytes: Vec<u8>| {
        let (http, up) = (http.clone(), up.clone());
        async move {
            let d = sha256(&bytes);
            let r = http
                .post(format!("{up}/v2/r/blobs/uploads/?digest={d}"))
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            (d, bytes.len())
        }
    };
    let put = |reference: String, media: &'static str, bytes: Vec<u8>| {
        let (http, up) = (http.clone(), up.clone());
        async move {
            let r = http
                .put(format!("{up}/v2/r/manifests/{reference}"))
                .header("content-type", media)
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    let mut children = Vec::new();
    for (arch, seed) in [("amd64", 1), ("arm64", 2)] {
        let config = blob(format!("{{\"architecture\":\"{arch}\"}}").into_bytes()).await;
        let layer = blob(data(100_000, seed)).await;
        let m = oci_manifest((&config.0, config.1), &[(&layer.0, layer.1)]);
        let d = sha256(&m);
        put(d.clone(), OCI, m.clone()).await;
        children.push((arch, d, m.len(), layer.0));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children.iter().map(|(arch, d, n, _)| serde_json::json!({
            "mediaType": OCI, "digest": d, "size": n,
            "platform": {"architecture": arch, "os": "linux"},
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    put(
        "multi".into(),
        "application/vnd.oci.image.index.v1+json",
        index.clone(),
    )
    .await;

    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("cache.toml");
    std::fs::write(
        &config,
        format!("[[proxy]]\nprefix = \"up\"\nurl = \"{up}\"\n"),
    )
    .unwrap();
    let cache = Server::start(&["--config", config.to_str().unwrap()]);
    let get = |path: String| {
        let (http, base) = (http.clone(), cache.url());
        async move {
            let r = http
                .get(format!("{base}/v2/up/r/{path}"))
                .header("accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };
    assert_eq!(
        get("manifests/multi".into()).await,
        (200, index.clone().into())
    );
    let (_, amd64, _, amd64_layer) = &children[0];
    let (_, arm64, _, arm64_layer) = &children[1];
    assert_eq!(get(format!("manifests/{amd64}")).await.0, 200);
    assert_eq!(get(format!("blobs/{amd64_layer}")).await.0, 200);
    let asked = |what: &str| {
        let log = upstream.logged();
        log.lines()
            .filter(|l| l.contains("method=GET") && l.contains(what))
            .count()
    };
    assert_eq!(asked(amd64.as_str()), 1);
    assert_eq!(
        asked(arm64.as_str()),
        0,
        "a platform no one pulled was fetched"
    );
    assert_eq!(asked(arm64_layer.as_str()), 0);
    // Cached: no second request.
    assert_eq!(get(format!("manifests/{amd64}")).await.0, 200);
    assert_eq!(asked(amd64.as_str()), 1);
    // Deleting the cached manifest evicts it; the next pull fetches it again.
    let r = http
        .delete(format!("{}/v2/up/r/manifests/{amd64}", cache.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(format!("manifests/{amd64}")).await.0, 200);
    assert_eq!(asked(amd64.as_str()), 2);
}
