//! `registry-ui`: the web interface of an instance, at `/` beside the API (`/v2/`). People
//! browse repositories (search, paging), read what an image is made of (platforms, layers,
//! config, referrers), copy pull commands, and delete tags and manifests, in a browser.
//!
//! It reads the instance's storage (a pull-through cache's repositories as they are stored,
//! without asking upstream) and decides through the same [`Guard`] as the API: a page or
//! action is allowed exactly when the API would allow its request to this visitor, and no
//! page lists a repository the catalog would hide from them. Visitors are known by a session
//! cookie (people who signed in with the form, which takes what HTTP Basic takes, braked
//! alike), by their client certificate, or are anonymous; see [`session`].
//!
//! Pages are rendered on the server by compile-time templates (`maud`, which escapes every
//! value: names, labels and annotations are the pusher's text), work without JavaScript, and
//! load nothing but the compiled-in stylesheet and script (a strict Content-Security-Policy
//! says so to the browser). Every state-changing form carries a CSRF token.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod assets;
mod pages;
pub mod session;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::Markup;
use registry_auth::{Action, Guard, Identity, Person, Refusal};
use registry_core::{GcOptions, ObjectRegistry};
use registry_http::auth::oidc::cookie;
use registry_http::guard::{admitted, Connection};
use registry_http::SiteParts;

use session::{Session, Sessions, SignedInPerson, BROWSER_COOKIE, SESSION_COOKIE};

/// Settings of the web interface.
#[derive(Clone, Debug)]
pub struct UiSettings {
    /// The key sessions and CSRF tokens are sealed with (32 bytes or more). Nodes serving one
    /// instance share it to accept each other's sessions; `None`: a random key per process
    /// (sessions end when it restarts).
    pub session_key: Option<Vec<u8>>,
    /// How long a session lasts after signing in.
    pub session_lifetime: Duration,
    /// Who administers the instance (user, certificate or token names): they see storage
    /// usage and the last collection and fsck, and may start a collection. Without a guard,
    /// every visitor may.
    pub admins: Vec<String>,
    /// How a collection started from the interface runs.
    pub gc: GcOptions,
    /// Whether people sign in with OpenID Connect here too (the instance's `/auth/login`; see
    /// [`WebInterface::person_cookies`]).
    pub oidc: bool,
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings {
            session_key: None,
            session_lifetime: Duration::from_secs(8 * 3600),
            admins: Vec::new(),
            gc: GcOptions::default(),
            oidc: false,
        }
    }
}

/// The web interface of one instance.
pub struct Ui {
    /// The instance's own storage: what is stored, not what the API serves (browsing a
    /// pull-through cache shows what it holds and never asks upstream); also its maintenance
    /// reports and collections.
    own: ObjectRegistry,
    guard: Option<Arc<Guard>>,
    delete_enabled: bool,
    sessions: Arc<Sessions>,
    admins: Vec<String>,
    oidc: bool,
    gc: GcOptions,
    /// Whether a collection started here is running.
    collecting: Arc<AtomicBool>,
}

/// The web interface of an instance, before it is built: its settings and the key its
/// sessions are sealed with, shared by its routes and by OpenID Connect sign-in.
pub struct WebInterface {
    settings: UiSettings,
    sessions: Arc<Sessions>,
}

