//! The guard in front of the API, as middleware: the client's address is admitted first, then
//! the caller is authenticated, then the parsed endpoint is authorized, so a denied address never
//! reaches authentication and an unauthenticated request never reaches storage. `/healthz` only
//! needs an admitted address. A refusal asks for credentials the way the guard takes them: a
//! Basic challenge, or a Bearer challenge naming the scope the request needed (the Docker token
//! specification), so that clients ask the token service for exactly that.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use registry_auth::tls::ClientCertificate;
use registry_auth::{Action, BearerError, Challenge, Guard, Identity, Refusal};

use crate::{ApiError, Endpoint, ErrorCode};

/// What the server knows of a request's connection; servers insert it into every request's
/// extensions (without it, axum's `ConnectInfo<SocketAddr>` is used for the address).
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The client certificate verified at the TLS handshake, if any.
    pub certificate: Option<Arc<ClientCertificate>>,
    /// Whether the connection is TLS.
    pub tls: bool,
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
        refused(r, None)
    }
}

/// A value inside a quoted challenge parameter: no quotes, backslashes or control characters.
fn quotable(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
        .collect()
}

/// The `WWW-Authenticate` value of a challenge; `scope` is what the request needed.
pub fn challenge_header(challenge: &Challenge, scope: Option<&str>) -> String {
    match challenge {
        Challenge::Basic { realm } => format!("Basic realm=\"{}\"", quotable(realm)),
        Challenge::Bearer {
            realm,
            service,
            error,
        } => {
            let mut header = format!(
                "Bearer realm=\"{}\",service=\"{}\"",
                quotable(realm),
                quotable(service)
            );
            if let Some(scope) = scope {
                header.push_str(&format!(",scope=\"{}\"", quotable(scope)));
            }
            match error {
                None => {}
                Some(BearerError::InsufficientScope) => {
                    header.push_str(",error=\"insufficient_scope\"");
                }
                Some(BearerError::InvalidToken(why)) => header.push_str(&format!(
                    ",error=\"invalid_token\",error_description=\"{}\"",
                    quotable(why)
                )),
            }
            header
        }
    }
}

