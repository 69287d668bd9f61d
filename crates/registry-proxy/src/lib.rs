//! `registry-proxy`: a pull-through cache. [`Proxy`] is a [`Storage`] that wraps the local
//! storage: repositories under a mirror's prefix (`docker.io/…`, `ghcr.io/…`) are read-only
//! copies of an upstream registry, filled as they are pulled; every other repository is the
//! local storage's own, untouched. A *default mirror* also answers names without a prefix that
//! the instance does not hold itself (Docker's `registry-mirrors` and containerd's mirrors ask
//! for `library/alpine`).
//!
//! What it promises:
//! - A cached repository is stored under the mirror's prefix and the upstream's name
//!   (`docker.io/alpine`, `docker.io/library/alpine` and, through the default mirror,
//!   `library/alpine` are one cache).
//! - A manifest by digest, and a blob, is fetched once and then always answered locally
//!   (content-addressed). A tag is answered locally for `revalidate` after the upstream last
//!   confirmed it, then asked about again with a HEAD; when the upstream cannot be asked, the
//!   cached tag is served (logged and counted as stale).
//! - A blob is streamed to the client while it is stored, one upstream fetch for all
//!   concurrent clients (see `fetch`), and only counts as cached once its digest matched.
//!   Manifests are checked against their digest before they are stored.
//! - Pushes to a mirror's prefix are refused (`DENIED`); deletes there evict.
//! - What was never cached, while the upstream cannot answer, fails with 503 (unreachable,
//!   timed out, rate limited) or 502 (an unusable answer), never hangs: every upstream call
//!   has a timeout.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod fetch;
mod stats;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry_core::{Error, RepoName, Result, Storage, Tag};

pub use stats::{Stats, StatsSnapshot};
pub use upstream::Credentials;

/// Hosts that are Docker Hub, whose one-component names are `library/…`.
const DOCKER_HUB: [&str; 4] = [
    "registry-1.docker.io",
    "docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
];

/// One mirror as configured.
#[derive(Clone, Debug)]
pub struct MirrorSettings {
    /// The repository prefix it answers, without a trailing `/` (`docker.io`).
    pub prefix: String,
    /// The upstream registry's address (`https://registry-1.docker.io`).
    pub url: String,
    /// Credentials for the upstream (Basic, or for its token service).
    pub credentials: Option<Credentials>,
    /// How long a tag is answered from the cache before the upstream is asked again.
    pub revalidate: Duration,
    /// Whether names without any mirror's prefix go to this mirror when the instance does
    /// not hold them itself.
    pub default: bool,
    /// Whether a one-component name means `library/<name>` (Docker Hub's official images).
    pub library: bool,
    /// How long connecting, waiting for an answer, or any read of a body may take.
    pub timeout: Duration,
    /// PEM certificates to trust for the upstream's HTTPS, beside the system's.
    pub roots: Option<Vec<u8>>,
}

impl MirrorSettings {
    /// A mirror of `url` under `prefix` with the defaults: tags revalidated after a minute,
    /// 30 s timeouts, `library/` names when the upstream is Docker Hub.
    pub fn new(prefix: &str, url: &str) -> MirrorSettings {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        MirrorSettings {
            prefix: prefix.trim_end_matches('/').to_owned(),
            url: url.to_owned(),
            credentials: None,
            revalidate: Duration::from_secs(60),
            default: false,
            library: DOCKER_HUB.contains(&host.as_str()),
            timeout: Duration::from_secs(30),
            roots: None,
        }
    }
}

impl MirrorSettings {
    /// Fails on what [`Proxy::new`] would refuse in this mirror alone: a prefix that is not
    /// a repository name, an unusable URL or CA bundle.
    pub fn check(&self) -> Result<()> {
        check_prefix(&self.prefix)?;
        upstream::address(&self.url)?;
        if let Some(pem) = &self.roots {
            upstream::parse_roots(pem)?;
        }
        Ok(())
    }
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || format!("{prefix}/x").parse::<RepoName>().is_err() {
        return Err(Error::Config(format!(
            "mirror prefix {prefix:?} is not a repository name"
        )));
    }
    Ok(())
}

/// Settings of the cache as a whole.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The largest manifest fetched.
    pub manifest_max_bytes: usize,
    /// Where blobs being fetched are spooled (unnamed files); the system's temporary
    /// directory when `None`.
    pub spool_dir: Option<PathBuf>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            manifest_max_bytes: 4 * 1024 * 1024,
            spool_dir: None,
        }
    }
}

