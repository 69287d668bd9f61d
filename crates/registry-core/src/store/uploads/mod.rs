//! Upload sessions kept entirely in the backend. On a local filesystem (when the registry has
//! a staging root) every chunk is appended to one staging file and the finish renames it: see
//! [`staged`]. On S3 (when the registry has multipart uploads) chunks stream into one multipart
//! upload per session and the finish points the blob's key at it: see [`multipart`]; chunks
//! too small for a part are held as below until a part's worth has arrived. Otherwise (memory,
//! and sessions started before either existed) each chunk is written to its own object under
//! `uploads/<id>/`, and the blob becomes visible only after its digest is verified, by a
//! rename (one chunk) or a streamed concatenation (several) into its content-addressed key;
//! the rest of this documentation is about that scheme.
//!
//! Every byte is hashed once:
//! - while the first chunk streams in; the hash state is saved in the session document, so a
//!   single-chunk upload (Docker's one streamed PATCH) finishes on any node, after any restart,
//!   with a rename and without reading the data again;
//! - a monolithic upload (a session whose data all comes with its final request) streams
//!   straight to the blob's key and is published there only if its digest matches;
//! - for uploads of several chunks, when a *scratch* store is configured (a non-durable view of
//!   the same storage, e.g. the filesystem without fsync), the second and later chunks go there
//!   unhashed, and the concatenation hashes everything it copies: the data is written durably
//!   once, and a chunk damaged in scratch can only fail the digest check, never be published.
//!   Without a scratch store (S3) every chunk is durable and hashed as it arrives, and the
//!   concatenation only copies.
//!
//! A chunk smaller than `coalesce_below` is rewritten together with the next one, so an upload
//! of any number of chunks (clients send thousands of small ones) stays a few objects and a
//! small session document; S3's limits (10 000 parts of at least 5 MiB) never apply to client
//! chunks. Above `copy_limit` (5 GiB on S3) a single chunk is published by a streamed copy.
//!
//! # Concurrent appends to one session
//! Two requests appending to one session at once (a client's parallel PATCHes, a retry racing
//! its original) both stream their chunk, but only one may become the session's next chunk;
//! the other is refused with `ConcurrentAppend` (416) and the session's true size. Without
//! conditional writes (which not every S3 server honours) each append decides after writing
//! its own part, which is its mark, by listing the session's parts: a part at the same offset
//! that the loaded session does not list is a competitor, and the append gives up. Then it
//! re-reads the session document and gives up if the document changed since it was loaded.
//! Of two appends, each writes its part before listing, so with strongly consistent storage
//! at least one sees the other: never both commit (both may give up, across nodes). Within
//! one process the commits of a session take turns, and a competitor still streaming in this
//! process is ignored (it commits after, sees this commit and gives up), so one of two local
//! racers always wins.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

mod multipart;
mod race;
mod staged;

use super::{get_json_in, put_json_in, ObjectRegistry};
use crate::digest::{Algorithm, Digest, Hasher, SavedHasher};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::RepoName;
use crate::storage::{ByteStream, UploadStatus, UploadStore};

pub(super) use race::LocalAppends;
use race::Seen;

/// The session document at `uploads/<id>/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadState {
    repo: String,
    /// Unix seconds of the last change; sessions idle longer than the purge age are removed.
    updated_at: u64,
    size: u64,
    /// Stored as `held` since sessions stream into multipart uploads: a node of an earlier
    /// version knows only `parts` and would publish the held bytes of such a session without
    /// its parts; it finds the document unreadable instead (the session is unknown to it, and
    /// the client starts over). Documents of earlier versions are read as they are.
    #[serde(rename = "held", alias = "parts")]
    parts: Vec<Part>,
    /// Hash of all parts so far; `None` if it could not be kept (then finishing re-reads).
    hasher: Option<SavedHasher>,
    /// The bytes are appended to one staging file (see `staged`) instead of parts.
    #[serde(default)]
    staged: bool,
    /// The boot of the machine whose appends to the staging file are not synced yet (see
    /// `staged`); `None` when every byte is synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsynced: Option<String>,
    /// The session streams into a multipart upload (see `multipart`): its parts hold the
    /// first bytes, `parts` the rest (held). Sessions without it keep all bytes in `parts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placed: Option<multipart::Placed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    offset: u64,
    size: u64,
    nonce: String,
    /// Written to the scratch store (not durable, not hashed while streaming).
    #[serde(default)]
    scratch: bool,
}

