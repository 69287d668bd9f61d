//! The guard in front of the API, as middleware: the client's address is admitted first, then
//! the caller is authenticated, then the parsed endpoint is authorized, so a denied address never
//! reaches authentication and an unauthenticated request never reaches storage. `/healthz` only
//! needs an admitted address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_auth::tls::ClientCertificate;
use registry_auth::{Action, Guard, Identity, Refusal};

use crate::{ApiError, Endpoint, ErrorCode};

/// What the server knows of a request's connection; servers insert it into every request's
/// extensions (without it, axum's `ConnectInfo<SocketAddr>` is used for the address).
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The client certificate verified at the TLS handshake, if any.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// The authenticated caller, for handlers that decide per repository (catalog, mount).
#[derive(Clone)]
pub struct Caller {
    /// Who.
    pub identity: Identity,
    /// The client's address, after trusted proxies.
    pub address: IpAddr,
    guard: Arc<Guard>,
}

impl Caller {
    /// Whether the caller may do `action` on `repository`.
    pub fn may(&self, action: Action, repository: &str) -> bool {
        self.guard.may(&self.identity, action, Some(repository))
    }

    /// Whether some repositories may be hidden from this caller.
    pub fn is_restricted(&self) -> bool {
        self.guard.restricts(&self.identity)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::Denied(message) => ApiError::new(ErrorCode::Denied, message),
            Refusal::Unauthenticated { realm } => {
                let challenge = format!("Basic realm=\"{}\"", realm.replace(['"', '\\'], ""));
                let err = ApiError::new(ErrorCode::Unauthorized, "authentication required");
                match HeaderValue::from_str(&challenge) {
                    Ok(v) => err.with_header("www-authenticate", v),
                    Err(_) => err,
                }
            }
            Refusal::TooManyAttempts { retry_after } => {
                let secs = retry_after.max(Duration::from_secs(1)).as_secs_f64().ceil();
                ApiError::new(
                    ErrorCode::TooManyRequests,
                    "too many failed logins; try again later",
                )
                .with_header("retry-after", HeaderValue::from(secs as u64))
            }
        }
    }
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Who a response went to, as far as the guard found out; put in the response's extensions for
/// the request log.
#[derive(Clone, Debug)]
pub struct Attribution {
    /// The client's address, after trusted proxies.
    pub address: IpAddr,
    /// The identity, once authenticated.
    pub identity: Option<Identity>,
}

/// Middleware: `router.layer(axum::middleware::from_fn_with_state(guard, guard_requests))`.
pub async fn guard_requests(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut attribution = None;
    let mut response = match check(&guard, &mut request, &mut attribution).await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    if let Some(a) = attribution {
        response.extensions_mut().insert(a);
    }
    response
}

async fn check(
    guard: &Arc<Guard>,
    request: &mut Request,
    attribution: &mut Option<Attribution>,
) -> Result<(), ApiError> {
    let connection = request.extensions().get::<Connection>().cloned();
    // The server's connection, else axum's connect info (`into_make_service_with_connect_info`,
    // or `MockConnectInfo` in tests).
    let extensions = request.extensions();
    let peer = connection
        .as_ref()
        .map(|c| c.peer)
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
        .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0));
    let headers = request.headers();
    let address = guard.admit(
        peer.map(|p| p.ip()),
        joined(headers, "forwarded").as_deref(),
        joined(headers, "x-forwarded-for").as_deref(),
    )?;
    *attribution = Some(Attribution {
        address,
        identity: None,
    });
    let path = request.uri().path();
    if path == "/healthz" {
        return Ok(());
    }
    let certificate = connection.as_ref().and_then(|c| c.certificate.as_deref());
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let identity = guard
        .authenticate(address, certificate, authorization)
        .await?;
    *attribution = Some(Attribution {
        address,
        identity: Some(identity.clone()),
    });
    if path == "/v2" || path.starts_with("/v2/") {
        match Endpoint::parse(path) {
            Ok(endpoint) => {
                let action = endpoint.access(request.method());
                let repository = endpoint.repository().map(|r| r.as_str());
                guard.authorize(&identity, action, repository)?;
                request.extensions_mut().insert(endpoint);
            }
            Err(e) => {
                guard.authorize(&identity, Action::Pull, None)?;
                return Err(e);
            }
        }
    } else {
        guard.authorize(&identity, Action::Pull, None)?;
    }
    request.extensions_mut().insert(Caller {
        identity,
        address,
        guard: guard.clone(),
    });
    Ok(())
}