/// The API error of a refusal, with the challenge for `scope` when it asks for credentials.
pub(crate) fn refused(r: Refusal, scope: Option<&str>) -> ApiError {
    match r {
        Refusal::Denied(message) => ApiError::new(ErrorCode::Denied, message),
        Refusal::Unauthenticated { challenge } => {
            let message = match &challenge {
                Challenge::Bearer {
                    error: Some(BearerError::InvalidToken(why)),
                    ..
                } => format!("authentication required: {why}"),
                Challenge::Bearer {
                    error: Some(BearerError::InsufficientScope),
                    ..
                } => "the token does not grant this".to_owned(),
                _ => "authentication required".to_owned(),
            };
            let err = ApiError::new(ErrorCode::Unauthorized, message);
            match HeaderValue::from_str(&challenge_header(&challenge, scope)) {
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

/// The token scope a request on `endpoint` needs (the Docker token specification's form):
/// `repository:<name>:pull` to read, `…:pull,push` to write (clients read back what they push),
/// `…:delete` to delete, plus `repository:<source>:pull` for a cross-repository mount;
/// `registry:catalog:*` for the catalog; nothing for `/v2/`.
pub fn needed_scope(endpoint: &Endpoint, method: &Method, query: Option<&str>) -> Option<String> {
    let repository = match endpoint {
        Endpoint::Base => return None,
        Endpoint::Catalog => return Some("registry:catalog:*".to_owned()),
        other => other.repository()?,
    };
    let actions = match endpoint.access(method) {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    let mut scope = format!("repository:{repository}:{actions}");
    if let (Endpoint::Uploads(_), &Method::POST) = (endpoint, method) {
        let from = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.into_owned());
        // Only a valid name goes into a header.
        if let Some(from) = from.filter(|f| f.parse::<registry_core::RepoName>().is_ok()) {
            scope.push_str(&format!(" repository:{from}:pull"));
        }
    }
    Some(scope)
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
    request: Request,
    next: Next,
) -> Response {
    guard_around(&guard, request, |r| next.run(r)).await
}

/// Answers `request` by `next` if `guard` lets it through (the API service calls it without a
/// middleware layer).
pub(crate) async fn guard_around<F, Fut>(
    guard: &Arc<Guard>,
    mut request: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut attribution = None;
    let mut response = match check(guard, &mut request, &mut attribution).await {
        Ok(()) => next(request).await,
        Err(e) => e.into_response(),
    };
    if let Some(a) = attribution {
        response.extensions_mut().insert(a);
    }
    response
}

/// The client's address, if `guard` admits it (after trusted proxies), from the server's
/// connection or axum's connect info (`into_make_service_with_connect_info`, or
/// `MockConnectInfo` in tests).
pub fn admitted(guard: &Guard, request: &Request) -> Result<IpAddr, Refusal> {
    let extensions = request.extensions();
    let peer = extensions
        .get::<Connection>()
        .map(|c| c.peer)
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
        .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0));
    let headers = request.headers();
    guard.admit(
        peer.map(|p| p.ip()),
        joined(headers, "forwarded").as_deref(),
        joined(headers, "x-forwarded-for").as_deref(),
    )
}

async fn check(
    guard: &Arc<Guard>,
    request: &mut Request,
    attribution: &mut Option<Attribution>,
) -> Result<(), ApiError> {
    let address = admitted(guard, request)?;
    *attribution = Some(Attribution {
        address,
        identity: None,
    });
    let path = request.uri().path();
    if path == "/healthz" {
        return Ok(());
    }
    let api = path == "/v2" || path.starts_with("/v2/");
    // The metrics layer may have parsed it already.
    let parsed = request.extensions_mut().remove::<Endpoint>();
    let path = request.uri().path();
    let endpoint = api.then(|| parsed.map_or_else(|| Endpoint::parse(path), Ok));
    let scope = match &endpoint {
        Some(Ok(e)) => needed_scope(e, request.method(), request.uri().query()),
        _ => None,
    };
    let refuse = |r: Refusal| refused(r, scope.as_deref());
    let certificate = request
        .extensions()
        .get::<Connection>()
        .and_then(|c| c.certificate.clone());
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let identity = guard
        .authenticate(address, certificate.as_deref(), authorization)
        .await
        .map_err(refuse)?;
    *attribution = Some(Attribution {
        address,
        identity: Some(identity.clone()),
    });
    match endpoint {
        Some(Ok(Endpoint::Catalog)) => {
            guard.authorize_catalog(&identity).map_err(refuse)?;
            request.extensions_mut().insert(Endpoint::Catalog);
            // Listed: what this identity may pull (for a token, see `catalog_identity`).
            request.extensions_mut().insert(Caller {
                identity: guard.catalog_identity(&identity).await,
                address,
                guard: guard.clone(),
            });
            return Ok(());
        }
        Some(Ok(endpoint)) => {
            let action = endpoint.access(request.method());
            let repository = endpoint.repository().map(|r| r.as_str());
            if let Err(r) = guard.authorize(&identity, action, repository) {
                if action != Action::Pull {
                    crate::audit::refused(action, repository, &identity, address, &r);
                }
                return Err(refuse(r));
            }
            request.extensions_mut().insert(endpoint);
        }
        Some(Err(e)) => {
            guard
                .authorize(&identity, Action::Pull, None)
                .map_err(refuse)?;
            return Err(e);
        }
        None => guard
            .authorize(&identity, Action::Pull, None)
            .map_err(refuse)?,
    }
    request.extensions_mut().insert(Caller {
        identity,
        address,
        guard: guard.clone(),
    });
    Ok(())
}
