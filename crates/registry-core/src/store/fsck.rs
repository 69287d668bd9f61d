//! Storage verification (`registry fsck`): re-hashes every blob and compares it with its digest,
//! checks that every manifest revision hashes to its digest and parses, that everything it
//! needs is in its repository, that every blob link has its bytes and every tag its manifest.
//! Reads stream and listings are walked as they come, so memory stays bounded on any store.
//!
//! A blob key holding a pointer (see `store::placed`) is checked by hashing the bytes it
//! points to; a pointer to missing bytes is a problem of its own.
//!
//! Repair moves corrupt blobs (a pointer with its bytes), dangling pointers and corrupt
//! manifests aside (under `lost+found/<unix time>/`, nothing is deleted) and drops the links and tags that lead nowhere, so that clients see the content as
//! missing and push it again. Repair is safe while the registry serves: it only ever removes a
//! blob whose bytes are wrong, and only links and tags that lead to nothing.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::ObjectRegistry;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, ManifestKind};
use crate::names::RepoName;

/// Blobs hashed at once (hides the latency of object stores).
const CONCURRENCY: usize = 4;

/// A problem found by [`ObjectRegistry::fsck`]. Each names the key it is about (`path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A blob whose bytes hash to `actual`, not to the digest its key names.
    CorruptBlob {
        /// The blob's key.
        path: String,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// An object under `blobs/` whose key names no digest.
    StrayObject {
        /// The object's key.
        path: String,
    },
    /// A blob's pointer (see `store::placed`) to bytes that are not stored.
    DanglingPointer {
        /// The blob's key.
        path: String,
        /// Where the bytes should be.
        placed: String,
    },
    /// A repository's link to a blob whose bytes are not stored.
    DanglingLink {
        /// The link's key.
        path: String,
    },
    /// A manifest revision that does not hash to its digest or does not parse.
    CorruptManifest {
        /// The revision's key.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A manifest needing a blob or child manifest its repository does not hold.
    MissingReference {
        /// The manifest revision's key.
        path: String,
        /// What it needs.
        digest: Digest,
    },
    /// A tag naming a manifest that is not stored.
    DanglingTag {
        /// The tag's key.
        path: String,
        /// The manifest it names, if it is readable.
        digest: Option<Digest>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptBlob { path, actual } => {
                write!(f, "{path}: corrupt blob: its bytes hash to {actual}")
            }
            Problem::StrayObject { path } => write!(f, "{path}: not a blob key"),
            Problem::DanglingPointer { path, placed } => {
                write!(f, "{path}: points to {placed}, which is missing")
            }
            Problem::DanglingLink { path } => {
                write!(f, "{path}: link to a blob whose bytes are missing")
            }
            Problem::CorruptManifest { path, reason } => {
                write!(f, "{path}: corrupt manifest: {reason}")
            }
            Problem::MissingReference { path, digest } => {
                write!(
                    f,
                    "{path}: needs {digest}, which its repository does not hold"
                )
            }
            Problem::DanglingTag { path, digest } => match digest {
                Some(d) => write!(f, "{path}: tag of {d}, which is not stored"),
                None => write!(f, "{path}: unreadable tag"),
            },
        }
    }
}

/// What [`ObjectRegistry::fsck`] looked at and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FsckSummary {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Blob links checked.
    pub links: u64,
    /// Manifest revisions checked.
    pub manifests: u64,
    /// Tags checked.
    pub tags: u64,
    /// Problems reported.
    pub problems: u64,
    /// Keys moved aside or removed by repair.
    pub repaired: u64,
}

/// What re-hashing one object under `blobs/` found.
enum Checked {
    Sound,
    /// Its key names no digest.
    Stray,
    /// Its bytes hash to this; the second is the placed bytes of a pointer, moved aside with it.
    Corrupt(Digest, Option<Path>),
    /// A pointer to these missing bytes.
    Dangling(Path),
}

/// The digest a blob key names: `blobs/<alg>/<xx>/<hex>/data`.
pub(super) fn blob_digest(path: &Path) -> Option<Digest> {
    let parts: Vec<_> = path.parts().collect();
    match parts.as_slice() {
        [b, alg, xx, hex, data]
            if b.as_ref() == "blobs"
                && data.as_ref() == "data"
                && hex.as_ref().starts_with(xx.as_ref()) =>
        {
            format!("{}:{}", alg.as_ref(), hex.as_ref()).parse().ok()
        }
        _ => None,
    }
}

/// A stored revision's manifest, if its bytes hash to `digest` and parse; else what is wrong.
fn verified_manifest(
    path: &Path,
    raw: bytes::Bytes,
    digest: &Digest,
) -> std::result::Result<manifest::ParsedManifest, String> {
    let (media_type, bytes) =
        super::manifests::decode_revision(path, raw).map_err(|e| e.to_string())?;
    let actual = Digest::of(digest.algorithm(), &bytes);
    if &actual != digest {
        return Err(format!("its bytes hash to {actual}"));
    }
    manifest::parse(Some(&media_type), &bytes).map_err(|e| e.to_string())
}

