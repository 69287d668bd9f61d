//! `[[proxy]]`: mirrors of upstream registries served beside the instance's own repositories
//! (a pull-through cache, see `registry_proxy`), validated into the library's settings.

use std::path::PathBuf;

use anyhow::{bail, Context};
use registry_http::registry_proxy::{Credentials, MirrorSettings};
use serde::Deserialize;

use super::parse_duration;

/// One `[[proxy]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub prefix: Option<String>,
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub revalidate: Option<String>,
    pub default: Option<bool>,
    pub library: Option<bool>,
    pub timeout: Option<String>,
    pub ca: Option<PathBuf>,
}

impl RawProxy {
    /// Makes the entry's paths relative to `dir`.
    pub(crate) fn resolve_paths(&mut self, dir: &std::path::Path) {
        for p in [&mut self.password_file, &mut self.ca] {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = dir.join(&*p);
            }
        }
    }
}

/// Validates every `[[proxy]]` entry.
pub(crate) fn validate_mirrors(raw: &[RawProxy]) -> anyhow::Result<Vec<MirrorSettings>> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| validate(r).with_context(|| format!("[[proxy]] entry {}", i + 1)))
        .collect()
}

fn validate(raw: &RawProxy) -> anyhow::Result<MirrorSettings> {
    let prefix = raw
        .prefix
        .as_deref()
        .map(|p| p.trim().trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .context("prefix is required (the repositories it answers: \"docker.io\")")?;
    let url = raw
        .url
        .as_deref()
        .context("url is required (the upstream: \"https://registry-1.docker.io\")")?;
    let mut m = MirrorSettings::new(prefix, url);
    let password = match (&raw.password, &raw.password_file) {
        (Some(_), Some(_)) => bail!("set password or password_file, not both"),
        (Some(p), None) => Some(p.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read password_file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    m.credentials = match (&raw.username, password) {
        (Some(u), Some(p)) if !u.is_empty() => Some(Credentials {
            username: u.clone(),
            password: p,
        }),
        (None, None) => None,
        _ => bail!("upstream credentials need both username and password (or password_file)"),
    };
    if let Some(r) = &raw.revalidate {
        m.revalidate = parse_duration(r).context("revalidate")?;
    }
    if let Some(t) = &raw.timeout {
        m.timeout = parse_duration(t).context("timeout")?;
        if m.timeout.is_zero() {
            bail!("timeout must be more than 0s");
        }
    }
    m.default = raw.default.unwrap_or(false);
    if let Some(l) = raw.library {
        m.library = l;
    }
    if let Some(ca) = &raw.ca {
        m.roots =
            Some(std::fs::read(ca).with_context(|| format!("cannot read ca {}", ca.display()))?);
    }
    m.check()?;
    Ok(m)
}

/// The fields of a `[[proxy]]` entry that `reconfigure mirror.PREFIX.FIELD=VALUE` sets.
pub(crate) const MIRROR_FIELDS: [&str; 8] = [
    "url",
    "default",
    "username",
    "password_file",
    "revalidate",
    "timeout",
    "library",
    "ca",
];

/// The `[[proxy]]` entry for `prefix` in an instance's document, created when `create`.
pub(crate) fn mirror_entry<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    prefix: &str,
    create: bool,
) -> Option<&'d mut toml_edit::Table> {
    crate::instance::array_entry(doc, "proxy", "prefix", prefix.trim_end_matches('/'), create)
}

/// Removes the `[[proxy]]` entry for `prefix`; whether there was one.
pub(crate) fn remove_mirror(doc: &mut toml_edit::DocumentMut, prefix: &str) -> bool {
    crate::instance::remove_array_entry(doc, "proxy", "prefix", prefix.trim_end_matches('/'))
}