/// What `/metrics` and `registry check` show of a mirror.
#[derive(Clone, Debug)]
pub struct MirrorStatus {
    /// Its prefix.
    pub prefix: String,
    /// The upstream's host (and port).
    pub upstream: String,
    /// Whether it is the default mirror.
    pub default: bool,
    /// Its counters.
    pub stats: StatsSnapshot,
}

/// A mirror, ready.
struct Mirror {
    prefix: String,
    revalidate: Duration,
    library: bool,
    upstream: Arc<upstream::Upstream>,
    stats: Arc<Stats>,
}

/// How a request's repository is served by a mirror.
struct Route<'a> {
    mirror: &'a Mirror,
    /// The name at the upstream.
    upstream: String,
    /// The name of the cache in the local storage.
    local: RepoName,
    /// Through the default mirror: the instance's own repository of the name comes first,
    /// and writes go to it.
    own: bool,
}

/// The pull-through cache over a local storage; see the crate documentation.
pub struct Proxy {
    inner: Arc<dyn Storage>,
    mirrors: Vec<Mirror>,
    default: Option<usize>,
    fetches: Arc<fetch::Fetches>,
    options: ProxyOptions,
    /// When each cached tag was last confirmed by its upstream (on this node).
    confirmed: Mutex<HashMap<(RepoName, Tag), Instant>>,
    /// When this node last recorded each cache repository as used.
    used: Mutex<HashMap<RepoName, Instant>>,
}

/// A cache repository's use is recorded in the storage at most this often per node (what
/// garbage collection's `mirror_max_unused` measures is exact to this).
const USE_RECORDED_EVERY: Duration = Duration::from_secs(3600);

/// The most tag confirmations remembered.
const MAX_CONFIRMED: usize = 100_000;

impl Proxy {
    /// The cache of `mirrors` over `inner`. Fails on an unusable setting: a prefix that is
    /// not a repository name, two mirrors whose prefixes overlap, two default mirrors, an
    /// unusable URL.
    pub fn new(
        inner: Arc<dyn Storage>,
        mirrors: Vec<MirrorSettings>,
        options: ProxyOptions,
    ) -> Result<Proxy> {
        let mut ready: Vec<Mirror> = Vec::new();
        let mut default = None;
        for m in mirrors {
            check_prefix(&m.prefix)?;
            if let Some(other) = ready.iter().find(|r| nested(&r.prefix, &m.prefix)) {
                return Err(Error::Config(format!(
                    "mirror prefixes {:?} and {:?} overlap",
                    other.prefix, m.prefix
                )));
            }
            if m.default {
                if default.is_some() {
                    return Err(Error::Config("only one mirror can be the default".into()));
                }
                default = Some(ready.len());
            }
            let upstream =
                upstream::Upstream::new(&m.url, m.credentials, m.timeout, m.roots.as_deref())?;
            ready.push(Mirror {
                prefix: m.prefix,
                revalidate: m.revalidate,
                library: m.library,
                upstream: Arc::new(upstream),
                stats: Arc::default(),
            });
        }
        Ok(Proxy {
            inner,
            mirrors: ready,
            default,
            fetches: Arc::default(),
            options,
            confirmed: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
        })
    }

