//! `registry serve`: builds storage from settings, serves the API until SIGINT/SIGTERM, and then
//! lets in-flight requests finish. Uploads are staged and renamed, so a stop at any moment
//! leaves no partial object visible.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::chunked::ChunkedStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::ObjectStore;
use object_store::{ClientConfigKey, RetryConfig};
use registry_auth::basic::BasicAuth;
use registry_auth::tls::TlsConfig;
use registry_auth::{Anonymous, Guard, Policy};
use registry_core::observe::ObservedStore;
use registry_core::timeout::TimeoutStore;
use registry_core::{GcOptions, ObjectRegistry, Storage, StoreOptions};
use registry_http::metrics::Metrics;
use registry_http::{router, ApiConfig, RegistryState};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{MetricsSettings, S3Location, Secret, Settings, StorageLocation};
use crate::listen::{self, Site, Sites};

/// Reads are served in chunks of this size (object_store's default for files is 8 KiB).
const READ_CHUNK: usize = 256 * 1024;

/// The opened storage: the durable store, an optional scratch view for upload chunks, tunables.
struct OpenedStorage {
    store: Arc<dyn ObjectStore>,
    scratch: Option<Arc<dyn ObjectStore>>,
    options: StoreOptions,
    /// Signs blob URLs for redirect mode, with the key prefix.
    presigner: Option<(Arc<dyn Signer>, String)>,
}

/// How long a redirect's presigned URL stays valid.
const REDIRECT_TTL: Duration = Duration::from_secs(20 * 60);

fn open_storage(location: &StorageLocation) -> anyhow::Result<OpenedStorage> {
    match location {
        StorageLocation::Filesystem(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create storage directory {}", dir.display()))?;
            // Two views of one directory: everything a client is told is stored goes through
            // the fsyncing one; chunks of multi-chunk uploads go through the other and are
            // written durably once, when published (see registry_core's uploads module).
            let view = |fsync: bool| -> anyhow::Result<Arc<dyn ObjectStore>> {
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("cannot use storage directory {}", dir.display()))?
                    .with_fsync(fsync)
                    .with_automatic_cleanup(true);
                let fs = Arc::new(crate::fsretry::DirRaceRetry(Arc::new(fs)));
                Ok(Arc::new(ChunkedStore::new(fs, READ_CHUNK)))
            };
            Ok(OpenedStorage {
                store: view(true)?,
                scratch: Some(view(false)?),
                // Local writes go straight to a staged file, so a small buffer suffices.
                options: StoreOptions {
                    write_buffer: 1024 * 1024,
                    write_concurrency: 2,
                    // Files cost little: rewrite less of them to merge small chunks.
                    coalesce_below: 256 * 1024,
                    ..StoreOptions::default()
                },
                presigner: None,
            })
        }
        StorageLocation::S3(loc) => {
            let s3 = Arc::new(open_s3(loc)?);
            let (metadata_timeout, _) = loc.timeouts()?;
            let store: Arc<dyn ObjectStore> = match loc.prefix.as_str() {
                "" => s3.clone(),
                p => Arc::new(PrefixStore::new(s3.clone(), p)),
            };
            let store = Arc::new(TimeoutStore::new(store, metadata_timeout));
            Ok(OpenedStorage {
                store,
                scratch: None,
                // Streaming writes become S3 multipart uploads of 8 MiB parts; S3 copies at
                // most 5 GiB in one request.
                options: StoreOptions {
                    copy_limit: 5 << 30,
                    ..StoreOptions::default()
                },
                presigner: (loc.redirect == Some(true))
                    .then(|| (s3 as Arc<dyn Signer>, loc.prefix.clone())),
            })
        }
        StorageLocation::Memory => Ok(OpenedStorage {
            store: Arc::new(InMemory::new()),
            scratch: None,
            options: StoreOptions::default(),
            presigner: None,
        }),
    }
}

