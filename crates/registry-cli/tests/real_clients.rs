//! End-to-end with real container tools: skopeo and podman, against the real binary. These
//! tools are required (installed by `.ci/run`); a missing tool fails the test.

mod common;

use std::path::Path;

use common::tools::{json, podman, podman_root, run, skopeo};
use common::{bcrypt_user, data, tar, write_oci_layout, Server};

#[test]
fn skopeo_copy_in_and_out_inspect_list_delete() {
    skopeo_round_trip(&Server::start(&[]));
}

/// The same on S3 (a real Garage).
#[test]
fn skopeo_on_s3() {
    let garage = registry_core::garage::Garage::start();
    let storage = format!("s3://{}/skopeo", registry_core::garage::BUCKET);
    skopeo_round_trip(&Server::start_on(Some(storage), garage.env(), &[]));
}

fn skopeo_round_trip(server: &Server) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let layers = vec![
        tar(&[("hello", b"hello world\n")]),
        tar(&[("big", &data(2_500_000, 1)[..])]),
    ];
    let manifest_digest = write_oci_layout(&layout, "v1", &layers);
    let image = format!("docker://{}/skopeo/img", server.addr);

    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("{image}:v1"),
    ]));
    let inspect = json(&run(skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("{image}:v1"),
    ])));
    assert_eq!(inspect["Digest"], manifest_digest);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);

    // Registry to registry: the layers are mounted across repositories.
    run(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("{image}:v1"),
        &format!("{image}:v2"),
    ]));
    let other = format!("docker://{}/skopeo/other:latest", server.addr);
    run(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("{image}:v1"),
        &other,
    ]));
    // And converted to a Docker schema 2 manifest with compressed layers.
    let docker = format!("docker://{}/skopeo/docker:v1", server.addr);
    run(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("{image}:v1"),
        &docker,
    ]));
    let raw = json(&run(skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &docker,
    ])));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    let tags = json(&run(skopeo(&["list-tags", "--tls-verify=false", &image])));
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));

    // Copy back out and compare the content.
    let out = work.path().join("out");
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
        "--src-tls-verify=false",
        &format!("{image}:v1"),
        &format!("oci:{}:back", out.display()),
    ]));
    for layer in &layers {
        let d = common::sha256(layer);
        let copied = std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap();
        assert!(copied == *layer, "layer {d} differs after the round trip");
    }
    assert!(out
        .join("blobs/sha256")
        .join(&manifest_digest[7..])
        .exists());

    run(skopeo(&[
        "delete",
        "--tls-verify=false",
        &format!("{image}:v1"),
    ]));
    let gone = skopeo(&["inspect", "--tls-verify=false", &format!("{image}:v1")])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    let gone = skopeo(&["inspect", "--tls-verify=false", &format!("{image}:v2")])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "deleting by tag deletes the manifest, so v2 goes too"
    );
    // The other repository is untouched.
    run(skopeo(&["inspect", "--tls-verify=false", &other]));
}

#[test]
fn podman_push_and_pull() {
    let server = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    podman_root(root);

    // Seed the registry with skopeo, then let podman pull it, retag it, push it and pull it back.
    let layout = root.join("layout");
    write_oci_layout(&layout, "v1", &[tar(&[("file", &data(100_000, 2)[..])])]);
    let src = format!("{}/seed/img:v1", server.addr);
    run(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{src}"),
    ]));

    run(podman(root, &["pull", "--tls-verify=false", &src]));
    let dst = format!("{}/podman/pushed:latest", server.addr);
    run(podman(root, &["tag", &src, &dst]));
    run(podman(root, &["push", "--tls-verify=false", &dst]));
    run(podman(root, &["rmi", "--all", "--force"]));
    run(podman(root, &["pull", "--tls-verify=false", &dst]));
    let images = run(podman(
        root,
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
    ));
    assert!(String::from_utf8_lossy(&images.stdout).contains("podman/pushed:latest"));
    let tags = json(&run(skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/podman/pushed", server.addr),
    ])));
    assert_eq!(tags["Tags"], serde_json::json!(["latest"]));
}

/// skopeo against the TLS listener: logging in with `--creds` (the CA from a certs.d-style
/// `--cert-dir`), then with a client certificate from the same layout and no password.
#[test]
fn skopeo_over_tls_with_credentials_and_client_certificates() {
    use common::pki::{Ca, Validity};
    let work = tempfile::tempdir().unwrap();
    let ca = Ca::new("skopeo test CA");
    let (cert, key) = ca.server().write(work.path(), "server.pem", "server.key");
    let ca_path = work.path().join("clients-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let htpasswd = bcrypt_user(work.path(), "ann", "ann-secret");
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        ca_path.to_str().unwrap(),
        "--client-auth",
        "optional",
        "--client-names",
        "*.clients.registry.example.com",
        "--htpasswd",
        htpasswd.to_str().unwrap(),
    ]);
    // Docker's layout: certs.d/<host>/ca.crt, client.cert, client.key.
    let trust_only = work.path().join("certs.d/trust");
    std::fs::create_dir_all(&trust_only).unwrap();
    std::fs::write(trust_only.join("ca.crt"), ca.pem()).unwrap();
    let with_client = work.path().join("certs.d/client");
    std::fs::create_dir_all(&with_client).unwrap();
    std::fs::write(with_client.join("ca.crt"), ca.pem()).unwrap();
    ca.client(&["ci.clients.registry.example.com"], "ci", Validity::Now)
        .write(&with_client, "client.cert", "client.key");

    let layout = work.path().join("layout");
    let digest = write_oci_layout(&layout, "v1", &[tar(&[("f", b"tls\n")])]);
    let image = format!("docker://{}/tls/img", server.addr);
    let trust = trust_only.to_str().unwrap();
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        trust,
        "--dest-creds",
        "ann:ann-secret",
        &format!("oci:{}:v1", layout.display()),
        &format!("{image}:v1"),
    ]));
    let inspect = json(&run(skopeo(&[
        "inspect",
        "--cert-dir",
        trust,
        "--creds",
        "ann:ann-secret",
        &format!("{image}:v1"),
    ])));
    assert_eq!(inspect["Digest"], digest);

    // Wrong password, no credentials, or an untrusted server certificate: refused.
    for args in [
        vec!["--cert-dir", trust, "--creds", "ann:wrong"],
        vec!["--cert-dir", trust],
        vec!["--creds", "ann:ann-secret"],
    ] {
        let mut all = vec!["inspect"];
        all.extend(args.iter().copied());
        let image_ref = format!("{image}:v1");
        all.push(&image_ref);
        let out = skopeo(&all).output().unwrap();
        assert!(!out.status.success(), "skopeo {all:?} succeeded");
    }

    // A client certificate is an identity: push and pull without a password.
    let client = with_client.to_str().unwrap();
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        client,
        &format!("oci:{}:v1", layout.display()),
        &format!("{image}:v2"),
    ]));
    let inspect = json(&run(skopeo(&[
        "inspect",
        "--cert-dir",
        client,
        &format!("{image}:v2"),
    ])));
    assert_eq!(inspect["Digest"], digest);
}