impl Part {
    fn path(&self, id: &str) -> Path {
        layout::upload_part(id, self.offset, &self.nonce)
    }
}

fn io_to_storage(e: std::io::Error) -> Error {
    match e.downcast::<object_store::Error>() {
        Ok(e) => Error::Storage(e),
        Err(e) => Error::Storage(object_store::Error::Generic {
            store: "BufWriter",
            source: Box::new(e),
        }),
    }
}

/// Where [`ObjectRegistry::write_verified`] streams to.
enum Sink {
    Buffered(Box<BufWriter>),
    Parts(Box<multipart::PartWriter>),
}

impl Sink {
    async fn put(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Sink::Buffered(w) => w.put(chunk).await.map_err(Error::from),
            Sink::Parts(w) => w.put(chunk).await,
        }
    }

    async fn abort(self) {
        match self {
            Sink::Buffered(mut w) => {
                let _ = w.abort().await;
            }
            Sink::Parts(w) => w.abort().await,
        }
    }

    async fn finish(self) -> Result<()> {
        match self {
            Sink::Buffered(mut w) => w.shutdown().await.map_err(io_to_storage),
            Sink::Parts(w) => w.complete().await,
        }
    }
}

async fn delete_quiet(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Session ids are UUIDs; anything else (including path tricks) names no session.
fn check_id(id: &str) -> Result<()> {
    match uuid::Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(Error::UploadUnknown),
    }
}

impl ObjectRegistry {
    async fn load_upload(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        check_id(id)?;
        match get_json_in::<UploadState>(self.volatile(), &layout::upload_state(id)).await {
            Ok(Some(s)) if s.repo == repo.as_str() => Ok(staged::distrust_lost_writes(id, s)),
            Ok(_) => Err(Error::UploadUnknown),
            // A session document torn by a machine crash: the session is gone, the client
            // starts over (purge removes the remains).
            Err(Error::Corrupt { path, reason }) => {
                tracing::warn!(%path, %reason, "unreadable upload session");
                Err(Error::UploadUnknown)
            }
            Err(e) => Err(e),
        }
    }

    /// The store holding `part`.
    fn part_store(&self, part: &Part) -> &Arc<dyn ObjectStore> {
        match (&self.scratch, part.scratch) {
            (Some(scratch), true) => scratch,
            _ => &self.store,
        }
    }

