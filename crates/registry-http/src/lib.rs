//! `registry-http`: the OCI Distribution v1.1 / Docker Registry v2 API as an axum [`Router`],
//! the [`server`] that serves it (connections, TLS with SNI, bounds), and [`Registry`], which
//! builds a whole registry as `registry serve` runs one (start there to embed a registry).
//!
//! The API is one tower service (the router's fallback, so merged routes come first): each
//! `/v2/` path is parsed into an [`Endpoint`] once, and the guard, the metrics and the request
//! log run in the same future; handlers are thin calls into a [`registry_core::Storage`]
//! returning typed answers. Bodies stream in and out; every
//! response carries `Docker-Distribution-API-Version: registry/2.0`. The router alone, over any
//! storage:
//!
//! ```no_run
//! use std::sync::Arc;
//! use registry_core::{ObjectRegistry, StoreOptions};
//! use registry_http::{router, ApiConfig, RegistryState};
//!
//! # async fn run() {
//! let storage = ObjectRegistry::new(Arc::new(object_store::memory::InMemory::new()), StoreOptions::default());
//! let app = router(RegistryState::new(Arc::new(storage), ApiConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
mod blobs;
pub mod endpoint;
pub mod error;
pub mod guard;
mod listing;
pub mod log;
mod manifests;
pub mod metrics;
pub mod range;
mod registry;
mod responses;
pub mod server;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use registry_auth::Guard;
use registry_core::Storage;

pub use endpoint::{Access, Endpoint};
pub use error::{ApiError, ApiResult, ErrorCode};
mod acme;
pub mod audit;
mod events;
pub use registry::{
    AcmeState, AcmeTls, BuildError, MetricsExposure, Registry, RegistryBuilder, Running, SiteParts,
    Upkeep,
};
pub use registry_acme;
pub use registry_events;
pub use registry_proxy;

/// Settings of the API that are not storage.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Whether manifest, tag and blob DELETE are allowed (otherwise 405 UNSUPPORTED).
    pub delete_enabled: bool,
    /// The largest manifest accepted (413 above it).
    pub manifest_max_bytes: usize,
    /// The most entries one tags or catalog page returns.
    pub max_page_size: usize,
    /// `/healthz` answers 503 when storage has not answered within this.
    pub health_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            delete_enabled: true,
            manifest_max_bytes: 4 * 1024 * 1024,
            max_page_size: 10_000,
            health_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct RegistryState {
    /// The storage.
    pub storage: Arc<dyn Storage>,
    /// API settings.
    pub config: Arc<ApiConfig>,
    /// Where requests are counted, if anywhere.
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// Who may connect and do what; `None`: everyone, everything.
    pub guard: Option<Arc<Guard>>,
    /// Where events go, if anywhere (see [`registry_events`]).
    pub events: Option<Arc<registry_events::Notifier>>,
}

impl RegistryState {
    /// State over a storage.
    pub fn new(storage: Arc<dyn Storage>, config: ApiConfig) -> Self {
        RegistryState {
            storage,
            config: Arc::new(config),
            metrics: None,
            guard: None,
            events: None,
        }
    }

    /// Sends events of what requests do to `notifier`'s endpoints.
    pub fn with_events(mut self, notifier: Arc<registry_events::Notifier>) -> Self {
        self.events = Some(notifier);
        self
    }

