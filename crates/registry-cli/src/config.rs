//! The configuration file and its validation: raw TOML settings are merged with command-line
//! flags and turned into typed [`Settings`] before anything starts.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:5000"
//!
//! [storage]
//! url = "./data"          # a directory, file:///abs/path, or memory://
//!
//! [api]
//! delete = true           # allow manifest, tag and blob DELETE
//! manifest_max_bytes = 4194304
//!
//! [uploads]
//! max_age = "24h"         # abandoned upload sessions are purged after this idle time
//!
//! [metrics]
//! enabled = true          # Prometheus metrics at GET /metrics
//! listen = "127.0.0.1:9090"  # optional: serve /metrics there instead of on the API listener
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The file as written; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub uploads: RawUploads,
    #[serde(default)]
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub delete: Option<bool>,
    pub manifest_max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUploads {
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSettings {
    /// Not recorded, not served.
    Off,
    /// On the API listener.
    OnApi,
    /// On a listener of its own.
    Separate(SocketAddr),
}

/// Where blobs and manifests live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on the local filesystem.
    Filesystem(PathBuf),
    /// Process memory (tests, benchmarks); lost on exit.
    Memory,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub storage: StorageLocation,
    pub delete_enabled: bool,
    pub manifest_max_bytes: usize,
    pub upload_max_age: Duration,
    pub metrics: MetricsSettings,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<RawConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Validates into settings, applying defaults.
    pub fn validate(self) -> anyhow::Result<Settings> {
        let listen = self.server.listen.as_deref().unwrap_or("127.0.0.1:5000");
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address {listen:?} is not IP:PORT"))?;
        let storage = parse_storage(self.storage.url.as_deref().unwrap_or("./data"))?;
        let manifest_max_bytes = self.api.manifest_max_bytes.unwrap_or(4 * 1024 * 1024);
        if manifest_max_bytes < 4 * 1024 * 1024 {
            bail!(
                "api.manifest_max_bytes must be at least 4194304 (4 MiB), as the OCI spec requires"
            );
        }
        let upload_max_age = parse_duration(self.uploads.max_age.as_deref().unwrap_or("24h"))
            .context("uploads.max_age")?;
        let metrics = match (self.metrics.enabled.unwrap_or(true), self.metrics.listen) {
            (false, _) => MetricsSettings::Off,
            (true, None) => MetricsSettings::OnApi,
            (true, Some(addr)) => MetricsSettings::Separate(
                addr.parse()
                    .with_context(|| format!("metrics.listen {addr:?} is not IP:PORT"))?,
            ),
        };
        Ok(Settings {
            metrics,
            listen,
            storage,
            delete_enabled: self.api.delete.unwrap_or(true),
            manifest_max_bytes,
            upload_max_age,
        })
    }
}

/// Parses a storage location: a path, `file://` URL or `memory://`.
pub fn parse_storage(s: &str) -> anyhow::Result<StorageLocation> {
    if s == "memory://" {
        return Ok(StorageLocation::Memory);
    }
    if let Some(path) = s.strip_prefix("file://") {
        if !path.starts_with('/') {
            bail!("storage URL {s:?}: file:// URLs need an absolute path (file:///srv/registry)");
        }
        return Ok(StorageLocation::Filesystem(PathBuf::from(path)));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        bail!("storage URL {s:?}: unsupported scheme {scheme:?} (use a directory, file:// or memory://)");
    }
    if s.is_empty() {
        bail!("storage location is empty");
    }
    Ok(StorageLocation::Filesystem(PathBuf::from(s)))
}

/// Parses `90s`, `30m`, `24h`, `7d` or a plain number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{s:?} has an unknown unit (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = RawConfig::default().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.storage, StorageLocation::Filesystem("./data".into()));
        assert!(s.delete_enabled);
        assert_eq!(s.upload_max_age, Duration::from_secs(86400));
        assert_eq!(s.metrics, MetricsSettings::OnApi);
    }

    #[test]
    fn file_format() {
        let raw: RawConfig = toml::from_str(
            "[server]\nlisten = \"[::1]:80\"\n[storage]\nurl = \"file:///srv/r\"\n[api]\ndelete = false\n[uploads]\nmax_age = \"30m\"\n",
        )
        .unwrap();
        let s = raw.validate().unwrap();
        assert_eq!(s.listen.port(), 80);
        assert_eq!(s.storage, StorageLocation::Filesystem("/srv/r".into()));
        assert!(!s.delete_enabled);
        assert_eq!(s.upload_max_age, Duration::from_secs(1800));
        assert!(toml::from_str::<RawConfig>("[server]\nlisten2 = 1\n").is_err());
        let raw: RawConfig = toml::from_str("[metrics]\nlisten = \"127.0.0.1:9\"\n").unwrap();
        assert_eq!(
            raw.validate().unwrap().metrics,
            MetricsSettings::Separate("127.0.0.1:9".parse().unwrap())
        );
        let raw: RawConfig = toml::from_str("[metrics]\nenabled = false\n").unwrap();
        assert_eq!(raw.validate().unwrap().metrics, MetricsSettings::Off);
    }

    #[test]
    fn bad_values() {
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        assert!(parse_storage("ftp://x").is_err());
        assert!(parse_storage("file://relative").is_err());
        assert_eq!(parse_storage("memory://").unwrap(), StorageLocation::Memory);
        let mut raw = RawConfig::default();
        raw.server.listen = Some("nonsense".into());
        assert!(raw.validate().is_err());
    }
}
