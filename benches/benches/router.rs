//! In-process requests through the router (no sockets): what one request costs in the HTTP
//! layer plus storage, on in-memory storage: blob upload and download, and the small requests
//! of a pull answered from the metadata cache (with the metrics layer, as `registry serve`
//! runs), plus a cache hit in the storage alone.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use registry_core::object_store::memory::InMemory;
use registry_core::{
    Algorithm, Digest, ManifestStore, ObjectRegistry, Reference, RepoName, StoreOptions,
};
use registry_http::metrics::Metrics;
use registry_http::{router, ApiConfig, RegistryState};
use tower::ServiceExt;

fn app() -> axum::Router {
    let storage = ObjectRegistry::new(Arc::new(InMemory::new()), StoreOptions::default());
    router(RegistryState::new(Arc::new(storage), ApiConfig::default()))
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, usize) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let len = resp.into_body().collect().await.unwrap().to_bytes().len();
    (status, len)
}

fn upload_download(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let blob: bytes::Bytes = vec![0x5au8; 1 << 20].into();
    let digest = Digest::of(Algorithm::Sha256, &blob);
    let app = app();
    let mut g = c.benchmark_group("router_1MiB");
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("upload_post_digest", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::post(format!("/v2/bench/blobs/uploads/?digest={digest}"))
                    .body(Body::from(blob.clone()))
                    .unwrap();
                assert_eq!(call(&app, req).await.0, StatusCode::CREATED);
            })
        })
    });
    g.bench_function("download", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::get(format!("/v2/bench/blobs/{digest}"))
                    .body(Body::empty())
                    .unwrap();
                let (status, len) = call(&app, req).await;
                assert_eq!((status, len), (StatusCode::OK, 1 << 20));
            })
        })
    });
    g.finish();
    c.bench_function("router_blob_head", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::head(format!("/v2/bench/blobs/{digest}"))
                    .body(Body::empty())
                    .unwrap();
                assert_eq!(call(&app, req).await.0, StatusCode::OK);
            })
        })
    });
}

/// Manifest GET and HEAD by tag and blob HEAD, repeated: answered from the metadata cache, but
/// for the one request per second that refills an expired entry from the in-memory store.
fn cached_pull(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let storage = Arc::new(ObjectRegistry::new(
        Arc::new(InMemory::new()),
        StoreOptions::default(),
    ));
    let app = router(
        RegistryState::new(storage.clone(), ApiConfig::default())
            .with_metrics(Arc::new(Metrics::new())),
    );
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = Digest::of(Algorithm::Sha256, config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    rt.block_on(async {
        let req = Request::post(format!(
            "/v2/bench/app/blobs/uploads/?digest={config_digest}"
        ))
        .body(Body::from(&config[..]))
        .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::CREATED);
        let req = Request::put("/v2/bench/app/manifests/latest")
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(Body::from(manifest.clone()))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::CREATED);
    });
    let accept =
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let mut g = c.benchmark_group("cached_pull");
    g.sample_size(50);
    for (name, method, uri) in [
        (
            "manifest_get_tag",
            "GET",
            "/v2/bench/app/manifests/latest".to_owned(),
        ),
        (
            "manifest_head_tag",
            "HEAD",
            "/v2/bench/app/manifests/latest".to_owned(),
        ),
        (
            "blob_head",
            "HEAD",
            format!("/v2/bench/app/blobs/{config_digest}"),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::builder()
                        .method(method)
                        .uri(&uri)
                        .header("accept", accept)
                        .body(Body::empty())
                        .unwrap();
                    assert_eq!(call(&app, req).await.0, StatusCode::OK);
                })
            })
        });
    }
    let repo: RepoName = "bench/app".parse().unwrap();
    let tag = Reference::Tag("latest".parse().unwrap());
    g.bench_function("storage_manifest_info_hit", |b| {
        b.iter(|| rt.block_on(async { storage.manifest_info(&repo, &tag).await.unwrap() }))
    });
    g.finish();
}

criterion_group!(benches, upload_download, cached_pull);
criterion_main!(benches);
