//! Pebble (Debian's `pebble`), a real ACME server, on loopback for the tests: its own HTTPS
//! from a test CA, names resolved by `pebble-challtestsrv` to 127.0.0.1, and validation on the
//! ports a test picks (its registry's HTTPS and plain listeners). Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Ca;
use super::{free_port, require_tool};

/// How a Pebble is set up.
pub(crate) struct PebbleConfig {
    /// Where it validates HTTP-01 (the registry's plain listener).
    pub http_port: u16,
    /// Where it validates TLS-ALPN-01 (the registry's HTTPS listener).
    pub tls_port: u16,
    /// Certificate lifetime in seconds (Pebble's default: about five years).
    pub validity: Option<u64>,
    /// The directory's port (free by default).
    pub port: Option<u16>,
    /// An External Account Binding every account must present: key id and base64url HMAC key.
    pub eab: Option<(&'static str, &'static str)>,
}

impl PebbleConfig {
    /// Validation on these ports; everything else as Pebble does by default.
    pub(crate) fn ports(http_port: u16, tls_port: u16) -> PebbleConfig {
        PebbleConfig {
            http_port,
            tls_port,
            validity: None,
            port: None,
            eab: None,
        }
    }
}

/// A running Pebble with its DNS.
pub(crate) struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    dns: Child,
    port: u16,
    management: u16,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Starts Pebble and its DNS; returns once the directory answers.
    pub(crate) fn start(config: PebbleConfig) -> Pebble {
        let pebble = require_tool("pebble");
        let challtestsrv = require_tool("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("pebble test HTTPS CA");
        let (cert, key) = ca.server_for(&["localhost", "127.0.0.1"]).write(
            dir.path(),
            "pebble.pem",
            "pebble-key.pem",
        );
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let (dns_port, challtest_mgmt) = (free_port(), free_port());
        let dns = Command::new(challtestsrv)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", challtest_mgmt)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = config.port.unwrap_or_else(free_port);
        let management = free_port();
        let mut settings = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": config.http_port,
            "tlsPort": config.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": config.eab.is_some(),
        });
        if let Some((kid, key)) = config.eab {
            settings["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        if let Some(v) = config.validity {
            settings["certificateValidityPeriod"] = v.into();
        }
        let file = dir.path().join("pebble.json");
        std::fs::write(&file, serde_json::json!({ "pebble": settings }).to_string()).unwrap();
        let log = dir.path().join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(pebble)
            .arg("-config")
            .arg(&file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pebble = Pebble {
            dir,
            pebble: child,
            dns,
            port,
            management,
            log,
        };
        pebble.wait_ready();
        pebble
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http().get(self.directory()).send() {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                self.logged()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client that trusts Pebble's own HTTPS.
    fn http(&self) -> reqwest::blocking::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.https_ca()).unwrap()).unwrap();
        reqwest::blocking::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    }

    /// The directory URL.
    pub(crate) fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of Pebble's own HTTPS (the registry's `directory_ca`).
    pub(crate) fn https_ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root that signs the certificates Pebble issues, PEM (what clients trust).
    pub(crate) fn issuing_root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        self.http().get(url).send().unwrap().text().unwrap()
    }

    /// Writes the issuing root where `dir` is a client's certificate directory (`ca.crt`).
    pub(crate) fn trust_in(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("ca.crt");
        std::fs::write(&file, self.issuing_root()).unwrap();
        file
    }

    /// How many certificates it issued so far.
    pub(crate) fn issued(&self) -> usize {
        self.logged().matches("Issued certificate serial").count()
    }

    /// Its log so far.
    pub(crate) fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
