//! A whole registry in a few lines, as `registry serve` runs each instance: storage opened from
//! its location (see [`registry_core::open`]), API settings, an optional guard, metrics, the
//! request log, TLS and connection bounds, and its upkeep (abandoned uploads purged, garbage
//! collected on a schedule). [`Registry::router`] gives the axum `Router` to mount in an
//! application of one's own; [`Registry::serve`] runs it on a listener with graceful shutdown;
//! [`Registry::spawn`] starts it in the background (tests) and stops it when dropped.
//!
//! ```no_run
//! use registry_http::Registry;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::builder("./data".parse()?).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! registry.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use registry_acme::{Acme, AcmeSettings, StateStore};
use registry_auth::tls::{ClientAuth, TlsConfig};
use registry_auth::{Guard, GuardSettings};
use registry_core::observe::{ObservedMultipart, ObservedStore};
use registry_core::open::StorageLocation;
use registry_core::{GcOptions, ObjectRegistry, Storage};
use registry_proxy::{MirrorSettings, Proxy, ProxyOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::oidc::SignIn;
use crate::auth::records::StoredTokens;
use crate::auth::TokenService;
use crate::metrics::Metrics;
use crate::server::{ConnectionSettings, Site, Sites};
use crate::{ApiConfig, RegistryState};
use registry_auth::token::records::TokenRecords;

/// Why a registry cannot be built as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The storage cannot be opened.
    #[error(transparent)]
    Storage(#[from] registry_core::Error),
    /// The guard or the TLS files cannot be used.
    #[error(transparent)]
    Auth(#[from] registry_auth::Error),
    /// The ACME settings cannot work.
    #[error(transparent)]
    Acme(#[from] registry_acme::Error),
    /// The notification endpoints cannot work.
    #[error(transparent)]
    Events(#[from] registry_events::Error),
}

/// Certificates from an ACME certificate authority, with the client-certificate policy.
#[derive(Clone)]
pub struct AcmeTls {
    /// What to order, from whom, and how.
    pub settings: AcmeSettings,
    /// Where the account and certificate are kept.
    pub state: AcmeState,
    /// CA certificates that sign client certificates, PEM; none: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Required or optional client certificates (with `client_ca`).
    pub client_auth: ClientAuth,
}

impl std::fmt::Debug for AcmeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeTls")
            .field("names", &self.settings.names)
            .field("directory", &self.settings.directory)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Where an instance's ACME state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcmeState {
    /// A directory of this node (files 0600).
    Directory(PathBuf),
    /// The registry's own storage (under `acme/`), shared by every node that serves it, which
    /// take turns ordering.
    Storage,
}

/// Where the registry's metrics are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsExposure {
    /// Not recorded at all.
    Off,
    /// Recorded and served at `GET /metrics` on the API (behind the guard).
    OnApi,
    /// Recorded only; serve [`crate::metrics::router`] where you like.
    Recorded,
}

/// What routes beside the API are built from (see [`RegistryBuilder::routes`]).
#[derive(Clone)]
pub struct SiteParts {
    /// The API's state: the storage it serves (with the pull-through cache, if any), its
    /// settings and its guard.
    pub state: RegistryState,
    /// The instance's own storage, for maintenance (garbage collection, fsck).
    pub storage: ObjectRegistry,
}

/// Builds routes beside the API from an instance's parts.
#[derive(Clone)]
struct Routes(Arc<dyn Fn(&SiteParts) -> Router + Send + Sync>);

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Routes")
    }
}

/// Starts web sessions for people who signed in (see [`RegistryBuilder::on_sign_in`]).
#[derive(Clone)]
struct WebSessions(crate::auth::oidc::WebSessions);

impl std::fmt::Debug for WebSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSessions")
    }
}

/// Builds a [`Registry`]; see the module documentation.
#[derive(Debug)]
pub struct RegistryBuilder {
    routes: Vec<Routes>,
    web_sessions: Option<WebSessions>,
    location: StorageLocation,
    api: ApiConfig,
    guard: GuardSettings,
    metrics: MetricsExposure,
    metrics_from: Option<Arc<Metrics>>,
    request_log: bool,
    upload_max_age: Duration,
    gc_every: Option<Duration>,
    gc: GcOptions,
    tls: Option<registry_auth::tls::TlsFiles>,
    acme: Option<AcmeTls>,
    connection: ConnectionSettings,
    cache_ttl: Option<Duration>,
    mirrors: Vec<MirrorSettings>,
    proxy: ProxyOptions,
    notify: Vec<registry_events::EndpointSettings>,
    node_addr: String,
}

