//! Prometheus metrics: requests by endpoint and status, latency histograms, bytes in and out,
//! upload requests in progress, and storage operation latency and errors (through
//! [`registry_core::observe::StoreObserver`]). Served as OpenMetrics text by [`Metrics::render`].
//! Label values are endpoint kinds and methods, never repository names or digests, so the
//! number of series stays fixed.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use registry_core::observe::StoreObserver;

use crate::endpoint::Endpoint;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Connections of the listeners serving an instance, recorded by the server (which knows the
/// connections; the API only sees requests). Clones share their values.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    drains: Family<OutcomeLabels, Counter>,
}

impl ConnectionMetrics {
    /// A connection was accepted and admitted.
    pub fn opened(&self) {
        self.open.inc();
    }

    /// An admitted connection ended.
    pub fn ended(&self) {
        self.open.dec();
    }

    /// A connection was refused at accept (`total` or `per_address` cap).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A connection or request was ended by a timeout or the shutdown deadline.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// An unread request body after an early answer was read to its end (`true`) or given up.
    pub fn drained(&self, whole: bool) {
        let outcome = if whole { "whole" } else { "gave_up" };
        self.drains.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Open client connections on the listeners of this instance",
            self.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept by a cap (total, per_address)",
            self.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections or requests ended by a bound (handshake_timeout, idle_timeout, send_timeout, body_timeout, shutdown)",
            self.closed.clone(),
        );
        registry.register(
            "unread_bodies",
            "Request bodies left unread by an early answer, by what draining them did (whole, gave_up)",
            self.drains.clone(),
        );
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 16 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 17))
}

/// The registry's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<EndpointLabels>,
    bytes_in: Counter<u64, AtomicU64>,
    bytes_out: Counter<u64, AtomicU64>,
    uploads_in_progress: Gauge,
    storage_durations: HistogramFamily<OpLabels>,
    storage_errors: Family<OpLabels, Counter>,
    gc_runs: Family<OutcomeLabels, Counter>,
    gc_deleted: Family<KindLabels, Counter>,
    gc_freed_bytes: Counter<u64, AtomicU64>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    mirrors: Arc<Counted<registry_proxy::Proxy>>,
    events: Arc<Counted<registry_events::Notifier>>,
    connections: ConnectionMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("registry");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = HistogramFamily::<EndpointLabels>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let bytes_in = Counter::<u64, AtomicU64>::default();
        let bytes_out = Counter::<u64, AtomicU64>::default();
        let uploads_in_progress = Gauge::default();
        let storage_durations = HistogramFamily::<OpLabels>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let storage_errors = Family::<OpLabels, Counter>::default();
        let gc_runs = Family::<OutcomeLabels, Counter>::default();
        let gc_deleted = Family::<KindLabels, Counter>::default();
        let gc_freed_bytes = Counter::<u64, AtomicU64>::default();
        registry.register(
            "gc_runs",
            "Scheduled garbage collections, by outcome (ok, busy: another node collected, error)",
            gc_runs.clone(),
        );
        registry.register(
            "gc_deleted",
            "Objects deleted by garbage collection, by kind (manifest, link, blob)",
            gc_deleted.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes of blobs and manifests deleted by garbage collection",
            gc_freed_bytes.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by endpoint, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by endpoint and method",
            durations.clone(),
        );
        registry.register(
            "http_request_body_bytes",
            "Request body bytes received",
            bytes_in.clone(),
        );
        registry.register(
            "http_response_body_bytes",
            "Response body bytes sent",
            bytes_out.clone(),
        );
        registry.register(
            "uploads_in_progress",
            "Upload requests (POST, PATCH, PUT) being served",
            uploads_in_progress.clone(),
        );
        registry.register(
            "storage_operation_duration_seconds",
            "Storage backend operation latency",
            storage_durations.clone(),
        );
        registry.register(
            "storage_operation_errors",
            "Storage backend operations that failed",
            storage_errors.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the served certificate expires (Unix time), by its first name",
            certificate_expiry.clone(),
        );
        let connections = ConnectionMetrics::default();
        connections.register(&mut registry);
        let mirrors = Arc::new(Counted::default());
        registry.register_collector(Box::new(mirrors.clone()));
        let events = Arc::new(Counted::default());
        registry.register_collector(Box::new(events.clone()));
        Metrics {
            registry,
            connections,
            requests,
            durations,
            bytes_in,
            bytes_out,
            uploads_in_progress,
            storage_durations,
            storage_errors,
            gc_runs,
            gc_deleted,
            gc_freed_bytes,
            certificate_expiry,
            mirrors,
            events,
        }
    }

    /// Shows the counters of `notifier`'s endpoints (events sent, failed attempts, events
    /// dropped, events queued, labelled by endpoint); replaces the notifier counted before.
    pub fn count_events(&self, notifier: Arc<registry_events::Notifier>) {
        self.events.set(notifier);
    }

    /// Shows the counters of `proxy`'s mirrors (hits, misses, upstream bytes, errors, stale
    /// answers, labelled by prefix and upstream); replaces the proxy counted before (a reload
    /// builds a new one, whose counters start from zero).
    pub fn count_mirrors(&self, proxy: Arc<registry_proxy::Proxy>) {
        self.mirrors.set(proxy);
    }

    /// Records the expiry (Unix seconds) of the certificate served for `name`.
    pub fn record_certificate(&self, name: &str, expires_unix: u64) {
        self.certificate_expiry
            .get_or_create(&CertificateLabels {
                name: name.to_owned(),
            })
            .set(i64::try_from(expires_unix).unwrap_or(i64::MAX));
    }

    /// Records a garbage collection: its outcome, what it deleted by kind, the bytes freed.
    pub fn record_gc(&self, outcome: &'static str, deleted: &[(&'static str, u64)], bytes: u64) {
        self.gc_runs.get_or_create(&OutcomeLabels { outcome }).inc();
        for &(kind, n) in deleted {
            self.gc_deleted
                .get_or_create(&KindLabels { kind })
                .inc_by(n);
        }
        self.gc_freed_bytes.inc_by(bytes);
    }

    /// The connection metrics, for the server to record in.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Something whose counters are read at each scrape (the pull-through cache, the notifier),