/// `podman login` over TLS against an htpasswd user (the CA in a certs.d-style `--cert-dir`),
/// then push and pull with the stored credentials; a wrong password fails the login.
#[test]
fn podman_login_push_pull_over_tls() {
    use common::pki::Ca;
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    podman_root(root);
    let ca = Ca::new("podman test CA");
    let (cert, key) = ca.server().write(root, "server.pem", "server.key");
    let htpasswd = bcrypt_user(root, "ann", "ann-secret");
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--htpasswd",
        htpasswd.to_str().unwrap(),
    ]);
    let certs = root.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca.pem()).unwrap();
    let certs = certs.to_str().unwrap();
    let addr = server.addr.as_str();

    let wrong = podman(
        root,
        &[
            "login",
            "--cert-dir",
            certs,
            "-u",
            "ann",
            "-p",
            "nope",
            addr,
        ],
    )
    .output()
    .unwrap();
    assert!(
        !wrong.status.success(),
        "login with a wrong password succeeded"
    );
    run(podman(
        root,
        &[
            "login",
            "--cert-dir",
            certs,
            "-u",
            "ann",
            "-p",
            "ann-secret",
            addr,
        ],
    ));
    let layout = root.join("layout");
    write_oci_layout(&layout, "v1", &[tar(&[("file", &data(50_000, 3)[..])])]);
    let image = format!("{addr}/podman/tls:v1");
    run(skopeo(&[
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        "ann:ann-secret",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{image}"),
    ]));
    run(podman(root, &["pull", "--cert-dir", certs, &image]));
    let pushed = format!("{addr}/podman/tls-pushed:v1");
    run(podman(root, &["tag", &image, &pushed]));
    run(podman(root, &["push", "--cert-dir", certs, &pushed]));
    run(podman(root, &["logout", addr]));
    let anonymous = podman(root, &["pull", "--cert-dir", certs, &pushed])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "pull without credentials succeeded"
    );
}

/// An mTLS instance set up with `registry cert` alone (CA, server certificate, client
/// certificates in Docker's certs.d layout), used by skopeo: the authorized client pushes and
/// pulls; a certificate with another name, and no certificate, are refused.
#[test]
fn skopeo_with_certificates_from_registry_cert() {
    use common::cli::{ok, serve};
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let addr = format!("127.0.0.1:{}", common::free_port());
    ok(
        &home,
        &["instance", "create", "default", "--listen", &addr],
        None,
    );
    ok(&home, &["cert", "init-ca"], None);
    ok(&home, &["cert", "server", "localhost", "127.0.0.1"], None);
    ok(
        &home,
        &[
            "reconfigure",
            "client_ca=tls/ca.pem",
            "client_names=*.ci.example.com",
        ],
        None,
    );
    let certs = work.path().join("certs.d");
    let (good, other, none) = (certs.join("good"), certs.join("other"), certs.join("none"));
    let out = |d: &Path| d.to_str().unwrap().to_owned();
    ok(
        &home,
        &[
            "cert",
            "client",
            "build.ci.example.com",
            "--out",
            &out(&good),
        ],
        None,
    );
    ok(
        &home,
        &[
            "cert",
            "client",
            "laptop.example.com",
            "--out",
            &out(&other),
        ],
        None,
    );
    std::fs::create_dir_all(&none).unwrap();
    std::fs::copy(good.join("ca.crt"), none.join("ca.crt")).unwrap();
    let report = ok(&home, &["check"], None);
    assert!(
        report.contains("mutual TLS") && report.contains("*.ci.example.com"),
        "{report}"
    );
    let _server = serve(&home, &addr);

    let layout = work.path().join("layout");
    let digest = write_oci_layout(&layout, "v1", &[tar(&[("f", b"mtls\n")])]);
    let image = format!("docker://{addr}/mtls/img:v1");
    run(skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        &out(&good),
        &format!("oci:{}:v1", layout.display()),
        &image,
    ]));
    let inspect = json(&run(skopeo(&[
        "inspect",
        "--cert-dir",
        &out(&good),
        &image,
    ])));
    assert_eq!(inspect["Digest"], digest);
    for refused in [&other, &none] {
        let o = skopeo(&["inspect", "--cert-dir", &out(refused), &image])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "inspect with {} succeeded",
            refused.display()
        );
    }
}
