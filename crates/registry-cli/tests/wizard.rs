//! `registry config` driven through a pseudo-terminal as a person would type (arrow keys,
//! Enter, a blank passphrase), then `registry serve` on what it wrote and a real push and pull
//! with the generated credentials; the same answers as flags with --non-interactive write an
//! identical registry.toml; a re-run offers the current values and changes nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::{fails, ok, serve};
use common::{free_port, sha256};
use rexpect::session::PtySession;

const DOWN: &str = "\x1b[B";

fn wizard(home: &Path, extra: &[&str]) -> PtySession {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.arg("--config-dir").arg(home).arg("config").args(extra);
    c.env("TERM", "xterm").env("RUST_LOG", "warn");
    rexpect::session::spawn_command(c, Some(30_000)).unwrap()
}

/// Presses keys (no newline).
fn keys(p: &mut PtySession, k: &str) {
    p.send(k).unwrap();
    p.flush().unwrap();
}

/// Answers a text question.
fn answer(p: &mut PtySession, prompt: &str, text: &str) {
    p.exp_string(prompt).unwrap();
    p.send_line(text).unwrap();
}

/// Storage, anonymous pull, IP allowlist and TLS, each with Enter: the filesystem in "data",
/// no anonymous pull, everyone, and TLS: for a new instance one step down from the first
/// choice (Let's Encrypt) to HTTPS from the instance's own CA, else the current value.
fn enter_through_the_rest(p: &mut PtySession, fresh: bool) {
    p.exp_string("Storage").unwrap();
    keys(p, "\r");
    answer(p, "Directory", "");
    answer(p, "Allow anonymous read-only pull?", "");
    answer(p, "IP allowlist", "");
    answer(p, "Cache Docker Hub here too", "");
    p.exp_string("TLS").unwrap();
    p.exp_string("Let's Encrypt certificate (automatic)")
        .unwrap();
    if fresh {
        keys(p, DOWN);
    }
    keys(p, "\r");
}

