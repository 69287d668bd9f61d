//! The plain listener of an instance whose certificates come from ACME with HTTP-01: answers
//! the certificate authority's `GET /.well-known/acme-challenge/<token>` (on whichever node
//! shares the order's state) and redirects every other request to HTTPS on one of the
//! instance's own names (never to a name a client made up).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use registry_acme::Acme;

#[derive(Clone)]
struct Challenges {
    acme: Acme,
    https_port: u16,
}

/// The router of the plain listener; see the module documentation.
pub(crate) fn challenge_router(acme: Acme, https_port: u16) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(answer))
        .fallback(redirect)
        .with_state(Challenges { acme, https_port })
}

async fn answer(State(c): State<Challenges>, Path(token): Path<String>) -> Response {
    match c.acme.http01(&token).await {
        Some(key_authorization) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn redirect(State(c): State<Challenges>, headers: HeaderMap, uri: Uri) -> Response {
    let names = &c.acme.settings().names;
    let asked = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h, |(host, _)| host)
                .to_ascii_lowercase()
        });
    let host = asked
        .filter(|h| names.contains(h))
        .or_else(|| names.iter().find(|n| !n.starts_with("*.")).cloned())
        .unwrap_or_default();
    let port = match c.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("https://{host}{port}{path}"))],
    )
        .into_response()
}
