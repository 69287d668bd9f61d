//! The built-in token service at `/auth/token`, as the Docker token authentication
//! specification and its OAuth2 variant describe it. It grants the intersection of what was
//! asked and what the caller may do (never more), signs it into a short-lived JWT, and, when
//! asked for offline access, adds a refresh token that `docker login` keeps instead of the
//! password.
//!
//! - `GET /auth/token?service=…&scope=…[&offline_token=true]` with HTTP Basic credentials (an
//!   htpasswd user, or a scoped token's name and secret), or without any for anonymous rights.
//! - `POST /auth/token` with a form: `grant_type=password` (`username`, `password`) or
//!   `grant_type=refresh_token` (`refresh_token`), `service`, `scope`, `client_id`, and
//!   `access_type=offline` for a refresh token.
//!
//! - `GET /auth/jwks`: the public keys (current and previous), for services that verify the
//!   registry's tokens themselves.
//!
//! Answers are `{"token", "access_token", "expires_in", "issued_at"[, "refresh_token"]}`;
//! refusals are OAuth2 errors (`error`, `error_description`) that also carry the registry's
//! `errors` list, so every client shows the reason. Failed logins go through the guard's brake.

pub mod oidc;
pub mod records;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use registry_auth::token::{scope, Scope, TokenIssuer, TokenVerifier};
use registry_auth::{Guard, Identity, Refusal};
use serde_json::json;

use crate::guard::{admitted, Attribution};

/// Refresh tokens (`docker login`'s stored identity) live this long.
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The largest form `POST /auth/token` reads.
const MAX_FORM: usize = 64 * 1024;

/// The token service of one instance.
pub struct TokenService {
    issuer: Arc<TokenIssuer>,
    refresh: TokenVerifier,
    guard: Arc<Guard>,
    service: String,
    basic_realm: String,
}

impl TokenService {
    /// Issues tokens for `service` with `issuer`, to callers `guard` authenticates (it also
    /// decides what they may be granted); `basic_realm` names the Basic challenge.
    pub fn new(
        issuer: Arc<TokenIssuer>,
        guard: Arc<Guard>,
        service: &str,
        basic_realm: &str,
    ) -> TokenService {
        let refresh = TokenVerifier::own(issuer.issuer(), service, issuer.keys().clone());
        TokenService {
            issuer,
            refresh,
            guard,
            service: service.to_owned(),
            basic_realm: basic_realm.to_owned(),
        }
    }

    /// `GET` and `POST /auth/token`, and `GET /auth/jwks` (the public keys, for services that
    /// verify this registry's tokens themselves).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/auth/token", get(get_token).post(post_token))
            .route("/auth/jwks", get(jwks))
            .with_state(self)
    }

    /// The audience of refresh tokens: never the service, so they are never access tokens.
    fn refresh_audience(&self) -> String {
        format!("refresh:{}", self.service)
    }
}

/// A refusal of the token endpoint.
struct Refused {
    status: StatusCode,
    error: &'static str,
    description: String,
    challenge: Option<String>,
    retry_after: Option<u64>,
}

impl Refused {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Refused {
        Refused {
            status,
            error,
            description: description.into(),
            challenge: None,
            retry_after: None,
        }
    }

    fn bad_request(error: &'static str, description: impl Into<String>) -> Refused {
        Refused::new(StatusCode::BAD_REQUEST, error, description)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
            StatusCode::FORBIDDEN => "DENIED",
            StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
            _ => "UNSUPPORTED",
        };
        let body = json!({
            "error": self.error,
            "error_description": self.description,
            "errors": [{ "code": code, "message": self.description }],
        });
        let mut response = (self.status, json_body(&body)).into_response();
        let headers = response.headers_mut();
        if let Some(v) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn json_body(value: &serde_json::Value) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

/// What a request to the token endpoint asks for.
#[derive(Default)]
struct Ask {
    service: Option<String>,
    scopes: Vec<String>,
    offline: bool,
}

impl TokenService {
    fn basic_challenge(&self) -> String {
        crate::guard::challenge_header(
            &registry_auth::Challenge::Basic {
                realm: self.basic_realm.clone(),
            },
            None,
        )
    }

    /// 401 asking for credentials again.
    fn unauthorized(&self, error: &'static str, description: impl Into<String>) -> Refused {
        Refused {
            challenge: Some(self.basic_challenge()),
            ..Refused::new(StatusCode::UNAUTHORIZED, error, description)
        }
    }

    fn refusal(&self, refusal: Refusal) -> Refused {
        match refusal {
            Refusal::Denied(why) => Refused::new(StatusCode::FORBIDDEN, "access_denied", why),
            Refusal::Unauthenticated { .. } => {
                self.unauthorized("invalid_grant", "wrong user name or password")
            }
            Refusal::TooManyAttempts { retry_after } => Refused {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Refused::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow_down",
                    "too many failed logins; try again later",
                )
            },
        }
    }

    /// Issues what `identity` may have of `ask`.
    fn answer(&self, identity: &Identity, ask: &Ask) -> Result<Response, Refused> {
        if let Some(service) = ask.service.as_deref().filter(|s| *s != self.service) {
            return Err(Refused::bad_request(
                "invalid_request",
                format!(
                    "tokens here are for service {:?}, not {service:?}",
                    self.service
                ),
            ));
        }
        let requested: Vec<Scope> = scope::parse_requested(&ask.scopes)
            .map_err(|e| Refused::bad_request("invalid_scope", e.to_string()))?;
        let granted = self.guard.grant(identity, &requested);
        let scope_text: Vec<String> = granted.iter().map(Scope::to_string).collect();
        let subject = identity.subject();
        let failed = |e: registry_auth::Error| {
            tracing::error!(error = %e, "cannot sign a token");
            Refused::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot sign a token",
            )
        };
        let issued = self
            .issuer
            .issue(subject, &self.service, granted)
            .map_err(failed)?;
        let mut body = json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued.issued_at,
            "scope": scope_text.join(" "),
        });
        if ask.offline && *identity != Identity::Anonymous {
            let refresh = self
                .issuer
                .issue_for(
                    identity.login_name(),
                    &self.refresh_audience(),
                    Vec::new(),
                    REFRESH_LIFETIME,
                )
                .map_err(failed)?;
            body["refresh_token"] = json!(refresh.token);
        }
        let mut response = json_body(&body).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// Runs `handle` for an admitted client and attributes the answer for the request log.
