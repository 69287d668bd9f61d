//! The backend test suite: one set of checks that every storage backend must pass. Each check
//! gets a fresh, empty [`Backend`] from the caller's factory; checks that need a "second
//! process" open another registry over the same backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::multipart::MultipartStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::digest::{Algorithm, Digest};
use crate::error::Error;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::*;
use crate::store::{ObjectRegistry, Problem, StoreOptions};

/// A storage backend under test: the store, and optionally a scratch view of it.
#[derive(Clone)]
pub struct Backend {
    /// The durable store.
    pub store: Arc<dyn ObjectStore>,
    /// The scratch store for upload chunks, if the backend uses one.
    pub scratch: Option<Arc<dyn ObjectStore>>,
    /// The directory of a filesystem store, when uploads append to staging files there.
    pub staging: Option<std::path::PathBuf>,
    /// Multipart uploads of the store, when upload sessions stream into them (S3).
    pub multipart: Option<Arc<dyn MultipartStore>>,
}

impl Backend {
    /// A backend without scratch store.
    pub fn plain(store: Arc<dyn ObjectStore>) -> Backend {
        Backend {
            store,
            scratch: None,
            staging: None,
            multipart: None,
        }
    }

    /// A registry over this backend (each call is like another process).
    pub fn registry(&self) -> ObjectRegistry {
        // A small buffer so that multi-part writes are exercised by small test data.
        let r = ObjectRegistry::new(
            self.store.clone(),
            StoreOptions {
                write_buffer: 64 * 1024,
                write_concurrency: 2,
                // Small, so that merged chunks and streamed publishing are exercised too.
                coalesce_below: 100 * 1024,
                copy_limit: 150 * 1024,
                // Parts of multipart sessions from 96 KiB (S3 takes 5 MiB parts; Garage and
                // memory take any): held bytes and growing parts are exercised too.
                part_min: 96 * 1024,
                ..StoreOptions::default()
            },
        );
        let r = match &self.multipart {
            Some(m) => r.with_multipart(m.clone()),
            None => r,
        };
        let r = match &self.scratch {
            Some(s) => r.with_scratch(s.clone()),
            None => r,
        };
        match &self.staging {
            Some(root) => r.with_local_staging(root.clone()),
            None => r,
        }
    }
}

/// Runs every check over plain stores. `fresh` returns an empty object store each time.
pub async fn run_all<F: Fn() -> Arc<dyn ObjectStore>>(fresh: F) {
    run_all_backends(|| Backend::plain(fresh())).await
}

/// Runs every check. `fresh` returns an empty backend each time it is called.
pub async fn run_all_backends<F: Fn() -> Backend>(fresh: F) {
    let registry = |b: Backend| b.registry();
    monolithic_upload_and_scoped_read(registry(fresh())).await;
    chunked_upload_survives_restart(fresh()).await;
    concurrent_appends_to_one_session(fresh()).await;
    many_chunks_of_any_size(fresh()).await;
    digest_and_size_mismatch_leave_nothing(registry(fresh())).await;
    garbage_claiming_a_stored_digest_is_refused(registry(fresh())).await;
    let with_scratch = fresh();
    if with_scratch.scratch.is_some() && with_scratch.staging.is_none() {
        damaged_chunk_is_never_published(with_scratch).await;
    }
    let staged = fresh();
    if staged.staging.is_some() {
        staged_uploads_write_each_byte_once(staged).await;
    }
    let placed = fresh();
    if placed.multipart.is_some() {
        multipart_sessions_are_placed_and_collected(placed).await;
    }
    cancel_and_unknown_sessions(registry(fresh())).await;
    mount_between_repositories(registry(fresh())).await;
    pull_through_cache_fills(registry(fresh())).await;
    cache_quota_evicts_the_least_recently_used(registry(fresh())).await;
    manifests_tags_and_referrers(registry(fresh())).await;
    tag_lists_stay_fresh_across_nodes(fresh()).await;
    metadata_cache_staleness_is_bounded(fresh()).await;
    catalog_stays_fresh_across_nodes(fresh()).await;
    catalog_pages(registry(fresh())).await;
    purge_removes_idle_sessions(registry(fresh())).await;
    concurrent_pushes_of_one_blob(registry(fresh())).await;
    sha512_blobs(registry(fresh())).await;
    fsck_finds_and_repairs(fresh()).await;
    gc_deletes_only_garbage(registry(fresh())).await;
}

