//! Certificates from a real ACME server (Pebble) end to end: the wizard's "Let's Encrypt
//! (automatic)" then `registry serve` gives HTTPS that skopeo trusts with ordinary
//! verification; a restart reuses the stored certificate and a corrupt one is replaced;
//! HTTP-01 on the plain listener (which otherwise redirects), two instances with their own
//! names and certificates on one port, one of them with two names; renewal of short-lived
//! certificates seen by new connections without a restart; the CA down at first start, then
//! up, while other instances serve; two nodes on one Garage bucket ordering once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::ok;
use common::pebble::{Pebble, PebbleConfig};
use common::tools::{run, skopeo};
use common::{free_port, write_oci_layout};
use object_store::ObjectStoreExt;
use rexpect::session::PtySession;

/// A `registry serve` with its log (`RUST_LOG=info`) in a file.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// `registry --config-dir HOME serve ARGS…` until `addr` listens.
    fn start(home: &Path, args: &[&str], env: &[(&str, String)], addr: &str, log: &str) -> Node {
        let log = home.join(log);
        std::fs::create_dir_all(home).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_registry"))
            .arg("--config-dir")
            .arg(home)
            .arg("serve")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let node = Node { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "no listener on {addr}: {}",
                node.logged()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(self) -> String {
        self.logged()
    }
}

/// A client that trusts only `root` and reaches `name` at `addr`.
fn client(root: &str, name: &str, addr: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(name, addr.parse().unwrap())
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The leaf certificate `name` is served with at `addr`, once one that `root` vouches for is
/// (a fresh connection each try).
fn certificate(root: &str, name: &str, addr: &str, within: Duration, node: &Node) -> Vec<u8> {
    let port = addr.rsplit_once(':').unwrap().1;
    let deadline = Instant::now() + within;
    loop {
        let answer = client(root, name, addr)
            .get(format!("https://{name}:{port}/v2/"))
            .send();
        match answer {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
                return info.peer_certificate().unwrap().to_vec();
            }
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "no trusted certificate for {name} on {addr}: {e:?}\n{}",
                    node.logged()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Waits until `cond` holds, or fails with `what`.
fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn orders(log: &str) -> usize {
    log.matches("ACME: ordering a certificate").count()
}

#[test]
fn wizard_to_trusted_https_then_restart_reuses_and_a_corrupt_store_is_replaced() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let pebble = Pebble::start(PebbleConfig::ports(free_port(), port));
    let root = pebble.issuing_root();

    // `registry config` as a person answers it; the directory (a test CA) by flags.
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.arg("--config-dir").arg(&home).arg("config");
    c.args(["--listen", &addr, "--acme-directory", &pebble.directory()]);
    c.arg("--acme-directory-ca").arg(pebble.https_ca());
    c.env("TERM", "xterm").env("RUST_LOG", "warn");
    let mut p: PtySession = rexpect::session::spawn_command(c, Some(30_000)).unwrap();
    let enter = |p: &mut PtySession| {
        p.send("\r").unwrap();
        p.flush().unwrap();
    };
    let answer = |p: &mut PtySession, prompt: &str, text: &str| {
        p.exp_string(prompt).unwrap();
        p.send_line(text).unwrap();
    };
    answer(&mut p, "domain name", "localhost");
    p.exp_string("sentry authorization").unwrap();
    enter(&mut p);
    p.exp_string("Storage").unwrap();
    enter(&mut p);
    answer(&mut p, "Directory", "");
    answer(&mut p, "Allow anonymous read-only pull?", "");
    answer(&mut p, "IP allowlist", "");
    answer(&mut p, "Cache Docker Hub here too", "");
    p.exp_string("TLS").unwrap();
    p.exp_string("HTTPS with a Let's Encrypt certificate (automatic)")
        .unwrap();
    enter(&mut p);
    answer(&mut p, "Contact email", "ops@example.com");
    p.exp_eof().unwrap();
    let dir = home.join("instances/default");
    let config = std::fs::read_to_string(dir.join("registry.toml")).unwrap();
    assert!(
        config.contains("[tls.acme]") && config.contains("email = \"ops@example.com\""),
        "{config}"
    );

    let node = Node::start(&home, &[], &[], &addr, "serve-1.log");
    let first = certificate(&root, "localhost", &addr, Duration::from_secs(60), &node);
    let stored = dir.join("acme/certificate.pem");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&stored), 0o600);
        assert_eq!(mode(&dir.join("acme")), 0o700);
        let account = std::fs::read_dir(dir.join("acme/accounts"))
            .unwrap()
            .next()
            .unwrap();
        assert_eq!(mode(&account.unwrap().path()), 0o600);
    }

    // A real client with ordinary verification (trusting the CA's root like a public one).
    let certs = work.path().join("certs");
    pebble.trust_in(&certs);
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "v1", &[common::data(300_000, 7)]);
    let image = format!("docker://localhost:{port}/acme/app:v1");
    let certs_arg = format!("--dest-cert-dir={}", certs.display());
    run(skopeo(&[
        "copy",
        &certs_arg,
        &format!("oci:{}:v1", layout.display()),
        &image,
    ]));
    let back = work.path().join("back");
    let src_certs = format!("--src-cert-dir={}", certs.display());
    run(skopeo(&[
        "copy",
        &src_certs,
        &image,
        &format!("oci:{}:v1", back.display()),
    ]));
    // Without the root, skopeo refuses: the verification is real.
    let refused = skopeo(&["inspect", &image]).output().unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("certificate"),
        "{why}"
    );

    // check shows names, issuer and expiry; /metrics the expiry.
    let check = ok(&home, &["check"], None);
    assert!(
        check.contains("names localhost; issuer") && check.contains("Pebble"),
        "{check}"
    );
    assert!(
        check.contains("expires") && check.contains(" days)"),
        "{check}"
    );
    let metrics = client(&root, "localhost", &addr)
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("registry_tls_certificate_expiry_timestamp_seconds{name=\"localhost\"}"),
        "{metrics}"
    );
    let log = node.stop();
    assert_eq!(orders(&log), 1, "{log}");

    // A restart serves the stored certificate from the first handshake, orders nothing.
    let node = Node::start(&home, &[], &[], &addr, "serve-2.log");
    let again = certificate(&root, "localhost", &addr, Duration::from_secs(5), &node);
    assert_eq!(again, first);
    std::thread::sleep(Duration::from_millis(500));
    let log = node.stop();
    assert_eq!(orders(&log), 0, "{log}");

    // A corrupt store is never served: a new certificate is ordered.
    std::fs::write(&stored, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    let node = Node::start(&home, &[], &[], &addr, "serve-3.log");
    let replaced = certificate(&root, "localhost", &addr, Duration::from_secs(60), &node);
    assert_ne!(replaced, first);
    let log = node.stop();
    assert!(log.contains("the stored certificate is not used"), "{log}");
    assert_eq!(orders(&log), 1, "{log}");
}

