//! `registry fsck` on a served filesystem store: a blob corrupted on disk and a layer deleted by
//! hand are reported with their paths (exit 1); `--repair` fixes the store so that the client's
//! re-push succeeds, after which fsck is clean.

mod common;

use common::cli::registry;
use common::{data, oci_manifest, sha256, Server};
use reqwest::{Client, StatusCode};

async fn push_blob(http: &Client, base: &str, bytes: &[u8]) -> String {
    common::push_blob(http, base, "app", bytes).await
}

async fn push_manifest(http: &Client, base: &str, m: &[u8]) -> StatusCode {
    http.put(format!("{base}/v2/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

fn blob_file(server: &Server, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    server
        .data()
        .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

#[tokio::test]
async fn fsck_reports_and_repair_lets_clients_push_again() {
    let server = Server::start(&[]);
    let base = server.url();
    let http = Client::new();
    let (config, one, two) = (b"{}".to_vec(), data(40_000, 1), data(50_000, 2));
    let dc = push_blob(&http, &base, &config).await;
    let d1 = push_blob(&http, &base, &one).await;
    let d2 = push_blob(&http, &base, &two).await;
    let m = oci_manifest((&dc, config.len()), &[(&d1, one.len()), (&d2, two.len())]);
    assert_eq!(push_manifest(&http, &base, &m).await, StatusCode::CREATED);

    let home = tempfile::tempdir().unwrap();
    let storage = server.data().display().to_string();
    let fsck = |extra: &[&str]| {
        let mut args = vec!["fsck", "--storage", &storage];
        args.extend_from_slice(extra);
        registry(home.path(), &args, None)
    };
    let out = fsck(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 blobs"));

    std::fs::write(blob_file(&server, &d1), vec![7u8; one.len()]).unwrap();
    std::fs::remove_file(blob_file(&server, &d2)).unwrap();
    let out = fsck(&[]);
    assert!(!out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let hex1 = d1.trim_start_matches("sha256:");
    let hex2 = d2.trim_start_matches("sha256:");
    assert!(
        report
            .lines()
            .any(|l| l.contains(hex1) && l.contains("corrupt blob")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains(hex2) && l.contains("link to a blob whose bytes are missing")),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("revisions") && l.contains(&d2)),
        "{report}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repair"));

    let out = fsck(&["--repair"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client sees both layers missing and pushes them again.
    for d in [&d1, &d2] {
        let r = http
            .head(format!("{base}/v2/app/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    push_blob(&http, &base, &one).await;
    push_blob(&http, &base, &two).await;
    assert_eq!(push_manifest(&http, &base, &m).await, StatusCode::CREATED);
    let r = http
        .get(format!("{base}/v2/app/blobs/{d1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), d1);
    let out = fsck(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 0 problems"));
    // A bad location is one clear line.
    let out = registry(home.path(), &["fsck", "--storage", "ftp://x"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported scheme"));
}
