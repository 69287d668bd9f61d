//! OAuth2 end to end: an instance set up with `registry user add`, `registry token init` and
//! `registry token create`, served by the real binary, and real clients going through the
//! Bearer flow: docker (a private dockerd), podman, skopeo, containerd's ctr and the
//! oci-client crate log in, push and pull; a scoped token's push outside its scope is refused;
//! a revoked token logs in no more.

mod common;

use std::path::Path;

use common::cli::{fails, ok, serve, Serving};
use common::tools::{json, podman, podman_root, run, run_fails, skopeo, Containerd, Docker};
use common::{data, free_port, tar, write_oci_layout};

const BOB: &str = "bob-password-1";

/// An instance with token authentication: user bob (no rules: everything), and the scoped
/// token ci-app (`repository:app/*:pull,push`).
struct Setup {
    home: tempfile::TempDir,
    addr: String,
    secret: String,
    _serving: Serving,
}

impl Setup {
    fn new() -> Setup {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let addr = format!("127.0.0.1:{}", free_port());
        ok(
            h,
            &["instance", "create", "default", "--listen", &addr],
            None,
        );
        ok(h, &["user", "add", "bob", "--password-stdin"], Some(BOB));
        let init = ok(h, &["token", "init"], None);
        assert!(init.contains("created signing key"), "{init}");
        assert!(
            init.contains(&format!("clients get tokens at http://{addr}/auth/token")),
            "{init}"
        );
        let created = ok(
            h,
            &[
                "token",
                "create",
                "--name",
                "ci-app",
                "--scope",
                "repository:app/*:pull,push",
                "--expires",
                "1d",
            ],
            None,
        );
        let secret = created
            .lines()
            .find(|l| l.starts_with("rgt_"))
            .expect("the secret is printed")
            .to_owned();
        let serving = serve(h, &addr);
        Setup {
            home,
            addr,
            secret,
            _serving: serving,
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn ci(&self) -> String {
        format!("ci-app:{}", self.secret)
    }

    /// Pushes a small image to `repo:v1` with skopeo and `creds`.
    fn seed(&self, work: &Path, repo: &str, creds: &str) {
        let layout = work.join(format!("layout-{}", repo.replace('/', "-")));
        write_oci_layout(&layout, "v1", &[tar(&[("file", &data(20_000, 7)[..])])]);
        run(skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{}/{repo}:v1", self.addr),
        ]));
    }
}

#[test]
fn token_commands_check_and_refusals() {
    let s = Setup::new();
    let h = s.home();
    let check = ok(h, &["check"], None);
    assert!(
        check.contains(&format!(
            "OAuth2 tokens from the built-in service at http://{}/auth/token",
            s.addr
        )),
        "{check}"
    );
    assert!(check.contains("lifetime 5m, key "), "{check}");
    let listed = ok(h, &["token", "list"], None);
    assert!(
        listed.starts_with("ci-app\trepository:app/*:pull,push\tcreated "),
        "{listed}"
    );
    assert!(!listed.contains(&s.secret));
    // Refusals are one line each and change nothing.
    assert!(fails(h, &["token", "init"]).contains("rotate-key"));
    assert!(fails(
        h,
        &[
            "token",
            "create",
            "--name",
            "ci-app",
            "--scope",
            "repository:x:pull"
        ]
    )
    .contains("exists already"));
    assert!(fails(
        h,
        &[
            "token",
            "create",
            "--name",
            "x",
            "--scope",
            "repository:x:fly"
        ]
    )
    .contains("fly"));
    assert!(fails(
        h,
        &[
            "token",
            "create",
            "--name",
            "a/b",
            "--scope",
            "repository:x:pull"
        ]
    )
    .contains("token name"));
    assert!(fails(
        h,
        &[
            "token",
            "create",
            "--name",
            "x",
            "--scope",
            "repository:x:pull",
            "--expires",
            "soon"
        ]
    )
    .contains("--expires"));
    assert!(fails(h, &["token", "revoke", "nobody"]).contains("no token named"));
    // A rotation keeps the previous key for the tokens it signed.
    let rotated = ok(h, &["token", "rotate-key"], None);
    assert!(rotated.starts_with("signing with "), "{rotated}");
    assert!(ok(h, &["check"], None).contains("(previous "));
    // Without a key, the instance does not start, and says why.
    std::fs::remove_dir_all(h.join("instances/default/tokens")).unwrap();
    assert!(fails(h, &["check"]).contains("registry token init"));
    let port = free_port();
    ok(
        h,
        &["reconfigure", &format!("listen=127.0.0.1:{port}")],
        None,
    );
    assert!(fails(h, &["serve"]).contains("registry token init"));
}

