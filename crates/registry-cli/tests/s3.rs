//! End-to-end on S3: `registry serve --storage s3://…` against a real Garage started by the
//! test. One node: chunked uploads with chunks of any size, pushes and pulls. Two nodes on one
//! bucket: an upload whose PATCHes alternate between them, racing tag updates. An S3 outage in
//! the middle of a push: 503 UNAVAILABLE, the registry survives, and works again afterwards.
//! Events from two nodes on one bucket reach a webhook, each once.

mod common;

use common::{chunked_push, data, sha256, start_upload, Server};
use registry_core::garage::{Garage, BUCKET};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn node(garage: &Garage, prefix: &str) -> Server {
    Server::start_on(Some(format!("s3://{BUCKET}/{prefix}")), garage.env(), &[])
}

async fn start_garage() -> Garage {
    tokio::task::spawn_blocking(Garage::start).await.unwrap()
}

async fn push_manifest(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    config: &str,
    layers: &[(&str, usize)],
) -> String {
    let manifest = common::oci_manifest((config, 2), layers);
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    sha256(&manifest)
}

async fn push_config(http: &Client, base: &str, repo: &str) -> String {
    common::push_blob(http, base, repo, b"{}").await
}

#[tokio::test]
async fn one_node_push_and_pull_with_chunks_of_any_size() {
    let garage = start_garage().await;
    let server = node(&garage, "one");
    let base = server.url();
    let http = Client::new();
    // Chunks below and above S3's 5 MiB part minimum, in any mix.
    let bytes = data(13 * 1024 * 1024 + 7, 5);
    let sizes = [
        3,
        6 * 1024 * 1024,
        1,
        5 * 1024 * 1024 - 1,
        2 * 1024 * 1024 + 4,
    ];
    let layer = chunked_push(&http, &[&base], &base, "s3/app", &bytes, &sizes).await;
    let config = push_config(&http, &base, "s3/app").await;
    let manifest = push_manifest(
        &http,
        &base,
        "s3/app",
        "v1",
        &config,
        &[(&layer, bytes.len())],
    )
    .await;

    let r = http
        .get(format!("{base}/v2/s3/app/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got = r.bytes().await.unwrap();
    assert_eq!(sha256(&got), layer);
    let r = http
        .get(format!("{base}/v2/s3/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        manifest
    );
    let tags: Value = common::get_json(&http, format!("{base}/v2/s3/app/tags/list")).await;
    assert_eq!(tags["tags"], json!(["v1"]));
    let catalog: Value = common::get_json(&http, format!("{base}/v2/_catalog")).await;
    assert_eq!(catalog["repositories"], json!(["s3/app"]));
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

/// More than 10 000 PATCH chunks, alternating between two nodes, on S3. A soak: each PATCH that
/// merges into a small earlier chunk reads it back, and Garage delays the first byte of every
/// object over 3 KiB by 40 ms, so this takes minutes; CI runs the same upload on the
/// filesystem (tests/api.rs) and a few hundred chunks on S3 (the backend suite).
/// `cargo test -p registry-cli --test s3 -- --ignored`, or `scripts/measure-s3.sh` (PARTS=chunks).
#[tokio::test]
#[ignore = "soak: several minutes on Garage"]
async fn ten_thousand_and_one_chunks_across_two_nodes() {
    let garage = start_garage().await;
    let (a, b) = (node(&garage, "many"), node(&garage, "many"));
    let (a, b) = (a.url(), b.url());
    let http = Client::new();
    let sizes = common::mixed_chunk_sizes(10_001, 6 * 1024 * 1024);
    let bytes = data(sizes.iter().sum(), 9);
    let started = std::time::Instant::now();
    let d = chunked_push(&http, &[&a, &b], &b, "many", &bytes, &sizes).await;
    eprintln!(
        "10 001 chunks, {} bytes: {:?}",
        bytes.len(),
        started.elapsed()
    );
    let r = http
        .get(format!("{a}/v2/many/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), d);
}

#[tokio::test]
async fn two_nodes_share_one_bucket() {
    let garage = start_garage().await;
    let (a, b) = (node(&garage, "shared"), node(&garage, "shared"));
    let (ua, ub) = (a.url(), b.url());
    let http = Client::new();
    // PATCHes alternate between the nodes; the second one finishes.
    let bytes = data(3 * 1024 * 1024 + 11, 9);
    let sizes = [1024 * 1024, 7, 1024 * 1024, 1024 * 1024 + 4];
    let layer = chunked_push(&http, &[&ua, &ub], &ub, "multi/app", &bytes, &sizes).await;
    let config = push_config(&http, &ua, "multi/app").await;
    let manifest = push_manifest(
        &http,
        &ua,
        "multi/app",
        "v1",
        &config,
        &[(&layer, bytes.len())],
    )
    .await;
    let r = http
        .get(format!("{ub}/v2/multi/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        manifest
    );
    let got = http
        .get(format!("{ub}/v2/multi/app/blobs/{layer}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), layer);

    // 20 tag updates at once, split across the nodes: the tag ends on one of the pushed
    // manifests, and that manifest is complete.
    let pushes = (0..20).map(|i| {
        let http = http.clone();
        let base = if i % 2 == 0 { ua.clone() } else { ub.clone() };
        let (layer, config) = (layer.clone(), config.clone());
        let n = bytes.len();
        async move {
            // Each manifest differs by an annotation-free layer list order trick: repeat the
            // layer i+1 times.
            let layers: Vec<(&str, usize)> = (0..=i).map(|_| (layer.as_str(), n)).collect();
            push_manifest(&http, &base, "multi/race", "latest", &config, &layers).await
        }
    });
    // The race repository needs its blobs first.
    for base in [&ua] {
        let r = http
            .post(format!(
                "{base}/v2/multi/race/blobs/uploads/?mount={layer}&from=multi/app"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = http
            .post(format!(
                "{base}/v2/multi/race/blobs/uploads/?mount={config}&from=multi/app"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let pushed: Vec<String> = futures::future::join_all(pushes).await;
    for base in [&ua, &ub] {
        let r = http
            .get(format!("{base}/v2/multi/race/manifests/latest"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            pushed.contains(&digest),
            "{digest} is not one of the pushes"
        );
        let m: Value = r.json().await.unwrap();
        for l in m["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            let h = http
                .head(format!("{base}/v2/multi/race/blobs/{d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(h.status(), StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_mid_push_gives_503_and_recovers() {
    let mut garage = start_garage().await;
    let server = node(&garage, "outage");
    let base = server.url();
    // A refused request body leaves its connection closed: no pooled connections here.
    let http = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let bytes = data(2 * 1024 * 1024, 3);
    let location = start_upload(&http, &base, "down/app").await;
    let r = http
        .patch(format!("{base}{location}"))
        .header("content-range", format!("0-{}", 1024 * 1024 - 1))
        .body(bytes[..1024 * 1024].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();

    tokio::task::block_in_place(|| garage.stop());
    let r = http
        .patch(format!("{base}{location}"))
        .header(
            "content-range",
            format!("{}-{}", 1024 * 1024, bytes.len() - 1),
        )
        .body(bytes[1024 * 1024..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = http
        .get(format!("{base}/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    tokio::task::block_in_place(|| garage.resume());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(
            std::time::Instant::now() < deadline,
            "storage did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A new push of the same content succeeds; nothing half-written is listed.
    let sizes = [1024 * 1024, 1024 * 1024];
    let layer = chunked_push(&http, &[&base], &base, "down/app", &bytes, &sizes).await;
    let config = push_config(&http, &base, "down/app").await;
    push_manifest(
        &http,
        &base,
        "down/app",
        "v1",
        &config,
        &[(&layer, bytes.len())],
    )
    .await;
    let catalog: Value = common::get_json(&http, format!("{base}/v2/_catalog")).await;
    assert_eq!(catalog["repositories"], json!(["down/app"]));
}

/// An S3 server that accepts connections but answers nothing (frozen with SIGSTOP): health
/// checks answer 503 within 2 s and requests within the metadata timeout, instead of hanging
/// for the transport's minute; when it answers again, so does the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_s3_is_answered_within_seconds() {
    let garage = start_garage().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nurl = \"s3://{BUCKET}/stalled\"\n[storage.s3]\nmetadata_timeout = \"3s\"\n"
        ),
    )
    .unwrap();
    let storage = Some(format!("s3://{BUCKET}/stalled"));
    let server = Server::start_on(storage, garage.env(), &["--config", cfg.to_str().unwrap()]);
    let base = server.url();
    let http = Client::new();
    let config = push_config(&http, &base, "stall/app").await;
    push_manifest(&http, &base, "stall/app", "v1", &config, &[]).await;

    garage.freeze();
    let timed = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let start = std::time::Instant::now();
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            (r.status(), start.elapsed())
        }
    };
    let (status, took) = timed("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        took < std::time::Duration::from_millis(2500),
        "healthz took {took:?}"
    );
    for path in [
        "/v2/stall/app/manifests/v1",
        "/v2/stall/app/tags/list",
        "/v2/_catalog",
    ] {
        let (status, took) = timed(path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{path} took {took:?}"
        );
    }
    garage.thaw();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while timed("/healthz").await.0 != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "storage did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(timed("/v2/stall/app/manifests/v1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn redirect_mode_serves_blobs_from_s3() {
    let garage = start_garage().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!("[storage]\nurl = \"s3://{BUCKET}/redirect\"\n[storage.s3]\nredirect = true\n"),
    )
    .unwrap();
    let server = Server::start_on(
        Some(format!("s3://{BUCKET}/redirect")),
        garage.env(),
        &["--config", cfg.to_str().unwrap()],
    );
    let base = server.url();
    let http = Client::new();
    let bytes = data(1024 * 1024 + 3, 4);
    let layer = chunked_push(
        &http,
        &[&base],
        &base,
        "redir/app",
        &bytes,
        &[1000, 1024 * 1024 + 3 - 1000],
    )
    .await;

    // The redirect's location, after checking that following it (as clients do) gets the
    // right bytes, from S3.
    let no_follow = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = |digest: String| {
        let (http, no_follow, base) = (http.clone(), no_follow.clone(), base.clone());
        async move {
            let url = format!("{base}/v2/redir/app/blobs/{digest}");
            let r = no_follow.get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            let got = http.get(&url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(sha256(&got), digest);
            location
        }
    };
    let location = redirect(layer.clone()).await;
    assert!(location.starts_with(&garage.endpoint), "{location}");
    // A blob whose session streamed into a multipart upload: the redirect goes to where its
    // bytes are, not to the pointer at its key.
    let big = data(7 * 1024 * 1024 + 5, 6);
    let placed = chunked_push(
        &http,
        &[&base],
        &base,
        "redir/app",
        &big,
        &[6 * 1024 * 1024, 1024 * 1024 + 5],
    )
    .await;
    let location = redirect(placed).await;
    assert!(location.contains("/placed/"), "{location}");
    // HEAD is answered by the registry; unknown blobs are still 404 BLOB_UNKNOWN.
    let r = http
        .head(format!("{base}/v2/redir/app/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = no_follow
        .get(format!("{base}/v2/redir/app/blobs/{}", sha256(b"nothing")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Another repository cannot be used to get a URL for it.
    let r = no_follow
        .get(format!("{base}/v2/redir/other/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Found by the 6 GiB soak: object_store's default 30 s request timeout includes the body, so a
/// blob pull from S3 by a client slower than size/30 s was cut off mid-stream. Reads slowly for
/// about 40 seconds and checks every byte.
#[tokio::test]
async fn slow_pull_of_a_big_blob_is_not_cut_off() {
    use futures::StreamExt;
    let garage = start_garage().await;
    let server = node(&garage, "slow");
    let base = server.url();
    let http = Client::new();
    let bytes = data(96 * 1024 * 1024, 8);
    let digest = sha256(&bytes);
    let r = http
        .post(format!("{base}/v2/slow/app/blobs/uploads/?digest={digest}"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .get(format!("{base}/v2/slow/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut got = Vec::with_capacity(bytes.len());
    let start = std::time::Instant::now();
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("the stream was cut off"));
        // About 2.4 MiB/s: the whole read takes ~40 s.
        let due = std::time::Duration::from_secs_f64(got.len() as f64 / (2.4 * 1048576.0));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert!(
        start.elapsed() > std::time::Duration::from_secs(32),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.len(), bytes.len());
    assert_eq!(sha256(&got), digest);
}

#[tokio::test]
async fn two_nodes_on_one_bucket_deliver_every_event_once() {
    use common::webhook::Receiver;
    let garage = start_garage().await;
    // The endpoint fails at first: both nodes queue, one delivers.
    let hook = Receiver::start(None, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "[[notify]]\nname = \"hook\"\nurl = \"{}\"\nbackoff = \"50ms\"\nactions = [\"push\"]\n",
            hook.url()
        ),
    )
    .unwrap();
    let storage = Some(format!("s3://{BUCKET}/events"));
    let args = ["--config", config.to_str().unwrap()];
    let a = Server::start_on(storage.clone(), garage.env(), &args);
    let b = Server::start_on(storage, garage.env(), &args);
    let http = Client::new();
    let mut pushed = Vec::new();
    for i in 0..20u64 {
        let base = if i % 2 == 0 { a.url() } else { b.url() };
        let d = common::push_blob(&http, &base, "team/app", &data(1000, i)).await;
        pushed.push(d);
    }
    hook.wait_for("twenty pushes", |e| e.len() >= 20).await;
    // Give a second deliverer the time it would need to send anything twice.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let events = hook.events();
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no event twice");
    assert_eq!(events.len(), 20, "{events:#?}");
    let mut digests: Vec<&str> = events
        .iter()
        .map(|e| e["target"]["digest"].as_str().unwrap())
        .collect();
    digests.sort();
    pushed.sort();
    assert_eq!(digests, pushed, "no event lost");
    let nodes: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["source"]["instanceID"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "events from both nodes");
}
