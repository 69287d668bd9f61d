//! Upload sessions on a local filesystem: one staging file per session, `uploads/<id>/data`,
//! that every chunk is appended to in place and hashed as it arrives (the hash state is saved
//! in the session document). Finishing checks the saved hash, syncs the file once and renames
//! it to the blob's key: every byte is written once (and synced once, by the append that
//! brought it), and the finish costs the same for a kilobyte and for 10 GiB.
//!
//! Appends to one session take turns: in this process by the session's turn, across processes
//! by an advisory lock on the staging file. An append that cannot have its turn within half a
//! second is refused with `ConcurrentAppend` and the session's size then. A failed append
//! (client gone, wrong length) is cut off again, so the file always ends where the session
//! document says; bytes past that are the remains of an append that never committed and are
//! cut off by the next one. Session documents are not synced (as before): a machine crash may
//! lose a session. Each append syncs the file before the document records it, so a document
//! never claims bytes a crash took; a session whose file is shorter than its document says
//! anyway is refused as unknown, never published. Sessions written by the chunked scheme (the parent module) keep
//! that scheme until they end.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::race::Seen;
use super::{delete_quiet, now, UploadState};
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::layout;
use crate::storage::ByteStream;
use crate::store::{put_json_in, ObjectRegistry};

/// How long an append waits for another append of the same session to end.
const TURN_WAIT: Duration = Duration::from_millis(500);

/// The staging file of a session, as a storage key.
pub(super) fn data_key(id: &str) -> Path {
    layout::upload_dir(id).join("data")
}

/// Bytes gathered before each write to the staging file.
const WRITE_BATCH: usize = 1 << 20;

impl ObjectRegistry {
    /// The staging file of a session on disk.
    fn data_file(&self, id: &str) -> Option<PathBuf> {
        let root = self.staging.as_ref()?;
        Some(root.join("uploads").join(id).join("data"))
    }

