//! Applying a changed configuration to a running `registry serve`: which changes a reload
//! (SIGHUP) cannot apply, and sending it to the process named in the config home.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::{MetricsSettings, Settings};

/// Why a change from `before` to `after` needs a restart, if it does. A reload binds new
/// addresses before it lets old ones go, so it cannot move a listener to an address that
/// overlaps the one it leaves (the same port on the wildcard address and a specific one).
pub(crate) fn restart_needed(before: &Settings, after: &Settings) -> Option<String> {
    let metrics = |s: &Settings| match s.metrics {
        MetricsSettings::Separate(a) => Some(a),
        _ => None,
    };
    let pairs = [
        ("listen", Some(before.listen), Some(after.listen)),
        ("tls.plain_listen", before.plain_listen, after.plain_listen),
        ("metrics.listen", metrics(before), metrics(after)),
    ];
    pairs
        .into_iter()
        .find_map(|(key, old, new)| match (old, new) {
            (Some(old), Some(new)) if overlap(old, new) => Some(format!(
                "{key} moves from {old} to {new}, which overlaps it"
            )),
            _ => None,
        })
}

/// Whether `new` cannot be bound while `old` is: another address on the same port where one
/// of them is the wildcard address.
fn overlap(old: SocketAddr, new: SocketAddr) -> bool {
    old != new
        && old.port() == new.port()
        && (old.ip().is_unspecified() || new.ip().is_unspecified())
}

/// Sends SIGHUP to the `registry serve` whose process id is in the config home; its id.
pub(crate) fn reload(home: &Path) -> anyhow::Result<i32> {
    let file = home.join(crate::commands::serve::PID_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no `registry serve` is running for {} (no {}); start it, or run `systemctl reload registry` where it runs as a service", home.display(), file.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", file.display()))?;
    // A stale file may name a process that is something else now: SIGHUP would end it.
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.contains(&&b"serve"[..]) {
            bail!(
                "process {pid} (from {}) is not `registry serve`: the file is stale; is the server running?",
                file.display()
            );
        }
    }
    hang_up(pid).with_context(|| {
        format!(
            "cannot signal process {pid} (from {}): is `registry serve` still running, as this user?",
            file.display()
        )
    })?;
    Ok(pid)
}

#[cfg(unix)]
fn hang_up(pid: i32) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if pid <= 1 {
        bail!("{pid} is not the id of a `registry serve`");
    }
    kill(Pid::from_raw(pid), Signal::SIGHUP)?;
    Ok(())
}

#[cfg(not(unix))]
fn hang_up(_pid: i32) -> anyhow::Result<()> {
    bail!("reloading a running server needs SIGHUP, which this system does not have")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overlapping_moves_need_a_restart() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(a("0.0.0.0:5000"), a("127.0.0.1:5000")));
        assert!(overlap(a("127.0.0.1:5000"), a("[::]:5000")));
        assert!(!overlap(a("0.0.0.0:5000"), a("0.0.0.0:5001")));
        assert!(!overlap(a("127.0.0.1:5000"), a("127.0.0.2:5000")));
        assert!(!overlap(a("0.0.0.0:5000"), a("0.0.0.0:5000")));
    }
}
