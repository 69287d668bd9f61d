//! Durable writes of small objects (manifest revisions, tags, blob links, referrer entries) on
//! a local filesystem, with one directory fsync shared by the writers that renamed into the
//! directory meanwhile.
//!
//! A write is what the filesystem store does with fsync on: the bytes go to a staging file
//! beside the target (`<name>#<n>`, a name the store's listings skip), which is fsynced and
//! renamed over the target; then the directory is fsynced so the rename survives a crash, and
//! the write returns only after that. The directory fsync is the part shared: a writer whose
//! rename is done waits for the directory's fsync lock; whoever holds it notes how many
//! renames were done *before* it starts its fsync, so the writers it covers find their rename
//! counted when they get the lock and return without an fsync of their own (group commit).
//! Eight manifest pushes to one repository at a time made eight directory fsyncs per tag
//! directory; now they make one or two.
//!
//! A file can also be staged (written and fsynced beside its target) while something it must
//! not become visible before is still being written, and published (renamed into place, the
//! directory fsynced) after: a manifest push stages its tag while it writes the revision the tag
//! names, so the two file fsyncs overlap instead of following each other.
//!
//! Missing parent directories are created and fsynced (each created one's parent too), and a
//! parent removed meanwhile by the store's cleanup of empty directories is created again
//! (as `fsretry` does for the store's own writes).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use object_store::PutPayload;

/// Attempts before a parent directory that keeps vanishing is an error.
const ATTEMPTS: usize = 5;

/// Shares directory fsyncs between writers (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct DurableWrites {
    /// Directories with writers in them now; an entry goes when its last writer is done.
    dirs: Mutex<HashMap<PathBuf, Arc<DirSync>>>,
    /// Directory fsyncs made after renames, in all (for the tests).
    #[cfg(test)]
    dir_fsyncs: AtomicU64,
}

#[derive(Debug, Default)]
struct DirSync {
    /// Renames into the directory done so far.
    renamed: AtomicU64,
    /// Held while the directory is fsynced: how many renames the last fsync covered.
    synced: Mutex<u64>,
}

impl DurableWrites {
    /// Writes `payload` as the whole content of `file`, durably (blocking). Tells whether
    /// `file` is new (did not exist just before it was replaced).
    pub(super) fn put(&self, file: &Path, payload: &PutPayload) -> io::Result<bool> {
        self.publish(stage(file, payload)?)
    }

    /// Puts a staged file in place durably (blocking); tells whether it is new.
    pub(super) fn publish(&self, mut staged: Staged) -> io::Result<bool> {
        let file = std::mem::take(&mut staged.file);
        let new = std::fs::symlink_metadata(&file).is_err();
        std::fs::rename(&staged.staging, &file)?;
        staged.staging = PathBuf::new(); // renamed: nothing to remove
        let dir = file.parent().unwrap_or(Path::new("/"));
        self.sync_dir(dir).map(|()| new)
    }

    /// Makes the renames into `dir` durable, sharing the fsync with other writers.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let state = {
            let mut dirs = self.dirs.lock().expect("not poisoned");
            dirs.entry(dir.to_path_buf()).or_default().clone()
        };
        let mine = state.renamed.fetch_add(1, Ordering::AcqRel) + 1;
        let result = {
            let mut synced = state.synced.lock().expect("not poisoned");
            if *synced >= mine {
                Ok(())
            } else {
                // Every rename counted here finished before this fsync begins.
                let covered = state.renamed.load(Ordering::Acquire);
                #[cfg(test)]
                self.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map(|()| *synced = covered)
            }
        };
        let mut dirs = self.dirs.lock().expect("not poisoned");
        // The map's reference and this one: no other writer is in the directory.
        if Arc::strong_count(&state) == 2 {
            dirs.remove(dir);
        }
        result
    }
}

/// A file's next content, written and fsynced beside it, not yet in place; removed if dropped
/// before [`DurableWrites::publish`].
#[derive(Debug)]
pub(super) struct Staged {
    file: PathBuf,
    staging: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.staging.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

/// Writes `payload` to a new staging file beside `file` and fsyncs it (blocking).
pub(super) fn stage(file: &Path, payload: &PutPayload) -> io::Result<Staged> {
    let dir = file
        .parent()
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "a file has a directory"))?;
    let (mut f, staging) = create_staging(file, dir)?;
    let staged = Staged {
        file: file.to_path_buf(),
        staging,
    };
    payload.iter().try_for_each(|part| f.write_all(part))?;
    f.sync_all()?;
    Ok(staged)
}

/// A new staging file for `file` in `dir`, creating `dir` if need be.
fn create_staging(file: &Path, dir: &Path) -> io::Result<(File, PathBuf)> {
    let mut n = 1u32;
    let mut attempts = 0;
    loop {
        let mut staging = file.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = PathBuf::from(staging);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound && attempts < ATTEMPTS => {
                attempts += 1;
                match create_dirs(dir) {
                    // A parent removed while the directories were being made: again.
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates `dir` and its missing parents, fsyncing each created directory and the parent it
/// was created in. A parent that vanishes meanwhile (the store removes empty directories) is
/// created again.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut existing = dir;
    while !existing.exists() {
        missing.push(existing);
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for d in missing.iter().copied().chain(Some(existing)) {
        File::open(d)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(parts: &[&'static [u8]]) -> PutPayload {
        parts.iter().map(|p| bytes::Bytes::from_static(p)).collect()
    }

    #[test]
    fn writes_replace_whole_files_and_create_directories() {
        let root = tempfile::tempdir().unwrap();
        let writes = DurableWrites::default();
        let file = root.path().join("a/b/c");
        assert!(
            writes.put(&file, &payload(&[b"hello ", b"world"])).unwrap(),
            "new"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"hello world");
        assert!(!writes.put(&file, &payload(&[b"x"])).unwrap(), "replaced");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        let names = || -> Vec<_> {
            let dir = std::fs::read_dir(root.path().join("a/b")).unwrap();
            dir.map(|e| e.unwrap().file_name()).collect()
        };
        assert_eq!(names(), ["c"], "no staging file is left");
        assert!(
            writes.dirs.lock().unwrap().is_empty(),
            "idle directories are forgotten"
        );

        let staged = stage(&file, &payload(&[b"next"])).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"x",
            "not in place before it is published"
        );
        drop(staged);
        let staged = stage(&file, &payload(&[b"next"])).unwrap();
        assert!(!writes.publish(staged).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), b"next");
        assert_eq!(names(), ["c"], "a dropped staging file is removed");
    }

    #[test]
    fn concurrent_writers_into_one_directory_all_land() {
        let root = tempfile::tempdir().unwrap();
        let writes = Arc::new(DurableWrites::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (writes, dir) = (writes.clone(), root.path().join("tags"));
                std::thread::spawn(move || {
                    for j in 0..20 {
                        let body = PutPayload::from(format!("{i}-{j}").into_bytes());
                        writes.put(&dir.join(format!("t{i}")), &body).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        for i in 0..16 {
            let got = std::fs::read_to_string(root.path().join(format!("tags/t{i}"))).unwrap();
            assert_eq!(got, format!("{i}-19"));
        }
        assert!(writes.dirs.lock().unwrap().is_empty());
        // 16 writers at a time on a real disk: fsyncs overlap, and are shared.
        let fsyncs = writes.dir_fsyncs.load(Ordering::Relaxed);
        assert!(fsyncs < 320, "{fsyncs} directory fsyncs for 320 writes");
    }
}
