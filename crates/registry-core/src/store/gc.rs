//! Online garbage collection: deletes manifests, blob links and blobs that nothing reachable
//! needs, while the registry keeps serving pushes and pulls, on any number of nodes sharing the
//! storage. It never deletes anything reachable, nor anything a writer is about to depend on.
//!
//! # What is kept
//! Roots are every tag and, unless `delete_untagged`, every manifest revision, except in a
//! pull-through cache that is evicted (unused for longer than `mirror_max_unused`, or among the
//! least recently used while the caches hold more than `mirror_max_bytes`): it goes whole, its
//! tags first. From a root the mark follows index → child manifests, manifest → config and
//! layers, manifest → subject; a referrer of a kept manifest is kept too. Whatever was written
//! (or rewritten) less than `grace` before the collection began is kept whatever it is: an
//! upload's blob before its manifest arrives, a manifest before its tag.
//!
//! # The protocol with concurrent writers
//! A writer that makes content depend on existing objects (a manifest push needs its blobs or
//! child manifests; finishing an upload of bytes that are already stored, or a mount, needs
//! those bytes) could check that they exist, then commit, while a collection that found them
//! unreferenced deletes them in between. Three kinds of small objects under `gc/` prevent it,
//! without conditional writes (which not every S3 server honours):
//!
//! - `gc/lease`: written by a collection when it starts (and renewed while it runs; it expires
//!   [`LEASE_TTL`] after its last renewal, so a killed collection stops mattering). The
//!   collection then waits [`SETTLE`] before deciding anything.
//! - `gc/pins/<id>`: a writer that sees a live lease writes the digests it depends on here
//!   *before* it checks for doomed ones. The pin stays after the writer's commit (which the
//!   collection's mark may not have seen) until the collection ends and removes every pin. A
//!   writer whose pin is older than [`RECHECK_AFTER`] when it is about to commit writes it and
//!   checks again (the collection may have ended and another begun).
//! - `gc/doomed/<alg>/<hex>`: the collection writes this *before* it reads the pins, and deletes
//!   the digest's objects only if no pin names it; then it removes the mark.
//!
//! Each side writes its own mark and then reads the other's. The storage is strongly
//! consistent (read-after-write, as S3 and the filesystem are), so of a writer and a
//! collection touching one digest, at least one sees the other's mark: either the writer sees
//! the doomed mark (a manifest push then fails with `MANIFEST_BLOB_UNKNOWN` and the client
//! pushes the blob again; an upload waits for the deletion and stores its own bytes), or the
//! collection sees the pin and keeps the digest.
//!
//! Writers look for the lease at most once per [`LEASE_CACHE`] per process, so one that
//! checked just before a collection began may not see its lease. Such a writer re-checks
//! before committing if more than [`RECHECK_AFTER`] passed since its check; otherwise it
//! commits within `LEASE_CACHE + RECHECK_AFTER` of the lease being written, which is less than
//! [`SETTLE`]: its commit is visible to the collection's mark, which starts after the settle.
//! This assumes the commit itself (one small write) takes less than the remaining 2 s; one
//! stalled longer by storage retries is covered only by the grace period (objects younger
//! than it are never collected; the default is an hour).
//!
//! # Interruption
//! Every deletion is one object, in an order that keeps the store consistent at every step:
//! referrer entries before the manifest, a manifest before nothing needs it, links before the
//! bytes. A killed collection leaves at most a lease (it expires), doomed marks and pins (stale
//! once the lease is gone; writers ignore them and the next collection removes them), and some
//! garbage, which the next collection finds again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::reports::{GcReport, RepoUsage};
use super::ObjectRegistry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, ManifestKind};
use crate::names::RepoName;

/// A lease expires this long after its last renewal.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a running collection renews its lease.
const LEASE_RENEW: Duration = Duration::from_secs(15);
/// How long a writer trusts what it saw of the lease.
pub(super) const LEASE_CACHE: Duration = Duration::from_secs(1);
/// A writer whose check of the lease is older than this re-checks before committing.
pub(super) const RECHECK_AFTER: Duration = Duration::from_secs(2);
/// How long a collection waits after writing its lease before it marks.
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Manifests reachable from no tag are garbage too (children of tagged indexes and
    /// referrers of kept manifests are still kept).
    pub delete_untagged: bool,
    /// What was written less than this before the collection began is kept.
    pub grace: Duration,
    /// Upload sessions idle for longer than this are removed.
    pub upload_max_age: Duration,
    /// Take over the lease of another collection (one that was killed), instead of refusing
    /// to run while it has not expired.
    pub break_lease: bool,
    /// Pull-through caches (repositories marked `_mirror`) no client used for longer than
    /// this are evicted: their tags, manifests and blob links go, and with them blobs nothing
    /// else links. The instance's own repositories are never touched. `None`: kept forever.
    pub mirror_max_unused: Option<Duration>,
    /// While the pull-through caches hold more than this many bytes of blobs (each cache's
    /// linked blobs that its manifests reference, a layer shared by two caches counted in
    /// both), the least recently used are evicted. `None`: no quota.
    pub mirror_max_bytes: Option<u64>,
    /// The wait after writing the lease (see the module documentation, and `store/cache.rs`:
    /// nodes stop answering from their metadata caches within it); only tests that have no
    /// concurrent writers or readers shorten it.
    pub settle: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            delete_untagged: false,
            grace: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(24 * 3600),
            break_lease: false,
            mirror_max_unused: None,
            mirror_max_bytes: None,
            settle: SETTLE,
        }
    }
}

