//! Operations end to end: configuration reloads (SIGHUP, `registry reconfigure --reload`)
//! while clients push, refused reloads, instances added and removed by a reload.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cli::{create, ok, serve_logged, wait_for_log};
use common::{data, free_port, push_blob, sha256};
use reqwest::{Client, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that sends `user`'s Basic credentials with every request.
fn client_as(user: &str, password: &str) -> Client {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {token}").parse().unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

/// An instance `alpha` on `addr` whose user ann (password `ann-pass`) may push.
fn home_with_ann(home: &Path, addr: &str) {
    create(home, "alpha", "alpha.test", addr);
    ok(
        home,
        &[
            "user",
            "add",
            "ann",
            "--instance",
            "alpha",
            "--password-stdin",
        ],
        Some("ann-pass\n"),
    );
}

/// `registry serve` on a config home with [`home_with_ann`]: the home, the address, the log
/// file (`RUST_LOG=info`) and the process.
fn alpha_serving() -> (
    tempfile::TempDir,
    String,
    std::path::PathBuf,
    common::cli::Serving,
) {
    let home = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    home_with_ann(home.path(), &addr);
    let log = home.path().join("serve.log");
    let server = serve_logged(home.path(), &addr, &log);
    (home, addr, log, server)
}

/// A PATCH of `body` to `location` over its own connection, sent in two halves: the second
/// only once `between` resolves. Returns the status line's code.
async fn patch_in_two_halves(
    addr: &str,
    location: &str,
    body: &[u8],
    between: impl std::future::Future<Output = ()>,
) -> u16 {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("ann:ann-pass");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    tcp.write_all(&body[..half]).await.unwrap();
    between.await;
    tcp.write_all(&body[half..]).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test]
async fn sighup_during_pushes_drops_nothing_and_the_new_guard_applies() {
    let (home, addr, log, _server) = alpha_serving();
    let home = home.path();
    let base = format!("http://{addr}");
    let ann = client_as("ann", "ann-pass");
    let anonymous = Client::new();
    // Before: pulls need credentials.
    let catalog = format!("{base}/v2/_catalog");
    assert_eq!(
        anonymous.get(&catalog).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Eight pushes, each with a request in flight across the reload.
    let (reloaded_tx, reloaded) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(8);
    let mut pushes = Vec::new();
    for n in 0..8u64 {
        let (ann, base, addr) = (ann.clone(), base.clone(), addr.clone());
        let (mut reloaded, started) = (reloaded.clone(), started_tx.clone());
        pushes.push(tokio::spawn(async move {
            let blob = data(3 << 20, n);
            let r = ann
                .post(format!("{base}/v2/team/app{n}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            let status = patch_in_two_halves(&addr, &location, &blob, async move {
                started.send(()).await.unwrap();
                let _ = reloaded.wait_for(|r| *r).await;
            })
            .await;
            assert_eq!(status, 202, "the PATCH in flight across the reload");
            let digest = sha256(&blob);
            let r = ann
                .put(format!("{base}{location}?digest={digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let r = ann
                .get(format!("{base}/v2/team/app{n}/blobs/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
            digest
        }));
    }
    for _ in 0..8 {
        started.recv().await.unwrap();
    }
    // Every push has half a request body sent: reconfigure and reload now.
    let home_dir = home.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        ok(
            &home_dir,
            &[
                "reconfigure",
                "--instance",
                "alpha",
                "public_read=true",
                "--reload",
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert!(out.contains("asked `registry serve`"), "{out}");
    let log_path = log.clone();
    tokio::task::spawn_blocking(move || wait_for_log(&log_path, "configuration reloaded", 1))
        .await
        .unwrap();
    // The next request meets the new guard, on a new connection and on a kept one.
    assert_eq!(
        anonymous.get(&catalog).send().await.unwrap().status(),
        StatusCode::OK
    );
    reloaded_tx.send(true).unwrap();
    for p in pushes {
        p.await.expect("every push succeeds across the reload");
    }
    assert_eq!(
        anonymous
            .get(format!("{base}/v2/team/app3/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "anonymous pulls reach the repository"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("refused"), "{logged}");
}

#[tokio::test]
async fn an_invalid_configuration_on_reload_keeps_the_old_one_serving() {
    let (home, addr, log, server) = alpha_serving();
    let home = home.path();
    let base = format!("http://{addr}");
    let config = home.join("instances/alpha/registry.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\n[api]\ndelete = \"sometimes\"\n")).unwrap();
    server.signal("HUP");
    let logged = tokio::task::spawn_blocking({
        let log = log.clone();
        move || wait_for_log(&log, "configuration reload refused", 1)
    })
    .await
    .unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap();
    assert!(
        line.contains("registry.toml"),
        "the error names the file: {line}"
    );
    assert!(
        logged.contains(r#"action="reload" result="failed""#),
        "the audit trail has the refused reload: {logged}"
    );
    // The old configuration serves: ann pushes, anonymous is refused.
    let ann = client_as("ann", "ann-pass");
    let blob = b"still serving";
    let r = ann
        .post(format!(
            "{base}/v2/team/app/blobs/uploads/?digest={}",
            sha256(blob)
        ))
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = Client::new()
        .get(format!("{base}/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // An instance added and the broken file mended: one reload serves both.
    std::fs::write(&config, &good).unwrap();
    let other = format!("127.0.0.1:{}", free_port());
    create(home, "beta", "beta.test", &other);
    server.signal("HUP");
    tokio::task::spawn_blocking({
        let log = log.clone();
        move || wait_for_log(&log, "configuration reloaded", 1)
    })
    .await
    .unwrap();
    let r = Client::new()
        .get(format!("http://{other}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the new instance serves");

    // Removed again: its address closes.
    std::fs::remove_dir_all(home.join("instances/beta")).unwrap();
    server.signal("HUP");
    tokio::task::spawn_blocking({
        let log = log.clone();
        move || wait_for_log(&log, "configuration reloaded", 2)
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(&other).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "{other} still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A configuration file in `dir` whose registry takes ann's Basic logins (with `more` TOML)
/// and sends events to `endpoints` (TOML `[[notify]]` bodies).
fn notify_config(dir: &Path, more: &str, endpoints: &[String]) -> std::path::PathBuf {
    let htpasswd = common::bcrypt_user(dir, "ann", "ann-pass");
    let mut text = format!(
        "[auth]\nhtpasswd = {:?}\n{more}\n",
        htpasswd.display().to_string()
    );
    for e in endpoints {
        text.push_str(&format!("\n[[notify]]\n{e}\n"));
    }
    let path = dir.join("registry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn webhooks_hear_every_action_in_distributions_envelope() {
    use common::webhook::Receiver;
    // The first five deliveries fail: every event still arrives, once.
    let hook = Receiver::start(None, 5).await;
    let cloud = Receiver::start(None, 0).await;
    let dir = tempfile::tempdir().unwrap();
    // ann may change team/** and other/**, nothing else.
    let rules = "[[access]]\nusers = [\"ann\"]\nrepositories = [\"team/**\", \"other/**\"]\nactions = [\"pull\", \"push\", \"delete\"]\n";
    let config = notify_config(
        dir.path(),
        rules,
        &[
            format!(
                "name = \"hook\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer hook-secret\" }}\nbackoff = \"50ms\"",
                hook.url()
            ),
            format!(
                "name = \"cloud\"\nurl = \"{}\"\nformat = \"cloudevents\"\nactions = [\"push\"]\nrepositories = [\"team/**\"]",
                cloud.url()
            ),
        ],
    );
    let audit = dir.path().join("audit.log");
    let server = common::Server::start_audited(&config, &audit);
    let base = server.url();
    let ann = client_as("ann", "ann-pass");

    let config_blob = push_blob(&ann, &base, "team/app", b"{}").await;
    let layer = data(4096, 7);
    let layer_digest = push_blob(&ann, &base, "team/app", &layer).await;
    let manifest = common::oci_manifest((&config_blob, 2), &[(&layer_digest, 4096)]);
    let manifest = String::from_utf8(manifest).unwrap();
    let manifest_digest = sha256(manifest.as_bytes());
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let r = ann
        .put(format!("{base}/v2/team/app/manifests/v1"))
        .header("content-type", media_type)
        .header("user-agent", "event-test/1.0")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = ann
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .header("accept", media_type)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = ann
        .get(format!("{base}/v2/team/app/blobs/{layer_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 4096);
    let r = ann
        .post(format!(
            "{base}/v2/other/app/blobs/uploads/?mount={layer_digest}&from=team/app"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for path in [
        "team/app/manifests/v1".to_owned(),
        format!("team/app/manifests/{manifest_digest}"),
        format!("other/app/blobs/{layer_digest}"),
    ] {
        let r = ann
            .delete(format!("{base}/v2/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "DELETE {path}");
    }

    let events = hook.wait_for("nine events", |e| e.len() >= 9).await;
    // Nothing arrives twice: wait a little for stragglers, then count ids.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let events_again = hook.events();
    let mut ids: Vec<&str> = events_again
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9, "every event once: {events_again:#?}");
    assert_eq!(events_again.len(), 9);
    assert_eq!(hook.refused(), 5);
    for r in hook.accepted() {
        assert_eq!(
            r.headers["content-type"],
            "application/vnd.docker.distribution.events.v1+json"
        );
        assert_eq!(r.headers["authorization"], "Bearer hook-secret");
    }
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["push", "push", "push", "pull", "pull", "mount", "delete", "delete", "delete"]
    );
    let addr = &server.addr;
    for e in &events {
        // Every event: id, RFC 3339 timestamp, request, actor, source.
        assert_eq!(e["id"].as_str().unwrap().len(), 36, "{e}");
        let ts = e["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        assert_eq!(e["request"]["host"], addr.as_str());
        assert!(
            e["request"]["addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{e}"
        );
        assert_eq!(e["request"]["id"].as_str().unwrap().len(), 36);
        assert_eq!(e["actor"]["name"], "ann");
        assert_eq!(e["source"]["addr"], addr.as_str());
        assert_eq!(e["source"]["instanceID"].as_str().unwrap().len(), 36);
    }
    let blob_target = |digest: &str, size: u64, repo: &str| {
        serde_json::json!({
            "mediaType": "application/octet-stream",
            "size": size,
            "digest": digest,
            "length": size,
            "repository": repo,
            "url": format!("http://{addr}/v2/{repo}/blobs/{digest}"),
        })
    };
    assert_eq!(
        events[0]["target"],
        blob_target(&config_blob, 2, "team/app")
    );
    assert_eq!(events[0]["request"]["method"], "POST");
    assert_eq!(
        events[1]["target"],
        blob_target(&layer_digest, 4096, "team/app")
    );
    let manifest_target = serde_json::json!({
        "mediaType": media_type,
        "size": manifest.len(),
        "digest": manifest_digest,
        "length": manifest.len(),
        "repository": "team/app",
        "url": format!("http://{addr}/v2/team/app/manifests/{manifest_digest}"),
        "tag": "v1",
    });
    assert_eq!(events[2]["target"], manifest_target);
    assert_eq!(events[2]["request"]["method"], "PUT");
    assert_eq!(events[2]["request"]["useragent"], "event-test/1.0");
    assert_eq!(events[3]["target"], manifest_target);
    assert_eq!(events[3]["request"]["method"], "GET");
    assert_eq!(
        events[4]["target"],
        blob_target(&layer_digest, 4096, "team/app")
    );
    let mut mounted = blob_target(&layer_digest, 4096, "other/app");
    mounted["fromRepository"] = "team/app".into();
    assert_eq!(events[5]["target"], mounted);
    assert_eq!(
        events[6]["target"],
        serde_json::json!({"repository": "team/app", "tag": "v1"})
    );
    assert_eq!(
        events[7]["target"],
        serde_json::json!({"repository": "team/app", "digest": manifest_digest})
    );
    assert_eq!(
        events[8]["target"],
        serde_json::json!({"repository": "other/app", "digest": layer_digest})
    );

    // The CloudEvents endpoint heard only pushes to team/**, one event per request.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cloud.accepted().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            cloud.accepted()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ce = cloud.accepted();
    assert_eq!(ce.len(), 3);
    for (r, e) in ce.iter().zip(&events) {
        assert_eq!(r.headers["content-type"], "application/cloudevents+json");
        assert_eq!(r.body["specversion"], "1.0");
        assert_eq!(r.body["type"], "registry.event.push");
        assert_eq!(r.body["data"]["target"], e["target"]);
        assert_eq!(r.body["source"], format!("//{addr}"));
    }
    assert_eq!(ce[2].body["subject"], "team/app:v1");

    let text = common::metrics_text(&ann, &base).await;
    assert!(
        text.contains("registry_events_sent_total{endpoint=\"hook\"} 9"),
        "{text}"
    );
    assert!(
        text.contains("registry_events_failed_total{endpoint=\"hook\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("registry_events_queued{endpoint=\"hook\"} 0"),
        "{text}"
    );

    // The audit trail: a JSON line per change, with who, from where, what and the result.
    let r = ann
        .post(format!("{base}/v2/secret/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client_as("ann", "wrong")
        .get(format!("{base}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = ann
        .put(format!("{base}/v2/team/app/manifests/v2"))
        .header("content-type", media_type)
        .body("not a manifest")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let summary: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["action"].as_str().unwrap(), l["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("push", "ok"),
            ("push", "ok"),
            ("tag", "ok"),
            ("mount", "ok"),
            ("delete", "ok"),
            ("delete", "ok"),
            ("delete", "ok"),
            ("push", "denied"),
            ("login", "failed"),
            ("tag", "failed"),
        ],
        "{text}"
    );
    assert_eq!(lines[2]["who"], "user ann");
    assert_eq!(lines[2]["client"], "127.0.0.1");
    assert_eq!(lines[2]["repository"], "team/app");
    assert_eq!(lines[2]["tag"], "v1");
    assert_eq!(lines[2]["digest"], manifest_digest.as_str());
    assert_eq!(lines[3]["digest"], layer_digest.as_str());
    assert_eq!(lines[7]["repository"], "secret/app");
    assert_eq!(lines[7]["error"], "DENIED");
    assert_eq!(lines[8]["who"], "ann");
    assert_eq!(lines[9]["status"], 400);
    assert_eq!(lines[9]["error"], "MANIFEST_INVALID");
    assert!(
        !text.contains("ann-pass") && !text.contains("wrong"),
        "no secrets: {text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn queued_events_survive_a_restart() {
    use common::webhook::Receiver;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let dir = tempfile::tempdir().unwrap();
    let config = notify_config(
        dir.path(),
        "",
        &[format!(
            "name = \"hook\"\nurl = \"{url}\"\nbackoff = \"100ms\""
        )],
    );
    let mut server = common::Server::start_logged(&["--config", config.to_str().unwrap()]);
    let ann = client_as("ann", "ann-pass");
    let digest = push_blob(&ann, &server.url(), "team/app", b"kept for later").await;
    // Nobody listens: the event waits in storage, also across the stop.
    assert!(server.terminate(), "a clean stop");
    let queue = server.data().join("events/hook/queue");
    let queued: Vec<_> = std::fs::read_dir(&queue)
        .unwrap_or_else(|e| panic!("{}: {e}; logged: {}", queue.display(), server.logged()))
        .collect();
    assert_eq!(queued.len(), 1, "one batch queued in {}", queue.display());

    let hook = Receiver::start(Some(([127, 0, 0, 1], port).into()), 0).await;
    server.start_again();
    let events = hook.wait_for("the queued event", |e| !e.is_empty()).await;
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["target"]["digest"], digest.as_str());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // (The filesystem store removes the directory with its last file.)
    while std::fs::read_dir(&queue).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivered batch stays queued"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_added_by_reconfigure_hears_pushes_after_a_reload() {
    use common::webhook::Receiver;
    let hook = Receiver::start(None, 0).await;
    let (home, addr, log, _server) = alpha_serving();
    let home = home.path();
    let url = format!("notify.deploy={}", hook.url());
    let args = [
        "reconfigure",
        "--instance",
        "alpha",
        url.as_str(),
        "notify.deploy.header.Authorization=Bearer deploy-secret",
        "notify.deploy.actions=push,delete",
        "--reload",
    ];
    // (The CLI runs while the test's runtime serves the receiver.)
    let out = tokio::task::block_in_place(|| ok(home, &args, None));
    assert!(out.contains("asked `registry serve`"), "{out}");
    tokio::task::block_in_place(|| wait_for_log(&log, "configuration reloaded", 1));
    let config = std::fs::read_to_string(home.join("instances/alpha/registry.toml")).unwrap();
    assert!(config.contains("[[notify]]"), "{config}");
    let ann = client_as("ann", "ann-pass");
    let base = format!("http://{addr}");
    let digest = push_blob(&ann, &base, "team/app", b"heard").await;
    let r = ann
        .get(format!("{base}/v2/team/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a pull, which the endpoint does not hear"
    );
    let events = hook.wait_for("the push", |e| !e.is_empty()).await;
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["target"]["digest"], digest.as_str());
    assert_eq!(
        hook.accepted()[0].headers["authorization"],
        "Bearer deploy-secret"
    );
    // Unknown fields are refused and change nothing.
    let err = tokio::task::block_in_place(|| {
        common::cli::fails(
            home,
            &[
                "reconfigure",
                "--instance",
                "alpha",
                "notify.deploy.colour=red",
            ],
        )
    });
    assert!(err.contains("unknown notify field"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.events().len(), 1, "pulls are not sent to it");
}

#[test]
fn reload_refuses_a_stale_process_id() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    create(home, "alpha", "alpha.test", "127.0.0.1:5999");
    // No server: the reload has nobody to ask.
    let err = common::cli::fails(
        home,
        &[
            "reconfigure",
            "--instance",
            "alpha",
            "delete=false",
            "--reload",
        ],
    );
    assert!(err.contains("no `registry serve` is running"), "{err}");
    // A stale file naming another process: it is left alone.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(home.join("serve.pid"), other.id().to_string()).unwrap();
    let err = common::cli::fails(
        home,
        &[
            "reconfigure",
            "--instance",
            "alpha",
            "delete=true",
            "--reload",
        ],
    );
    assert!(err.contains("is not `registry serve`"), "{err}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process lives"
    );
    other.kill().unwrap();
    let _ = other.wait();
}
