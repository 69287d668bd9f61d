//! The race of concurrent appends to one upload session (see "Concurrent appends to one
//! session" in the parent module): what an append saw of its session, the appends of this
//! process, and the check each append makes after writing its part and before committing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;

use super::{get_json_in, ObjectRegistry, Part, UploadState};
use crate::error::{Error, Result};
use crate::layout;

/// How often, and how long, an append that lost to a rival in another process waits for the
/// rival's commit to learn the session's new size.
const RIVAL_WAITS: u32 = 10;
const RIVAL_WAIT: Duration = Duration::from_millis(50);

/// What an append saw of its session when it loaded it: the size and the parts, by nonce.
pub(super) struct Seen {
    size: u64,
    nonces: Vec<String>,
}

impl Seen {
    pub(super) fn of(state: &UploadState) -> Seen {
        Seen {
            size: state.size,
            nonces: state.parts.iter().map(|p| p.nonce.clone()).collect(),
        }
    }

    /// The size the append saw.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    fn matches(&self, state: &UploadState) -> bool {
        self.size == state.size
            && self.nonces.len() == state.parts.len()
            && self
                .nonces
                .iter()
                .zip(&state.parts)
                .all(|(n, p)| *n == p.nonce)
    }
}

/// The appends in flight in this process, by session: their part nonces and a turn for
/// committing.
#[derive(Debug, Default)]
pub(crate) struct LocalAppends(std::sync::Mutex<HashMap<String, Arc<SessionAppends>>>);

#[derive(Debug, Default)]
struct SessionAppends {
    streaming: std::sync::Mutex<HashSet<String>>,
    commit: tokio::sync::Mutex<()>,
}

/// One append of this process, registered until dropped.
pub(super) struct LocalAppend<'a> {
    all: &'a LocalAppends,
    id: String,
    nonce: String,
    session: Arc<SessionAppends>,
}

impl LocalAppends {
    pub(super) fn begin(&self, id: &str, nonce: &str) -> LocalAppend<'_> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let session = all.entry(id.to_owned()).or_default().clone();
        session
            .streaming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nonce.to_owned());
        LocalAppend {
            all: self,
            id: id.to_owned(),
            nonce: nonce.to_owned(),
            session,
        }
    }
}

impl LocalAppend<'_> {
    /// This process's turn to commit to the session: commits of one session take turns.
    pub(super) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.session.commit.lock().await
    }

    /// Whether `nonce` belongs to another append of this process that is still streaming.
    fn is_local(&self, nonce: &str) -> bool {
        nonce != self.nonce
            && self
                .session
                .streaming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(nonce)
    }
}

impl Drop for LocalAppend<'_> {
    fn drop(&mut self) {
        let mut all = self.all.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut streaming = self
            .session
            .streaming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        streaming.remove(&self.nonce);
        if streaming.is_empty() {
            all.remove(&self.id);
        }
    }
}

impl ObjectRegistry {
    /// The refusal for an append that lost a race for the session's next chunk (see the module
    /// documentation), or `None` if `part` may be committed on `loaded`.
    pub(super) async fn competitor(
        &self,
        id: &str,
        loaded: &Seen,
        part: &Part,
        local: &LocalAppend<'_>,
    ) -> Result<Option<Error>> {
        let prefix = format!("part-{:020}-", part.offset);
        // Both read after this append's part was written (see the module documentation).
        let (listed, changed) = tokio::join!(
            self.store
                .list(Some(&layout::upload_dir(id)))
                .map_ok(|m| m.location)
                .try_collect::<Vec<Path>>(),
            self.changed_since(id, loaded)
        );
        let (listed, changed) = (listed?, changed?);
        let rival = listed.iter().filter_map(|p| p.filename()).any(|name| {
            name.strip_prefix(&prefix).is_some_and(|nonce| {
                nonce != part.nonce
                    && !loaded.nonces.iter().any(|n| n == nonce)
                    && !local.is_local(nonce)
            })
        });
        if changed.is_some() || !rival {
            return Ok(changed);
        }
        // The rival is likely committing right now: give it a moment, so that the answer
        // tells the client the size it can resume from.
        for _ in 0..RIVAL_WAITS {
            tokio::time::sleep(RIVAL_WAIT).await;
            if let Some(changed) = self.changed_since(id, loaded).await? {
                return Ok(Some(changed));
            }
        }
        Ok(Some(Error::ConcurrentAppend { size: loaded.size }))
    }

    /// `Some(ConcurrentAppend)` with the session's current size if its document changed since
    /// `loaded` was read (another append committed), `UploadUnknown` if it is gone.
    pub(super) async fn changed_since(&self, id: &str, loaded: &Seen) -> Result<Option<Error>> {
        let now = match get_json_in::<UploadState>(self.volatile(), &layout::upload_state(id)).await
        {
            Ok(Some(now)) => now,
            Ok(None) => return Ok(Some(Error::UploadUnknown)),
            Err(e) => return Err(e),
        };
        Ok((!loaded.matches(&now)).then_some(Error::ConcurrentAppend { size: now.size }))
    }
}