/// Sessions streaming into multipart uploads (S3): chunks below a part are held, parts cut
/// from chunks of any size, the finish completes the upload and points the blob's key at it;
/// reads (whole and ranged), fsck and garbage collection follow the pointer; a cancelled
/// session leaves nothing; bytes no pointer names are collected; a session started by a node
/// without multipart uploads finishes on one with them.
async fn multipart_sessions_are_placed_and_collected(backend: Backend) {
    use crate::store::GcOptions;
    let r = repo("placed");
    let nodes = [backend.registry(), backend.registry(), backend.registry()];
    // With 96 KiB parts: held, held, parts (and held rest), held, parts, last bytes at finish.
    let sizes = [50_000, 30_000, 250_000, 10_000, 330_000, 7_000];
    let total: usize = sizes.iter().sum();
    let bytes = data(total, 77);
    let d = Digest::of(Algorithm::Sha256, &bytes);
    let up = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    let mut offset = 0;
    for (i, n) in sizes[..sizes.len() - 1].iter().enumerate() {
        let chunk = &bytes[offset..offset + n];
        let status = nodes[i % 2]
            .upload_append(&r, &up.id, Some(offset as u64), None, body(chunk, 4096))
            .await
            .unwrap();
        offset += n;
        assert_eq!(status.size, offset as u64);
    }
    let last = &bytes[offset..];
    nodes[2]
        .upload_finish(&r, &up.id, &d, Some((None, body(last, 1000))))
        .await
        .unwrap();
    // The blob's key holds a pointer; the bytes are where the session put them.
    let key = crate::layout::blob(&d);
    let stored = backend.store.head(&key).await.unwrap();
    assert_eq!(stored.size, 128, "a pointer");
    let placed = crate::layout::placed(&up.id);
    assert_eq!(
        backend.store.head(&placed).await.unwrap().size,
        total as u64
    );
    let session: Vec<_> = backend
        .store
        .list(Some(&crate::layout::upload_dir(&up.id)))
        .collect()
        .await;
    assert!(session.is_empty(), "the session is gone: {session:?}");
    for s in &nodes {
        assert_eq!(s.blob_size(&r, &d).await.unwrap(), total as u64);
        assert_eq!(read_all(s, &r, &d, None).await, bytes);
        // Ranges past the pointer's length, and within it.
        assert_eq!(
            read_all(s, &r, &d, Some(300_000..300_100)).await,
            &bytes[300_000..300_100]
        );
        assert_eq!(read_all(s, &r, &d, Some(10..20)).await, &bytes[10..20]);
    }
    // A monolithic upload streams in parts straight to the blob's key: no pointer.
    let whole = data(400_000, 78);
    let dw = push_blob(&nodes[2], &r, &whole).await;
    let stored = backend.store.head(&crate::layout::blob(&dw)).await.unwrap();
    assert_eq!(stored.size, whole.len() as u64);
    assert_eq!(read_all(&nodes[0], &r, &dw, None).await, whole);
    // Pushing the same bytes again leaves the pointer as it is.
    assert_eq!(push_blob(&nodes[1], &r, &bytes).await, d);
    assert_eq!(read_all(&nodes[0], &r, &d, None).await, bytes);
    let summary = nodes[0].fsck(false, |p| panic!("{p}")).await.unwrap();
    assert_eq!(
        summary.blob_bytes,
        (total + whole.len()) as u64,
        "{summary:?}"
    );

    // A cancelled session aborts its multipart upload and leaves nothing.
    let gone = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    nodes[0]
        .upload_append(&r, &gone.id, None, None, body(&data(200_000, 3), 8192))
        .await
        .unwrap();
    let upload = multipart_upload_of(&backend, &gone.id).await;
    nodes[1].upload_cancel(&r, &gone.id).await.unwrap();
    assert_aborted(&backend, &gone.id, &upload).await;

    // A wrong digest ends the session; nothing is published.
    let wrong = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    let other = data(220_000, 4);
    nodes[0]
        .upload_append(&r, &wrong.id, None, None, body(&other, 8192))
        .await
        .unwrap();
    let claimed = Digest::of(Algorithm::Sha256, b"something else");
    let upload = multipart_upload_of(&backend, &wrong.id).await;
    assert!(matches!(
        nodes[1].upload_finish(&r, &wrong.id, &claimed, None).await,
        Err(Error::DigestMismatch { .. })
    ));
    assert!(!exists(&backend, &crate::layout::blob(&claimed)).await);
    assert_aborted(&backend, &wrong.id, &upload).await;

    // A session of a node without multipart uploads finishes on one with them.
    let plain = Backend {
        multipart: None,
        ..backend.clone()
    }
    .registry();
    let old = plain.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let earlier = data(180_000, 9);
    plain
        .upload_append(&r, &old.id, None, None, body(&earlier, 8192))
        .await
        .unwrap();
    let de = Digest::of(Algorithm::Sha256, &earlier);
    nodes[0]
        .upload_finish(&r, &old.id, &de, None)
        .await
        .unwrap();
    assert_eq!(read_all(&plain, &r, &de, None).await, earlier);

    // Garbage collection: bytes no pointer names (a finish that crashed before pointing),
    // unless a session may still point to them; then an unlinked placed blob, pointer first.
    let orphan = crate::layout::placed("00000000-0000-4000-8000-000000000001");
    backend
        .store
        .put(&orphan, Bytes::from_static(b"left by a crash").into())
        .await
        .unwrap();
    let live = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    let pending = crate::layout::placed(&live.id);
    backend
        .store
        .put(&pending, Bytes::from_static(b"being finished").into())
        .await
        .unwrap();
    nodes[0].blob_delete(&r, &d).await.unwrap();
    // (Timestamps have whole seconds on some stores.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let options = GcOptions {
        grace: Duration::ZERO,
        settle: Duration::ZERO,
        upload_max_age: Duration::from_secs(3600),
        ..GcOptions::default()
    };
    let mut deleted = Vec::new();
    nodes[1]
        .gc(&options, |del| deleted.push((del.kind, del.path.clone())))
        .await
        .unwrap();
    assert!(deleted.contains(&("blob", key.to_string())), "{deleted:?}");
    assert!(
        deleted.contains(&("placed", orphan.to_string())),
        "{deleted:?}"
    );
    assert!(!exists(&backend, &key).await);
    assert!(
        !exists(&backend, &placed).await,
        "the pointer's bytes go too"
    );
    assert!(!exists(&backend, &orphan).await);
    assert!(
        exists(&backend, &pending).await,
        "its session may still point to it"
    );
    assert!(matches!(
        nodes[0].blob_read(&r, &d, None).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(
        !exists(&backend, &crate::layout::placed_mark(&up.id, &d)).await,
        "the mark goes with the pointer"
    );
    placed_marks_are_kept_true(&backend, &nodes, &options).await;

    // fsck hashes a pointer's bytes; repair moves a corrupt pointer and its bytes aside.
    let bad = data(200_000, 12);
    let up = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    nodes[0]
        .upload_append(&r, &up.id, None, None, body(&bad, 8192))
        .await
        .unwrap();
    let db = Digest::of(Algorithm::Sha256, &bad);
    nodes[0].upload_finish(&r, &up.id, &db, None).await.unwrap();
    let bytes_at = crate::layout::placed(&up.id);
    backend
        .store
        .put(&bytes_at, vec![0u8; bad.len()].into())
        .await
        .unwrap();
    let mut problems = Vec::new();
    let summary = nodes[1]
        .fsck(true, |p| problems.push(p.clone()))
        .await
        .unwrap();
    assert!(
        matches!(problems.as_slice(), [Problem::CorruptBlob { path, .. }, ..] if *path == crate::layout::blob(&db).to_string()),
        "{problems:?}"
    );
    assert_eq!(
        summary.repaired, 2,
        "the blob, then its dangling link: {problems:?}"
    );
    assert!(!exists(&backend, &crate::layout::blob(&db)).await);
    assert!(!exists(&backend, &bytes_at).await);
}

/// A finish marks the bytes its pointer names; a collection reads no pointer for bytes with
/// one mark, marks bytes a pointer names that have none (placed before marks, or a finish
/// stopped between pointer and mark), deletes the bytes of a session that lost a race to
/// point at the same digest (two marks, one pointer) and marks whose bytes are gone.
async fn placed_marks_are_kept_true(
    backend: &Backend,
    nodes: &[ObjectRegistry],
    options: &crate::store::GcOptions,
) {
    use crate::layout::{placed, placed_mark};
    let r = repo("placed/kept");
    let mut layers = Vec::new();
    let mut ids = Vec::new();
    for seed in [21, 22] {
        let bytes = data(300_000, seed);
        let d = Digest::of(Algorithm::Sha256, &bytes);
        let up = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
        nodes[0]
            .upload_append(&r, &up.id, None, None, body(&bytes, 8192))
            .await
            .unwrap();
        nodes[0].upload_finish(&r, &up.id, &d, None).await.unwrap();
        let mark = placed_mark(&up.id, &d);
        assert!(exists(backend, &mark).await, "{mark} after the finish");
        layers.push((d, bytes.len()));
        ids.push(up.id);
    }
    let cfg = push_blob(&nodes[0], &r, b"{}").await;
    put(
        &nodes[0],
        &r,
        "v1",
        OCI_MANIFEST,
        &image_manifest(&cfg, 2, &layers, None),
    )
    .await;
    let (d1, d2) = (&layers[0].0, &layers[1].0);
    // The second blob's bytes lose their mark; a session that lost the race for the first
    // left its bytes and its mark; a mark outlived its bytes.
    let unmarked = placed_mark(&ids[1], d2);
    backend.store.delete(&unmarked).await.unwrap();
    let loser = "00000000-0000-4000-8000-000000000002";
    let stale = placed_mark("00000000-0000-4000-8000-000000000003", d2);
    for (key, bytes) in [
        (placed(loser), Bytes::from(data(300_000, 21))),
        (placed_mark(loser, d1), Bytes::new()),
        (stale.clone(), Bytes::new()),
    ] {
        backend.store.put(&key, bytes.into()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut deleted = Vec::new();
    nodes[1]
        .gc(options, |del| deleted.push((del.kind, del.path.clone())))
        .await
        .unwrap();
    assert_eq!(deleted, [("placed", placed(loser).to_string())]);
    for gone in [placed(loser), placed_mark(loser, d1), stale] {
        assert!(!exists(backend, &gone).await, "{gone}");
    }
    assert!(exists(backend, &unmarked).await, "marked again");
    for (i, (d, size)) in layers.iter().enumerate() {
        assert!(exists(backend, &placed(&ids[i])).await);
        assert_eq!(read_all(&nodes[2], &r, d, None).await.len(), *size);
    }
}

/// The id of session `id`'s multipart upload, from its document.
async fn multipart_upload_of(backend: &Backend, id: &str) -> String {
    let raw = backend
        .store
        .get(&crate::layout::upload_state(id))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    doc["placed"]["upload"]
        .as_str()
        .expect("a multipart upload")
        .to_owned()
}

/// Session `id`'s multipart upload was aborted: it takes no part, and completed nothing.
async fn assert_aborted(backend: &Backend, id: &str, upload: &str) {
    let key = crate::layout::placed(id);
    let mp = backend.multipart.as_ref().expect("multipart uploads");
    let part = mp
        .put_part(
            &key,
            &upload.to_owned(),
            0,
            Bytes::from_static(b"late").into(),
        )
        .await;
    assert!(part.is_err(), "the upload still takes parts");
    assert!(!exists(backend, &key).await);
}

async fn exists(backend: &Backend, path: &object_store::path::Path) -> bool {
    match backend.store.head(path).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("{e}"),
    }
}

/// A body of `data` in chunks of `chunk` bytes.
pub fn body(data: &[u8], chunk: usize) -> ByteStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// Deterministic test data.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

async fn read_all(
    s: &ObjectRegistry,
    r: &RepoName,
    d: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let mut read = s.blob_read(r, d, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = read.stream.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// Pushes a blob in one request; returns its digest.
pub async fn push_blob(s: &ObjectRegistry, r: &RepoName, bytes: &[u8]) -> Digest {
    let d = Digest::of(Algorithm::Sha256, bytes);
    let up = s.upload_start(r, Algorithm::Sha256).await.unwrap();
    let size = s
        .upload_finish(
            r,
            &up.id,
            &d,
            Some((Some(bytes.len() as u64), body(bytes, 10_000))),
        )
        .await
        .unwrap();
    assert_eq!(size, bytes.len() as u64);
    d
}

async fn monolithic_upload_and_scoped_read(s: ObjectRegistry) {
    let (a, b) = (repo("a/x"), repo("b"));
    let bytes = data(300_000, 1);
    let d = push_blob(&s, &a, &bytes).await;
    assert_eq!(s.blob_size(&a, &d).await.unwrap(), 300_000);
    assert_eq!(read_all(&s, &a, &d, None).await, bytes);
    assert_eq!(read_all(&s, &a, &d, Some(10..20)).await, &bytes[10..20]);
    assert!(matches!(
        s.blob_size(&b, &d).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(matches!(
        s.blob_read(&b, &d, None).await,
        Err(Error::BlobUnknown(_))
    ));
    // The empty blob.
    let e = push_blob(&s, &a, b"").await;
    assert_eq!(read_all(&s, &a, &e, None).await, b"");
    s.blob_delete(&a, &d).await.unwrap();
    assert!(matches!(
        s.blob_size(&a, &d).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(matches!(
        s.blob_delete(&a, &d).await,
        Err(Error::BlobUnknown(_))
    ));
}

async fn chunked_upload_survives_restart(backend: Backend) {
    let r = repo("chunky");
    let bytes = data(200_000, 2);
    let d = Digest::of(Algorithm::Sha256, &bytes);
    let first = backend.registry();
    let up = first.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let st = first
        .upload_append(
            &r,
            &up.id,
            Some(0),
            Some(70_000),
            body(&bytes[..70_000], 4096),
        )
        .await
        .unwrap();
    assert_eq!(st.size, 70_000);
    // Out of order and repeated chunks are refused without changing the session.
    let err = first
        .upload_append(&r, &up.id, Some(0), None, body(&bytes[..10], 10))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::RangeInvalid {
            expected: 70_000,
            got: 0
        }
    ));
    // A second process over the same storage continues the session.
    let second = backend.registry();
    assert_eq!(second.upload_status(&r, &up.id).await.unwrap().size, 70_000);
    second
        .upload_append(&r, &up.id, None, None, body(&bytes[70_000..150_000], 333))
        .await
        .unwrap();
    let size = second
        .upload_finish(
            &r,
            &up.id,
            &d,
            Some((None, body(&bytes[150_000..], 50_000))),
        )
        .await
        .unwrap();
    assert_eq!(size, 200_000);
    assert_eq!(read_all(&second, &r, &d, None).await, bytes);
    assert!(matches!(
        second.upload_status(&r, &up.id).await,
        Err(Error::UploadUnknown)
    ));
    for store in std::iter::once(&backend.store).chain(backend.scratch.iter()) {
        let left: Vec<_> = store
            .list(Some(&crate::layout::uploads_root()))
            .collect()
            .await;
        assert!(left.is_empty(), "upload data left behind: {left:?}");
    }
}

/// A body that sends `data` in chunks of `chunk` bytes with a pause before each.
fn slow_body(data: &[u8], chunk: usize, pause: Duration) -> ByteStream {
    let chunks: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
    futures::stream::iter(chunks)
        .then(move |c| async move {
            tokio::time::sleep(pause).await;
            Ok(c)
        })
        .boxed()
}

/// Two appends racing for one session's next chunk (parallel PATCHes): never both succeed,
/// the loser learns the true size, and the session goes on from there. In one process exactly
/// one wins; across two processes at most one.
async fn concurrent_appends_to_one_session(backend: Backend) {
    let r = repo("racing");
    let (a, b) = (data(30_000, 3), data(30_000, 4));
    for nodes in [1, 2] {
        let first = backend.registry();
        let second = match nodes {
            1 => first.clone(),
            _ => backend.registry(),
        };
        let up = first.upload_start(&r, Algorithm::Sha256).await.unwrap();
        let pause = Duration::from_millis(5);
        let (one, two) = tokio::join!(
            first.upload_append(&r, &up.id, None, None, slow_body(&a, 3000, pause)),
            second.upload_append(&r, &up.id, None, None, slow_body(&b, 3000, pause)),
        );
        let outcomes = [one, two];
        let won: Vec<usize> = (0..2).filter(|&i| outcomes[i].is_ok()).collect();
        match nodes {
            1 => assert_eq!(won.len(), 1, "one process: exactly one wins: {outcomes:?}"),
            _ => assert!(won.len() <= 1, "never both: {outcomes:?}"),
        }
        let size = won.len() as u64 * 30_000;
        for outcome in &outcomes {
            match outcome {
                Ok(status) => assert_eq!(status.size, 30_000),
                // (When neither wins, across processes, the true size is the one both loaded.)
                Err(Error::ConcurrentAppend { size: s }) => assert_eq!(*s, size, "true size"),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(first.upload_status(&r, &up.id).await.unwrap().size, size);
        // The session goes on from where it truly stands.
        let mut whole = match won.first() {
            Some(0) => a.clone(),
            Some(_) => b.clone(),
            None => Vec::new(),
        };
        let rest = data(1000, 5);
        whole.extend_from_slice(&rest);
        let d = Digest::of(Algorithm::Sha256, &whole);
        second
            .upload_append(&r, &up.id, Some(size), None, body(&rest, 100))
            .await
            .unwrap();
        first.upload_finish(&r, &up.id, &d, None).await.unwrap();
        assert_eq!(read_all(&first, &r, &d, None).await, whole);
    }
}

/// Many chunks of any size in any mix, sent to two nodes in turn and finished on a third: small
/// chunks are merged, so the session stays a few objects (S3 allows at most 10 000 parts per
/// object); a single chunk above the backend's copy limit is published by a streamed copy.
async fn many_chunks_of_any_size(backend: Backend) {
    let r = repo("many");
    let sizes: Vec<usize> = (0..200)
        .map(|i| match i % 50 {
            25 => 180_000,
            _ => 1 + (i * 37) % 3000,
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let bytes = data(total, 21);
    let d = Digest::of(Algorithm::Sha256, &bytes);
    let nodes = [backend.registry(), backend.registry()];
    let up = nodes[0].upload_start(&r, Algorithm::Sha256).await.unwrap();
    let mut offset = 0;
    for (i, n) in sizes.iter().enumerate() {
        let chunk = &bytes[offset..offset + n];
        nodes[i % 2]
            .upload_append(
                &r,
                &up.id,
                Some(offset as u64),
                Some(*n as u64),
                body(chunk, 64),
            )
            .await
            .unwrap();
        offset += n;
    }
    let dir = crate::layout::upload_dir(&up.id);
    // (Both views may be one directory.)
    let mut objects = std::collections::BTreeSet::new();
    for store in std::iter::once(&backend.store).chain(backend.scratch.iter()) {
        let listed: Vec<_> = store
            .list(Some(&dir))
            .map(|m| m.unwrap().location)
            .collect()
            .await;
        objects.extend(listed);
    }
    let objects = objects.len();
    // A part per 100 KiB (the suite's coalescing size) at most, the first, and the document.
    assert!(objects <= total / (100 * 1024) + 3, "{objects} objects");
    let third = backend.registry();
    let size = third.upload_finish(&r, &up.id, &d, None).await.unwrap();
    assert_eq!(size, total as u64);
    assert_eq!(read_all(&third, &r, &d, None).await, bytes);

    // One chunk above the copy limit (150 KiB here), finished by a PUT without data.
    let big = data(400_000, 22);
    let d = Digest::of(Algorithm::Sha256, &big);
    let up = third.upload_start(&r, Algorithm::Sha256).await.unwrap();
    third
        .upload_append(&r, &up.id, None, None, body(&big, 10_000))
        .await
        .unwrap();
    third.upload_finish(&r, &up.id, &d, None).await.unwrap();
    assert_eq!(read_all(&nodes[0], &r, &d, None).await, big);
}

/// Uploading other bytes while naming the digest of a blob that is stored (elsewhere) must not
/// link that blob: the client never had it.
async fn garbage_claiming_a_stored_digest_is_refused(s: ObjectRegistry) {
    let (owner, thief) = (repo("owner"), repo("thief"));
    let secret = data(100_000, 11);
    let d = push_blob(&s, &owner, &secret).await;
    let up = s.upload_start(&thief, Algorithm::Sha256).await.unwrap();
    s.upload_append(&thief, &up.id, None, None, body(&data(50_000, 12), 10_000))
        .await
        .unwrap();
    s.upload_append(&thief, &up.id, None, None, body(&data(50_000, 13), 10_000))
        .await
        .unwrap();
    let err = s.upload_finish(&thief, &up.id, &d, None).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(matches!(
        s.blob_size(&thief, &d).await,
        Err(Error::BlobUnknown(_))
    ));
}

/// With a scratch store: a chunk whose bytes change between its PATCH and the finishing PUT
/// (a machine crash that lost unsynced data) fails the digest check; nothing is published.
async fn damaged_chunk_is_never_published(backend: Backend) {
    let s = backend.registry();
    let r = repo("damaged");
    let bytes = data(90_000, 14);
    let d = Digest::of(Algorithm::Sha256, &bytes);
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    for part in bytes.chunks(30_000) {
        s.upload_append(&r, &up.id, None, None, body(part, 7000))
            .await
            .unwrap();
    }
    // Damage the chunks in scratch (all but the first), keeping their sizes.
    let dir = crate::layout::upload_dir(&up.id);
    let scratch = backend.scratch.as_ref().expect("a scratch store");
    let parts: Vec<_> = scratch
        .list(Some(&dir))
        .map(|m| m.unwrap())
        .filter(|m| std::future::ready(m.location.as_ref().contains("part-")))
        .collect()
        .await;
    let mut damaged = 0;
    for p in parts {
        use object_store::ObjectStoreExt;
        let zeros = vec![0u8; p.size as usize];
        scratch.put(&p.location, zeros.into()).await.unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    // The concatenation hashes what it copies from scratch and sees the damage.
    let err = s.upload_finish(&r, &up.id, &d, None).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(matches!(
        s.blob_size(&r, &d).await,
        Err(Error::BlobUnknown(_))
    ));
}

/// On a filesystem with staging, chunks are appended to one file that the finish renames (the
/// blob is the same inode); bytes past the committed size (an append that failed) are cut
/// off; a file shorter than its session says (data lost in a crash) is never published.
async fn staged_uploads_write_each_byte_once(backend: Backend) {
    let root = backend.staging.clone().expect("staging");
    let s = backend.registry();
    let r = repo("staged");
    let bytes = data(250_000, 21);
    let d = Digest::of(Algorithm::Sha256, &bytes);
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    for part in bytes.chunks(60_000) {
        s.upload_append(&r, &up.id, None, None, body(part, 7000))
            .await
            .unwrap();
    }
    let dir = root.join("uploads").join(&up.id);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data", "state"]);
    // An append that wrote but never committed leaves bytes past the session's size.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("data"))
            .unwrap();
        f.write_all(b"never committed").unwrap();
    }
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("data")).unwrap().ino()
    };
    assert_eq!(
        s.upload_finish(&r, &up.id, &d, None).await.unwrap(),
        250_000
    );
    assert_eq!(read_all(&s, &r, &d, None).await, bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let blob = root.join(crate::layout::blob(&d).as_ref());
        assert_eq!(
            std::fs::metadata(blob).unwrap().ino(),
            inode,
            "renamed, not copied"
        );
    }
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none());

    // Data lost in a crash: the file is shorter than the session says.
    let more = data(100_000, 22);
    let d2 = Digest::of(Algorithm::Sha256, &more);
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, &up.id, None, None, body(&more, 7000))
        .await
        .unwrap();
    let file = root.join("uploads").join(&up.id).join("data");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(50_000)
        .unwrap();
    let err = s.upload_finish(&r, &up.id, &d2, None).await.unwrap_err();
    assert!(matches!(err, Error::UploadUnknown), "{err:?}");
    assert!(matches!(
        s.blob_size(&r, &d2).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(matches!(
        s.upload_status(&r, &up.id).await,
        Err(Error::UploadUnknown)
    ));

    // Appends are not synced one by one: the session records the boot that wrote them.
    // Loaded under another boot (after a machine crash), its saved hash is not trusted: the
    // finish hashes what the file holds, so bytes a crash zeroed are never published, and
    // intact ones are.
    let under_another_boot = |id: &str| {
        let state = root.join("uploads").join(id).join("state");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        if cfg!(target_os = "linux") {
            assert!(doc["unsynced"].is_string(), "{doc}");
        }
        doc["unsynced"] = serde_json::json!("another-boot");
        std::fs::write(&state, serde_json::to_vec(&doc).unwrap()).unwrap();
    };
    for damaged in [true, false] {
        let (first, second) = (data(80_000, 23), data(30_000, 24));
        let whole = [first.clone(), second.clone()].concat();
        let d3 = Digest::of(Algorithm::Sha256, &whole);
        let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
        s.upload_append(&r, &up.id, None, None, body(&first, 7000))
            .await
            .unwrap();
        under_another_boot(&up.id);
        if damaged {
            let file = root.join("uploads").join(&up.id).join("data");
            std::fs::write(&file, vec![0u8; first.len()]).unwrap();
        }
        let size = s
            .upload_append(&r, &up.id, None, None, body(&second, 7000))
            .await
            .unwrap()
            .size;
        assert_eq!(size, whole.len() as u64);
        let finished = s.upload_finish(&r, &up.id, &d3, None).await;
        if damaged {
            assert!(
                matches!(finished, Err(Error::DigestMismatch { .. })),
                "{finished:?}"
            );
            assert!(matches!(
                s.blob_size(&r, &d3).await,
                Err(Error::BlobUnknown(_))
            ));
        } else {
            assert_eq!(finished.unwrap(), whole.len() as u64);
            assert_eq!(read_all(&s, &r, &d3, None).await, whole);
        }
    }
}

async fn digest_and_size_mismatch_leave_nothing(s: ObjectRegistry) {
    let r = repo("mismatch");
    let bytes = data(1000, 3);
    let wrong = Digest::of(Algorithm::Sha256, b"something else");
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let err = s
        .upload_finish(&r, &up.id, &wrong, Some((None, body(&bytes, 100))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }));
    assert!(matches!(
        s.blob_size(&r, &wrong).await,
        Err(Error::BlobUnknown(_))
    ));
    let right = Digest::of(Algorithm::Sha256, &bytes);
    assert!(matches!(
        s.blob_size(&r, &right).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(matches!(
        s.upload_status(&r, &up.id).await,
        Err(Error::UploadUnknown)
    ));

    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let err = s
        .upload_append(&r, &up.id, Some(0), Some(999), body(&bytes, 100))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::SizeInvalid {
            declared: 999,
            received: 1000
        }
    ));
    assert_eq!(s.upload_status(&r, &up.id).await.unwrap().size, 0);
    // A failing body leaves the session as it was.
    let failing: ByteStream = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(std::io::Error::other("client went away")),
    ])
    .boxed();
    let err = s
        .upload_append(&r, &up.id, None, None, failing)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Body(_)));
    assert_eq!(s.upload_status(&r, &up.id).await.unwrap().size, 0);
}

async fn cancel_and_unknown_sessions(s: ObjectRegistry) {
    let (r, other) = (repo("cancel"), repo("other"));
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, &up.id, None, None, body(b"data", 4))
        .await
        .unwrap();
    assert!(matches!(
        s.upload_status(&other, &up.id).await,
        Err(Error::UploadUnknown)
    ));
    s.upload_cancel(&r, &up.id).await.unwrap();
    assert!(matches!(
        s.upload_status(&r, &up.id).await,
        Err(Error::UploadUnknown)
    ));
    for bad in [
        "../../etc",
        "not-a-uuid",
        "",
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    ] {
        assert!(
            matches!(s.upload_status(&r, bad).await, Err(Error::UploadUnknown)),
            "{bad}"
        );
    }
}

async fn mount_between_repositories(s: ObjectRegistry) {
    let (a, b) = (repo("src"), repo("dst"));
    let d = push_blob(&s, &a, b"shared layer").await;
    assert_eq!(s.blob_mount(&b, &a, &d).await.unwrap(), Some(12));
    assert_eq!(s.blob_size(&b, &d).await.unwrap(), 12);
    let missing = Digest::of(Algorithm::Sha256, b"nope");
    assert_eq!(s.blob_mount(&b, &a, &missing).await.unwrap(), None);
    assert_eq!(s.blob_mount(&b, &repo("empty"), &d).await.unwrap(), None);
}

/// What a pull-through cache stores: a manifest without what it references (refused by a
/// push), its digest still checked; a blob linked from another repository only with the size
/// the upstream named; fsck expects a cache's missing references; garbage collection keeps a
/// cached tag's manifest.
async fn pull_through_cache_fills(s: ObjectRegistry) {
    let (cache, own) = (repo("docker.io/library/alpine"), repo("own"));
    let layer = push_blob(&s, &own, b"layer both have").await;
    let config = Digest::of(Algorithm::Sha256, b"config not fetched yet");
    let m = image_manifest(&config, 22, &[(layer.clone(), 15)], None);
    let digest = Digest::of(Algorithm::Sha256, &m);
    let tag = Reference::Tag("latest".parse().unwrap());
    let pushed = s.manifest_put(&own, &tag, Some(OCI_MANIFEST), m.clone().into(), &[]);
    assert!(matches!(pushed.await, Err(Error::ManifestBlobUnknown(_))));
    let wrong = Reference::Digest(Digest::of(Algorithm::Sha256, b"other"));
    let cached = s.manifest_cache(&cache, &wrong, Some(OCI_MANIFEST), m.clone().into(), &[]);
    assert!(matches!(cached.await, Err(Error::DigestMismatch { .. })));
    let stored = s.manifest_cache(&cache, &tag, Some(OCI_MANIFEST), m.clone().into(), &[]);
    assert_eq!(stored.await.unwrap().digest, digest);
    assert_eq!(s.manifest_get(&cache, &tag).await.unwrap().1, m);

    assert!(!s.blob_adopt(&cache, &layer, 14).await.unwrap());
    assert!(!s.blob_adopt(&cache, &config, 22).await.unwrap());
    assert!(matches!(
        s.blob_size(&cache, &layer).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(s.blob_adopt(&cache, &layer, 15).await.unwrap());
    assert_eq!(s.blob_size(&cache, &layer).await.unwrap(), 15);

    let found = s
        .fsck(false, |p| panic!("a cache is not damage: {p}"))
        .await;
    assert_eq!(found.unwrap().problems, 0);
    let now = crate::store::GcOptions {
        grace: Duration::ZERO,
        settle: Duration::ZERO,
        ..Default::default()
    };
    let mut deleted = Vec::new();
    s.gc(&now, |d| deleted.push(d.path.clone())).await.unwrap();
    // At most the own repository's unreferenced link (S3 timestamps may make it young).
    let link = crate::layout::layer_link(&own, &layer).to_string();
    assert!(deleted.iter().all(|d| *d == link), "{deleted:?}");
    assert_eq!(s.manifest_get(&cache, &tag).await.unwrap().1, m);
    assert_eq!(s.blob_size(&cache, &layer).await.unwrap(), 15);

    // Eviction: a cache used within mirror_max_unused stays; one unused for longer goes,
    // tags and all; the own repository (with a tagged image) is never touched.
    let own_layer = push_blob(&s, &own, b"own layer").await;
    let own_config = push_blob(&s, &own, b"{}").await;
    let own_m = image_manifest(&own_config, 2, &[(own_layer.clone(), 9)], None);
    put(&s, &own, "v1", OCI_MANIFEST, &own_m).await;
    s.cache_used(&cache).await.unwrap();
    let recently = crate::store::GcOptions {
        mirror_max_unused: Some(Duration::from_secs(3600)),
        ..now.clone()
    };
    let summary = s.gc(&recently, |_| {}).await.unwrap();
    assert_eq!(summary.evicted, 0);
    assert_eq!(s.manifest_get(&cache, &tag).await.unwrap().1, m);
    // (S3 gives the lease's time in whole seconds: more than one since the use.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unused = crate::store::GcOptions {
        mirror_max_unused: Some(Duration::from_millis(1)),
        ..now.clone()
    };
    let mut gone = Vec::new();
    let summary = s
        .gc(&unused, |d| gone.push((d.kind, d.path.clone())))
        .await
        .unwrap();
    assert_eq!((summary.evicted, summary.tags), (1, 1), "{gone:?}");
    // (and the own repository's link no manifest needs, if S3's clock made it young before)
    assert!(
        gone.iter()
            .all(|(_, p)| p.contains("docker.io/library/alpine")
                || p.starts_with("blobs/")
                || *p == link),
        "{gone:?}"
    );
    assert!(matches!(
        s.manifest_get(&cache, &tag).await,
        Err(Error::ManifestUnknown(_))
    ));
    assert!(matches!(
        s.blob_size(&cache, &layer).await,
        Err(Error::BlobUnknown(_))
    ));
    let v1 = Reference::Tag("v1".parse().unwrap());
    assert_eq!(s.manifest_get(&own, &v1).await.unwrap().1, own_m);
    assert_eq!(s.blob_size(&own, &own_layer).await.unwrap(), 9);
    let clean = s
        .fsck(false, |p| panic!("after eviction: {p}"))
        .await
        .unwrap();
    assert_eq!(clean.problems, 0);
}

/// Over `mirror_max_bytes`, the least recently used caches go until the rest fit; the own
/// repositories do not count and stay.
async fn cache_quota_evicts_the_least_recently_used(s: ObjectRegistry) {
    let fill = |name: &'static str, seed: u8| {
        let s = &s;
        async move {
            let r = repo(name);
            let layer = data(10_000, seed);
            let d = push_blob(s, &r, &layer).await;
            let config = push_blob(s, &r, &[seed]).await;
            let m = image_manifest(&config, 1, &[(d, 10_000)], None);
            let tag = Reference::Tag("t".parse().unwrap());
            s.manifest_cache(&r, &tag, Some(OCI_MANIFEST), m.into(), &[])
                .await
                .unwrap();
            s.cache_used(&r).await.unwrap();
            r
        }
    };
    let old = fill("mirror/old", 61).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let new = fill("mirror/new", 62).await;
    let own = repo("own/big");
    let big = push_blob(&s, &own, &data(50_000, 63)).await;
    let config = push_blob(&s, &own, b"{}").await;
    put(
        &s,
        &own,
        "v1",
        OCI_MANIFEST,
        &image_manifest(&config, 2, &[(big, 50_000)], None),
    )
    .await;
    let options = |quota| crate::store::GcOptions {
        grace: Duration::ZERO,
        settle: Duration::ZERO,
        mirror_max_bytes: Some(quota),
        ..Default::default()
    };
    let tag = Reference::Tag("t".parse().unwrap());
    // Both caches hold 10 001 bytes: 20 002 fit, 20 001 do not.
    assert_eq!(s.gc(&options(20_002), |_| {}).await.unwrap().evicted, 0);
    assert_eq!(s.gc(&options(20_001), |_| {}).await.unwrap().evicted, 1);
    assert!(matches!(
        s.manifest_get(&old, &tag).await,
        Err(Error::ManifestUnknown(_))
    ));
    s.manifest_get(&new, &tag).await.unwrap();
    let v1 = Reference::Tag("v1".parse().unwrap());
    s.manifest_get(&own, &v1).await.unwrap();
}

/// An OCI image manifest over `config` and `layers`, with an optional subject.
pub fn image_manifest(
    config: &Digest,
    config_size: usize,
    layers: &[(Digest, usize)],
    subject: Option<&Digest>,
) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, n)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": layers,
    });
    if let Some(sub) = subject {
        m["subject"] =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": sub.to_string(), "size": 1});
        m["artifactType"] = serde_json::json!("application/vnd.example.sig");
        m["annotations"] = serde_json::json!({"org.example": "yes"});
    }
    serde_json::to_vec(&m).unwrap()
}

