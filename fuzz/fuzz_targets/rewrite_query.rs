//! Fuzz target: the PromQL parser and tenant injector (`rewrite`).
//!
//! Input: one flag byte (policy, dialect, tenant), then the query as UTF-8.
//! Invariants: no panic; an accepted query's output re-parses in our parser; where
//! promql-parser reads the output, every selector ends with the tenant matcher; and
//! under policy `and` in dialect `promql`, when promql-parser also reads the input,
//! removing those matchers gives back the input's AST (the rewrite added, never changed).

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, TenantMatcher};
use promql_tenant_filter_fuzz::{
    check_confined, oracle_parse, strip_tenant_matchers, ExpectedMatcher,
};

/// Tenants chosen to stress quoting and regex escaping.
const TENANTS: [(&str, &[&str]); 4] = [
    ("client_id", &["1999"]),
    ("client_id", &["1999", "20.0"]),
    ("tenant.id", &["x\"y\\z"]),
    ("client_id", &["a|b", "c", "a|b"]),
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let policy = match flags & 0b11 {
        0 => ConflictPolicy::Replace,
        1 => ConflictPolicy::Reject,
        _ => ConflictPolicy::And,
    };
    let dialect = if flags & 0b100 == 0 {
        Dialect::Promql
    } else {
        Dialect::Metricsql
    };
    let (label, values) = TENANTS[usize::from(flags >> 3) & 0b11];
    let tenant = TenantMatcher::new(label, values).expect("fixed tenants are valid");
    let expected = ExpectedMatcher::new(label, values);

    let Ok(output) = rewrite(query, &tenant, policy, dialect) else {
        return;
    };
    check_confined(&output, dialect, &expected);

    if policy == ConflictPolicy::And && dialect == Dialect::Promql {
        if let Some(original) = oracle_parse(query) {
            match strip_tenant_matchers(&output, &expected) {
                Ok(Some(stripped)) => assert!(
                    stripped == original,
                    "the rewrite changed the query beyond adding the matcher\n  input: {query:?}\n  output: {output:?}\n  original: {original}\n  stripped: {stripped}"
                ),
                Ok(None) => panic!(
                    "promql-parser reads the input but not our output\n  input: {query:?}\n  output: {output:?}"
                ),
                Err(e) => panic!("unconfined output: {e}\n  output: {output:?}"),
            }
        }
    }
});
