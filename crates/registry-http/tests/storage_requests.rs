//! How many storage requests each API call makes on an object store such as S3 (every write
//! durable, no scratch view, no local files): counted through `ObservedStore` around the store
//! and checked against the table in docs/storage-requests.md, so the table stays true. Caches
//! start cold with a new registry over the same store ("cold"); "warm" repeats a call within
//! the metadata cache's lifetime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::ObjectStore;
use registry_core::observe::{ObservedMultipart, ObservedStore, StoreObserver};
use registry_core::{Algorithm, Digest, GcOptions, ObjectRegistry, StoreOptions};
use registry_http::{router, ApiConfig, RegistryState};
use tower::ServiceExt;

const TABLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/storage-requests.md"
);
const OPS: [&str; 7] = ["get", "head", "put", "list", "delete", "copy", "rename"];

/// Counts operations by name.
#[derive(Debug, Default)]
struct Counter(Mutex<BTreeMap<&'static str, usize>>);

impl StoreObserver for Counter {
    fn observe(&self, op: &'static str, _: Duration, _: bool) {
        let op = match op {
            "list_with_delimiter" => "list",
            "get_ranges" => "get",
            other => other,
        };
        *self.0.lock().unwrap().entry(op).or_default() += 1;
    }
}

impl Counter {
    fn take(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Node {
    store: Arc<InMemory>,
    counter: Arc<Counter>,
    registry: Arc<ObjectRegistry>,
    app: Router,
}

impl Node {
    /// A node as on S3: every write durable, upload sessions in multipart uploads.
    fn new(store: Arc<InMemory>, counter: Arc<Counter>) -> Node {
        let observed: Arc<dyn ObjectStore> =
            Arc::new(ObservedStore::new(store.clone(), counter.clone()));
        let multipart: Arc<dyn MultipartStore> =
            Arc::new(ObservedMultipart::new(store.clone(), counter.clone()));
        let registry = Arc::new(
            ObjectRegistry::new(observed, StoreOptions::default()).with_multipart(multipart),
        );
        let app = router(RegistryState::new(registry.clone(), ApiConfig::default()));
        Node {
            store,
            counter,
            registry,
            app,
        }
    }

    /// A registry over the same store with cold caches, which has just looked at the garbage
    /// collection lease (as a process does at most once per second; not counted in the rows).
    async fn cold(&self) -> Node {
        let node = Node::new(self.store.clone(), self.counter.clone());
        let unknown = format!("/v2/prime/blobs/{}", sha256(b"nothing"));
        let (status, _, counts) = node.call(Method::HEAD, &unknown, &[], vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            counts.get("get"),
            Some(&2),
            "the lease and the link: {counts:?}"
        );
        node
    }

    /// Has this node look at the collection lease now (it does at most once per second), so
    /// that a call within the next second does not; not counted in the rows. (A row measured
    /// more than a second after the node last looked would count one GET more.)
    async fn see_lease(&self) {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let unknown = format!("/v2/prime/blobs/{}", sha256(b"nothing"));
        let (_, _, counts) = self.call(Method::HEAD, &unknown, &[], vec![]).await;
        assert_eq!(
            counts.get("get"),
            Some(&2),
            "the lease and the link: {counts:?}"
        );
    }

    /// Sends a request; returns its status, Location header, and the storage requests it made.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, String, BTreeMap<&'static str, usize>) {
        self.counter.take();
        let mut r = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let response = self
            .app
            .clone()
            .oneshot(r.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let _ = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, location, self.counter.take())
    }
}

/// Pushes a blob in one PATCH and a PUT; returns its digest.
async fn push_chunked(node: &Node, repo: &str, bytes: Vec<u8>) -> String {
    let digest = sha256(&bytes);
    let start = format!("/v2/{repo}/blobs/uploads/");
    let (_, location, _) = node.call(Method::POST, &start, &[], vec![]).await;
    let range = format!("0-{}", bytes.len() - 1);
    let (status, location, _) = node
        .call(
            Method::PATCH,
            &location,
            &[("content-range", &range)],
            bytes,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let sep = if location.contains('?') { '&' } else { '?' };
    let finish = format!("{location}{sep}digest={digest}");
    let (status, _, _) = node.call(Method::PUT, &finish, &[], vec![]).await;
    assert_eq!(status, StatusCode::CREATED);
    digest
}

fn sha256(bytes: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, bytes).to_string()
}

/// One row: the call, then the count of each operation and the total.
fn row(call: &str, counts: &BTreeMap<&'static str, usize>) -> String {
    let mut cells = vec![call.to_owned()];
    let mut total = 0;
    for op in OPS {
        let n = counts.get(op).copied().unwrap_or(0);
        total += n;
        cells.push(n.to_string());
    }
    let other: usize = counts
        .iter()
        .filter(|(op, _)| !OPS.contains(op))
        .map(|(_, n)| n)
        .sum();
    cells.push(other.to_string());
    cells.push((total + other).to_string());
    format!("| {} |", cells.join(" | "))
}

#[tokio::test]
async fn storage_requests_per_api_call_are_as_documented() {
    let node = Node::new(Arc::new(InMemory::new()), Arc::default());
    let mut rows = Vec::new();
    let mut expect = |call: &str,
                      (status, _, counts): (StatusCode, String, BTreeMap<&'static str, usize>),
                      want: StatusCode| {
        assert_eq!(status, want, "{call}");
        rows.push(row(call, &counts));
    };

    // Uploads.
    let layer = vec![7u8; 100_000];
    let layer_digest = sha256(&layer);
    let started = node
        .call(Method::POST, "/v2/app/blobs/uploads/", &[], vec![])
        .await;
    let location = started.1.clone();
    expect(
        "POST /v2/<name>/blobs/uploads/ (start a session)",
        started,
        StatusCode::ACCEPTED,
    );
    let patched = node
        .call(
            Method::PATCH,
            &location,
            &[("content-range", "0-99999")],
            layer.clone(),
        )
        .await;
    let location = patched.1.clone();
    expect("PATCH (first chunk, 100 KB)", patched, StatusCode::ACCEPTED);
    let finished = node
        .call(
            Method::PUT,
            &format!(
                "{location}{}digest={layer_digest}",
                if location.contains('?') { '&' } else { '?' }
            ),
            &[],
            vec![],
        )
        .await;
    expect(
        "PUT ?digest= (finish after one chunk)",
        finished,
        StatusCode::CREATED,
    );
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256(&config);
    let mono = node
        .call(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={config_digest}"),
            &[],
            config.clone(),
        )
        .await;
    expect(
        "POST ?digest= (monolithic upload)",
        mono,
        StatusCode::CREATED,
    );
    let mount = node
        .call(
            Method::POST,
            &format!("/v2/other/blobs/uploads/?mount={layer_digest}&from=app"),
            &[],
            vec![],
        )
        .await;
    expect(
        "POST ?mount=&from= (cross-repository mount)",
        mount,
        StatusCode::CREATED,
    );

    // A layer of two 6 MiB chunks: each is a part of the session's multipart upload.
    let big: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_digest = sha256(&big);
    let (_, mut location, _) = node
        .call(Method::POST, "/v2/app/blobs/uploads/", &[], vec![])
        .await;
    for (i, half) in big.chunks(6 << 20).enumerate() {
        let start = i * (6 << 20);
        let range = format!("{start}-{}", start + half.len() - 1);
        let patched = node
            .call(
                Method::PATCH,
                &location,
                &[("content-range", range.as_str())],
                half.to_vec(),
            )
            .await;
        location = patched.1.clone();
        let call = match i {
            0 => "PATCH (first chunk of 6 MiB: a part of a multipart upload)",
            _ => "PATCH (next chunk of 6 MiB)",
        };
        expect(call, patched, StatusCode::ACCEPTED);
    }
    node.see_lease().await;
    let finished = node
        .call(
            Method::PUT,
            &format!(
                "{location}{}digest={big_digest}",
                if location.contains('?') { '&' } else { '?' }
            ),
            &[],
            vec![],
        )
        .await;
    expect(
        "PUT ?digest= (finish after parts: complete, point, mark)",
        finished,
        StatusCode::CREATED,
    );
    expect(
        "GET /v2/<name>/blobs/<digest> (placed blob, cold)",
        node.cold()
            .await
            .call(
                Method::GET,
                &format!("/v2/app/blobs/{big_digest}"),
                &[],
                vec![],
            )
            .await,
        StatusCode::OK,
    );

    // Blobs.
    let blob = format!("/v2/app/blobs/{layer_digest}");
    expect(
        "HEAD /v2/<name>/blobs/<digest> (cold)",
        node.cold()
            .await
            .call(Method::HEAD, &blob, &[], vec![])
            .await,
        StatusCode::OK,
    );
    let cold = node.cold().await;
    expect(
        "GET /v2/<name>/blobs/<digest> (cold)",
        cold.call(Method::GET, &blob, &[], vec![]).await,
        StatusCode::OK,
    );
    expect(
        "GET /v2/<name>/blobs/<digest> (warm)",
        cold.call(Method::GET, &blob, &[], vec![]).await,
        StatusCode::OK,
    );
    expect(
        "HEAD /v2/<name>/blobs/<digest> (warm)",
        cold.call(Method::HEAD, &blob, &[], vec![]).await,
        StatusCode::OK,
    );

    // Manifests.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    let ct = [("content-type", "application/vnd.oci.image.manifest.v1+json")];
    let put = node
        .cold()
        .await
        .call(Method::PUT, "/v2/app/manifests/v1", &ct, manifest.clone())
        .await;
    expect(
        "PUT /v2/<name>/manifests/<tag> (image, 2 blobs)",
        put,
        StatusCode::CREATED,
    );
    let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
    let cold = node.cold().await;
    expect(
        "GET /v2/<name>/manifests/<tag> (cold)",
        cold.call(Method::GET, "/v2/app/manifests/v1", &accept, vec![])
            .await,
        StatusCode::OK,
    );
    expect(
        "GET /v2/<name>/manifests/<tag> (warm)",
        cold.call(Method::GET, "/v2/app/manifests/v1", &accept, vec![])
            .await,
        StatusCode::OK,
    );
    let by_digest = format!("/v2/app/manifests/{manifest_digest}");
    expect(
        "GET /v2/<name>/manifests/<digest>",
        node.cold()
            .await
            .call(Method::GET, &by_digest, &accept, vec![])
            .await,
        StatusCode::OK,
    );
    let cold = node.cold().await;
    expect(
        "HEAD /v2/<name>/manifests/<tag> (cold)",
        cold.call(Method::HEAD, "/v2/app/manifests/v1", &accept, vec![])
            .await,
        StatusCode::OK,
    );
    expect(
        "HEAD /v2/<name>/manifests/<tag> (warm)",
        cold.call(Method::HEAD, "/v2/app/manifests/v1", &accept, vec![])
            .await,
        StatusCode::OK,
    );

    // Listings.
    let cold = node.cold().await;
    expect(
        "GET /v2/<name>/tags/list (cold)",
        cold.call(Method::GET, "/v2/app/tags/list", &[], vec![])
            .await,
        StatusCode::OK,
    );
    expect(
        "GET /v2/<name>/tags/list (warm)",
        cold.call(Method::GET, "/v2/app/tags/list", &[], vec![])
            .await,
        StatusCode::OK,
    );
    expect(
        "GET /v2/_catalog (cold)",
        cold.call(Method::GET, "/v2/_catalog", &[], vec![]).await,
        StatusCode::OK,
    );
    expect(
        "GET /v2/_catalog (warm)",
        cold.call(Method::GET, "/v2/_catalog", &[], vec![]).await,
        StatusCode::OK,
    );
    let referrers = format!("/v2/app/referrers/{manifest_digest}");
    expect(
        "GET /v2/<name>/referrers/<digest>",
        node.cold()
            .await
            .call(Method::GET, &referrers, &[], vec![])
            .await,
        StatusCode::OK,
    );

    // Deletion.
    expect(
        "DELETE /v2/<name>/manifests/<tag>",
        node.cold()
            .await
            .call(Method::DELETE, "/v2/app/manifests/v1", &[], vec![])
            .await,
        StatusCode::ACCEPTED,
    );
    expect(
        "DELETE /v2/<name>/manifests/<digest>",
        node.cold()
            .await
            .call(Method::DELETE, &by_digest, &[], vec![])
            .await,
        StatusCode::ACCEPTED,
    );
    expect(
        "DELETE /v2/<name>/blobs/<digest>",
        node.cold()
            .await
            .call(Method::DELETE, &blob, &[], vec![])
            .await,
        StatusCode::ACCEPTED,
    );

    let header = format!(
        "| call | {} | other | total |\n|{}",
        OPS.join(" | "),
        "---|".repeat(OPS.len() + 3)
    );
    let measured = format!("{header}\n{}\n", rows.join("\n"));
    let doc = std::fs::read_to_string(TABLE).unwrap_or_default();
    let documented: String = doc
        .lines()
        .skip_while(|l| !l.starts_with("| call |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        documented, measured,
        "docs/storage-requests.md is out of date; the measured table is:\n{measured}"
    );
}

/// A garbage collection keeping `layers` placed blobs (6 MiB layers, each a multipart upload
/// with a pointer at its key) of one tagged image: the storage requests it makes.
async fn collection_keeping(layers: u8) -> BTreeMap<&'static str, usize> {
    let node = Node::new(Arc::new(InMemory::new()), Arc::default());
    let mut descriptors = Vec::new();
    for seed in 0..layers {
        let bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8 ^ seed).collect();
        let size = bytes.len();
        let digest = push_chunked(&node, "app", bytes).await;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = b"{}".to_vec();
    let config_digest = push_chunked(&node, "app", config.clone()).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let ct = [("content-type", "application/vnd.oci.image.manifest.v1+json")];
    let (status, _, _) = node
        .call(Method::PUT, "/v2/app/manifests/v1", &ct, manifest)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Nothing is young (store timestamps have whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let options = GcOptions {
        grace: Duration::ZERO,
        settle: Duration::ZERO,
        ..GcOptions::default()
    };
    node.counter.take();
    let summary = node
        .registry
        .gc(&options, |d| panic!("{d:?}"))
        .await
        .unwrap();
    assert_eq!(summary.blobs, 0, "{summary:?}");
    node.counter.take()
}

/// A collection's look at the bytes of multipart uploads costs listings, not requests per
/// placed blob (docs/storage-requests.md, "Garbage collection").
#[tokio::test]
async fn collections_make_no_request_per_placed_blob() {
    let one = collection_keeping(1).await;
    let four = collection_keeping(4).await;
    assert_eq!(one, four, "keeping 1 placed blob, then 4");
}
