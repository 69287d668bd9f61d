//! The metadata cache: the small objects a pull reads on every request (tags, manifest
//! revisions, blob links) kept in memory for a bounded time, so a warm manifest GET or blob
//! HEAD makes no storage request. Entries hold the object as its reader decoded it (a tag's
//! target, a revision's media type and bytes, a link's size), so a hit neither parses nor
//! copies; the bounds count the size of the object as stored.
//!
//! # What may be stale, and for how long
//! Several nodes may share the storage and none tells the others what it wrote, so an entry is
//! trusted only for `ttl` ([`crate::StoreOptions::cache_ttl`], default 1 s, at most
//! [`MAX_TTL`]) after the read that filled it *began*. A tag moved, a manifest or blob deleted on
//! another node is therefore answered from this node's cache for at most `ttl`. Writes of this
//! process are seen at once: every write or delete of an object forgets it, and a read that was
//! in flight while anything was written does not fill the cache (it could hold the old value).
//!
//! # Garbage collection
//! While a collection's lease is live (as this process sees it, at most `LEASE_CACHE` = 1 s
//! late) nothing is answered from the cache and nothing enters it. A collection waits `SETTLE`
//! (5 s) after writing its lease before it decides anything, so it deletes only after every
//! node has stopped using its cache, and an entry filled before the lease (or in the second a
//! node had not seen it) is more than `SETTLE - LEASE_CACHE` old when the collection ends.
//! With `ttl <= SETTLE - LEASE_CACHE` ([`MAX_TTL`]), no node ever answers from a cache entry
//! for something a collection removed.
//!
//! # Bounds
//! At most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes; objects above [`MAX_ENTRY`] bytes
//! are not cached. When full, expired entries are dropped; if that frees nothing, new entries
//! are not kept until some expire. Misses are not cached: an object pushed on another node is
//! visible at once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;

/// The longest `cache_ttl` that keeps the guarantee about garbage collection.
pub const MAX_TTL: Duration = Duration::from_secs(4);
/// The most entries kept.
pub(super) const MAX_ENTRIES: usize = 65_536;
/// The most bytes kept (object contents; keys and bookkeeping come on top).
pub(super) const MAX_BYTES: usize = 64 << 20;
/// Larger objects are always read from storage.
pub(super) const MAX_ENTRY: usize = 256 << 10;

/// Small objects by key, decoded, each with the instant the read that fetched it began.
#[derive(Debug)]
pub(super) struct MetadataCache {
    ttl: Duration,
    /// Bumped by every write or delete this process makes through the registry.
    writes: AtomicU64,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// By the key's text, so a lookup needs no [`Path`].
    map: HashMap<Box<str>, Entry>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    /// When the read that found it began.
    at: Instant,
    /// The stored object's size.
    len: usize,
    value: Arc<dyn Any + Send + Sync>,
}

/// Taken before a read whose result may fill the cache.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    began: Instant,
    writes: u64,
}

impl MetadataCache {
    /// A cache whose entries live `ttl` (clamped to [`MAX_TTL`]); zero turns it off.
    pub(super) fn new(ttl: Duration) -> Self {
        MetadataCache {
            ttl: ttl.min(MAX_TTL),
            writes: AtomicU64::new(0),
            inner: Mutex::default(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The object as decoded into a `T`, if it was read less than `ttl` ago and not written
    /// since. (An entry kept as another type is a miss.)
    pub(super) fn get<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        let inner = self.inner.lock().expect("not poisoned");
        let entry = inner.map.get(key)?;
        if entry.at.elapsed() >= self.ttl {
            return None;
        }
        entry.value.downcast_ref::<T>().cloned()
    }

    /// To be taken before reading an object that [`Self::fill`] may keep.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket {
            writes: self.writes.load(Ordering::Acquire),
            began: Instant::now(),
        }
    }