impl RegistryBuilder {
    /// Sends events (push, pull, delete, mount) to these webhook endpoints (see
    /// [`registry_events`]); `node_addr` names this node in them (host name and port).
    pub fn notify(
        mut self,
        endpoints: Vec<registry_events::EndpointSettings>,
        node_addr: impl Into<String>,
    ) -> Self {
        self.notify = endpoints;
        self.node_addr = node_addr.into();
        self
    }

    /// With OpenID Connect sign-in on, a sign-in that began at `/auth/login?to=ui` ends in a
    /// web session: `start` gives the `Set-Cookie` values for the person (and whether the
    /// registry is reached over HTTPS), and the browser goes to `/` (the web interface).
    pub fn on_sign_in(
        mut self,
        start: impl Fn(&registry_auth::Person, bool) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.web_sessions = Some(WebSessions(Arc::new(start)));
        self
    }

    /// Serves the routes `build` makes beside the API (such as the web interface): they
    /// answer paths outside `/v2/` (and outside `/healthz`, `/metrics`, `/auth/…`), behind
    /// the request log but not the guard, which they apply themselves.
    pub fn routes(mut self, build: impl Fn(&SiteParts) -> Router + Send + Sync + 'static) -> Self {
        self.routes.push(Routes(Arc::new(build)));
        self
    }

    /// Serves these mirrors of upstream registries beside the instance's own repositories
    /// (a pull-through cache; see [`registry_proxy`]); none by default.
    pub fn mirrors(mut self, mirrors: Vec<MirrorSettings>, options: ProxyOptions) -> Self {
        self.mirrors = mirrors;
        self.proxy = options;
        self
    }

    /// How long tags, manifests and blob links are answered from memory (see
    /// [`registry_core::StoreOptions::cache_ttl`]); the default is 1 s.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// API settings (deletion, manifest size, page size, health timeout).
    pub fn api(mut self, api: ApiConfig) -> Self {
        self.api = api;
        self
    }

    /// Guards (HTTP Basic, client certificates, allowlists, rules); none by default.
    pub fn guard(mut self, guard: GuardSettings) -> Self {
        self.guard = guard;
        self
    }

    /// Where metrics go (default: served on the API at `/metrics`).
    pub fn metrics(mut self, metrics: MetricsExposure) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records into `metrics` (unless metrics are off) instead of new ones: those of the
    /// registry this one replaces at a configuration reload, so counters go on counting and a
    /// metrics listener serving them keeps serving.
    pub fn metrics_from(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics_from = Some(metrics);
        self
    }

    /// Whether each request is logged through `tracing` (default: yes).
    pub fn request_log(mut self, on: bool) -> Self {
        self.request_log = on;
        self
    }

    /// Upload sessions idle for longer are purged (default 24 h).
    pub fn upload_max_age(mut self, max_age: Duration) -> Self {
        self.upload_max_age = max_age;
        self
    }

    /// Collects garbage every `every` with `options` while it serves (default: never).
    pub fn collect_garbage(mut self, every: Duration, options: GcOptions) -> Self {
        self.gc_every = Some(every).filter(|d| !d.is_zero());
        self.gc = options;
        self
    }

    /// Serves HTTPS with certificates from an ACME certificate authority, obtained and renewed
    /// in the background (replaces [`RegistryBuilder::tls`]).
    pub fn acme(mut self, acme: AcmeTls) -> Self {
        self.tls = None;
        self.acme = Some(acme);
        self
    }

    /// Serves HTTPS with these files (reloaded when they change).
    pub fn tls(mut self, files: registry_auth::tls::TlsFiles) -> Self {
        self.acme = None;
        self.tls = Some(files);
        self
    }

    /// How connections are bounded when it serves (see [`ConnectionSettings`]).
    pub fn connection(mut self, settings: ConnectionSettings) -> Self {
        self.connection = settings;
        self
    }

