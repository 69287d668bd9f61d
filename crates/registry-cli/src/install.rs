//! `registry install` / `uninstall`: a systemd service that runs `registry serve` for every
//! instance, as a dedicated system user, with systemd's sandboxing: it may write only its
//! config home and the instances' storage directories, and bind ports below 1024 through one
//! capability. `--dry-run` prints what would be done.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::config::StorageLocation;
use crate::instance::{write_file, Instance};

/// The service (and system user) name.
pub(crate) const SERVICE: &str = "registry";

/// What `install` needs to know.
pub(crate) struct Plan {
    pub binary: PathBuf,
    pub home: PathBuf,
    pub user: String,
    pub writable: Vec<PathBuf>,
}

impl Plan {
    /// The plan for the instances under `home`.
    pub(crate) fn new(home: &Path, user: &str) -> anyhow::Result<Plan> {
        let instances = Instance::all(home)?;
        if instances.is_empty() {
            bail!(
                "no instances in {} to serve (create one with `registry config`)",
                home.display()
            );
        }
        let home = std::path::absolute(home)?;
        let mut writable = vec![home.clone()];
        for i in &instances {
            let settings = i.settings()?;
            let mut dirs = Vec::new();
            if let StorageLocation::Filesystem(dir) = &settings.storage {
                dirs.push(dir.clone());
            }
            // Certificates from ACME are written at run time too.
            if let Some(registry_http::AcmeState::Directory(dir)) =
                settings.acme.as_ref().map(|a| &a.state)
            {
                dirs.push(dir.clone());
            }
            for dir in dirs {
                let dir = std::path::absolute(dir)?;
                if !dir.starts_with(&home) && !writable.contains(&dir) {
                    writable.push(dir);
                }
            }
        }
        let binary = std::env::current_exe().context("cannot find this program's path")?;
        Ok(Plan {
            binary,
            home,
            user: user.to_owned(),
            writable,
        })
    }

    /// The systemd unit.
    pub(crate) fn unit(&self) -> String {
        let quote = |p: &Path| {
            let s = p.display().to_string();
            if s.contains([' ', '"', '\\']) {
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                s
            }
        };
        let writable: Vec<String> = self.writable.iter().map(|p| quote(p)).collect();
        format!(
            "# Written by `registry install`; remove with `registry uninstall`.
[Unit]
Description=OCI container image registry (every instance in {home})
Documentation=https://github.com/opencontainers/distribution-spec
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={binary} --config-dir {home} serve
# Re-reads every instance's configuration; in-flight requests finish as they began.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
TimeoutStopSec=60s
Environment=RUST_LOG=info
LimitNOFILE=65536
# Ports below 1024 without root.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
# Read-only system; writable: the config home and the storage directories.
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome=read-only
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
MemoryDenyWriteExecute=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077

[Install]
WantedBy=multi-user.target
",
            home = quote(&self.home),
            user = self.user,
            binary = quote(&self.binary),
            writable = writable.join(" "),
        )
    }

    /// The commands that create the user and hand it the files.
    pub(crate) fn commands(&self, unit_dir: &Path) -> Vec<Vec<String>> {
        let mut cmds = vec![vec![
            "useradd".into(),
            "--system".into(),
            "--no-create-home".into(),
            "--shell".into(),
            "/usr/sbin/nologin".into(),
            self.user.clone(),
        ]];
        for dir in &self.writable {
            cmds.push(vec![
                "chown".into(),
                "-R".into(),
                format!("{0}:{0}", self.user),
                dir.display().to_string(),
            ]);
        }
        if unit_dir == Path::new(SYSTEMD_DIR) {
            cmds.push(vec!["systemctl".into(), "daemon-reload".into()]);
            cmds.push(vec![
                "systemctl".into(),
                "enable".into(),
                "--now".into(),
                format!("{SERVICE}.service"),
            ]);
        }
        cmds
    }
}

/// Where units are installed by default.
pub(crate) const SYSTEMD_DIR: &str = "/etc/systemd/system";

fn unit_path(unit_dir: &Path) -> PathBuf {
    unit_dir.join(format!("{SERVICE}.service"))
}

fn user_exists(user: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.split(':').next() == Some(user)))
        .unwrap_or(false)
}

fn run(cmd: &[String]) -> anyhow::Result<()> {
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .status()
        .with_context(|| format!("cannot run {}", cmd[0]))?;
    if !status.success() {
        bail!("`{}` failed ({status})", cmd.join(" "));
    }
    Ok(())
}

/// Installs (or, with `dry_run`, describes) the service. `unit_dir` other than systemd's
/// writes only the unit file there (for packaging and tests).
pub(crate) fn install(
    home: &Path,
    user: &str,
    unit_dir: &Path,
    dry_run: bool,
) -> anyhow::Result<String> {
    let plan = Plan::new(home, user)?;
    let unit = plan.unit();
    let path = unit_path(unit_dir);
    let system = unit_dir == Path::new(SYSTEMD_DIR);
    let mut cmds = plan.commands(unit_dir);
    if !system || user_exists(user) {
        cmds.remove(0);
    }
    if !system {
        cmds.retain(|c| c[0] != "chown");
    }
    if dry_run {
        let mut out = format!("# would write {}:\n{unit}", path.display());
        for c in &cmds {
            out += &format!("# would run: {}\n", c.join(" "));
        }
        return Ok(out);
    }
    write_file(&path, unit.as_bytes())?;
    for c in &cmds {
        run(c)?;
    }
    Ok(format!(
        "installed {}{}\n",
        path.display(),
        if system {
            "; the service is enabled and started"
        } else {
            ""
        }
    ))
}

/// Removes the service; refuses while a protected instance exists, unless `force`.
pub(crate) fn uninstall(
    home: &Path,
    unit_dir: &Path,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<String> {
    let protected: Vec<String> = Instance::all(home)?
        .into_iter()
        .filter(|i| i.settings().map(|s| s.protected).unwrap_or(true))
        .map(|i| i.name)
        .collect();
    if !protected.is_empty() && !force {
        bail!(
            "instance(s) {} are protected: the service serves them; use --force to uninstall anyway",
            protected.join(", ")
        );
    }
    let path = unit_path(unit_dir);
    if !path.exists() {
        bail!("{} is not installed", path.display());
    }
    let system = unit_dir == Path::new(SYSTEMD_DIR);
    let mut cmds: Vec<Vec<String>> = Vec::new();
    if system {
        cmds.push(vec![
            "systemctl".into(),
            "disable".into(),
            "--now".into(),
            format!("{SERVICE}.service"),
        ]);
    }
    if dry_run {
        let mut out = String::new();
        for c in &cmds {
            out += &format!("# would run: {}\n", c.join(" "));
        }
        out += &format!("# would remove {}\n", path.display());
        return Ok(out);
    }
    for c in &cmds {
        run(c)?;
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if system {
        run(&["systemctl".into(), "daemon-reload".into()])?;
    }
    Ok(format!(
        "removed {} (instances, users and stored images are kept)\n",
        path.display()
    ))
}
