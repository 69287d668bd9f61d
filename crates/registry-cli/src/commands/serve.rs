//! `registry serve`: every configured instance in one process, or one registry given by
//! `--config`/`--storage` and flags. Each instance is built by the library
//! (`registry_http::Registry`); instances sharing an address are told apart by SNI and Host.
//! Stops on SIGINT/SIGTERM after in-flight requests finish (within the shutdown timeout).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use registry_core::GcOptions;
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
}

/// Whether client certificates are required or only accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientAuthArg {
    /// Every client must present a certificate the client CA signed.
    Required,
    /// Clients without a certificate may log in otherwise.
    Optional,
}

/// One flag of `registry serve` that configures a registry: its name, and what it changes.
type Override<'a> = (&'static str, Box<dyn FnOnce(&mut RawConfig) + 'a>);

impl ServeArgs {
    /// The flags given that configure the registry, each with how it changes the
    /// configuration file's settings (the one list of them).
    fn overrides(self) -> Vec<Override<'static>> {
        let mut given: Vec<Override<'static>> = Vec::new();
        let mut set = |flag, f: Box<dyn FnOnce(&mut RawConfig)>| given.push((flag, f));
        if let Some(v) = self.listen {
            set("--listen", Box::new(move |c| c.server.listen = Some(v)));
        }
        if self.no_delete {
            set("--no-delete", Box::new(|c| c.api.delete = Some(false)));
        }
        if let Some(v) = self.upload_max_age {
            set(
                "--upload-max-age",
                Box::new(move |c| c.uploads.max_age = Some(v)),
            );
        }
        if let Some(v) = self.htpasswd {
            set("--htpasswd", Box::new(move |c| c.auth.htpasswd = Some(v)));
        }
        if let Some(v) = self.tls_cert {
            let key = self.tls_key;
            set(
                "--tls-cert",
                Box::new(move |c| {
                    c.tls.cert = Some(v);
                    c.tls.key = key;
                }),
            );
        }
        if let Some(v) = self.client_ca {
            set("--client-ca", Box::new(move |c| c.tls.client_ca = Some(v)));
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
                Box::new(move |c| c.tls.client_names = Some(v)),
            );
        }
        if let Some(v) = self.allow_ip {
            set("--allow-ip", Box::new(move |c| c.network.allow = Some(v)));
        }
        if let Some(v) = self.trusted_proxies {
            set(
                "--trusted-proxies",
                Box::new(move |c| c.network.trusted_proxies = Some(v)),
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
        let mut all = Vec::new();
        for i in &instances {
            all.push((i.name.clone(), i.settings()?));
        }
        manage::check_addresses(&all)?;
        return run(serve(all));
    }
    let mut raw = match &config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if storage.is_some() {
        raw.storage.url = storage;
    }
    for (_, apply) in overrides {
        apply(&mut raw);
    }
    let settings = raw.validate()?;
    run(serve(vec![(instance::DEFAULT.to_owned(), settings)]))
}

/// Serves every instance in one process: each address is bound once and its sites (instances)
/// are told apart by SNI and Host (see `registry_http::server`). Stops on SIGINT/SIGTERM after
/// in-flight requests finish.
async fn serve(instances: Vec<(String, Settings)>) -> anyhow::Result<()> {
    let mut by_address: BTreeMap<SocketAddr, Vec<Site>> = BTreeMap::new();
    let mut built = Vec::new();
    for (name, settings) in &instances {
        crate::manage::tokens::check(settings).with_context(|| format!("instance {name}"))?;
        let registry = build(settings)
            .await
            .with_context(|| format!("instance {name}"))?;
        registry.start_upkeep();
        let site = registry.site(name, settings.hostname.clone());
        if let Some(addr) = settings.plain_listen {
            // With ACME the plain listener answers HTTP-01 and redirects to HTTPS.
            let plain = registry
                .challenge_site(name, settings.hostname.clone(), settings.listen.port())
                .unwrap_or_else(|| Site {
                    tls: None,
                    ..site.clone()
                });
            by_address.entry(addr).or_default().push(plain);
        }
        by_address.entry(settings.listen).or_default().push(site);
        built.push((name, settings, registry));
    }
    let (stop, stopped) = watch::channel(false);
    let mut servers = Vec::new();
    for (addr, sites) in by_address {
        let sites = Sites::new(sites).with_context(|| format!("on {addr}"))?;
        let listener = bind(addr).await?;
        let local = listener.local_addr()?;
        for site in sites.iter() {
            let scheme = if site.tls.is_some() { "https" } else { "http" };
            let Some((_, settings, registry)) = built.iter().find(|(n, ..)| **n == site.name)
            else {
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
        servers.push(tokio::spawn(server::serve(
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

/// One instance as the library builds it from its settings; a metrics listener of its own
/// when the settings ask for one.
async fn build(settings: &Settings) -> anyhow::Result<Registry> {
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
        .mirrors(settings.mirrors.clone(), Default::default());
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
    let registry = builder.build()?;
    if let (MetricsSettings::Separate(addr), Some(m)) = (&settings.metrics, registry.metrics()) {
        let listener = bind(*addr).await.context("the metrics listener")?;
        tracing::info!("metrics on http://{addr}/metrics");
        let metrics_app = registry_http::metrics::router(m.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, metrics_app).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    Ok(registry)
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