async fn manifests_tags_and_referrers(s: ObjectRegistry) {
    let r = repo("app");
    let cfg = push_blob(&s, &r, b"{}").await;
    let layer = push_blob(&s, &r, &data(5000, 9)).await;
    let missing = Digest::of(Algorithm::Sha256, b"missing");
    let latest = Reference::Tag("latest".parse().unwrap());

    let bad = image_manifest(&cfg, 2, &[(missing.clone(), 7)], None);
    let err = s
        .manifest_put(&r, &latest, Some(OCI_MANIFEST), bad.into(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestBlobUnknown(d) if d == missing));

    let m = image_manifest(&cfg, 2, &[(layer.clone(), 5000)], None);
    let put = s
        .manifest_put(
            &r,
            &latest,
            Some(OCI_MANIFEST),
            m.clone().into(),
            &["v1".parse().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(put.digest, Digest::of(Algorithm::Sha256, &m));
    let by_digest = Reference::Digest(put.digest.clone());
    let (info, bytes) = s.manifest_get(&r, &latest).await.unwrap();
    assert_eq!(
        (info.media_type.as_str(), &bytes[..]),
        (OCI_MANIFEST, &m[..])
    );
    assert_eq!(
        s.manifest_info(&r, &by_digest).await.unwrap().size,
        m.len() as u64
    );

    // Push by digest must match; a wrong digest is refused.
    let wrong = Reference::Digest(missing.clone());
    assert!(matches!(
        s.manifest_put(&r, &wrong, Some(OCI_MANIFEST), m.clone().into(), &[])
            .await,
        Err(Error::DigestMismatch { .. })
    ));

    // An index of that manifest, and a referrer whose subject does not exist yet.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": put.digest.to_string(), "size": m.len()}]
    }))
    .unwrap();
    let idx = s
        .manifest_put(
            &r,
            &Reference::Tag("multi".parse().unwrap()),
            Some(OCI_INDEX),
            index.into(),
            &[],
        )
        .await
        .unwrap();
    // An index whose child is a layer (a blob of the repository, not a manifest) is refused:
    // the child could never be pulled as a manifest.
    let layer_child = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": layer.to_string(), "size": 5000}]
    }))
    .unwrap();
    let err = s
        .manifest_put(
            &r,
            &Reference::Tag("layer-child".parse().unwrap()),
            Some(OCI_INDEX),
            layer_child.into(),
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestBlobUnknown(d) if d == layer));
    let ghost = Digest::of(Algorithm::Sha256, b"future subject");
    let sig = image_manifest(&cfg, 2, &[], Some(&ghost));
    let sig_put = s
        .manifest_put(
            &r,
            &Reference::Digest(Digest::of(Algorithm::Sha256, &sig)),
            Some(OCI_MANIFEST),
            sig.into(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sig_put.subject.as_ref(), Some(&ghost));
    let refs = s.referrers(&r, &ghost).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(
        refs[0].artifact_type.as_deref(),
        Some("application/vnd.example.sig")
    );
    assert_eq!(refs[0].annotations.as_ref().unwrap()["org.example"], "yes");
    assert!(s.referrers(&r, &put.digest).await.unwrap().is_empty());

    let page = s.tags(&r, None, Some(2)).await.unwrap();
    assert_eq!(
        page.items.iter().map(Tag::as_str).collect::<Vec<_>>(),
        ["latest", "multi"]
    );
    assert!(page.more);
    let page = s.tags(&r, Some("multi"), Some(2)).await.unwrap();
    assert_eq!(
        page.items.iter().map(Tag::as_str).collect::<Vec<_>>(),
        ["v1"]
    );
    assert!(!page.more);
    assert!(matches!(
        s.tags(&repo("nothing"), None, None).await,
        Err(Error::NameUnknown(_))
    ));

    // Deleting a tag leaves the manifest; deleting the manifest removes every tag naming it.
    s.manifest_delete(&r, &Reference::Tag("v1".parse().unwrap()))
        .await
        .unwrap();
    assert!(s.manifest_info(&r, &by_digest).await.is_ok());
    s.manifest_delete(&r, &by_digest).await.unwrap();
    assert!(matches!(
        s.manifest_info(&r, &latest).await,
        Err(Error::ManifestUnknown(_))
    ));
    assert!(matches!(
        s.manifest_delete(&r, &by_digest).await,
        Err(Error::ManifestUnknown(_))
    ));
    let left = s.tags(&r, None, None).await.unwrap().items;
    assert_eq!(left.iter().map(Tag::as_str).collect::<Vec<_>>(), ["multi"]);
    assert_eq!(
        s.manifest_info(&r, &Reference::Tag("multi".parse().unwrap()))
            .await
            .unwrap()
            .digest,
        idx.digest
    );
    s.manifest_delete(&r, &Reference::Digest(sig_put.digest))
        .await
        .unwrap();
    assert!(s.referrers(&r, &ghost).await.unwrap().is_empty());
}

