//! In-process upload and download through the router (no sockets): what one request costs in
//! the HTTP layer plus storage, on in-memory storage.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::BodyExt;
use registry_core::object_store::memory::InMemory;
use registry_core::{Algorithm, Digest, ObjectRegistry, StoreOptions};
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

criterion_group!(benches, upload_download);
criterion_main!(benches);
