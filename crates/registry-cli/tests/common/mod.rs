//! Shared end-to-end harness: starts the real `registry` binary on a free loopback port with its
//! own storage directory, and kills it when dropped.

#![allow(dead_code)]

pub(crate) mod cli;
pub(crate) mod pebble;
pub(crate) mod pki;
pub(crate) mod tools;
pub(crate) mod webhook;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// A running `registry serve`.
pub(crate) struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub extra: Vec<String>,
    /// `--storage`.
    pub storage: String,
    pub env: Vec<(&'static str, String)>,
    /// Where stderr goes (with `RUST_LOG=info`), for servers started by [`Server::start_logged`].
    pub log: Option<PathBuf>,
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server on fresh storage.
    pub(crate) fn start(extra: &[&str]) -> Server {
        Server::start_on(None, Vec::new(), extra)
    }

    /// Starts a server on fresh storage with the configuration file `config`, writing its
    /// audit trail as JSON lines to `audit`.
    pub(crate) fn start_audited(config: &Path, audit: &Path) -> Server {
        Server::start(&[
            "--config",
            config.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            "--audit-format",
            "json",
        ])
    }

    /// Starts a server on `storage` (e.g. `s3://bucket/prefix`) with extra environment.
    pub(crate) fn start_on(
        storage: Option<String>,
        env: Vec<(&'static str, String)>,
        extra: &[&str],
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = storage.unwrap_or_else(|| dir.path().join("data").display().to_string());
        let s = Server {
            child: spawn(&addr, &storage, &env, &extra, None),
            addr,
            dir,
            extra,
            storage,
            env,
            log: None,
        };
        s.wait_ready();
        s
    }

    /// Starts a server on fresh storage whose log (`RUST_LOG=info`) is kept in a file.
    pub(crate) fn start_logged(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.path().join("data").display().to_string();
        let log = dir.path().join("registry.log");
        let env = vec![("RUST_LOG", "info".to_owned())];
        let s = Server {
            child: spawn(&addr, &storage, &env, &extra, Some(&log)),
            addr,
            dir,
            extra,
            storage,
            env,
            log: Some(log),
        };
        s.wait_ready();
        s
    }

    /// What the server logged so far (for servers started by [`Server::start_logged`]).
    pub(crate) fn logged(&self) -> String {
        let path = self.log.as_ref().expect("started with start_logged");
        String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned()
    }

    /// The storage directory.
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `http://addr`
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("registry did not start listening on {}", self.addr);
    }

    /// Kills the server with SIGKILL and starts it again on the same port and storage.
    pub(crate) fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = self.log.as_deref();
        self.child = spawn(&self.addr, &self.storage, &self.env, &self.extra, log);
        self.wait_ready();
    }

    /// Starts the server again (after [`Server::terminate`]) on the same port and storage.
    pub(crate) fn start_again(&mut self) {
        let log = self.log.as_deref();
        self.child = spawn(&self.addr, &self.storage, &self.env, &self.extra, log);
        self.wait_ready();
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub(crate) fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

fn spawn(
    addr: &str,
    storage: &str,
    env: &[(&'static str, String)],
    extra: &[String],
    log: Option<&Path>,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registry"));
    command
        .arg("serve")
        .args(["--listen", addr, "--storage", storage])
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    if let Some(log) = log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        command.stderr(file);
    }
    command.spawn().expect("start registry")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url` and parses the body as JSON (any status).
pub(crate) async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// The text of `GET /metrics` on `base`.
pub(crate) async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    r.text().await.unwrap()
}

/// An OCI image manifest naming a config and uncompressed tar layers by (digest, size).
pub(crate) fn oci_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, n)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .unwrap()
}

/// Writes `dir/htpasswd` with one bcrypt user; returns its path.
pub(crate) fn bcrypt_user(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 4).unwrap();
    std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
    path
}

/// `sha256:<hex>` of bytes.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes.
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fails the test when a required external tool is missing: tests never skip silently.
pub(crate) fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required tool `{name}` is not installed; run .ci/run (or apt-get install {name}) first"
    );
}

/// The Python of the test virtual environment (with `requests` and `oras`), which
/// `scripts/install-test-deps.sh` creates at `$REGISTRY_TEST_VENV` (default
/// `~/.cache/registry-test-venv`). Missing, it fails the test: tests never skip silently.
pub(crate) fn python() -> PathBuf {
    let venv = std::env::var_os("REGISTRY_TEST_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/registry-test-venv"))
        })
        .expect("HOME or REGISTRY_TEST_VENV");
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "the Python client tests need {}: run scripts/install-test-deps.sh (.ci/run does)",
        python.display()
    );
    python
}

/// A script of `tests/clients/`.
pub(crate) fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A minimal uncompressed tar archive holding the given files.
pub(crate) fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Writes an OCI image layout at `dir` holding one image tagged `tag`, with `layers` as
/// uncompressed tar layers. Returns the manifest digest.
pub(crate) fn write_oci_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let layer_digests: Vec<String> = layers.iter().map(|l| put(l)).collect();
    let layer_descs: Vec<(&str, usize)> = layer_digests
        .iter()
        .zip(layers)
        .map(|(d, l)| (d.as_str(), l.len()))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }))
    .unwrap();
    let manifest = oci_manifest((&put(&config), config.len()), &layer_descs);
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest_digest
}

/// POSTs `bytes` as a blob of `repo` in one request (201 expected); its digest.
pub(crate) async fn push_blob(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> String {
    let digest = sha256(bytes);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED, "push of {digest}");
    digest
}

/// Waits (30 s at most) for a line of the JSON audit trail at `path` that `wanted` accepts;
/// the line.
pub(crate) async fn audit_line(
    path: &Path,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines = text.lines().map(|l| serde_json::from_str(l).unwrap());
        if let Some(line) = lines.into_iter().find(|l| wanted(l)) {
            return line;
        }
        assert!(Instant::now() < deadline, "no such audit line in: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens an upload session on `base`; returns its absolute URL.
pub(crate) async fn start_upload(http: &reqwest::Client, base: &str, repo: &str) -> String {
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// Sends `bytes` as PATCH chunks of the given sizes, each to the next of `bases` in turn, and
/// finishes on `finish_on`. Returns the digest.
pub(crate) async fn chunked_push(
    http: &reqwest::Client,
    bases: &[&str],
    finish_on: &str,
    repo: &str,
    bytes: &[u8],
    sizes: &[usize],
) -> String {
    let mut location = start_upload(http, bases[0], repo).await;
    let mut offset = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let chunk = &bytes[offset..offset + n];
        let base = bases[i % bases.len()];
        let r = http
            .patch(format!("{base}{location}"))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{}-{}", offset, offset + n - 1))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            reqwest::StatusCode::ACCEPTED,
            "chunk {i} on {base}"
        );
        location = r.headers()["location"].to_str().unwrap().to_owned();
        offset += n;
    }
    assert_eq!(offset, bytes.len());
    let digest = sha256(bytes);
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{finish_on}{location}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        reqwest::StatusCode::CREATED,
        "finish on {finish_on}"
    );
    digest
}

/// `n` PATCH chunk sizes: mostly 1 to 997 bytes, with a chunk of `big` bytes (plus a little)
/// every 2 500.
pub(crate) fn mixed_chunk_sizes(n: usize, big: usize) -> Vec<usize> {
    (0..n)
        .map(|i| match i % 2500 {
            1250 => big + i,
            _ => 1 + (i * 7919) % 997,
        })
        .collect()
}