/// The S3 client: settings from the config, the rest from `AWS_*` variables; plain HTTP only to
/// loopback endpoints unless allowed explicitly; a failing S3 is given up on within seconds, so
/// that clients get 503 rather than a hanging request.
fn open_s3(loc: &S3Location) -> anyhow::Result<AmazonS3> {
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    };
    let mut b = AmazonS3Builder::from_env()
        .with_retry(retry)
        .with_bucket_name(&loc.bucket);
    // object_store's default 30 s limit covers a whole request, body included: a pull of a big
    // blob by a client slower than size/30 s was cut off. Instead: a day for the whole request,
    // and a stall of one read (or of connecting) fails it, unless AWS_* variables say otherwise.
    // Operations on small objects are bounded more tightly by the TimeoutStore around it.
    // `storage.s3.stall_timeout` overrides AWS_READ_TIMEOUT.
    let stall = loc.timeouts()?.1.map(|d| format!("{}ms", d.as_millis()));
    for (key, default, configured) in [
        (ClientConfigKey::Timeout, "1d", None),
        (ClientConfigKey::ReadTimeout, "60s", stall),
        (ClientConfigKey::ConnectTimeout, "5s", None),
    ] {
        // (get_config_value reports object_store's defaults too: ask the environment.)
        let variable = format!("AWS_{}", key.as_ref().to_ascii_uppercase());
        match configured {
            Some(value) => b = b.with_config(AmazonS3ConfigKey::Client(key), value),
            None if std::env::var_os(variable).is_none() => {
                b = b.with_config(AmazonS3ConfigKey::Client(key), default)
            }
            None => {}
        }
    }
    if let Some(e) = &loc.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &loc.region {
        b = b.with_region(r);
    }
    if let Some(k) = &loc.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(Secret(k)) = &loc.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    if let Some(Secret(t)) = &loc.session_token {
        b = b.with_token(t);
    }
    if let Some(v) = loc.virtual_hosted {
        b = b.with_virtual_hosted_style_request(v);
    }
    let endpoint = loc
        .endpoint
        .clone()
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if let Some(e) = endpoint.as_deref().filter(|e| e.starts_with("http://")) {
        let loopback = e
            .trim_start_matches("http://")
            .split(['/', ':'])
            .next()
            .is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        let allowed = loc.allow_http.unwrap_or(false)
            || b.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
                .is_some_and(|v| v == "true");
        if !loopback && !allowed {
            bail!("S3 endpoint {e} is plain HTTP: set storage.s3.allow_http = true (or AWS_ALLOW_HTTP=true) to allow it");
        }
        b = b.with_allow_http(true);
    }
    b.build()
        .with_context(|| format!("cannot use S3 bucket {:?}", loc.bucket))
}

/// The registry over `location`, for maintenance commands (fsck): the same storage views and
/// tunables as `serve`, without metrics or redirects.
pub fn open_registry(location: &StorageLocation) -> anyhow::Result<ObjectRegistry> {
    let opened = open_storage(location)?;
    let registry = ObjectRegistry::new(opened.store, opened.options);
    Ok(match opened.scratch {
        Some(scratch) => registry.with_scratch(scratch),
        None => registry,
    })
}