/// Two registries ("nodes") over one backend: tag lists cached by one see the other's changes.
async fn tag_lists_stay_fresh_across_nodes(backend: Backend) {
    let (a, b) = (backend.registry(), backend.registry());
    let r = repo("nodes");
    let cfg = push_blob(&a, &r, b"{}").await;
    let m = image_manifest(&cfg, 2, &[], None);
    let tag = |t: &str| Reference::Tag(t.parse().unwrap());
    let names = |p: Page<Tag>| p.items.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    a.manifest_put(&r, &tag("one"), Some(OCI_MANIFEST), m.clone().into(), &[])
        .await
        .unwrap();
    assert_eq!(names(a.tags(&r, None, None).await.unwrap()), ["one"]);
    assert_eq!(names(b.tags(&r, None, None).await.unwrap()), ["one"]);
    b.manifest_put(&r, &tag("two"), Some(OCI_MANIFEST), m.clone().into(), &[])
        .await
        .unwrap();
    assert_eq!(names(a.tags(&r, None, None).await.unwrap()), ["one", "two"]);
    // When a tag was set: a moved tag's time is seen by the other node too.
    let times = a.tag_times(&r).await.unwrap();
    assert_eq!(times.len(), 2);
    let one_set = times[0].1.expect("stores know when");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (Another manifest: the same image, referring to the first.)
    let moved = image_manifest(&cfg, 2, &[], Some(&Digest::of(Algorithm::Sha256, &m)));
    b.manifest_put(&r, &tag("one"), Some(OCI_MANIFEST), moved.into(), &[])
        .await
        .unwrap();
    let times = a.tag_times(&r).await.unwrap();
    assert!(times[0].1.unwrap() > one_set, "{times:?}");
    b.manifest_delete(&r, &tag("one")).await.unwrap();
    assert_eq!(names(a.tags(&r, None, None).await.unwrap()), ["two"]);
    let d = Reference::Digest(Digest::of(Algorithm::Sha256, &m));
    b.manifest_delete(&r, &d).await.unwrap();
    assert!(names(a.tags(&r, None, None).await.unwrap()).is_empty());
}

