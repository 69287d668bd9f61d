//! A real S3 server for tests: a single-node Garage started on free loopback ports in a
//! temporary directory, with one bucket and one key, stopped when dropped. `garage` must be on
//! the PATH (`cargo install --locked garage`); a missing binary fails the test, never skips it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

/// The key every test Garage is given (imported, so it is known in advance).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
/// Its secret.
pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// The region Garage is configured with.
pub const REGION: &str = "garage";
/// The bucket created at start.
pub const BUCKET: &str = "registry";

/// A running Garage.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    config: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn garage_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("garage");
        if candidate.is_file() {
            return candidate;
        }
    }
    let cargo_bin = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/garage"))
        .filter(|p| p.is_file());
    cargo_bin.unwrap_or_else(|| {
        panic!("the S3 tests need Garage: `cargo install --locked garage` (.ci/run does it)")
    })
}

impl Garage {
    /// Starts Garage, lays out its single node, creates the bucket and imports the key.
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = {meta:?}\n\
                 data_dir = {data:?}\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{SECRET}\"\n\
                 [s3_api]\n\
                 s3_region = \"{REGION}\"\n\
                 api_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\n\
                 api_bind_addr = \"127.0.0.1:{admin}\"\n",
                meta = dir.path().join("meta"),
                data = dir.path().join("data"),
            ),
        )
        .expect("write garage.toml");
        let mut g = Garage {
            child: None,
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            config,
        };
        g.resume();
        let node = g.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap_or("").to_owned();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", BUCKET]);
        g.cli(&["key", "import", "--yes", "-n", "registry", KEY_ID, SECRET]);
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ]);
        g.wait_for_s3();
        g
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }

    /// Runs a `garage` command against this server; panics with its output on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(garage_binary())
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // The RPC layer needs a moment after start.
            if Instant::now() > deadline {
                panic!(
                    "garage {args:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it keeps accepting connections (the kernel does) but
    /// answers nothing, as a stalled S3 does.
    pub fn freeze(&self) {
        self.signal("-STOP");
        // The signal is delivered asynchronously: wait until every thread has stopped.
        let pid = self.child.as_ref().expect("garage is running").id();
        let stopped = |stat: String| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with(['T', 't'])
        };
        let all_stopped = || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("garage's threads");
            tasks
                .flatten()
                .all(|task| std::fs::read_to_string(task.path().join("stat")).is_ok_and(stopped))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_stopped() {
            assert!(Instant::now() < deadline, "garage did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("garage is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} garage");
    }

    /// Starts the server again on the same ports and data.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.log()).expect("garage log");
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        if self.endpoint_port_open(Duration::from_secs(30)).is_err() {
            panic!(
                "garage did not start: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    fn endpoint_port_open(&self, within: Duration) -> Result<(), ()> {
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(())
    }

    fn wait_for_s3(&self) {
        // The bucket becomes usable once the layout has propagated; probe with a real request.
        let store = self.store("probe");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Generous: on two busy cores (tests running beside it) Garage once took over 30 s.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ok = rt.block_on(async {
                store
                    .put(&"ready".into(), bytes::Bytes::from_static(b"1").into())
                    .await
            });
            match ok {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "garage S3 is not ready: {e}\ngarage's log:\n{}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The environment a `registry serve` needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
        ]
    }

    /// An object store over the bucket, under `prefix` (one per test, so tests do not meet).
    pub fn store(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        Arc::new(PrefixStore::new(self.client(), prefix))
    }

    /// Multipart uploads of the bucket, under `prefix` (the same keys as [`Self::store`]).
    pub fn multipart(&self, prefix: &str) -> Arc<dyn MultipartStore> {
        Arc::new(PrefixStore::new(self.client(), prefix))
    }

    fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(REGION)
            .with_bucket_name(BUCKET)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    /// Where Garage keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw(); // a frozen process takes its SIGKILL only once it runs again
        }
        self.stop();
    }
}
