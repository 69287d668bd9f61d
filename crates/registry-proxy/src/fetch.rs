//! One upstream fetch per blob, however many clients ask for it at once, streamed to each of
//! them while it is stored. The fetch runs in a task of its own: it writes what arrives to an
//! unnamed spool file (gone when the last reader lets go of it) and into an upload session of
//! the local storage, whose finish checks the digest. Readers follow the spool as it grows,
//! from wherever their range starts; the last byte of the blob is released only once the
//! digest matched, so a client never receives a whole blob that was not verified (a
//! mismatch ends every reader's body with an error, and nothing is stored). A fetch outlives
//! the clients that started it, so a pull that gives up still fills the cache.

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use registry_core::storage::ByteStream;
use registry_core::{Digest, Error, RepoName, Result, Storage};
use tokio::sync::{mpsc, watch};

use crate::stats::Stats;

/// Spool writes are gathered to about this much (readers lag behind by at most this).
const SPOOL_BATCH: usize = 256 * 1024;
/// The most a reader reads from the spool at once.
const READ_CHUNK: u64 = 256 * 1024;

/// How far a fetch has come.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Bytes in the spool.
    written: u64,
    /// `Some(Ok)` once stored and verified; `Some(Err)` when it failed.
    outcome: Option<Result<(), String>>,
}

/// A blob being fetched.
pub(crate) struct Fetch {
    size: u64,
    spool: Arc<std::fs::File>,
    progress: watch::Receiver<Progress>,
}

type Started = Shared<BoxFuture<'static, Result<Option<Arc<Fetch>>, Arc<Error>>>>;

/// The fetches running, by repository (the local name) and digest.
#[derive(Default)]
pub(crate) struct Fetches {
    running: Mutex<HashMap<(RepoName, Digest), Started>>,
}

/// What a fetch needs to run.
pub(crate) struct Job {
    pub run: Run,
    /// The upstream's answer, its body still to be read.
    pub response: reqwest::Response,
    pub spool_dir: Option<PathBuf>,
}

impl Fetches {
    /// The running fetch of `digest` into `local`, or a new one that `start` begins (it makes
    /// the upstream request; `None` from it: nothing to fetch); concurrent callers share one.
    pub(crate) async fn join_or_start<F>(
        self: &Arc<Self>,
        local: &RepoName,
        digest: &Digest,
        start: F,
    ) -> Result<Option<Arc<Fetch>>>
    where
        F: std::future::Future<Output = Result<Option<Job>>> + Send + 'static,
    {
        let key = (local.clone(), digest.clone());
        let started = {
            let mut running = self.running.lock().expect("not poisoned");
            running
                .entry(key.clone())
                .or_insert_with(|| {
                    let fetches = self.clone();
                    let key = key.clone();
                    // A task of its own: it goes on (and leaves the map) even when every
                    // client waiting for it went away.
                    let task = tokio::spawn(async move {
                        let begun = match start.await {
                            Ok(Some(job)) => {
                                begin(job, fetches.clone(), key.clone()).await.map(Some)
                            }
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        };
                        if !matches!(begun, Ok(Some(_))) {
                            fetches.finished(&key);
                        }
                        begun.map_err(Arc::new)
                    });
                    async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(Error::Config(format!("fetch task failed: {e}"))))
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        started.await.map_err(|e| replicate(&e))
    }

    fn finished(&self, key: &(RepoName, Digest)) {
        self.running.lock().expect("not poisoned").remove(key);
    }
}

/// What the task moving a blob's bytes works on.
pub(crate) struct Run {
    pub storage: Arc<dyn Storage>,
    /// The local repository it fills.
    pub local: RepoName,
    pub digest: Digest,
    pub size: u64,
    pub stats: Arc<Stats>,
    /// The upstream, whose timeout bounds each read of the body.
    pub upstream: Arc<crate::upstream::Upstream>,
}

type Body = futures::stream::BoxStream<'static, reqwest::Result<Bytes>>;

/// Opens the spool and spawns the task that moves the bytes.
async fn begin(job: Job, fetches: Arc<Fetches>, key: (RepoName, Digest)) -> Result<Arc<Fetch>> {
    let Job {
        run: job,
        response,
        spool_dir: dir,
    } = job;
    let body = response.bytes_stream().boxed();
    let spool = tokio::task::spawn_blocking(move || match dir {
        Some(d) => tempfile::tempfile_in(d),
        None => tempfile::tempfile(),
    })
    .await
    .map_err(|e| Error::Config(format!("spool task failed: {e}")))?
    .map_err(|e| Error::Config(format!("cannot create a spool file for a fetch: {e}")))?;
    let spool = Arc::new(spool);
    let (progress, watcher) = watch::channel(Progress::default());
    let fetch = Arc::new(Fetch {
        size: job.size,
        spool: spool.clone(),
        progress: watcher,
    });
    tokio::spawn(async move {
        let outcome = run(&job, body, &spool, &progress).await;
        match &outcome {
            Ok(()) => {
                tracing::info!(repo = %job.local, digest = %job.digest, size = job.size, "cached a blob")
            }
            Err(e) => {
                job.stats.error();
                tracing::warn!(repo = %job.local, digest = %job.digest, error = %e, "fetching a blob failed")
            }
        }
        // Readers that come from now on find the blob stored (or fetch it again).
        fetches.finished(&key);
        progress.send_modify(|p| p.outcome = Some(outcome.map_err(|e| e.to_string())));
    });
    Ok(fetch)
}

/// Moves the upstream body into the spool and the storage; `Ok` once stored and verified.
async fn run(
    job: &Run,
    body: Body,
    spool: &Arc<std::fs::File>,
    progress: &watch::Sender<Progress>,
) -> Result<()> {
    let storage = &job.storage;
    let session = storage
        .upload_start(&job.local, job.digest.algorithm())
        .await?;
    let (chunks, received) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let to_store: ByteStream = futures::stream::unfold(received, |mut r| async move {
        r.recv().await.map(|item| (item, r))
    })
    .boxed();
    let store = {
        let (storage, local, digest, id, size) = (
            storage.clone(),
            job.local.clone(),
            job.digest.clone(),
            session.id.clone(),
            job.size,
        );
        tokio::spawn(async move {
            storage
                .upload_finish(&local, &id, &digest, Some((Some(size), to_store)))
                .await
        })
    };
    let moved = pump(job, body, spool, progress, &chunks).await;
    if let Err(e) = &moved {
        // The session's finish fails on this instead of storing a short blob.
        let _ = chunks.send(Err(std::io::Error::other(e.to_string()))).await;
    }
    drop(chunks);
    let stored = store
        .await
        .map_err(|e| Error::Config(format!("storing task failed: {e}")))?;
    let result = match (moved, stored) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(_)) => return Ok(()),
        (Ok(()), Err(Error::DigestMismatch { actual, .. })) => Err(Error::Upstream(format!(
            "the upstream's bytes for {} hash to {actual}: not stored",
            job.digest
        ))),
        (Ok(()), Err(e)) => Err(e),
    };
    // A failed finish may leave the session; it would otherwise wait for the purge.
    let _ = storage.upload_cancel(&job.local, &session.id).await;
    result
}

