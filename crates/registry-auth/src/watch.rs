//! Values loaded from files and reloaded when the files change (htpasswd, certificates): a
//! reader gets the current value; at most once per interval the files' metadata is compared and,
//! when it changed, the value is loaded again. A failed reload keeps the previous value.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::Error;

/// What identifies a version of a file without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                #[cfg(unix)]
                inode: std::os::unix::fs::MetadataExt::ino(&m),
            })
        })
        .collect()
}

type Loader<T> = Box<dyn Fn() -> Result<T, Error> + Send + Sync>;

/// A value built from files, rebuilt when they change.
pub struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    every: Duration,
    current: RwLock<Arc<T>>,
    checked: Mutex<(Instant, Vec<Option<Stamp>>)>,
    generation: AtomicU64,
}

impl<T> Watched<T> {
    /// Loads the value now (an error here is the caller's to report) and watches `paths`,
    /// looking at them at most once every `every`.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        load: impl Fn() -> Result<T, Error> + Send + Sync + 'static,
    ) -> Result<Watched<T>, Error> {
        let seen = stamps(&paths);
        let value = load()?;
        Ok(Watched {
            what,
            paths,
            load: Box::new(load),
            every,
            current: RwLock::new(Arc::new(value)),
            checked: Mutex::new((Instant::now(), seen)),
            generation: AtomicU64::new(0),
        })
    }

    /// The current value, reloaded first if the files changed.
    pub fn get(&self) -> Arc<T> {
        self.refresh();
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts reloads; changes whenever the value does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn refresh(&self) {
        let now = Instant::now();
        let Ok(mut checked) = self.checked.try_lock() else {
            return; // another reader is looking right now
        };
        if now.duration_since(checked.0) < self.every {
            return;
        }
        checked.0 = now;
        let seen = stamps(&self.paths);
        if seen == checked.1 {
            return;
        }
        match (self.load)() {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                self.generation.fetch_add(1, Ordering::AcqRel);
                checked.1 = seen;
                tracing::info!(what = self.what, "reloaded after a change");
            }
            // Kept for the next look: a file being replaced may be briefly incomplete.
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "reload failed; keeping the previous version")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let w = Watched::new("test", vec![path.clone()], Duration::ZERO, move || {
            let t = std::fs::read_to_string(&p).map_err(|source| Error::Read {
                what: "test file",
                path: p.clone(),
                source,
            })?;
            t.trim()
                .parse::<u32>()
                .map_err(|_| Error::setting(&t, "a number"))
        })
        .unwrap();
        assert_eq!(*w.get(), 1);
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*w.get(), 22);
        assert_eq!(w.generation(), 1);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(*w.get(), 22);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*w.get(), 22);
        std::fs::write(&path, "3").unwrap();
        assert_eq!(*w.get(), 3);
    }
}
