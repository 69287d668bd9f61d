//! The configuration file and its validation: raw TOML settings are merged with command-line
//! flags and turned into typed [`Settings`] before anything starts.
//!
//! ```toml
//! [instance]              # in an instance's registry.toml (see `instance`)
//! hostname = "registry.example.com"   # told apart from other instances on one address by it
//! protected = false       # `instance remove` and `uninstall` refuse it without --force
//!
//! [server]
//! listen = "127.0.0.1:5000"
//! handshake_timeout = "10s"   # TLS handshake, and a new connection's first request
//! idle_timeout = "60s"        # a connection with no request in flight is closed
//! body_timeout = "60s"        # a stalled request body gets 408; an unread response is dropped
//! shutdown_timeout = "30s"    # SIGTERM: in-flight requests get this long
//! max_connections = 10000     # open connections on the address
//! max_connections_per_address = 512   # per client address (IPv6 /64); trusted proxies exempt
//! drain_limit = "32MiB"       # an unread request body after an early answer is read this far
//! drain_timeout = "30s"       # … for at most this long
//!
//! [storage]
//! url = "./data"          # a directory, file:///abs/path, s3://bucket/prefix, or memory://
//! cache_ttl = "1s"        # tags, manifests, blob links answered from memory this long (≤ 4s;
//!                         # what another node changes shows within it; "0s": no cache)
//!
//! [storage.s3]            # with s3:// URLs; unset values come from AWS_* variables
//! endpoint = "https://s3.example.com"
//! region = "auto"
//! access_key_id = "…"
//! secret_access_key = "…"
//! allow_http = false      # plain HTTP to a non-loopback endpoint
//! virtual_hosted = false  # bucket.endpoint addressing instead of endpoint/bucket
//! redirect = false        # blob GET answers 307 to a presigned S3 URL (20 minutes)
//! metadata_timeout = "5s" # small-object operations (heads, tags, manifests) give up after this
//! stall_timeout = "60s"   # a blob transfer that makes no progress gives up after this
//!
//! [api]
//! delete = true           # allow manifest, tag and blob DELETE
//! manifest_max_bytes = 4194304
//!
//! [uploads]
//! max_age = "24h"         # abandoned upload sessions are purged after this idle time
//!
//! [gc]                    # online garbage collection inside `registry serve`
//! interval = "24h"        # unset: only when `registry gc` is run
//! grace = "1h"            # what was written more recently is kept
//! delete_untagged = false # manifests no tag reaches are garbage too
//! mirror_max_unused = "30d" # [[proxy]] caches no one pulled from for this long are evicted
//!                         # (your own repositories never are) [default: kept]
//! mirror_max_bytes = "100GiB" # above this, the least recently pulled caches are evicted
//!
//! [metrics]
//! enabled = true          # Prometheus metrics at GET /metrics
//! listen = "127.0.0.1:9090"  # optional: serve /metrics there instead of on the API listener
//!
//! [tls]                   # with cert and key, server.listen speaks HTTPS
//! cert = "/etc/registry/cert.pem"
//! key = "/etc/registry/key.pem"
//! client_ca = "/etc/registry/clients-ca.pem"    # verify client certificates against it
//! client_auth = "required"                      # or "optional"
//! client_names = ["*.clients.registry.example.com"]
//! plain_listen = "127.0.0.1:5080"               # optional: plain HTTP as well
//!
//! [tls.acme]              # instead of cert and key: certificates from Let's Encrypt (ACME)
//! email = "ops@example.com"   # the account's contact (expiry warnings)
//! directory = "https://acme-v02.api.letsencrypt.org/directory"  # or "letsencrypt-staging", any RFC 8555 URL
//! names = ["registry.example.com"]   # [default: instance.hostname]
//! challenge = "tls-alpn-01"   # answered on server.listen (port 443), or "http-01" on tls.plain_listen (port 80)
//! eab_kid = "…"               # External Account Binding (ZeroSSL, some step-ca setups)
//! eab_hmac_key = "…"          # … its base64url HMAC key
//! directory_ca = "/etc/registry/acme-root.pem"   # trust the directory's HTTPS (a private CA)
//! state = "acme"              # the account and certificates (0600) [default: <instance>/acme]
//! shared = false              # keep them in the storage for nodes sharing it [default: true on s3://]
//! retry = "1m"                # first pause after a failure; doubles up to 6h
//!
//! [auth]
//! mode = "basic"          # or "token": Bearer tokens (OAuth2, the Docker token protocol)
//! htpasswd = "/etc/registry/htpasswd"   # bcrypt, $apr1$, {SHA}, $5$, $6$
//! realm = "Registry"
//! public_read = false     # anonymous pull
//! cache = "2m"            # how long a verified password is remembered
//! brake = { attempts = 10, address_attempts = 100, window = "1m", pause = "5m" }
//!
//! [auth.token]            # with mode = "token"; users log in at the token service with the
//!                         # htpasswd users' passwords or scoped tokens (`registry token create`)
//! lifetime = "5m"         # of an access token
//! keys = "tokens"         # signing-key.pem (0600) and previous-key.pem: `registry token init`
//! service = "registry.example.com"   # tokens' audience [default: instance.hostname]
//! realm = "https://registry.example.com/auth/token"  # [default: from hostname and listen]
//! issuer = "registry.example.com"    # tokens' iss [default: the service]
//!
//! [auth.oidc]             # people sign in at https://<host>/auth/login (needs mode = "token")
//! issuer = "https://accounts.example.com"         # its discovery document is used
//! client_id = "registry"                          # redirect URI: https://<host>/auth/callback
//! client_secret_file = "oidc-client-secret"       # 0600 (or client_secret = "…")
//! allowed_emails = ["ann@example.com"]            # who may sign in (none listed: everyone the
//! allowed_domains = ["example.com"]               # provider vouches for); verified addresses
//! allowed_groups = ["registry-users"]             # only, or membership of a group
//! groups_claim = "groups"
//! scopes = ["openid", "email", "profile", "groups"]  # default: without groups unless used
//! token_lifetime = "90d"  # of the personal access tokens made at sign-in
//!
//! # An external token server instead (docker_auth, GitLab, Harbor…), as Distribution's
//! # auth.token: realm, service and issuer are then required, and one of
//! rootcertbundle = "/etc/registry/token-ca.pem"   # roots of the x5c chains in its tokens
//! jwks = "https://auth.example.com/jwks.json"      # or its keys (URL or file)
//!
//! [network]
//! allow = ["10.0.0.0/8", "2001:db8::/32"]   # default: everything
//! trusted_proxies = ["127.0.0.1"]           # Forwarded / X-Forwarded-For believed from these
//!
//! [[access]]              # with rules, what no rule grants is denied
//! users = ["ann"]         # htpasswd users, and people (by verified email) who signed in
//! groups = ["devs"]       # people in these groups (OpenID Connect)
//! certificates = ["*.ci.example.com"]
//! repositories = ["team-a/**"]
//! actions = ["pull", "push", "delete"]
//!
//! [[proxy]]               # a pull-through cache of an upstream registry, read-only
//! prefix = "docker.io"    # pulls of docker.io/… are answered from the cache (docker.io/alpine
//!                         # is docker.io/library/alpine); pushes under it are refused
//! url = "https://registry-1.docker.io"
//! default = true          # also answers names without any prefix the instance does not hold
//!                         # (library/alpine, as Docker's registry-mirrors ask) [default: false]
//! username = "ann"        # upstream credentials: Basic, or for its token service
//! password_file = "docker-hub-token"   # 0600 (or password = "…")
//! revalidate = "1m"       # a cached tag is checked upstream (HEAD) after this; by digest: never
//! timeout = "30s"         # connecting, an answer, any read of a body
//! library = true          # one-component names are library/… [default: true for Docker Hub]
//! ca = "/etc/registry/upstream-ca.pem"   # trust this CA for the upstream's HTTPS as well
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use registry_auth::tls::{ClientAuth, TlsFiles};
use registry_auth::GuardSettings;
pub(crate) use registry_core::open::{S3Location, StorageLocation};

