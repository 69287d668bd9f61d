//! Hot paths: digest computation while streaming (against raw sha2 on the same buffer), manifest
//! parsing and validation, endpoint parsing, and a Bearer token's verification (ES256, every
//! authenticated request pays it).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use registry_core::{Algorithm, Hasher};
use registry_http::Endpoint;
use sha2::Digest as _;

fn digests(c: &mut Criterion) {
    let data = vec![0xa5u8; 4 * 1024 * 1024];
    let mut g = c.benchmark_group("digest_4MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("raw_sha2", |b| b.iter(|| sha2::Sha256::digest(&data)));
    for chunk in [16 * 1024, 256 * 1024] {
        g.bench_with_input(
            BenchmarkId::new("streaming_hasher", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let mut h = Hasher::new(Algorithm::Sha256);
                    for part in data.chunks(chunk) {
                        h.update(part);
                    }
                    h.finish()
                })
            },
        );
    }
    g.bench_function("save_and_restore_state", |b| {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(&data[..1000]);
        b.iter(|| Hasher::restore(&h.save()).unwrap())
    });
    g.finish();
}

fn manifests(c: &mut Criterion) {
    let layers: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{:064x}","size":{}}}"#, i, 1000 + i))
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":7023}},"layers":[{}]}}"#,
        99,
        layers.join(",")
    );
    c.bench_function("manifest_parse_20_layers", |b| {
        b.iter(|| {
            registry_core::manifest::parse(
                Some("application/vnd.oci.image.manifest.v1+json"),
                body.as_bytes(),
            )
            .unwrap()
        })
    });
}

fn endpoints(c: &mut Criterion) {
    let blob = format!("/v2/library/some/deep/name/blobs/sha256:{}", "a".repeat(64));
    c.bench_function("endpoint_parse_blob", |b| {
        b.iter(|| Endpoint::parse(&blob).unwrap())
    });
    c.bench_function("endpoint_parse_manifest_tag", |b| {
        b.iter(|| Endpoint::parse("/v2/library/alpine/manifests/3.20").unwrap())
    });
}

fn tokens(c: &mut Criterion) {
    use registry_auth::token::{KeyRing, Scope, SigningKey, TokenIssuer, TokenVerifier};
    use std::sync::Arc;
    let (key, _) = SigningKey::generate().unwrap();
    let keys = Arc::new(KeyRing::fixed(key, None));
    let issuer = TokenIssuer::new(keys.clone(), "bench", std::time::Duration::from_secs(300));
    let verifier = TokenVerifier::own("bench", "registry", keys);
    let access = vec![Scope::repository(
        "bench/read",
        &[registry_auth::Action::Pull, registry_auth::Action::Push],
    )];
    let token = issuer
        .issue("bench", "registry", access.clone())
        .unwrap()
        .token;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // A token seen for the first time: the ES256 signature and the claims are checked.
    c.bench_function("token_verify_es256_first", |b| {
        b.iter_batched(
            || {
                issuer
                    .issue("bench", "registry", access.clone())
                    .unwrap()
                    .token
            },
            |fresh| runtime.block_on(verifier.verify(&fresh)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    // The same token again, as docker sends it for every request of a pull: remembered.
    runtime.block_on(verifier.verify(&token)).unwrap();
    c.bench_function("token_verify_remembered", |b| {
        b.iter(|| runtime.block_on(verifier.verify(&token)).unwrap())
    });
    c.bench_function("token_issue_es256", |b| {
        b.iter(|| issuer.issue("bench", "registry", access.clone()).unwrap())
    });
}

criterion_group!(benches, digests, manifests, endpoints, tokens);
criterion_main!(benches);
