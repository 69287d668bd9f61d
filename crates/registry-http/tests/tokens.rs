//! Token authentication in-process: the Bearer challenges with the scope each endpoint needs,
//! the built-in token service (GET with Basic credentials, the OAuth2 POST with password and
//! refresh grants), scoped tokens kept in storage, the rule matrix (every endpoint with and
//! without its action), and every bad token and bad request refused with 401 or 400.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use base64::Engine;
use registry_auth::token::records::{new_secret, secret_hash, TokenRecord, TokenRecords};
use registry_auth::token::{keys, KeyRing, SigningKey, TokenIssuer};
use registry_auth::{GuardSettings, Rule, TokenKeys, TokenSettings};
use registry_core::{Algorithm, Digest};
use registry_http::auth::records::StoredTokens;
use registry_http::Registry;
use serde_json::{json, Value};
use tower::ServiceExt;

/// `password` in Apache MD5 (`htpasswd -m`), for bob and ann.
const HASH: &str = "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/";
const SERVICE: &str = "registry.test";
const REALM: &str = "https://registry.test/auth/token";

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

struct T {
    app: Router,
    dir: tempfile::TempDir,
}

/// bob may pull and push `team/*`; ann may pull `team/app`; cat may do everything to `cat/*`.
fn settings(dir: &Path, public_read: bool) -> GuardSettings {
    let htpasswd = dir.join("htpasswd");
    if !htpasswd.exists() {
        std::fs::write(&htpasswd, format!("bob:{HASH}\nann:{HASH}\ncat:{HASH}\n")).unwrap();
    }
    let keys_dir = dir.join("keys");
    if !keys_dir.exists() {
        std::fs::create_dir(&keys_dir).unwrap();
        let (_, pem) = SigningKey::generate().unwrap();
        std::fs::write(keys_dir.join(keys::CURRENT_KEY), pem).unwrap();
    }
    GuardSettings {
        htpasswd: Some(htpasswd),
        public_read,
        rules: vec![
            Rule::new(&["bob"], &[], &["team/*"], &["pull", "push"]).unwrap(),
            Rule::new(&["ann"], &[], &["team/app"], &["pull"]).unwrap(),
            Rule::new(&["cat"], &[], &["cat/*"], &["pull", "push", "delete"]).unwrap(),
        ],
        token: Some(TokenSettings {
            realm: REALM.into(),
            service: SERVICE.into(),
            issuer: SERVICE.into(),
            keys: TokenKeys::Own {
                dir: keys_dir,
                lifetime: Duration::from_secs(300),
            },
        }),
        ..GuardSettings::default()
    }
}

impl T {
    fn new(public_read: bool) -> T {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("data").to_string_lossy().parse().unwrap();
        let app = Registry::builder(location)
            .request_log(false)
            .guard(settings(dir.path(), public_read))
            .build()
            .unwrap()
            .router()
            .layer(MockConnectInfo(
                "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
            ));
        T { app, dir }
    }

    fn records(&self) -> StoredTokens {
        let registry = Registry::builder(
            self.dir
                .path()
                .join("data")
                .to_string_lossy()
                .parse()
                .unwrap(),
        )
        .build()
        .unwrap();
        StoredTokens::new(registry.storage().object_store().clone())
    }

    /// An issuer with the instance's keys (to forge tokens the service would not grant).
    fn issuer(&self) -> TokenIssuer {
        let ring = KeyRing::open(&self.dir.path().join("keys")).unwrap();
        TokenIssuer::new(Arc::new(ring), SERVICE, Duration::from_secs(300))
    }

