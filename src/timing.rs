//! The engine timed over a list of queries, the same loop natively and inside Envoy.
//!
//! How much slower is the rewrite inside the Wasm VM than in native code? Only a loop
//! that runs in the VM answers that without Envoy's per-request costs in the way. The
//! plugin runs [`time_engine`] at start-up when its configuration carries the
//! debug-only `debug_time_engine` setting, and logs the [`EngineTiming`];
//! `promql-tenant time` runs the same function natively on the same queries. The clock
//! comes in as a function: the host's clock in the VM, `Instant` natively.

use crate::{rewrite, ConflictPolicy, Dialect, TenantMatcher};

/// The result of one timed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTiming {
    /// Queries per round.
    pub queries: usize,
    /// Passes over all the queries.
    pub rounds: u32,
    /// Queries the engine accepted in one round (the others were refused).
    pub accepted: usize,
    /// Total bytes of query text per round.
    pub bytes: usize,
    /// Wall time of all rounds, in nanoseconds.
    pub elapsed_ns: u64,
}

impl EngineTiming {
    /// Mean time per query.
    pub fn ns_per_query(&self) -> f64 {
        let runs = self.queries as f64 * f64::from(self.rounds);
        if runs == 0.0 {
            0.0
        } else {
            self.elapsed_ns as f64 / runs
        }
    }

    /// One line of JSON, as the plugin logs it and the CLI prints it.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "queries": self.queries,
            "rounds": self.rounds,
            "accepted": self.accepted,
            "bytes": self.bytes,
            "elapsed_ns": self.elapsed_ns,
            "ns_per_query": self.ns_per_query(),
        })
        .to_string()
    }
}

/// Rewrites every query `rounds` times for `tenant` and measures the whole loop with
/// `clock_ns`. Outputs are dropped as they come, as a request's would be.
pub fn time_engine(
    queries: &[String],
    tenant: &TenantMatcher,
    policy: ConflictPolicy,
    dialect: Dialect,
    rounds: u32,
    mut clock_ns: impl FnMut() -> u64,
) -> EngineTiming {
    let mut accepted = 0;
    let started = clock_ns();
    for round in 0..rounds {
        let mut accepted_this_round = 0;
        for query in queries {
            if std::hint::black_box(rewrite(
                std::hint::black_box(query),
                tenant,
                policy,
                dialect,
            ))
            .is_ok()
            {
                accepted_this_round += 1;
            }
        }
        if round == 0 {
            accepted = accepted_this_round;
        }
    }
    let elapsed_ns = clock_ns().saturating_sub(started);
    EngineTiming {
        queries: queries.len(),
        rounds,
        accepted,
        bytes: queries.iter().map(String::len).sum(),
        elapsed_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn counts_accepted_queries_and_reads_the_clock_around_the_loop() {
        let tenant = TenantMatcher::new("client_id", &["1999".to_string()]).unwrap();
        let queries = vec![
            "up".to_string(),
            "sum(".to_string(),
            "rate(x[5m])".to_string(),
        ];
        let ticks = Cell::new(0u64);
        let timing = time_engine(
            &queries,
            &tenant,
            ConflictPolicy::And,
            Dialect::Promql,
            4,
            || {
                ticks.set(ticks.get() + 1_000);
                ticks.get()
            },
        );
        assert_eq!(
            ticks.get(),
            2_000,
            "the clock is read once before and once after"
        );
        assert_eq!(timing.queries, 3);
        assert_eq!(timing.accepted, 2);
        assert_eq!(timing.bytes, 2 + 4 + 11);
        assert_eq!(timing.elapsed_ns, 1_000);
        assert!((timing.ns_per_query() - 1_000.0 / 12.0).abs() < 1e-9);
        let json: serde_json::Value = serde_json::from_str(&timing.to_json()).unwrap();
        assert_eq!(json["accepted"], 2);
        assert_eq!(json["rounds"], 4);
    }

    #[test]
    fn no_queries_or_no_rounds_is_zero_per_query() {
        let tenant = TenantMatcher::new("t", &["1".to_string()]).unwrap();
        let timing = time_engine(&[], &tenant, ConflictPolicy::And, Dialect::Promql, 3, || 5);
        assert_eq!(timing.ns_per_query(), 0.0);
    }
}
