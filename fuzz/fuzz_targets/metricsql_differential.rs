//! Fuzz target: the filter against VictoriaMetrics' own parser (the metricsql oracle,
//! `tests/metricsql_oracle/`, one Go process for the whole run, over pipes).
//!
//! Input: one flag byte (dialect, tenant), then the query as UTF-8. Every query the
//! filter accepts, in either dialect, is read by metricsql as VictoriaMetrics 1.79 reads
//! it. Invariants (a violation is a crash): no selector metricsql finds, in its parse,
//! in the re-parse of its printout or in the query `Optimize` hands to the engine, lacks
//! the tenant matcher; the printout parses again; neither `Optimize` nor evaluating a
//! window, step or offset panics (each takes the backend down); metricsql counts as many
//! selectors as the filter did (unless a default `WITH` template repeats one). An output
//! metricsql refuses is not a finding (the backend refuses it too); nor, in dialect
//! `promql`, is Prometheus-only syntax.

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, TenantMatcher};
use promql_tenant_filter_fuzz::metricsql::{findings, Finding, Oracle, DEFAULT_TEMPLATES};
use promql_tenant_filter_fuzz::ExpectedMatcher;
use std::sync::{Mutex, OnceLock};

/// VictoriaMetrics' `-search.maxQueryLen` default: it refuses a longer query before
/// parsing it. metricsql's parse and `Optimize` are quadratic in operator chains (a
/// chain of 1,000 divisions takes the oracle 0.6 s, and timed out a run under load),
/// so longer outputs are left out rather than slowing the whole run.
const MAX_QUERY_LEN: usize = 16 * 1024;

/// Tenants chosen to stress quoting and regex escaping.
const TENANTS: [&[&str]; 4] = [&["1999"], &["1999", "20.0"], &["x\"y\\z"], &["a|b", "c"]];

fn oracle() -> &'static Mutex<Oracle> {
    static ORACLE: OnceLock<Mutex<Oracle>> = OnceLock::new();
    ORACLE.get_or_init(|| Mutex::new(Oracle::start()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let dialect = if flags & 1 == 0 {
        Dialect::Promql
    } else {
        Dialect::Metricsql
    };
    let values = TENANTS[usize::from(flags >> 1) & 0b11];
    let tenant = TenantMatcher::new("client_id", values).expect("fixed tenants are valid");
    let expected = ExpectedMatcher::new("client_id", values);
    let Ok(output) = rewrite(query, &tenant, ConflictPolicy::And, dialect) else {
        return;
    };
    if output.len() > MAX_QUERY_LEN {
        return;
    }
    let expr = parse(query, dialect).expect("what rewrite accepts parses");
    let mut selectors = 0;
    let mut templates = false;
    expr.for_each_node(&mut |e| match &e.kind {
        promql_tenant_filter::promql::ast::ExprKind::Selector(_) => selectors += 1,
        promql_tenant_filter::promql::ast::ExprKind::Call(c) => {
            templates |= DEFAULT_TEMPLATES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(c.name))
        }
        _ => {}
    });
    let mut oracle = oracle().lock().unwrap_or_else(|p| p.into_inner());
    let verdict = oracle.judge(&output);
    for finding in findings(&verdict, &expected, selectors) {
        let harmless = match &finding {
            Finding::DoesNotParse(_) | Finding::ReprintDiffers { .. } => true,
            Finding::SelectorCount { .. } => templates,
            _ => false,
        };
        assert!(
            harmless,
            "{finding:?}\n  dialect {dialect:?}\n  input {query:?}\n  output {output:?}"
        );
    }
});