impl WebInterface {
    /// The interface with `settings`.
    pub fn new(settings: UiSettings) -> WebInterface {
        let key = match &settings.session_key {
            Some(k) => k.clone(),
            None => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).expect("the system has randomness");
                k
            }
        };
        WebInterface {
            sessions: Arc::new(Sessions::new(&key, settings.session_lifetime)),
            settings,
        }
    }

    /// The `Set-Cookie` values that sign `person` in (they signed in with OpenID Connect;
    /// pass this to `RegistryBuilder::on_sign_in`); `secure` when the registry is reached
    /// over HTTPS.
    pub fn person_cookies(&self, person: &Person, secure: bool) -> Vec<String> {
        let signed_in = SignedInPerson {
            email: person.email.clone(),
            groups: person.groups.clone(),
        };
        let (_, value) = self.sessions.seal(&person.name, Some(signed_in));
        vec![session_cookie(&value, self.sessions.lifetime(), secure)]
    }

    /// The routes for an instance built from `parts` (pass it to `RegistryBuilder::routes`).
    pub fn router(&self, parts: &SiteParts) -> Router {
        let settings = &self.settings;
        routes(Arc::new(Ui {
            own: parts.storage.clone(),
            guard: parts.state.guard.clone(),
            delete_enabled: parts.state.config.delete_enabled,
            sessions: self.sessions.clone(),
            admins: settings.admins.clone(),
            oidc: settings.oidc,
            gc: settings.gc.clone(),
            collecting: Arc::new(AtomicBool::new(false)),
        }))
    }
}

/// The session cookie holding `value`.
pub(crate) fn session_cookie(value: &str, lifetime: Duration, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        lifetime.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

fn routes(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(pages::repositories))
        .route("/ui", get(pages::repositories))
        .route("/ui/repo/{*name}", get(pages::repository))
        .route("/ui/image/{*reference}", get(pages::image))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", axum::routing::post(pages::logout))
        .route("/ui/delete", get(pages::delete_form).post(pages::delete))
        .route("/ui/admin", get(admin::page))
        .route("/ui/admin/gc", axum::routing::post(admin::collect))
        .route("/ui/assets/{file}", get(assets::serve))
        .with_state(ui)
}

/// Who is looking, and what they may see and do.
pub(crate) struct Visitor {
    identity: Identity,
    guard: Option<Arc<Guard>>,
    /// Their session, when they signed in with the form.
    session: Option<Session>,
    /// Their browser cookie (CSRF tokens are bound to it); `new` when this response sets it.
    browser: String,
    new_browser: bool,
    address: Option<IpAddr>,
    /// Whether the request came over TLS.
    tls: bool,
    /// The host the registry was reached at, for pull commands (checked characters only).
    host: String,
}

impl Visitor {
    /// Whether they may do `action` on `repository` (as the API would decide).
    pub(crate) fn may(&self, action: Action, repository: &str) -> bool {
        self.guard
            .as_ref()
            .is_none_or(|g| g.may(&self.identity, action, Some(repository)))
    }

    /// Whether the guard would let them list the catalog at all.
    pub(crate) fn may_list(&self) -> bool {
        self.guard
            .as_ref()
            .is_none_or(|g| g.may_list(&self.identity))
    }

    /// Whether they administer the instance (everyone, without a guard).
    pub(crate) fn is_admin(&self, admins: &[String]) -> bool {
        match (&self.guard, &self.identity) {
            (None, _) => true,
            (Some(_), Identity::Anonymous) => false,
            (Some(_), identity) => admins.iter().any(|a| a == identity.subject()),
        }
    }

    /// Whether signing in is possible here (a guard that takes passwords).
    pub(crate) fn can_sign_in(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.authenticates())
    }

    /// `; Secure` for cookies set over TLS. (Over plain HTTP browsers drop `Secure` cookies;
    /// `registry serve` warns that such a listener carries passwords in clear text.)
    pub(crate) fn secure_suffix(&self) -> &'static str {
        if self.tls {
            "; Secure"
        } else {
            ""
        }
    }

    /// Who they are, for the page header; `None` for anonymous visitors.
    pub(crate) fn name(&self) -> Option<&str> {
        match &self.identity {
            Identity::Anonymous => None,
            other => Some(other.subject()),
        }
    }
}

