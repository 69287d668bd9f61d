//! `ObjectRegistry`: the one implementation of the storage traits, over any
//! `Arc<dyn ObjectStore>` (local filesystem, S3, memory). It relies only on what every backend
//! offers: whole-object puts that are atomic, gets, deletes, listings and rename.
//!
//! Write order makes every state a reader can observe consistent: bytes before the link that
//! makes them visible, a manifest's revision before its tags, tags removed before the revision.

mod blobs;
mod cache;
mod catalog;
mod durable;
mod fsck;
mod gc;
mod manifests;
mod mapped;
mod placed;
mod reports;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use cache::MAX_TTL as MAX_CACHE_TTL;
pub use fsck::{FsckSummary, Problem};
pub use gc::{Deletion, GcOptions, GcSummary};
pub use reports::{FsckReport, GcReport, RepoUsage, REPORT_PROBLEMS};

use crate::error::{Error, Result};
use crate::layout;
use crate::names::{RepoName, Tag};

/// A repository's sorted tags and the `tags_generation` they were listed under.
type CachedTags = (Bytes, Arc<TagList>);

/// A repository's tags, sorted, with when each was last set (from the same listing).
#[derive(Debug, Default)]
pub(super) struct TagList {
    pub tags: Vec<Tag>,
    pub times: Vec<std::time::SystemTime>,
}

/// Tunables of [`ObjectRegistry`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes buffered per streaming write before a part is sent to the backend. Memory per
    /// upload is about `write_buffer * (write_concurrency + 1)`.
    pub write_buffer: usize,
    /// Parts of one streaming write in flight at once. On S3 (the default, 4) one streamed
    /// 512 MiB PATCH on a local Garage ran at 176 MiB/s with 4 and 166 with 2 (4 interleaved
    /// rounds; monolithic pushes 175 and 174), for 16 MiB more memory per upload.
    pub write_concurrency: usize,
    /// An upload chunk is rewritten together with the next one while it is smaller than this,
    /// so that an upload of many small chunks is kept as a few objects and its session
    /// document stays small. Each request then rewrites at most this many earlier bytes.
    pub coalesce_below: u64,
    /// The largest object the backend's `rename` (a copy on S3) takes; larger ones are
    /// published by a streamed copy. AWS S3 copies at most 5 GiB in one request.
    pub copy_limit: u64,
    /// The smallest part of a session's multipart upload but the last (S3: 5 MiB). Parts grow
    /// from it as an upload grows (see `store/uploads/multipart.rs`); chunks are held in the
    /// session until this much has arrived.
    pub part_min: u64,
    /// How long tags, manifests and blob links read from storage are trusted without reading
    /// them again: what another node changed is answered from this node's memory for at most
    /// this long (see `store/cache.rs`). Zero reads storage on every request; at most
    /// [`MAX_CACHE_TTL`].
    pub cache_ttl: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            write_buffer: 8 * 1024 * 1024,
            write_concurrency: 4,
            coalesce_below: 1024 * 1024,
            copy_limit: u64::MAX,
            part_min: 5 << 20,
            cache_ttl: std::time::Duration::from_secs(1),
        }
    }
}

/// The registry's storage over an object store.
#[derive(Debug, Clone)]
pub struct ObjectRegistry {
    store: Arc<dyn ObjectStore>,
    /// A non-durable view of the same storage for upload chunks after the first (see `uploads`).
    scratch: Option<Arc<dyn ObjectStore>>,
    /// The same storage's multipart uploads (S3): an upload session streams its chunks into
    /// one multipart upload (see `uploads::multipart`).
    multipart: Option<Multipart>,
    options: StoreOptions,
    /// Repositories whose catalog marker is known to exist. A cache only: markers are never
    /// removed, so a stale entry cannot be wrong.
    known_repos: Arc<Mutex<HashSet<RepoName>>>,
    /// Tag lists by repository, each with the `tags_generation` it was listed under. A cache
    /// only: an entry is used only while the stored generation still equals its own.
    tag_lists: Arc<Mutex<HashMap<RepoName, CachedTags>>>,
    /// Signs short-lived blob URLs, when reads may bypass the registry (S3 redirect mode).
    presigner: Option<Presigner>,
    /// The sorted catalog with the `catalog_generation` it was listed under. A cache only, like
    /// `tag_lists`.
    catalog: Arc<Mutex<Option<CachedCatalog>>>,
    /// What this process last saw of a garbage collection's lease.
    lease: Arc<gc::LeaseView>,
    /// Appends in flight in this process, by upload session (see `uploads`).
    appends: Arc<uploads::LocalAppends>,
    /// The storage's root directory, when it is a local filesystem: upload sessions append to
    /// one staging file there (see `uploads::staged`).
    staging: Option<Arc<std::path::PathBuf>>,
    /// Tags, manifest revisions and blob links read recently (see `cache`).
    cache: Arc<cache::MetadataCache>,
    /// Small durable writes on a local filesystem (see `durable`).
    durable: Arc<durable::DurableWrites>,
}

