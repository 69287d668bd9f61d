//! Counters per upstream, for `/metrics`: what was answered from the cache, what had to be
//! fetched, bytes read from the upstream, failures, and stale answers given while the upstream
//! could not be asked.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of one mirror.
#[derive(Debug, Default)]
pub struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    upstream_bytes: AtomicU64,
    errors: AtomicU64,
    stale: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Manifests and blobs answered from the cache without fetching.
    pub hits: u64,
    /// Manifests and blobs fetched from the upstream.
    pub misses: u64,
    /// Bytes of blobs and manifests read from the upstream.
    pub upstream_bytes: u64,
    /// Upstream requests and fetches that failed.
    pub errors: u64,
    /// Cached answers given because the upstream could not be asked whether they are current.
    pub stale: u64,
}

impl Stats {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn upstream_bytes(&self, n: u64) {
        self.upstream_bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn stale(&self) {
        self.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            upstream_bytes: self.upstream_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}