use registry_http::registry_acme::{self, AcmeSettings, ChallengeKind, ExternalAccount};
use registry_http::server::ConnectionSettings;
use registry_http::{AcmeState, AcmeTls};
use serde::Deserialize;

mod auth;
pub(crate) mod mirrors;
mod notify;

pub(crate) use mirrors::RawProxy;

pub(crate) use auth::{RawAuth, RawNetwork, RawRule, TOKEN_KEYS};

/// The file as written; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub instance: RawInstance,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub uploads: RawUploads,
    #[serde(default)]
    pub gc: RawGc,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub access: Vec<RawRule>,
    #[serde(default)]
    pub proxy: Vec<RawProxy>,
    #[serde(default)]
    pub ui: RawUi,
    #[serde(default)]
    pub notify: Vec<notify::RawNotify>,
}

/// `[ui]`: the web interface.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUi {
    pub enabled: Option<bool>,
    /// The file holding the key that seals sessions (created 0600 when missing).
    pub session_key: Option<PathBuf>,
    pub session_lifetime: Option<String>,
    pub admins: Option<Vec<String>>,
}

/// The file an instance's session key is kept in, in its directory.
pub(crate) const UI_SESSION_KEY: &str = "ui-session.key";

/// The web interface, when it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UiConfig {
    /// Where the session key is kept; `None`: a random key per process.
    pub session_key: Option<PathBuf>,
    pub session_lifetime: Duration,
    /// Who may see usage and start collections (names as the guard knows them).
    pub admins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstance {
    pub hostname: Option<String>,
    pub protected: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<String>,
    pub client_names: Option<Vec<String>>,
    pub plain_listen: Option<String>,
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub email: Option<String>,
    pub directory: Option<String>,
    pub names: Option<Vec<String>>,
    pub challenge: Option<String>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub directory_ca: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub shared: Option<bool>,
    pub retry: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub drain_limit: Option<String>,
    pub drain_timeout: Option<String>,
}