/// The digest the last two components of a link key name (`…/<alg>/<hex>`).
pub(super) fn link_digest(path: &Path) -> Option<Digest> {
    let parts: Vec<_> = path.parts().collect();
    let [.., alg, hex] = parts.as_slice() else {
        return None;
    };
    format!("{}:{}", alg.as_ref(), hex.as_ref()).parse().ok()
}

impl ObjectRegistry {
    /// Verifies the whole store, calling `report` for each problem; with `repair`, fixes what
    /// it can (see the module documentation).
    /// The run's report is stored for every node to read (see `store::reports`).
    pub async fn fsck(
        &self,
        repair: bool,
        mut report: impl FnMut(&Problem),
    ) -> Result<FsckSummary> {
        let started = super::reports::unix_seconds();
        let mut problems = Vec::new();
        let result = self
            .check_everything(repair, |p| {
                if problems.len() < super::reports::REPORT_PROBLEMS {
                    problems.push(p.to_string());
                }
                report(p);
            })
            .await;
        let stored = super::reports::FsckReport {
            started,
            finished: super::reports::unix_seconds(),
            repair,
            summary: result.as_ref().cloned().unwrap_or_default(),
            problems,
            error: result.as_ref().err().map(ToString::to_string),
        };
        if let Err(e) = self.write_fsck_report(&stored).await {
            tracing::warn!(error = %e, "cannot store the fsck report");
        }
        result
    }

