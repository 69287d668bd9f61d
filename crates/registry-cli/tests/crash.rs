//! Crash safety: SIGKILL the server during many concurrent uploads, restart it, and check that
//! every blob and manifest that got a 201 is intact, and that nothing half-written is visible.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{data, sha256, Server};
use reqwest::{Client, StatusCode};

#[derive(Default)]
struct Outcome {
    /// (digest, bytes) that the server answered 201 for.
    acknowledged: Vec<(String, Vec<u8>)>,
    /// (digest, bytes) whose upload was cut off.
    attempted: Vec<(String, Vec<u8>)>,
    /// (tag, manifest digest) acknowledged.
    manifests: Vec<(String, String)>,
}

async fn push(
    client: &Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    chunked: bool,
) -> Result<StatusCode, reqwest::Error> {
    let d = sha256(bytes);
    if !chunked {
        let r = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(bytes.to_vec())
            .send()
            .await?;
        return Ok(r.status());
    }
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let mut start = 0;
    for chunk in bytes.chunks(256 * 1024) {
        let r = client
            .patch(format!("{base}{loc}"))
            .header(
                "content-range",
                format!("{}-{}", start, start + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Ok(r.status());
        }
        start += chunk.len();
    }
    let r = client.put(format!("{base}{loc}?digest={d}")).send().await?;
    Ok(r.status())
}

async fn worker(base: String, id: u64, outcome: Arc<Mutex<Outcome>>, killed: Arc<AtomicBool>) {
    let client = Client::new();
    for round in 0.. {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let seed = id * 1000 + round;
        let bytes = data(300_000 + (seed as usize % 7) * 150_000, seed);
        let d = sha256(&bytes);
        let repo = format!("crash/w{id}");
        match push(&client, &base, &repo, &bytes, round % 2 == 1).await {
            Ok(StatusCode::CREATED) => {
                outcome
                    .lock()
                    .unwrap()
                    .acknowledged
                    .push((d.clone(), bytes));
                let m = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 0},
                    "layers": [],
                }))
                .unwrap();
                let tag = format!("r{round}");
                let r = client
                    .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                    .body(m.clone())
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == StatusCode::CREATED {
                        outcome
                            .lock()
                            .unwrap()
                            .manifests
                            .push((format!("{repo}:{tag}"), sha256(&m)));
                    }
                }
            }
            // A request that reached the restarted server without its session.
            Ok(_) if killed.load(Ordering::SeqCst) => return,
            Ok(status) => panic!("unexpected status {status}"),
            Err(_) => {
                outcome.lock().unwrap().attempted.push((d, bytes));
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_uploads_loses_nothing_acknowledged() {
    let mut server = Server::start(&[]);
    let base = server.url();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let killed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..24)
        .map(|id| tokio::spawn(worker(base.clone(), id, outcome.clone(), killed.clone())))
        .collect();
    // Kill once traffic is flowing (at least 24 acknowledged pushes, however loaded the
    // machine is; a fixed delay flaked under load), with more in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while outcome.lock().unwrap().acknowledged.len() < 24 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    killed.store(true, Ordering::SeqCst);
    server.kill_and_restart();
    for w in workers {
        w.await.unwrap();
    }
    let outcome = std::mem::take(&mut *outcome.lock().unwrap());
    assert!(
        outcome.acknowledged.len() >= 24,
        "too little traffic before the kill: {}",
        outcome.acknowledged.len()
    );
    assert!(
        !outcome.attempted.is_empty(),
        "the kill interrupted no upload"
    );

    let client = Client::new();
    for (d, bytes) in &outcome.acknowledged {
        let stored = find_blob(&client, &base, d).await;
        assert!(
            stored.is_some(),
            "acknowledged blob {d} is missing after the crash"
        );
        assert!(
            stored.unwrap() == *bytes,
            "acknowledged blob {d} is corrupt"
        );
    }
    for (reference, digest) in &outcome.manifests {
        let (repo, tag) = reference.split_once(':').unwrap();
        let r = client
            .head(format!("{base}/v2/{repo}/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged manifest {reference} is missing"
        );
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    }
    // Interrupted uploads are either absent or complete, never partial.
    for (d, bytes) in &outcome.attempted {
        if let Some(stored) = find_blob(&client, &base, d).await {
            assert!(stored == *bytes, "interrupted blob {d} visible but partial");
        }
    }
    // Every stored blob file holds exactly the bytes its name promises.
    let mut checked = 0;
    for entry in walk(&server.data().join("blobs")) {
        if entry.file_name().unwrap() == "data" {
            let bytes = std::fs::read(&entry).unwrap();
            let hex = entry
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{hex}"),
                "{}",
                entry.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= outcome.acknowledged.len());
}

/// The blob from whichever worker repository holds it; every other answer must be 404.
async fn find_blob(client: &Client, base: &str, digest: &str) -> Option<Vec<u8>> {
    let mut found = None;
    for id in 0..24 {
        let r = client
            .get(format!("{base}/v2/crash/w{id}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => found = Some(r.bytes().await.unwrap().to_vec()),
            status => assert_eq!(status, StatusCode::NOT_FOUND),
        }
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
