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
//!
//! # Marks
//! So that a collection need not read every pointer to learn which placed objects are named,
//! a finish whose pointer held writes an empty mark `placed/<id>.<alg>-<hex>` beside the bytes,
//! naming the digest; a collection deletes the mark first, then the pointer, then the bytes.
//! A mark is a hint that lets the collection skip work, never a reason to delete: bytes are
//! deleted only when a pointer read shows another session's bytes (several marks for one
//! digest), when the marked key holds no pointer, or, for unmarked bytes, when no pointer
//! names them. Unmarked bytes a pointer names (a finish that stopped between pointer and
//! mark, or bytes placed before marks existed) get their mark from the collection that reads
//! the pointers.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use std::collections::{HashMap, HashSet};

use super::fsck::blob_digest;
use super::ObjectRegistry;
use crate::digest::Digest;
use crate::error::Result;
use crate::layout::{self, Placed};

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
            if let Some(digest) = super::fsck::blob_digest(key) {
                (self.store)
                    .put(&layout::placed_mark(id, &digest), PutPayload::new())
                    .await?;
            }
            return Ok(true);
        }
        self.delete_quiet(&pointer.path()).await?;
        Ok(false)
    }

    /// The size of the blob stored at `meta` (its bytes, or the bytes its pointer names).
    pub(super) async fn blob_size_at(&self, meta: &ObjectMeta) -> Result<u64> {
        Ok(self.pointer_at(meta).await?.map_or(meta.size, |p| p.size))
    }

    /// Deletes a blob's stored object (`meta`, from a listing): a pointer's mark first, then
    /// the pointer, then the bytes it names. Returns the blob's size.
    pub(super) async fn delete_blob_object(&self, meta: &ObjectMeta) -> Result<u64> {
        let pointer = self.pointer_at(meta).await?;
        let mark = (pointer.as_ref()).and_then(|p| {
            Some((
                p.path().filename()?.to_owned(),
                blob_digest(&meta.location)?,
            ))
        });
        if let Some((id, digest)) = mark {
            self.delete_quiet(&layout::placed_mark(&id, &digest))
                .await?;
        }
        self.delete_quiet(&meta.location).await?;
        match pointer {
            Some(p) => {
                self.delete_quiet(&p.path()).await?;
                Ok(p.size)
            }
            None => Ok(meta.size),
        }
    }

    /// What a collection removes under `placed/`: bytes no pointer names and no live session
    /// may still point to, written before the grace period (`young` tells), with their marks;
    /// and marks whose bytes are gone. Marks missing for bytes a pointer names are written.
    ///
    /// Costs listings, not a request per placed blob: one of `placed/` (bytes and marks), one
    /// of the sessions, one of `blobs/`. Bytes whose only mark names a digest whose key holds
    /// a pointer-sized object are named by it. The pointers themselves are read only for a
    /// digest marked by several sessions (they finished it at once, and one pointer won), or
    /// whose key no longer holds a pointer; and every pointer once when unmarked bytes are
    /// old and sessionless (a crash between completing and marking, or bytes placed before
    /// marks existed, which then get their marks). Listed in this order, placed objects, then
    /// sessions, then pointers, so a finish that points, marks and ends its session meanwhile
    /// is seen by one of the two later looks.
    pub(super) async fn orphaned_placed(
        &self,
        young: impl Fn(&ObjectMeta) -> bool,
    ) -> Result<Orphans> {
        let mut bytes = Vec::new();
        let mut marks: HashMap<String, Vec<(Digest, ObjectMeta)>> = HashMap::new();
        for meta in self.list_all(&layout::placed_root()).await? {
            match layout::parse_placed(&meta.location) {
                Some(Placed::Bytes(id)) => bytes.push((id.to_owned(), meta)),
                Some(Placed::Mark(id, d)) => {
                    marks.entry(id.to_owned()).or_default().push((d, meta))
                }
                None => {}
            }
        }
        let mut orphans = Orphans::default();
        // Marks of bytes a collection or a repair removed.
        let placed: HashSet<&str> = bytes.iter().map(|(id, _)| id.as_str()).collect();
        for (_, meta) in marks
            .iter()
            .filter(|(id, _)| !placed.contains(id.as_str()))
            .flat_map(|(_, m)| m)
        {
            if !young(meta) {
                orphans.marks.push(meta.location.clone());
            }
        }
        let sessions = self.session_ids().await?;
        bytes.retain(|(id, meta)| !young(meta) && !sessions.contains(id));
        if bytes.is_empty() {
            return Ok(orphans);
        }
        let pointers: HashSet<Path> = (self.store.list(Some(&layout::blobs_root())))
            .try_filter_map(|m| async move { Ok((m.size == POINTER_LEN).then_some(m.location)) })
            .try_collect()
            .await?;
        let mut marked: HashMap<&Digest, usize> = HashMap::new();
        for (d, _) in marks.values().flatten() {
            *marked.entry(d).or_default() += 1;
        }
        let mut read: HashMap<&Digest, Option<String>> = HashMap::new();
        let mut unmarked = Vec::new();
        for (id, meta) in bytes {
            let Some(its) = marks.get(&id) else {
                unmarked.push((id, meta));
                continue;
            };
            let mut named = false;
            for (d, _) in its {
                let key = layout::blob(d);
                if marked[d] == 1 && pointers.contains(&key) {
                    named = true;
                    break;
                }
                let names = match read.get(d) {
                    Some(names) => names.clone(),
                    None => {
                        let names = self.pointer_if_any(&key).await?.map(|p| p.placed);
                        read.insert(d, names.clone());
                        names
                    }
                };
                if names.as_deref() == Some(meta.location.as_ref()) {
                    named = true;
                    break;
                }
            }
            if !named {
                orphans
                    .marks
                    .extend(its.iter().map(|(_, m)| m.location.clone()));
                orphans.bytes.push(meta);
            }
        }
        if unmarked.is_empty() {
            return Ok(orphans);
        }
        let mut named = HashMap::new();
        for key in &pointers {
            if let (Some(p), Some(d)) = (self.pointer_if_any(key).await?, blob_digest(key)) {
                named.insert(p.placed, d);
            }
        }
        for (id, meta) in unmarked {
            match named.get(meta.location.as_ref()) {
                Some(d) => {
                    (self.store)
                        .put(&layout::placed_mark(&id, d), PutPayload::new())
                        .await?;
                }
                None => orphans.bytes.push(meta),
            }
        }
        Ok(orphans)
    }
}

/// What a collection removes under `placed/` (see [`ObjectRegistry::orphaned_placed`]).
#[derive(Debug, Default)]
pub(super) struct Orphans {
    /// Placed bytes no pointer names.
    pub bytes: Vec<ObjectMeta>,
    /// Marks of those bytes, and of bytes already gone.
    pub marks: Vec<Path>,
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