/// One thing a collection deleted (or would delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The key.
    pub path: String,
    /// What it is: "manifest", "link", "blob", "placed" (bytes of an upload no blob points
    /// to), "upload".
    pub kind: &'static str,
    /// Bytes freed.
    pub size: u64,
}

/// What a collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcSummary {
    /// Manifest revisions deleted.
    pub manifests: u64,
    /// Blob links deleted.
    pub links: u64,
    /// Blobs deleted.
    pub blobs: u64,
    /// Bytes of the blobs and manifests deleted.
    pub bytes: u64,
    /// Upload sessions removed.
    pub uploads: u64,
    /// Garbage kept because a writer depended on it at the time.
    pub pinned: u64,
    /// Pull-through caches evicted (`mirror_max_unused`, `mirror_max_bytes`).
    pub evicted: u64,
    /// Tags deleted with evicted caches.
    pub tags: u64,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    /// Unix seconds (the collecting node's clock) after which the lease is dead.
    expires: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a writer last saw of the lease.
#[derive(Debug, Default)]
pub(super) struct LeaseView {
    seen: Mutex<Option<(Instant, bool)>>,
}

impl ObjectRegistry {
    /// Whether a collection is running, as seen at most [`LEASE_CACHE`] ago (`fresh` forces a
    /// look).
    pub(super) async fn lease_active(&self, fresh: bool) -> Result<bool> {
        if !fresh {
            if let Some((at, active)) = *self.lease.seen.lock().expect("not poisoned") {
                if at.elapsed() < LEASE_CACHE {
                    return Ok(active);
                }
            }
        }
        let at = Instant::now();
        let active = match self.get_json::<Lease>(&layout::gc_lease()).await {
            Ok(Some(lease)) => lease.expires > unix_now(),
            Ok(None) => false,
            // A torn lease: treat as live until a collection rewrites or removes it.
            Err(Error::Corrupt { .. }) => true,
            Err(e) => return Err(e),
        };
        *self.lease.seen.lock().expect("not poisoned") = Some((at, active));
        Ok(active)
    }

