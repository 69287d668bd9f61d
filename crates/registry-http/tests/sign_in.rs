//! Sign-in with OpenID Connect against a provider that misbehaves on purpose (a real provider
//! cannot be made to send a wrong nonce): a small axum server on loopback with a discovery
//! document, a JWKS, a token endpoint that checks the PKCE verifier and answers the ID token
//! the test chose, and a userinfo endpoint. Every bad ID token, token answer and userinfo is
//! refused with 401 and a reason; nothing is stored for them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use registry_auth::oidc::{Admission, OidcSettings};
use registry_auth::token::records::TokenRecords;
use registry_auth::token::{keys, SigningKey};
use registry_auth::{GuardSettings, TokenKeys, TokenSettings};
use registry_http::auth::records::StoredTokens;
use registry_http::Registry;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt;

const SERVICE: &str = "registry.test";
const CLIENT: &str = "registry";

/// What the fake provider answers next.
#[derive(Default)]
struct Script {
    /// The ID token's claims (signed with `key` unless `unsigned`).
    claims: Value,
    unsigned: bool,
    /// Sign with another key than the JWKS has.
    stranger: bool,
    /// The token endpoint's error instead of tokens.
    error: Option<&'static str>,
    /// The userinfo answer.
    userinfo: Value,
    /// The PKCE challenge the registry sent, checked at the token endpoint.
    challenge: String,
    /// What the token endpoint saw as the PKCE verifier.
    verifier_ok: Option<bool>,
}

struct Fake {
    base: String,
    key: SigningKey,
    pem: String,
    stranger_pem: String,
    stranger_kid: String,
    script: Mutex<Script>,
    discovery_issuer: Mutex<Option<String>>,
}

/// A JSON answer (axum's `json` feature is not used by the crate).
#[allow(non_snake_case)]
fn Json(value: Value) -> axum::response::Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

async fn discovery(State(f): State<Arc<Fake>>) -> axum::response::Response {
    let issuer = f
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| f.base.clone());
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/auth", f.base),
        "token_endpoint": format!("{}/token", f.base),
        "jwks_uri": format!("{}/jwks", f.base),
        "userinfo_endpoint": format!("{}/userinfo", f.base),
    }))
}

async fn jwks(State(f): State<Arc<Fake>>) -> axum::response::Response {
    Json(json!({ "keys": [f.key.jwk()] }))
}

async fn token(State(f): State<Arc<Fake>>, body: String) -> axum::response::Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let verifier = form
        .iter()
        .find(|(k, _)| k == "code_verifier")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut script = f.script.lock().unwrap();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    script.verifier_ok = Some(challenge == script.challenge);
    if let Some(error) = script.error {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": "scripted"})),
        )
            .into_response();
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let id_token = if script.unsigned {
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(script.claims.to_string())
        )
    } else {
        let (pem, kid) = if script.stranger {
            (&f.stranger_pem, f.stranger_kid.clone())
        } else {
            (&f.pem, f.key.kid().to_owned())
        };
        let header = jsonwebtoken::Header {
            kid: Some(kid),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256)
        };
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &script.claims, &key).unwrap()
    };
    Json(json!({"id_token": id_token, "access_token": "at", "token_type": "Bearer"}))
}

async fn userinfo(State(f): State<Arc<Fake>>) -> axum::response::Response {
    Json(f.script.lock().unwrap().userinfo.clone())
}

async fn start_fake() -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (key, pem) = SigningKey::generate().unwrap();
    let (stranger, stranger_pem) = SigningKey::generate().unwrap();
    let fake = Arc::new(Fake {
        base,
        key,
        pem,
        stranger_pem,
        stranger_kid: stranger.kid().to_owned(),
        script: Mutex::new(Script::default()),
        discovery_issuer: Mutex::new(None),
    });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    fake
}

struct T {
    app: Router,
    fake: Arc<Fake>,
    records: StoredTokens,
    _dir: tempfile::TempDir,
}