    /// Puts `guard` in front of every request (see [`guard::guard_requests`]).
    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Records every request in `metrics` (serve them with [`metrics::router`]).
    pub fn with_metrics(mut self, metrics: Arc<metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// The registry API (`/v2/…`) and `GET /healthz`, behind the state's guard if it has one;
/// requests are recorded in the state's metrics, if it has any. The API is the router's
/// fallback, so routes merged into the result (such as [`metrics::router`]) take precedence
/// and are not guarded: use [`guarded`] for those.
pub fn router(state: RegistryState) -> Router {
    Router::new().fallback_service(Api::new(state, false))
}

/// What serves one site's requests: API paths (`/v2`, `/v2/…`, `/healthz`) go straight to the
/// API, everything else to a router whose fallback is the API (so unknown paths get its JSON
/// 404). Sending API paths through the router cost path matching and two boxed futures per
/// request (6 % of a manifest GET's CPU); the router's own routes (`/metrics`, `/auth/…`) are
/// never under the API's paths.
#[derive(Clone)]
pub struct App {
    api: Option<Api>,
    routes: Router,
}

impl App {
    /// The API over `api`, beside `routes` (and answering what they do not: its JSON 404).
    pub(crate) fn with_api(api: Api, routes: Router) -> App {
        App {
            routes: Router::new().fallback_service(api.clone()).merge(routes),
            api: Some(api),
        }
    }

    /// The same as one router.
    pub fn into_router(self) -> Router {
        self.routes
    }

    /// Answers `request`.
    pub async fn call(&self, request: axum::extract::Request) -> Response {
        use tower::ServiceExt;
        match &self.api {
            Some(api) if is_api_path(request.uri().path()) => api.answer(request).await,
            _ => match self.routes.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
        }
    }
}

impl From<Router> for App {
    fn from(routes: Router) -> App {
        App { api: None, routes }
    }
}

/// Whether the API answers `path` (including with its JSON 404 for unknown `/v2/…` paths).
fn is_api_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/") || path == "/healthz"
}

/// The API as one tower service: guard, metrics, request log and the API-version header run
/// in one future, boxed once per request. (As axum middleware layers, each layer cloned and
/// boxed the rest of the stack for every request: 44 allocations for `GET /v2/`.) Paths that
/// are not the API's get the API's JSON 404.
#[derive(Clone)]
pub(crate) struct Api {
    state: RegistryState,
    /// Whether it writes the request log (see [`log`]).
    log: bool,
}

impl Api {
    /// The API over `state`, writing the request log if `log`.
    pub(crate) fn new(state: RegistryState, log: bool) -> Api {
        Api { state, log }
    }

    async fn serve(&self, request: axum::extract::Request) -> Response {
        let state = &self.state;
        let guarded = |request| async move {
            let mut response = match &state.guard {
                Some(g) => guard::guard_around(g, request, |r| answer(state, r)).await,
                None => answer(state, request).await,
            };
            set_api_version(response.headers_mut());
            response
        };
        let tracked = |request| async move {
            match &state.metrics {
                Some(m) => metrics::track_around(m, request, guarded).await,
                None => guarded(request).await,
            }
        };
        if self.log {
            log::log_around(request, tracked).await
        } else {
            tracked(request).await
        }
    }
}

impl tower::Service<axum::extract::Request> for Api {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let api = self.clone();
        Box::pin(async move { Ok(api.answer(request).await) })
    }
}

impl Api {
    /// The answer to `request`, finished as axum finishes the answers of the routes it
    /// matches (a fallback service is left alone, and [`App`] bypasses the router): the length
    /// of a body that knows it, and no body at all for HEAD (HTTP/2 would send it).
    async fn answer(&self, request: axum::extract::Request) -> Response {
        let head = request.method() == Method::HEAD;
        let mut response = self.serve(request).await;
        if !response.headers().contains_key(CONTENT_LENGTH) {
            if let Some(n) = axum::body::HttpBody::size_hint(response.body()).exact() {
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        if head {
            *response.body_mut() = Body::empty();
        }
        response
    }
}

/// The answer to a request that passed the guard.
async fn answer(state: &RegistryState, request: axum::extract::Request) -> Response {
    let path = request.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        return dispatch(state, request).await;
    }
    if path == "/healthz" {
        return match *request.method() {
            Method::GET | Method::HEAD => healthz(state).await,
            _ => ApiError::new(ErrorCode::Unsupported, "method not supported here")
                .with_header("allow", HeaderValue::from_static("GET, HEAD"))
                .into_response(),
        };
    }
    ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response()
}

/// `routes` behind `guard`, if there is one; refusals carry the API-version header, as every
/// registry response does.
pub fn guarded<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    guard: Option<Arc<Guard>>,
) -> Router<S> {
    match guard {
        Some(g) => routes
            .layer(axum::middleware::from_fn_with_state(
                g,
                guard::guard_requests,
            ))
            .layer(axum::middleware::map_response(api_version)),
        None => routes,
    }
}

async fn api_version(mut response: Response) -> Response {
    set_api_version(response.headers_mut());
    response
}

/// Marks an answer as the registry's, as every answer of the API is
/// (`Docker-Distribution-API-Version: registry/2.0`).
pub(crate) fn set_api_version(headers: &mut HeaderMap) {
    const NAME: HeaderName = HeaderName::from_static("docker-distribution-api-version");
    const VALUE: HeaderValue = HeaderValue::from_static("registry/2.0");
    headers.insert(NAME, VALUE);
}

async fn healthz(state: &RegistryState) -> Response {
    let limit = state.config.health_timeout;
    match tokio::time::timeout(limit, state.storage.health()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response()
        }
        Err(_) => {
            tracing::warn!(timeout = ?limit, "health check failed: storage did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "storage not answering\n").into_response()
        }
    }
}