impl RawServer {
    /// The connection bounds, with defaults.
    fn connection(&self) -> anyhow::Result<ConnectionSettings> {
        let d = ConnectionSettings::default();
        let duration = |raw: &Option<String>, default: Duration, key: &str| match raw {
            None => Ok(default),
            Some(v) => match parse_duration(v).with_context(|| format!("server.{key}"))? {
                Duration::ZERO => bail!("server.{key} must be more than 0"),
                d => Ok(d),
            },
        };
        let count = |raw: Option<usize>, default: usize, key: &str| match raw {
            Some(0) => bail!("server.{key} must be at least 1"),
            v => Ok(v.unwrap_or(default)),
        };
        Ok(ConnectionSettings {
            handshake_timeout: duration(
                &self.handshake_timeout,
                d.handshake_timeout,
                "handshake_timeout",
            )?,
            idle_timeout: duration(&self.idle_timeout, d.idle_timeout, "idle_timeout")?,
            body_timeout: duration(&self.body_timeout, d.body_timeout, "body_timeout")?,
            shutdown_timeout: duration(
                &self.shutdown_timeout,
                d.shutdown_timeout,
                "shutdown_timeout",
            )?,
            max_connections: count(self.max_connections, d.max_connections, "max_connections")?,
            max_connections_per_address: count(
                self.max_connections_per_address,
                d.max_connections_per_address,
                "max_connections_per_address",
            )?,
            drain_limit: match &self.drain_limit {
                None => d.drain_limit,
                Some(v) => parse_size(v).context("server.drain_limit")?,
            },
            drain_timeout: duration(&self.drain_timeout, d.drain_timeout, "drain_timeout")?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub url: Option<String>,
    pub cache_ttl: Option<String>,
    pub s3: Option<S3Location>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub delete: Option<bool>,
    pub manifest_max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGc {
    pub interval: Option<String>,
    pub grace: Option<String>,
    pub delete_untagged: Option<bool>,
    pub mirror_max_unused: Option<String>,
    pub mirror_max_bytes: Option<String>,
}

/// Garbage collection inside `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GcSettings {
    /// `None`: never scheduled.
    pub interval: Option<Duration>,
    pub grace: Duration,
    pub delete_untagged: bool,
    /// Pull-through caches unused for longer are evicted.
    pub mirror_max_unused: Option<Duration>,
    /// Above this, the least recently used pull-through caches are evicted.
    pub mirror_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUploads {
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetricsSettings {
    /// Not recorded, not served.
    Off,
    /// On the API listener.
    OnApi,
    /// On a listener of its own.
    Separate(SocketAddr),
}

/// Validated settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The name requests must carry (Host, SNI) when several instances share an address.
    pub hostname: Option<String>,
    pub protected: bool,
    pub listen: SocketAddr,
    pub plain_listen: Option<SocketAddr>,
    /// How the listeners bound connections.
    pub connection: ConnectionSettings,
    pub tls: Option<TlsFiles>,
    /// Certificates from ACME (instead of `tls`).
    pub acme: Option<AcmeTls>,
    pub guard: GuardSettings,
    pub storage: StorageLocation,
    /// How long tags, manifests and blob links are answered from memory.
    pub cache_ttl: Duration,
    pub delete_enabled: bool,
    pub manifest_max_bytes: usize,
    pub upload_max_age: Duration,
    pub gc: GcSettings,
    pub metrics: MetricsSettings,
    /// Mirrors of upstream registries (`[[proxy]]`).
    pub mirrors: Vec<registry_http::registry_proxy::MirrorSettings>,
    /// The web interface; `None` when it is off.
    pub ui: Option<UiConfig>,
    /// Webhook endpoints for events (`[[notify]]`).
    pub notify: Vec<registry_http::registry_events::EndpointSettings>,
}

impl Settings {
    /// Whether the listener speaks HTTPS (certificate files or ACME).
    pub(crate) fn https(&self) -> bool {
        self.tls.is_some() || self.acme.is_some()
    }

    /// The CA that signs client certificates, if mutual TLS is on.
    pub(crate) fn client_ca(&self) -> Option<&PathBuf> {
        match (&self.tls, &self.acme) {
            (Some(t), _) => t.client_ca.as_ref(),
            (None, Some(a)) => a.client_ca.as_ref(),
            (None, None) => None,
        }
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<RawConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Makes the relative paths in the file relative to `dir` (an instance's directory).
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.auth.htpasswd);
        fix(&mut self.auth.token.keys);
        fix(&mut self.auth.token.rootcertbundle);
        if let Some(oidc) = self.auth.oidc.as_mut() {
            fix(&mut oidc.client_secret_file);
        }
        if self.auth.mode.as_deref() == Some("token") && self.auth.token.keys.is_none() {
            self.auth.token.keys = Some(dir.join(auth::TOKEN_KEYS));
        }
        if let Some(jwks) = self.auth.token.jwks.as_mut() {
            let file = !jwks.contains("://") && Path::new(jwks.as_str()).is_relative();
            if file {
                *jwks = dir.join(&*jwks).to_string_lossy().into_owned();
            }
        }
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        if let Some(acme) = self.tls.acme.as_mut() {
            fix(&mut acme.directory_ca);
            acme.state = Some(dir.join(acme.state.as_deref().unwrap_or(Path::new(ACME_STATE))));
        }
        for p in &mut self.proxy {
            p.resolve_paths(dir);
        }
        for n in &mut self.notify {
            fix(&mut n.ca);
        }
        fix(&mut self.ui.session_key);
        if self.ui.session_key.is_none() {
            self.ui.session_key = Some(dir.join(UI_SESSION_KEY));
        }
        if let Some(url) = &self.storage.url {
            let relative = !url.contains("://") && Path::new(url).is_relative();
            if relative {
                self.storage.url = Some(dir.join(url).to_string_lossy().into_owned());
            }
        }
    }

    /// Validates into settings, applying defaults.
    pub(crate) fn validate(self) -> anyhow::Result<Settings> {
        let hostname = match &self.instance.hostname {
            Some(h) => Some(parse_hostname(h).context("instance.hostname")?),
            None => None,
        };
        let listen = self.server.listen.as_deref().unwrap_or("127.0.0.1:5000");
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("listen address {listen:?} is not IP:PORT"))?;
        let connection = self.server.connection()?;
        let mut storage = parse_storage(self.storage.url.as_deref().unwrap_or("./data"))?;
        match (&mut storage, self.storage.s3) {
            (StorageLocation::S3(loc), Some(s3)) => {
                *loc = S3Location {
                    bucket: std::mem::take(&mut loc.bucket),
                    prefix: std::mem::take(&mut loc.prefix),
                    ..s3
                };
                loc.validate()?;
            }
            (_, Some(_)) => bail!("[storage.s3] needs storage.url = \"s3://bucket/prefix\""),
            _ => {}
        }
        let manifest_max_bytes = self.api.manifest_max_bytes.unwrap_or(4 * 1024 * 1024);
        if manifest_max_bytes < 4 * 1024 * 1024 {
            bail!(
                "api.manifest_max_bytes must be at least 4194304 (4 MiB), as the OCI spec requires"
            );
        }
        let cache_ttl = match &self.storage.cache_ttl {
            Some(t) => parse_duration(t).context("storage.cache_ttl")?,
            None => registry_core::StoreOptions::default().cache_ttl,
        };
        if cache_ttl > registry_core::MAX_CACHE_TTL {
            bail!(
                "storage.cache_ttl must be at most {}s: longer would let a node answer for what garbage collection removed",
                registry_core::MAX_CACHE_TTL.as_secs()
            );
        }
        let upload_max_age = parse_duration(self.uploads.max_age.as_deref().unwrap_or("24h"))
            .context("uploads.max_age")?;
        let gc = GcSettings {
            interval: match &self.gc.interval {
                Some(i) => Some(parse_duration(i).context("gc.interval")?).filter(|d| !d.is_zero()),
                None => None,
            },
            grace: parse_duration(self.gc.grace.as_deref().unwrap_or("1h")).context("gc.grace")?,
            delete_untagged: self.gc.delete_untagged.unwrap_or(false),
            mirror_max_unused: match &self.gc.mirror_max_unused {
                Some(m) => Some(parse_duration(m).context("gc.mirror_max_unused")?)
                    .filter(|d| !d.is_zero()),
                None => None,
            },
            mirror_max_bytes: match &self.gc.mirror_max_bytes {
                Some(b) => Some(parse_size(b).context("gc.mirror_max_bytes")?),
                None => None,
            },
        };
        let metrics = match (self.metrics.enabled.unwrap_or(true), self.metrics.listen) {
            (false, _) => MetricsSettings::Off,
            (true, None) => MetricsSettings::OnApi,
            (true, Some(addr)) => MetricsSettings::Separate(
                addr.parse()
                    .with_context(|| format!("metrics.listen {addr:?} is not IP:PORT"))?,
            ),
        };
        let tls = validate_tls(&self.tls)?;
        let acme = match &self.tls.acme {
            Some(raw) => Some(validate_acme(
                raw,
                &self.tls,
                hostname.as_deref(),
                &storage,
            )?),
            None => None,
        };
        if acme.is_some() && tls.is_some() {
            bail!("tls.acme and tls.cert/tls.key are two sources of one certificate: keep one");
        }
        let plain_listen = match &self.tls.plain_listen {
            None => None,
            Some(_) if tls.is_none() && acme.is_none() => {
                bail!("tls.plain_listen needs tls.cert and tls.key, or tls.acme")
            }
            Some(a) => Some(
                a.parse()
                    .with_context(|| format!("tls.plain_listen {a:?} is not IP:PORT"))?,
            ),
        };
        let site = auth::Site {
            hostname: hostname.as_deref(),
            listen,
            https: tls.is_some() || acme.is_some(),
        };
        let guard =
            auth::validate_guard(&self.auth, &self.network, &self.tls, &self.access, &site)?;
        if acme.as_ref().is_some_and(|a| {
            a.settings.challenge == ChallengeKind::Http01 && plain_listen.is_none()
        }) {
            bail!("tls.acme.challenge = \"http-01\" is answered on tls.plain_listen (port 80 to the CA): set it");
        }
        let client_ca = self.tls.client_ca.is_some();
        if guard.client_names.is_some() && !client_ca {
            bail!("tls.client_names needs tls.client_ca (the CA that signs client certificates)");
        }
        let authenticates = guard.htpasswd.is_some() || guard.token.is_some() || client_ca;
        if !guard.rules.is_empty() && !authenticates {
            bail!("access rules need authentication: set auth.htpasswd, auth.mode = \"token\" or tls.client_ca");
        }
        let mirrors = mirrors::validate_mirrors(&self.proxy)?;
        if mirrors.iter().filter(|m| m.default).count() > 1 {
            bail!("only one [[proxy]] entry can be the default mirror");
        }
        let ui = if self.ui.enabled.unwrap_or(true) {
            Some(UiConfig {
                session_key: self.ui.session_key,
                session_lifetime: parse_duration(
                    self.ui.session_lifetime.as_deref().unwrap_or("8h"),
                )
                .context("ui.session_lifetime")?,
                admins: self.ui.admins.unwrap_or_default(),
            })
        } else {
            None
        };
        if ui.as_ref().is_some_and(|u| u.session_lifetime.is_zero()) {
            bail!("ui.session_lifetime must be longer than 0s");
        }
        let notify = notify::validate_notify(&self.notify)?;
        Ok(Settings {
            ui,
            notify,
            mirrors,
            hostname,
            protected: self.instance.protected.unwrap_or(false),
            metrics,
            listen,
            plain_listen,
            connection,
            tls,
            acme,
            guard,
            storage,
            cache_ttl,
            delete_enabled: self.api.delete.unwrap_or(true),
            manifest_max_bytes,
            upload_max_age,
            gc,
        })
    }
}

/// `tls.client_auth`: required unless it says optional.
fn client_auth(raw: &RawTls) -> anyhow::Result<ClientAuth> {
    Ok(match raw.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => bail!("tls.client_auth {other:?} must be \"required\" or \"optional\""),
    })
}

fn validate_tls(raw: &RawTls) -> anyhow::Result<Option<TlsFiles>> {
    let client_auth = client_auth(raw)?;
    match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: raw.client_ca.clone(),
            client_auth,
        })),
        (None, None) if raw.client_ca.is_some() && raw.acme.is_none() => {
            bail!("client certificates need TLS: set tls.cert and tls.key (or tls.acme) too")
        }
        (None, None) => Ok(None),
        _ => bail!("TLS needs both tls.cert and tls.key"),
    }
}