async fn setup() -> T {
    let fake = start_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let (_, pem) = SigningKey::generate().unwrap();
    std::fs::write(keys_dir.join(keys::CURRENT_KEY), pem).unwrap();
    let guard = GuardSettings {
        token: Some(TokenSettings {
            realm: "https://registry.test/auth/token".into(),
            service: SERVICE.into(),
            issuer: SERVICE.into(),
            keys: TokenKeys::Own {
                dir: keys_dir,
                lifetime: Duration::from_secs(300),
            },
        }),
        oidc: Some(OidcSettings {
            issuer: fake.base.clone(),
            client_id: CLIENT.into(),
            client_secret: "secret".into(),
            scopes: vec!["openid".into(), "email".into()],
            groups_claim: "groups".into(),
            admission: Admission {
                domains: vec!["example.com".into()],
                ..Admission::default()
            },
            token_lifetime: Duration::from_secs(3600),
        }),
        ..GuardSettings::default()
    };
    let location = dir.path().join("data").to_string_lossy().parse().unwrap();
    let registry = Registry::builder(location)
        .request_log(false)
        .guard(guard)
        .build()
        .unwrap();
    let records = StoredTokens::new(registry.storage().object_store().clone());
    let app = registry.router().layer(MockConnectInfo(
        "127.0.0.1:4000".parse::<SocketAddr>().unwrap(),
    ));
    T {
        app,
        fake,
        records,
        _dir: dir,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl T {
    /// Starts a sign-in: the sign-in cookie, the state and the nonce the registry chose.
    async fn start(&self) -> (String, String, String) {
        let r = self
            .app
            .clone()
            .oneshot(Request::get("/auth/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(&format!("{}/auth?", self.fake.base)));
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
        assert!(cookie.contains("Secure"), "the realm is https: {cookie}");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let query = location.split_once('?').unwrap().1;
        let param = |k: &str| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        assert_eq!(param("code_challenge_method"), "S256");
        assert_eq!(param("redirect_uri"), "https://registry.test/auth/callback");
        self.fake.script.lock().unwrap().challenge = param("code_challenge");
        (cookie, param("state"), param("nonce"))
    }

    /// Good claims for `nonce`.
    fn claims(&self, nonce: &str) -> Value {
        json!({
            "iss": self.fake.base, "aud": CLIENT, "sub": "u-1", "exp": now() + 300,
            "iat": now(), "nonce": nonce, "email": "ann@example.com", "email_verified": true,
        })
    }

    async fn callback(&self, cookie: &str, state: &str) -> (StatusCode, String) {
        let r = self
            .app
            .clone()
            .oneshot(
                Request::get(format!("/auth/callback?code=c0de&state={state}"))
                    .header("cookie", cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One sign-in whose provider answers as `edit` makes it; the callback's answer.
    async fn attempt(&self, edit: impl FnOnce(&mut Script, &str)) -> (StatusCode, String) {
        let (cookie, state, nonce) = self.start().await;
        {
            let mut script = self.fake.script.lock().unwrap();
            script.claims = self.claims(&nonce);
            script.userinfo = json!({"sub": "u-1", "email": "ann@example.com", "groups": ["devs"]});
            script.unsigned = false;
            script.stranger = false;
            script.error = None;
            edit(&mut script, &nonce);
        }
        self.callback(&cookie, &state).await
    }
}

#[tokio::test]
async fn a_good_sign_in_makes_a_token_with_pkce_checked() {
    let t = setup().await;
    let (status, page) = t.attempt(|_, _| {}).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Signed in as <strong>ann@example.com</strong>"));
    assert_eq!(t.fake.script.lock().unwrap().verifier_ok, Some(true));
    let records = t.records.list().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].owner.as_deref(), Some("ann@example.com"));
    assert_eq!(records[0].groups, vec!["devs".to_owned()], "from userinfo");
    assert!(!format!("{:?}", records[0]).contains("rgt_"));
}

#[tokio::test]
async fn bad_id_tokens_and_answers_are_refused() {
    let t = setup().await;
    type Edit = Box<dyn FnOnce(&mut Script, &str)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "nonce",
            Box::new(|s, _| s.claims["nonce"] = json!("another")),
        ),
        (
            "nonce",
            Box::new(|s, _| {
                s.claims.as_object_mut().unwrap().remove("nonce");
            }),
        ),
        (
            "InvalidAudience",
            Box::new(|s, _| s.claims["aud"] = json!("someone-else")),
        ),
        (
            "azp",
            Box::new(|s, _| s.claims["aud"] = json!([CLIENT, "other"])),
        ),
        (
            "InvalidIssuer",
            Box::new(|s, _| s.claims["iss"] = json!("https://evil.example")),
        ),
        (
            "ExpiredSignature",
            Box::new(|s, _| s.claims["exp"] = json!(now() - 3600)),
        ),
        ("malformed", Box::new(|s, _| s.unsigned = true)),
        ("key is unknown", Box::new(|s, _| s.stranger = true)),
        (
            "invalid_grant",
            Box::new(|s, _| s.error = Some("invalid_grant")),
        ),
        (
            "someone else",
            Box::new(|s, _| s.userinfo["sub"] = json!("u-2")),
        ),
        (
            "may not use this registry",
            Box::new(|s, _| {
                s.claims["email"] = json!("mallory@evil.example");
                s.userinfo["email"] = json!("mallory@evil.example");
            }),
        ),
        (
            "may not use this registry",
            Box::new(|s, _| s.claims["email_verified"] = json!(false)),
        ),
    ];
    for (why, edit) in cases {
        let (status, page) = t.attempt(edit).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {page}");
        assert!(page.contains(why), "{why}: {page}");
    }
    assert!(t.records.list().await.unwrap().is_empty(), "nothing stored");
}

#[tokio::test]
async fn wrong_state_missing_cookie_and_a_provider_that_is_not_itself() {
    let t = setup().await;
    let (cookie, state, _) = t.start().await;
    let (status, page) = t.callback(&cookie, "not-the-state").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("state does not match"));
    let (status, _) = t.callback("registry_signin=forged.jwt.value", &state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = t.callback("", &state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A discovery document naming another issuer is not trusted.
    let t2 = setup_with_fake_issuer_mismatch().await;
    let r = t2
        .app
        .clone()
        .oneshot(Request::get("/auth/login").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn setup_with_fake_issuer_mismatch() -> T {
    let t = setup().await;
    *t.fake.discovery_issuer.lock().unwrap() = Some("https://elsewhere.example".into());
    t
}