/// Two nodes over one backend: what one changes, the other answers from its metadata cache for
/// at most `cache_ttl`; its own changes at once; and nothing while a collection's lease is live.
async fn metadata_cache_staleness_is_bounded(backend: Backend) {
    let (a, b) = (backend.registry(), backend.registry());
    let ttl = StoreOptions::default().cache_ttl;
    let r = repo("cached");
    let cfg = push_blob(&a, &r, b"{}").await;
    let layer = push_blob(&a, &r, &data(3000, 4)).await;
    let (one, two) = (
        image_manifest(&cfg, 2, &[], None),
        image_manifest(&cfg, 2, &[(layer.clone(), 3000)], None),
    );
    let latest = Reference::Tag("latest".parse().unwrap());
    let put = |s: &ObjectRegistry, m: &[u8]| {
        let (s, m, latest, r) = (s.clone(), m.to_vec(), latest.clone(), r.clone());
        async move {
            s.manifest_put(&r, &latest, Some(OCI_MANIFEST), m.into(), &[])
                .await
                .unwrap()
                .digest
        }
    };
    let first = put(&a, &one).await;
    // b reads (and caches) the tag, the manifest and the layer's link.
    assert_eq!(b.manifest_get(&r, &latest).await.unwrap().1, one);
    assert_eq!(b.blob_size(&r, &layer).await.unwrap(), 3000);
    let changed = std::time::Instant::now();
    let second = put(&a, &two).await;
    a.blob_delete(&r, &layer).await.unwrap();
    // a sees its own changes at once.
    assert_eq!(a.manifest_info(&r, &latest).await.unwrap().digest, second);
    assert!(a.blob_size(&r, &layer).await.is_err());
    // b may answer from its cache, but only within the bound.
    let stale = b.manifest_info(&r, &latest).await.unwrap().digest;
    let layer_seen = b.blob_size(&r, &layer).await.is_ok();
    if changed.elapsed() < ttl {
        assert!(stale == first || stale == second);
    } else {
        assert_eq!(stale, second, "stale past the bound");
        assert!(!layer_seen, "a deleted link past the bound");
    }
    tokio::time::sleep(ttl).await;
    assert_eq!(b.manifest_info(&r, &latest).await.unwrap().digest, second);
    assert_eq!(b.manifest_get(&r, &latest).await.unwrap().1, two);
    assert!(matches!(
        b.blob_size(&r, &layer).await,
        Err(Error::BlobUnknown(_))
    ));
    // A manifest deleted by digest on a: b stops serving it within the bound.
    b.manifest_get(&r, &Reference::Digest(first.clone()))
        .await
        .unwrap();
    a.manifest_delete(&r, &Reference::Digest(first.clone()))
        .await
        .unwrap();
    tokio::time::sleep(ttl).await;
    assert!(b.manifest_get(&r, &Reference::Digest(first)).await.is_err());

    // While a collection's lease is live, b reads storage every time (seen within 1 s).
    let c = backend.registry();
    assert!(c.manifest_info(&r, &latest).await.is_ok(), "cached by c");
    a.gc_lease_for_tests().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.manifest_delete(&r, &latest).await.unwrap();
    assert!(
        c.manifest_info(&r, &latest).await.is_err(),
        "no cache while a collection runs"
    );
}