    /// The mirrors and their counters.
    pub fn mirrors(&self) -> Vec<MirrorStatus> {
        self.mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| MirrorStatus {
                prefix: m.prefix.clone(),
                upstream: m.upstream.host.clone(),
                default: self.default == Some(i),
                stats: m.stats.snapshot(),
            })
            .collect()
    }

    /// The mirror that serves `repo`, if any.
    fn route(&self, repo: &RepoName) -> Result<Option<Route<'_>>> {
        let name = repo.as_str();
        for m in &self.mirrors {
            if let Some(rest) = name
                .strip_prefix(m.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                return m.route(rest, false).map(Some);
            }
        }
        match self.default {
            // A name too long to be cached under the prefix is not the mirror's.
            Some(i) => Ok(self.mirrors[i].route(name, true).ok()),
            None => Ok(None),
        }
    }

    /// Whether the upstream confirmed `tag` of `local` within its mirror's interval.
    fn fresh(&self, route: &Route<'_>, tag: &Tag) -> bool {
        let confirmed = self.confirmed.lock().expect("not poisoned");
        confirmed
            .get(&(route.local.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < route.mirror.revalidate)
    }

    fn confirm(&self, route: &Route<'_>, tag: &Tag) {
        let mut confirmed = self.confirmed.lock().expect("not poisoned");
        if confirmed.len() >= MAX_CONFIRMED {
            confirmed.clear();
        }
        confirmed.insert((route.local.clone(), tag.clone()), Instant::now());
    }

    /// Records (in the background, at most hourly) that a client used the cache of `route`.
    fn used(&self, route: &Route<'_>) {
        {
            let mut used = self.used.lock().expect("not poisoned");
            if used
                .get(&route.local)
                .is_some_and(|at| at.elapsed() < USE_RECORDED_EVERY)
            {
                return;
            }
            if used.len() >= MAX_CONFIRMED {
                used.clear();
            }
            used.insert(route.local.clone(), Instant::now());
        }
        let (inner, local) = (self.inner.clone(), route.local.clone());
        tokio::spawn(async move {
            if let Err(e) = inner.cache_used(&local).await {
                tracing::warn!(repo = %local, error = %e, "recording a cache's use failed");
            }
        });
    }

    fn forget(&self, route: &Route<'_>, tag: &Tag) {
        let mut confirmed = self.confirmed.lock().expect("not poisoned");
        confirmed.remove(&(route.local.clone(), tag.clone()));
    }
}

impl Mirror {
    fn route(&self, rest: &str, own: bool) -> Result<Route<'_>> {
        let upstream = if self.library && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_owned()
        };
        let local = format!("{}/{upstream}", self.prefix).parse()?;
        Ok(Route {
            mirror: self,
            upstream,
            local,
            own,
        })
    }
}

/// Whether one prefix is the other or contains it as leading components.
fn nested(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(mirrors: Vec<MirrorSettings>) -> Result<Proxy> {
        let store = Arc::new(object_store::memory::InMemory::new());
        let inner =
            registry_core::ObjectRegistry::new(store, registry_core::StoreOptions::default());
        Proxy::new(Arc::new(inner), mirrors, ProxyOptions::default())
    }

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn names_route_to_their_mirror() {
        let mut hub = MirrorSettings::new("docker.io", "https://registry-1.docker.io");
        hub.default = true;
        let ghcr = MirrorSettings::new("ghcr.io", "https://ghcr.io");
        assert!(hub.library && !ghcr.library);
        let p = proxy(vec![hub, ghcr]).unwrap();
        let cases = [
            (
                "docker.io/alpine",
                "library/alpine",
                "docker.io/library/alpine",
                false,
            ),
            (
                "docker.io/library/alpine",
                "library/alpine",
                "docker.io/library/alpine",
                false,
            ),
            (
                "library/alpine",
                "library/alpine",
                "docker.io/library/alpine",
                true,
            ),
            ("alpine", "library/alpine", "docker.io/library/alpine", true),
            ("ghcr.io/o/app", "o/app", "ghcr.io/o/app", false),
            ("ghcr.io/app", "app", "ghcr.io/app", false),
            ("team/app", "team/app", "docker.io/team/app", true),
        ];
        for (asked, upstream, local, own) in cases {
            let r = p.route(&name(asked)).unwrap().unwrap();
            assert_eq!(
                (r.upstream.as_str(), r.local.as_str(), r.own),
                (upstream, local, own),
                "{asked}"
            );
        }
        let p = proxy(vec![MirrorSettings::new("ghcr.io", "https://ghcr.io")]).unwrap();
        assert!(p.route(&name("team/app")).unwrap().is_none());
        assert!(p.route(&name("ghcr.iox/app")).unwrap().is_none());
    }

    #[test]
    fn unusable_settings_are_refused() {
        let m = |prefix: &str| MirrorSettings::new(prefix, "https://r.example.com");
        let e = |mirrors| proxy(mirrors).err().unwrap().to_string();
        assert!(e(vec![m("Docker.io")]).contains("not a repository name"));
        assert!(e(vec![m("")]).contains("not a repository name"));
        assert!(e(vec![m("a"), m("a/b")]).contains("overlap"));
        assert!(e(vec![m("a/b"), m("a")]).contains("overlap"));
        let mut d1 = m("a");
        d1.default = true;
        let mut d2 = m("b");
        d2.default = true;
        assert!(e(vec![d1, d2]).contains("default"));
        assert!(proxy(vec![m("a"), m("ab")]).is_ok());
        let bad = MirrorSettings::new("a", "ftp://r.example.com");
        assert!(e(vec![bad]).contains("http"));
    }
}