/// A store's multipart uploads (the trait has no `Debug`).
#[derive(Clone)]
struct Multipart(Arc<dyn MultipartStore>);

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Multipart")
    }
}

type CachedCatalog = (Bytes, Arc<Vec<RepoName>>);

/// A small object's next content (see [`ObjectRegistry::prepare_small`]).
struct PreparedSmall {
    path: Path,
    payload: Payload,
}

enum Payload {
    /// Written and fsynced beside the file.
    Local(durable::Staged),
    /// To be put.
    Object(PutPayload),
}

/// What [`ObjectRegistry::with_presigned_reads`] was given.
#[derive(Clone)]
struct Presigner {
    signer: Arc<dyn Signer>,
    /// The prefix the registry's keys live under in the signer's bucket.
    prefix: String,
    ttl: std::time::Duration,
}

impl std::fmt::Debug for Presigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Presigner({:?}, {:?})", self.prefix, self.ttl)
    }
}

impl ObjectRegistry {
    /// Wraps an object store.
    pub fn new(store: Arc<dyn ObjectStore>, options: StoreOptions) -> Self {
        ObjectRegistry {
            cache: Arc::new(cache::MetadataCache::new(options.cache_ttl)),
            store,
            scratch: None,
            multipart: None,
            options,
            known_repos: Arc::default(),
            tag_lists: Arc::default(),
            presigner: None,
            catalog: Arc::default(),
            lease: Arc::default(),
            appends: Arc::default(),
            staging: None,
            durable: Arc::default(),
        }
    }

    /// Writes upload chunks after the first of a session to `scratch`, a view of the same
    /// storage that need not be durable (the filesystem without fsync): multi-chunk uploads are
    /// then written durably once, when they are published, instead of twice. `scratch` must
    /// keep what it was given while the process lives; data lost from it in a machine crash
    /// fails the upload's digest check, it is never published.
    pub fn with_scratch(mut self, scratch: Arc<dyn ObjectStore>) -> Self {
        self.scratch = Some(scratch);
        self
    }

    /// Streams the chunks of new upload sessions into one multipart upload of `multipart`
    /// (the same storage as the store, by the same keys) and publishes the result through a
    /// pointer at the blob's key: every byte is written once and finishing copies nothing (see
    /// `uploads::multipart` and `placed`). Sessions already started keep their parts.
    pub fn with_multipart(mut self, multipart: Arc<dyn MultipartStore>) -> Self {
        self.multipart = Some(Multipart(multipart));
        self
    }

    /// Appends upload chunks in place, to one staging file per session under `root` (the
    /// directory the store keeps its objects in, by the same keys), and publishes them by a
    /// rename: every byte is written once. New sessions use it; sessions already started keep
    /// their parts.
    pub fn with_local_staging(mut self, root: std::path::PathBuf) -> Self {
        self.staging = Some(Arc::new(root));
        self
    }