/// Where an instance keeps its ACME account and certificates, in its directory.
pub(crate) const ACME_STATE: &str = "acme";

/// `[tls.acme]` as the library takes it.
fn validate_acme(
    raw: &RawAcme,
    tls: &RawTls,
    hostname: Option<&str>,
    storage: &StorageLocation,
) -> anyhow::Result<AcmeTls> {
    let names = match (&raw.names, hostname) {
        (Some(n), _) if !n.is_empty() => n
            .iter()
            .map(|n| Ok(n.trim_end_matches('.').to_ascii_lowercase()))
            .collect::<anyhow::Result<Vec<_>>>()?,
        (_, Some(h)) => vec![h.to_owned()],
        _ => bail!("tls.acme needs the names to certify: set instance.hostname or tls.acme.names"),
    };
    let directory = match raw.directory.as_deref() {
        None | Some("letsencrypt") => registry_acme::LETS_ENCRYPT.to_owned(),
        Some("letsencrypt-staging") => registry_acme::LETS_ENCRYPT_STAGING.to_owned(),
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => url.to_owned(),
        Some(other) => bail!("tls.acme.directory {other:?} is not an ACME directory URL (or \"letsencrypt\", \"letsencrypt-staging\")"),
    };
    let challenge = match raw.challenge.as_deref() {
        None | Some("tls-alpn-01") => ChallengeKind::TlsAlpn01,
        Some("http-01") => ChallengeKind::Http01,
        Some(other) => bail!("tls.acme.challenge {other:?} must be \"tls-alpn-01\" or \"http-01\""),
    };
    let external_account = match (&raw.eab_kid, &raw.eab_hmac_key) {
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let hmac_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim().trim_end_matches('='))
                .context("tls.acme.eab_hmac_key is not base64url")?;
            Some(ExternalAccount {
                key_id: kid.clone(),
                hmac_key,
            })
        }
        (None, None) => None,
        _ => bail!(
            "an External Account Binding needs both tls.acme.eab_kid and tls.acme.eab_hmac_key"
        ),
    };
    if let Some(email) = &raw.email {
        if !email.contains('@') || email.contains(char::is_whitespace) {
            bail!("tls.acme.email {email:?} is not an email address");
        }
    }
    let mut settings = AcmeSettings::new(directory, names);
    settings.contact = raw.email.iter().cloned().collect();
    settings.challenge = challenge;
    settings.external_account = external_account;
    settings.directory_roots = raw.directory_ca.clone();
    if let Some(r) = &raw.retry {
        settings.retry = parse_duration(r).context("tls.acme.retry")?;
        settings.poll = settings
            .poll
            .min(settings.retry.max(Duration::from_secs(1)));
    }
    let shared = raw
        .shared
        .unwrap_or(matches!(storage, StorageLocation::S3(_)));
    let state = if shared {
        if matches!(storage, StorageLocation::Memory) {
            bail!("tls.acme.shared needs storage that outlives the process");
        }
        AcmeState::Storage
    } else {
        AcmeState::Directory(
            raw.state
                .clone()
                .unwrap_or_else(|| PathBuf::from(ACME_STATE)),
        )
    };
    let client_auth = client_auth(tls)?;
    // Checked now so the error names the setting, not later at start.
    settings
        .check()
        .map_err(|e| anyhow::anyhow!("tls.acme: {e}"))?;
    Ok(AcmeTls {
        settings,
        state,
        client_ca: tls.client_ca.clone(),
        client_auth,
    })
}

