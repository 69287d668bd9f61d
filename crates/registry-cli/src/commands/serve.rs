//! `registry serve`: every configured instance in one process, or one registry given by
//! `--config`/`--storage` and flags. Each instance is built by the library
//! (`registry_http::Registry`); instances sharing an address are told apart by SNI and Host.
//! Stops on SIGINT/SIGTERM after in-flight requests finish (within the shutdown timeout).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use registry_core::GcOptions;
use registry_http::audit::TARGET as AUDIT;
use registry_http::server::{self, Site, Sites};
use registry_http::{ApiConfig, MetricsExposure, Registry};
use registry_ui::{UiSettings, WebInterface};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::run;
use crate::config::{MetricsSettings, RawConfig, Settings};
use crate::{instance, manage};

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file; flags given here override it.
    #[arg(long, env = "REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    pub listen: Option<String>,
    /// Storage: a directory, a file:// URL, or memory:// [default: ./data].
    #[arg(long)]
    pub storage: Option<String>,
    /// Refuse DELETE of manifests, tags and blobs (405 UNSUPPORTED).
    #[arg(long)]
    pub no_delete: bool,
    /// Purge upload sessions idle for longer than this (e.g. 30m, 24h) [default: 24h].
    #[arg(long)]
    pub upload_max_age: Option<String>,
    /// Require HTTP Basic logins from this htpasswd file (bcrypt, $apr1$, {SHA}, $5$, $6$).
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against this PEM CA bundle (required unless --client-auth optional).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are required [default: required].
    #[arg(long, value_enum)]
    pub client_auth: Option<ClientAuthArg>,
    /// Authorized client certificate names, comma-separated; `*` stands for one DNS label.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub client_names: Option<Vec<String>>,
    /// Only these addresses may connect (CIDRs, comma-separated) [default: all].
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub allow_ip: Option<Vec<String>>,
    /// Believe Forwarded / X-Forwarded-For from these proxies (CIDRs, comma-separated).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Let anyone pull without credentials (pushes and deletes still need an identity).
    #[arg(long)]
    pub public_read: bool,
    /// Write the audit trail (pushes, tags, deletes, mounts, failed logins, collections,
    /// reloads) to this file (appended, created 0600), or `-` for stderr, apart from the log
    /// [default: in the log].
    #[arg(long, env = "REGISTRY_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The audit trail's lines: text or json [default: text].
    #[arg(long, env = "REGISTRY_AUDIT_FORMAT", value_enum)]
    pub audit_format: Option<AuditFormat>,
}

/// How audit lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AuditFormat {
    /// As the log writes its lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether client certificates are required or only accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientAuthArg {
    /// Every client must present a certificate the client CA signed.
    Required,
    /// Clients without a certificate may log in otherwise.
    Optional,
}