    /// Lets blob reads go straight to the backend: [`crate::BlobStore::blob_url`] answers with
    /// URLs `signer` signs for `ttl`. `prefix` is the key prefix of this registry's storage in
    /// the signer's bucket ("" for none).
    pub fn with_presigned_reads(
        mut self,
        signer: Arc<dyn Signer>,
        prefix: &str,
        ttl: std::time::Duration,
    ) -> Self {
        self.presigner = Some(Presigner {
            signer,
            prefix: prefix.trim_matches('/').to_owned(),
            ttl,
        });
        self
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where data goes that may be lost in a machine crash without harm: the scratch store
    /// when there is one (upload sessions, cache validators).
    fn volatile(&self) -> &Arc<dyn ObjectStore> {
        self.scratch.as_ref().unwrap_or(&self.store)
    }

    /// The file holding `path`, when the storage is a local directory. Keys with
    /// percent-encoded parts are the store's to map to file names.
    fn local_file(&self, path: &Path) -> Option<std::path::PathBuf> {
        let root = self.staging.as_ref()?;
        (!path.as_ref().contains('%')).then(|| root.join(path.as_ref()))
    }

    /// Reads a whole small object from `store` (the store or its scratch view, which keep the
    /// same keys); `None` when absent. On a local filesystem the file is read in one blocking
    /// call (object_store's takes two: open, then read), which is most of what a manifest or
    /// tag read costs; such reads bypass wrappers of the store (the storage metrics do not
    /// count them).
    async fn get_small_from(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
    ) -> Result<Option<Bytes>> {
        let Some(file) = self.local_file(path) else {
            return get_small_in(store, path).await;
        };
        blocking_local(move || read_file(&file)).await
    }

    /// [`Self::get_small`] for several objects, in order: on a local filesystem in one
    /// blocking call (a call per object costs two thread hand-offs each), elsewhere up to 16
    /// at a time.
    async fn get_small_many(&self, paths: &[Path]) -> Result<Vec<Option<Bytes>>> {
        use futures::{StreamExt, TryStreamExt};
        let files: Option<Vec<_>> = paths.iter().map(|p| self.local_file(p)).collect();
        match files {
            Some(files) => {
                blocking_local(move || files.iter().map(|f| read_file(f)).collect()).await
            }
            None => {
                // Built in a loop: futures made by a closure are not `Send` enough for the
                // async traits that await this.
                let mut reads = Vec::with_capacity(paths.len());
                for p in paths {
                    reads.push(get_small_in(&self.store, p));
                }
                futures::stream::iter(reads)
                    .buffered(16)
                    .try_collect()
                    .await
            }
        }
    }

    /// [`Self::get_small_from`] the durable store.
    async fn get_small(&self, path: &Path) -> Result<Option<Bytes>> {
        self.get_small_from(&self.store, path).await
    }

    /// Reads a small object and decodes it with `decode`, answered from the metadata cache
    /// when it may be (see `cache`): for reads that serve pulls, never for those a write
    /// decides on. The cache keeps the decoded value, so a hit does not decode again.
    /// The key is given as its text (`layout::…_text`): a hit needs no [`Path`].
    async fn get_cached<T>(
        &self,
        key: String,
        decode: impl FnOnce(&Path, Bytes) -> Result<T>,
    ) -> Result<Option<T>>
    where
        T: Clone + Send + Sync + 'static,
    {
        let cacheable = self.cache.enabled() && !self.lease_active(false).await?;
        if cacheable {
            if let Some(value) = self.cache.get::<T>(&key) {
                return Ok(Some(value));
            }
        }
        let ticket = self.cache.ticket();
        // Entries are filled under the path's own text, the text writes forget.
        let path = &layout::path(key);
        let Some(raw) = self.get_small(path).await? else {
            return Ok(None);
        };
        let len = raw.len();
        let value = decode(path, raw)?;
        if cacheable {
            self.cache.fill(ticket, path, len, &value);
        }
        Ok(Some(value))
    }

    /// Writes a small object the metadata cache may hold. The cache forgets it once the write
    /// is done (or failed), which also keeps reads in flight from caching the old value.
    /// On a local filesystem the write is `durable`'s, which shares directory fsyncs between
    /// concurrent writers (it bypasses wrappers of the store, as local reads do).
    async fn put_small(&self, path: &Path, payload: PutPayload) -> Result<()> {
        self.write_small(path, payload, false).await.map(drop)
    }

    /// Readies a small object's next content without putting it in place: on a filesystem it
    /// is written and fsynced beside its target (see `durable`); elsewhere nothing is done yet.
    async fn prepare_small(&self, path: Path, payload: PutPayload) -> Result<PreparedSmall> {
        let payload = match self.local_file(&path) {
            Some(file) => {
                Payload::Local(blocking_local(move || durable::stage(&file, &payload)).await?)
            }
            None => Payload::Object(payload),
        };
        Ok(PreparedSmall { path, payload })
    }

    /// Puts a prepared object in place, durably; tells whether it is new (on a filesystem
    /// that costs no extra call; elsewhere the object is looked for first).
    async fn publish_small(&self, prepared: PreparedSmall) -> Result<bool> {
        let path = prepared.path;
        match prepared.payload {
            Payload::Local(staged) => {
                let durable = self.durable.clone();
                let published = blocking_local(move || durable.publish(staged)).await;
                self.cache.forget(&path);
                published
            }
            Payload::Object(payload) => self.write_small(&path, payload, true).await,
        }
    }

    async fn write_small(&self, path: &Path, payload: PutPayload, ask_new: bool) -> Result<bool> {
        let written = match self.local_file(path) {
            Some(file) => {
                let durable = self.durable.clone();
                blocking_local(move || durable.put(&file, &payload)).await
            }
            None => {
                let new = !ask_new || !self.exists(path).await?;
                match self.store.put(path, payload).await {
                    Ok(_) => Ok(new),
                    Err(e) => Err(e.into()),
                }
            }
        };
        self.cache.forget(path);
        written
    }

    /// Rewrites a generation object (`tags_generation`, `catalog_generation`: a random value
    /// that readers only compare with the one their cached listing was made under), in the
    /// scratch view. On a local filesystem an existing file of the same length is overwritten
    /// in place: replacing it by a rename frees an inode per write, and ext4 without a journal
    /// steps over every inode freed in the last 30 seconds whenever it allocates one, which
    /// made a run of manifest PUTs adding tags spend 40 % of the server's CPU in the inode
    /// allocator. A reader racing the overwrite may see old and new bytes mixed: a value no
    /// cached listing was made under, so it lists afresh, as it would for the new value. A
    /// missing file is created by the store (a temporary file renamed into place: no reader
    /// ever sees it empty).
    async fn put_generation(&self, path: &Path, value: Bytes) -> Result<()> {
        if let Some(file) = self.local_file(path) {
            let bytes = value.clone();
            let rewritten = blocking_local(move || {
                use std::os::unix::fs::FileExt;
                let f = match std::fs::OpenOptions::new().write(true).open(&file) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                };
                if f.metadata()?.len() != bytes.len() as u64 {
                    return Ok(false);
                }
                f.write_all_at(&bytes, 0)?;
                Ok(true)
            })
            .await?;
            if rewritten {
                return Ok(());
            }
        }
        self.volatile().put(path, PutPayload::from(value)).await?;
        Ok(())
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        let Some(bytes) = self.get_small(path).await? else {
            return Ok(None);
        };
        parse_json(path, &bytes).map(Some)
    }

