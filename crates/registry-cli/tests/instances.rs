//! Instances end to end: `registry instance` and `registry user` write the config home,
//! `registry check` reports it, and one `registry serve` runs every instance on one address,
//! told apart by Host (plain HTTP) and by SNI (TLS, each instance its own certificate), with
//! each instance's users confined to it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{free_port, sha256};
use reqwest::{Client, StatusCode};

fn registry(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry"))
        .arg("--config-dir")
        .arg(home)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = registry(home, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "registry {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with one line on stderr; returns it.
fn fails(home: &Path, args: &[&str]) -> String {
    let out = registry(home, args, None);
    assert!(!out.status.success(), "registry {args:?} succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `registry instance create NAME --hostname HOST --listen ADDR`
fn create(home: &Path, name: &str, host: &str, addr: &str) {
    let args = [
        "instance",
        "create",
        name,
        "--hostname",
        host,
        "--listen",
        addr,
    ];
    let out = ok(home, &args, None);
    assert!(
        out.contains(&format!("created instance \"{name}\"")),
        "{out}"
    );
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(home: &Path, addr: &str) -> Serving {
    let child = Command::new(env!("CARGO_BIN_EXE_registry"))
        .arg("--config-dir")
        .arg(home)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Serving(child)
}

/// POSTs a small blob to `repo` as `user`; returns the status.
async fn push(
    http: &Client,
    base: &str,
    host: Option<&str>,
    user: (&str, &str),
    repo: &str,
) -> StatusCode {
    let body = format!("blob of {repo}");
    let digest = sha256(body.as_bytes());
    let mut req = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .basic_auth(user.0, Some(user.1))
        .body(body);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn instances_on_one_address_by_host_name() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let addr = format!("127.0.0.1:{}", free_port());
    for (name, host) in [("alpha", "a.test"), ("beta", "b.test")] {
        create(home, name, host, &addr);
    }
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
    let out = ok(home, &["user", "add", "bob", "--instance", "beta"], None);
    let bob_pass = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password is printed")
        .to_owned();
    assert_eq!(bob_pass.len(), 24);
    assert_eq!(
        ok(home, &["user", "list", "--instance", "beta"], None),
        "bob\n"
    );
    let report = ok(home, &["check"], None);
    assert!(
        report.contains("alpha")
            && report.contains("a.test")
            && report.contains("HTTP Basic (1 users"),
        "{report}"
    );
    assert!(
        !report.contains("ann-pass") && !report.contains(&bob_pass),
        "no secrets in check"
    );
    let listed = ok(home, &["instance", "list"], None);
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let _server = serve(home, &addr);
    let http = Client::new();
    let base = format!("http://{addr}");
    let ann = ("ann", "ann-pass");
    let bob = ("bob", bob_pass.as_str());
    let cases = [
        ("a.test", ann, "app", StatusCode::CREATED),
        ("b.test:5000", bob, "tool", StatusCode::CREATED),
        // Each user only on their own instance.
        ("b.test", ann, "app", StatusCode::UNAUTHORIZED),
        ("A.TEST", bob, "tool", StatusCode::UNAUTHORIZED),
        // A name no instance serves.
        ("c.test", ann, "app", StatusCode::MISDIRECTED_REQUEST),
    ];
    for (host, user, repo, status) in cases {
        let got = push(&http, &base, Some(host), user, repo).await;
        assert_eq!(got, status, "{} to {repo} on {host}", user.0);
    }
    // Each instance its own storage.
    for (host, user, repo) in [("a.test", ann, "app"), ("b.test", bob, "tool")] {
        let r = http
            .get(format!("{base}/v2/_catalog"))
            .header("host", host)
            .basic_auth(user.0, Some(user.1))
            .send()
            .await
            .unwrap();
        let catalog: serde_json::Value = r.json().await.unwrap();
        assert_eq!(catalog["repositories"], serde_json::json!([repo]), "{host}");
    }
    assert!(home.join("instances/alpha/data").is_dir());
}

#[tokio::test]
async fn tls_instances_are_picked_by_sni() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cas = Vec::new();
    for (name, host) in [("alpha", "a.test"), ("beta", "b.test")] {
        create(home, name, host, &addr);
        // Each instance its own CA, so a client trusting one sees which certificate it got.
        let ca = Ca::new(&format!("{name} CA"));
        let dir = home.join("instances").join(name);
        ca.server_for(&[host]).write(&dir, "cert.pem", "key.pem");
        let config = dir.join("registry.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
        std::fs::write(&config, text).unwrap();
        ok(
            home,
            &["user", "add", "u", "--instance", name, "--password-stdin"],
            Some(&format!("{name}-pass\n")),
        );
        cas.push(ca);
    }
    let _server = serve(home, &addr);
    let socket: SocketAddr = addr.parse().unwrap();
    let client = |ca: &Ca, host: &str| {
        Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .resolve(host, socket)
            .build()
            .unwrap()
    };
    let a = client(&cas[0], "a.test");
    let b = client(&cas[1], "b.test");
    let a_base = format!("https://a.test:{port}");
    let b_base = format!("https://b.test:{port}");
    assert_eq!(
        push(&a, &a_base, None, ("u", "alpha-pass"), "one").await,
        StatusCode::CREATED
    );
    assert_eq!(
        push(&b, &b_base, None, ("u", "beta-pass"), "two").await,
        StatusCode::CREATED
    );
    assert_eq!(
        push(&b, &b_base, None, ("u", "alpha-pass"), "two").await,
        StatusCode::UNAUTHORIZED
    );
    // beta's certificate is not alpha's: a client trusting only alpha's CA fails the handshake.
    let wrong = client(&cas[0], "b.test");
    assert!(wrong.get(format!("{b_base}/v2/")).send().await.is_err());
    // A handshake for alpha cannot be used to talk to beta (HTTP/1.1, where Host is free).
    let a = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cas[0].pem().as_bytes()).unwrap()])
        .resolve("a.test", socket)
        .http1_only()
        .build()
        .unwrap();
    let r = a
        .get(format!("{a_base}/v2/"))
        .header("host", "b.test")
        .basic_auth("u", Some("beta-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    ok(home, &["instance", "create", "default"], None);
    let before = ok(home, &["instance", "show", "default"], None);
    let err = fails(home, &["instance", "create", "default"]);
    assert!(err.contains("exists already"), "{err}");
    let err = fails(home, &["instance", "create", "Bad_Name"]);
    assert!(err.contains("not an instance name"), "{err}");
    let err = fails(
        home,
        &["instance", "create", "x", "--hostname", "exa mple.com"],
    );
    assert!(err.contains("not a host name"), "{err}");
    let err = fails(home, &["instance", "create", "y", "--listen", "nowhere"]);
    assert!(err.contains("not IP:PORT"), "{err}");
    let err = fails(home, &["instance", "create", "z", "--storage", "ftp://x"]);
    assert!(err.contains("unsupported scheme"), "{err}");
    for name in ["x", "y", "z", "Bad_Name"] {
        assert!(
            !home.join("instances").join(name).exists(),
            "{name} left behind"
        );
    }
    let err = fails(home, &["user", "add", "a:b"]);
    assert!(err.contains("not a user name"), "{err}");
    let err = fails(home, &["user", "remove", "nobody"]);
    assert!(err.contains("no user"), "{err}");
    let err = fails(home, &["user", "add", "ann", "--instance", "missing"]);
    assert!(err.contains("no instance \"missing\""), "{err}");
    assert_eq!(ok(home, &["instance", "show", "default"], None), before);
    // A config broken by hand: check names the file.
    let config = home.join("instances/default/registry.toml");
    std::fs::write(&config, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let err = fails(home, &["check"]);
    assert!(
        err.contains(&config.display().to_string()) && err.contains("not IP:PORT"),
        "{err}"
    );
    // An unwritable config home.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = home.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let inner = locked.join("home");
        let out = registry(&inner, &["instance", "create", "default"], None);
        let running_as_root = std::fs::create_dir(locked.join("probe")).is_ok();
        if !running_as_root {
            assert!(!out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("cannot"), "{stderr}");
        }
    }
}

#[test]
fn protected_instances_need_force() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    ok(home, &["instance", "create", "prod", "--protected"], None);
    let err = fails(home, &["instance", "remove", "prod"]);
    assert!(err.contains("protected"), "{err}");
    assert!(home.join("instances/prod/registry.toml").is_file());
    ok(home, &["instance", "remove", "prod", "--force"], None);
    assert!(!home.join("instances/prod").exists());
}