/// One flag of `registry serve` that configures a registry: its name, and what it changes
/// (applied again at each reload).
type Override = (&'static str, Box<dyn Fn(&mut RawConfig) + Send + Sync>);

impl ServeArgs {
    /// The flags given that configure the registry, each with how it changes the
    /// configuration file's settings (the one list of them).
    fn overrides(self) -> Vec<Override> {
        let mut given: Vec<Override> = Vec::new();
        let mut set = |flag, f: Box<dyn Fn(&mut RawConfig) + Send + Sync>| given.push((flag, f));
        if let Some(v) = self.listen {
            set(
                "--listen",
                Box::new(move |c| c.server.listen = Some(v.clone())),
            );
        }
        if self.no_delete {
            set("--no-delete", Box::new(|c| c.api.delete = Some(false)));
        }
        if let Some(v) = self.upload_max_age {
            set(
                "--upload-max-age",
                Box::new(move |c| c.uploads.max_age = Some(v.clone())),
            );
        }
        if let Some(v) = self.htpasswd {
            set(
                "--htpasswd",
                Box::new(move |c| c.auth.htpasswd = Some(v.clone())),
            );
        }
        if let Some(v) = self.tls_cert {
            let key = self.tls_key;
            set(
                "--tls-cert",
                Box::new(move |c| {
                    c.tls.cert = Some(v.clone());
                    c.tls.key = key.clone();
                }),
            );
        }
        if let Some(v) = self.client_ca {
            set(
                "--client-ca",
                Box::new(move |c| c.tls.client_ca = Some(v.clone())),
            );
        }
        if let Some(v) = self.client_auth {
            let mode = match v {
                ClientAuthArg::Required => "required",
                ClientAuthArg::Optional => "optional",
            };
            set(
                "--client-auth",
                Box::new(move |c| c.tls.client_auth = Some(mode.to_owned())),
            );
        }
        if let Some(v) = self.client_names {
            set(
                "--client-names",
                Box::new(move |c| c.tls.client_names = Some(v.clone())),
            );
        }
        if let Some(v) = self.allow_ip {
            set(
                "--allow-ip",
                Box::new(move |c| c.network.allow = Some(v.clone())),
            );
        }
        if let Some(v) = self.trusted_proxies {
            set(
                "--trusted-proxies",
                Box::new(move |c| c.network.trusted_proxies = Some(v.clone())),
            );
        }
        if self.public_read {
            set(
                "--public-read",
                Box::new(|c| c.auth.public_read = Some(true)),
            );
        }
        given
    }
}

/// `registry serve`: the instances of the config home, or one registry given by `--config`,
/// `--storage` and flags (also when no instance exists).
pub(crate) fn run_serve(home: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let instances = instance::Instance::all(home)?;
    let ad_hoc = args.config.is_some() || args.storage.is_some() || instances.is_empty();
    let (config, storage) = (args.config.clone(), args.storage.clone());
    let overrides = args.overrides();
    if !ad_hoc {
        if let Some((flag, _)) = overrides.first() {
            anyhow::bail!("{flag} applies to a registry given by --config or --storage; the instances in {} are configured with `registry reconfigure`", home.display());
        }
        return run(serve(Source::Home(home.to_owned())));
    }
    run(serve(Source::Given {
        config,
        storage,
        overrides,
    }))
}

/// Where the configuration comes from, read at start and at each reload.
enum Source {
    /// Every instance of the config home.
    Home(PathBuf),
    /// One registry from `--config`, `--storage` and flags.
    Given {
        config: Option<PathBuf>,
        storage: Option<String>,
        overrides: Vec<Override>,
    },
}

impl Source {
    /// The instances as configured now, validated (each alone and all together).
    fn read(&self) -> anyhow::Result<Vec<(String, Settings)>> {
        let all = match self {
            Source::Home(home) => {
                let mut all = Vec::new();
                for i in instance::Instance::all(home)? {
                    all.push((i.name.clone(), i.settings()?));
                }
                if all.is_empty() {
                    bail!("no instance is left in {}", home.display());
                }
                all
            }
            Source::Given {
                config,
                storage,
                overrides,
            } => {
                let mut raw = match config {
                    Some(path) => RawConfig::load(path)?,
                    None => RawConfig::default(),
                };
                if storage.is_some() {
                    raw.storage.url = storage.clone();
                }
                for (_, apply) in overrides {
                    apply(&mut raw);
                }
                vec![(instance::DEFAULT.to_owned(), raw.validate()?)]
            }
        };
        manage::check_addresses(&all)?;
        for (name, settings) in &all {
            crate::manage::tokens::check(settings).with_context(|| format!("instance {name}"))?;
        }
        Ok(all)
    }

    /// Where `registry reconfigure --reload` finds the serving process.
    fn pid_file(&self) -> Option<PathBuf> {
        match self {
            Source::Home(home) => Some(home.join(PID_FILE)),
            Source::Given { .. } => None,
        }
    }
}

/// The file in the config home holding the process id of `registry serve`.
pub(crate) const PID_FILE: &str = "serve.pid";

/// Serves every instance in one process: each address is bound once and its sites (instances)
/// are told apart by SNI and Host (see `registry_http::server`). On SIGHUP the configuration
/// is read again and applied to new connections and requests (see [`Served::reload`]); on
/// SIGINT/SIGTERM it stops after in-flight requests finish.
async fn serve(source: Source) -> anyhow::Result<()> {
    let mut served = Served::default();
    let first = served.prepare(source.read()?).await?;
    served.commit(first);
    let pid_file = source.pid_file();
    if let Some(file) = &pid_file {
        if let Err(e) = std::fs::write(file, format!("{}\n", std::process::id())) {
            tracing::warn!(error = %e, file = %file.display(), "cannot write the process id: `registry reconfigure --reload` will not find this process");
        }
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut hangups = Hangups::new()?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = hangups.next() => served.reload(&source).await,
        }
    }
    if let Some(file) = &pid_file {
        let _ = std::fs::remove_file(file);
    }
    tracing::info!("stopping: finishing in-flight requests");
    served.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP, each a reload request (signals arriving during a reload make one more).
struct Hangups(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangups {
    fn new() -> anyhow::Result<Hangups> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Hangups(
                signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            ))
        }
        #[cfg(not(unix))]
        Ok(Hangups())
    }

    /// The next SIGHUP (never, where there is none).
    async fn next(&mut self) {
        #[cfg(unix)]
        if self.0.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// What the process serves: its instances and its listeners.
#[derive(Default)]
struct Served {
    instances: BTreeMap<String, ServedInstance>,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// Listeners no longer configured, finishing their requests.
    retired: Vec<tokio::task::JoinHandle<()>>,
}

/// One instance being served.
struct ServedInstance {
    registry: Registry,
    upkeep: registry_http::Upkeep,
    /// Its own metrics listener: the address and the task serving it.
    metrics: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

/// One bound address.
struct Listener {
    sites: watch::Sender<Arc<Sites>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A configuration built and its new addresses bound, not yet serving.
struct Prepared {
    instances: Vec<(String, Settings, Registry)>,
    sites: BTreeMap<SocketAddr, Sites>,
    bound: BTreeMap<SocketAddr, TcpListener>,
    metrics: BTreeMap<String, (SocketAddr, TcpListener)>,
}

impl Served {
    /// Builds every instance and binds the addresses not bound yet; nothing changes in what
    /// is served, so an error leaves it as it was.
    async fn prepare(&self, instances: Vec<(String, Settings)>) -> anyhow::Result<Prepared> {
        let mut by_address: BTreeMap<SocketAddr, Vec<Site>> = BTreeMap::new();
        let mut built = Vec::new();
        let mut metrics = BTreeMap::new();
        for (name, settings) in instances {
            let before = self.instances.get(&name);
            let registry = build(&settings, before.and_then(|i| i.registry.metrics()))
                .await
                .with_context(|| format!("instance {name}"))?;
            if let MetricsSettings::Separate(addr) = settings.metrics {
                if before.and_then(|i| i.metrics.as_ref()).map(|m| m.0) != Some(addr) {
                    let listener = bind(addr)
                        .await
                        .with_context(|| format!("instance {name}: the metrics listener"))?;
                    metrics.insert(name.clone(), (addr, listener));
                }
            }
            let site = registry.site(&name, settings.hostname.clone());
            if let Some(addr) = settings.plain_listen {
                // With ACME the plain listener answers HTTP-01 and redirects to HTTPS.
                let plain = registry
                    .challenge_site(&name, settings.hostname.clone(), settings.listen.port())
                    .unwrap_or_else(|| Site {
                        tls: None,
                        ..site.clone()
                    });
                by_address.entry(addr).or_default().push(plain);
            }
            by_address.entry(settings.listen).or_default().push(site);
            built.push((name, settings, registry));
        }
        let mut sites = BTreeMap::new();
        let mut bound = BTreeMap::new();
        for (addr, list) in by_address {
            sites.insert(
                addr,
                Sites::new(list).with_context(|| format!("on {addr}"))?,
            );
            if !self.listeners.contains_key(&addr) {
                bound.insert(addr, bind(addr).await?);
            }
        }
        Ok(Prepared {
            instances: built,
            sites,
            bound,
            metrics,
        })
    }

    /// Serves what `prepare` built: listeners kept get their new sites (for the next
    /// connection and request), new ones start, those no longer configured stop after their
    /// requests finish; each instance's upkeep moves to its new build.
    fn commit(&mut self, mut next: Prepared) {
        for (addr, sites) in next.sites {
            let sites = Arc::new(sites);
            let local = next.bound.get(&addr).and_then(|l| l.local_addr().ok());
            announce(&sites, addr, local.unwrap_or(addr), &next.instances);
            match (self.listeners.get(&addr), next.bound.remove(&addr)) {
                (Some(kept), _) => {
                    kept.sites.send_replace(sites);
                }
                (None, Some(listener)) => {
                    let (replace, current) = watch::channel(sites);
                    let (stop, stopped) = watch::channel(false);
                    let task = tokio::spawn(server::serve(listener, current, stopped));
                    self.listeners.insert(
                        addr,
                        Listener {
                            sites: replace,
                            stop,
                            task,
                        },
                    );
                }
                (None, None) => {
                    // `prepare` binds every address not served yet; never here.
                    tracing::error!("{addr} was not bound: its instances are not served");
                }
            }
        }
        let configured: Vec<SocketAddr> = next
            .instances
            .iter()
            .flat_map(|(_, s, _)| std::iter::once(s.listen).chain(s.plain_listen))
            .collect();
        let gone: Vec<SocketAddr> = self
            .listeners
            .keys()
            .filter(|a| !configured.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(l) = self.listeners.remove(&addr) {
                tracing::info!("no instance is configured on {addr} any more: closing it");
                let _ = l.stop.send(true);
                self.retired.push(l.task);
            }
        }
        let mut instances = BTreeMap::new();
        for (name, settings, registry) in next.instances {
            let before = self.instances.remove(&name);
            let fresh = next.metrics.remove(&name).and_then(|(addr, listener)| {
                let m = registry.metrics()?.clone();
                Some((addr, serve_metrics(listener, addr, m)))
            });
            // A listener on the address still configured keeps serving (the same metrics).
            let metrics = match (fresh, before.and_then(|b| b.metrics)) {
                (None, Some(kept)) if settings.metrics == MetricsSettings::Separate(kept.0) => {
                    Some(kept)
                }
                (fresh, old) => {
                    if let Some((_, task)) = old {
                        task.abort();
                    }
                    fresh
                }
            };
            instances.insert(
                name,
                ServedInstance {
                    upkeep: registry.start_upkeep(),
                    registry,
                    metrics,
                },
            );
        }
        for (name, gone) in std::mem::replace(&mut self.instances, instances) {
            tracing::info!(instance = %name, "instance removed");
            if let Some((_, task)) = gone.metrics {
                task.abort();
            }
        }
    }

    /// Reads the configuration again and serves it; a configuration that cannot be served is
    /// refused as a whole and the running one keeps serving.
    async fn reload(&mut self, source: &Source) {
        tracing::info!("reloading the configuration");
        let prepared = match source.read() {
            Ok(instances) => self.prepare(instances).await,
            Err(e) => Err(e),
        };
        match prepared {
            Ok(next) => {
                self.commit(next);
                let instances = self.instances.len();
                tracing::info!(
                    instances,
                    "configuration reloaded: new connections and requests use it"
                );
                tracing::info!(target: AUDIT, action = "reload", result = "ok", who = "SIGHUP", instances, "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(
                    "configuration reload refused, the running one keeps serving: {e:#}"
                );
                let error = format!("{e:#}");
                tracing::info!(target: AUDIT, action = "reload", result = "failed", who = "SIGHUP", error, "configuration reload refused");
            }
        }
    }

    /// Stops every listener after in-flight requests finish (within the shutdown timeout).
    async fn stop(self) {
        let mut tasks = self.retired;
        for l in self.listeners.into_values() {
            let _ = l.stop.send(true);
            tasks.push(l.task);
        }
        for t in tasks {
            let _ = t.await;
        }
        for i in self.instances.into_values() {
            if let Some((_, task)) = i.metrics {
                task.abort();
            }
            // No request is in flight: what is left of the events goes to storage.
            i.upkeep.finish(Duration::from_secs(10)).await;
        }
    }
}

/// Logs where each site of `addr` (bound at `local`) is served, and warns about guards over
/// plain HTTP on a reachable address.
fn announce(
    sites: &Sites,
    addr: SocketAddr,
    local: SocketAddr,
    built: &[(String, Settings, Registry)],
) {
    for site in sites.iter() {
        let scheme = if site.tls.is_some() { "https" } else { "http" };
        let Some((_, settings, registry)) = built.iter().find(|(n, ..)| *n == site.name) else {
            continue;
        };
        tracing::info!(
            instance = %site.name,
            host = site.hostname.as_deref().unwrap_or("*"),
            storage = %settings.storage,
            "registry listening on {scheme}://{local}"
        );
        if registry.is_guarded() && site.tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(instance = %site.name, "guards are configured but the listener is plain HTTP: credentials travel in clear text; configure [tls]");
        }
    }
}

/// Serves `metrics` on `listener` in the background.
fn serve_metrics(
    listener: TcpListener,
    addr: SocketAddr,
    metrics: Arc<registry_http::metrics::Metrics>,
) -> tokio::task::JoinHandle<()> {
    tracing::info!("metrics on http://{addr}/metrics");
    let app = registry_http::metrics::router(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    })
}

/// One instance as the library builds it from its settings, recording into the metrics of
/// the build it replaces, if any.
async fn build(
    settings: &Settings,
    metrics_before: Option<&Arc<registry_http::metrics::Metrics>>,
) -> anyhow::Result<Registry> {
    let metrics = match settings.metrics {
        MetricsSettings::Off => MetricsExposure::Off,
        MetricsSettings::OnApi => MetricsExposure::OnApi,
        MetricsSettings::Separate(_) => MetricsExposure::Recorded,
    };
    let mut builder = Registry::builder(settings.storage.clone())
        .cache_ttl(settings.cache_ttl)
        .api(ApiConfig {
            delete_enabled: settings.delete_enabled,
            manifest_max_bytes: settings.manifest_max_bytes,
            ..ApiConfig::default()
        })
        .guard(settings.guard.clone())
        .metrics(metrics)
        .upload_max_age(settings.upload_max_age)
        .connection(settings.connection.clone())
        .mirrors(settings.mirrors.clone(), Default::default())
        .notify(settings.notify.clone(), node_addr(settings));
    if let Some(m) = metrics_before {
        builder = builder.metrics_from(m.clone());
    }
    if let Some(ui) = &settings.ui {
        let settings = UiSettings {
            session_key: match &ui.session_key {
                Some(file) => Some(session_key(file)?),
                None => None,
            },
            session_lifetime: ui.session_lifetime,
            admins: ui.admins.clone(),
            gc: gc_options(settings),
            oidc: settings.guard.oidc.is_some(),
        };
        let web = Arc::new(WebInterface::new(settings));
        let sign_in = web.clone();
        builder = builder
            .routes(move |parts| web.router(parts))
            .on_sign_in(move |person, secure| sign_in.person_cookies(person, secure));
    }
    if let Some(every) = settings.gc.interval {
        builder = builder.collect_garbage(every, gc_options(settings));
    }
    if let Some(files) = &settings.tls {
        builder = builder.tls(files.clone());
    }
    if let Some(acme) = &settings.acme {
        builder = builder.acme(acme.clone());
    }
    Ok(builder.build()?)
}

/// How events name this node: the instance's host name and port, else its address.
fn node_addr(settings: &Settings) -> String {
    match &settings.hostname {
        Some(h) => format!("{h}:{}", settings.listen.port()),
        None => settings.listen.to_string(),
    }
}

/// The web interface's session key in `file`, made (32 random bytes, 0600) when missing.
fn session_key(file: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(file) {
        Ok(key) if key.len() >= 32 => Ok(key),
        Ok(_) => bail!(
            "{}: a session key needs at least 32 bytes (delete the file to have one made)",
            file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).context("no randomness for the session key")?;
            crate::instance::write_private(file, &key)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The collection `settings` ask for.
pub(crate) fn gc_options(settings: &Settings) -> GcOptions {
    GcOptions {
        delete_untagged: settings.gc.delete_untagged,
        mirror_max_unused: settings.gc.mirror_max_unused,
        mirror_max_bytes: settings.gc.mirror_max_bytes,
        grace: settings.gc.grace,
        upload_max_age: settings.upload_max_age,
        ..GcOptions::default()
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
