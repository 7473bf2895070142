//! Timing for the benchmark binaries: sorted samples and their percentiles.

use std::time::Instant;

use anyhow::Result;

/// `n` timed runs of `f` after `warmup` untimed ones; milliseconds, sorted.
pub fn timed(warmup: usize, n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// The `p`th percentile of sorted samples.
pub fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

pub fn report_line(what: &str, v: &[f64]) {
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        pct(v, 50),
        pct(v, 99),
        v[v.len() - 1],
        v.len()
    );
}
