//! The workstation helpers against a running instance: `registry login` (checked against the
//! registry, stored in Docker's config.json, password from passwords.json), `list-tags`,
//! `delete-tags` (named with --yes, and picked through a pseudo-terminal), and `install` /
//! `uninstall` of the systemd unit.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use base64::Engine;
use common::cli::{fails, ok, registry_env, serve};
use common::{free_port, oci_manifest, sha256};
use reqwest::{Client, StatusCode};

/// Pushes a one-layer image `repo:tag` (layer bytes from `seed`) as `ann`.
async fn push_image(http: &Client, base: &str, password: &str, repo: &str, tag: &str, seed: &str) {
    let mut blobs = Vec::new();
    for body in [
        format!("{{\"config\":\"{seed}\"}}"),
        format!("layer {seed}"),
    ] {
        let digest = sha256(body.as_bytes());
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .basic_auth("ann", Some(password))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        blobs.push((digest, body.len()));
    }
    let m = oci_manifest((&blobs[0].0, blobs[0].1), &[(&blobs[1].0, blobs[1].1)]);
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .basic_auth("ann", Some(password))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn login_list_and_delete_tags() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let docker = work.path().join("docker");
    let env: &[(&str, &OsStr)] = &[("DOCKER_CONFIG", docker.as_os_str())];
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    ok(
        &home,
        &[
            "config",
            "--non-interactive",
            "--domain",
            "127.0.0.1",
            "--auth",
            "basic",
            "--user",
            "ann",
            "--password-stdin",
            "--export-passwords",
            "true",
            "--tls",
            "none",
            "--storage",
            "data",
            "--public-read",
            "false",
            "--ip-allowlist",
            "",
            "--listen",
            &addr,
        ],
        Some("ann-secret\n"),
    );
    let _server = serve(&home, &addr);
    let run = |args: &[&str], stdin: Option<&str>| registry_env(&home, args, stdin, env);

    // A wrong password is refused and nothing is stored.
    let out = run(
        &[
            "login",
            &addr,
            "--plain-http",
            "--username",
            "ann",
            "--password-stdin",
        ],
        Some("wrong\n"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    assert!(!docker.join("config.json").exists());
    // The password comes from passwords.json; other entries of config.json are kept.
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths":{"other.example":{"auth":"eDp5"}},"credsStore":""}"#,
    )
    .unwrap();
    let out = run(&["login", &addr, "--plain-http"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker.join("config.json")).unwrap()).unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode("ann:ann-secret");
    assert_eq!(config["auths"][&addr]["auth"], token.as_str());
    assert_eq!(config["auths"]["other.example"]["auth"], "eDp5");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(docker.join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let http = Client::new();
    let base = format!("http://{addr}");
    push_image(&http, &base, "ann-secret", "app", "v1", "one").await;
    push_image(&http, &base, "ann-secret", "app", "v2", "two").await;
    push_image(&http, &base, "ann-secret", "app", "same-as-v2", "two").await;
    push_image(&http, &base, "ann-secret", "tools/builder", "1.0", "three").await;
    let list = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tags = list(run(&["list-tags", &addr, "--plain-http"], None));
    assert_eq!(tags, "app:same-as-v2\napp:v1\napp:v2\ntools/builder:1.0\n");

    // By name: deleting by digest takes every tag of that manifest.
    let out = list(run(
        &["delete-tags", &addr, "--plain-http", "--yes", "app:v2"],
        None,
    ));
    assert!(out.contains("deleted app:v2 (sha256:"), "{out}");
    let tags = list(run(&["list-tags", &addr, "--plain-http"], None));
    assert_eq!(tags, "app:v1\ntools/builder:1.0\n");
    let out = run(
        &["delete-tags", &addr, "--plain-http", "--yes", "app:nope"],
        None,
    );
    assert!(!out.status.success());

    // Picked on a terminal: the first offered (app:v1), confirmed.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_registry"));
    c.arg("--config-dir")
        .arg(&home)
        .args(["delete-tags", &addr, "--plain-http"]);
    c.env("DOCKER_CONFIG", &docker).env("TERM", "xterm");
    let mut p = rexpect::session::spawn_command(c, Some(30_000)).unwrap();
    p.exp_string("Images to delete").unwrap();
    p.send(" ").unwrap();
    p.flush().unwrap();
    p.send("\r").unwrap();
    p.flush().unwrap();
    p.exp_string("Delete 1 image(s)?").unwrap();
    p.send_line("y").unwrap();
    p.exp_string("deleted app:v1").unwrap();
    // The registry is a local instance: gc is offered, and runs without a restart.
    p.exp_string("Collect garbage on instance \"default\" now")
        .unwrap();
    p.send_line("y").unwrap();
    p.exp_string("upload sessions removed").unwrap();
    p.exp_eof().unwrap();
    let tags = list(run(&["list-tags", &addr, "--plain-http"], None));
    assert_eq!(tags, "tools/builder:1.0\n");

    // Without stored credentials: a clear 401.
    let empty = work.path().join("nobody");
    let out = registry_env(
        &home,
        &["list-tags", &addr, "--plain-http"],
        None,
        &[("DOCKER_CONFIG", empty.as_os_str())],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn install_writes_a_hardened_unit_and_uninstall_respects_protection() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let units = work.path().join("units");
    let elsewhere = work.path().join("images");
    ok(
        &home,
        &[
            "instance",
            "create",
            "default",
            "--storage",
            elsewhere.to_str().unwrap(),
        ],
        None,
    );
    // An instance whose ACME state lives outside the home: written at run time, so writable.
    let acme_state = work.path().join("acme-state");
    ok(
        &home,
        &[
            "instance",
            "create",
            "acme",
            "--hostname",
            "reg.example.com",
            "--listen",
            "127.0.0.1:8443",
        ],
        None,
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(home.join("instances/acme/registry.toml"))
            .unwrap();
        write!(
            f,
            "\n[tls.acme]\nstate = {:?}\n",
            acme_state.display().to_string()
        )
        .unwrap();
    }
    let system_unit = Path::new("/etc/systemd/system/registry.service");
    let installed_before = system_unit.exists();
    let dry = ok(&home, &["install", "--dry-run"], None);
    let home_abs = std::path::absolute(&home).unwrap();
    for want in [
        format!(
            "ExecStart={} --config-dir {} serve",
            env!("CARGO_BIN_EXE_registry"),
            home_abs.display()
        ),
        "User=registry".to_owned(),
        "ExecReload=/bin/kill -HUP $MAINPID".to_owned(),
        format!(
            "ReadWritePaths={} {} {}",
            home_abs.display(),
            acme_state.display(),
            elsewhere.display()
        ),
        "ProtectSystem=strict".to_owned(),
        "NoNewPrivileges=true".to_owned(),
        "AmbientCapabilities=CAP_NET_BIND_SERVICE".to_owned(),
        "# would run: systemctl enable --now registry.service".to_owned(),
    ] {
        assert!(dry.contains(&want), "{want} in\n{dry}");
    }
    assert_eq!(
        system_unit.exists(),
        installed_before,
        "a dry run writes nothing"
    );
    ok(&home, &["instance", "remove", "acme"], None);
    ok(
        &home,
        &["install", "--unit-dir", units.to_str().unwrap()],
        None,
    );
    let unit = std::fs::read_to_string(units.join("registry.service")).unwrap();
    assert!(
        unit.contains("[Install]\nWantedBy=multi-user.target"),
        "{unit}"
    );
    ok(&home, &["reconfigure", "protected=true"], None);
    let err = fails(&home, &["uninstall", "--unit-dir", units.to_str().unwrap()]);
    assert!(err.contains("protected"), "{err}");
    assert!(units.join("registry.service").exists());
    ok(
        &home,
        &[
            "uninstall",
            "--force",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
        None,
    );
    assert!(!units.join("registry.service").exists());
    let empty = work.path().join("empty");
    let err = fails(&empty, &["install", "--dry-run"]);
    assert!(err.contains("no instances"), "{err}");
}