/// Two nodes over one backend: a catalog cached by one sees repositories the other creates.
async fn catalog_stays_fresh_across_nodes(backend: Backend) {
    let (a, b) = (backend.registry(), backend.registry());
    let names = |p: Page<RepoName>| p.items.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    push_blob(&a, &repo("first"), b"1").await;
    assert_eq!(names(a.repositories(None, None).await.unwrap()), ["first"]);
    assert_eq!(names(b.repositories(None, None).await.unwrap()), ["first"]);
    push_blob(&b, &repo("second"), b"2").await;
    assert_eq!(
        names(a.repositories(None, None).await.unwrap()),
        ["first", "second"]
    );
    // Storage written before generations existed has no generation object: listed anyway.
    push_blob(&a, &repo("third"), b"3").await;
    for store in std::iter::once(&backend.store).chain(backend.scratch.as_ref()) {
        object_store::ObjectStoreExt::delete(store.as_ref(), &crate::layout::catalog_generation())
            .await
            .ok();
    }
    assert_eq!(
        names(b.repositories(None, None).await.unwrap()),
        ["first", "second", "third"]
    );
}

async fn catalog_pages(s: ObjectRegistry) {
    for name in ["b", "a/c", "a", "z/y/x"] {
        push_blob(&s, &repo(name), b"x").await;
    }
    let all = s.repositories(None, None).await.unwrap();
    assert_eq!(
        all.items.iter().map(RepoName::as_str).collect::<Vec<_>>(),
        ["a", "a/c", "b", "z/y/x"]
    );
    let page = s.repositories(Some("a/c"), Some(1)).await.unwrap();
    assert_eq!(
        page.items.iter().map(RepoName::as_str).collect::<Vec<_>>(),
        ["b"]
    );
    assert!(page.more);
    s.health().await.unwrap();
}

