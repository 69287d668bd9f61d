//! The container tools the end-to-end tests drive (skopeo, podman, docker, containerd's ctr),
//! each with private state under a test's directory so nothing of the host is touched, and the
//! daemons docker and ctr need, started per test on private sockets and killed when dropped.
//! Every tool is required: a missing one fails the test (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::require_tool;

/// Runs a command that must succeed.
pub(crate) fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail; returns what it said (stdout and stderr).
pub(crate) fn run_fails(mut cmd: Command) -> String {
    let out = cmd.output().expect("run tool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{cmd:?} succeeded: {said}");
    said
}

/// `skopeo --insecure-policy ARGS…`
pub(crate) fn skopeo(args: &[&str]) -> Command {
    let mut c = Command::new(require_tool("skopeo"));
    c.arg("--insecure-policy").args(args);
    c
}

/// A tool's stdout as JSON.
pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("tool printed JSON")
}

/// podman with a private vfs storage, so it needs no daemon and touches nothing of the host.
pub(crate) fn podman(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(require_tool("podman"));
    c.env("CONTAINERS_CONF", root.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
        .env("REGISTRY_AUTH_FILE", root.join("auth.json"))
        .env("XDG_RUNTIME_DIR", root.join("xdg"))
        .args(["--root", &root.join("graph").display().to_string()])
        .args(["--runroot", &root.join("run").display().to_string()])
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ])
        .args(args);
    c
}

/// Writes podman's private configuration under `root`.
pub(crate) fn podman_root(root: &Path) {
    std::fs::create_dir_all(root.join("xdg")).unwrap();
    std::fs::write(
        root.join("containers.conf"),
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n[network]\n",
    )
    .unwrap();
    std::fs::write(
        root.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            root.join("run").display(),
            root.join("graph").display()
        ),
    )
    .unwrap();
    std::fs::write(root.join("auth.json"), "{}").unwrap();
}

/// Waits until `socket` exists (a daemon is ready), or panics with the daemon's log.
fn wait_for(socket: &Path, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).unwrap()
}

/// A private `dockerd` (vfs storage, no networking of its own) under `dir`.
pub(crate) struct Docker {
    child: Child,
    socket: PathBuf,
    config: PathBuf,
}

impl Docker {
    pub(crate) fn start(dir: &Path) -> Docker {
        Docker::start_with(dir, &[])
    }

    /// A daemon with extra `dockerd` flags (`--registry-mirror URL`).
    pub(crate) fn start_with(dir: &Path, flags: &[&str]) -> Docker {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let child = Command::new(require_tool("dockerd"))
            .args(["--data-root", &dir.join("root").display().to_string()])
            .args(["--exec-root", &dir.join("exec").display().to_string()])
            .args(["--pidfile", &dir.join("docker.pid").display().to_string()])
            .args(["-H", &format!("unix://{}", socket.display())])
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .args(["--bridge=none"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&dir.join("dockerd.err")))
            .spawn()
            .expect("start dockerd");
        wait_for(&socket, &dir.join("dockerd.err"), "dockerd");
        let config = dir.join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        Docker {
            child,
            socket,
            config,
        }
    }

    /// `docker ARGS…` against this daemon, with a private client configuration.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("docker"));
        c.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config)
            .args(args);
        c
    }

    /// The client configuration (`config.json`, where logins are stored).
    pub(crate) fn config_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.config.join("config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `containerd` under `dir`, for `ctr`.
pub(crate) struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    pub(crate) fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
                dir.join("root").display(),
                dir.join("state").display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new(require_tool("containerd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("containerd.out")))
            .stderr(log_file(&log))
            .spawn()
            .expect("start containerd");
        wait_for(&socket, &log, "containerd");
        Containerd { child, socket }
    }

    /// `ctr --address SOCKET ARGS…`
    pub(crate) fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("ctr"));
        c.arg("--address").arg(&self.socket).args(args);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
