//! `registry gc` while clients push and pull: four clients push images that share base layers,
//! re-tagging as they go (so earlier manifests become garbage), as a client does: HEAD a blob,
//! upload it only when missing, push the manifest, and on MANIFEST_BLOB_UNKNOWN push the blobs
//! again. Meanwhile gc runs in a loop with no grace period and --delete-untagged. Afterwards
//! every tagged image pulls with verified digests, fsck finds nothing wrong, and a last gc
//! leaves exactly the blobs the tags need.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use common::cli::{registry, registry_env};
use common::{data, oci_manifest, sha256, Server};
use reqwest::{Client, StatusCode};

/// Uploads `bytes` unless the repository has them.
async fn ensure_blob(http: &Client, base: &str, repo: &str, bytes: &[u8], force: bool) -> String {
    let digest = sha256(bytes);
    let head = http
        .head(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    if force || head.status() != StatusCode::OK {
        common::push_blob(http, base, repo, bytes).await;
    }
    digest
}

/// Pushes an image of `layers` as `repo:tag`, re-pushing blobs when the registry says one is
/// missing (a collection took it between the HEAD and the manifest).
async fn push_image(
    http: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    config: &[u8],
    layers: &[Vec<u8>],
) {
    let mut force = false;
    for _attempt in 0..5 {
        let dc = ensure_blob(http, base, repo, config, force).await;
        let mut ds = Vec::new();
        for l in layers {
            ds.push((ensure_blob(http, base, repo, l, force).await, l.len()));
        }
        let refs: Vec<(&str, usize)> = ds.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        let m = oci_manifest((&dc, config.len()), &refs);
        let r = http
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(m)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::CREATED => return,
            StatusCode::BAD_REQUEST => {
                let body = r.text().await.unwrap();
                assert!(body.contains("MANIFEST_BLOB_UNKNOWN"), "{body}");
                eprintln!("{repo}:{tag}: a blob went missing under the push; pushing again");
                force = true;
            }
            other => panic!("manifest push: {other}"),
        }
    }
    panic!("{repo}:{tag} could not be pushed in 5 attempts");
}

/// Pulls `repo:tag` and checks every digest; returns the blob digests it needs.
async fn pull_verified(http: &Client, base: &str, repo: &str, tag: &str) -> Vec<String> {
    let r = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = r.bytes().await.unwrap();
    assert_eq!(sha256(&bytes), digest);
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut needed = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    needed.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in &needed {
        let r = http
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag} needs {d}");
        assert_eq!(&sha256(&r.bytes().await.unwrap()), d);
    }
    needed
}

/// `registry gc --storage STORAGE --grace-period 0s --delete-untagged EXTRA…`
fn collect(
    home: &Path,
    storage: &str,
    extra: &[&str],
    env: &[(&str, &OsStr)],
) -> std::process::Output {
    let args = [&["gc", "--storage", storage], &NOW[..], extra].concat();
    registry_env(home, &args, None, env)
}

/// Collect everything not reachable from a tag, however young.
const NOW: [&str; 3] = ["--grace-period", "0s", "--delete-untagged"];

fn assert_fsck_clean(home: &Path, storage: &str) {
    let out = registry(home, &["fsck", "--storage", storage], None);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
}

fn blob_files(store: &Path) -> usize {
    walk(&store.join("blobs"))
}

fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                walk(&p)
            } else {
                usize::from(p.file_name().unwrap() == "data")
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_while_clients_push_and_pull() {
    let server = Server::start(&[]);
    let storage = server.data().display().to_string();
    push_pull_while_collecting(&server, &storage, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_while_clients_push_and_pull_on_s3() {
    use registry_core::garage::{Garage, BUCKET};
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let storage = format!("s3://{BUCKET}/gc");
    let server = Server::start_on(Some(storage.clone()), garage.env(), &[]);
    push_pull_while_collecting(&server, &storage, garage.env()).await;
}

/// The blobs a storage holds, as fsck counts them (it also checks the store).
fn stored_blobs(home: &Path, storage: &str, env: &[(&'static str, String)]) -> usize {
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let out = registry_env(home, &["fsck", "--storage", storage], None, &env);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    let line = report.lines().last().unwrap();
    let count = line
        .strip_prefix("checked ")
        .and_then(|l| l.split(' ').next());
    count.unwrap().parse().unwrap()
}

/// Four clients push images that share base layers, re-tagging each round, while collections
/// run in a loop with no grace period; then every tag pulls whole, the store is consistent,
/// and a last collection leaves exactly the blobs the tags need.
async fn push_pull_while_collecting(
    server: &Server,
    storage: &str,
    env: Vec<(&'static str, String)>,
) {
    let base = server.url();
    let home = tempfile::tempdir().unwrap();
    let bases: Vec<Vec<u8>> = (0..3).map(|k| data(20_000 + k, 100 + k as u64)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (storage, home, env) = (storage.to_owned(), home.path().to_owned(), env.clone());
        move || {
            let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
            let out = collect(&home, &storage, &[], &env);
            assert!(
                out.status.success(),
                "gc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };

    // Collections in a loop, no grace, untagged manifests are garbage.
    let collector = {
        let (stop, gc) = (stop.clone(), gc.clone());
        tokio::task::spawn_blocking(move || {
            let (mut runs, mut deleted) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs < 2 {
                let stdout = gc();
                let manifests = stdout.lines().filter(|l| l.starts_with("deleted manifest"));
                deleted += manifests.count();
                runs += 1;
            }
            (runs, deleted)
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (base, bases) = (base.clone(), bases.clone());
            tokio::spawn(async move {
                let http = Client::new();
                let repo = format!("team/app{}", c % 2);
                for round in 0..12 {
                    // A shared base layer and one of the client's own, re-tagged each round.
                    let own = data(5_000 + round, (c * 100 + round) as u64);
                    let layers = vec![bases[(c + round) % 3].clone(), own];
                    let config = format!("{{\"client\":{c},\"round\":{round}}}").into_bytes();
                    let tag = format!("c{c}");
                    push_image(&http, &base, &repo, &tag, &config, &layers).await;
                    pull_verified(&http, &base, &repo, &tag).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, deleted) = collector.await.unwrap();
    // Collections ran while clients pushed, and found re-tagged manifests to delete.
    assert!(
        runs >= 2 && deleted > 0,
        "{runs} runs deleted {deleted} manifests"
    );
    eprintln!("{runs} collections deleted {deleted} manifests while clients pushed");

    // Every tag pulls whole; the store is consistent.
    let http = Client::new();
    let mut needed = std::collections::BTreeSet::new();
    for c in 0..4 {
        needed.extend(
            pull_verified(
                &http,
                &base,
                &format!("team/app{}", c % 2),
                &format!("c{c}"),
            )
            .await,
        );
    }
    stored_blobs(home.path(), storage, &env);
    // With no writers, one more collection leaves exactly what the tags need (after a second:
    // S3 dates the lease in whole seconds, and keeps what is as young as that second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let last = gc();
    assert_eq!(
        stored_blobs(home.path(), storage, &env),
        needed.len(),
        "{last}"
    );
    for c in 0..4 {
        pull_verified(
            &http,
            &base,
            &format!("team/app{}", c % 2),
            &format!("c{c}"),
        )
        .await;
    }
}

/// A collection killed (SIGKILL) in the middle of deleting leaves a consistent store: fsck
/// finds nothing wrong and every tagged image pulls; its lease keeps a second collection away
/// until it expires, unless that one takes it over with --break-lease and finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_killed_midway_leaves_a_consistent_store() {
    use std::io::BufRead;
    let server = Server::start(&[]);
    let base = server.url();
    let storage = server.data().display().to_string();
    let home = tempfile::tempdir().unwrap();
    let http = Client::new();
    let shared = data(8_000, 7);
    // 120 images that lose their tags, 3 that keep them; all share one layer.
    for i in 0..123 {
        let own = data(1_000 + i, 1000 + i as u64);
        let config = format!("{{\"image\":{i}}}").into_bytes();
        push_image(
            &http,
            &base,
            "kill/app",
            &format!("t{i}"),
            &config,
            &[shared.clone(), own],
        )
        .await;
        if i >= 3 {
            let r = http
                .delete(format!("{base}/v2/kill/app/manifests/t{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let config_dir = ["--config-dir", home.path().to_str().unwrap()];
    let gc_args = [&config_dir[..], &["gc", "--storage", &storage], &NOW[..]].concat();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(gc_args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("deleted "), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        server.data().join("gc/lease").exists(),
        "killed before it finished"
    );

    assert_fsck_clean(home.path(), &storage);
    for i in 0..3 {
        pull_verified(&http, &base, "kill/app", &format!("t{i}")).await;
    }
    // Pushes still work meanwhile (the killed collection's marks are no obstacle for long).
    push_image(
        &http,
        &base,
        "kill/app",
        "after",
        b"{\"after\":1}",
        std::slice::from_ref(&shared),
    )
    .await;

    let out = collect(home.path(), &storage, &[], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--break-lease"));
    let out = collect(home.path(), &storage, &["--break-lease"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted manifest"));
    assert_fsck_clean(home.path(), &storage);
    let mut needed = std::collections::BTreeSet::new();
    for tag in ["t0", "t1", "t2", "after"] {
        needed.extend(pull_verified(&http, &base, "kill/app", tag).await);
    }
    assert_eq!(blob_files(&server.data()), needed.len());
    assert!(!server.data().join("gc").join("lease").exists());
}

/// `[gc] interval` in `registry serve`: an untagged image is collected on schedule, without a
/// restart, and the collections show in /metrics.
#[tokio::test]
async fn scheduled_collection_in_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    let text = "[gc]\ninterval = \"1s\"\ngrace = \"0s\"\ndelete_untagged = true\n";
    std::fs::write(&config, text).unwrap();
    let audit = dir.path().join("audit.log");
    let server = Server::start_audited(&config, &audit);
    let base = server.url();
    let http = Client::new();
    let (shared, own) = (data(4_000, 1), data(4_100, 2));
    push_image(
        &http,
        &base,
        "sched/app",
        "keep",
        b"{\"k\":1}",
        std::slice::from_ref(&shared),
    )
    .await;
    push_image(
        &http,
        &base,
        "sched/app",
        "drop",
        b"{\"d\":1}",
        &[shared.clone(), own.clone()],
    )
    .await;
    let r = http
        .delete(format!("{base}/v2/sched/app/manifests/drop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let gone = sha256(&own);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .head(format!("{base}/v2/sched/app/blobs/{gone}"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not collected within a minute"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pull_verified(&http, &base, "sched/app", "keep").await;
    let metrics = common::metrics_text(&http, &base).await;
    assert!(
        metrics.contains("registry_gc_runs_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    let blobs = metrics
        .lines()
        .find(|l| l.starts_with("registry_gc_deleted_total{kind=\"blob\"}"));
    let n: f64 = blobs.unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "the layer and the config: {n}");
    // Each collection leaves an audit line (written when it ends).
    common::audit_line(&audit, |l| {
        l["action"] == "gc" && l["result"] == "ok" && l["who"] == "schedule"
    })
    .await;
}
