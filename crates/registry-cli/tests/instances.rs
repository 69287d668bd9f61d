//! Instances end to end: `registry instance` and `registry user` write the config home,
//! `registry check` reports it, and one `registry serve` runs every instance on one address,
//! told apart by Host (plain HTTP) and by SNI (TLS, each instance its own certificate), with
//! each instance's users confined to it.

mod common;

use std::net::SocketAddr;

use common::cli::{create, fails, ok, registry, serve};
use common::pki::Ca;
use common::{free_port, sha256};
use reqwest::{Client, StatusCode};

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

#[test]
fn reconfigure_validates_and_keeps_comments() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    ok(home, &["instance", "create", "default"], None);
    let config = home.join("instances/default/registry.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("# a note of mine\n");
    std::fs::write(&config, text).unwrap();
    ok(
        home,
        &[
            "reconfigure",
            "ip_allowlist=192.168.1.0/24,10.13.13.0/24",
            "public_read=yes",
            "hostname=Reg.Example.com",
        ],
        None,
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# a note of mine"), "{text}");
    assert!(
        text.contains(r#"allow = ["192.168.1.0/24", "10.13.13.0/24"]"#),
        "{text}"
    );
    let shown = ok(home, &["instance", "show", "default"], None);
    assert!(
        shown.contains("IP allowlist 192.168.1.0/24,10.13.13.0/24"),
        "{shown}"
    );
    assert!(
        shown.contains("anonymous pull") && shown.contains("reg.example.com"),
        "{shown}"
    );
    // Bad keys and values: one line, the file unchanged.
    for (setting, expect) in [
        ("colour=blue", "valid keys: hostname"),
        ("ip_allowlist=10.0.0.0/33", "network.allow"),
        ("listen=nowhere", "not IP:PORT"),
        ("public_read=maybe", "expected true or false"),
        ("hostname=bad_name", "not a host name"),
        ("client_names=x", "tls.client_names needs tls.client_ca"),
        ("no-equals-sign", "not KEY=VALUE"),
    ] {
        let err = fails(home, &["reconfigure", setting]);
        assert!(err.contains(expect), "{setting}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    // An empty value restores the default.
    ok(home, &["reconfigure", "ip_allowlist="], None);
    let shown = ok(home, &["instance", "show", "default"], None);
    assert!(!shown.contains("IP allowlist"), "{shown}");
}

#[test]
fn users_are_added_changed_and_removed() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    ok(home, &["instance", "create", "default"], None);
    ok(
        home,
        &["user", "add", "ann", "--password-stdin"],
        Some("first\n"),
    );
    let htpasswd = home.join("instances/default/htpasswd");
    let hash = |text: String| text.trim().strip_prefix("ann:").unwrap().to_owned();
    let first = hash(std::fs::read_to_string(&htpasswd).unwrap());
    assert!(bcrypt::verify("first", &first).unwrap());
    let out = ok(
        home,
        &["user", "passwd", "ann", "--password-stdin"],
        Some("second\n"),
    );
    assert!(out.contains("changed the password"), "{out}");
    let second = hash(std::fs::read_to_string(&htpasswd).unwrap());
    assert!(bcrypt::verify("second", &second).unwrap());
    assert!(fails(home, &["user", "passwd", "bob", "--password-stdin"]).contains("no user"));
    assert_eq!(ok(home, &["user", "list"], None), "ann\n");
    ok(home, &["user", "remove", "ann"], None);
    assert_eq!(ok(home, &["user", "list"], None), "");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&htpasswd).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