#[tokio::test]
async fn wizard_as_a_person_types_it_then_push_and_pull() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut p = wizard(&home, &["--listen", &listen]);
    answer(&mut p, "domain name", "registry.test");
    p.exp_string("Do you want to enable sentry authorization in front of this app?")
        .unwrap();
    keys(&mut p, DOWN);
    keys(&mut p, "\r");
    answer(&mut p, "Username", "ann");
    answer(
        &mut p,
        "Passphrase (leave blank to generate a strong one)",
        "",
    );
    let (_, generated) = p
        .exp_regex("Generated passphrase: [A-Za-z0-9]{24}")
        .unwrap();
    let ann_password = generated
        .trim_start_matches("Generated passphrase: ")
        .to_owned();
    answer(&mut p, "Create another user (same rights)?", "y");
    answer(&mut p, "Username", "bob");
    answer(&mut p, "Passphrase", "b@b secret");
    answer(&mut p, "Create another user (same rights)?", "");
    answer(
        &mut p,
        "Export usernames and cleartext passwords to passwords.json?",
        "y",
    );
    enter_through_the_rest(&mut p, true);
    p.exp_string("Hashed password: ann:$2").unwrap();
    p.exp_string("Url encoded: https://bob:b%40b%20secret@registry.test/")
        .unwrap();
    p.exp_string("docker login registry.test").unwrap();
    p.exp_eof().unwrap();

    let dir = home.join("instances/default");
    let config = std::fs::read_to_string(dir.join("registry.toml")).unwrap();
    for line in [
        "hostname = \"registry.test\"",
        "htpasswd = \"htpasswd\"",
        "cert = \"tls/server.pem\"",
        "url = \"data\"",
        "public_read = false",
    ] {
        assert!(config.contains(line), "{line} in\n{config}");
    }
    let htpasswd = std::fs::read_to_string(dir.join("htpasswd")).unwrap();
    assert!(
        htpasswd.starts_with("ann:$2") && htpasswd.contains("\nbob:$2"),
        "{htpasswd}"
    );
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("passwords.json")).unwrap()).unwrap();
    assert_eq!(exported["default"]["ann"], ann_password.as_str());
    assert_eq!(exported["default"]["bob"], "b@b secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            home.join("passwords.json"),
            dir.join("htpasswd"),
            dir.join("tls/ca-key.pem"),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
    }

    // The same answers as flags: an identical registry.toml.
    let twin = work.path().join("twin");
    ok(
        &twin,
        &[
            "config",
            "--non-interactive",
            "--domain",
            "registry.test",
            "--auth",
            "basic",
            "--user",
            "ann",
            "--user",
            "bob",
            "--password-stdin",
            "--export-passwords",
            "true",
            "--storage",
            "data",
            "--public-read",
            "false",
            "--ip-allowlist",
            "",
            "--tls",
            "ca",
            "--listen",
            &listen,
        ],
        Some("pass-for-ann\nb@b secret\n"),
    );
    let twin_config =
        std::fs::read_to_string(twin.join("instances/default/registry.toml")).unwrap();
    assert_eq!(twin_config, config);

    // Serve what the wizard wrote; push and pull over TLS with the generated password.
    let _server = serve(&home, &listen);
    let ca = std::fs::read(dir.join("tls/ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .resolve("registry.test", listen.parse().unwrap())
        .build()
        .unwrap();
    let base = format!("https://registry.test:{port}");
    let body = b"pushed with the wizard's credentials".to_vec();
    let digest = sha256(&body);
    let r = http
        .post(format!("{base}/v2/app/blobs/uploads/?digest={digest}"))
        .basic_auth("ann", Some(&ann_password))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let r = http
        .get(format!("{base}/v2/app/blobs/{digest}"))
        .basic_auth("bob", Some("b@b secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), body);
    let r = http
        .get(format!("{base}/v2/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);

    // A re-run offers the current values: Enter everywhere changes nothing.
    let mut p = wizard(&home, &[]);
    p.exp_string("registry.test").unwrap();
    keys(&mut p, "\r");
    p.exp_string("sentry authorization").unwrap();
    keys(&mut p, "\r");
    p.exp_string("Current users: ann, bob").unwrap();
    answer(&mut p, "Create more users?", "");
    enter_through_the_rest(&mut p, false);
    p.exp_eof().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("registry.toml")).unwrap(),
        config
    );
}

#[test]
fn non_interactive_names_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let err = fails(home, &["config", "--non-interactive"]);
    assert!(err.contains("missing answer: --domain"), "{err}");
    let acme = |extra: &'static [&'static str]| -> Vec<&'static str> {
        let base: &[&str] = &["--domain", "r.test", "--auth", "none", "--storage", "data"];
        [
            base,
            &[
                "--public-read",
                "false",
                "--ip-allowlist",
                "",
                "--tls",
                "acme",
            ],
            extra,
        ]
        .concat()
    };
    for (extra, expect) in [
        (&["--acme-email", "nobody"][..], "not an email address"),
        (
            &["--acme-directory", "ftp://x"],
            "not an ACME directory URL",
        ),
        (
            &["--acme-directory-ca", "/no/such/file"],
            "--acme-directory-ca",
        ),
    ] {
        let err = fails(
            home,
            &[&["config", "--non-interactive"][..], &acme(extra)].concat(),
        );
        assert!(err.contains(expect), "{extra:?}: {err}");
    }
    let cases: [(&[&str], &str); 6] = [
        (&["--domain", "r.test"], "missing answer: --auth"),
        (
            &["--domain", "r.test", "--auth", "basic"],
            "missing answer: --user",
        ),
        (
            &[
                "--domain",
                "r.test",
                "--auth",
                "mtls",
                "--client-ca",
                "create",
            ],
            "missing answer: --client-names",
        ),
        (&["--domain", "bad_host"], "not a host name"),
        (
            &[
                "--domain",
                "r.test",
                "--auth",
                "none",
                "--ip-allowlist",
                "10.0.0.0/99",
            ],
            "IP allowlist",
        ),
        (
            &[
                "--domain",
                "r.test",
                "--auth",
                "mtls",
                "--client-ca",
                "create",
                "--client-names",
                "ci",
                "--tls",
                "none",
            ],
            "mutual TLS needs TLS",
        ),
    ];
    for (args, expect) in cases {
        let err = fails(home, &[&["config", "--non-interactive"], args].concat());
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert!(!home.join("instances/default").exists(), "nothing written");
    // ACME by flags: the email, Let's Encrypt's staging directory, HTTP-01 on port 80.
    ok(
        home,
        &[
            &["config", "--non-interactive"][..],
            &acme(&[
                "--acme-email",
                "ops@r.test",
                "--acme-directory",
                "letsencrypt-staging",
            ]),
            &["--acme-challenge", "http-01"],
        ]
        .concat(),
        None,
    );
    let config = std::fs::read_to_string(home.join("instances/default/registry.toml")).unwrap();
    for line in [
        "listen = \"0.0.0.0:443\"",
        "plain_listen = \"0.0.0.0:80\"",
        "[tls.acme]",
        "email = \"ops@r.test\"",
        "directory = \"letsencrypt-staging\"",
        "challenge = \"http-01\"",
    ] {
        assert!(config.contains(line), "{line}: {config}");
    }
    let check = ok(home, &["check"], None);
    assert!(
        check.contains(
            "ACME https://acme-staging-v02.api.letsencrypt.org/directory by HTTP-01 for r.test"
        ) && check.contains("no certificate yet"),
        "{check}"
    );
    std::fs::remove_dir_all(home.join("instances")).unwrap();
    // Without a terminal and without --non-interactive: a clear refusal.
    let err = fails(home, &["config"]);
    assert!(err.contains("--non-interactive"), "{err}");
}

/// The fourth answer, "Yes, with OAuth2", typed: an OpenID Connect provider, who may enter,
/// and no password users; the same as flags gives the same registry.toml, the client secret is
/// in a 0600 file (not in registry.toml), a signing key is made, and `check` describes it.
#[test]
fn wizard_sets_up_oauth2_with_a_provider() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut p = wizard(&home, &["--listen", &listen]);
    answer(&mut p, "domain name", "registry.test");
    p.exp_string("sentry authorization").unwrap();
    keys(&mut p, DOWN);
    keys(&mut p, DOWN);
    keys(&mut p, DOWN);
    keys(&mut p, "\r");
    answer(
        &mut p,
        "Sign people in with an OpenID Connect provider",
        "y",
    );
    answer(&mut p, "issuer URL", "https://id.example.com/realms/main");
    answer(&mut p, "Client id", "registry");
    answer(&mut p, "Client secret", "provider-issued-secret");
    answer(&mut p, "email addresses", "ann@example.com");
    answer(&mut p, "email domains", "");
    answer(&mut p, "groups", "registry-users");
    answer(&mut p, "Also create users who log in with a password", "");
    enter_through_the_rest(&mut p, true);
    p.exp_string("Created the token signing key").unwrap();
    p.exp_string("register the redirect URI https://registry.test:")
        .unwrap();
    p.exp_eof().unwrap();

    let dir = home.join("instances/default");
    let config = std::fs::read_to_string(dir.join("registry.toml")).unwrap();
    for line in [
        "mode = \"token\"",
        "[auth.oidc]",
        "issuer = \"https://id.example.com/realms/main\"",
        "client_secret_file = \"oidc-client-secret\"",
        "allowed_emails = [\"ann@example.com\"]",
        "allowed_groups = [\"registry-users\"]",
    ] {
        assert!(config.contains(line), "{line} in\n{config}");
    }
    assert!(!config.contains("provider-issued-secret"));
    assert_eq!(
        std::fs::read_to_string(dir.join("oidc-client-secret")).unwrap(),
        "provider-issued-secret"
    );
    assert!(dir.join("tokens/signing-key.pem").is_file());
    let check = ok(&home, &["check"], None);
    assert!(check.contains("OpenID Connect sign-in with https://id.example.com/realms/main"));
    assert!(check.contains("who: emails ann@example.com; groups registry-users"));
    assert!(!check.contains("provider-issued-secret"));

    // The same answers as flags.
    let twin = work.path().join("twin");
    let out = common::cli::registry_env(
        &twin,
        &[
            "config",
            "--non-interactive",
            "--domain",
            "registry.test",
            "--listen",
            &listen,
            "--auth",
            "oauth2",
            "--oidc-issuer",
            "https://id.example.com/realms/main",
            "--oidc-client-id",
            "registry",
            "--allowed-emails",
            "ann@example.com",
            "--allowed-domains",
            "",
            "--allowed-groups",
            "registry-users",
            "--storage",
            "data",
            "--public-read",
            "false",
            "--ip-allowlist",
            "",
            "--tls",
            "ca",
        ],
        None,
        &[(
            "REGISTRY_OIDC_CLIENT_SECRET",
            std::ffi::OsStr::new("provider-issued-secret"),
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let twin_config =
        std::fs::read_to_string(twin.join("instances/default/registry.toml")).unwrap();
    assert_eq!(twin_config, config);
    // Without the secret, non-interactively: named.
    let err = fails(
        &work.path().join("third"),
        &[
            "config",
            "--non-interactive",
            "--domain",
            "r.test",
            "--auth",
            "oauth2",
            "--oidc-issuer",
            "https://id.example.com",
            "--oidc-client-id",
            "registry",
        ],
    );
    assert!(err.contains("--oidc-client-secret"), "{err}");
}

/// Mirrors from `registry config --mirror`, shown by `registry check`, changed with
/// `registry reconfigure mirror.PREFIX…`; a bad one changes nothing.
#[test]
fn mirrors_are_added_by_the_wizard_and_reconfigure() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let base = [
        "config",
        "--non-interactive",
        "--domain",
        "r.test",
        "--auth",
        "none",
        "--tls",
        "none",
        "--storage",
        "data",
        "--public-read",
        "false",
    ];
    let mirrors = [
        "--mirror",
        "docker.io=https://registry-1.docker.io",
        "--mirror",
        "ghcr.io=https://ghcr.io",
    ];
    ok(home, &[&base[..], &mirrors[..]].concat(), None);
    let toml_path = home.join("instances/default/registry.toml");
    let config = std::fs::read_to_string(&toml_path).unwrap();
    assert!(config.contains("[[proxy]]\nprefix = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true"), "{config}");
    assert!(config.contains("prefix = \"ghcr.io\""), "{config}");
    let checked = ok(home, &["check"], None);
    assert!(checked.contains("mirror    docker.io/ -> https://registry-1.docker.io (tags rechecked after 60s, default mirror"), "{checked}");

    std::fs::write(home.join("instances/default/ghcr-token"), "secret\n").unwrap();
    ok(
        home,
        &[
            "reconfigure",
            "mirror.ghcr.io.username=ann",
            "mirror.ghcr.io.password_file=ghcr-token",
            "mirror.quay.io=https://quay.io",
            "mirror.quay.io.revalidate=5m",
        ],
        None,
    );
    let checked = ok(home, &["check"], None);
    assert!(
        checked.contains("ghcr.io/ -> https://ghcr.io (tags rechecked after 60s, as ann)"),
        "{checked}"
    );
    assert!(
        checked.contains("quay.io/ -> https://quay.io (tags rechecked after 300s)"),
        "{checked}"
    );
    assert!(!checked.contains("secret"), "{checked}");
    for (bad, said) in [
        (
            "mirror.nope.default=true",
            "there is no mirror for \"nope\"",
        ),
        ("mirror.bad=ftp://x.test", "http"),
        ("mirror.Bad=https://x.test", "not a repository name"),
        ("mirror.docker.io=https://u:pw@x.test", "not in the URL"),
        ("mirror.quay.io.default=true", "only one"),
    ] {
        let before = std::fs::read_to_string(&toml_path).unwrap();
        let err = fails(home, &["reconfigure", bad]);
        assert!(err.contains(said), "{bad}: {err}");
        assert!(!err.contains("pw@"), "{err}");
        assert_eq!(std::fs::read_to_string(&toml_path).unwrap(), before);
    }
    ok(home, &["reconfigure", "mirror.ghcr.io="], None);
    let config = std::fs::read_to_string(&toml_path).unwrap();
    assert!(
        !config.contains("ghcr.io") && config.contains("quay.io"),
        "{config}"
    );
    // A re-run with --mirror none leaves no mirror.
    ok(home, &[&base[..], &["--mirror", "none"][..]].concat(), None);
    let config = std::fs::read_to_string(&toml_path).unwrap();
    assert!(!config.contains("[[proxy]]"), "{config}");
}
