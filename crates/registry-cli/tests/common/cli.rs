//! Running `registry` commands against a config home, and `registry serve` on its instances.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn registry(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    registry_env(home, args, stdin, &[])
}

/// `registry --config-dir HOME ARGS…` with extra environment, stdin given; its output.
pub(crate) fn registry_env(
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_registry"))
        .arg("--config-dir")
        .arg(home)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn ok(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = registry(home, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "registry {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with one line on stderr; returns it.
pub(crate) fn fails(home: &Path, args: &[&str]) -> String {
    let out = registry(home, args, None);
    assert!(!out.status.success(), "registry {args:?} succeeded");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// `registry instance create NAME --hostname HOST --listen ADDR`
pub(crate) fn create(home: &Path, name: &str, host: &str, addr: &str) {
    let args = [
        "instance",
        "create",
        name,
        "--hostname",
        host,
        "--listen",
        addr,
    ];
    let out = ok(home, &args, None);
    assert!(
        out.contains(&format!("created instance \"{name}\"")),
        "{out}"
    );
}

pub(crate) struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Serving {
    /// Sends `signal` (`HUP`, `TERM`, …) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub(crate) fn serve(home: &Path, addr: &str) -> Serving {
    serve_with(home, addr, None)
}

/// `registry serve` on the instances of `home`, its log (`RUST_LOG=info`) in `log`.
pub(crate) fn serve_logged(home: &Path, addr: &str, log: &Path) -> Serving {
    serve_with(home, addr, Some(log))
}

fn serve_with(home: &Path, addr: &str, log: Option<&Path>) -> Serving {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registry"));
    command
        .arg("--config-dir")
        .arg(home)
        .arg("serve")
        .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
        .stdin(Stdio::null());
    if let Some(log) = log {
        command.stderr(std::fs::File::create(log).unwrap());
    }
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Serving(child)
}

/// Waits until `log` holds `text` `times` times (20 s at most); the log.
pub(crate) fn wait_for_log(log: &Path, text: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        if logged.matches(text).count() >= times {
            return logged;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged {times} times:\n{logged}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
