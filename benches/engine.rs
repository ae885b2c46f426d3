//! Engine throughput over the real-world corpus (`../shared/corpus`, read in place).
//!
//! On the records `promql-parser` 0.11 parses, criterion measures (a) our whole
//! `rewrite` (parse + inject + output, policy `and`, dialect `promql`) and (b)
//! `promql_parser::parser::parse` alone, as the baseline in the same run. Afterwards
//! the bench prints the ratio from interleaved whole-corpus passes (median of each), and
//! the slowest single queries of ours. Run: `cargo bench --bench engine` (about a minute).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{black_box, Criterion, Throughput};
use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, TenantMatcher};
use std::time::{Duration, Instant};

/// Interleaved whole-corpus passes used for the printed ratio.
const RATIO_PASSES: usize = 9;
/// Repetitions per query when looking for the slowest one (the minimum is kept).
const PER_QUERY_REPS: usize = 15;

fn ours(queries: &[String], tenant: &TenantMatcher) -> usize {
    let mut ok = 0;
    for q in queries {
        if black_box(rewrite(
            black_box(q),
            tenant,
            ConflictPolicy::And,
            Dialect::Promql,
        ))
        .is_ok()
        {
            ok += 1;
        }
    }
    ok
}

fn baseline(queries: &[String]) -> usize {
    let mut ok = 0;
    for q in queries {
        if black_box(promql_parser::parser::parse(black_box(q))).is_ok() {
            ok += 1;
        }
    }
    ok
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let records = common::load_corpus();
    let queries: Vec<String> = records
        .into_iter()
        .map(|(_, r)| r.expr)
        .filter(|q| promql_parser::parser::parse(q).is_ok())
        .collect();
    let bytes: usize = queries.iter().map(String::len).sum();
    let tenant = TenantMatcher::new("client_id", &["1999"]).expect("valid tenant");
    let accepted = ours(&queries, &tenant);
    println!(
        "corpus: {} queries that promql-parser parses, {bytes} bytes; our rewrite accepts {accepted}",
        queries.len()
    );

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("corpus");
        group.throughput(Throughput::Elements(queries.len() as u64));
        group.bench_function("ours: rewrite (parse+inject+output)", |b| {
            b.iter(|| ours(&queries, &tenant))
        });
        group.bench_function("promql-parser: parse", |b| b.iter(|| baseline(&queries)));
        group.finish();
    }
    criterion.final_summary();

    // The ratio, from interleaved passes so that both sides see the same machine state.
    let (mut ours_passes, mut base_passes) = (Vec::new(), Vec::new());
    for _ in 0..RATIO_PASSES {
        let start = Instant::now();
        ours(&queries, &tenant);
        ours_passes.push(start.elapsed());
        let start = Instant::now();
        baseline(&queries);
        base_passes.push(start.elapsed());
    }
    let (ours_pass, base_pass) = (median(ours_passes), median(base_passes));
    let per_query = |d: Duration| d.as_secs_f64() * 1e6 / queries.len() as f64;
    println!(
        "whole corpus, median of {RATIO_PASSES} passes: ours {:.2?} ({:.2} µs/query, {:.1} MB/s), \
         promql-parser {:.2?} ({:.2} µs/query)",
        ours_pass,
        per_query(ours_pass),
        bytes as f64 / ours_pass.as_secs_f64() / 1e6,
        base_pass,
        per_query(base_pass),
    );
    println!(
        "ratio: ours is {:.1}x faster than promql-parser's parse alone (target: >= 30x, issue 14)",
        base_pass.as_secs_f64() / ours_pass.as_secs_f64()
    );

    // The slowest single queries of ours, by minimum time over a few repetitions.
    let mut timed: Vec<(Duration, &String)> = queries
        .iter()
        .map(|q| {
            let best = (0..PER_QUERY_REPS)
                .map(|_| {
                    let start = Instant::now();
                    let _ = black_box(rewrite(
                        black_box(q),
                        &tenant,
                        ConflictPolicy::And,
                        Dialect::Promql,
                    ));
                    start.elapsed()
                })
                .min()
                .expect("at least one repetition");
            (best, q)
        })
        .collect();
    timed.sort_by_key(|t| std::cmp::Reverse(t.0));
    println!("slowest queries of ours (min of {PER_QUERY_REPS} runs):");
    for (d, q) in timed.iter().take(5) {
        let start = Instant::now();
        let _ = black_box(promql_parser::parser::parse(black_box(q)));
        let theirs = start.elapsed();
        let shown: String = q.chars().take(120).collect();
        println!(
            "  {d:.2?} ({} bytes, {:.1} ns/byte; promql-parser {theirs:.2?}): {shown:?}",
            q.len(),
            d.as_nanos() as f64 / q.len() as f64
        );
    }
}