async fn purge_removes_idle_sessions(s: ObjectRegistry) {
    let r = repo("purge");
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, &up.id, None, None, body(b"abc", 3))
        .await
        .unwrap();
    assert_eq!(s.upload_purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(s.upload_status(&r, &up.id).await.unwrap().size, 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.upload_purge(Duration::ZERO).await.unwrap(), 1);
    assert!(matches!(
        s.upload_status(&r, &up.id).await,
        Err(Error::UploadUnknown)
    ));
}

async fn concurrent_pushes_of_one_blob(s: ObjectRegistry) {
    let r = repo("race");
    let bytes = data(150_000, 5);
    let pushes = (0..20).map(|_| push_blob(&s, &r, &bytes));
    let digests = futures::future::join_all(pushes).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(read_all(&s, &r, &digests[0], None).await, bytes);
    let m = image_manifest(&digests[0], bytes.len(), &[], None);
    let same = Reference::Tag("same".parse().unwrap());
    let puts =
        (0..20).map(|_| s.manifest_put(&r, &same, Some(OCI_MANIFEST), m.clone().into(), &[]));
    for res in futures::future::join_all(puts).await {
        res.unwrap();
    }
}

async fn sha512_blobs(s: ObjectRegistry) {
    let r = repo("long");
    let bytes = data(100_000, 7);
    let d = Digest::of(Algorithm::Sha512, &bytes);
    // Saved state is sha256 by default: finishing with sha512 re-reads the data once.
    let up = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, &up.id, None, None, body(&bytes, 7000))
        .await
        .unwrap();
    s.upload_finish(&r, &up.id, &d, None).await.unwrap();
    let up = s.upload_start(&r, Algorithm::Sha512).await.unwrap();
    s.upload_finish(&r, &up.id, &d, Some((None, body(&bytes, 7000))))
        .await
        .unwrap();
    assert_eq!(read_all(&s, &r, &d, None).await, bytes);
}