    async fn put_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("plain data serializes");
        self.put_small(path, PutPayload::from(bytes)).await
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Everything under `dir`.
    async fn list_all(&self, dir: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        Ok(self.store.list(Some(dir)).try_collect().await?)
    }

    /// Deletes, treating an absent object as deleted.
    async fn delete_quiet(&self, path: &Path) -> Result<()> {
        let deleted = self.store.delete(path).await;
        self.cache.forget(path);
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records that `repo` exists, for the catalog.
    async fn ensure_repo(&self, repo: &RepoName) -> Result<()> {
        if self
            .known_repos
            .lock()
            .expect("not poisoned")
            .contains(repo)
        {
            return Ok(());
        }
        let marker = layout::catalog_marker(repo);
        if !self.exists(&marker).await? {
            self.store
                .put(&marker, PutPayload::from_static(b""))
                .await?;
            // After the marker: a reader that sees the new generation also sees the repository.
            self.catalog_changed().await?;
        }
        self.known_repos
            .lock()
            .expect("not poisoned")
            .insert(repo.clone());
        Ok(())
    }

    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        if self
            .known_repos
            .lock()
            .expect("not poisoned")
            .contains(repo)
        {
            return Ok(true);
        }
        // Markers are never removed: one seen once can be remembered.
        let exists = self.exists(&layout::catalog_marker(repo)).await?;
        if exists {
            self.known_repos
                .lock()
                .expect("not poisoned")
                .insert(repo.clone());
        }
        Ok(exists)
    }
}

/// A whole file; `None` when it does not exist (blocking).
fn read_file(file: &std::path::Path) -> std::io::Result<Option<Bytes>> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(Bytes::from(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs file operations on the blocking pool; their errors are storage errors.
async fn blocking_local<T: Send + 'static>(
    op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            Error::Storage(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })
        })
}

async fn get_small_in(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<Bytes>> {
    match store.get(path).await {
        Ok(r) => Ok(Some(r.bytes().await?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn get_json_in<T: DeserializeOwned>(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
) -> Result<Option<T>> {
    let Some(bytes) = get_small_in(store, path).await? else {
        return Ok(None);
    };
    parse_json(path, &bytes).map(Some)
}

/// The JSON document stored at `path`.
fn parse_json<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

async fn put_json_in<T: Serialize>(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("plain data serializes");
    store.put(path, PutPayload::from(bytes)).await?;
    Ok(())
}
