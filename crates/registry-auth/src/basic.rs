//! HTTP Basic authentication against an htpasswd file: the file is reloaded when it changes,
//! expensive hashes are verified on the blocking pool, unknown users cost as much as known ones,
//! and a success is remembered briefly under a keyed hash of user and password (never the
//! password itself), so a pull of many layers pays for one verification.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest as _, Sha256};

use crate::htpasswd::Htpasswd;
use crate::watch::Watched;
use crate::Error;

/// The most remembered successes; beyond it the oldest half is forgotten.
const CACHE_LIMIT: usize = 4096;

/// Verifies user names and passwords against an htpasswd file.
pub struct BasicAuth {
    file: Watched<Htpasswd>,
    realm: String,
    ttl: Duration,
    /// Random per process: the cache keys are useless to anyone reading memory elsewhere.
    key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], (Instant, u64)>>,
}

impl BasicAuth {
    /// Opens an htpasswd file; lines that cannot be parsed are logged (by number) and skipped.
    /// Successful verifications are remembered for `ttl` (zero: never).
    pub fn open(path: &Path, realm: &str, ttl: Duration) -> Result<BasicAuth, Error> {
        let owned: PathBuf = path.to_owned();
        let file = Watched::new("htpasswd", vec![owned.clone()], RELOAD_CHECK, move || {
            load(&owned)
        })?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(BasicAuth {
            file,
            realm: realm.to_owned(),
            ttl,
            key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The realm named in `WWW-Authenticate`.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How many users the file currently has.
    pub fn users(&self) -> usize {
        self.file.get().len()
    }

    /// Whether the file has `user` (for refresh tokens, which outlive passwords but not users).
    pub fn has_user(&self, user: &str) -> bool {
        self.file.get().get(user).is_some()
    }

    /// Whether `user` with `password` was verified within the cache lifetime (and the file has
    /// not changed since).
    pub fn cached(&self, user: &str, password: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let _ = self.file.get(); // notice a changed file first
        let generation = self.file.generation();
        let key = self.cache_key(user, password);
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&key)
            .is_some_and(|(at, g)| *g == generation && at.elapsed() < self.ttl)
    }

    /// Whether `user` with `password` is in the file (from the cache when possible).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.cached(user, password) || self.verify_uncached(user, password).await
    }

    /// Verifies against the file itself (whatever the cache says) and remembers a success.
    pub async fn verify_uncached(&self, user: &str, password: &str) -> bool {
        let file = self.file.get();
        let generation = self.file.generation();
        let key = self.cache_key(user, password);
        let (hash, known) = match file.get(user) {
            Some(h) => (h.clone(), true),
            None => match file.decoy() {
                Some(h) => (h.clone(), false),
                None => return false,
            },
        };
        let password = password.as_bytes().to_vec();
        let matched = if hash.is_expensive() {
            tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .unwrap_or(false)
        } else {
            hash.verify(&password)
        };
        let ok = matched && known;
        if ok && self.ttl > Duration::ZERO {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_LIMIT {
                let ttl = self.ttl;
                cache.retain(|_, (at, g)| *g == generation && at.elapsed() < ttl);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), generation));
        }
        ok
    }

    /// A keyed hash of user and password: what the cache and concurrent logins are keyed by.
    pub(crate) fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

/// How often the file's metadata is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn load(path: &Path) -> Result<Htpasswd, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        what: "htpasswd file",
        path: path.to_owned(),
        source,
    })?;
    let (file, errors) = Htpasswd::parse(&text);
    for e in &errors {
        tracing::warn!(file = %path.display(), line = e.line, "htpasswd line skipped: {}", e.reason);
    }
    Ok(file)
}

/// Decodes an `Authorization: Basic …` value into user and password.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic("Basic YW5uOnM6M2NyZXQ="),
            Some(("ann".into(), "s:3cret".into()))
        );
        assert_eq!(
            parse_basic("basic  YW5uOnM6M2NyZXQ= "),
            Some(("ann".into(), "s:3cret".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic YW5u"), None); // no colon
    }

    #[tokio::test]
    async fn verifies_caches_and_forgets_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("ann:{hash}\n")).unwrap();
        let auth = BasicAuth::open(&path, "r", Duration::from_secs(60)).unwrap();
        assert!(auth.verify("ann", "pw").await);
        assert!(auth.verify("ann", "pw").await); // from the cache
        assert!(!auth.verify("ann", "px").await);
        assert!(!auth.verify("bob", "pw").await); // unknown: decoy verified, still false
        assert_eq!(auth.cache.lock().unwrap().len(), 1);
        // The password changes: the cached success no longer counts.
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        let hash = bcrypt::hash("new", 4).unwrap();
        std::fs::write(&path, format!("ann:{hash}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!auth.verify("ann", "pw").await);
        assert!(auth.verify("ann", "new").await);
    }
}
