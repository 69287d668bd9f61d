//! `registry-bench URL [--compare URL]`: drives registries over the HTTP API and prints a
//! Markdown table. With `--compare`, the two run alternately (A, B, A, B, …) for each workload,
//! so machine noise falls on both alike, and the table shows A/B ratios.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use registry_benches::report::{summarize, table, Sample};
use registry_benches::server::usage;
use registry_benches::workloads::{prepare, run, warm, Sizes, Target, Workload};

/// Load benchmark for OCI registries.
#[derive(Parser)]
#[command(name = "registry-bench", version)]
struct Args {
    /// The registry under test, e.g. http://127.0.0.1:5000.
    url: String,
    /// PID of that registry's server process (for CPU seconds and peak RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// A second registry to compare against.
    #[arg(long)]
    compare: Option<String>,
    /// PID of the second registry.
    #[arg(long)]
    compare_pid: Option<u32>,
    /// Labels of the two registries in the table.
    #[arg(long, default_value = "A")]
    label: String,
    #[arg(long, default_value = "B")]
    compare_label: String,
    /// Rounds per workload.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Shrinks every size and count (0.01 for a quick smoke run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The PATCH size of `push-chunked`, in MiB.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    chunk_mib: u32,
    /// Log in to the registry under test with HTTP Basic (`user:password`).
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Option<String>,
    /// Log in to the second registry with HTTP Basic (`user:password`).
    #[arg(long, value_name = "USER:PASSWORD")]
    compare_basic_auth: Option<String>,
    /// Send this `Authorization` value with every request to the registry under test (e.g.
    /// `Bearer <token>`), instead of --basic-auth.
    #[arg(long, value_name = "VALUE", conflicts_with = "basic_auth")]
    authorization: Option<String>,
    /// The same for the second registry.
    #[arg(long, value_name = "VALUE", conflicts_with = "compare_basic_auth")]
    compare_authorization: Option<String>,
    /// Also write the table to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The `Authorization` value a target sends: Basic from `user:password`, or as given.
fn credentials(basic: Option<&str>, raw: Option<&str>) -> Option<String> {
    use base64::Engine;
    match (basic, raw) {
        (Some(b), _) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(b)
        )),
        (None, raw) => raw.map(str::to_owned),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let sizes = Sizes {
        scale: args.scale,
        chunk: args.chunk_mib as usize * 1024 * 1024,
    };
    let mut targets = vec![Target::new(
        &args.label,
        &args.url,
        args.pid,
        1,
        credentials(args.basic_auth.as_deref(), args.authorization.as_deref()),
    )?];
    if let Some(url) = &args.compare {
        targets.push(Target::new(
            &args.compare_label,
            url,
            args.compare_pid,
            2,
            credentials(
                args.compare_basic_auth.as_deref(),
                args.compare_authorization.as_deref(),
            ),
        )?);
    }
    for t in &mut targets {
        eprintln!("preparing {} ({})", t.label, t.base);
        prepare(t, sizes, &workloads)
            .await
            .with_context(|| format!("preparing {}", t.label))?;
    }
    let mut rows = Vec::new();
    for &w in &workloads {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
        for round in 0..args.rounds {
            for (i, t) in targets.iter().enumerate() {
                settle(w)?;
                let failed = || format!("{} round {round} against {}", w.name(), t.label);
                warm(t, w).await.with_context(failed)?;
                let before = t.pid.and_then(usage);
                let mut sample = run(t, w, round, sizes).await.with_context(failed)?;
                let after = t.pid.and_then(usage);
                if let (Some(b), Some(a)) = (before, after) {
                    sample.cpu = Some(a.cpu.saturating_sub(b.cpu));
                }
                eprintln!(
                    "{:<14} round {round} {:<12} {:>8.2} s  {} requests",
                    w.name(),
                    t.label,
                    sample.elapsed.as_secs_f64(),
                    sample.requests
                );
                samples[i].push(sample);
            }
        }
        rows.push((w, samples.iter().map(|s| summarize(w, s)).collect()));
    }
    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    let rss: Vec<Option<u64>> = targets
        .iter()
        .map(|t| t.pid.and_then(usage).map(|u| u.peak_rss))
        .collect();
    let out = table(&labels, &rows, &rss);
    print!("{out}");
    if let Some(path) = &args.output {
        std::fs::write(path, &out)?;
    }
    Ok(())
}

/// Writes back what earlier rounds left dirty in the page cache before a round starts, so no
/// round pays for another's writeback: Distribution does not fsync, and without this the round
/// after one of its pushes ran while the kernel wrote back its gigabytes (our manifest PUTs,
/// which fsync, were up to 30 % slower in the first round after the push workloads). With
/// `REGISTRY_BENCH_DROP_CACHES` set (root only) it then drops the clean page cache before a
/// push round: pushes into a full cache pay for reclaiming it (four rounds of 1 GiB in 8 MiB
/// chunks took 3.35-4.60 s without, 3.67-3.98 s with; Distribution's rounds likewise). Other
/// rounds keep it: a manifest PUT round after a drop first reads from disk what it checks
/// (its first round was 25 % slower than the next, for both servers).
fn settle(w: Workload) -> Result<()> {
    let status = std::process::Command::new("sync")
        .status()
        .context("running sync")?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    let push = matches!(
        w,
        Workload::PushMono | Workload::PushChunked | Workload::PushStreamed
    );
    if push && std::env::var_os("REGISTRY_BENCH_DROP_CACHES").is_some() {
        std::fs::write("/proc/sys/vm/drop_caches", "1").context("dropping the page cache")?;
    }
    Ok(())
}
