//! Upload sessions on S3: each session streams its chunks into one multipart upload at
//! `placed/<id>`, and finishing completes it and writes a pointer at the blob's key (see
//! `store::placed` for why the bytes are not moved). Every byte is written durably once,
//! hashed once as it arrives (the hash state is in the session document, so any node goes
//! on), and the finish costs a few requests whatever the blob's size.
//!
//! # Parts
//! S3 wants every part but the last to be at least `part_min` (5 MiB), allows 10 000 parts
//! and numbers them in order. A chunk is cut into parts of at least [`part_floor`] bytes (and
//! of `write_buffer`, so a big chunk does not become many small parts); what is left below the
//! floor at the end of a chunk is *held*: written as one of the session's ordinary chunk
//! objects (`uploads/<id>/part-…`) and sent at the front of the next part, by the next append
//! that brings the floor's worth, or as the last part by the finish. A chunk that does not
//! complete a part (held bytes plus chunk below the floor, seen by reading at most that much
//! ahead) is appended like any chunk without a multipart upload. So held bytes are written
//! twice, at most one part's worth per part.
//!
//! The floor is `part_min` for the first 2 000 parts, then doubles every 1 000 parts up to
//! [`PART_CAP`]: 10 000 parts hold at least 1 TiB with 5 MiB parts (a fixed 8 MiB part size
//! would stop at 78 GiB). A part is built in memory (object_store sends a part as one body):
//! memory per append is at most `write_concurrency + 1` parts.
//!
//! # The multipart upload
//! It is created with the first part, and its id saved in the session document at once, so
//! that cancelling or purging the session aborts it. Parts are numbered by their position, so
//! two appends racing for the same position write the same part number: within a process
//! appends to one session take turns for their whole length; across nodes the loser of the
//! race for the session document (see the parent module) may have overwritten the winner's
//! part, and then S3 refuses to complete the upload (the part's ETag is not the one the
//! session recorded), the finish fails and the client pushes again; nothing wrong is ever
//! published, because the finish also checks the completed object's size, and the digest is
//! checked against the hash of the bytes as they arrived. A racer across nodes may also leave
//! a multipart upload no session names: S3 keeps such uploads out of listings, so a bucket
//! lifecycle rule that aborts incomplete multipart uploads after a day is recommended.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, FuturesOrdered};
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::race::Seen;
use super::{delete_quiet, now, put_json_in, Part, UploadState};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::layout;
use crate::store::ObjectRegistry;

/// The most parts of one multipart upload.
const MAX_PARTS: usize = 10_000;
/// The largest floor of a part (see the module documentation).
const PART_CAP: u64 = 256 << 20;

/// The multipart upload of a session, in its document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Placed {
    /// Its id, once the first part is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    /// The parts committed, in order.
    #[serde(default)]
    pub parts: Vec<PlacedPart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PlacedPart {
    /// What S3 answered for the part (its ETag), given back when completing.
    pub id: String,
    pub size: u64,
}

impl Placed {
    fn size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// The least size of part number `n` (0-based) but the last.
pub(super) fn part_floor(part_min: u64, n: usize) -> u64 {
    let doublings = (n.saturating_sub(1_000) / 1_000).min(20) as u32;
    (part_min << doublings).min(PART_CAP.max(part_min))
}

impl ObjectRegistry {
    fn multipart_store(&self) -> Result<&Arc<dyn MultipartStore>> {
        self.multipart.as_ref().map(|m| &m.0).ok_or_else(|| {
            Error::Config("an upload session of an S3 node needs multipart uploads".into())
        })
    }

    /// A writer of parts to `key`, continuing `upload` from part `next` (or creating an
    /// upload when it needs one).
    pub(super) fn part_writer(
        &self,
        key: Path,
        upload: Option<String>,
        next: usize,
    ) -> Result<PartWriter> {
        Ok(PartWriter {
            mp: self.multipart_store()?.clone(),
            store: self.store.clone(),
            key,
            upload,
            next,
            part_min: self.options.part_min,
            write_buffer: self.options.write_buffer as u64,
            concurrency: self.options.write_concurrency.max(1),
            inflight: FuturesOrdered::new(),
            done: Vec::new(),
            pending: Vec::new(),
            pending_len: 0,
        })
    }