async fn attributed<F, Fut>(svc: &TokenService, request: Request, handle: F) -> Response
where
    F: FnOnce(std::net::IpAddr, Request) -> Fut,
    Fut: std::future::Future<Output = (Option<Identity>, Result<Response, Refused>)>,
{
    let address = match admitted(&svc.guard, &request) {
        Ok(a) => a,
        Err(r) => return svc.refusal(r).into_response(),
    };
    let (identity, answer) = handle(address, request).await;
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    response
        .extensions_mut()
        .insert(Attribution { address, identity });
    response
}

async fn jwks(State(svc): State<Arc<TokenService>>) -> Response {
    let mut response = json_body(&svc.issuer.keys().jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

async fn get_token(State(svc): State<Arc<TokenService>>, request: Request) -> Response {
    let service = svc.clone();
    attributed(&svc, request, |address, request| async move {
        let svc = service;
        let query = request.uri().query().unwrap_or("");
        let mut ask = Ask::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "service" if ask.service.is_none() => ask.service = Some(v.into_owned()),
                "scope" => ask.scopes.push(v.into_owned()),
                "offline_token" => ask.offline = v == "true",
                _ => {}
            }
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let identity = match authorization {
            None => {
                if !svc.guard.admits_anonymous() {
                    let refused = svc.unauthorized("invalid_client", "authentication required");
                    return (None, Err(refused));
                }
                Identity::Anonymous
            }
            Some(header) => match registry_auth::basic::parse_basic(header) {
                None => {
                    let refused = svc.unauthorized(
                        "invalid_request",
                        "the token endpoint takes HTTP Basic credentials",
                    );
                    return (None, Err(refused));
                }
                Some((user, password)) => match svc.guard.login(address, &user, &password).await {
                    Ok(identity) => identity,
                    Err(r) => return (None, Err(svc.refusal(r))),
                },
            },
        };
        let answer = svc.answer(&identity, &ask);
        (Some(identity), answer)
    })
    .await
}

async fn post_token(State(svc): State<Arc<TokenService>>, request: Request) -> Response {
    let service = svc.clone();
    attributed(&svc, request, |address, request| async move {
        let svc = service;
        let form = match axum::body::to_bytes(request.into_body(), MAX_FORM).await {
            Ok(bytes) => bytes,
            Err(_) => {
                let refused = Refused::bad_request("invalid_request", "the form is too large");
                return (None, Err(refused));
            }
        };
        let mut ask = Ask::default();
        let (mut grant, mut user, mut password, mut refresh) = (None, None, None, None);
        for (k, v) in form_urlencoded::parse(&form) {
            let v = v.into_owned();
            match &*k {
                "grant_type" => grant = Some(v),
                "service" if ask.service.is_none() => ask.service = Some(v),
                "scope" => ask.scopes.push(v),
                "access_type" => ask.offline = v == "offline",
                "username" => user = Some(v),
                "password" => password = Some(v),
                "refresh_token" => refresh = Some(v),
                _ => {}
            }
        }
        let identity = match grant.as_deref() {
            Some("password") => {
                let (Some(user), Some(password)) = (user, password) else {
                    let refused = Refused::bad_request(
                        "invalid_request",
                        "username and password are required",
                    );
                    return (None, Err(refused));
                };
                match svc.guard.login(address, &user, &password).await {
                    Ok(identity) => identity,
                    Err(r) => return (None, Err(svc.refusal(r))),
                }
            }
            Some("refresh_token") => {
                let Some(token) = refresh else {
                    let refused =
                        Refused::bad_request("invalid_request", "refresh_token is required");
                    return (None, Err(refused));
                };
                match refreshed(&svc, &token).await {
                    Ok(identity) => {
                        // A refresh token is its own offline access; no new one is issued.
                        ask.offline = false;
                        identity
                    }
                    Err(refused) => return (None, Err(refused)),
                }
            }
            Some(other) => {
                let refused = Refused::bad_request(
                    "unsupported_grant_type",
                    format!(
                        "grant_type {:?} is not supported (password, refresh_token)",
                        registry_auth::Escaped(other)
                    ),
                );
                return (None, Err(refused));
            }
            None => {
                let refused = Refused::bad_request("invalid_request", "grant_type is required");
                return (None, Err(refused));
            }
        };
        let answer = svc.answer(&identity, &ask);
        (Some(identity), answer)
    })
    .await
}

/// Who a refresh token stands for, if it is ours, current, and its user or token still exists.
async fn refreshed(svc: &TokenService, token: &str) -> Result<Identity, Refused> {
    let verified = svc
        .refresh
        .verify_for(token, &svc.refresh_audience())
        .await
        .map_err(|e| svc.unauthorized("invalid_grant", format!("refresh token refused: {e}")))?;
    svc.guard
        .identity_of(&verified.subject)
        .await
        .ok_or_else(|| {
            svc.unauthorized(
                "invalid_grant",
                "the refresh token's user or token no longer exists",
            )
        })
}