    /// Streams the bytes of `parts`, in order. The next part is requested while one streams,
    /// up to its first bytes: an object store's first byte can come long after its headers
    /// (40 ms from Garage, which sends them apart), and a blob may have hundreds of parts.
    fn read_parts<'a>(
        &'a self,
        id: &'a str,
        parts: &'a [Part],
    ) -> BoxStream<'a, object_store::Result<Bytes>> {
        futures::stream::iter(parts)
            .map(move |p| async move {
                let mut body = self.part_store(p).get(&p.path(id)).await?.into_stream();
                let first = body.try_next().await?;
                Ok::<_, object_store::Error>(futures::stream::iter(first.map(Ok)).chain(body))
            })
            .buffered(2)
            .try_flatten()
            .boxed()
    }

    /// Streams a session's bytes: its staging file, or its parts in order.
    fn session_bytes<'a>(
        &'a self,
        id: &'a str,
        state: &'a UploadState,
    ) -> BoxStream<'a, object_store::Result<Bytes>> {
        if !state.staged {
            return self.read_parts(id, &state.parts);
        }
        if state.size == 0 {
            return futures::stream::empty().boxed();
        }
        // Only what the session committed: an append in flight may be writing past it.
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(0..state.size)),
            ..Default::default()
        };
        futures::stream::once(async move {
            let body = self.store.get_opts(&staged::data_key(id), options).await?;
            Ok::<_, object_store::Error>(body.into_stream())
        })
        .try_flatten()
        .boxed()
    }

    /// A streaming writer to `path` in `store`; nothing is visible there until it is shut down.
    fn writer(&self, store: &Arc<dyn ObjectStore>, path: &Path) -> BufWriter {
        BufWriter::with_capacity(store.clone(), path.clone(), self.options.write_buffer)
            .with_max_concurrency(self.options.write_concurrency)
    }

    /// Streams `chunks` into `path`; returns the byte count. On any error the write is aborted,
    /// so nothing is visible at `path` unless every chunk arrived.
    async fn stream_to<E>(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        mut chunks: BoxStream<'_, std::result::Result<Bytes, E>>,
        on_error: impl Fn(E) -> Error,
    ) -> Result<u64> {
        let mut writer = self.writer(store, path);
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let result = match chunk {
                Ok(chunk) => {
                    written += chunk.len() as u64;
                    writer.put(chunk).await.map_err(Error::from)
                }
                Err(e) => Err(on_error(e)),
            };
            if let Err(e) = result {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        writer.shutdown().await.map_err(io_to_storage)?;
        Ok(written)
    }

    /// Appends one chunk to a loaded session and saves the new state.
    async fn append(
        &self,
        id: &str,
        state: UploadState,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        if state.staged {
            return self.append_staged(id, state, start, len, body).await;
        }
        if state.placed.is_some() {
            return self.append_placed(id, state, start, len, body).await;
        }
        self.append_parts(id, state, start, len, body).await
    }

    /// Appends one chunk as an object of its own (or rewritten with a small last one).
    async fn append_parts(
        &self,
        id: &str,
        mut state: UploadState,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        if let Some(start) = start {
            if start != state.size {
                return Err(Error::RangeInvalid {
                    expected: state.size,
                    got: start,
                });
            }
        }
        let seen = Seen::of(&state);
        // With a scratch store, only the first chunk is durable and hashed as it streams; later
        // chunks are hashed by the concatenation that publishes them.
        let scratch = self.scratch.is_some() && !state.parts.is_empty();
        let mut hasher = if scratch {
            None
        } else {
            state.hasher.as_ref().and_then(Hasher::restore)
        };
        // A small last chunk in the same store is rewritten together with this one, so that
        // many small chunks end up as a few objects.
        let merged = match state.parts.last() {
            Some(last) if last.scratch == scratch && last.size < self.options.coalesce_below => {
                state.parts.pop()
            }
            _ => None,
        };
        let part = Part {
            offset: merged.as_ref().map_or(state.size, |m| m.offset),
            size: 0,
            nonce: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            scratch,
        };
        let local = self.appends.begin(id, &part.nonce);
        let path = part.path(id);
        let store = self.part_store(&part).clone();
        let kept = merged.as_ref().map_or(0, |m| m.size);
        // The new bytes are hashed as they arrive; the kept ones were hashed when they did.
        let body = body
            .map(|chunk| {
                if let (Ok(bytes), Some(h)) = (&chunk, hasher.as_mut()) {
                    h.update(bytes);
                }
                chunk.map_err(Error::Body)
            })
            .boxed();
        let chunks = match &merged {
            Some(m) => self
                .read_parts(id, std::slice::from_ref(m))
                .map_err(Error::from)
                .chain(body)
                .boxed(),
            None => body,
        };
        let total = match self.stream_to(&store, &path, chunks, |e| e).await {
            Ok(total) => total,
            // A competitor may have committed and removed the part this one merges.
            Err(e) => return Err(self.changed_since(id, &seen).await?.unwrap_or(e)),
        };
        let written = total - kept;
        if let Some(declared) = len.filter(|&d| d != written) {
            delete_quiet(&store, &path).await?;
            return Err(Error::SizeInvalid {
                declared,
                received: written,
            });
        }
        if written == 0 {
            delete_quiet(&store, &path).await?;
            state.parts.extend(merged);
            return Ok(state);
        }
        let turn = local.turn().await;
        if let Some(lost) = self.competitor(id, &seen, &part, &local).await? {
            delete_quiet(&store, &path).await?;
            return Err(lost);
        }
        state.parts.push(Part {
            size: total,
            ..part
        });
        state.size += written;
        state.hasher = hasher.map(|h| h.save());
        state.updated_at = now();
        put_json_in(self.volatile(), &layout::upload_state(id), &state).await?;
        drop(turn);
        // Only once the session no longer lists it.
        if let Some(m) = merged {
            delete_quiet(&store, &m.path(id)).await?;
        }
        Ok(state)
    }

    /// Moves the data of a session whose digest is already verified to the blob's key.
    async fn publish(&self, id: &str, state: &UploadState, target: &Path) -> Result<()> {
        if state.staged {
            return self.publish_staged(id, state, target).await;
        }
        if state.placed.as_ref().is_some_and(|p| !p.parts.is_empty()) {
            return self.publish_placed(id, state, target).await;
        }
        match state.parts.as_slice() {
            [] => {
                self.store.put(target, PutPayload::new()).await?;
            }
            [one] if !one.scratch && one.size <= self.options.copy_limit => {
                self.store.rename(&one.path(id), target).await?;
            }
            parts => {
                let chunks = self.read_parts(id, parts);
                self.stream_to(&self.store, target, chunks, Error::Storage)
                    .await?;
            }
        }
        Ok(())
    }

    /// Copies the session's data to the blob's key, hashing what it copies; publishes only if
    /// that hash is `digest`. Used when no saved hash covers every chunk.
    async fn publish_verified(
        &self,
        id: &str,
        state: &UploadState,
        digest: &Digest,
        target: &Path,
    ) -> Result<()> {
        let chunks = self.session_bytes(id, state).map_err(Error::from).boxed();
        let hasher = Hasher::new(digest.algorithm());
        self.write_verified(hasher, chunks, digest, None, Some(target))
            .await?;
        Ok(())
    }

    /// Streams `chunks` to `target` (or nowhere, when `None`) while `hasher` hashes them; the
    /// object appears only if the hash is `digest` and the byte count is `declared` (when
    /// given). Returns the byte count.
    ///
    /// Two clients may push the same blob at once, and an S3 server may abort one multipart
    /// upload when another of the same key completes (Garage does). When writing fails but
    /// the object exists by then, the bytes are only hashed from there on: the content is the
    /// same by its digest, which is still checked.
    async fn write_verified(
        &self,
        mut hasher: Hasher,
        mut chunks: BoxStream<'_, Result<Bytes>>,
        digest: &Digest,
        declared: Option<u64>,
        target: Option<&Path>,
    ) -> Result<u64> {
        let mut writer = match target {
            Some(t) => Some((t, self.sink(t)?)),
            None => None,
        };
        let mut count = 0u64;
        let outcome: Result<()> = loop {
            let chunk = match chunks.try_next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            hasher.update(&chunk);
            count += chunk.len() as u64;
            let failed = match writer.as_mut() {
                Some((target, w)) => match w.put(chunk).await {
                    Ok(()) => None,
                    Err(e) => Some((e, self.exists(target).await)),
                },
                None => None,
            };
            match failed {
                None => {}
                Some((_, Ok(true))) => {
                    if let Some((_, w)) = writer.take() {
                        w.abort().await;
                    }
                }
                Some((e, Ok(false))) => break Err(e),
                Some((_, Err(e))) => break Err(e),
            }
        };
        let outcome = outcome.and_then(|()| {
            if let Some(declared) = declared.filter(|&d| d != count) {
                return Err(Error::SizeInvalid {
                    declared,
                    received: count,
                });
            }
            let actual = hasher.finish();
            if &actual == digest {
                Ok(())
            } else {
                Err(Error::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                })
            }
        });
        let Some((target, w)) = writer else {
            return outcome.map(|()| count);
        };
        if let Err(e) = outcome {
            w.abort().await;
            return Err(e);
        }
        match w.finish().await {
            Ok(()) => Ok(count),
            Err(_) if self.exists(target).await? => Ok(count),
            Err(e) => Err(e),
        }
    }

    /// A streaming writer of a blob to `target`: parts that grow with the upload where the
    /// storage has multipart uploads (S3 takes at most 10 000 parts, so fixed 8 MiB parts would
    /// stop at 78 GiB), else `BufWriter`'s.
    fn sink(&self, target: &Path) -> Result<Sink> {
        Ok(match &self.multipart {
            Some(_) => Sink::Parts(Box::new(self.part_writer(target.clone(), None, 0)?)),
            None => Sink::Buffered(Box::new(self.writer(&self.store, target))),
        })
    }

    /// Finishes a session that received no data before its final request (a monolithic
    /// upload): the body streams straight to the blob's key and is published there once its
    /// digest is verified, with no chunk object and no copy.
    async fn finish_direct(
        &self,
        repo: &RepoName,
        id: &str,
        hasher: Hasher,
        digest: &Digest,
        declared: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let target = layout::blob(digest);
        // Taken when the commit runs: a commit refused before it starts (a collection is
        // deleting these bytes) leaves the body for the next attempt.
        let body = std::sync::Mutex::new(Some((hasher, body)));
        let published = self
            .publish_safely(digest, || async {
                let (hasher, body) = body.lock().expect("not poisoned").take().expect("once");
                let chunks = body.map_err(Error::Body).boxed();
                let exists = self.exists(&target).await?;
                let written = (!exists).then_some(&target);
                let size = self
                    .write_verified(hasher, chunks, digest, declared, written)
                    .await?;
                self.link_blob(repo, digest, size).await?;
                Ok(size)
            })
            .await;
        let size = match published {
            Ok(size) => size,
            Err(e) => {
                // As for other uploads: a wrong digest ends the session.
                if matches!(e, Error::DigestMismatch { .. }) {
                    delete_quiet(self.volatile(), &layout::upload_state(id)).await?;
                }
                return Err(e);
            }
        };
        delete_quiet(self.volatile(), &layout::upload_state(id)).await?;
        Ok(size)
    }

    /// Runs `attempt` (which publishes `digest` and links it) safely against a concurrent
    /// garbage collection: when one is deleting the stored bytes, waits until they are gone
    /// and tries again, so that the session's own bytes are published.
    async fn publish_safely<T, F, Fut>(&self, digest: &Digest, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        loop {
            let commit = attempt();
            match self
                .depend_on(std::slice::from_ref(digest), || async { Ok(()) }, commit)
                .await
            {
                Err(Error::Doomed(_)) => self.wait_until_not_doomed(digest).await?,
                other => return other,
            }
        }
    }

    /// Removes a session: its document first (so it is gone at once), then the chunks it
    /// lists. Objects it does not list (a racing writer's chunk) are left to the purge.
    async fn remove_session(&self, id: &str, state: &UploadState) -> Result<()> {
        delete_quiet(self.volatile(), &layout::upload_state(id)).await?;
        self.abort_placed(id, state).await;
        for part in &state.parts {
            delete_quiet(self.part_store(part), &part.path(id)).await?;
        }
        if state.staged {
            delete_quiet(&self.store, &staged::data_key(id)).await?;
        }
        Ok(())
    }

    /// The ids of every session that has anything stored, in any store (one listing each).
    pub(in crate::store) async fn session_ids(&self) -> Result<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        for store in std::iter::once(&self.store).chain(self.scratch.iter()) {
            let listing = store
                .list_with_delimiter(Some(&layout::uploads_root()))
                .await?;
            ids.extend(
                (listing.common_prefixes.iter())
                    .filter_map(|dir| dir.filename().map(str::to_owned)),
            );
        }
        Ok(ids)
    }

    /// Removes everything under a session's directory, in every store (for the purge, which
    /// may find sessions without a readable document).
    async fn remove_upload_dir(&self, id: &str) -> Result<()> {
        delete_quiet(self.volatile(), &layout::upload_state(id)).await?;
        let dir = layout::upload_dir(id);
        for store in std::iter::once(&self.store).chain(self.scratch.iter()) {
            let paths: Vec<Path> = store
                .list(Some(&dir))
                .map_ok(|m| m.location)
                .try_collect()
                .await?;
            for p in paths {
                delete_quiet(store, &p).await?;
            }
        }
        Ok(())
    }

    /// Hashes the session's data as stored.
    async fn hash_parts(
        &self,
        id: &str,
        state: &UploadState,
        algorithm: Algorithm,
    ) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        let mut chunks = self.session_bytes(id, state);
        while let Some(chunk) = chunks.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    /// Verifies the session's data against `digest` and makes the blob exist at `target`.
    /// Returns whether the session's bytes were published (not when the blob existed).
    async fn verify_and_publish(
        &self,
        id: &str,
        state: &UploadState,
        digest: &Digest,
        target: &Path,
    ) -> Result<bool> {
        let saved = state
            .hasher
            .as_ref()
            .and_then(Hasher::restore)
            .filter(|h| h.algorithm() == digest.algorithm());
        if saved.is_none() && state.placed.as_ref().is_some_and(|p| !p.parts.is_empty()) {
            // Parts cannot be read before their upload completes.
            return self
                .publish_placed_verified(id, state, digest, target)
                .await
                .map(|()| true);
        }
        let exists = self.exists(target).await?;
        let published = match (saved, exists) {
            (Some(h), _) => {
                let actual = h.finish();
                if &actual != digest {
                    return Err(Error::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                    });
                }
                if exists {
                    return Ok(false);
                }
                self.publish(id, state, target).await
            }
            // The bytes exist already; the client's upload must still hash to the digest, or
            // it could link content it never had into its repository.
            (None, true) => {
                let actual = self.hash_parts(id, state, digest.algorithm()).await?;
                if &actual != digest {
                    return Err(Error::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                    });
                }
                return Ok(false);
            }
            (None, false) => self.publish_verified(id, state, digest, target).await,
        };
        match published {
            Err(e @ Error::DigestMismatch { .. }) => Err(e),
            // A concurrent finish of the same session may have moved the data already.
            Err(e) if !self.exists(target).await? => Err(e),
            published => Ok(published.is_ok()),
        }
    }
}

