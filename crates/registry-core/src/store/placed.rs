//! Blob bytes that stay where an upload session put them: a blob's key may hold a *pointer*
//! to them instead of the bytes, and every reader of blob keys follows it.
//!
//! # Why an indirection
//! On S3 an upload session streams its chunks into one multipart upload (see
//! `uploads::multipart`). That upload must be started before the blob's digest is known, so
//! it cannot target the blob's content-addressed key; completing it puts the bytes at
//! `placed/<session id>`. Moving them to `blobs/…/data` would be a copy: S3 has no rename,
//! a copy of more than 5 GiB takes a multipart copy, and on AWS any copy takes time in
//! proportion to the size while the client waits for its final PUT. Instead the finish writes
//! a pointer of [`POINTER_LEN`] bytes at the blob's key, naming the placed object and the
//! blob's size: finishing costs the same for 10 MiB and 10 TiB.
//!
//! # Telling a pointer from bytes
//! A pointer is exactly [`POINTER_LEN`] bytes of JSON (`{"placed": key, "size": n}`, padded
//! with spaces) whose `size` is not [`POINTER_LEN`]: bytes whose own length is `size` cannot
//! be a pointer, so a blob of any content is never mistaken for one. Readers that know the
//! blob's size (from its repository link) look no further when the stored object has that
//! size; others read objects of exactly [`POINTER_LEN`] bytes to tell. Only blobs of at least
//! `part_min` bytes (5 MiB on S3) are ever placed.
//!
//! # Consistency
//! The placed object exists, complete, before the pointer is written; a collection deletes a
//! pointer before the placed object it names. Two sessions finishing the same digest at once
//! each write a pointer and read it back; the one whose pointer was overwritten deletes its own
//! placed object. What a crash leaves behind (placed bytes no pointer names, or a pointer
//! overwritten between the writes) is removed by the next collection: a placed object whose
//! session is gone, older than the grace period, and named by no pointer.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::ObjectRegistry;
use crate::error::Result;
use crate::layout;

/// The length of every pointer.
pub(super) const POINTER_LEN: u64 = 128;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Pointer {
    /// The key of the bytes.
    pub placed: String,
    /// The blob's size.
    pub size: u64,
}

impl Pointer {
    pub(super) fn new(id: &str, size: u64) -> Pointer {
        Pointer {
            placed: layout::placed(id).to_string(),
            size,
        }
    }

    /// The pointer's stored form: [`POINTER_LEN`] bytes.
    pub(super) fn encode(&self) -> Bytes {
        let mut text = serde_json::to_vec(self).expect("plain data serializes");
        assert!(text.len() <= POINTER_LEN as usize, "placed keys are short");
        text.resize(POINTER_LEN as usize, b' ');
        Bytes::from(text)
    }

    /// The pointer `raw` holds, or `None` when `raw` is a blob's bytes.
    pub(super) fn decode(raw: &[u8]) -> Option<Pointer> {
        if raw.len() as u64 != POINTER_LEN {
            return None;
        }
        let pointer: Pointer = serde_json::from_slice(raw).ok()?;
        let ours = pointer.placed.starts_with(layout::placed_root().as_ref())
            && pointer.size != POINTER_LEN;
        ours.then_some(pointer)
    }

    pub(super) fn path(&self) -> Path {
        Path::from(self.placed.as_str())
    }
}

impl ObjectRegistry {
    /// The pointer stored at `key`, if `key` holds one (`meta` is its listing entry).
    pub(super) async fn pointer_at(&self, meta: &ObjectMeta) -> Result<Option<Pointer>> {
        if meta.size != POINTER_LEN {
            return Ok(None);
        }
        self.pointer_if_any(&meta.location).await
    }

    /// The pointer at `key`; `None` when it holds none or nothing.
    async fn pointer_if_any(&self, key: &Path) -> Result<Option<Pointer>> {
        match self.pointer_of(key).await {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            other => Ok(other?),
        }
    }