    /// Runs `commit`, which makes content depend on `digests` after `verify` checked that
    /// they exist, safely against a concurrent collection (see the module documentation).
    /// Fails with [`Error::Doomed`] when a collection is deleting one of them.
    pub(super) async fn depend_on<T, V>(
        &self,
        digests: &[Digest],
        verify: impl Fn() -> V,
        commit: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T>
    where
        V: std::future::Future<Output = Result<()>>,
    {
        let checked = Instant::now();
        if !self.lease_active(false).await? {
            verify().await?;
            let active = checked.elapsed() > RECHECK_AFTER && self.lease_active(true).await?;
            if !active {
                return commit.await;
            }
            // A collection began meanwhile: pin, then verify again.
        }
        self.pinned(digests, verify, commit).await
    }

    async fn pinned<T, V>(
        &self,
        digests: &[Digest],
        verify: impl Fn() -> V,
        commit: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T>
    where
        V: std::future::Future<Output = Result<()>>,
    {
        let pin = layout::gc_pin(&uuid::Uuid::new_v4().simple().to_string());
        let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        self.put_json(&pin, &names).await?;
        // Only after the pin is written (see the module documentation).
        self.check_not_doomed(digests).await?;
        let pinned_at = Instant::now();
        verify().await?;
        if pinned_at.elapsed() > RECHECK_AFTER {
            // The collection may have ended (removing the pin) and another begun.
            self.put_json(&pin, &names).await?;
            self.check_not_doomed(digests).await?;
            verify().await?;
        }
        // The pin stays after the commit: the running collection's mark did not see the
        // commit, so the pin is what keeps these digests. The collection removes every pin
        // when it ends.
        commit.await
    }

    async fn check_not_doomed(&self, digests: &[Digest]) -> Result<()> {
        for d in digests {
            if self.exists(&layout::gc_doomed(d)).await? {
                return Err(Error::Doomed(d.clone()));
            }
        }
        Ok(())
    }

    /// Waits (up to a minute) until no collection is deleting `digest`.
    pub(super) async fn wait_until_not_doomed(&self, digest: &Digest) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.exists(&layout::gc_doomed(digest)).await? {
            if Instant::now() > deadline || !self.lease_active(true).await? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Collects garbage (see the module documentation), calling `report` for each deletion.
    pub async fn gc(
        &self,
        options: &GcOptions,
        mut report: impl FnMut(&Deletion),
    ) -> Result<GcSummary> {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let lease_path = layout::gc_lease();
        if let Some(other) = self.get_json::<Lease>(&lease_path).await.ok().flatten() {
            let now = unix_now();
            if other.expires > now && !options.dry_run && !options.break_lease {
                return Err(Error::GcRunning {
                    expires_in: Duration::from_secs(other.expires - now),
                });
            }
        }
        if !options.dry_run {
            self.write_lease(&owner).await?;
        }
        let started = super::reports::unix_seconds();
        let mut measured = Vec::new();
        let usage = &mut measured;
        let result = async {
            // The storage's own clock (unix microseconds): object times are compared with it.
            // (S3 gives the lease's time in whole seconds and listings in milliseconds: the
            // truncation only makes more objects young, never fewer.)
            let now = if options.dry_run {
                unix_now() * 1_000_000
            } else {
                tokio::time::sleep(options.settle).await;
                stamp(&self.store.head(&lease_path).await?)
            };
            let cutoff = now.saturating_sub(options.grace.as_micros() as u64);
            let mut renewed = Instant::now();
            let mut renew = || {
                let due = renewed.elapsed() > LEASE_RENEW && !options.dry_run;
                if due {
                    renewed = Instant::now();
                }
                due
            };
            let mut summary = GcSummary::default();
            let live = self.mark(options, now, cutoff).await?;
            *usage = (live.iter())
                .map(|(repo, kept)| RepoUsage {
                    repository: repo.to_string(),
                    bytes: kept.sizes.values().sum(),
                    blobs: kept.sizes.len() as u64,
                    manifests: kept.manifests.len() as u64,
                })
                .collect();
            if renew() {
                self.write_lease(&owner).await?;
            }
            // Manifests and links, repository by repository, in batches (see `doom`).
            let mut pins = Pins::default();
            let mut linked: HashSet<Digest> = HashSet::new();
            for (repo, kept) in live {
                let repo = &repo;
                if kept.evicted {
                    // Its tags first: no tag is ever left naming a deleted manifest.
                    summary.evicted += 1;
                    for meta in self.list_all(&layout::tags_dir(repo)).await? {
                        if !options.dry_run {
                            self.delete_quiet(&meta.location).await?;
                        }
                        summary.tags += 1;
                        report(&deletion(&meta, "tag", 0));
                    }
                    if !options.dry_run {
                        self.tags_changed(repo).await?;
                    }
                }
                let metas = kept.revisions;
                let garbage = candidates(metas, super::fsck::link_digest, |d, meta| {
                    !kept.manifests.contains(d) && !is_young(meta, cutoff)
                });
                for batch in garbage.chunks(BATCH) {
                    let free = self.doom(batch, options, &mut pins, &mut summary).await?;
                    for (d, meta) in batch.iter().filter(|(d, _)| free.contains(d)) {
                        if !options.dry_run {
                            self.delete_manifest_objects(repo, d).await?;
                        }
                        summary.manifests += 1;
                        summary.bytes += meta.size;
                        report(&deletion(meta, "manifest", meta.size));
                    }
                    self.undoom(batch, options).await?;
                }
                let metas = self.list_all(&layout::layers_dir(repo)).await?;
                let garbage = candidates(metas, super::fsck::link_digest, |d, meta| {
                    let keep = kept.blobs.contains(d) || is_young(meta, cutoff);
                    if keep {
                        linked.insert(d.clone());
                    }
                    !keep
                });
                for batch in garbage.chunks(BATCH) {
                    let free = self.doom(batch, options, &mut pins, &mut summary).await?;
                    for (d, meta) in batch {
                        if !free.contains(d) {
                            linked.insert(d.clone());
                            continue;
                        }
                        if !options.dry_run {
                            self.delete_quiet(&meta.location).await?;
                        }
                        summary.links += 1;
                        report(&deletion(meta, "link", 0));
                    }
                    self.undoom(batch, options).await?;
                }
                if renew() {
                    self.write_lease(&owner).await?;
                }
            }
            // Bytes no repository links any more.
            let metas = self.list_all(&layout::blobs_root()).await?;
            let garbage = candidates(metas, super::fsck::blob_digest, |d, meta| {
                !linked.contains(d) && !is_young(meta, cutoff)
            });
            for batch in garbage.chunks(BATCH) {
                let free = self.doom(batch, options, &mut pins, &mut summary).await?;
                for (_, meta) in batch.iter().filter(|(d, _)| free.contains(d)) {
                    let size = if options.dry_run {
                        self.blob_size_at(meta).await?
                    } else {
                        self.delete_blob_object(meta).await?
                    };
                    summary.blobs += 1;
                    summary.bytes += size;
                    report(&deletion(meta, "blob", size));
                }
                self.undoom(batch, options).await?;
                if renew() {
                    self.write_lease(&owner).await?;
                }
            }
            if !options.dry_run {
                summary.uploads =
                    crate::storage::UploadStore::upload_purge(self, options.upload_max_age).await?
                        as u64;
                // Bytes of multipart uploads no blob points to (after the purge, which ends
                // the sessions of finishes that never wrote their pointer).
                let orphans = self.orphaned_placed(|m| is_young(m, cutoff)).await?;
                for meta in &orphans.bytes {
                    self.delete_quiet(&meta.location).await?;
                    summary.bytes += meta.size;
                    report(&deletion(meta, "placed", meta.size));
                }
                for mark in &orphans.marks {
                    self.delete_quiet(mark).await?;
                }
                // Marks left by a killed collection.
                for meta in self.list_all(&layout::gc_doomed_root()).await? {
                    self.delete_quiet(&meta.location).await?;
                }
                // Pins served this collection; writers pin again for the next one.
                for meta in self.list_all(&layout::gc_pins_root()).await? {
                    self.delete_quiet(&meta.location).await?;
                }
            }
            Ok(summary)
        }
        .await;
        if !options.dry_run {
            let report = GcReport {
                started,
                finished: super::reports::unix_seconds(),
                summary: result.as_ref().cloned().unwrap_or_default(),
                error: result.as_ref().err().map(ToString::to_string),
                usage: measured,
            };
            if let Err(e) = self.write_gc_report(report).await {
                tracing::warn!(error = %e, "cannot store the collection's report");
            }
            // Only our own lease.
            if let Ok(Some(lease)) = self.get_json::<Lease>(&lease_path).await {
                if lease.owner == owner {
                    self.delete_quiet(&lease_path).await?;
                }
            }
        }
        result
    }

    /// Whether a collection (on any node) holds a live lease now.
    pub async fn gc_running(&self) -> Result<bool> {
        Ok(match self.get_json::<Lease>(&layout::gc_lease()).await {
            Ok(Some(lease)) => lease.expires > unix_now(),
            Ok(None) => false,
            // A torn lease: as the writers see it, live until rewritten or removed.
            Err(Error::Corrupt { .. }) => true,
            Err(e) => return Err(e),
        })
    }

    /// Writes (or renews) this collection's lease.
    async fn write_lease(&self, owner: &str) -> Result<()> {
        let lease = Lease {
            owner: owner.to_owned(),
            expires: unix_now() + LEASE_TTL.as_secs(),
        };
        self.put_json(&layout::gc_lease(), &lease).await
    }

    /// Writes a lease as a running collection would (for the backend test suite).
    #[cfg(any(test, feature = "testsuite"))]
    pub(crate) async fn gc_lease_for_tests(&self) {
        self.write_lease("testsuite").await.expect("lease written");
    }

    /// Marks `batch` doomed, then reads the writers' pins: returns the digests no pin names,
    /// which may be deleted until [`Self::undoom`]. A dry run marks nothing and frees all.
    async fn doom(
        &self,
        batch: &[(Digest, ObjectMeta)],
        options: &GcOptions,
        pins: &mut Pins,
        summary: &mut GcSummary,
    ) -> Result<HashSet<Digest>> {
        let all = batch.iter().map(|(d, _)| d.clone());
        if options.dry_run {
            return Ok(all.collect());
        }
        let marks = batch.iter().map(|(d, _)| {
            let (store, doomed) = (self.store.clone(), layout::gc_doomed(d));
            async move { store.put(&doomed, PutPayload::from_static(b"")).await }
        });
        futures::future::try_join_all(marks).await?;
        // Only after the marks are written (see the module documentation).
        self.read_pins(pins).await?;
        let (free, pinned): (HashSet<Digest>, HashSet<Digest>) =
            all.partition(|d| !pins.digests.contains(&d.to_string()));
        summary.pinned += pinned.len() as u64;
        Ok(free)
    }

    /// Removes the doomed marks of `batch`.
    async fn undoom(&self, batch: &[(Digest, ObjectMeta)], options: &GcOptions) -> Result<()> {
        if options.dry_run {
            return Ok(());
        }
        for (d, _) in batch {
            self.delete_quiet(&layout::gc_doomed(d)).await?;
        }
        Ok(())
    }

    /// Brings `pins` up to date: every pin now in storage, reading only new ones.
    async fn read_pins(&self, pins: &mut Pins) -> Result<()> {
        for meta in self.list_all(&layout::gc_pins_root()).await? {
            let key = meta.location.to_string();
            if pins.read.insert(key) {
                if let Some(names) = self
                    .get_json::<Vec<String>>(&meta.location)
                    .await
                    .ok()
                    .flatten()
                {
                    pins.digests.extend(names);
                }
            }
        }
        Ok(())
    }

    /// A manifest's referrer entries, then the manifest itself.
    async fn delete_manifest_objects(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let path = layout::revision_link(repo, digest);
        if let Some(raw) = self.get_small(&path).await? {
            if let Ok((media_type, bytes)) = super::manifests::decode_revision(&path, raw) {
                if let Ok(parsed) = manifest::parse(Some(&media_type), &bytes) {
                    if let Some(subject) = parsed.subject {
                        self.delete_quiet(&layout::referrer(repo, &subject.digest, digest))
                            .await?;
                    }
                }
            }
        }
        self.delete_quiet(&path).await
    }

    /// What each repository keeps.
    async fn mark(
        &self,
        options: &GcOptions,
        now: u64,
        cutoff: u64,
    ) -> Result<HashMap<RepoName, Kept>> {
        let mut live = HashMap::new();
        // Caches within their age: (when last used, bytes held, name), for the quota.
        let mut caches: Vec<(u64, u64, RepoName)> = Vec::new();
        for repo in self.all_repositories().await?.iter() {
            let evicting =
                options.mirror_max_unused.is_some() || options.mirror_max_bytes.is_some();
            let used = if evicting {
                self.cache_last_used(repo).await?
            } else {
                None
            };
            let unused = match (used, options.mirror_max_unused) {
                (Some(at), Some(max)) => at < now.saturating_sub(max.as_micros() as u64),
                _ => false,
            };
            let kept = if unused {
                self.evicted(repo).await?
            } else {
                let kept = self.mark_repository(repo, options, cutoff).await?;
                if let (Some(at), Some(_)) = (used, options.mirror_max_bytes) {
                    caches.push((at, self.cache_bytes(repo, &kept).await?, repo.clone()));
                }
                kept
            };
            live.insert(repo.clone(), kept);
        }
        if let Some(quota) = options.mirror_max_bytes {
            let mut total: u64 = caches.iter().map(|c| c.1).sum();
            caches.sort();
            for (_, bytes, repo) in caches {
                if total <= quota {
                    break;
                }
                live.insert(repo.clone(), self.evicted(&repo).await?);
                total -= bytes;
            }
        }
        Ok(live)
    }

    /// What an evicted cache keeps: nothing (its revisions, as listed, are the candidates).
    async fn evicted(&self, repo: &RepoName) -> Result<Kept> {
        Ok(Kept {
            revisions: self.list_all(&layout::revisions_dir(repo)).await?,
            evicted: true,
            ..Kept::default()
        })
    }

    /// When a client last used `repo`, if it is a pull-through cache (its marker is rewritten
    /// as it is used, see [`crate::storage::ManifestStore::cache_used`]).
    async fn cache_last_used(&self, repo: &RepoName) -> Result<Option<u64>> {
        match self.store.head(&layout::mirror_marker(repo)).await {
            Ok(meta) => Ok(Some(stamp(&meta))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes of the blobs a cache links that its kept manifests reference.
    async fn cache_bytes(&self, repo: &RepoName, kept: &Kept) -> Result<u64> {
        let links = self.list_all(&layout::layers_dir(repo)).await?;
        Ok(links
            .iter()
            .filter_map(|m| super::fsck::link_digest(&m.location))
            .filter_map(|d| kept.sizes.get(&d))
            .sum())
    }

    async fn mark_repository(
        &self,
        repo: &RepoName,
        options: &GcOptions,
        cutoff: u64,
    ) -> Result<Kept> {
        // Every revision, parsed once: what it needs and what it refers to.
        let mut revisions: HashMap<Digest, Option<manifest::ParsedManifest>> = HashMap::new();
        // Young manifests are kept, so what they need is kept too.
        let mut roots: Vec<Digest> = Vec::new();
        let listed = self.list_all(&layout::revisions_dir(repo)).await?;
        for meta in &listed {
            let Some(d) = super::fsck::link_digest(&meta.location) else {
                continue;
            };
            if is_young(meta, cutoff) {
                roots.push(d.clone());
            }
            let parsed = match self.get_small(&meta.location).await? {
                Some(raw) => super::manifests::decode_revision(&meta.location, raw)
                    .ok()
                    .and_then(|(t, b)| manifest::parse(Some(&t), &b).ok()),
                None => continue,
            };
            revisions.insert(d, parsed);
        }
        for meta in self.list_all(&layout::tags_dir(repo)).await? {
            if let Ok(Some(v)) = self.get_json::<serde_json::Value>(&meta.location).await {
                if let Some(d) = v["digest"].as_str().and_then(|d| d.parse().ok()) {
                    roots.push(d);
                }
            }
        }
        if !options.delete_untagged {
            roots.extend(revisions.keys().cloned());
        }
        let mut kept = Kept {
            revisions: listed,
            ..Kept::default()
        };
        // Referrers by subject, to keep the referrers of kept manifests.
        let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for (d, parsed) in &revisions {
            if let Some(s) = parsed.as_ref().and_then(|p| p.subject.as_ref()) {
                referrers
                    .entry(s.digest.clone())
                    .or_default()
                    .push(d.clone());
            }
        }
        while let Some(d) = roots.pop() {
            if !kept.manifests.insert(d.clone()) {
                continue;
            }
            roots.extend(referrers.get(&d).into_iter().flatten().cloned());
            let Some(Some(parsed)) = revisions.get(&d) else {
                continue;
            };
            if let Some(s) = &parsed.subject {
                roots.push(s.digest.clone());
            }
            match parsed.kind {
                ManifestKind::Image => {
                    for r in &parsed.references {
                        kept.blobs.insert(r.digest.clone());
                        kept.sizes.insert(r.digest.clone(), r.size);
                    }
                }
                ManifestKind::Index => {
                    for r in &parsed.references {
                        roots.push(r.digest.clone());
                        // Index entries that are blobs (artifacts) are kept as blobs too.
                        kept.blobs.insert(r.digest.clone());
                    }
                }
            }
        }
        Ok(kept)
    }
}

fn deletion(meta: &ObjectMeta, kind: &'static str, size: u64) -> Deletion {
    Deletion {
        path: meta.location.to_string(),
        kind,
        size,
    }
}

/// Candidates are doomed and checked against pins this many at a time.
const BATCH: usize = 256;

/// The pins read so far in one collection (pins only come and, at its end, go).
#[derive(Default)]
struct Pins {
    read: HashSet<String>,
    digests: HashSet<String>,
}

/// The objects of `metas` whose key names a digest and which `garbage` says are garbage.
fn candidates(
    metas: Vec<ObjectMeta>,
    digest_of: fn(&Path) -> Option<Digest>,
    mut garbage: impl FnMut(&Digest, &ObjectMeta) -> bool,
) -> Vec<(Digest, ObjectMeta)> {
    metas
        .into_iter()
        .filter_map(|m| digest_of(&m.location).map(|d| (d, m)))
        .filter(|(d, m)| garbage(d, m))
        .collect()
}

/// What one repository keeps.
#[derive(Debug, Default)]
struct Kept {
    /// The repository's revisions as the mark listed them: the sweep's candidates (anything
    /// written since is young).
    revisions: Vec<ObjectMeta>,
    manifests: HashSet<Digest>,
    blobs: HashSet<Digest>,
    /// The sizes the kept manifests give their blobs.
    sizes: HashMap<Digest, u64>,
    /// An unused pull-through cache: everything in it goes, tags too.
    evicted: bool,
}

/// When an object was last written, unix microseconds of the storage's clock.
fn stamp(meta: &ObjectMeta) -> u64 {
    meta.last_modified.timestamp_micros().max(0) as u64
}

/// Written at or after `cutoff`.
fn is_young(meta: &ObjectMeta, cutoff: u64) -> bool {
    stamp(meta) >= cutoff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BlobStore, ManifestStore};
    use crate::testsuite::{data, image_manifest, push_blob};
    use crate::{Reference, StoreOptions};
    use object_store::memory::InMemory;
    use std::sync::Arc;

    fn registry() -> ObjectRegistry {
        ObjectRegistry::new(Arc::new(InMemory::new()), StoreOptions::default())
    }

    /// The two halves of the protocol, one at a time: a writer that finds a doomed mark fails
    /// cleanly, and a collection that finds a pin keeps the digest.
    #[tokio::test]
    async fn doomed_marks_and_pins() {
        let s = registry();
        let r: RepoName = "p/q".parse().unwrap();
        let layer = data(1000, 1);
        let d = push_blob(&s, &r, &layer).await;
        let m = image_manifest(&d, 1000, &[], None);
        // A collection is running (writers see it within LEASE_CACHE; a collection waits
        // longer than that before it marks) and deleting d.
        s.write_lease("other").await.unwrap();
        tokio::time::sleep(LEASE_CACHE + Duration::from_millis(100)).await;
        s.store
            .put(&layout::gc_doomed(&d), PutPayload::from_static(b""))
            .await
            .unwrap();
        let tag = Reference::Tag("t".parse().unwrap());
        let err = s
            .manifest_put(
                &r,
                &tag,
                Some(crate::manifest::OCI_MANIFEST),
                m.clone().into(),
                &[],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ManifestBlobUnknown(ref x) if *x == d),
            "{err:?}"
        );
        assert!(
            s.manifest_info(&r, &tag).await.is_err(),
            "nothing committed"
        );
        // Mounting it elsewhere falls back to an upload.
        let other: RepoName = "p/other".parse().unwrap();
        assert_eq!(s.blob_mount(&other, &r, &d).await.unwrap(), None);
        // The mark goes: the push succeeds, and its pin stays for the running collection.
        s.delete_quiet(&layout::gc_doomed(&d)).await.unwrap();
        s.manifest_put(&r, &tag, Some(crate::manifest::OCI_MANIFEST), m.into(), &[])
            .await
            .unwrap();
        let mut pins = Pins::default();
        s.read_pins(&mut pins).await.unwrap();
        assert!(pins.digests.contains(&d.to_string()));

        // A writer's pin keeps an otherwise collectable blob.
        let orphan = push_blob(&s, &r, &data(2000, 2)).await;
        s.put_json(&layout::gc_pin("writer"), &vec![orphan.to_string()])
            .await
            .unwrap();
        s.delete_quiet(&layout::gc_lease()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let options = GcOptions {
            grace: Duration::ZERO,
            settle: Duration::ZERO,
            ..GcOptions::default()
        };
        let summary = s.gc(&options, |_| {}).await.unwrap();
        assert_eq!(
            (summary.links, summary.blobs, summary.pinned),
            (0, 0, 1),
            "{summary:?}"
        );
        assert!(s.blob_size(&r, &orphan).await.is_ok());
        // The collection removed every pin when it ended: the next one takes the blob.
        let mut pins = Pins::default();
        s.read_pins(&mut pins).await.unwrap();
        assert!(pins.read.is_empty());
        let summary = s.gc(&options, |_| {}).await.unwrap();
        assert_eq!((summary.links, summary.blobs), (1, 1), "{summary:?}");
    }

    /// A collection that begins while a writer's check is slow, and deletes what was checked
    /// before the writer pins it: the writer checks again after pinning and does not commit.
    #[tokio::test]
    async fn a_collection_beginning_during_a_slow_check_is_seen() {
        let s = registry();
        let r: RepoName = "p/slow".parse().unwrap();
        let d = push_blob(&s, &r, &data(1000, 3)).await;
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let verify = || async {
            let exists = s.exists(&layout::blob(&d)).await?;
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                // Meanwhile a collection starts, deletes the bytes and removes its mark.
                s.write_lease("gc").await?;
                s.delete_quiet(&layout::blob(&d)).await?;
                tokio::time::sleep(RECHECK_AFTER + Duration::from_millis(100)).await;
            }
            if exists {
                Ok(())
            } else {
                Err(Error::BlobUnknown(d.clone()))
            }
        };
        let committed = std::sync::atomic::AtomicBool::new(false);
        let commit = async {
            committed.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        let result = s.depend_on(std::slice::from_ref(&d), verify, commit).await;
        assert!(matches!(result, Err(Error::BlobUnknown(_))), "{result:?}");
        assert!(!committed.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A second collection while one holds the lease is refused; an expired lease (a killed
    /// collection) is not in the way.
    #[tokio::test]
    async fn one_collection_at_a_time() {
        let s = registry();
        let options = GcOptions {
            settle: Duration::ZERO,
            ..GcOptions::default()
        };
        s.write_lease("running").await.unwrap();
        assert!(matches!(
            s.gc(&options, |_| {}).await,
            Err(Error::GcRunning { .. })
        ));
        let dead = Lease {
            owner: "killed".into(),
            expires: unix_now() - 1,
        };
        s.put_json(&layout::gc_lease(), &dead).await.unwrap();
        s.gc(&options, |_| {}).await.unwrap();
        assert!(
            !s.exists(&layout::gc_lease()).await.unwrap(),
            "lease released"
        );
    }
}

/// A model of the registry checked against the real one: random sequences of pushes (blobs,
/// images, indexes), tags, untags, manifest deletions, mounts and collections. After each
/// collection every manifest a tag reaches is complete, and every blob nothing reaches (all
/// are older than the grace period, which is zero here) is gone.
#[cfg(test)]
mod model {
    use super::*;
    use crate::digest::Algorithm;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
    use crate::storage::{BlobStore, ManifestStore};
    use crate::testsuite::{data, image_manifest, push_blob};
    use crate::{Reference, StoreOptions};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    const REPOS: [&str; 2] = ["m/a", "m/b"];
    const BLOBS: u8 = 6;
    const TAGS: [&str; 3] = ["x", "y", "z"];

    #[derive(Debug, Clone)]
    enum Op {
        /// Push blob `seed` into a repository.
        Blob(usize, u8),
        /// Push an image of blobs `seeds` (those the repository holds), tagged or not.
        Image(usize, Vec<u8>, Option<usize>),
        /// Push an index of the repository's first two images, tagged or not.
        Index(usize, Option<usize>),
        Untag(usize, usize),
        /// Delete the n-th manifest of the repository by digest.
        Delete(usize, usize),
        /// Mount blob `seed` from the other repository.
        Mount(usize, u8),
        Gc(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let repo = 0..REPOS.len();
        let tag = proptest::option::of(0..TAGS.len());
        prop_oneof![
            3 => (repo.clone(), 0..BLOBS).prop_map(|(r, b)| Op::Blob(r, b)),
            3 => (repo.clone(), proptest::collection::vec(0..BLOBS, 1..3), tag.clone())
                .prop_map(|(r, b, t)| Op::Image(r, b, t)),
            1 => (repo.clone(), tag).prop_map(|(r, t)| Op::Index(r, t)),
            2 => (repo.clone(), 0..TAGS.len()).prop_map(|(r, t)| Op::Untag(r, t)),
            1 => (repo.clone(), 0..4usize).prop_map(|(r, n)| Op::Delete(r, n)),
            1 => (repo, 0..BLOBS).prop_map(|(r, b)| Op::Mount(r, b)),
            2 => any::<bool>().prop_map(Op::Gc),
        ]
    }

    /// What the model knows of one repository.
    #[derive(Default)]
    struct Repo {
        blobs: BTreeSet<u8>,
        /// Manifests in push order: (digest, bytes, media type, blobs, children).
        manifests: Vec<ModelManifest>,
        tags: BTreeMap<usize, Digest>,
    }

    type ModelManifest = (Digest, Vec<u8>, &'static str, Vec<u8>, Vec<Digest>);

    fn blob_bytes(seed: u8) -> Vec<u8> {
        data(300 + seed as usize, seed)
    }

    async fn run(ops: Vec<Op>) {
        let s = ObjectRegistry::new(
            Arc::new(object_store::memory::InMemory::new()),
            StoreOptions::default(),
        );
        let names: Vec<RepoName> = REPOS.iter().map(|r| r.parse().unwrap()).collect();
        let mut model: Vec<Repo> = (0..REPOS.len()).map(|_| Repo::default()).collect();
        let digest = |seed: u8| Digest::of(Algorithm::Sha256, &blob_bytes(seed));
        let cfg = b"{}".to_vec();
        let dcfg = Digest::of(Algorithm::Sha256, &cfg);
        for op in ops {
            match op {
                Op::Blob(r, b) => {
                    push_blob(&s, &names[r], &blob_bytes(b)).await;
                    model[r].blobs.insert(b);
                }
                Op::Image(r, seeds, tag) => {
                    // Only blobs the repository holds (a client pushes blobs first).
                    let seeds: Vec<u8> = seeds
                        .into_iter()
                        .filter(|b| model[r].blobs.contains(b))
                        .collect();
                    push_blob(&s, &names[r], &cfg).await;
                    let layers: Vec<_> = seeds
                        .iter()
                        .map(|&b| (digest(b), 300 + b as usize))
                        .collect();
                    let m = image_manifest(&dcfg, 2, &layers, None);
                    let d = put(&s, &names[r], &m, OCI_MANIFEST, tag).await;
                    model[r].manifests.retain(|x| x.0 != d);
                    model[r]
                        .manifests
                        .push((d.clone(), m, OCI_MANIFEST, seeds, vec![]));
                    if let Some(t) = tag {
                        model[r].tags.insert(t, d);
                    }
                }
                Op::Index(r, tag) => {
                    let children: Vec<_> = model[r]
                        .manifests
                        .iter()
                        .filter(|m| m.2 == OCI_MANIFEST)
                        .take(2)
                        .map(|m| (m.0.clone(), m.1.len()))
                        .collect();
                    let entries: Vec<_> = children.iter().map(|(d, n)| serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": n})).collect();
                    let m = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap();
                    let d = put(&s, &names[r], &m, OCI_INDEX, tag).await;
                    model[r].manifests.retain(|x| x.0 != d);
                    model[r].manifests.push((
                        d.clone(),
                        m,
                        OCI_INDEX,
                        vec![],
                        children.into_iter().map(|c| c.0).collect(),
                    ));
                    if let Some(t) = tag {
                        model[r].tags.insert(t, d);
                    }
                }
                Op::Untag(r, t) => {
                    let reference = Reference::Tag(TAGS[t].parse().unwrap());
                    let result = s.manifest_delete(&names[r], &reference).await;
                    assert_eq!(result.is_ok(), model[r].tags.remove(&t).is_some());
                }
                Op::Delete(r, n) => {
                    let Some(d) = model[r].manifests.get(n).map(|m| m.0.clone()) else {
                        continue;
                    };
                    // Not one an index of the repository needs (the API would leave it dangling;
                    // that is the client's choice, not gc's).
                    if model[r].manifests.iter().any(|m| m.4.contains(&d)) {
                        continue;
                    }
                    s.manifest_delete(&names[r], &Reference::Digest(d.clone()))
                        .await
                        .unwrap();
                    model[r].manifests.retain(|m| m.0 != d);
                    model[r].tags.retain(|_, t| *t != d);
                }
                Op::Mount(r, b) => {
                    let from = 1 - r;
                    let mounted = s
                        .blob_mount(&names[r], &names[from], &digest(b))
                        .await
                        .unwrap();
                    assert_eq!(mounted.is_some(), model[from].blobs.contains(&b));
                    if mounted.is_some() {
                        model[r].blobs.insert(b);
                    }
                }
                Op::Gc(delete_untagged) => {
                    let options = GcOptions {
                        delete_untagged,
                        grace: Duration::ZERO,
                        settle: Duration::ZERO,
                        ..GcOptions::default()
                    };
                    s.gc(&options, |_| {}).await.unwrap();
                    for (r, repo) in model.iter_mut().enumerate() {
                        // What the model says stays: roots, then children.
                        let mut kept: BTreeSet<Digest> = repo.tags.values().cloned().collect();
                        if !delete_untagged {
                            kept.extend(repo.manifests.iter().map(|m| m.0.clone()));
                        }
                        let children: Vec<Digest> = repo
                            .manifests
                            .iter()
                            .filter(|m| kept.contains(&m.0))
                            .flat_map(|m| m.4.clone())
                            .collect();
                        kept.extend(children);
                        repo.manifests.retain(|m| kept.contains(&m.0));
                        let needed: BTreeSet<u8> =
                            repo.manifests.iter().flat_map(|m| m.3.clone()).collect();
                        for b in 0..BLOBS {
                            let stored = s.blob_size(&names[r], &digest(b)).await.is_ok();
                            assert_eq!(stored, needed.contains(&b), "{} blob {b}", REPOS[r]);
                        }
                        repo.blobs = needed;
                        // Every kept manifest is complete: its bytes, and its blobs.
                        for m in &repo.manifests {
                            let got = s
                                .manifest_get(&names[r], &Reference::Digest(m.0.clone()))
                                .await
                                .unwrap();
                            assert_eq!(got.1.as_ref(), m.1.as_slice());
                        }
                        for (t, d) in &repo.tags {
                            let info = s
                                .manifest_info(
                                    &names[r],
                                    &Reference::Tag(TAGS[*t].parse().unwrap()),
                                )
                                .await
                                .unwrap();
                            assert_eq!(&info.digest, d);
                        }
                    }
                    // Bytes nothing links are gone (the config is in every image).
                    let any_image = model
                        .iter()
                        .any(|m| m.manifests.iter().any(|x| x.2 == OCI_MANIFEST));
                    let blobs = s.list_all(&layout::blobs_root()).await.unwrap();
                    let linked: BTreeSet<u8> = model.iter().flat_map(|m| m.blobs.clone()).collect();
                    assert_eq!(
                        blobs.len(),
                        linked.len() + usize::from(any_image),
                        "{linked:?}"
                    );
                    let fsck = s.fsck(false, |p| panic!("after gc: {p}")).await.unwrap();
                    assert_eq!(fsck.problems, 0);
                }
            }
        }
    }

    async fn put(
        s: &ObjectRegistry,
        r: &RepoName,
        m: &[u8],
        media_type: &str,
        tag: Option<usize>,
    ) -> Digest {
        let d = Digest::of(Algorithm::Sha256, m);
        let reference = match tag {
            Some(t) => Reference::Tag(TAGS[t].parse().unwrap()),
            None => Reference::Digest(d.clone()),
        };
        s.manifest_put(r, &reference, Some(media_type), m.to_vec().into(), &[])
            .await
            .unwrap();
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn gc_keeps_what_tags_reach_and_nothing_else(ops in proptest::collection::vec(op(), 1..40)) {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops));
        }
    }
}