/// replaced when a reload builds a new one.
struct Counted<T>(std::sync::RwLock<Option<Arc<T>>>);

impl<T> Default for Counted<T> {
    fn default() -> Self {
        Counted(std::sync::RwLock::new(None))
    }
}

impl<T> Counted<T> {
    fn set(&self, counted: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(counted);
    }

    fn get(&self) -> Option<Arc<T>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<T> std::fmt::Debug for Counted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

/// The pull-through cache's counters.
impl prometheus_client::collector::Collector for Counted<registry_proxy::Proxy> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use registry_proxy::StatsSnapshot;
        let Some(proxy) = self.get() else {
            return Ok(());
        };
        let mirrors = proxy.mirrors();
        type Read = fn(&StatsSnapshot) -> u64;
        let families: [(&str, &str, Read); 5] = [
            (
                "mirror_hits",
                "Manifests and blobs answered from a mirror's cache",
                |s| s.hits,
            ),
            (
                "mirror_misses",
                "Manifests and blobs fetched from a mirror's upstream",
                |s| s.misses,
            ),
            (
                "mirror_upstream_bytes",
                "Bytes read from a mirror's upstream",
                |s| s.upstream_bytes,
            ),
            (
                "mirror_errors",
                "Upstream requests and fetches of a mirror that failed",
                |s| s.errors,
            ),
            (
                "mirror_stale",
                "Cached answers given because a mirror's upstream could not be asked",
                |s| s.stale,
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for m in &mirrors {
                let labels = MirrorLabels {
                    prefix: m.prefix.clone(),
                    upstream: m.upstream.clone(),
                };
                let sample = family.encode_family(&labels)?;
                ConstCounter::new(read(&m.stats)).encode(sample)?;
            }
        }
        Ok(())
    }
}