/// Copies the upstream body to the spool and the store, checking its length.
async fn pump(
    job: &Run,
    mut body: Body,
    spool: &Arc<std::fs::File>,
    progress: &watch::Sender<Progress>,
    chunks: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<()> {
    let mut written = 0u64;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    loop {
        let next = job.upstream.within(body.next()).await?;
        let end = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(|e| job.upstream.unavailable(&e))?;
            job.stats.upstream_bytes(chunk.len() as u64);
            if written + (batched + chunk.len()) as u64 > job.size {
                return Err(Error::Upstream(format!(
                    "the upstream sent more than the {} bytes of {}",
                    job.size, job.digest
                )));
            }
            batched += chunk.len();
            batch.push(chunk);
        }
        if batched >= SPOOL_BATCH || (end && batched > 0) {
            let taken = std::mem::take(&mut batch);
            let (file, at) = (spool.clone(), written);
            let to_write = taken.clone();
            tokio::task::spawn_blocking(move || {
                let mut at = at;
                for b in &to_write {
                    file.write_all_at(b, at)?;
                    at += b.len() as u64;
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|e| Error::Config(format!("spool task failed: {e}")))?
            .map_err(|e| Error::Config(format!("writing the spool file failed: {e}")))?;
            for b in taken {
                if chunks.send(Ok(b)).await.is_err() {
                    // The store stopped reading: its error is the one to report.
                    return Ok(());
                }
            }
            written += batched as u64;
            batched = 0;
            progress.send_modify(|p| p.written = written);
        }
        if end {
            break;
        }
    }
    if written != job.size {
        return Err(Error::Upstream(format!(
            "the upstream's body of {} ended after {written} of {} bytes",
            job.digest, job.size
        )));
    }
    Ok(())
}

impl Fetch {
    /// The blob's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The bytes of `range` as they arrive.
    pub(crate) fn read(self: &Arc<Self>, range: Range<u64>) -> ByteStream {
        let state = (self.clone(), range.start, self.progress.clone());
        futures::stream::try_unfold(state, move |(fetch, pos, mut progress)| async move {
            let end = range.end.min(fetch.size);
            if pos >= end {
                return Ok(None);
            }
            loop {
                let available = {
                    let p = progress.borrow_and_update();
                    match &p.outcome {
                        Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
                        Some(Ok(())) => fetch.size,
                        // The last byte waits for the digest check.
                        None => p.written.min(fetch.size.saturating_sub(1)),
                    }
                };
                if pos < available.min(end) {
                    let n = (available.min(end) - pos).min(READ_CHUNK);
                    let file = fetch.spool.clone();
                    let bytes = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0; n as usize];
                        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    return Ok(Some((bytes, (fetch, pos + n, progress))));
                }
                if progress.changed().await.is_err() {
                    return Err(std::io::Error::other("the fetch ended without an outcome"));
                }
            }
        })
        .boxed()
    }
}

/// A copy of a shared error, for each caller that waited on it.
pub(crate) fn replicate(e: &Error) -> Error {
    match e {
        Error::BlobUnknown(d) => Error::BlobUnknown(d.clone()),
        Error::UpstreamUnavailable(m) => Error::UpstreamUnavailable(m.clone()),
        Error::Upstream(m) => Error::Upstream(m.clone()),
        Error::Denied(m) => Error::Denied(m.clone()),
        other => Error::Config(other.to_string()),
    }
}
