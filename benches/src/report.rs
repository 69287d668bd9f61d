//! Samples and their summary as a Markdown table. Per workload the headline figure is the
//! median over rounds; percentiles are taken over every request of every round.

use std::time::Duration;

use crate::workloads::Workload;

/// What one round of one workload measured.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Wall time of the round.
    pub elapsed: Duration,
    /// Requests sent.
    pub requests: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Latency of each request (or request group).
    pub latencies: Vec<Duration>,
    /// Server CPU time used during the round, when its PID is known.
    pub cpu: Option<Duration>,
}

/// One workload's figures on one target.
#[derive(Clone, Debug)]
pub struct Summary {
    /// MiB/s for byte workloads, requests/s otherwise (median over rounds).
    pub rate: f64,
    /// The slowest round's rate.
    pub min_rate: f64,
    /// The fastest round's rate.
    pub max_rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Server CPU seconds per GiB moved, or per 1 000 requests.
    pub cpu_per_unit: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Summarizes the rounds of one workload on one target.
pub fn summarize(w: Workload, samples: &[Sample]) -> Summary {
    let mut rates: Vec<f64> = samples
        .iter()
        .map(|s| {
            let secs = s.elapsed.as_secs_f64().max(1e-9);
            if w.moves_bytes() {
                s.bytes as f64 / 1048576.0 / secs
            } else {
                s.requests as f64 / secs
            }
        })
        .collect();
    rates.sort_by(|a, b| a.total_cmp(b));
    let mut all: Vec<Duration> = samples
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    all.sort();
    let cpu: Option<f64> = samples.iter().map(|s| s.cpu.map(|c| c.as_secs_f64())).sum();
    let units: f64 = if w.moves_bytes() {
        samples
            .iter()
            .map(|s| s.bytes as f64 / (1u64 << 30) as f64)
            .sum()
    } else {
        samples.iter().map(|s| s.requests as f64 / 1000.0).sum()
    };
    Summary {
        rate: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        min_rate: rates.first().copied().unwrap_or(0.0),
        max_rate: rates.last().copied().unwrap_or(0.0),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        cpu_per_unit: cpu.map(|c| c / units.max(1e-9)),
    }
}

fn unit(w: Workload) -> (&'static str, &'static str) {
    if w.moves_bytes() {
        ("MiB/s", "CPU s/GiB")
    } else {
        ("req/s", "CPU s/1k req")
    }
}

/// The median rate with the slowest and fastest rounds'.
fn spread(s: &Summary) -> String {
    format!("{:.0} ({:.0}–{:.0})", s.rate, s.min_rate, s.max_rate)
}

fn cpu(c: Option<f64>) -> String {
    c.map_or("–".into(), |c| format!("{c:.3}"))
}

/// A Markdown table: one target, or two with ratios A/B.
pub fn table(
    labels: &[String],
    rows: &[(Workload, Vec<Summary>)],
    peak_rss: &[Option<u64>],
) -> String {
    let mut out = String::new();
    if labels.len() == 2 {
        let (a, b) = (&labels[0], &labels[1]);
        out += &format!("| workload | unit | {a} (min–max) | {b} (min–max) | {a}/{b} | p99 ms {a} | p99 ms {b} | p99 {a}/{b} | CPU {a} | CPU {b} | CPU {a}/{b} |\n");
        out += "|---|---|---|---|---|---|---|---|---|---|---|\n";
        for (w, s) in rows {
            let (u, cu) = unit(*w);
            let ratio = |x: f64, y: f64| {
                if y > 0.0 {
                    format!("{:.2}", x / y)
                } else {
                    "–".into()
                }
            };
            let cpu_ratio = match (s[0].cpu_per_unit, s[1].cpu_per_unit) {
                (Some(x), Some(y)) => ratio(x, y),
                _ => "–".into(),
            };
            out += &format!(
                "| {} | {u} | {} | {} | **{}** | {:.1} | {:.1} | {} | {} | {} | {} ({cu}) |\n",
                w.name(),
                spread(&s[0]),
                spread(&s[1]),
                ratio(s[0].rate, s[1].rate),
                s[0].p99_ms,
                s[1].p99_ms,
                ratio(s[0].p99_ms, s[1].p99_ms),
                cpu(s[0].cpu_per_unit),
                cpu(s[1].cpu_per_unit),
                cpu_ratio,
            );
        }
    } else {
        out += "| workload | rate | p50 ms | p99 ms | server CPU |\n|---|---|---|---|---|\n";
        for (w, s) in rows {
            let (u, cu) = unit(*w);
            out += &format!(
                "| {} | {:.0} {u} | {:.1} | {:.1} | {} {cu} |\n",
                w.name(),
                s[0].rate,
                s[0].p50_ms,
                s[0].p99_ms,
                cpu(s[0].cpu_per_unit)
            );
        }
    }
    for (label, rss) in labels.iter().zip(peak_rss) {
        if let Some(rss) = rss {
            out += &format!("\nPeak RSS of {label}: {:.1} MiB", *rss as f64 / 1048576.0);
        }
    }
    if peak_rss.len() == 2 {
        if let (Some(a), Some(b)) = (peak_rss[0], peak_rss[1]) {
            out += &format!(" (ratio {:.2})", a as f64 / b as f64);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        let s = |ms: u64, bytes: u64| Sample {
            elapsed: Duration::from_secs(1),
            requests: 10,
            bytes,
            latencies: (1..=ms).map(Duration::from_millis).collect(),
            cpu: Some(Duration::from_millis(500)),
        };
        let sum = summarize(
            Workload::Pull,
            &[s(100, 1 << 20), s(100, 3 << 20), s(100, 2 << 20)],
        );
        assert_eq!(sum.rate.round(), 2.0);
        assert_eq!((sum.min_rate.round(), sum.max_rate.round()), (1.0, 3.0));
        assert_eq!(sum.p99_ms.round(), 99.0);
        let sum = summarize(Workload::BlobHead, &[s(10, 0)]);
        assert_eq!(sum.rate.round(), 10.0);
        assert_eq!(sum.cpu_per_unit.map(|c| c.round()), Some(50.0));
        let t = table(
            &["a".into(), "b".into()],
            &[(Workload::Pull, vec![sum.clone(), sum])],
            &[Some(1 << 20), Some(1 << 21)],
        );
        assert!(t.contains("**1.00**") && t.contains("ratio 0.50"), "{t}");
        assert!(t.contains("| 10 (10–10) |"), "{t}");
    }
}