    async fn check_everything(
        &self,
        repair: bool,
        mut report: impl FnMut(&Problem),
    ) -> Result<FsckSummary> {
        let mut summary = FsckSummary::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut found = |p: Problem, s: &mut FsckSummary| {
            s.problems += 1;
            report(&p);
        };

        // Blobs: re-hash each.
        let mut checks = self
            .store
            .list(Some(&layout::blobs_root()))
            .map(|meta| async move {
                let meta = meta?;
                let Some(digest) = blob_digest(&meta.location) else {
                    return Ok::<_, Error>((meta.location, Checked::Stray, meta.size));
                };
                // A pointer's bytes are where it points.
                let pointer = self.pointer_at(&meta).await?;
                let (bytes, size) = match &pointer {
                    Some(p) => (p.path(), p.size),
                    None => (meta.location.clone(), meta.size),
                };
                let checked = match self.hash_object(&bytes, digest.algorithm()).await {
                    Ok(actual) if actual == digest => Checked::Sound,
                    Ok(actual) => Checked::Corrupt(actual, pointer.map(|p| p.path())),
                    Err(Error::Storage(object_store::Error::NotFound { .. }))
                        if pointer.is_some() =>
                    {
                        Checked::Dangling(bytes)
                    }
                    Err(e) => return Err(e),
                };
                Ok((meta.location, checked, size))
            })
            .buffer_unordered(CONCURRENCY);
        let (mut corrupt, mut moved_too) = (Vec::new(), Vec::new());
        while let Some(checked) = checks.next().await {
            let (path, checked, size) = checked?;
            summary.blobs += 1;
            summary.blob_bytes += size;
            let problem = match checked {
                Checked::Sound => continue,
                Checked::Stray => Problem::StrayObject {
                    path: path.to_string(),
                },
                Checked::Corrupt(actual, placed) => {
                    moved_too.extend(placed);
                    Problem::CorruptBlob {
                        path: path.to_string(),
                        actual,
                    }
                }
                Checked::Dangling(placed) => Problem::DanglingPointer {
                    path: path.to_string(),
                    placed: placed.to_string(),
                },
            };
            if !matches!(problem, Problem::StrayObject { .. }) {
                corrupt.push(path);
            }
            found(problem, &mut summary);
        }
        drop(checks);
        if repair {
            // A corrupt pointer's bytes go aside with it; they are not a blob of their own.
            for path in corrupt.iter().chain(&moved_too) {
                match (self.store)
                    .rename(path, &layout::lost_and_found(now, path))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            summary.repaired += corrupt.len() as u64;
        }

        // Repositories: links, then manifests, then tags (so that what repair drops in one
        // step is seen by the next).
        let repos = self.all_repositories().await?;
        for repo in repos.iter() {
            // What one step finds present answers the next step's questions without a request;
            // only a miss is looked up (it may have been written since the listing).
            let linked = self
                .fsck_links(repo, repair, &mut summary, &mut found)
                .await?;
            let revisions = self
                .fsck_manifests(repo, repair, now, &linked, &mut summary, &mut found)
                .await?;
            self.fsck_tags(repo, repair, &revisions, &mut summary, &mut found)
                .await?;
        }
        Ok(summary)
    }

    /// What the object at `path` hashes to.
    pub(super) async fn hash_object(&self, path: &Path, algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(algorithm);
        let mut body = self.store.get(path).await?.into_stream();
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }

    async fn fsck_links(
        &self,
        repo: &RepoName,
        repair: bool,
        summary: &mut FsckSummary,
        found: &mut impl FnMut(Problem, &mut FsckSummary),
    ) -> Result<HashSet<Digest>> {
        let dir = layout::layers_dir(repo);
        let mut links = self
            .store
            .list(Some(&dir))
            .map(|meta| async move {
                let path = meta?.location;
                let digest = link_digest(&path);
                let present = match &digest {
                    Some(d) => self.exists(&layout::blob(d)).await?,
                    None => false,
                };
                Ok::<_, Error>((path, digest.filter(|_| present)))
            })
            .buffer_unordered(CONCURRENCY * 4);
        let mut dangling = Vec::new();
        let mut linked = HashSet::new();
        while let Some(checked) = links.next().await {
            let (path, present) = checked?;
            summary.links += 1;
            if let Some(d) = present {
                linked.insert(d);
            } else {
                found(
                    Problem::DanglingLink {
                        path: path.to_string(),
                    },
                    summary,
                );
                dangling.push(path);
            }
        }
        drop(links);
        if repair {
            for path in dangling {
                self.delete_quiet(&path).await?;
                summary.repaired += 1;
            }
        }
        Ok(linked)
    }

    /// Checks the repository's manifest revisions; returns the digests of those still there.
    async fn fsck_manifests(
        &self,
        repo: &RepoName,
        repair: bool,
        now: u64,
        linked: &HashSet<Digest>,
        summary: &mut FsckSummary,
        found: &mut impl FnMut(Problem, &mut FsckSummary),
    ) -> Result<HashSet<Digest>> {
        // A pull-through cache holds what was pulled: missing references are expected.
        let mirror = self.exists(&layout::mirror_marker(repo)).await?;
        let metas = self.list_all(&layout::revisions_dir(repo)).await?;
        let mut listed: HashSet<Digest> = metas
            .iter()
            .filter_map(|m| link_digest(&m.location))
            .collect();
        for meta in metas {
            let path = meta.location;
            summary.manifests += 1;
            let Some(digest) = link_digest(&path) else {
                let reason = "the key names no digest".to_owned();
                found(
                    Problem::CorruptManifest {
                        path: path.to_string(),
                        reason,
                    },
                    summary,
                );
                continue;
            };
            let Some(raw) = self.get_small(&path).await? else {
                continue; // deleted meanwhile
            };
            let parsed = match verified_manifest(&path, raw, &digest) {
                Ok(parsed) => parsed,
                Err(reason) => {
                    found(
                        Problem::CorruptManifest {
                            path: path.to_string(),
                            reason,
                        },
                        summary,
                    );
                    if repair {
                        let aside = layout::lost_and_found(now, &path);
                        let moved = self.store.rename(&path, &aside).await;
                        self.cache.forget(&path);
                        moved?;
                        summary.repaired += 1;
                        listed.remove(&digest);
                    }
                    continue;
                }
            };
            for d in parsed.required_references().filter(|_| !mirror) {
                let d = &d.digest;
                let present = match parsed.kind {
                    ManifestKind::Image => {
                        linked.contains(d)
                            || (self.exists(&layout::layer_link(repo, d)).await?
                                && self.exists(&layout::blob(d)).await?)
                    }
                    ManifestKind::Index => {
                        listed.contains(d) || self.exists(&layout::revision_link(repo, d)).await?
                    }
                };
                if !present {
                    let problem = Problem::MissingReference {
                        path: path.to_string(),
                        digest: d.clone(),
                    };
                    found(problem, summary);
                }
            }
        }
        Ok(listed)
    }

    async fn fsck_tags(
        &self,
        repo: &RepoName,
        repair: bool,
        revisions: &HashSet<Digest>,
        summary: &mut FsckSummary,
        found: &mut impl FnMut(Problem, &mut FsckSummary),
    ) -> Result<()> {
        let mut dropped = false;
        for meta in self.list_all(&layout::tags_dir(repo)).await? {
            let path = meta.location;
            summary.tags += 1;
            let target = match self.get_json::<serde_json::Value>(&path).await {
                Ok(Some(v)) => v["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
                Ok(None) => continue,
                Err(Error::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            let present = match &target {
                Some(d) => {
                    revisions.contains(d) || self.exists(&layout::revision_link(repo, d)).await?
                }
                None => false,
            };
            if !present {
                found(
                    Problem::DanglingTag {
                        path: path.to_string(),
                        digest: target,
                    },
                    summary,
                );
                if repair {
                    self.delete_quiet(&path).await?;
                    summary.repaired += 1;
                    dropped = true;
                }
            }
        }
        if dropped {
            self.tags_changed(repo).await?;
        }
        Ok(())
    }
}
