//! Sign-in for people with OpenID Connect, and their personal access tokens:
//!
//! - `GET /auth/login` sends the browser to the provider (authorization code with PKCE, `state`
//!   and `nonce`, remembered in a signed, HttpOnly cookie scoped to the callback for 10 minutes);
//! - `GET /auth/callback` checks the state, exchanges the code, verifies the ID token and who
//!   may enter ([`registry_auth::oidc`]), then makes a personal access token and shows it once
//!   with the `docker login` line to use it;
//! - `GET /auth/tokens` lists the person's tokens; `POST /auth/tokens` makes another one or
//!   revokes one (a session cookie of an hour, SameSite=Strict, plus a CSRF field bound to it);
//!   `POST /auth/logout` ends the session;
//! - `GET /auth/login?to=ui` signs people in to the web interface instead: the callback starts
//!   a web session (made by the web interface, see [`SignIn::with_web_sessions`]) and sends
//!   the browser to `/`, without making a token.
//!
//! A token is a record like a scoped token's, owned by the person, with their groups; it logs in
//! as the person, with the rights `[[access]]` rules give their name and groups, while sign-in
//! still admits them. The provider's own tokens are never stored. Failures are pages with 400
//! or 401 and the reason, never a 500.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use registry_auth::oidc::{LoginState, Provider};
use registry_auth::token::records::{new_secret, secret_hash, TokenRecord, TokenRecords};
use registry_auth::token::{rfc3339 as date, unix_now, TokenIssuer, TokenVerifier};
use registry_auth::{Escaped, Guard, Person};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::guard::admitted;

const SIGN_IN_COOKIE: &str = "registry_signin";
/// Set when the sign-in began at the web interface (`/auth/login?to=ui`): the callback then
/// starts a web session instead of making a personal access token. Not sealed: all it can
/// change is where a successful sign-in lands.
const SIGN_IN_TO_COOKIE: &str = "registry_signin_to";
const SESSION_COOKIE: &str = "registry_session";
const SIGN_IN_LIFETIME: Duration = Duration::from_secs(600);
const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// The most personal access tokens one person keeps.
const MAX_TOKENS_PER_PERSON: usize = 50;
/// The largest form the token page reads.
const MAX_FORM: usize = 16 * 1024;

/// What starts a web session for a person who signed in: the `Set-Cookie` values, given the
/// person and whether the registry is reached over HTTPS (see `RegistryBuilder::on_sign_in`).
pub type WebSessions = Arc<dyn Fn(&Person, bool) -> Vec<String> + Send + Sync>;

/// The sign-in pages of one instance.
pub struct SignIn {
    web: Option<WebSessions>,
    provider: Provider,
    issuer: Arc<TokenIssuer>,
    verifier: TokenVerifier,
    records: Arc<dyn TokenRecords>,
    guard: Arc<Guard>,
    /// `scheme://host[:port]` of the registry, from the token realm.
    origin: String,
    service: String,
}

/// What a session cookie says.
#[derive(Serialize, Deserialize)]
struct Session {
    name: String,
    email: Option<String>,
    groups: Vec<String>,
}

impl SignIn {
    /// Sign-in with `provider` for the registry whose token realm is `realm` (its origin is
    /// where the provider sends people back: `<origin>/auth/callback`).
    pub fn new(
        provider: Provider,
        issuer: Arc<TokenIssuer>,
        records: Arc<dyn TokenRecords>,
        guard: Arc<Guard>,
        realm: &str,
        service: &str,
    ) -> SignIn {
        let origin = match realm.find("://") {
            Some(i) => match realm[i + 3..].find('/') {
                Some(j) => realm[..i + 3 + j].to_owned(),
                None => realm.to_owned(),
            },
            None => realm.to_owned(),
        };
        let verifier = TokenVerifier::own(issuer.issuer(), service, issuer.keys().clone());
        SignIn {
            web: None,
            provider,
            issuer,
            verifier,
            records,
            guard,
            origin,
            service: service.to_owned(),
        }
    }