    /// Reads the bytes of the blob at `key`, whose size is `size`, following a pointer.
    /// `NotFound` when there are none.
    pub(super) async fn get_blob_bytes(
        &self,
        key: &Path,
        size: u64,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let ranged = options.range.is_some();
        let first = self.store.get_opts(key, options.clone()).await;
        let pointed = match first {
            Ok(r) if r.meta.size == size || r.meta.size != POINTER_LEN => return Ok(r),
            Ok(r) if !ranged => Pointer::decode(&r.bytes().await?),
            Ok(_) => self.pointer_of(key).await?,
            // A range past a pointer's end is refused (416): look at what is stored.
            Err(e) if ranged && size != POINTER_LEN && !is_not_found(&e) => {
                match self.pointer_of(key).await? {
                    Some(p) => Some(p),
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        match pointed {
            Some(p) if p.size == size => self.store.get_opts(&p.path(), options).await,
            _ => Err(object_store::Error::Generic {
                store: "registry",
                source: format!("{key}: stored object is neither the blob nor a pointer").into(),
            }),
        }
    }

    /// The key a reader of blob `key` (of `size` bytes) should fetch: a pointer's target, or
    /// the key itself.
    pub(super) async fn blob_bytes_key(&self, key: Path, size: u64) -> Result<Path> {
        if size == POINTER_LEN {
            return Ok(key);
        }
        match self.store.head(&key).await {
            Ok(meta) if meta.size == POINTER_LEN => {
                Ok(self.pointer_of(&key).await?.map_or(key, |p| p.path()))
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(key),
            Err(e) => Err(e.into()),
        }
    }

    async fn pointer_of(&self, key: &Path) -> object_store::Result<Option<Pointer>> {
        let raw = self.store.get(key).await?.bytes().await?;
        Ok(Pointer::decode(&raw))
    }

    /// Writes the pointer to the placed bytes of session `id` at `key`, then reads it back:
    /// `false` when another session's pointer replaced it (this session's bytes are then
    /// deleted; see the module documentation).
    pub(super) async fn point(&self, key: &Path, id: &str, size: u64) -> Result<bool> {
        let pointer = Pointer::new(id, size);
        self.store
            .put(key, PutPayload::from(pointer.encode()))
            .await?;
        if self.pointer_if_any(key).await?.as_ref() == Some(&pointer) {
            return Ok(true);
        }
        self.delete_quiet(&pointer.path()).await?;
        Ok(false)
    }

    /// Deletes a blob's stored object (`meta`, from a listing): a pointer first, then the
    /// bytes it names. Returns the blob's size.
    /// The size of the blob stored at `meta` (its bytes, or the bytes its pointer names).
    pub(super) async fn blob_size_at(&self, meta: &ObjectMeta) -> Result<u64> {
        Ok(self.pointer_at(meta).await?.map_or(meta.size, |p| p.size))
    }

    pub(super) async fn delete_blob_object(&self, meta: &ObjectMeta) -> Result<u64> {
        let pointer = self.pointer_at(meta).await?;
        self.delete_quiet(&meta.location).await?;
        match pointer {
            Some(p) => {
                self.delete_quiet(&p.path()).await?;
                Ok(p.size)
            }
            None => Ok(meta.size),
        }
    }

    /// Placed bytes that no pointer names and no live session may still point to, written
    /// before `cutoff` (unix microseconds): what a crash between completing a multipart
    /// upload and writing its pointer left. Listed in this order: placed objects, then their
    /// sessions, then pointers, so a finish that writes its pointer and ends its session
    /// meanwhile is seen by one of the two later looks.
    pub(super) async fn orphaned_placed(
        &self,
        young: impl Fn(&ObjectMeta) -> bool,
    ) -> Result<Vec<ObjectMeta>> {
        let mut orphans = Vec::new();
        for meta in self.list_all(&layout::placed_root()).await? {
            let Some(id) = meta.location.filename() else {
                continue;
            };
            let session = match self.volatile().head(&layout::upload_state(id)).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            if young(&meta) || session {
                continue;
            }
            orphans.push(meta);
        }
        if orphans.is_empty() {
            return Ok(orphans);
        }
        let mut named = std::collections::HashSet::new();
        let mut blobs = self.store.list(Some(&layout::blobs_root()));
        while let Some(meta) = blobs.try_next().await? {
            if let Some(p) = self.pointer_at(&meta).await? {
                named.insert(p.placed);
            }
        }
        orphans.retain(|m| !named.contains(m.location.as_ref()));
        Ok(orphans)
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_bytes_are_never_pointers() {
        let p = Pointer::new("0b0b3c52-6a7e-4bd4-8d0f-8f4dbb0e3a11", 6 << 20);
        let raw = p.encode();
        assert_eq!(raw.len() as u64, POINTER_LEN);
        assert_eq!(Pointer::decode(&raw), Some(p));
        // Bytes that claim to be a pointer to themselves are bytes.
        let own = Pointer {
            placed: "placed/x".into(),
            size: POINTER_LEN,
        };
        assert_eq!(Pointer::decode(&own.encode()), None);
        // Anything else of that length, or any other length, is bytes.
        assert_eq!(Pointer::decode(&[b' '; POINTER_LEN as usize]), None);
        assert_eq!(Pointer::decode(&raw[..100]), None);
        let elsewhere = Pointer {
            placed: "blobs/sha256/aa/x/data".into(),
            size: 1 << 30,
        };
        assert_eq!(Pointer::decode(&elsewhere.encode()), None);
    }
}