/// The notifier's counters.
impl prometheus_client::collector::Collector for Counted<registry_events::Notifier> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        use registry_events::EndpointSnapshot;
        let Some(notifier) = self.get() else {
            return Ok(());
        };
        let stats = notifier.stats();
        type Read = fn(&EndpointSnapshot) -> u64;
        let families: [(&str, &str, MetricType, Read); 4] = [
            ("events_sent", "Events an endpoint accepted", MetricType::Counter, |s| s.sent),
            (
                "events_failed",
                "Failed attempts at delivering events to an endpoint",
                MetricType::Counter,
                |s| s.failed,
            ),
            (
                "events_dropped",
                "Events dropped unsent: queue full, expired, or retries spent",
                MetricType::Counter,
                |s| s.dropped,
            ),
            (
                "events_queued",
                "Events waiting for an endpoint (in memory, and in storage as this node last listed)",
                MetricType::Gauge,
                |s| s.queued,
            ),
        ];
        for (name, help, kind, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for s in &stats {
                let labels = NotifyLabels {
                    endpoint: s.name.clone(),
                };
                let sample = family.encode_family(&labels)?;
                match kind {
                    MetricType::Gauge => {
                        ConstGauge::new(i64::try_from(read(s)).unwrap_or(i64::MAX))
                            .encode(sample)?
                    }
                    _ => ConstCounter::new(read(s)).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    prefix: String,
    upstream: String,
}

impl StoreObserver for Metrics {
    fn observe(&self, op: &'static str, elapsed: Duration, ok: bool) {
        let labels = OpLabels { op };
        self.storage_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.storage_errors.get_or_create(&labels).inc();
        }
    }
}

fn endpoint_kind(endpoint: &Result<Endpoint, crate::ApiError>, path: &str) -> &'static str {
    match endpoint {
        Ok(Endpoint::Base) => "base",
        Ok(Endpoint::Catalog) => "catalog",
        Ok(Endpoint::Tags(_)) => "tags",
        Ok(Endpoint::Manifest(..) | Endpoint::InvalidReference(..)) => "manifest",
        Ok(Endpoint::Blob(..)) => "blob",
        Ok(Endpoint::Uploads(_) | Endpoint::Upload(..)) => "upload",
        Ok(Endpoint::Referrers(..)) => "referrers",
        Err(_) if path == "/healthz" || path == "/metrics" => "ops",
        Err(_) => "invalid",
    }
}

/// The method as a label: the registry's methods by name, anything else as `other` (a client
/// must not be able to make labels up).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::PUT => "PUT",
        M::POST => "POST",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Decrements the gauge when the request ends, also when the client goes away mid-upload.
struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware that records every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    track_around(&metrics, request, |r| next.run(r)).await
}

/// Records `request` as answered by `next` (the API service calls it without a middleware
/// layer).
pub(crate) async fn track_around<F, Fut>(
    metrics: &Metrics,
    mut request: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let start = Instant::now();
    // Parsed once: the guard and the handler take it from the extensions.
    let endpoint = match request.extensions_mut().remove::<Endpoint>() {
        Some(e) => Ok(e),
        None => Endpoint::parse(request.uri().path()),
    };
    let kind = endpoint_kind(&endpoint, request.uri().path());
    if let Ok(e) = endpoint {
        request.extensions_mut().insert(e);
    }
    let method = method_label(request.method());
    let _in_progress = (kind == "upload" && method != "GET" && method != "DELETE").then(|| {
        metrics.uploads_in_progress.inc();
        InProgress(metrics.uploads_in_progress.clone())
    });
    let request = if request.body().size_hint().exact() == Some(0) {
        request
    } else {
        let bytes_in = metrics.bytes_in.clone();
        request.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    bytes_in.inc_by(data.len() as u64);
                }
                frame
            }))
        })
    };
    let response = next(request).await;
    let status = response.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint: kind,
            method,
            status,
        })
        .inc();
    metrics
        .durations
        .get_or_create(&EndpointLabels {
            endpoint: kind,
            method,
        })
        .observe(start.elapsed().as_secs_f64());
    let bytes_out = metrics.bytes_out.clone();
    response.map(|body| {
        // Bodies of known size (errors, manifests, small JSON) are counted at once and left
        // unwrapped: wrapping would hide their size, and with it their Content-Length.
        if let Some(n) = body.size_hint().exact() {
            bytes_out.inc_by(n);
            return body;
        }
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                bytes_out.inc_by(data.len() as u64);
            }
            frame
        }))
    })
}

/// `GET /metrics`, to merge into the API router or serve on a listener of its own.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .with_state(metrics)
}

async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_storage_and_kinds() {
        let m = Metrics::new();
        m.observe("put", Duration::from_millis(3), true);
        m.observe("get", Duration::from_millis(1), false);
        let text = m.render();
        assert!(
            text.contains("registry_storage_operation_duration_seconds_count{op=\"put\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("registry_storage_operation_errors_total{op=\"get\"} 1"),
            "{text}"
        );
        let kind = |path: &str| endpoint_kind(&Endpoint::parse(path), path);
        assert_eq!(kind("/v2/a/blobs/uploads/"), "upload");
        assert_eq!(kind("/v2/a/tags/list"), "tags");
        assert_eq!(kind("/nope"), "invalid");
        assert_eq!(kind("/healthz"), "ops");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
        let made_up = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(
            method_label(&made_up),
            "other",
            "clients cannot make labels up"
        );
    }
}