    /// Lets a sign-in that began at the web interface (`/auth/login?to=ui`) end in a web
    /// session made by `web`, instead of a personal access token.
    pub fn with_web_sessions(mut self, web: WebSessions) -> SignIn {
        self.web = Some(web);
        self
    }

    /// The routes: `/auth/login`, `/auth/callback`, `/auth/tokens`, `/auth/logout`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/auth/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/auth/tokens", get(tokens_page).post(tokens_form))
            .route("/auth/logout", post(logout))
            .with_state(self)
    }

    fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.origin)
    }

    fn secure(&self) -> bool {
        self.origin.starts_with("https://")
    }

    /// The registry as `docker login` names it.
    fn host(&self) -> &str {
        self.origin
            .split_once("://")
            .map_or(self.origin.as_str(), |(_, h)| h)
    }

    fn audience(&self, purpose: &str) -> String {
        format!("{purpose}:{}", self.service)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Duration, site: &str) -> String {
        format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={site}{}",
            max_age.as_secs(),
            if self.secure() { "; Secure" } else { "" }
        )
    }

    async fn session(&self, headers: &HeaderMap) -> Option<(Session, String)> {
        let value = cookie(headers, SESSION_COOKIE)?.to_owned();
        let session = self
            .verifier
            .unseal::<Session>(&value, &self.audience("session"))
            .await
            .ok()?;
        Some((session, csrf_of(&value)))
    }

    /// A new personal access token for `person`; its name and secret.
    async fn make_token(&self, person: &Person) -> Result<(TokenRecord, String), Page> {
        let failed = |e: registry_auth::Error| {
            tracing::warn!(error = %e, "cannot store a personal access token");
            Page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The token could not be stored; try again.",
            )
        };
        let owned = self.owned(&person.name).await.map_err(failed)?;
        if owned.len() >= MAX_TOKENS_PER_PERSON {
            return Err(Page::error(
                StatusCode::BAD_REQUEST,
                &format!("You have {MAX_TOKENS_PER_PERSON} tokens already; revoke some first."),
            ));
        }
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).map_err(|e| failed(e.into()))?;
        let name = format!(
            "pat-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let secret = new_secret().map_err(failed)?;
        let now = unix_now();
        let record = TokenRecord {
            name,
            secret_sha256: secret_hash(&secret),
            scopes: Vec::new(),
            created: now,
            expires: Some(now + self.provider.settings().token_lifetime.as_secs()),
            owner: Some(person.name.clone()),
            groups: person.groups.clone(),
            email: person.email.clone(),
        };
        self.records.put(&record).await.map_err(failed)?;
        tracing::info!(person = %Escaped(&person.name), token = %record.name, "personal access token made");
        Ok((record, secret))
    }

    async fn owned(&self, name: &str) -> Result<Vec<TokenRecord>, registry_auth::Error> {
        let mut all = self.records.list().await?;
        all.retain(|r| r.owner.as_deref() == Some(name));
        Ok(all)
    }
}