    async fn send(&self, request: Request<Body>) -> axum::response::Response {
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> axum::response::Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    /// `GET /auth/token` with these credentials and scopes.
    async fn token_get(&self, credentials: Option<&str>, query: &str) -> (StatusCode, Value) {
        let r = self
            .call(
                Method::GET,
                &format!("/auth/token?{query}"),
                credentials,
                vec![],
            )
            .await;
        (r.status(), json_of(r).await)
    }

    /// A Bearer header for `user` with `scope` from the token service.
    async fn bearer(&self, user: &str, scope: &str) -> String {
        let query = format!("service={SERVICE}&scope={}", urlencode(scope));
        let (status, body) = self.token_get(Some(&basic(user, "password")), &query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        format!("Bearer {}", body["token"].as_str().unwrap())
    }

    async fn post_form(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = Request::post("/auth/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let r = self.send(request).await;
        (r.status(), json_of(r).await)
    }
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn json_of(r: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn challenge(r: &axum::response::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn sha256(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).to_string()
}

fn image_manifest(config: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": size},
        "layers": [],
    }))
    .unwrap()
}

/// Pushes a config blob and a manifest tagged `v1` to `repo` with `auth`.
async fn push(t: &T, repo: &str, auth: &str) -> String {
    let config = format!("{{\"repo\":\"{repo}\"}}").into_bytes();
    let digest = sha256(&config);
    let r = t
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            Some(auth),
            config.clone(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "blob push to {repo}");
    let manifest = image_manifest(&digest, config.len());
    let request = Request::put(format!("/v2/{repo}/manifests/v1"))
        .header("authorization", auth)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(Body::from(manifest))
        .unwrap();
    let r = t.send(request).await;
    assert_eq!(r.status(), StatusCode::CREATED, "manifest push to {repo}");
    digest
}

#[tokio::test]
async fn challenges_name_the_scope_each_request_needs() {
    let t = T::new(false);
    let d = format!("sha256:{}", "a".repeat(64));
    let base = format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\"");
    let cases = [
        (Method::GET, "/v2/".to_owned(), base.clone()),
        (
            Method::GET,
            "/v2/_catalog".to_owned(),
            format!("{base},scope=\"registry:catalog:*\""),
        ),
        (
            Method::HEAD,
            "/v2/team/app/manifests/v1".to_owned(),
            format!("{base},scope=\"repository:team/app:pull\""),
        ),
        (
            Method::GET,
            format!("/v2/team/app/blobs/{d}"),
            format!("{base},scope=\"repository:team/app:pull\""),
        ),
        (
            Method::GET,
            "/v2/team/app/tags/list".to_owned(),
            format!("{base},scope=\"repository:team/app:pull\""),
        ),
        (
            Method::PUT,
            "/v2/team/app/manifests/v1".to_owned(),
            format!("{base},scope=\"repository:team/app:pull,push\""),
        ),
        (
            Method::POST,
            "/v2/team/app/blobs/uploads/".to_owned(),
            format!("{base},scope=\"repository:team/app:pull,push\""),
        ),
        (
            Method::POST,
            format!("/v2/team/app/blobs/uploads/?mount={d}&from=lib/base"),
            format!("{base},scope=\"repository:team/app:pull,push repository:lib/base:pull\""),
        ),
        (
            Method::DELETE,
            "/v2/team/app/manifests/v1".to_owned(),
            format!("{base},scope=\"repository:team/app:delete\""),
        ),
    ];
    for (method, path, expected) in cases {
        let r = t.call(method.clone(), &path, None, vec![]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(challenge(&r), expected, "{method} {path}");
    }
    // Basic credentials are not taken on the API in token mode: the client is sent for a token.
    let r = t
        .call(Method::GET, "/v2/", Some(&basic("bob", "password")), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).starts_with("Bearer "));
}

#[tokio::test]
async fn tokens_grant_what_was_asked_and_allowed_and_no_more() {
    let t = T::new(false);
    // bob may pull and push team/*, but not delete.
    let query = format!(
        "service={SERVICE}&scope=repository:team/app:pull,push,delete&scope=repository:other:pull"
    );
    let (status, body) = t.token_get(Some(&basic("bob", "password")), &query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["scope"], "repository:team/app:pull,push");
    assert!(body.get("refresh_token").is_none());
    let bob = format!("Bearer {}", body["token"].as_str().unwrap());
    push(&t, "team/app", &bob).await;
    let r = t
        .call(Method::GET, "/v2/team/app/manifests/v1", Some(&bob), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Not granted: delete here, anything elsewhere; a new token is what helps.
    let r = t
        .call(
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            Some(&bob),
            vec![],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r)
        .ends_with(",scope=\"repository:team/app:delete\",error=\"insufficient_scope\""));
    let r = t
        .call(Method::GET, "/v2/team/web/tags/list", Some(&bob), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // `docker login` asks for nothing and gets a token for nothing, which opens /v2/ only.
    let (status, body) = t
        .token_get(
            Some(&basic("ann", "password")),
            &format!("service={SERVICE}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "");
    let nothing = format!("Bearer {}", body["token"].as_str().unwrap());
    let r = t.call(Method::GET, "/v2/", Some(&nothing), vec![]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = t
        .call(
            Method::GET,
            "/v2/team/app/tags/list",
            Some(&nothing),
            vec![],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Wrong password and unknown users: 401 with a Basic challenge for the token endpoint.
    let (status, body) = t.token_get(Some(&basic("bob", "wrong")), &query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_grant");
    let r = t
        .call(
            Method::GET,
            "/auth/token",
            Some(&basic("nobody", "x")),
            vec![],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), "Basic realm=\"Registry\"");
    // Without public read, anonymous clients get no token at all.
    let (status, _) = t.token_get(None, &query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn public_read_gives_anonymous_clients_pull_tokens() {
    let t = T::new(true);
    let bob = t.bearer("bob", "repository:team/app:pull,push").await;
    push(&t, "team/app", &bob).await;
    let (status, body) = t
        .token_get(
            None,
            "service=registry.test&scope=repository:team/app:pull,push&offline_token=true",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "repository:team/app:pull");
    assert!(body.get("refresh_token").is_none(), "nobody to refresh");
    let anonymous = format!("Bearer {}", body["token"].as_str().unwrap());
    let r = t
        .call(
            Method::GET,
            "/v2/team/app/manifests/v1",
            Some(&anonymous),
            vec![],
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Anonymous pulls need no token at all; pushes need one.
    let r = t
        .call(Method::GET, "/v2/team/app/manifests/v1", None, vec![])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = t
        .call(Method::POST, "/v2/team/app/blobs/uploads/", None, vec![])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // ann's token for nothing still reads what anyone may.
    let ann = t.bearer("ann", "").await;
    let r = t
        .call(Method::GET, "/v2/team/app/tags/list", Some(&ann), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Every endpoint, with a token that grants its action on the repository and with one that
/// grants every other action: the first passes the guard, the second is asked for a new token.
#[tokio::test]
async fn rule_matrix() {
    let t = T::new(false);
    let issuer = t.issuer();
    let setup = t.bearer("cat", "repository:cat/app:pull,push").await;
    let config = push(&t, "cat/app", &setup).await;
    let upload = t
        .call(
            Method::POST,
            "/v2/cat/app/blobs/uploads/",
            Some(&setup),
            vec![],
        )
        .await;
    let location = upload.headers()["location"].to_str().unwrap().to_owned();
    use registry_auth::Action::{Delete, Pull, Push};
    let cases: Vec<(Method, String, registry_auth::Action)> = vec![
        (Method::GET, "/v2/cat/app/tags/list".into(), Pull),
        (Method::GET, "/v2/cat/app/manifests/v1".into(), Pull),
        (Method::HEAD, "/v2/cat/app/manifests/v1".into(), Pull),
        (Method::GET, format!("/v2/cat/app/blobs/{config}"), Pull),
        (Method::HEAD, format!("/v2/cat/app/blobs/{config}"), Pull),
        (Method::GET, format!("/v2/cat/app/referrers/{config}"), Pull),
        (Method::POST, "/v2/cat/app/blobs/uploads/".into(), Push),
        (Method::GET, location.clone(), Pull),
        (Method::PATCH, location.clone(), Push),
        (Method::PUT, "/v2/cat/app/manifests/v2".into(), Push),
        (Method::DELETE, "/v2/cat/app/manifests/v9".into(), Delete),
        (
            Method::DELETE,
            format!("/v2/cat/app/blobs/{}", sha256(b"none")),
            Delete,
        ),
    ];
    let all = [Pull, Push, Delete];
    for (method, path, action) in cases {
        let with = issuer
            .issue(
                "cat",
                SERVICE,
                vec![registry_auth::token::Scope::repository(
                    "cat/app",
                    &[action],
                )],
            )
            .unwrap()
            .token;
        let others: Vec<_> = all.iter().copied().filter(|a| *a != action).collect();
        let without = issuer
            .issue(
                "cat",
                SERVICE,
                vec![registry_auth::token::Scope::repository("cat/app", &others)],
            )
            .unwrap()
            .token;
        let r = t
            .call(
                method.clone(),
                &path,
                Some(&format!("Bearer {with}")),
                vec![],
            )
            .await;
        assert!(
            r.status() != StatusCode::UNAUTHORIZED && r.status() != StatusCode::FORBIDDEN,
            "{method} {path} with {action}: {}",
            r.status()
        );
        let r = t
            .call(
                method.clone(),
                &path,
                Some(&format!("Bearer {without}")),
                vec![],
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} without {action}"
        );
        assert!(challenge(&r).contains("error=\"insufficient_scope\""));
    }
}

#[tokio::test]
async fn mounts_need_pull_on_the_source() {
    let t = T::new(false);
    let cat = t.bearer("cat", "repository:cat/src:pull,push").await;
    let digest = push(&t, "cat/src", &cat).await;
    let mount = format!("/v2/cat/dst/blobs/uploads/?mount={digest}&from=cat/src");
    // Push on the target only: a plain upload session instead of the mount.
    let target_only = t.bearer("cat", "repository:cat/dst:pull,push").await;
    let r = t
        .call(Method::POST, &mount, Some(&target_only), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let both = t
        .bearer(
            "cat",
            "repository:cat/dst:pull,push repository:cat/src:pull",
        )
        .await;
    let r = t.call(Method::POST, &mount, Some(&both), vec![]).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_catalog_needs_its_scope_and_shows_what_may_be_pulled() {
    let t = T::new(false);
    let bob = t
        .bearer(
            "bob",
            "repository:team/app:pull,push repository:team/web:pull,push",
        )
        .await;
    push(&t, "team/app", &bob).await;
    push(&t, "team/web", &bob).await;
    let without = t.bearer("ann", "repository:team/app:pull").await;
    let r = t
        .call(Method::GET, "/v2/_catalog", Some(&without), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains("scope=\"registry:catalog:*\""));
    // A catalog token lists what its user may pull now: ann team/app, bob both.
    let ann = t.bearer("ann", "registry:catalog:*").await;
    let r = t
        .call(Method::GET, "/v2/_catalog", Some(&ann), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["repositories"], json!(["team/app"]));
    let bob = t.bearer("bob", "registry:catalog:*").await;
    let r = t
        .call(Method::GET, "/v2/_catalog", Some(&bob), vec![])
        .await;
    assert_eq!(
        json_of(r).await["repositories"],
        json!(["team/app", "team/web"])
    );
    // A token that only says what it grants (as an external issuer's would) lists that.
    let grant = t
        .issuer()
        .issue(
            "someone",
            SERVICE,
            vec![
                registry_auth::token::Scope::catalog(),
                registry_auth::token::Scope::repository("team/web", &[registry_auth::Action::Pull]),
            ],
        )
        .unwrap();
    let r = t
        .call(
            Method::GET,
            "/v2/_catalog",
            Some(&format!("Bearer {}", grant.token)),
            vec![],
        )
        .await;
    assert_eq!(json_of(r).await["repositories"], json!(["team/web"]));
}

#[tokio::test]
async fn oauth2_password_and_refresh_grants() {
    let t = T::new(false);
    let scope = "repository:team/app:pull";
    let (status, body) = t
        .post_form(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "password"),
            ("client_id", "docker"),
            ("service", SERVICE),
            ("scope", scope),
            ("access_type", "offline"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], scope);
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    // A refresh token is not an access token.
    let r = t
        .call(
            Method::GET,
            "/v2/",
            Some(&format!("Bearer {refresh}")),
            vec![],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&r).contains("another service"),
        "{}",
        challenge(&r)
    );
    let refreshed = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "docker"),
        ("service", SERVICE),
        ("scope", "repository:team/app:pull,push"),
    ];
    let (status, body) = t.post_form(&refreshed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "repository:team/app:pull,push");
    assert!(body.get("refresh_token").is_none());
    // The same with GET and offline_token, as `docker login` does.
    let (status, body) = t
        .token_get(
            Some(&basic("bob", "password")),
            &format!("service={SERVICE}&offline_token=true&client_id=docker"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["refresh_token"].is_string());
    // Bad forms.
    for (form, error) in [
        (
            vec![("grant_type", "password"), ("username", "bob")],
            "invalid_request",
        ),
        (
            vec![("grant_type", "client_credentials")],
            "unsupported_grant_type",
        ),
        (vec![("username", "bob")], "invalid_request"),
        (vec![("grant_type", "refresh_token")], "invalid_request"),
    ] {
        let (status, body) = t.post_form(&form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        assert_eq!(body["error"], error, "{form:?}");
    }
    let (status, body) = t
        .post_form(&[("grant_type", "refresh_token"), ("refresh_token", "junk")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = t
        .post_form(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "wrong"),
        ])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let big = "x".repeat(100_000);
    let (status, _) = t.post_form(&[("grant_type", big.as_str())]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A removed user's refresh token stops working.
    std::fs::write(t.dir.path().join("htpasswd"), format!("ann:{HASH}\n")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = t.post_form(&refreshed).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error"], "invalid_grant");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scoped_tokens_are_passwords_with_limits() {
    let t = T::new(false);
    let records = t.records();
    let secret = new_secret().unwrap();
    records
        .put(&TokenRecord {
            name: "ci-app".into(),
            secret_sha256: secret_hash(&secret),
            scopes: vec!["repository:app/*:pull,push".into()],
            created: 0,
            expires: None,
            owner: None,
            groups: Vec::new(),
            email: None,
        })
        .await
        .unwrap();
    let ci = basic("ci-app", &secret);
    let query = format!(
        "service={SERVICE}&scope=repository:app/web:pull,push,delete&scope=repository:team/app:pull"
    );
    let (status, body) = t.token_get(Some(&ci), &query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "repository:app/web:pull,push");
    let bearer = format!("Bearer {}", body["token"].as_str().unwrap());
    push(&t, "app/web", &bearer).await;
    // Its secret is a password nowhere else, and a wrong one is refused.
    let (status, _) = t
        .token_get(Some(&basic("ci-app", "rgt_wrong")), &query)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Revoked: no new tokens at once (the issued one lives out its few minutes).
    assert!(records.remove("ci-app").await.unwrap());
    let (status, _) = t.token_get(Some(&ci), &query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Expired tokens are refused too.
    let secret = new_secret().unwrap();
    records
        .put(&TokenRecord {
            name: "old".into(),
            secret_sha256: secret_hash(&secret),
            scopes: vec!["repository:app/*:pull".into()],
            created: 0,
            expires: Some(1),
            owner: None,
            groups: Vec::new(),
            email: None,
        })
        .await
        .unwrap();
    let (status, _) = t.token_get(Some(&basic("old", &secret)), &query).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_tokens_and_requests_are_refused_never_widened() {
    let t = T::new(false);
    let scope = vec![registry_auth::token::Scope::repository(
        "team/app",
        &[registry_auth::Action::Pull],
    )];
    // A token for another service, from another issuer, or signed by a stranger's key.
    let other_service = t.issuer().issue("bob", "elsewhere", scope.clone()).unwrap();
    let ring = KeyRing::open(&t.dir.path().join("keys")).unwrap();
    let other_issuer = TokenIssuer::new(Arc::new(ring), "mallory", Duration::from_secs(60))
        .issue("bob", SERVICE, scope.clone())
        .unwrap();
    let (stranger, _) = SigningKey::generate().unwrap();
    let stranger = TokenIssuer::new(
        Arc::new(KeyRing::fixed(stranger, None)),
        SERVICE,
        Duration::from_secs(60),
    )
    .issue("bob", SERVICE, scope)
    .unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let unsigned = format!(
        "{}.{}.",
        header.encode(r#"{"alg":"none","typ":"JWT"}"#),
        header.encode(
            json!({"iss": SERVICE, "sub": "bob", "aud": SERVICE, "exp": 4_000_000_000u64,
                   "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]})
            .to_string()
        )
    );
    let cases = [
        (other_service.token, "another service"),
        (other_issuer.token, "another issuer"),
        (stranger.token, "key is unknown"),
        (unsigned, "malformed"),
        ("not.a.jwt".to_owned(), "malformed"),
        ("x".repeat(20_000), "too long"),
    ];
    for (token, why) in cases {
        let r = t
            .call(
                Method::GET,
                "/v2/team/app/tags/list",
                Some(&format!("Bearer {token}")),
                vec![],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{why}");
        let c = challenge(&r);
        assert!(c.contains("error=\"invalid_token\""), "{c}");
        assert!(c.contains(why), "{why}: {c}");
        assert!(c.contains("scope=\"repository:team/app:pull\""), "{c}");
    }
    // Bad requests to the token service.
    let bob = basic("bob", "password");
    for (query, error) in [
        ("service=elsewhere", "invalid_request"),
        ("scope=repository:team/app", "invalid_scope"),
        ("scope=repository::pull", "invalid_scope"),
        ("scope=nonsense", "invalid_scope"),
    ] {
        let (status, body) = t.token_get(Some(&bob), query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"], error, "{query}");
    }
    // Repeated scopes are merged; unknown actions and resource types grant nothing.
    let (status, body) = t
        .token_get(
            Some(&bob),
            "scope=repository:team/app:pull&scope=repository:team/app:push&scope=repository:team/app:fly&scope=plugin:x:pull",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "repository:team/app:pull,push");
    let r = t
        .call(Method::GET, "/auth/token", Some("Bearer abc"), vec![])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
