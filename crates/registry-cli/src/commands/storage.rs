//! `registry gc` and `registry fsck`: maintenance of an instance's storage, or of storage named
//! by its location.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use registry_core::open::StorageLocation;

use super::run;
use crate::{config, instance};

/// Which storage a maintenance command works on.
#[derive(Args)]
pub(crate) struct StoreArg {
    /// The instance whose storage to use [default: default].
    #[arg(long, conflicts_with = "storage")]
    pub instance: Option<String>,
    /// A storage location instead (a directory, file:// or s3://bucket/prefix; S3 settings
    /// from AWS_* variables).
    #[arg(long)]
    pub storage: Option<String>,
}

impl StoreArg {
    fn location(&self, home: &Path) -> anyhow::Result<StorageLocation> {
        match &self.storage {
            Some(s) => config::parse_storage(s),
            None => {
                let name = self.instance.as_deref().unwrap_or(instance::DEFAULT);
                Ok(instance::Instance::open(home, name)?.settings()?.storage)
            }
        }
    }
}

/// The arguments of `registry gc`.
#[derive(Args)]
pub(crate) struct GcArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Manifests no tag reaches are garbage too (children of tagged indexes and referrers
    /// of kept manifests stay).
    #[arg(long)]
    pub delete_untagged: bool,
    /// Keep whatever was written more recently than this (e.g. 0s, 30m) [default: the
    /// instance's gc.grace, else 1h].
    #[arg(long, value_name = "DURATION")]
    pub grace_period: Option<String>,
    /// Take over the lease of a collection that was killed, instead of waiting up to a
    /// minute for it to expire. Make sure no other collection runs.
    #[arg(long)]
    pub break_lease: bool,
    /// Evict pull-through caches no one pulled from for this long (e.g. 30d) [default: the
    /// instance's gc.mirror_max_unused, else never].
    #[arg(long, value_name = "DURATION")]
    pub mirror_max_unused: Option<String>,
    /// Evict the least recently pulled caches while the caches hold more than this (e.g.
    /// 100GiB) [default: the instance's gc.mirror_max_bytes, else no quota].
    #[arg(long, value_name = "SIZE")]
    pub mirror_max_bytes: Option<String>,
}

/// The arguments of `registry fsck`.
#[derive(Args)]
pub(crate) struct FsckArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Fix what can be fixed (see above).
    #[arg(long)]
    pub repair: bool,
}

/// `registry gc`.
pub(crate) fn gc(home: &Path, args: GcArgs) -> anyhow::Result<()> {
    let GcArgs {
        store,
        dry_run,
        delete_untagged,
        grace_period,
        break_lease,
        mirror_max_unused,
        mirror_max_bytes,
    } = args;
    let (location, mut options) = match &store.storage {
        Some(s) => (
            config::parse_storage(s)?,
            registry_core::GcOptions::default(),
        ),
        None => {
            let name = store.instance.as_deref().unwrap_or(instance::DEFAULT);
            let settings = instance::Instance::open(home, name)?.settings()?;
            (
                settings.storage.clone(),
                super::serve::gc_options(&settings),
            )
        }
    };
    options.dry_run = dry_run;
    options.break_lease = break_lease;
    options.delete_untagged |= delete_untagged;
    if let Some(g) = grace_period {
        options.grace = config::parse_duration(&g).context("--grace-period")?;
    }
    if let Some(m) = mirror_max_unused {
        options.mirror_max_unused =
            Some(config::parse_duration(&m).context("--mirror-max-unused")?);
    }
    if let Some(b) = mirror_max_bytes {
        options.mirror_max_bytes = Some(config::parse_size(&b).context("--mirror-max-bytes")?);
    }
    run(async move {
        let registry = registry_core::open::open(&location)?.registry();
        let verb = if dry_run { "would delete" } else { "deleted" };
        let summary = match registry
            .gc(&options, |d| {
                println!("{verb} {} {} ({} bytes)", d.kind, d.path, d.size)
            })
            .await
        {
            Ok(summary) => summary,
            Err(e @ registry_core::Error::GcRunning { .. }) => {
                anyhow::bail!("{e}; --break-lease takes it over")
            }
            Err(e) => return Err(anyhow::Error::new(e).context("gc stopped")),
        };
        println!(
            "{verb}: {} manifests, {} links, {} blobs; {} bytes freed; {} upload sessions removed; {} kept because a push needed them",
            summary.manifests, summary.links, summary.blobs, summary.bytes, summary.uploads, summary.pinned
        );
        if summary.evicted > 0 {
            println!(
                "evicted {} pull-through caches ({} tags)",
                summary.evicted, summary.tags
            );
        }
        Ok(())
    })
}

/// `registry fsck`.
pub(crate) fn fsck(home: &Path, args: FsckArgs) -> anyhow::Result<()> {
    let location = args.store.location(home)?;
    run(check_storage(location, args.repair))
}

async fn check_storage(location: StorageLocation, repair: bool) -> anyhow::Result<()> {
    let registry = registry_core::open::open(&location)?.registry();
    let summary = registry
        .fsck(repair, |problem| println!("{problem}"))
        .await
        .context("fsck stopped")?;
    println!(
        "checked {} blobs ({} bytes), {} links, {} manifests, {} tags: {} problems{}",
        summary.blobs,
        summary.blob_bytes,
        summary.links,
        summary.manifests,
        summary.tags,
        summary.problems,
        if repair {
            format!(", {} keys repaired", summary.repaired)
        } else {
            String::new()
        }
    );
    if summary.problems > 0 && !repair {
        anyhow::bail!(
            "{} problems found; `registry fsck --repair` fixes what it can",
            summary.problems
        );
    }
    Ok(())
}