    /// Opens the storage, loads the guard's and TLS files and builds the app.
    pub fn build(self) -> Result<Registry, BuildError> {
        let metrics = (self.metrics != MetricsExposure::Off).then(|| {
            self.metrics_from
                .unwrap_or_else(|| Arc::new(Metrics::new()))
        });
        let mut opened = registry_core::open::open(&self.location)?;
        if let Some(ttl) = self.cache_ttl {
            opened.options.cache_ttl = ttl;
        }
        if let Some(m) = &metrics {
            opened = opened
                .map_stores(|store| Arc::new(ObservedStore::new(store, m.clone())))
                .map_multipart(|mp| Arc::new(ObservedMultipart::new(mp, m.clone())));
        }
        let storage = opened.registry();
        let keys = self.guard.keys()?;
        let records: Arc<dyn TokenRecords> =
            Arc::new(StoredTokens::new(storage.object_store().clone()));
        let guard = match self.guard.build_with(keys.as_ref())? {
            // Scoped tokens are passwords wherever passwords or tokens are taken.
            Some(g) if self.guard.htpasswd.is_some() || self.guard.token.is_some() => {
                Some(g.with_token_records(records.clone()))
            }
            other => other,
        }
        .map(Arc::new);
        let served: Arc<dyn Storage> = if self.mirrors.is_empty() {
            Arc::new(storage.clone())
        } else {
            let proxy = Arc::new(Proxy::new(
                Arc::new(storage.clone()),
                self.mirrors,
                ProxyOptions {
                    manifest_max_bytes: self.api.manifest_max_bytes,
                    ..self.proxy
                },
            )?);
            if let Some(m) = &metrics {
                m.count_mirrors(proxy.clone());
            }
            proxy
        };
        let mut state = RegistryState::new(served, self.api);
        if let Some(m) = &metrics {
            state = state.with_metrics(m.clone());
        }
        let events = if self.notify.is_empty() {
            None
        } else {
            let notifier = registry_events::Notifier::new(
                storage.object_store().clone(),
                &self.node_addr,
                self.notify,
            )?;
            Some(Arc::new(notifier))
        };
        if let Some(n) = &events {
            state = state.with_events(n.clone());
            if let Some(m) = &metrics {
                m.count_events(n.clone());
            }
        }
        if let Some(g) = &guard {
            state = state.with_guard(g.clone());
        }
        // The routes beside the API; the API answers every other path (see `crate::Api`).
        let mut app = axum::Router::new();
        if let (MetricsExposure::OnApi, Some(m)) = (self.metrics, &metrics) {
            app = app.merge(crate::guarded(
                crate::metrics::router(m.clone()),
                guard.clone(),
            ));
        }
        if let (Some(token), Some(keys), Some(guard)) = (&self.guard.token, &keys, &guard) {
            if let Some(issuer) = token.issuer(keys).map(Arc::new) {
                let service = TokenService::new(
                    issuer.clone(),
                    guard.clone(),
                    &token.service,
                    &self.guard.realm,
                );
                app = app.merge(Arc::new(service).router());
                if let Some(oidc) = &self.guard.oidc {
                    let provider = registry_auth::oidc::Provider::new(oidc.clone())?;
                    let mut sign_in = SignIn::new(
                        provider,
                        issuer,
                        records.clone(),
                        guard.clone(),
                        &token.realm,
                        &token.service,
                    );
                    if let Some(web) = &self.web_sessions {
                        sign_in = sign_in.with_web_sessions(web.0.clone());
                    }
                    app = app.merge(Arc::new(sign_in).router());
                }
            }
        }
        let parts = SiteParts {
            state: state.clone(),
            storage: storage.clone(),
        };
        for routes in &self.routes {
            app = app.merge((routes.0)(&parts));
        }
        if self.request_log {
            app = app.layer(axum::middleware::from_fn(crate::log::log_requests));
        }
        let app = crate::App::with_api(crate::Api::new(state, self.request_log), app);
        let (tls, acme) = match (self.tls, self.acme) {
            (_, Some(managed)) => {
                let state = match managed.state {
                    AcmeState::Directory(dir) => StateStore::Directory(dir),
                    AcmeState::Storage => StateStore::Objects(
                        storage.object_store().clone(),
                        registry_core::layout::acme_root(),
                    ),
                };
                let acme = Acme::new(managed.settings, state)?;
                if let Some(m) = &metrics {
                    let m = m.clone();
                    acme.on_change(move |c| {
                        let name = c.names.first().map_or("", String::as_str);
                        m.record_certificate(name, c.expires_unix());
                    });
                }
                let tls = TlsConfig::managed(
                    managed.client_ca,
                    managed.client_auth,
                    acme.resolver(),
                    acme.alpn_challenges(),
                )?;
                (Some(Arc::new(tls)), Some(acme))
            }
            (Some(files), None) => (Some(Arc::new(TlsConfig::load(files)?)), None),
            (None, None) => (None, None),
        };
        Ok(Registry {
            app,
            events,
            storage,
            metrics,
            guard,
            tls,
            acme,
            trusted_proxies: self.guard.trusted_proxies,
            connection: self.connection,
            upload_max_age: self.upload_max_age,
            gc: self.gc_every.map(|every| (every, self.gc)),
        })
    }
}

