//! `registry serve`: builds storage from settings, serves the API until SIGINT/SIGTERM, and then
//! lets in-flight requests finish. Uploads are staged and renamed, so a stop at any moment
//! leaves no partial object visible.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use registry_core::GcOptions;
use registry_http::server::{self, Site, Sites};
use registry_http::{ApiConfig, MetricsExposure, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{MetricsSettings, Settings};

/// Serves every instance in one process: each address is bound once and its sites (instances)
/// are told apart by SNI and Host (see `registry_http::server`). Stops on SIGINT/SIGTERM after
/// in-flight requests finish.
pub async fn serve(instances: Vec<(String, Settings)>) -> anyhow::Result<()> {
    let mut by_address: BTreeMap<SocketAddr, Vec<Site>> = BTreeMap::new();
    let mut built = Vec::new();
    for (name, settings) in &instances {
        let registry = build(settings)
            .await
            .with_context(|| format!("instance {name}"))?;
        registry.start_upkeep();
        let site = registry.site(name, settings.hostname.clone());
        if let Some(addr) = settings.plain_listen {
            let plain = Site {
                tls: None,
                ..site.clone()
            };
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
        .api(ApiConfig {
            delete_enabled: settings.delete_enabled,
            manifest_max_bytes: settings.manifest_max_bytes,
            ..ApiConfig::default()
        })
        .guard(settings.guard.clone())
        .metrics(metrics)
        .upload_max_age(settings.upload_max_age)
        .connection(settings.connection.clone());
    if let Some(every) = settings.gc.interval {
        builder = builder.collect_garbage(every, gc_options(settings));
    }
    if let Some(files) = &settings.tls {
        builder = builder.tls(files.clone());
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

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
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