    /// Opens the staging file with its advisory lock, waiting [`TURN_WAIT`] at most.
    async fn lock_data(&self, id: &str) -> Result<Option<File>> {
        let path = self.data_file(id).ok_or(Error::UploadUnknown)?;
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        loop {
            let path = path.clone();
            let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<Option<File>> {
                std::fs::create_dir_all(path.parent().expect("in a directory"))?;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(file)),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => Err(e),
                }
            })
            .await
            .map_err(|e| io_error(std::io::Error::other(e)))?
            .map_err(io_error)?;
            if attempt.is_some() || tokio::time::Instant::now() >= deadline {
                return Ok(attempt);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Appends one chunk to a staged session and saves the new state.
    pub(super) async fn append_staged(
        &self,
        id: &str,
        state: UploadState,
        start: Option<u64>,
        len: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadState> {
        if let Some(start) = start.filter(|&s| s != state.size) {
            return Err(Error::RangeInvalid {
                expected: state.size,
                got: start,
            });
        }
        let seen = Seen::of(&state);
        let local = self.appends.begin(id, "staged");
        let Ok(turn) = tokio::time::timeout(TURN_WAIT, local.turn()).await else {
            return Err(self.lost_turn(id, &seen).await);
        };
        let Some(file) = self.lock_data(id).await? else {
            return Err(self.lost_turn(id, &seen).await);
        };
        // Another append may have committed while this one waited for its turn.
        if let Some(changed) = self.changed_since(id, &seen).await? {
            return Err(changed);
        }
        let mut state = state;
        let mut hasher = state
            .hasher
            .as_ref()
            .and_then(Hasher::restore)
            .ok_or(Error::UploadUnknown)?;
        let committed = state.size;
        let file = self.cut(id, file, committed).await?;
        let mut file = tokio::fs::File::from_std(file);
        let written = append_body(&mut file, &mut hasher, body).await;
        let written = match written {
            Ok(n) => match len.filter(|&d| d != n) {
                Some(declared) => Err(Error::SizeInvalid {
                    declared,
                    received: n,
                }),
                None => Ok(n),
            },
            Err(e) => Err(e),
        };
        let file = file.into_std().await;
        // Durable before the session says so: a session document that survives a crash never
        // claims bytes the file lost.
        let written = match written {
            Ok(n) => sync(&file).await.map(|()| n),
            Err(e) => Err(e),
        };
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                self.cut(id, file, committed).await?;
                return Err(e);
            }
        };
        if written > 0 {
            state.size += written;
            state.hasher = Some(hasher.save());
            state.updated_at = now();
            if let Err(e) = put_json_in(self.volatile(), &layout::upload_state(id), &state).await {
                self.cut(id, file, committed).await?;
                return Err(e);
            }
        }
        drop(file);
        drop(turn);
        Ok(state)
    }

    /// The refusal for an append that did not get its turn: the session's size now (what it
    /// saw, if the rival has not committed yet).
    async fn lost_turn(&self, id: &str, seen: &Seen) -> Error {
        match self.changed_since(id, seen).await {
            Ok(Some(changed)) => changed,
            Ok(None) => Error::ConcurrentAppend { size: seen.size() },
            Err(e) => e,
        }
    }

    /// Makes the locked staging file end at `size` (cutting off what no commit covers); a file
    /// shorter than that lost data in a crash, and the session is removed.
    async fn cut(&self, id: &str, file: File, size: u64) -> Result<File> {
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<(File, bool)> {
            let len = file.metadata()?.len();
            if len < size {
                return Ok((file, false));
            }
            if len > size {
                file.set_len(size)?;
            }
            Ok((file, true))
        })
        .await
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .map_err(io_error)?;
        match result {
            (file, true) => Ok(file),
            (_, false) => {
                tracing::warn!(
                    upload = id,
                    "upload session lost data in a crash; removing it"
                );
                delete_quiet(self.volatile(), &layout::upload_state(id)).await?;
                delete_quiet(&self.store, &data_key(id)).await?;
                Err(Error::UploadUnknown)
            }
        }
    }

    /// Makes a staged session's bytes the blob at `target`: cuts off what no commit covers,
    /// syncs, and renames the staging file. The saved hash was checked before.
    pub(super) async fn publish_staged(
        &self,
        id: &str,
        state: &UploadState,
        target: &Path,
    ) -> Result<()> {
        let seen = Seen::of(state);
        let local = self.appends.begin(id, "staged");
        let Ok(turn) = tokio::time::timeout(TURN_WAIT, local.turn()).await else {
            return Err(self.lost_turn(id, &seen).await);
        };
        let Some(file) = self.lock_data(id).await? else {
            return Err(self.lost_turn(id, &seen).await);
        };
        let file = self.cut(id, file, state.size).await?;
        sync(&file).await?;
        self.store.rename(&data_key(id), target).await?;
        drop(turn);
        Ok(())
    }
}

/// Syncs `file`'s data to the disk.
async fn sync(file: &File) -> Result<()> {
    let file = file.try_clone().map_err(io_error)?;
    tokio::task::spawn_blocking(move || file.sync_data())
        .await
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .map_err(io_error)
}

/// Writes `body` at the end of `file`, hashing it; returns the byte count.
async fn append_body(
    file: &mut tokio::fs::File,
    hasher: &mut Hasher,
    mut body: ByteStream,
) -> Result<u64> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    file.seek(std::io::SeekFrom::End(0))
        .await
        .map_err(io_error)?;
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Error::Body)?;
        hasher.update(&chunk);
        written += chunk.len() as u64;
        if batch.len() + chunk.len() > WRITE_BATCH && !batch.is_empty() {
            file.write_all(&batch).await.map_err(io_error)?;
            batch.clear();
        }
        if chunk.len() >= WRITE_BATCH {
            file.write_all(&chunk).await.map_err(io_error)?;
        } else {
            batch.extend_from_slice(&chunk);
        }
    }
    file.write_all(&batch).await.map_err(io_error)?;
    file.flush().await.map_err(io_error)?;
    Ok(written)
}

fn io_error(e: std::io::Error) -> Error {
    Error::Storage(object_store::Error::Generic {
        store: "staging file",
        source: Box::new(e),
    })
}