#[async_trait]
impl UploadStore for ObjectRegistry {
    async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let state = UploadState {
            repo: repo.to_string(),
            updated_at: now(),
            size: 0,
            parts: Vec::new(),
            hasher: Some(Hasher::new(algorithm).save()),
            staged: self.staging.is_some(),
            unsynced: None,
            placed: (self.multipart.is_some() && self.staging.is_none() && self.scratch.is_none())
                .then(multipart::Placed::default),
        };
        put_json_in(self.volatile(), &layout::upload_state(&id), &state).await?;
        Ok(UploadStatus { id, size: 0 })
    }

    async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        let state = self.load_upload(repo, id).await?;
        Ok(UploadStatus {
            id: id.to_owned(),
            size: state.size,
        })
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        let state = self.load_upload(repo, id).await?;
        let state = self.append(id, state, start, len, body).await?;
        Ok(UploadStatus {
            id: id.to_owned(),
            size: state.size,
        })
    }

    async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last: Option<(Option<u64>, ByteStream)>,
    ) -> Result<u64> {
        let mut state = self.load_upload(repo, id).await?;
        let empty = state.parts.is_empty() && state.size == 0;
        let saved = (state.hasher.as_ref())
            .and_then(Hasher::restore)
            .filter(|h| empty && h.algorithm() == digest.algorithm());
        match (saved, last) {
            (Some(h), Some((len, body))) => {
                return self.finish_direct(repo, id, h, digest, len, body).await
            }
            (_, Some((len, body))) => state = self.append(id, state, None, len, body).await?,
            (_, None) => {}
        }
        let target = layout::blob(digest);
        // Publishing may reuse stored bytes.
        let published = self
            .publish_safely(digest, || async {
                let published = self.verify_and_publish(id, &state, digest, &target).await?;
                self.link_blob(repo, digest, state.size).await?;
                Ok(published)
            })
            .await;
        match published {
            Err(e) => {
                if matches!(e, Error::DigestMismatch { .. }) {
                    self.remove_session(id, &state).await?;
                }
                return Err(e);
            }
            // A completed multipart upload is not aborted.
            Ok(true) if state.placed.as_ref().is_some_and(|p| !p.parts.is_empty()) => {
                state.placed = None
            }
            Ok(_) => {}
        }
        self.remove_session(id, &state).await?;
        Ok(state.size)
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()> {
        let state = self.load_upload(repo, id).await?;
        self.remove_session(id, &state).await
    }

    async fn upload_purge(&self, max_age: Duration) -> Result<usize> {
        let cutoff = now().saturating_sub(max_age.as_secs());
        let mut purged = 0;
        for id in self.session_ids().await? {
            let dir = layout::upload_dir(&id);
            let stale =
                match get_json_in::<UploadState>(self.volatile(), &layout::upload_state(&id)).await
                {
                    Ok(Some(state)) if state.updated_at < cutoff => {
                        // (Aborts its multipart upload.)
                        self.remove_session(&id, &state).await?;
                        true
                    }
                    Ok(Some(_)) => false,
                    // No readable state: judge by the age of whatever is left.
                    Ok(None) | Err(Error::Corrupt { .. }) => {
                        let mut newest = 0;
                        for store in std::iter::once(&self.store).chain(self.scratch.iter()) {
                            newest = store
                                .list(Some(&dir))
                                .map_ok(|m| m.last_modified.timestamp().max(0) as u64)
                                .try_fold(newest, |a, b| async move { Ok(a.max(b)) })
                                .await?;
                        }
                        newest < cutoff
                    }
                    Err(e) => return Err(e),
                };
            if stale {
                self.remove_upload_dir(&id).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Earlier versions' documents are read; theirs cannot read ours (see `parts`).
    #[test]
    fn session_documents_across_versions() {
        let earlier = r#"{"repo":"a/b","updated_at":1,"size":3,"parts":[{"offset":0,"size":3,"nonce":"n"}],"hasher":null}"#;
        let state: UploadState = serde_json::from_str(earlier).unwrap();
        assert_eq!(state.parts.len(), 1);
        assert!(state.placed.is_none());
        let now = serde_json::to_value(&state).unwrap();
        assert!(now.get("parts").is_none(), "{now}");
        assert_eq!(now["held"][0]["size"], 3);
    }
}