/// `registry login`, `list-tags` and `delete-tags` speak the token protocol too.
#[test]
fn the_registry_client_commands_use_tokens() {
    let s = Setup::new();
    let work = tempfile::tempdir().unwrap();
    s.seed(work.path(), "team/app", &format!("bob:{BOB}"));
    let docker = work.path().join("docker-config");
    let env = [("DOCKER_CONFIG", docker.as_os_str())];
    let run =
        |args: &[&str], stdin: Option<&str>| common::cli::registry_env(s.home(), args, stdin, &env);
    let login = [
        "login",
        s.addr.as_str(),
        "--plain-http",
        "--username",
        "bob",
        "--password-stdin",
    ];
    let out = run(&login, Some("wrong\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    let out = run(&login, Some(&format!("{BOB}\n")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["list-tags", &s.addr, "--plain-http"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "team/app:v1");
    let out = run(
        &[
            "delete-tags",
            &s.addr,
            "--plain-http",
            "--yes",
            "team/app:v1",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["list-tags", &s.addr, "--plain-http"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

#[test]
fn docker_logs_in_with_tokens_pushes_and_is_refused_outside_the_scope() {
    let s = Setup::new();
    let work = tempfile::tempdir().unwrap();
    let docker = Docker::start(&work.path().join("docker"));
    let addr = s.addr.as_str();
    let wrong = run_fails(docker.cmd(&["login", addr, "-u", "bob", "-p", "wrong"]));
    assert!(
        wrong.contains("401") || wrong.contains("nauthorized"),
        "{wrong}"
    );
    run(docker.cmd(&["login", addr, "-u", "bob", "-p", BOB]));
    // docker keeps a refresh token from the token service, not the password.
    let stored = &docker.config_json()["auths"][addr];
    assert!(
        stored["identitytoken"].as_str().unwrap().starts_with("eyJ"),
        "{stored}"
    );
    assert!(!stored.to_string().contains(BOB));
    let tarball = work.path().join("rootfs.tar");
    std::fs::write(&tarball, tar(&[("hello", b"hello from docker\n")])).unwrap();
    let image = format!("{addr}/team/web:v1");
    run(docker.cmd(&["import", tarball.to_str().unwrap(), &image]));
    run(docker.cmd(&["push", &image]));
    run(docker.cmd(&["rmi", &image]));
    run(docker.cmd(&["pull", &image]));
    // The scoped token: its own repositories only.
    run(docker.cmd(&["login", addr, "-u", "ci-app", "-p", &s.secret]));
    let inside = format!("{addr}/app/web:v1");
    run(docker.cmd(&["tag", &image, &inside]));
    run(docker.cmd(&["push", &inside]));
    let outside = format!("{addr}/other/web:v1");
    run(docker.cmd(&["tag", &image, &outside]));
    let refused = run_fails(docker.cmd(&["push", &outside]));
    assert!(refused.contains("denied"), "{refused}");
    run(docker.cmd(&["rmi", &inside]));
    run(docker.cmd(&["pull", &inside]));
}

#[test]
fn podman_and_skopeo_with_tokens_and_revocation() {
    let s = Setup::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    podman_root(root);
    s.seed(root, "app/seed", &s.ci());
    let addr = s.addr.as_str();
    run(podman(
        root,
        &[
            "login",
            "--tls-verify=false",
            "-u",
            "ci-app",
            "-p",
            &s.secret,
            addr,
        ],
    ));
    let seed = format!("{addr}/app/seed:v1");
    run(podman(root, &["pull", "--tls-verify=false", &seed]));
    let inside = format!("{addr}/app/podman:v1");
    run(podman(root, &["tag", &seed, &inside]));
    run(podman(root, &["push", "--tls-verify=false", &inside]));
    let outside = format!("{addr}/other/podman:v1");
    run(podman(root, &["tag", &seed, &outside]));
    run_fails(podman(root, &["push", "--tls-verify=false", &outside]));
    // skopeo with bob, who may do everything; and reading with the token.
    s.seed(root, "team/skopeo", &format!("bob:{BOB}"));
    let inspect = json(&run(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &s.ci(),
        &format!("docker://{inside}"),
    ])));
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    run_fails(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &s.ci(),
        &format!("docker://{addr}/team/skopeo:v1"),
    ]));
    // Revoked: no new tokens at once.
    ok(s.home(), &["token", "revoke", "ci-app"], None);
    run_fails(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &s.ci(),
        &format!("docker://{inside}"),
    ]));
}

#[test]
fn containerd_ctr_pulls_and_pushes_with_tokens() {
    let s = Setup::new();
    let work = tempfile::tempdir().unwrap();
    s.seed(work.path(), "app/seed", &s.ci());
    let containerd = Containerd::start(&work.path().join("containerd"));
    let ci = s.ci();
    let seed = format!("{}/app/seed:v1", s.addr);
    let auth = ["--plain-http", "--user", ci.as_str()];
    let mut pull = vec!["images", "pull"];
    pull.extend(auth);
    pull.push(&seed);
    run(containerd.ctr(&pull));
    let inside = format!("{}/app/ctr:v1", s.addr);
    run(containerd.ctr(&["images", "tag", &seed, &inside]));
    let mut push = vec!["images", "push"];
    push.extend(auth);
    push.push(&inside);
    run(containerd.ctr(&push));
    let outside = format!("{}/other/ctr:v1", s.addr);
    run(containerd.ctr(&["images", "tag", &seed, &outside]));
    let mut refused = vec!["images", "push"];
    refused.extend(auth);
    refused.push(&outside);
    let said = run_fails(containerd.ctr(&refused));
    assert!(said.contains("insufficient_scope"), "{said}");
}

#[tokio::test]
async fn oci_client_goes_through_the_token_service() {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};
    let s = tokio::task::spawn_blocking(Setup::new).await.unwrap();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = RegistryAuth::Basic("ci-app".into(), s.secret.clone());
    let layers = vec![ImageLayer::oci_v1(data(300_000, 9), None)];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    let inside: Reference = format!("{}/app/oci:1", s.addr).parse().unwrap();
    client
        .push(&inside, &layers, config.clone(), &auth, None)
        .await
        .expect("push inside the scope");
    let pulled = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
    .pull(
        &inside,
        &auth,
        vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
    )
    .await
    .expect("pull");
    assert!(pulled.layers[0].data == layers[0].data);
    let outside: Reference = format!("{}/other/oci:1", s.addr).parse().unwrap();
    let refused = client.push(&outside, &layers, config, &auth, None).await;
    assert!(refused.is_err(), "push outside the scope succeeded");
    let anonymous = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
    .pull(
        &inside,
        &RegistryAuth::Anonymous,
        vec![oci_client::manifest::IMAGE_LAYER_MEDIA_TYPE],
    )
    .await;
    assert!(anonymous.is_err(), "anonymous pull without public read");
}