/// One request, as the handlers see it.
pub(crate) struct Req {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The caller, when a guard authenticated one.
    pub caller: Option<guard::Caller>,
    /// The connection (events and the audit trail name the client, events the scheme).
    pub connection: Option<guard::Connection>,
}

impl Req {
    /// All values of a query parameter, decoded.
    pub(crate) fn query_all(&self, key: &str) -> Vec<String> {
        form_urlencoded::parse(self.uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    /// The client's address: the guard's (after trusted proxies), else the connection's.
    pub(crate) fn client(&self) -> Option<std::net::IpAddr> {
        match (&self.caller, &self.connection) {
            (Some(c), _) => Some(c.address),
            (None, Some(conn)) => Some(conn.peer.ip()),
            (None, None) => None,
        }
    }

    /// The first value of a query parameter.
    pub(crate) fn query(&self, key: &str) -> Option<String> {
        self.query_all(key).into_iter().next()
    }

    /// A header as a string, if present and visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The declared `Content-Length`.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

async fn dispatch(state: &RegistryState, request: axum::extract::Request) -> Response {
    let (mut parts, body) = request.into_parts();
    // The guard has parsed the path already, when there is one.
    let endpoint = parts.extensions.remove::<Endpoint>();
    let req = Req {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        caller: parts.extensions.remove::<guard::Caller>(),
        connection: parts.extensions.get::<guard::Connection>().cloned(),
    };
    route(state, req, endpoint, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    state: &RegistryState,
    req: Req,
    endpoint: Option<Endpoint>,
    body: Body,
) -> ApiResult<Response> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => Endpoint::parse(req.uri.path())?,
    };
    let is_delete = req.method == Method::DELETE && endpoint.access(&req.method) == Access::Delete;
    if is_delete && !state.config.delete_enabled {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "deletion is disabled on this registry",
        ));
    }
    match audit::Audited::of(&req, &endpoint) {
        None => handle(state, &req, endpoint, body).await,
        Some(audited) => {
            let result = handle(state, &req, endpoint, body).await;
            audited.finish(&req, &result);
            result
        }
    }
}

/// The answer of the handler of `endpoint`.
async fn handle(
    s: &RegistryState,
    req: &Req,
    endpoint: Endpoint,
    body: Body,
) -> ApiResult<Response> {
    use Endpoint as E;
    let answer = match (&req.method, endpoint) {
        (&Method::GET | &Method::HEAD, E::Base) => base(),
        (&Method::GET, E::Catalog) => listing::catalog(s, req).await?.into_response(),
        (&Method::GET, E::Tags(name)) => listing::tags(s, req, name).await?.into_response(),
        (&Method::GET, E::Referrers(name, d)) => {
            listing::referrers(s, req, name, d).await?.into_response()
        }
        (&Method::GET | &Method::HEAD, E::Blob(name, d)) => {
            blobs::get(s, req, name, d).await?.into_response()
        }
        (&Method::DELETE, E::Blob(name, d)) => {
            blobs::delete(s, req, name, d).await?.into_response()
        }
        (&Method::POST, E::Uploads(name)) => uploads::start(s, req, body, name).await?,
        (&Method::GET, E::Upload(name, id)) => uploads::status(s, name, id).await?.into_response(),
        (&Method::PATCH, E::Upload(name, id)) => uploads::patch(s, req, body, name, id)
            .await?
            .into_response(),
        (&Method::PUT, E::Upload(name, id)) => uploads::finish(s, req, body, name, id)
            .await?
            .into_response(),
        (&Method::DELETE, E::Upload(name, id)) => {
            uploads::cancel(s, name, id).await?.into_response()
        }
        (&Method::GET | &Method::HEAD, E::Manifest(name, r)) => {
            manifests::get(s, req, name, r).await?.into_response()
        }
        (&Method::PUT, E::Manifest(name, r)) => {
            manifests::put(s, req, body, name, r).await?.into_response()
        }
        (&Method::DELETE, E::Manifest(name, r)) => {
            manifests::delete(s, req, name, r).await?.into_response()
        }
        (&Method::GET | &Method::HEAD | &Method::DELETE, E::InvalidReference(..)) => {
            return Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                "no manifest has that reference",
            ))
        }
        (&Method::PUT, E::InvalidReference(_, text)) => {
            return Err(match text.parse::<registry_core::Reference>() {
                Err(e) => e.into(),
                Ok(_) => ApiError::new(ErrorCode::TagInvalid, "invalid manifest reference"),
            })
        }
        (m, _) => {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("method {m} is not supported here"),
            ))
        }
    };
    Ok(answer)
}

fn base() -> Response {
    ([("content-type", "application/json")], "{}").into_response()
}
