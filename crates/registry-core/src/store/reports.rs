//! What the last garbage collection and the last fsck found, kept in storage so that every node
//! (and the web interface's administrators) can read it: `reports/gc.json` and
//! `reports/fsck.json`, each written whole when a run ends (a failed run says why, and a failed
//! collection keeps the usage the last finished one measured). A dry run writes nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ObjectRegistry;
use crate::error::Result;
use crate::layout;
use crate::store::{FsckSummary, GcSummary};

/// The most problems a fsck report keeps (the count is in its summary).
pub const REPORT_PROBLEMS: usize = 100;

/// What a repository's kept manifests reference, as a collection measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoUsage {
    /// The repository.
    pub repository: String,
    /// Bytes of the blobs its kept manifests reference (each blob once; a layer two
    /// repositories share counts in both).
    pub bytes: u64,
    /// Those blobs.
    pub blobs: u64,
    /// Manifests kept.
    pub manifests: u64,
}

/// The last garbage collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// When it began and ended, unix seconds.
    pub started: u64,
    /// When it ended.
    pub finished: u64,
    /// What it deleted.
    pub summary: GcSummary,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Usage per repository, largest first (from the last collection that finished).
    pub usage: Vec<RepoUsage>,
}

/// The last fsck.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    /// When it began, unix seconds.
    pub started: u64,
    /// When it ended.
    pub finished: u64,
    /// Whether it repaired what it found.
    pub repair: bool,
    /// What it checked and found.
    pub summary: FsckSummary,
    /// The first [`REPORT_PROBLEMS`] problems, as `registry fsck` prints them.
    pub problems: Vec<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Unix seconds now.
pub(super) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ObjectRegistry {
    /// The report of the last garbage collection, if one ran.
    pub async fn last_gc(&self) -> Result<Option<GcReport>> {
        self.get_json(&layout::gc_report()).await
    }

    /// The report of the last fsck, if one ran.
    pub async fn last_fsck(&self) -> Result<Option<FsckReport>> {
        self.get_json(&layout::fsck_report()).await
    }

    pub(super) async fn write_gc_report(&self, mut report: GcReport) -> Result<()> {
        if report.error.is_some() {
            if let Ok(Some(previous)) = self.last_gc().await {
                report.usage = previous.usage;
            }
        }
        report.usage.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| a.repository.cmp(&b.repository))
        });
        self.put_json(&layout::gc_report(), &report).await
    }

    pub(super) async fn write_fsck_report(&self, report: &FsckReport) -> Result<()> {
        self.put_json(&layout::fsck_report(), report).await
    }
}
