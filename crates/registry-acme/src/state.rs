//! Where the ACME state lives: the account, the certificate with its key, pending challenges
//! and the ordering lease, either in a directory of the instance (files 0600 in a 0700
//! directory, replaced atomically) or under a prefix of an object store that several nodes
//! share. The same keys in both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Where the state of one instance's certificates is kept.
#[derive(Clone)]
pub enum StateStore {
    /// A local directory, for one node (created 0700; files 0600).
    Directory(PathBuf),
    /// A prefix of an object store, shared by every node of the instance.
    Objects(Arc<dyn ObjectStore>, Path),
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateStore::Directory(d) => write!(f, "Directory({})", d.display()),
            StateStore::Objects(_, p) => write!(f, "Objects({p})"),
        }
    }
}

impl StateStore {
    /// Whether several nodes may share it (and must take turns ordering).
    pub fn is_shared(&self) -> bool {
        matches!(self, StateStore::Objects(..))
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            StateStore::Directory(d) => d.display().to_string(),
            StateStore::Objects(_, p) => format!("the storage's {p}/"),
        }
    }

    /// The object at `key`, `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        match self {
            StateStore::Directory(dir) => {
                let path = dir.join(key);
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::State(format!("cannot read {}: {e}", path.display()))),
                }
            }
            StateStore::Objects(store, prefix) => match store.get(&key_path(prefix, key)).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|e| Error::State(e.to_string())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::State(e.to_string())),
            },
        }
    }

    /// Writes `value` at `key`, replacing what was there in one step.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        match self {
            StateStore::Directory(dir) => {
                let (dir, key) = (dir.clone(), key.to_owned());
                tokio::task::spawn_blocking(move || write_private(&dir, &key, &value))
                    .await
                    .map_err(|e| Error::State(e.to_string()))?
            }
            StateStore::Objects(store, prefix) => store
                .put(&key_path(prefix, key), PutPayload::from(value))
                .await
                .map(|_| ())
                .map_err(|e| Error::State(e.to_string())),
        }
    }

    /// Removes `key`; absent is fine.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self {
            StateStore::Directory(dir) => match tokio::fs::remove_file(dir.join(key)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::State(e.to_string())),
            },
            StateStore::Objects(store, prefix) => {
                match store.delete(&key_path(prefix, key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(Error::State(e.to_string())),
                }
            }
        }
    }

    /// Takes the ordering lease for `ttl` unless another live owner holds it: writes it, waits
    /// `settle` for a rival's write to land, and reads it back (last writer wins; the store
    /// needs no conditional writes). Always granted on a directory.
    pub async fn take_lease(
        &self,
        owner: &str,
        ttl: Duration,
        settle: Duration,
    ) -> Result<bool, Error> {
        if !self.is_shared() {
            return Ok(true);
        }
        if let Some(held) = self.lease().await? {
            if held.owner != owner && held.expires > unix_now() {
                return Ok(false);
            }
        }
        let lease = Lease {
            owner: owner.to_owned(),
            expires: unix_now() + ttl.as_secs(),
        };
        self.put(LEASE, serde_json::to_vec(&lease).expect("serializable"))
            .await?;
        tokio::time::sleep(settle).await;
        Ok(self.lease().await?.is_some_and(|l| l.owner == owner))
    }

    /// Gives the lease back if `owner` still holds it.
    pub async fn release_lease(&self, owner: &str) -> Result<(), Error> {
        if self.is_shared() && self.lease().await?.is_some_and(|l| l.owner == owner) {
            self.delete(LEASE).await?;
        }
        Ok(())
    }

    async fn lease(&self) -> Result<Option<Lease>, Error> {
        Ok(self
            .get(LEASE)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }
}

/// `key`'s path under `prefix` (keys use `/` between parts).
fn key_path(prefix: &Path, key: &str) -> Path {
    key.split('/').fold(prefix.clone(), |p, part| p.join(part))
}

const LEASE: &str = "lease.json";

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    owner: String,
    expires: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `dir/key` with mode 0600 through a temporary file and a rename, so a reader sees
/// the old or the new content, never a part.
fn write_private(dir: &std::path::Path, key: &str, value: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let path = dir.join(key);
    let parent = path.parent().unwrap_or(dir).to_owned();
    let fail = |what: &str, e: std::io::Error| {
        Error::State(format!("cannot {what} {}: {e}", path.display()))
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&parent)
        .map_err(|e| fail("create the directory of", e))?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| Error::State(e.to_string()))?;
    let tmp = parent.join(format!(".{}.tmp", hex::encode(nonce)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(value)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn directory_files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::Directory(dir.path().join("acme"));
        assert_eq!(state.get("certificate.pem").await.unwrap(), None);
        state.put("certificate.pem", b"one".to_vec()).await.unwrap();
        state.put("certificate.pem", b"two".to_vec()).await.unwrap();
        assert_eq!(
            &state.get("certificate.pem").await.unwrap().unwrap()[..],
            b"two"
        );
        state
            .put("challenges/http-01/t", b"ka".to_vec())
            .await
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("acme/certificate.pem")), 0o600);
            assert_eq!(mode(&dir.path().join("acme")), 0o700);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        state.delete("challenges/http-01/t").await.unwrap();
        state.delete("challenges/http-01/t").await.unwrap();
        assert!(state
            .take_lease("me", Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn one_of_two_nodes_gets_the_shared_lease() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let state = StateStore::Objects(store, Path::from("acme"));
        let ttl = Duration::from_secs(60);
        assert!(state.take_lease("a", ttl, Duration::ZERO).await.unwrap());
        assert!(!state.take_lease("b", ttl, Duration::ZERO).await.unwrap());
        assert!(
            state.take_lease("a", ttl, Duration::ZERO).await.unwrap(),
            "renewable by its owner"
        );
        state.release_lease("b").await.unwrap();
        assert!(
            !state.take_lease("b", ttl, Duration::ZERO).await.unwrap(),
            "not released by another"
        );
        state.release_lease("a").await.unwrap();
        assert!(state.take_lease("b", ttl, Duration::ZERO).await.unwrap());
        // Both racing for a free lease: exactly one holds it afterwards.
        state.release_lease("b").await.unwrap();
        let settle = Duration::from_millis(50);
        let (x, y) = tokio::join!(
            state.take_lease("x", ttl, settle),
            state.take_lease("y", ttl, settle)
        );
        assert!(x.unwrap() ^ y.unwrap());
    }
}