    /// Keeps what a read that began at `ticket` found (an object of `len` bytes, decoded into
    /// `value`), unless this process wrote anything meanwhile or the cache is full of live
    /// entries.
    pub(super) fn fill<T: Clone + Send + Sync + 'static>(
        &self,
        ticket: Ticket,
        path: &Path,
        len: usize,
        value: &T,
    ) {
        if !self.enabled() || len > MAX_ENTRY {
            return;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        // Checked under the lock: `forget` bumps the counter before it takes the lock.
        if self.writes.load(Ordering::Acquire) != ticket.writes {
            return;
        }
        if inner.map.len() >= MAX_ENTRIES || inner.bytes + len > MAX_BYTES {
            let ttl = self.ttl;
            inner.map.retain(|_, e| e.at.elapsed() < ttl);
            inner.bytes = inner.map.values().map(|e| e.len).sum();
            if inner.map.len() >= MAX_ENTRIES || inner.bytes + len > MAX_BYTES {
                return;
            }
        }
        let entry = Entry {
            at: ticket.began,
            len,
            value: Arc::new(value.clone()),
        };
        if let Some(old) = inner.map.insert(path.as_ref().into(), entry) {
            inner.bytes -= old.len;
        }
        inner.bytes += len;
    }

    /// Forgets `path` once it was written or deleted, and keeps reads in flight (which may
    /// have found the old value) from filling the cache.
    pub(super) fn forget(&self, path: &Path) {
        self.writes.fetch_add(1, Ordering::AcqRel);
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        if let Some(old) = inner.map.remove(path.as_ref()) {
            inner.bytes -= old.len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn path(s: &str) -> Path {
        Path::from(s)
    }

    #[test]
    fn entries_live_ttl_from_when_the_read_began() {
        let cache = MetadataCache::new(Duration::from_millis(50));
        let ticket = cache.ticket();
        std::thread::sleep(Duration::from_millis(30));
        cache.fill(ticket, &path("a"), 1, &Bytes::from_static(b"x"));
        assert_eq!(cache.get::<Bytes>("a").as_deref(), Some(&b"x"[..]));
        assert_eq!(cache.get::<u64>("a"), None, "kept as another type");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(cache.get::<Bytes>("a"), None, "50 ms after the read began");
    }

    #[test]
    fn a_write_during_a_read_keeps_its_result_out() {
        let cache = MetadataCache::new(Duration::from_secs(1));
        let ticket = cache.ticket();
        cache.forget(&path("other"));
        cache.fill(ticket, &path("a"), 3, &Bytes::from_static(b"old"));
        assert_eq!(cache.get::<Bytes>("a"), None);
        let ticket = cache.ticket();
        cache.fill(ticket, &path("a"), 3, &Bytes::from_static(b"new"));
        assert!(cache.get::<Bytes>("a").is_some());
        cache.forget(&path("a"));
        assert_eq!(cache.get::<Bytes>("a"), None);
    }

    #[test]
    fn bounded_and_off_at_zero() {
        let off = MetadataCache::new(Duration::ZERO);
        off.fill(off.ticket(), &path("a"), 1, &Bytes::from_static(b"x"));
        assert_eq!(off.get::<Bytes>("a"), None);

        let cache = MetadataCache::new(Duration::from_secs(60));
        assert_eq!(cache.ttl, MAX_TTL, "clamped");
        let big = Bytes::from(vec![0; MAX_ENTRY + 1]);
        cache.fill(cache.ticket(), &path("big"), big.len(), &big);
        assert_eq!(cache.get::<Bytes>("big"), None);
        let entry = Bytes::from(vec![0; MAX_ENTRY]);
        for i in 0..(MAX_BYTES / MAX_ENTRY + 10) {
            cache.fill(cache.ticket(), &path(&format!("e{i}")), entry.len(), &entry);
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= MAX_BYTES);
        assert_eq!(inner.map.len(), MAX_BYTES / MAX_ENTRY);
        assert_eq!(
            inner.bytes,
            inner.map.values().map(|e| e.len).sum::<usize>()
        );
    }
}
