//! The guard in front of the router, in-process: the client's address comes from
//! `MockConnectInfo` (as axum's testing example does), credentials from headers.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use registry_auth::ip::IpRanges;
use registry_auth::GuardSettings;
use registry_http::Registry;
use tower::ServiceExt;

/// `bob:password` in Apache MD5 (`htpasswd -m`).
const HTPASSWD: &str = "bob:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n";
/// `Basic base64("bob:password")`.
const BOB: &str = "Basic Ym9iOnBhc3N3b3Jk";

fn app(dir: &tempfile::TempDir, guard: GuardSettings, peer: &str) -> Router {
    let location = dir.path().join("data").to_string_lossy().parse().unwrap();
    Registry::builder(location)
        .request_log(false)
        .guard(guard)
        .build()
        .unwrap()
        .router()
        .layer(MockConnectInfo(peer.parse::<SocketAddr>().unwrap()))
}

async fn status(app: &Router, path: &str, authorization: Option<&str>) -> StatusCode {
    let mut request = Request::get(path);
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    response.status()
}

#[tokio::test]
async fn addresses_then_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let guard = GuardSettings {
        htpasswd: Some(htpasswd),
        allow: IpRanges::parse(&["10.0.0.0/8"]).unwrap(),
        ..GuardSettings::default()
    };
    let inside = app(&dir, guard.clone(), "10.1.2.3:40000");
    let outside = app(&dir, guard, "192.0.2.7:40000");
    // A denied address is refused before credentials are even looked at.
    assert_eq!(
        status(&outside, "/v2/", Some(BOB)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&outside, "/healthz", None).await,
        StatusCode::FORBIDDEN
    );
    // An allowed address must still authenticate; health checks need no credentials.
    assert_eq!(
        status(&inside, "/v2/", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&inside, "/v2/", Some("Basic Ym9iOng=")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&inside, "/v2/", Some(BOB)).await, StatusCode::OK);
    assert_eq!(status(&inside, "/healthz", None).await, StatusCode::OK);
    assert_eq!(
        status(&inside, "/v2/_catalog", Some(BOB)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn public_read() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).unwrap();
    let guard = GuardSettings {
        htpasswd: Some(htpasswd),
        public_read: true,
        ..GuardSettings::default()
    };
    let app = app(&dir, guard, "127.0.0.1:40000");
    assert_eq!(status(&app, "/v2/", None).await, StatusCode::OK);
    assert_eq!(status(&app, "/v2/_catalog", None).await, StatusCode::OK);
    let push = Request::post("/v2/a/blobs/uploads/")
        .body(Body::empty())
        .unwrap();
    let r = app.clone().oneshot(push).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"Registry\"");
}
