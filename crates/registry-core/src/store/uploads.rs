//! Upload sessions kept entirely in the backend. Each chunk is written to its own object under
//! `uploads/<id>/`, hashed as it streams; the hash state is saved in the session document after
//! every chunk, so the finishing request (on any node, after any restart) verifies the digest
//! without reading the data again. The blob becomes visible only after verification, by a rename
//! (one chunk) or a streamed concatenation (several) into its content-addressed key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::ObjectRegistry;
use crate::digest::{Algorithm, Digest, Hasher, SavedHasher};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::RepoName;
use crate::storage::{ByteStream, UploadStatus, UploadStore};

/// The session document at `uploads/<id>/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadState {
    repo: String,
    /// Unix seconds of the last change; sessions idle longer than the purge age are removed.
    updated_at: u64,
    size: u64,
    parts: Vec<Part>,
    /// Hash of all parts so far; `None` if it could not be kept (then finishing re-reads).
    hasher: Option<SavedHasher>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    offset: u64,
    size: u64,
    nonce: String,
}

impl Part {
    fn path(&self, id: &str) -> Path {
        layout::upload_part(id, self.offset, &self.nonce)
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
        match self
            .get_json::<UploadState>(&layout::upload_state(id))
            .await?
        {
            Some(s) if s.repo == repo.as_str() => Ok(s),
            _ => Err(Error::UploadUnknown),
        }
    }

    /// A streaming writer to `path`; nothing is visible there until it is shut down.
    fn writer(&self, path: &Path) -> BufWriter {
        BufWriter::with_capacity(self.store.clone(), path.clone(), self.options.write_buffer)
            .with_max_concurrency(self.options.write_concurrency)
    }

    /// Streams `chunks` into `path`, feeding `hasher`; returns the byte count. On any error the
    /// write is aborted, so nothing is visible at `path` unless every chunk arrived.
    async fn stream_to<E>(
        &self,
        path: &Path,
        mut hasher: Option<&mut Hasher>,
        mut chunks: BoxStream<'_, std::result::Result<Bytes, E>>,
        on_error: impl Fn(E) -> Error,
    ) -> Result<u64> {
        let mut writer = self.writer(path);
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let result = match chunk {
                Ok(chunk) => {
                    if let Some(h) = hasher.as_deref_mut() {
                        h.update(&chunk);
                    }
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
        writer
            .shutdown()
            .await
            .map_err(|e| match e.downcast::<object_store::Error>() {
                Ok(e) => Error::Storage(e),
                Err(e) => Error::Storage(object_store::Error::Generic {
                    store: "BufWriter",
                    source: Box::new(e),
                }),
            })?;
        Ok(written)
    }

    /// Appends one chunk to a loaded session and saves the new state.
    async fn append(
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
        let mut hasher = state.hasher.as_ref().and_then(Hasher::restore);
        let part = Part {
            offset: state.size,
            size: 0,
            nonce: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        };
        let path = part.path(id);
        let body_error = |e: std::io::Error| Error::Body(e.to_string());
        let written = self
            .stream_to(&path, hasher.as_mut(), body, body_error)
            .await?;
        if let Some(declared) = len.filter(|&d| d != written) {
            self.delete_quiet(&path).await?;
            return Err(Error::SizeInvalid {
                declared,
                received: written,
            });
        }
        if written == 0 {
            self.delete_quiet(&path).await?;
            return Ok(state);
        }
        state.parts.push(Part {
            size: written,
            ..part
        });
        state.size += written;
        state.hasher = hasher.map(|h| h.save());
        state.updated_at = now();
        self.put_json(&layout::upload_state(id), &state).await?;
        Ok(state)
    }

    /// Hashes the session's data from storage: used only when no saved state fits `algorithm`.
    async fn rehash(&self, id: &str, state: &UploadState, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        for part in &state.parts {
            let mut stream = self.store.get(&part.path(id)).await?.into_stream();
            while let Some(chunk) = stream.try_next().await? {
                hasher.update(&chunk);
            }
        }
        Ok(hasher.finish())
    }

    /// Moves the verified session data to the blob's key.
    async fn publish(&self, id: &str, state: &UploadState, target: &Path) -> Result<()> {
        match state.parts.as_slice() {
            [] => {
                self.store.put(target, PutPayload::new()).await?;
            }
            [one] => {
                self.store.rename(&one.path(id), target).await?;
            }
            parts => {
                let sources = parts.iter().map(|p| p.path(id));
                let chunks = futures::stream::iter(sources)
                    .then(
                        |path| async move { self.store.get(&path).await.map(|r| r.into_stream()) },
                    )
                    .try_flatten()
                    .boxed();
                self.stream_to(target, None, chunks, Error::Storage).await?;
            }
        }
        Ok(())
    }

    /// Removes a session: its state first (so it is gone at once), then its data.
    async fn remove_upload(&self, id: &str) -> Result<()> {
        self.delete_quiet(&layout::upload_state(id)).await?;
        let dir = layout::upload_dir(id);
        let paths: Vec<Path> = self
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        for p in paths {
            self.delete_quiet(&p).await?;
        }
        Ok(())
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
        };
        self.put_json(&layout::upload_state(&id), &state).await?;
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
        if let Some((len, body)) = last {
            state = self.append(id, state, None, len, body).await?;
        }
        let actual = match state.hasher.as_ref().and_then(Hasher::restore) {
            Some(h) if h.algorithm() == digest.algorithm() => h.finish(),
            _ => self.rehash(id, &state, digest.algorithm()).await?,
        };
        if &actual != digest {
            self.remove_upload(id).await?;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let target = layout::blob(digest);
        if !self.exists(&target).await? {
            if let Err(e) = self.publish(id, &state, &target).await {
                // A concurrent finish of the same session may have moved the data already.
                if !self.exists(&target).await? {
                    return Err(e);
                }
            }
        }
        self.link_blob(repo, digest, state.size).await?;
        self.remove_upload(id).await?;
        Ok(state.size)
    }

    async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.load_upload(repo, id).await?;
        self.remove_upload(id).await
    }

    async fn upload_purge(&self, max_age: Duration) -> Result<usize> {
        let cutoff = now().saturating_sub(max_age.as_secs());
        let listing = self
            .store
            .list_with_delimiter(Some(&layout::uploads_root()))
            .await?;
        let mut purged = 0;
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename().map(str::to_owned) else {
                continue;
            };
            let stale = match self
                .get_json::<UploadState>(&layout::upload_state(&id))
                .await
            {
                Ok(Some(state)) => state.updated_at < cutoff,
                // No readable state: judge by the age of whatever is left.
                Ok(None) | Err(Error::Corrupt { .. }) => {
                    let newest = self
                        .store
                        .list(Some(&dir))
                        .map_ok(|m| m.last_modified.timestamp().max(0) as u64)
                        .try_fold(0, |a, b| async move { Ok(a.max(b)) })
                        .await?;
                    newest < cutoff
                }
                Err(e) => return Err(e),
            };
            if stale {
                self.remove_upload(&id).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}