/// Parses a storage location: a path, `file://` URL, `s3://bucket/prefix` or `memory://`.
pub(crate) fn parse_storage(s: &str) -> anyhow::Result<StorageLocation> {
    Ok(s.parse()?)
}

/// Validates a host name a registry is reached by (a DNS name or an IP address), lowercased
/// and without a trailing dot.
pub(crate) fn parse_hostname(s: &str) -> anyhow::Result<String> {
    let h = s.trim_end_matches('.').to_ascii_lowercase();
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Ok(h);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
        bail!("{s:?} is not a host name (letters, digits and '-' in dot-separated labels, like registry.example.com)");
    }
    Ok(h)
}

/// Parses `500ms`, `90s`, `30m`, `24h`, `7d` or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    Ok(registry_core::units::parse_duration(s)?)
}

/// Parses a byte count: `1048576`, `512KiB`, `32MiB`, `2GiB`.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    Ok(registry_core::units::parse_size(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> anyhow::Result<Settings> {
        let mut raw: RawConfig = toml::from_str(text)?;
        raw.resolve_paths(Path::new("/etc/registry/instances/x"));
        raw.validate()
    }

    #[test]
    fn acme_settings_and_their_mistakes() {
        let s = settings(
            "[instance]\nhostname = \"Reg.Example.com\"\n[tls.acme]\nemail = \"ops@example.com\"\n",
        )
        .unwrap();
        assert!(s.https() && s.tls.is_none());
        let acme = s.acme.unwrap();
        assert_eq!(acme.settings.names, ["reg.example.com"]);
        assert_eq!(acme.settings.directory, registry_acme::LETS_ENCRYPT);
        assert_eq!(acme.settings.contact, ["ops@example.com"]);
        assert_eq!(acme.settings.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(
            acme.state,
            AcmeState::Directory("/etc/registry/instances/x/acme".into())
        );
        let s = settings("[storage]\nurl = \"s3://bucket/p\"\n[tls]\nplain_listen = \"0.0.0.0:80\"\nclient_ca = \"ca.pem\"\n[tls.acme]\nnames = [\"a.example\", \"b.example\"]\nchallenge = \"http-01\"\ndirectory = \"letsencrypt-staging\"\neab_kid = \"kid\"\neab_hmac_key = \"c2VjcmV0\"\n").unwrap();
        let acme = s.acme.clone().unwrap();
        assert_eq!(acme.state, AcmeState::Storage, "shared on S3 by default");
        assert_eq!(acme.settings.directory, registry_acme::LETS_ENCRYPT_STAGING);
        assert_eq!(acme.settings.external_account.unwrap().hmac_key, b"secret");
        assert_eq!(
            s.client_ca().unwrap(),
            Path::new("/etc/registry/instances/x/ca.pem")
        );
        let cases = [
            ("[tls.acme]\n", "set instance.hostname or tls.acme.names"),
            ("[tls]\ncert = \"c\"\nkey = \"k\"\n[tls.acme]\nnames = [\"a.example\"]\n", "keep one"),
            ("[tls.acme]\nnames = [\"a.example\"]\nchallenge = \"http-01\"\n", "set it"),
            ("[tls.acme]\nnames = [\"a.example\"]\nchallenge = \"dns-01\"\n", "tls.acme.challenge"),
            ("[tls.acme]\nnames = [\"a.example\"]\ndirectory = \"ftp://x\"\n", "not an ACME directory URL"),
            ("[tls.acme]\nnames = [\"a b\"]\n", "not a DNS name"),
            ("[tls.acme]\nnames = [\"a.example\"]\nemail = \"nobody\"\n", "not an email address"),
            ("[tls.acme]\nnames = [\"a.example\"]\neab_kid = \"k\"\n", "both tls.acme.eab_kid"),
            ("[tls.acme]\nnames = [\"a.example\"]\nretry = \"soon\"\n", "tls.acme.retry"),
            ("[tls.acme]\nnames = [\"a.example\"]\nport = 1\n", "unknown field"),
            ("[storage]\nurl = \"memory://\"\n[tls.acme]\nnames = [\"a.example\"]\nshared = true\n", "outlives"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", settings(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let s = RawConfig::default().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.storage, StorageLocation::Filesystem("./data".into()));
        assert!(s.delete_enabled);
        assert_eq!(s.upload_max_age, Duration::from_secs(86400));
        assert_eq!(s.metrics, MetricsSettings::OnApi);
        assert_eq!(s.cache_ttl, Duration::from_secs(1));
    }

    #[test]
    fn cache_ttl_is_bounded() {
        let ttl = |v: &str| {
            toml::from_str::<RawConfig>(&format!("[storage]\ncache_ttl = \"{v}\"\n"))
                .unwrap()
                .validate()
                .map(|s| s.cache_ttl)
        };
        assert_eq!(ttl("0s").unwrap(), Duration::ZERO);
        assert_eq!(ttl("4s").unwrap(), Duration::from_secs(4));
        let err = ttl("5s").unwrap_err().to_string();
        assert!(err.contains("at most 4s"), "{err}");
        assert!(ttl("soon").is_err());
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
    fn s3_location() {
        let raw: RawConfig = toml::from_str(
            "[storage]\nurl = \"s3://my-bucket/reg/istry/\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:3900\"\nregion = \"garage\"\nsecret_access_key = \"hush\"\n",
        )
        .unwrap();
        let s = raw.validate().unwrap();
        let StorageLocation::S3(loc) = &s.storage else {
            panic!("not S3: {:?}", s.storage)
        };
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("my-bucket", "reg/istry")
        );
        assert_eq!(loc.region.as_deref(), Some("garage"));
        let printed = format!("{s:?}");
        assert!(!printed.contains("hush"), "{printed}");
        let raw: RawConfig = toml::from_str("[storage.s3]\nregion = \"x\"\n").unwrap();
        assert!(raw.validate().is_err(), "[storage.s3] without an s3:// URL");
    }

    #[test]
    fn bad_values() {
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("512 k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("MiB").is_err());
        let raw: RawConfig = toml::from_str(
            "[server]\nidle_timeout = \"2s\"\ndrain_limit = \"1MiB\"\nmax_connections_per_address = 3\n",
        )
        .unwrap();
        let c = raw.validate().unwrap().connection;
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        assert_eq!((c.drain_limit, c.max_connections_per_address), (1 << 20, 3));
        assert_eq!(c.body_timeout, ConnectionSettings::default().body_timeout);
        for bad in [
            "body_timeout = \"0s\"",
            "max_connections = 0",
            "drain_limit = \"lots\"",
        ] {
            let raw: RawConfig = toml::from_str(&format!("[server]\n{bad}\n")).unwrap();
            assert!(raw.validate().is_err(), "{bad}");
        }
        assert!(parse_storage("ftp://x").is_err());
        assert!(parse_storage("file://relative").is_err());
        assert_eq!(parse_storage("memory://").unwrap(), StorageLocation::Memory);
        assert!(parse_storage("s3://Bad_Bucket/x").is_err());
        assert!(parse_storage("s3://").is_err());
        let mut raw = RawConfig::default();
        raw.server.listen = Some("nonsense".into());
        assert!(raw.validate().is_err());
        for bad in [
            "",
            "-a.com",
            "a..b",
            "a_b.com",
            "exa mple.com",
            &"a".repeat(64),
        ] {
            assert!(parse_hostname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_hostname("Reg.Example.COM.").unwrap(),
            "reg.example.com"
        );
        assert_eq!(parse_hostname("::1").unwrap(), "::1");
    }
}
