//! The pull-through cache end to end: an upstream registry (this registry's binary behind
//! HTTP Basic) on loopback with images pushed by skopeo, and an instance that mirrors it beside
//! repositories of its own. Upstream requests are counted from the upstream's `/metrics`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tools::{run, run_fails, skopeo};
use common::{data, metrics_text, tar, write_oci_layout, Server};

/// Writes `dir/htpasswd` with one bcrypt user; returns its path.
fn bcrypt_user(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 4).unwrap();
    std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
    path
}

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