/// fsck finds a blob whose bytes were changed on disk, a blob deleted by hand (its link and the
/// manifest needing it), and a tag whose manifest was deleted by hand; repair moves the corrupt
/// blob aside and drops what leads nowhere, after which a re-push makes the store whole.
async fn fsck_finds_and_repairs(backend: Backend) {
    use object_store::ObjectStoreExt;
    let s = backend.registry();
    let r = repo("checked/app");
    let (a, b, c) = (data(5000, 31), data(7000, 32), b"{\"config\":1}".to_vec());
    let (da, db, dc) = (
        push_blob(&s, &r, &a).await,
        push_blob(&s, &r, &b).await,
        push_blob(&s, &r, &c).await,
    );
    let m = image_manifest(
        &dc,
        c.len(),
        &[(da.clone(), a.len()), (db.clone(), b.len())],
        None,
    );
    let tag: Tag = "v1".parse().unwrap();
    let put = s
        .manifest_put(
            &r,
            &Reference::Tag(tag.clone()),
            Some(OCI_MANIFEST),
            m.clone().into(),
            &[],
        )
        .await
        .unwrap();
    let other = image_manifest(&dc, c.len(), &[], None);
    let other_put = s
        .manifest_put(
            &r,
            &Reference::Tag("v2".parse().unwrap()),
            Some(OCI_MANIFEST),
            other.into(),
            &[],
        )
        .await
        .unwrap();
    let clean = s.fsck(false, |p| panic!("clean store: {p}")).await.unwrap();
    assert_eq!(
        (clean.blobs, clean.manifests, clean.tags, clean.problems),
        (3, 2, 2, 0)
    );

    // Damage: a's bytes changed (same size), b's bytes gone, v2's manifest gone.
    let store = &backend.store;
    store
        .put(&crate::layout::blob(&da), vec![0u8; a.len()].into())
        .await
        .unwrap();
    store.delete(&crate::layout::blob(&db)).await.unwrap();
    store
        .delete(&crate::layout::revision_link(&r, &other_put.digest))
        .await
        .unwrap();
    let mut problems = Vec::new();
    let found = s.fsck(false, |p| problems.push(p.clone())).await.unwrap();
    assert_eq!(found.problems as usize, problems.len());
    let kinds: Vec<String> = problems.iter().map(|p| format!("{p}")).collect();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::CorruptBlob { path, .. } if path.contains(da.hex()))),
        "{kinds:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::DanglingLink { path } if path.contains(db.hex()))),
        "{kinds:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::MissingReference { digest, .. } if *digest == db)),
        "{kinds:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::DanglingTag { path, .. } if path.ends_with("v2"))),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .all(|k| k.contains("repositories/") || k.contains("blobs/")),
        "{kinds:?}"
    );

    let repaired = s.fsck(true, |_| {}).await.unwrap();
    assert!(repaired.repaired >= 4, "{repaired:?}");
    // The corrupt bytes are kept aside, not deleted.
    let aside: Vec<_> = store
        .list(Some(&object_store::path::Path::from("lost+found")))
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    assert!(aside.iter().any(|p| p.contains(da.hex())), "{aside:?}");
    // Clients now see a and b as missing and push them again; the manifest is whole.
    assert!(matches!(
        s.blob_size(&r, &da).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(matches!(
        s.blob_size(&r, &db).await,
        Err(Error::BlobUnknown(_))
    ));
    push_blob(&s, &r, &a).await;
    push_blob(&s, &r, &b).await;
    s.manifest_put(&r, &Reference::Tag(tag), Some(OCI_MANIFEST), m.into(), &[])
        .await
        .unwrap();
    assert_eq!(read_all(&s, &r, &da, None).await, a);
    let after = s
        .fsck(false, |p| panic!("after repair and re-push: {p}"))
        .await
        .unwrap();
    assert_eq!((after.manifests, after.tags, after.problems), (1, 1, 0));
    let v1 = s
        .manifest_info(&r, &Reference::Tag("v1".parse().unwrap()))
        .await;
    assert_eq!(v1.unwrap().digest, put.digest);
}

/// Pushes `m` under `reference`; returns its digest.
async fn put(
    s: &ObjectRegistry,
    r: &RepoName,
    reference: &str,
    media_type: &str,
    m: &[u8],
) -> Digest {
    let reference: Reference = match reference.parse::<Digest>() {
        Ok(d) => Reference::Digest(d),
        Err(_) => Reference::Tag(reference.parse().unwrap()),
    };
    let put = s.manifest_put(r, &reference, Some(media_type), m.to_vec().into(), &[]);
    put.await.unwrap().digest
}

/// Garbage collection keeps everything reachable (tags; untagged revisions unless
/// delete_untagged; children of a tagged index; referrers of kept manifests; layers shared
/// with deleted images) and deletes the rest; a dry run deletes nothing; the grace period
/// keeps what is young.
async fn gc_deletes_only_garbage(s: ObjectRegistry) {
    use crate::store::GcOptions;
    let r = repo("gc/app");
    let blob = |n: usize, seed: u8| data(n, seed);
    let (base, only_a, only_b, orphan) = (
        blob(3000, 41),
        blob(3100, 42),
        blob(3200, 43),
        blob(3300, 44),
    );
    let cfg = b"{}".to_vec();
    let dcfg = push_blob(&s, &r, &cfg).await;
    let dbase = push_blob(&s, &r, &base).await;
    let da = push_blob(&s, &r, &only_a).await;
    let db = push_blob(&s, &r, &only_b).await;
    let dorphan = push_blob(&s, &r, &orphan).await;
    let a = image_manifest(&dcfg, 2, &[(dbase.clone(), 3000), (da.clone(), 3100)], None);
    let b = image_manifest(&dcfg, 2, &[(dbase.clone(), 3000), (db.clone(), 3200)], None);
    let ma = put(&s, &r, "a", OCI_MANIFEST, &a).await;
    let mb = put(&s, &r, "b", OCI_MANIFEST, &b).await;
    // A multi-arch index whose children are untagged, and a signature of `a`.
    let (c1, c2) = (blob(500, 45), blob(600, 46));
    let (dc1, dc2) = (push_blob(&s, &r, &c1).await, push_blob(&s, &r, &c2).await);
    let child1 = image_manifest(&dcfg, 2, &[(dc1.clone(), 500)], None);
    let child2 = image_manifest(&dcfg, 2, &[(dc2.clone(), 600)], None);
    let mc1 = put(
        &s,
        &r,
        &Digest::of(Algorithm::Sha256, &child1).to_string(),
        OCI_MANIFEST,
        &child1,
    )
    .await;
    let mc2 = put(
        &s,
        &r,
        &Digest::of(Algorithm::Sha256, &child2).to_string(),
        OCI_MANIFEST,
        &child2,
    )
    .await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": mc1.to_string(), "size": child1.len()},
            {"mediaType": OCI_MANIFEST, "digest": mc2.to_string(), "size": child2.len()},
        ]
    }))
    .unwrap();
    let mi = put(&s, &r, "multi", OCI_INDEX, &index).await;
    let sig = image_manifest(&dcfg, 2, &[], Some(&ma));
    let msig = put(
        &s,
        &r,
        &Digest::of(Algorithm::Sha256, &sig).to_string(),
        OCI_MANIFEST,
        &sig,
    )
    .await;
    // `b` loses its tag.
    s.manifest_delete(&r, &Reference::Tag("b".parse().unwrap()))
        .await
        .unwrap();

    let now = |delete_untagged: bool, dry_run: bool| GcOptions {
        dry_run,
        delete_untagged,
        grace: Duration::ZERO,
        settle: Duration::ZERO,
        ..GcOptions::default()
    };
    // The grace period keeps everything young.
    let young = GcOptions {
        grace: Duration::from_secs(3600),
        settle: Duration::ZERO,
        delete_untagged: true,
        ..GcOptions::default()
    };
    let kept = s.gc(&young, |d| panic!("young {d:?}")).await.unwrap();
    assert_eq!((kept.manifests, kept.links, kept.blobs), (0, 0, 0));
    // Objects must be older than the cutoff's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Untagged revisions are roots: only the orphan blob goes.
    let before = s.last_gc().await.unwrap();
    assert!(before.is_some(), "the first collection's report");
    let mut gone = Vec::new();
    let dry = s
        .gc(&now(false, true), |d| gone.push(d.path.clone()))
        .await
        .unwrap();
    assert_eq!((dry.manifests, dry.links, dry.blobs), (0, 1, 1), "{gone:?}");
    assert!(
        s.blob_size(&r, &dorphan).await.is_ok(),
        "a dry run deletes nothing"
    );
    assert_eq!(
        s.last_gc().await.unwrap(),
        before,
        "a dry run stores no report"
    );
    let first = s.gc(&now(false, false), |_| {}).await.unwrap();
    assert_eq!((first.manifests, first.links, first.blobs), (0, 1, 1));
    // The report: what it deleted, and what each repository's kept manifests reference.
    let report = s.last_gc().await.unwrap().expect("a report");
    assert_eq!(report.summary, first);
    assert_eq!(report.error, None);
    let usage = report.usage.iter().find(|u| u.repository == "gc/app");
    assert!(
        usage.is_some_and(|u| u.bytes >= 3000 + 3100 + 3200 && u.manifests >= 2),
        "{:?}",
        report.usage
    );
    assert!(matches!(
        s.blob_size(&r, &dorphan).await,
        Err(Error::BlobUnknown(_))
    ));
    assert!(s
        .manifest_info(&r, &Reference::Digest(mb.clone()))
        .await
        .is_ok());
    // delete_untagged: b and its own layer go; the base layer, the index's children and the
    // signature of a stay.
    let mut deleted = Vec::new();
    let second = s
        .gc(&now(true, false), |d| deleted.push(d.clone()))
        .await
        .unwrap();
    assert_eq!(
        (second.manifests, second.links, second.blobs),
        (1, 1, 1),
        "{deleted:?}"
    );
    assert!(deleted
        .iter()
        .any(|d| d.kind == "manifest" && d.path.contains(mb.hex())));
    assert!(deleted
        .iter()
        .any(|d| d.kind == "blob" && d.path.contains(db.hex()) && d.size == 3200));
    assert!(matches!(
        s.manifest_info(&r, &Reference::Digest(mb)).await,
        Err(Error::ManifestUnknown(_))
    ));
    for (d, bytes) in [
        (&dbase, &base),
        (&da, &only_a),
        (&dc1, &c1),
        (&dc2, &c2),
        (&dcfg, &cfg),
    ] {
        assert_eq!(&read_all(&s, &r, d, None).await, bytes);
    }
    for m in [&ma, &mi, &mc1, &mc2, &msig] {
        assert!(
            s.manifest_info(&r, &Reference::Digest(m.clone()))
                .await
                .is_ok(),
            "{m} kept"
        );
    }
    assert_eq!(s.referrers(&r, &ma).await.unwrap().len(), 1);
    // Nothing left to collect, and the store is whole.
    let third = s
        .gc(&now(true, false), |d| panic!("again: {d:?}"))
        .await
        .unwrap();
    assert_eq!(third, crate::store::GcSummary::default());
    let check = s.fsck(false, |p| panic!("after gc: {p}")).await.unwrap();
    assert_eq!(check.problems, 0);
}