    /// Appends a chunk to a session with a multipart upload.
    pub(super) async fn append_placed(
        &self,
        id: &str,
        state: UploadState,
        start: Option<u64>,
        len: Option<u64>,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<UploadState> {
        if let Some(start) = start.filter(|&s| s != state.size) {
            return Err(Error::RangeInvalid {
                expected: state.size,
                got: start,
            });
        }
        let placed = state.placed.as_ref().expect("a placed session");
        let held: u64 = state.parts.iter().map(|p| p.size).sum();
        let floor = part_floor(self.options.part_min, placed.parts.len());
        // Read ahead what would complete a part with the held bytes: a smaller chunk is
        // held like them.
        let want = floor.saturating_sub(held).max(1);
        let (mut peeked, mut peeked_len, mut ended) = (Vec::new(), 0u64, false);
        while peeked_len < want {
            match body.next().await {
                Some(Ok(b)) => {
                    peeked_len += b.len() as u64;
                    peeked.push(b);
                }
                Some(Err(e)) => return Err(Error::Body(e)),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let peeked = futures::stream::iter(peeked.into_iter().map(Ok));
        if ended {
            return self
                .append_parts(id, state, start, len, peeked.boxed())
                .await;
        }
        self.append_to_multipart(id, state, len, peeked.chain(body).boxed())
            .await
    }

    /// Streams held bytes and `body` into parts of the session's multipart upload, holds what
    /// is left below the floor, and commits.
    async fn append_to_multipart(
        &self,
        id: &str,
        mut state: UploadState,
        len: Option<u64>,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<UploadState> {
        let mp = self.multipart_store()?.clone();
        let seen = Seen::of(&state);
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let local = self.appends.begin(id, &nonce);
        // The whole append: parts are numbered by position (see the module documentation).
        let turn = local.turn().await;
        if let Some(lost) = self.changed_since(id, &seen).await? {
            return Err(lost);
        }
        let mut hasher = (state.hasher.as_ref())
            .and_then(Hasher::restore)
            .ok_or_else(|| Error::Corrupt {
                path: layout::upload_state(id).to_string(),
                reason: "a session with a multipart upload has no hash state".into(),
            })?;
        let key = layout::placed(id);
        let mut placed = state.placed.clone().unwrap_or_default();
        let upload = match &placed.upload {
            Some(upload) => upload.clone(),
            None => {
                let upload = mp.create_multipart(&key).await?;
                placed.upload = Some(upload.clone());
                state.placed = Some(placed.clone());
                // At once, so that cancelling or purging the session aborts it.
                put_json_in(self.volatile(), &layout::upload_state(id), &state).await?;
                upload
            }
        };
        let held: Vec<Bytes> = self.read_parts(id, &state.parts).try_collect().await?;
        let mut source = futures::stream::iter(held.into_iter().map(|b| Ok((b, false))))
            .chain(body.by_ref().map_ok(|b| (b, true)));
        let mut parts = self.part_writer(key, Some(upload), placed.parts.len())?;
        let mut written = 0u64;
        let streamed: Result<()> = async {
            while let Some((chunk, new)) = source.try_next().await.map_err(Error::Body)? {
                if new {
                    hasher.update(&chunk);
                    written += chunk.len() as u64;
                }
                parts.put(chunk).await?;
            }
            parts.send_if_floor().await
        }
        .await;
        let done = parts.sent().await;
        streamed?;
        let done = done?;
        if let Some(declared) = len.filter(|&d| d != written) {
            return Err(Error::SizeInvalid {
                declared,
                received: written,
            });
        }
        let (pending, pending_len) = parts.pending();
        placed.parts.extend(done);
        // What is left below the floor is held, as a chunk of the session.
        let rest = (pending_len > 0).then(|| Part {
            offset: placed.size(),
            size: pending_len,
            nonce,
            scratch: false,
        });
        if let Some(rest) = &rest {
            let payload: PutPayload = pending.into_iter().collect();
            self.store.put(&rest.path(id), payload).await?;
        }
        if let Some(lost) = self.changed_since(id, &seen).await? {
            if let Some(rest) = &rest {
                delete_quiet(&self.store, &rest.path(id)).await?;
            }
            return Err(lost);
        }
        let consumed = std::mem::replace(&mut state.parts, rest.into_iter().collect());
        state.placed = Some(placed);
        state.size += written;
        state.hasher = Some(hasher.save());
        state.updated_at = now();
        put_json_in(self.volatile(), &layout::upload_state(id), &state).await?;
        drop(turn);
        for part in consumed {
            delete_quiet(&self.store, &part.path(id)).await?;
        }
        Ok(state)
    }

    /// Completes the session's multipart upload and points `target` at it. The digest is
    /// verified already.
    pub(super) async fn publish_placed(
        &self,
        id: &str,
        state: &UploadState,
        target: &Path,
    ) -> Result<()> {
        self.complete_placed(id, state).await?;
        self.point(target, id, state.size).await?;
        Ok(())
    }

    /// Completes the session's multipart upload, hashes what it holds, and points `target` at
    /// it if that is `digest`: for a digest of another algorithm than the session's hash.
    pub(super) async fn publish_placed_verified(
        &self,
        id: &str,
        state: &UploadState,
        digest: &Digest,
        target: &Path,
    ) -> Result<()> {
        let key = self.complete_placed(id, state).await?;
        let actual = self.hash_object(&key, digest.algorithm()).await?;
        if &actual != digest {
            delete_quiet(&self.store, &key).await?;
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if self.exists(target).await? {
            return delete_quiet(&self.store, &key).await;
        }
        self.point(target, id, state.size).await?;
        Ok(())
    }

    /// Completes the session's multipart upload, with the held bytes as its last part, and
    /// checks its size; returns its key.
    async fn complete_placed(&self, id: &str, state: &UploadState) -> Result<Path> {
        let mp = self.multipart_store()?;
        let placed = state.placed.as_ref().expect("a placed session");
        let upload = placed.upload.as_ref().expect("parts were sent");
        let key = layout::placed(id);
        let mut parts: Vec<PartId> = (placed.parts.iter())
            .map(|p| PartId {
                content_id: p.id.clone(),
            })
            .collect();
        if !state.parts.is_empty() {
            let held: Vec<Bytes> = self.read_parts(id, &state.parts).try_collect().await?;
            let payload: PutPayload = held.into_iter().collect();
            parts.push(mp.put_part(&key, upload, parts.len(), payload).await?);
        }
        let completed = mp.complete_multipart(&key, upload, parts).await;
        // A finish interrupted after completing (or racing this one) completed it already.
        let size = match self.store.head(&key).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(completed.err().map_or_else(
                    || Error::Corrupt {
                        path: key.to_string(),
                        reason: "a completed multipart upload is missing".into(),
                    },
                    Error::from,
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if size != state.size {
            delete_quiet(&self.store, &key).await?;
            return Err(Error::Corrupt {
                path: key.to_string(),
                reason: format!(
                    "the multipart upload holds {size} bytes, the session {}",
                    state.size
                ),
            });
        }
        Ok(key)
    }

    /// Aborts the session's multipart upload, if it has one that is not complete.
    pub(super) async fn abort_placed(&self, id: &str, state: &UploadState) {
        let Some(upload) = state.placed.as_ref().and_then(|p| p.upload.as_ref()) else {
            return;
        };
        let Ok(mp) = self.multipart_store() else {
            return;
        };
        match mp.abort_multipart(&layout::placed(id), upload).await {
            // (Completed uploads are unknown to S3 by their id.)
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(session = id, error = %e, "could not abort a multipart upload")
            }
        }
    }
}

/// A part in flight.
type Sending = futures::future::BoxFuture<'static, Result<PlacedPart>>;

/// Streams bytes into the parts of a multipart upload of `key`, cut as the module
/// documentation says, up to `write_concurrency` parts in flight. Without an upload to start
/// from it creates one only when the first part is cut: fewer bytes than that are written with
/// one PUT by [`PartWriter::complete`].
pub(super) struct PartWriter {
    mp: Arc<dyn MultipartStore>,
    store: Arc<dyn ObjectStore>,
    key: Path,
    upload: Option<String>,
    /// The number of the next part.
    next: usize,
    part_min: u64,
    write_buffer: u64,
    concurrency: usize,
    inflight: FuturesOrdered<Sending>,
    done: Vec<PlacedPart>,
    pending: Vec<Bytes>,
    pending_len: u64,
}

impl PartWriter {
    /// Adds bytes; sends a part when enough are pending.
    pub(super) async fn put(&mut self, chunk: Bytes) -> Result<()> {
        self.pending_len += chunk.len() as u64;
        self.pending.push(chunk);
        let cut = part_floor(self.part_min, self.next).max(self.write_buffer);
        if self.pending_len >= cut {
            self.send().await?;
        }
        Ok(())
    }

    /// Sends what is pending as a part if it is at least the floor of a part.
    pub(super) async fn send_if_floor(&mut self) -> Result<()> {
        if self.pending_len > 0 && self.pending_len >= part_floor(self.part_min, self.next) {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<()> {
        let n = self.next;
        if n >= MAX_PARTS {
            return Err(Error::Unsupported(
                "the upload is larger than S3 allows one object to be".into(),
            ));
        }
        let upload = match &self.upload {
            Some(upload) => upload.clone(),
            None => {
                let upload = self.mp.create_multipart(&self.key).await?;
                self.upload = Some(upload.clone());
                upload
            }
        };
        if self.inflight.len() >= self.concurrency {
            let part = self.inflight.next().await.expect("in flight")?;
            self.done.push(part);
        }
        let (mp, key) = (self.mp.clone(), self.key.clone());
        let (payload, size): (PutPayload, u64) = (
            std::mem::take(&mut self.pending).into_iter().collect(),
            std::mem::take(&mut self.pending_len),
        );
        self.inflight.push_back(Box::pin(async move {
            let part = mp.put_part(&key, &upload, n, payload).await?;
            Ok(PlacedPart {
                id: part.content_id,
                size,
            })
        }));
        self.next += 1;
        Ok(())
    }

    /// Waits for the parts in flight; returns every part sent, in order.
    pub(super) async fn sent(&mut self) -> Result<Vec<PlacedPart>> {
        while let Some(part) = self.inflight.next().await {
            self.done.push(part?);
        }
        Ok(std::mem::take(&mut self.done))
    }

    /// The bytes not sent yet, and their count.
    pub(super) fn pending(&mut self) -> (Vec<Bytes>, u64) {
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.pending_len),
        )
    }

    /// Makes the object exist at the key: the pending bytes as the last part, then the
    /// completion; or, if no part was cut, one PUT.
    pub(super) async fn complete(mut self) -> Result<()> {
        if self.upload.is_none() {
            let (pending, _) = self.pending();
            self.store
                .put(&self.key, pending.into_iter().collect())
                .await?;
            return Ok(());
        }
        if self.pending_len > 0 {
            self.send().await?;
        }
        let ids = (self.sent().await?.into_iter())
            .map(|p| PartId { content_id: p.id })
            .collect();
        let upload = self.upload.take().expect("created");
        self.mp.complete_multipart(&self.key, &upload, ids).await?;
        Ok(())
    }

    /// Gives up: the multipart upload, if one was created, is aborted.
    pub(super) async fn abort(mut self) {
        self.inflight.clear();
        if let Some(upload) = self.upload.take() {
            if let Err(e) = self.mp.abort_multipart(&self.key, &upload).await {
                tracing::warn!(key = %self.key, error = %e, "could not abort a multipart upload");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_that_ten_thousand_hold_a_terabyte() {
        let min = 5 << 20;
        assert_eq!(part_floor(min, 0), min);
        assert_eq!(part_floor(min, 1_999), min);
        assert_eq!(part_floor(min, 2_000), 2 * min);
        assert_eq!(part_floor(min, 3_000), 4 * min);
        assert_eq!(part_floor(min, 9_999), PART_CAP);
        let total: u64 = (0..MAX_PARTS).map(|n| part_floor(min, n)).sum();
        assert!(total >= 1 << 40, "{total}");
        // Tests use tiny parts; the cap never goes below them.
        assert_eq!(part_floor(512 << 20, 5_000), 512 << 20);
    }
}
