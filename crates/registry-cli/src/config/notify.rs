//! `[[notify]]`: webhook endpoints that hear of pushes, pulls, deletes and mounts (see
//! `registry_events`), as written and validated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use registry_http::registry_events::{Action, EndpointSettings, Format};
use serde::Deserialize;

use super::parse_duration;

/// One `[[notify]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub name: Option<String>,
    pub url: Option<String>,
    /// Sent with every request, such as `Authorization = "Bearer …"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub actions: Option<Vec<String>>,
    pub repositories: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub backoff: Option<String>,
    pub retries: Option<u32>,
    pub max_queued: Option<usize>,
    pub max_age: Option<String>,
    pub format: Option<String>,
    pub ca: Option<PathBuf>,
}

/// Validates every `[[notify]]` entry.
pub(crate) fn validate_notify(raw: &[RawNotify]) -> anyhow::Result<Vec<EndpointSettings>> {
    let mut all: Vec<EndpointSettings> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let name = r
            .name
            .clone()
            .unwrap_or_else(|| format!("endpoint-{}", i + 1));
        let at = format!("[[notify]] {name:?}");
        let Some(url) = &r.url else {
            bail!("{at} needs a url");
        };
        let mut e = EndpointSettings::new(&name, url);
        e.headers = r.headers.clone().into_iter().collect();
        if let Some(actions) = &r.actions {
            e.actions = actions
                .iter()
                .map(|a| a.parse::<Action>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{at}: actions"))?;
        }
        if let Some(repos) = &r.repositories {
            e.repositories = repos
                .iter()
                .map(|p| registry_auth::pattern::RepoGlob::parse(p))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{at}: repositories"))?;
        }
        let duration = |v: &Option<String>, key: &str, default| match v {
            None => Ok(default),
            Some(v) => match parse_duration(v).with_context(|| format!("{at}: {key}"))? {
                d if d.is_zero() => bail!("{at}: {key} must be more than 0"),
                d => Ok(d),
            },
        };
        e.timeout = duration(&r.timeout, "timeout", e.timeout)?;
        e.backoff = duration(&r.backoff, "backoff", e.backoff)?;
        e.max_age = duration(&r.max_age, "max_age", e.max_age)?;
        e.retries = r.retries;
        if let Some(n) = r.max_queued {
            if n == 0 {
                bail!("{at}: max_queued must be at least 1");
            }
            e.max_queued = n;
        }
        e.format = match r.format.as_deref() {
            None | Some("distribution") => Format::Distribution,
            Some("cloudevents") => Format::CloudEvents,
            Some(other) => {
                bail!("{at}: format {other:?} must be \"distribution\" or \"cloudevents\"")
            }
        };
        e.ca = r.ca.clone();
        all.push(e);
    }
    registry_http::registry_events::check_endpoints(&all).context("[[notify]]")?;
    Ok(all)
}