/// A cookie's value from the request's `Cookie` headers (for the web interface's pages too).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The CSRF field of a session: bound to the session cookie, which other sites cannot read.
fn csrf_of(session_cookie: &str) -> String {
    Sha256::digest(session_cookie.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Text safe inside HTML.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page with a status and cookies to set.
struct Page {
    status: StatusCode,
    title: String,
    body: String,
    cookies: Vec<String>,
}

impl Page {
    fn new(title: &str, body: String) -> Page {
        Page {
            status: StatusCode::OK,
            title: title.to_owned(),
            body,
            cookies: Vec::new(),
        }
    }

    fn error(status: StatusCode, message: &str) -> Page {
        Page {
            status,
            ..Page::new(
                "Sign-in failed",
                format!(
                    "<p>{}</p><p><a href=\"/auth/login\">Sign in again</a></p>",
                    html(message)
                ),
            )
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let document = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{title} · registry</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}}\
             code,pre{{background:#f3f3f3;padding:.2rem .4rem;overflow-wrap:anywhere;white-space:pre-wrap}}\
             table{{border-collapse:collapse}}td,th{{padding:.3rem .6rem;text-align:left;border-bottom:1px solid #ddd}}</style>\
             </head><body><h1>{title}</h1>{body}</body></html>",
            title = html(&self.title),
            body = self.body
        );
        let mut response = (self.status, document).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        for c in self.cookies {
            if let Ok(v) = HeaderValue::from_str(&c) {
                headers.append(header::SET_COOKIE, v);
            }
        }
        response
    }
}

/// Why a sign-in failed, as a page: the provider's or the registry's refusal is 401, a request
/// that is not a sign-in in progress 400.
fn sign_in_failed(e: &registry_auth::Error) -> Page {
    match e {
        registry_auth::Error::Unreachable { .. } => {
            tracing::warn!(error = %e, "sign-in: the identity provider is unreachable");
            Page::error(
                StatusCode::UNAUTHORIZED,
                "The identity provider could not be reached; try again later.",
            )
        }
        other => {
            tracing::info!(reason = %other, "sign-in refused");
            Page::error(StatusCode::UNAUTHORIZED, &other.to_string())
        }
    }
}

async fn login(State(s): State<Arc<SignIn>>, request: Request) -> Response {
    if let Err(r) = admitted(&s.guard, &request) {
        return Page::error(StatusCode::FORBIDDEN, &format!("{r:?}")).into_response();
    }
    let to_ui = s.web.is_some()
        && form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .any(|(k, v)| k == "to" && v == "ui");
    let (url, state) = match s.provider.start(&s.redirect_uri()).await {
        Ok(started) => started,
        Err(e) => return sign_in_failed(&e).into_response(),
    };
    let sealed = match s
        .issuer
        .seal(&s.audience("signin"), SIGN_IN_LIFETIME, &state)
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign the sign-in state");
            return Page::error(StatusCode::SERVICE_UNAVAILABLE, "Try again.").into_response();
        }
    };
    let mut response = (StatusCode::FOUND, [(header::LOCATION, url)]).into_response();
    let c = s.cookie(
        SIGN_IN_COOKIE,
        &sealed,
        "/auth/callback",
        SIGN_IN_LIFETIME,
        "Lax",
    );
    // Where the sign-in lands: the web interface, or (also when an earlier sign-in there was
    // abandoned) the token page.
    let to = if to_ui {
        s.cookie(
            SIGN_IN_TO_COOKIE,
            "ui",
            "/auth/callback",
            SIGN_IN_LIFETIME,
            "Lax",
        )
    } else {
        s.cookie(
            SIGN_IN_TO_COOKIE,
            "",
            "/auth/callback",
            Duration::ZERO,
            "Lax",
        )
    };
    for c in [c, to] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn callback(State(s): State<Arc<SignIn>>, request: Request) -> Response {
    if let Err(r) = admitted(&s.guard, &request) {
        return Page::error(StatusCode::FORBIDDEN, &format!("{r:?}")).into_response();
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    // The sign-in cookie is spent whatever happens now.
    let spent = s.cookie(SIGN_IN_COOKIE, "", "/auth/callback", Duration::ZERO, "Lax");
    let to_ui = s.web.is_some() && cookie(request.headers(), SIGN_IN_TO_COOKIE) == Some("ui");
    let spent_to = s.cookie(
        SIGN_IN_TO_COOKIE,
        "",
        "/auth/callback",
        Duration::ZERO,
        "Lax",
    );
    let fail = |page: Page| {
        Page {
            cookies: vec![spent.clone(), spent_to.clone()],
            ..page
        }
        .into_response()
    };
    if let Some(error) = param("error") {
        let description = param("error_description").unwrap_or_default();
        return fail(Page::error(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider refused the sign-in: {error} {description}"),
        ));
    }
    let (Some(code), Some(returned_state)) = (param("code"), param("state")) else {
        return fail(Page::error(
            StatusCode::BAD_REQUEST,
            "This is not a sign-in coming back from the identity provider.",
        ));
    };
    let Some(sealed) = cookie(request.headers(), SIGN_IN_COOKIE).map(str::to_owned) else {
        return fail(Page::error(
            StatusCode::BAD_REQUEST,
            "No sign-in is in progress in this browser (or it took longer than 10 minutes).",
        ));
    };
    let Ok(remembered) = s
        .verifier
        .unseal::<LoginState>(&sealed, &s.audience("signin"))
        .await
    else {
        return fail(Page::error(
            StatusCode::BAD_REQUEST,
            "The sign-in in progress is not valid (expired or altered).",
        ));
    };
    let signed_in = match s
        .provider
        .finish(&remembered, &returned_state, &code, &s.redirect_uri())
        .await
    {
        Ok(p) => p,
        Err(registry_auth::Error::SignIn(why)) if why.contains("state does not match") => {
            return fail(Page::error(StatusCode::BAD_REQUEST, &why));
        }
        Err(e) => return fail(sign_in_failed(&e)),
    };
    let person = signed_in.person;
    if let (true, Some(web)) = (to_ui, &s.web) {
        // Signed in to the web interface: a session there, no personal access token.
        tracing::info!(person = %Escaped(&person.name), "signed in to the web interface");
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        let cookies = [spent, spent_to]
            .into_iter()
            .chain(web(&person, s.secure()));
        for c in cookies {
            if let Ok(v) = HeaderValue::from_str(&c) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let (record, secret) = match s.make_token(&person).await {
        Ok(made) => made,
        Err(page) => return fail(page),
    };
    let session = Session {
        name: person.name.clone(),
        email: person.email.clone(),
        groups: person.groups.clone(),
    };
    let mut cookies = vec![spent.clone(), spent_to];
    let mut csrf = String::new();
    if let Ok(sealed) = s
        .issuer
        .seal(&s.audience("session"), SESSION_LIFETIME, &session)
    {
        csrf = csrf_of(&sealed);
        cookies.push(s.cookie(SESSION_COOKIE, &sealed, "/auth", SESSION_LIFETIME, "Strict"));
    }
    tracing::info!(person = %Escaped(&person.name), "signed in");
    Page {
        cookies,
        ..token_shown(&s, &person.name, &record, &secret, &csrf)
    }
    .into_response()
}

/// The page that shows a new token once.
fn token_shown(s: &SignIn, who: &str, record: &TokenRecord, secret: &str, csrf: &str) -> Page {
    let expires = record.expires.map(date).unwrap_or_else(|| "never".into());
    let body = format!(
        "<p>Signed in as <strong>{who}</strong>.</p>\
         <p>Your new personal access token <code>{name}</code>, valid until {expires}. \
         Its secret is shown only now; copy it:</p><pre>{secret}</pre>\
         <p>Log in with it:</p><pre>echo '{secret}' | docker login {host} -u {name} --password-stdin</pre>\
         <p>It has your rights; revoke it when you no longer need it.</p>{links}",
        who = html(who),
        name = html(&record.name),
        secret = html(secret),
        host = html(s.host()),
        links = nav(csrf)
    );
    Page::new("Your personal access token", body)
}

fn nav(csrf: &str) -> String {
    if csrf.is_empty() {
        return String::new();
    }
    format!(
        "<p><a href=\"/auth/tokens\">Your tokens</a></p>\
         <form method=\"post\" action=\"/auth/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out</button></form>",
        html(csrf)
    )
}

async fn tokens_page(State(s): State<Arc<SignIn>>, request: Request) -> Page {
    if let Err(r) = admitted(&s.guard, &request) {
        return Page::error(StatusCode::FORBIDDEN, &format!("{r:?}"));
    }
    let Some((session, csrf)) = s.session(request.headers()).await else {
        return Page::error(StatusCode::UNAUTHORIZED, "Sign in first.");
    };
    list_page(&s, &session, &csrf, None).await
}

async fn list_page(s: &SignIn, session: &Session, csrf: &str, note: Option<&str>) -> Page {
    let owned = match s.owned(&session.name).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list personal access tokens");
            return Page::error(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
        }
    };
    let now = unix_now();
    let rows: String = owned
        .iter()
        .map(|r| {
            let expires = match r.expires {
                Some(e) if e <= now => format!("{} (expired)", date(e)),
                Some(e) => date(e),
                None => "never".into(),
            };
            format!(
                "<tr><td><code>{name}</code></td><td>{created}</td><td>{expires}</td><td>\
                 <form method=\"post\" action=\"/auth/tokens\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"action\" value=\"revoke\">\
                 <input type=\"hidden\" name=\"name\" value=\"{name}\">\
                 <button type=\"submit\">Revoke</button></form></td></tr>",
                name = html(&r.name),
                created = date(r.created),
                csrf = html(csrf),
            )
        })
        .collect();
    let body = format!(
        "<p>Signed in as <strong>{who}</strong>.</p>{note}\
         <table><tr><th>Token</th><th>Created</th><th>Expires</th><th></th></tr>{rows}</table>\
         <form method=\"post\" action=\"/auth/tokens\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"action\" value=\"create\">\
         <p><button type=\"submit\">Make a new token</button></p></form>{nav}",
        who = html(&session.name),
        note = note
            .map(|n| format!("<p>{}</p>", html(n)))
            .unwrap_or_default(),
        csrf = html(csrf),
        nav = nav(csrf),
    );
    Page::new("Your personal access tokens", body)
}

/// The session and the form of a POST, if the form carries the session's CSRF field.
async fn posted(
    s: &SignIn,
    request: Request,
) -> Result<(Session, String, Vec<(String, String)>), Page> {
    admitted(&s.guard, &request)
        .map_err(|r| Page::error(StatusCode::FORBIDDEN, &format!("{r:?}")))?;
    let Some((session, csrf)) = s.session(request.headers()).await else {
        return Err(Page::error(StatusCode::UNAUTHORIZED, "Sign in first."));
    };
    let body = axum::body::to_bytes(request.into_body(), MAX_FORM)
        .await
        .map_err(|_| Page::error(StatusCode::BAD_REQUEST, "The form is too large."))?;
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let given = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !same(given, &csrf) {
        return Err(Page::error(
            StatusCode::BAD_REQUEST,
            "The form does not belong to this session; reload the page.",
        ));
    }
    Ok((session, csrf, form))
}

async fn tokens_form(State(s): State<Arc<SignIn>>, request: Request) -> Page {
    let (session, csrf, form) = match posted(&s, request).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match field("action") {
        Some("create") => {
            let person = Person {
                name: session.name.clone(),
                email: session.email.clone(),
                groups: session.groups.clone(),
                token: String::new(),
            };
            match s.make_token(&person).await {
                Ok((record, secret)) => token_shown(&s, &session.name, &record, &secret, &csrf),
                Err(page) => page,
            }
        }
        Some("revoke") => {
            let name = field("name").unwrap_or("");
            let owned = match s.records.get(name).await {
                Ok(Some(r)) => r.owner.as_deref() == Some(session.name.as_str()),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a personal access token");
                    return Page::error(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
                }
            };
            if !owned {
                return Page::error(StatusCode::BAD_REQUEST, "You have no token of that name.");
            }
            if let Err(e) = s.records.remove(name).await {
                tracing::warn!(error = %e, "cannot revoke a personal access token");
                return Page::error(StatusCode::SERVICE_UNAVAILABLE, "Try again.");
            }
            tracing::info!(person = %Escaped(&session.name), token = %Escaped(name), "personal access token revoked");
            list_page(&s, &session, &csrf, Some(&format!("Revoked {name}."))).await
        }
        _ => Page::error(StatusCode::BAD_REQUEST, "Unknown action."),
    }
}

async fn logout(State(s): State<Arc<SignIn>>, request: Request) -> Page {
    if let Err(page) = posted(&s, request).await {
        return page;
    }
    Page {
        cookies: vec![s.cookie(SESSION_COOKIE, "", "/auth", Duration::ZERO, "Strict")],
        ..Page::new(
            "Signed out",
            "<p><a href=\"/auth/login\">Sign in again</a></p>".to_owned(),
        )
    }
}
