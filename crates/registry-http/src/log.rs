//! The request log: one `tracing` event per request with method, path, status, bytes in and out,
//! duration, and (behind a guard) the client's address and identity. Query strings are left out
//! (they may carry upload state), and nothing from `Authorization` is ever logged.

use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use registry_auth::Escaped;

use crate::error::ServerFault;
use crate::guard::Attribution;

/// Middleware: `router.layer(axum::middleware::from_fn(registry_http::log::log_requests))`.
pub async fn log_requests(request: Request, next: Next) -> Response {
    log_around(request, |r| next.run(r)).await
}

/// Logs `request` as answered by `next` (the API service calls it without a middleware layer).
pub(crate) async fn log_around<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if !tracing::enabled!(tracing::Level::INFO) {
        // Only failures are logged: nothing to collect beforehand.
        // Clones of shared bytes, no copies.
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let response = next(request).await;
        if let Some(ServerFault { id, reason }) = response.extensions().get::<ServerFault>() {
            let path = Escaped(uri.path());
            let status = response.status().as_u16();
            tracing::error!(%method, %path, status, id, reason, "request failed");
        }
        return response;
    }
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let path = Escaped(&path);
    let bytes_in = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let response = next(request).await;
    let status = response.status().as_u16();
    let bytes_out = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| response.body().size_hint().exact())
        .unwrap_or(0);
    let ms = format_args!("{:.3}", start.elapsed().as_secs_f64() * 1000.0);
    let who = response.extensions().get::<Attribution>();
    let client = who.map(|a| a.address.to_string()).unwrap_or_default();
    let identity = who
        .and_then(|a| a.identity.as_ref())
        .map(|i| i.to_string())
        .unwrap_or_default();
    if let Some(ServerFault { id, reason }) = response.extensions().get::<ServerFault>() {
        tracing::error!(%method, %path, status, bytes_in, bytes_out, %ms, client, identity, id, reason, "request failed");
    } else {
        tracing::info!(%method, %path, status, bytes_in, bytes_out, %ms, client, identity, "request");
    }
    response
}