/// A registry ready to serve; see the module documentation.
#[derive(Clone)]
pub struct Registry {
    app: crate::App,
    events: Option<Arc<registry_events::Notifier>>,
    storage: ObjectRegistry,
    metrics: Option<Arc<Metrics>>,
    guard: Option<Arc<Guard>>,
    tls: Option<Arc<TlsConfig>>,
    acme: Option<Acme>,
    trusted_proxies: registry_auth::ip::IpRanges,
    connection: ConnectionSettings,
    upload_max_age: Duration,
    gc: Option<(Duration, GcOptions)>,
}

impl Registry {
    /// A builder for a registry on the storage at `location`.
    pub fn builder(location: StorageLocation) -> RegistryBuilder {
        RegistryBuilder {
            routes: Vec::new(),
            web_sessions: None,
            location,
            api: ApiConfig::default(),
            guard: GuardSettings::default(),
            metrics: MetricsExposure::OnApi,
            metrics_from: None,
            request_log: true,
            upload_max_age: Duration::from_secs(24 * 3600),
            gc_every: None,
            gc: GcOptions::default(),
            tls: None,
            acme: None,
            connection: ConnectionSettings::default(),
            cache_ttl: None,
            mirrors: Vec::new(),
            proxy: ProxyOptions::default(),
            notify: Vec::new(),
            node_addr: String::new(),
        }
    }

    /// The API (`/v2/…`, `/healthz`, and `/metrics` if so built) as an axum router, to merge
    /// into an application (`registry serve` uses [`Self::site`], which skips the router for
    /// API paths).
    pub fn router(&self) -> Router {
        self.app.clone().into_router()
    }

    /// The storage it serves.
    pub fn storage(&self) -> &ObjectRegistry {
        &self.storage
    }

    /// Its metrics, if they are recorded.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether any guard is configured.
    pub fn is_guarded(&self) -> bool {
        self.guard.is_some()
    }

    /// The registry as one of the sites of a listener that serves several (told apart by
    /// `hostname`, see [`crate::server`]).
    pub fn site(&self, name: &str, hostname: Option<String>) -> Site {
        let aliases = match &self.acme {
            Some(acme) => acme
                .settings()
                .names
                .iter()
                .filter(|n| Some(*n) != hostname.as_ref() && !n.starts_with("*."))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Site {
            name: name.to_owned(),
            hostname,
            aliases,
            app: self.app.clone(),
            tls: self.tls.clone(),
            connection: self.connection.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            metrics: self.metrics.as_ref().map(|m| m.connections().clone()),
        }
    }

    /// The certificate manager, when certificates come from ACME.
    pub fn acme(&self) -> Option<&Acme> {
        self.acme.as_ref()
    }

    /// The plain-HTTP site of an instance whose certificates come from ACME with HTTP-01:
    /// it answers the CA's challenges and redirects everything else to HTTPS on `https_port`.
    /// `None` without ACME.
    pub fn challenge_site(
        &self,
        name: &str,
        hostname: Option<String>,
        https_port: u16,
    ) -> Option<Site> {
        let acme = self.acme.clone()?;
        Some(Site {
            app: crate::acme::challenge_router(acme, https_port).into(),
            tls: None,
            ..self.site(name, hostname)
        })
    }

    /// Starts the upkeep in the background: abandoned upload sessions are purged, and garbage
    /// is collected on the schedule, if one was set. The tasks run until the returned handle
    /// is dropped (a collection under way finishes first) or the runtime stops; certificate
    /// renewal runs while the registry (or a connection it served) lives.
    #[must_use = "the upkeep stops when the handle is dropped"]
    pub fn start_upkeep(&self) -> Upkeep {
        if let Some(acme) = &self.acme {
            acme.spawn();
        }
        let (stop, stopped) = watch::channel(());
        let storage: Arc<dyn Storage> = Arc::new(self.storage.clone());
        tokio::spawn(until(
            stopped.clone(),
            purge_uploads(storage, self.upload_max_age),
        ));
        if let Some((every, options)) = &self.gc {
            tokio::spawn(collect_garbage(
                self.storage.clone(),
                options.clone(),
                *every,
                self.metrics.clone(),
                stopped,
            ));
        }
        Upkeep {
            _stop: stop,
            events: self.events.as_ref().map(|n| n.start()),
        }
    }

    /// Serves on `listener` (HTTPS if built with TLS) until `shutdown` resolves, then lets
    /// in-flight requests finish within the shutdown timeout. Starts the upkeep.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let upkeep = self.start_upkeep();
        let (_replace, sites) = watch::channel(Arc::new(Sites::one(self.site("registry", None))));
        let (stop, stopped) = watch::channel(false);
        let server = crate::server::serve(listener, sites, stopped);
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => return,
            () = shutdown => {}
        }
        let _ = stop.send(true);
        server.await;
        upkeep.finish(Duration::from_secs(5)).await;
    }

    /// Serves on `addr` (port 0: any free port) in the background until the returned handle is
    /// stopped or dropped: a registry for the integration tests of tools that talk to one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = registry_http::Registry::builder("memory://".parse()?)
    ///     .build()?
    ///     .spawn("127.0.0.1:0")
    ///     .await?;
    /// assert!(registry.url().starts_with("http://127.0.0.1:"));
    /// registry.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn(self, addr: &str) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let scheme = if self.is_tls() { "https" } else { "http" };
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Ok(Running {
            addr: local,
            url: format!("{scheme}://{local}"),
            stop,
            task: Some(task),
        })
    }
}