/// Appends to an instance's registry.toml.
fn append(home: &Path, instance: &str, text: &str) {
    use std::io::Write;
    let path = home.join("instances").join(instance).join("registry.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn http01_two_instances_on_one_port_one_with_two_names() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let (port, plain) = (free_port(), free_port());
    let (addr, plain_addr) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{plain}"));
    // This CA also requires an External Account Binding (as ZeroSSL does).
    let pebble = Pebble::start(PebbleConfig {
        eab: Some((
            "kid-1",
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
        )),
        ..PebbleConfig::ports(plain, port)
    });
    let root = pebble.issuing_root();
    for (name, host, names) in [
        ("a", "a.test", "[\"a.test\", \"www.a.test\"]"),
        ("b", "b.test", "[\"b.test\"]"),
    ] {
        common::cli::create(&home, name, host, &addr);
        append(
            &home,
            name,
            &format!(
                "\n[tls]\nplain_listen = \"{plain_addr}\"\n[tls.acme]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\nnames = {names}\nchallenge = \"http-01\"\neab_kid = \"kid-1\"\neab_hmac_key = \"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\"\n",
                pebble.directory(),
                pebble.https_ca().display()
            ),
        );
    }
    let node = Node::start(&home, &[], &[], &addr, "serve.log");
    let a = certificate(&root, "a.test", &addr, Duration::from_secs(60), &node);
    let www = certificate(&root, "www.a.test", &addr, Duration::from_secs(10), &node);
    let b = certificate(&root, "b.test", &addr, Duration::from_secs(60), &node);
    assert_eq!(a, www, "one certificate for both names of a");
    assert_ne!(a, b);
    // The plain listener redirects what is not a challenge, to the instance's own name.
    let r = client(&root, "a.test", &plain_addr)
        .get(format!("http://a.test:{plain}/v2/_catalog?n=1"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://a.test:{port}/v2/_catalog?n=1").as_str()
    );
    let r = client(&root, "b.test", &plain_addr)
        .get(format!(
            "http://b.test:{plain}/.well-known/acme-challenge/unknown-token"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let check = ok(&home, &["check"], None);
    assert!(
        check.contains("names a.test, www.a.test") && check.contains("names b.test"),
        "{check}"
    );
    let log = node.stop();
    assert_eq!(orders(&log), 2, "{log}");
    assert_eq!(pebble.issued(), 2);
}

#[test]
fn ca_down_at_first_start_then_up_then_renewal_without_restart() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let (port, other_port, bogus_port) = (free_port(), free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let pebble_port = free_port();
    let directory_ca = work.path().join("pebble-ca.pem");
    // The instance with ACME, while the CA is not there yet; a plain instance beside it; and
    // one whose directory is not ACME at all (the plain instance's API).
    common::cli::create(&home, "acme", "localhost", &addr);
    append(
        &home,
        "acme",
        &format!(
            "\n[tls.acme]\ndirectory = \"https://127.0.0.1:{pebble_port}/dir\"\ndirectory_ca = \"{}\"\nretry = \"1s\"\n",
            directory_ca.display()
        ),
    );
    let other = format!("127.0.0.1:{other_port}");
    common::cli::create(&home, "plain", "plain.test", &other);
    let bogus = format!("127.0.0.1:{bogus_port}");
    common::cli::create(&home, "bogus", "bogus.test", &bogus);
    append(
        &home,
        "bogus",
        &format!("\n[tls.acme]\ndirectory = \"http://{other}/v2/\"\nretry = \"1s\"\n"),
    );
    let node = Node::start(&home, &[], &[], &addr, "serve.log");
    eventually(
        "the CA's absence is logged",
        Duration::from_secs(20),
        || node.logged().contains("ACME: cannot"),
    );
    // Handshakes get an alert, not a hang; other instances serve.
    let refused = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", addr.parse().unwrap())
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/v2/"))
        .send();
    let refused = match refused {
        Err(e) => format!("{e:?}"),
        Ok(r) => panic!("served without a certificate: {}", r.status()),
    };
    assert!(refused.contains("AlertReceived"), "{refused}");
    let r = reqwest::blocking::get(format!("http://{other}/v2/")).unwrap();
    assert_eq!(r.status(), 200);

    // The CA comes up (with 30-second certificates): a certificate, then a renewal.
    let pebble = Pebble::start(PebbleConfig {
        validity: Some(30),
        port: Some(pebble_port),
        ..PebbleConfig::ports(free_port(), port)
    });
    std::fs::copy(pebble.https_ca(), &directory_ca).unwrap();
    let root = pebble.issuing_root();
    let first = certificate(&root, "localhost", &addr, Duration::from_secs(90), &node);
    // Renewed when a third of the lifetime is left (10 s), without a restart.
    let renewed = Instant::now();
    eventually("a renewal within 40 s", Duration::from_secs(40), || {
        certificate(&root, "localhost", &addr, Duration::from_secs(5), &node) != first
    });
    assert!(renewed.elapsed() > Duration::from_secs(5));
    let log = node.stop();
    assert!(orders(&log) >= 2, "{log}");
    let bogus_failures = log
        .lines()
        .filter(|l| l.contains(&format!("http://{other}/v2/")) && l.contains("ACME: cannot"))
        .count();
    assert!(bogus_failures >= 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A node's config on the shared bucket, with the CA at `directory`.
fn shared_node(
    work: &Path,
    i: usize,
    port: u16,
    storage: &str,
    directory: &str,
    ca: &Path,
) -> PathBuf {
    let config = work.join(format!("node{i}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nurl = \"{storage}\"\n[tls.acme]\nnames = [\"localhost\"]\ndirectory = \"{directory}\"\ndirectory_ca = \"{}\"\nretry = \"1s\"\n",
            ca.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn nodes_on_one_bucket_order_once_and_answer_for_each_other() {
    let garage = registry_core::garage::Garage::start();
    let work = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    // The CA validates at the node on ports[0].
    let pebble = Pebble::start(PebbleConfig::ports(free_port(), ports[0]));
    let root = pebble.issuing_root();
    let storage = format!("s3://{}/acme-nodes", registry_core::garage::BUCKET);
    let start = |i: usize, directory: &str| {
        let config = shared_node(
            work.path(),
            i,
            ports[i],
            &storage,
            directory,
            &pebble.https_ca(),
        );
        let home = work.path().join(format!("home{i}"));
        let config = config.display().to_string();
        let addr = format!("127.0.0.1:{}", ports[i]);
        Node::start(
            &home,
            &["--config", &config],
            &garage.env(),
            &addr,
            "serve.log",
        )
    };
    let served = |i: usize, node: &Node, within: u64| {
        let addr = format!("127.0.0.1:{}", ports[i]);
        certificate(&root, "localhost", &addr, Duration::from_secs(within), node)
    };

    // Two identical nodes started together: one orders, both serve its certificate.
    let nodes = [start(0, &pebble.directory()), start(1, &pebble.directory())];
    let certs = [served(0, &nodes[0], 90), served(1, &nodes[1], 90)];
    assert_eq!(certs[0], certs[1], "both nodes serve the one certificate");
    let logs: Vec<String> = nodes.iter().map(Node::logged).collect();
    assert_eq!(
        logs.iter().map(|l| orders(l)).sum::<usize>(),
        1,
        "{logs:#?}"
    );
    assert_eq!(pebble.issued(), 1);
    // The state is in the bucket, not on any node.
    let store = garage.store("acme-nodes/acme");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed = rt
        .block_on(async { store.list_with_delimiter(None).await })
        .unwrap();
    let names: Vec<String> = listed
        .objects
        .iter()
        .map(|o| o.location.to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("certificate.pem")),
        "{names:?}"
    );
    drop(nodes);

    // With the stored certificate gone, a node that cannot reach the CA sits where the CA
    // validates; another node orders, and the first answers its TLS-ALPN-01 challenge from
    // the bucket, then serves the certificate the other stored.
    rt.block_on(async {
        store
            .delete(&object_store::path::Path::from("certificate.pem"))
            .await
    })
    .unwrap();
    let blind = start(0, "https://127.0.0.1:1/dir");
    let ordering = start(2, &pebble.directory());
    let new = served(2, &ordering, 90);
    assert_ne!(new, certs[0]);
    assert_eq!(served(0, &blind, 30), new, "picked up from the bucket");
    let log = blind.logged();
    assert!(
        log.contains("answered an ACME TLS-ALPN-01 validation"),
        "{log}"
    );
    assert!(log.contains("ACME: cannot"), "{log}");
    assert_eq!(pebble.issued(), 2);
    for i in 0..3 {
        assert!(!work.path().join(format!("home{i}/acme")).exists());
    }
}
