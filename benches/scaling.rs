//! How rewrite time grows with the size of a query (issue 5, measurement 6).
//!
//! Two synthetic families, rewritten natively with policy `and`, dialect `promql`:
//! - breadth: N selectors (1, 10, 100, 1,000) joined by `+`, each `rate(m_i{job="api"}[5m])`;
//! - depth: one selector under D nested calls `abs(abs(...))`, D up to 60 (the parser caps
//!   nesting at 64, see `MAX_NESTING`).
//!
//! Each size is timed in batches long enough for the clock (median of several batches,
//! the sizes interleaved so machine noise hits all of them alike), and the table shows the
//! time per selector (per level): flat means linear. Run: `cargo bench --bench scaling`.

use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, TenantMatcher};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The query of bench/run.py's `GRAFANA_QUERY` (keep the two alike).
const GRAFANA_QUERY: &str = "sum by (service) (rate(http_requests_total{job=\"api\",code=~\"5..\"}[5m])) / sum by (service) (rate(http_requests_total{job=\"api\"}[5m]))";

/// Batches per size; the median is reported.
const SAMPLES: usize = 9;
/// Wall time one batch should take, so that timer resolution does not matter.
const BATCH_TARGET: Duration = Duration::from_millis(20);

fn breadth(selectors: usize) -> String {
    (0..selectors)
        // One matcher each: the lexer counts `=` in matchers towards its cap of 2,000
        // binary operators, so 1,000 selectors with two matchers each are refused.
        .map(|i| format!("rate(http_requests_{i}_total{{job=\"api\"}}[5m])"))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn depth(levels: usize) -> String {
    format!(
        "{}http_requests_total{{job=\"api\"}}{}",
        "abs(".repeat(levels),
        ")".repeat(levels)
    )
}

fn rewrite_once(query: &str, tenant: &TenantMatcher) {
    let out = rewrite(
        black_box(query),
        tenant,
        ConflictPolicy::And,
        Dialect::Promql,
    );
    black_box(out).expect("the synthetic query rewrites");
}

/// Repetitions per batch for `query`, so that a batch takes about `BATCH_TARGET`.
fn calibrate(query: &str, tenant: &TenantMatcher) -> usize {
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed() < BATCH_TARGET / 4 {
        rewrite_once(query, tenant);
        reps += 1;
    }
    (reps * 4).max(1)
}

/// Median time of one rewrite of each query, sizes interleaved across batches.
fn measure(queries: &[String], tenant: &TenantMatcher) -> Vec<Duration> {
    let reps: Vec<usize> = queries.iter().map(|q| calibrate(q, tenant)).collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); queries.len()];
    for _ in 0..SAMPLES {
        for (i, q) in queries.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..reps[i] {
                rewrite_once(q, tenant);
            }
            samples[i].push(start.elapsed() / reps[i] as u32);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect()
}

fn table(title: &str, unit: &str, sizes: &[usize], queries: &[String], tenant: &TenantMatcher) {
    let times = measure(queries, tenant);
    println!("{title}");
    println!(
        "  {:>6} {:>9} {:>12} {:>14} {:>10}",
        unit,
        "bytes",
        "rewrite",
        format!("per {unit}"),
        "vs first"
    );
    let first = times[0].as_secs_f64() * 1e9 / sizes[0] as f64;
    for ((size, query), time) in sizes.iter().zip(queries).zip(&times) {
        let per = time.as_secs_f64() * 1e9 / *size as f64;
        println!(
            "  {size:>6} {:>9} {:>12.2?} {:>11.0} ns {:>9.2}x",
            query.len(),
            time,
            per,
            per / first
        );
    }
    // Least-squares slope and intercept: time = a + b * size.
    let n = sizes.len() as f64;
    let xs: Vec<f64> = sizes.iter().map(|&s| s as f64).collect();
    let ys: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e9).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (y - intercept - slope * x).powi(2))
        .sum();
    let ss_tot: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    println!(
        "  linear fit: {intercept:.0} ns + {slope:.0} ns per {unit}, R^2 = {:.5}",
        1.0 - ss_res / ss_tot
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let tenant = TenantMatcher::new("client_id", &["1999"]).expect("valid tenant");

    let sizes = [1, 10, 100, 1000];
    let queries: Vec<String> = sizes.iter().map(|&n| breadth(n)).collect();
    table(
        "breadth: N selectors `rate(m_i{job=\"api\"}[5m])` joined by `+`",
        "sel",
        &sizes,
        &queries,
        &tenant,
    );

    // The Grafana query bench/run.py sends through Envoy, for the V8 against native
    // comparison of BENCHMARKS.md (measurement 2).
    let grafana = [GRAFANA_QUERY.to_string()];
    let time = measure(&grafana, &tenant)[0];
    println!("bench/run.py's Grafana query natively: {time:.2?} per rewrite");

    let levels = [1, 4, 16, 60];
    let queries: Vec<String> = levels.iter().map(|&d| depth(d)).collect();
    table(
        "depth: one selector under D nested `abs(...)`",
        "level",
        &levels,
        &queries,
        &tenant,
    );
}