/// A registry serving in the background; stops (abruptly) when dropped.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    url: String,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (or `https://…`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops accepting, lets in-flight requests finish (within the shutdown timeout) and
    /// waits until it has stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A registry's upkeep tasks (see [`Registry::start_upkeep`]); dropping it stops them.
#[derive(Debug)]
pub struct Upkeep {
    _stop: watch::Sender<()>,
    events: Option<registry_events::Upkeep>,
}

impl Upkeep {
    /// Stops, after queueing in storage the events still in memory (waiting up to
    /// `within`): for a stop of the process, when no request is in flight any more.
    pub async fn finish(self, within: Duration) {
        if let Some(events) = self.events {
            events.finish(within).await;
        }
    }
}

/// Runs `task` until `stop`'s sender is dropped.
async fn until(mut stop: watch::Receiver<()>, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        _ = stop.changed() => {} // only ever an error: the sender is gone
    }
}

/// Purges idle upload sessions now and then, forever.
async fn purge_uploads(storage: Arc<dyn Storage>, max_age: Duration) {
    let every = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match storage.upload_purge(max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "purging upload sessions failed"),
        }
    }
}

/// Collects garbage every `every` until `stop`'s sender is dropped. With several nodes on one storage, whichever
/// starts first collects; the others find it busy and skip that round.
async fn collect_garbage(
    registry: ObjectRegistry,
    options: GcOptions,
    every: Duration,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    // A collection longer than the interval delays the next instead of starting a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // not at startup
    loop {
        // Stopping waits for a collection under way: it is never cut off halfway.
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let started = std::time::Instant::now();
        let record = |outcome, deleted: &[(&'static str, u64)], bytes| {
            if let Some(m) = &metrics {
                m.record_gc(outcome, deleted, bytes);
            }
        };
        match registry.gc(&options, |_| {}).await {
            Ok(s) => {
                tracing::info!(
                    manifests = s.manifests,
                    links = s.links,
                    blobs = s.blobs,
                    bytes = s.bytes,
                    uploads = s.uploads,
                    seconds = started.elapsed().as_secs_f64(),
                    "garbage collected"
                );
                tracing::info!(target: crate::audit::TARGET, action = "gc", result = "ok", who = "schedule", manifests = s.manifests, blobs = s.blobs, bytes = s.bytes, "scheduled gc");
                let deleted = [
                    ("manifest", s.manifests),
                    ("link", s.links),
                    ("blob", s.blobs),
                ];
                record("ok", &deleted, s.bytes);
            }
            Err(e @ registry_core::Error::GcRunning { .. }) => {
                tracing::info!("garbage collection skipped: {e}");
                record("busy", &[], 0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed");
                tracing::info!(target: crate::audit::TARGET, action = "gc", result = "failed", who = "schedule", error = %e, "scheduled gc");
                record("error", &[], 0);
            }
        }
    }
}