impl Ui {
    /// Who sent `request`: refused (403) when the guard does not admit their address, or
    /// when their certificate is not authorized. (What it needs of the request is taken
    /// before the first await, so the future does not borrow the request.)
    fn visitor(
        &self,
        request: &Request,
    ) -> impl std::future::Future<Output = Result<Visitor, Response>> + Send + '_ {
        let headers = request.headers();
        let (browser, new_browser) = match cookie(headers, BROWSER_COOKIE) {
            Some(b) if session::is_browser_id(b) => (b.to_owned(), false),
            _ => (session::random_hex(16), true),
        };
        let connection = request.extensions().get::<Connection>();
        let mut visitor = Visitor {
            identity: Identity::Anonymous,
            guard: self.guard.clone(),
            session: None,
            browser,
            new_browser,
            address: None,
            tls: connection.is_some_and(|c| c.tls),
            host: host_of(headers),
        };
        let certificate = connection.and_then(|c| c.certificate.clone());
        let sealed = cookie(headers, SESSION_COOKIE).map(str::to_owned);
        let admitted = self.guard.as_ref().map(|g| admitted(g, request));
        async move {
            let (Some(guard), Some(admitted)) = (self.guard.clone(), admitted) else {
                return Ok(visitor);
            };
            let address = admitted.map_err(|r| self.refusal(&visitor, r))?;
            visitor.address = Some(address);
            if let Some(session) = sealed.and_then(|v| self.sessions.open(&v)) {
                // Who the subject is now: a removed user, a revoked token or a person sign-in
                // no longer admits has no session.
                let now = match &session.person {
                    Some(p) => guard.person_identity(Person {
                        name: session.sub.clone(),
                        email: p.email.clone(),
                        groups: p.groups.clone(),
                        token: String::new(),
                    }),
                    None => guard.identity_of(&session.sub).await,
                };
                if let Some(identity) = now {
                    visitor.identity = identity;
                    visitor.session = Some(session);
                    return Ok(visitor);
                }
            }
            match guard
                .authenticate(address, certificate.as_deref(), None)
                .await
            {
                Ok(identity) => visitor.identity = identity,
                Err(r @ Refusal::Denied(_)) => return Err(self.refusal(&visitor, r)),
                Err(_) => {}
            }
            Ok(visitor)
        }
    }

    /// A refusal of the guard as a page.
    fn refusal(&self, visitor: &Visitor, r: Refusal) -> Response {
        let (status, message) = match r {
            Refusal::Denied(m) => (StatusCode::FORBIDDEN, m),
            Refusal::Unauthenticated { .. } => (
                StatusCode::UNAUTHORIZED,
                "Sign in to see this page.".to_owned(),
            ),
            Refusal::TooManyAttempts { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins; try again later.".to_owned(),
            ),
        };
        page(
            visitor,
            status,
            pages::message("Not allowed", &message, visitor),
        )
    }

    /// Whether a state-changing request carries the CSRF token of its browser and, when the
    /// browser says where it comes from, comes from this site.
    fn form_is_ours(&self, visitor: &Visitor, headers: &HeaderMap, csrf: Option<&str>) -> bool {
        let same_origin = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            None => true,
            Some(origin) => origin
                .split_once("://")
                .is_some_and(|(_, host)| host.eq_ignore_ascii_case(&visitor.host)),
        };
        !visitor.new_browser
            && same_origin
            && csrf.is_some_and(|c| self.sessions.csrf_matches(&visitor.browser, c))
    }
}

/// The `Host` the request was sent to, if it is a plain host name or address with a port;
/// else `localhost` (it is shown in pull commands, never trusted).
fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost")
        .to_owned()
}

/// Headers every page of the interface carries: nothing loads but its own stylesheet and
/// script, it is never framed, and pages are not cached (they depend on who asks).
fn secure(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
}

/// A rendered page with `status`, setting the browser cookie when it is new.
pub(crate) fn page(visitor: &Visitor, status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    secure(&mut response);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if visitor.new_browser {
        let cookie = format!(
            "{BROWSER_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
            visitor.browser,
            visitor.secure_suffix()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}