/// Serves every instance in one process: each address is bound once and its sites (instances)
/// are told apart by SNI and Host (see `listen`). Stops on SIGINT/SIGTERM after in-flight
/// requests finish.
pub async fn serve(instances: Vec<(String, Settings)>) -> anyhow::Result<()> {
    let mut by_address: BTreeMap<SocketAddr, Vec<Site>> = BTreeMap::new();
    for (name, settings) in &instances {
        let BuiltSite { app, tls, metrics } = build_site(settings).await?;
        let site = Site {
            name: name.clone(),
            hostname: settings.hostname.clone(),
            app,
            tls,
            connection: settings.connection.clone(),
            trusted_proxies: settings.guard.trusted_proxies.clone(),
            metrics: metrics.map(|m| m.connections().clone()),
        };
        if let Some(addr) = settings.plain_listen {
            let plain = Site {
                tls: None,
                ..site.clone()
            };
            by_address.entry(addr).or_default().push(plain);
        }
        by_address.entry(settings.listen).or_default().push(site);
    }
    let (stop, stopped) = watch::channel(false);
    let mut servers = Vec::new();
    for (addr, sites) in by_address {
        let sites = Sites::new(sites)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("on {addr}"))?;
        let listener = bind(addr).await?;
        let local = listener.local_addr()?;
        for site in sites.iter() {
            let scheme = if site.tls.is_some() { "https" } else { "http" };
            let settings = &instances
                .iter()
                .find(|(n, _)| *n == site.name)
                .expect("built")
                .1;
            tracing::info!(
                instance = %site.name,
                host = site.hostname.as_deref().unwrap_or("*"),
                storage = ?settings.storage,
                "registry listening on {scheme}://{local}"
            );
            if is_guarded(settings) && site.tls.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(instance = %site.name, "guards are configured but the listener is plain HTTP: credentials travel in clear text; configure [tls]");
            }
        }
        servers.push(tokio::spawn(listen::serve(
            listener,
            Arc::new(sites),
            stopped.clone(),
        )));
    }
    shutdown_signal().await;
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop.send(true);
    for s in servers {
        let _ = s.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// One instance's app (storage, guards, API, metrics, request log), TLS configuration and
/// metrics; starts its background work (upload purge, a metrics listener of its own).
async fn build_site(settings: &Settings) -> anyhow::Result<BuiltSite> {
    let opened = open_storage(&settings.storage)?;
    let metrics = (settings.metrics != MetricsSettings::Off).then(|| Arc::new(Metrics::new()));
    let observe = |store: Arc<dyn ObjectStore>| -> Arc<dyn ObjectStore> {
        match &metrics {
            Some(m) => Arc::new(ObservedStore::new(store, m.clone())),
            None => store,
        }
    };
    let mut registry = ObjectRegistry::new(observe(opened.store), opened.options);
    if let Some(scratch) = opened.scratch {
        registry = registry.with_scratch(observe(scratch));
    }
    if let Some((signer, prefix)) = opened.presigner {
        registry = registry.with_presigned_reads(signer, &prefix, REDIRECT_TTL);
    }
    if let Some(every) = settings.gc.interval {
        let metrics = metrics.clone();
        tokio::spawn(collect_garbage(
            registry.clone(),
            settings.clone(),
            every,
            metrics,
        ));
    }
    let storage: Arc<dyn Storage> = Arc::new(registry);
    tokio::spawn(purge_uploads(storage.clone(), settings.upload_max_age));

    let api = ApiConfig {
        delete_enabled: settings.delete_enabled,
        manifest_max_bytes: settings.manifest_max_bytes,
        ..ApiConfig::default()
    };
    let guard = build_guard(settings)?;
    let mut state = RegistryState::new(storage, api);
    if let Some(m) = &metrics {
        state = state.with_metrics(m.clone());
    }
    if let Some(g) = &guard {
        state = state.with_guard(g.clone());
    }
    let mut app = router(state);
    match (&settings.metrics, &metrics) {
        (MetricsSettings::OnApi, Some(m)) => {
            app = app.merge(registry_http::guarded(
                registry_http::metrics::router(m.clone()),
                guard.clone(),
            ))
        }
        (MetricsSettings::Separate(addr), Some(m)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            tracing::info!("metrics on http://{addr}/metrics");
            let metrics_app = registry_http::metrics::router(m.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics_app).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        _ => {}
    }
    let app = app.layer(axum::middleware::from_fn(registry_http::log::log_requests));
    let tls = match &settings.tls {
        Some(files) => Some(Arc::new(
            TlsConfig::load(files.clone()).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    Ok(BuiltSite { app, tls, metrics })
}

/// What [`build_site`] builds.
struct BuiltSite {
    app: Router,
    tls: Option<Arc<TlsConfig>>,
    metrics: Option<Arc<Metrics>>,
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Whether any guard is configured.
fn is_guarded(settings: &Settings) -> bool {
    let g = &settings.guard;
    let client_ca = settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    g.htpasswd.is_some() || client_ca || !g.allow.is_everything()
}

/// The instance's guard, or `None` when nothing is guarded (then no per-request work is done).
fn build_guard(settings: &Settings) -> anyhow::Result<Option<Arc<Guard>>> {
    let g = &settings.guard;
    let client_ca = settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if !is_guarded(settings) {
        return Ok(None);
    }
    let anonymous = if g.public_read {
        Anonymous::Pull
    } else {
        Anonymous::Everything // lowered to Deny by the guard when authentication is configured
    };
    let mut guard = Guard::open()
        .with_allowed_addresses(g.allow.clone())
        .with_trusted_proxies(g.trusted_proxies.clone())
        .with_policy(Policy::new(anonymous, g.rules.clone()));
    if let Some(path) = &g.htpasswd {
        let basic = BasicAuth::open(path, &g.realm, g.cache).map_err(anyhow::Error::msg)?;
        tracing::info!(file = %path.display(), users = basic.users(), "HTTP Basic authentication on");
        guard = guard.with_basic(basic, g.brake);
    }
    if client_ca {
        guard = guard.with_client_certificates(g.client_names.clone());
    }
    Ok(Some(Arc::new(guard)))
}

/// The collection `settings` ask for.
pub fn gc_options(settings: &Settings) -> GcOptions {
    GcOptions {
        delete_untagged: settings.gc.delete_untagged,
        grace: settings.gc.grace,
        upload_max_age: settings.upload_max_age,
        ..GcOptions::default()
    }
}

/// Collects garbage every `every`, forever. With several nodes on one storage, whichever
/// starts first collects; the others find it busy and skip that round.
async fn collect_garbage(
    registry: ObjectRegistry,
    settings: Settings,
    every: Duration,
    metrics: Option<Arc<Metrics>>,
) {
    let mut tick = tokio::time::interval(every);
    // A collection longer than the interval delays the next instead of starting a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // not at startup
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let record = |outcome, deleted: &[(&'static str, u64)], bytes| {
            if let Some(m) = &metrics {
                m.record_gc(outcome, deleted, bytes);
            }
        };
        match registry.gc(&gc_options(&settings), |_| {}).await {
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
                let deleted = [
                    ("manifest", s.manifests),
                    ("link", s.links),
                    ("blob", s.blobs),
                ];
                record("ok", &deleted, s.bytes);
            }
            Err(registry_core::Error::Busy(why)) => {
                tracing::info!("garbage collection skipped: {why}");
                record("busy", &[], 0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection failed");
                record("error", &[], 0);
            }
        }
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
