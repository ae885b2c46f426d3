//! What the fuzz targets share: the configurations they run under, and the oracles that
//! judge an output independently of the engine (`promql-parser` for PromQL, Go's own
//! `net/http`, `net/url` and `mime` through the Go form oracle for what a backend reads
//! from a URL, a form body or a `Content-Type`).
//!
//! A violated invariant panics with the reason, which libFuzzer reports as a crash and
//! saves the input under `fuzz/artifacts/<target>/`.

use promql_parser::label::Matcher;
use promql_parser::parser::Expr;
use promql_tenant_filter::config::Config;
use promql_tenant_filter::Dialect;
use std::cell::{Cell, RefCell};
use std::panic;
use std::sync::Once;

thread_local! {
    static IN_ORACLE: Cell<bool> = const { Cell::new(false) };
}

/// `promql-parser` itself, where it does not panic. It does panic on some inputs our
/// parser accepts (`foo[9.5e90]`: a float range too large for a `Duration`); that is the
/// oracle's bug, not a finding, so such an input counts as "the oracle cannot read it".
/// libfuzzer-sys's panic hook aborts the process, so it is silenced while the oracle runs.
pub fn oracle_parse(text: &str) -> Option<Expr> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_ORACLE.with(Cell::get) {
                fuzzer_hook(info);
            }
        }));
    });
    IN_ORACLE.with(|flag| flag.set(true));
    let parsed = panic::catch_unwind(|| promql_parser::parser::parse(text).ok());
    IN_ORACLE.with(|flag| flag.set(false));
    parsed.ok().flatten()
}

// The oracle's selector walk, expected matcher and Go's QuoteMeta are the integration
// tests' own (tests/common), so the fuzzer and `make test` judge output the same way.
#[path = "../../tests/common/mod.rs"]
mod common;
pub use common::{for_each_selector_mut, metricsql, quote_meta, ExpectedMatcher};

// The Go form oracle's client is the integration tests' own (tests/go_form_oracle), so
// that fuzzing and `make test` ask Go the same questions.
#[path = "../../tests/go_form_oracle/mod.rs"]
mod go_oracle;
pub use go_oracle::{compare, forwarded_request, GoOracle, GoString, HandlerView};

thread_local! {
    static GO: RefCell<Option<GoOracle>> = const { RefCell::new(None) };
}

/// Asks the Go form oracle, started (and built from the repository's sources) on the
/// first call of the process: a child process that lives as long as the fuzzer.
pub fn with_go<R>(ask: impl FnOnce(&mut GoOracle) -> R) -> R {
    GO.with(|cell| {
        let mut slot = cell.borrow_mut();
        let oracle = slot.get_or_insert_with(|| {
            GoOracle::start(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.."
            )))
        });
        ask(oracle)
    })
}

/// Where `promql-parser` reads `output`: every selector (each or-branch of one) must
/// end with the tenant matcher. Returns the AST with those matchers removed, or `None`
/// when promql-parser does not read `output` at all (MetricsQL, or a grammar corner it
/// lacks); `Err` names the first selector without the matcher.
pub fn strip_tenant_matchers(
    output: &str,
    tenant: &ExpectedMatcher,
) -> Result<Option<Expr>, String> {
    let Some(mut ast) = oracle_parse(output) else {
        return Ok(None);
    };
    let mut problem = None;
    for_each_selector_mut(&mut ast, &mut |vs| {
        let shown = vs.to_string();
        let m = &mut vs.matchers;
        let groups: Vec<&mut Vec<Matcher>> = if m.or_matchers.is_empty() {
            vec![&mut m.matchers]
        } else {
            if !m.matchers.is_empty() {
                problem.get_or_insert(format!("selector {shown}: matchers outside or-branches"));
            }
            m.or_matchers.iter_mut().collect()
        };
        for group in groups {
            match group.last() {
                Some(last) if tenant.is(last) => {
                    group.pop();
                }
                _ => {
                    problem.get_or_insert(format!(
                        "selector {shown} lacks the tenant matcher {}{}{:?}",
                        tenant.label, tenant.op, tenant.value
                    ));
                }
            }
        }
    });
    match problem {
        Some(p) => Err(p),
        None => Ok(Some(ast)),
    }
}

/// Checks one rewritten PromQL value: our parser reads it back, and where promql-parser
/// reads it, every selector carries the tenant matcher.
pub fn check_confined(output: &str, dialect: Dialect, tenant: &ExpectedMatcher) {
    if let Err(e) = promql_tenant_filter::parse(output, dialect) {
        panic!("our own output does not re-parse: {e}\n  output: {output:?}");
    }
    if let Err(e) = strip_tenant_matchers(output, tenant) {
        panic!("unconfined output: {e}\n  output: {output:?}");
    }
}

/// Byte-driven configuration choice, so that libFuzzer explores the policies, dialects
/// and identity sources too.
pub fn config_from_flags(flags: u8) -> Config {
    let policy = match flags & 0b11 {
        0 => "replace",
        1 => "reject",
        _ => "and",
    };
    let dialect = if flags & 0b100 == 0 {
        "promql"
    } else {
        "metricsql"
    };
    let label = if flags & 0b1000 == 0 {
        "client_id"
    } else {
        "tenant.id"
    };
    let extra_label = flags & 0b1_0000 != 0;
    let identity = if flags & 0b10_0000 == 0 {
        r#"{"source":"userinfo","cluster":"idp","claim":"client_id"}"#
    } else {
        r#"{"source":"jwt_payload_header","claim":"client_id"}"#
    };
    let max_body_bytes = if flags & 0b100_0000 == 0 {
        1_048_576
    } else {
        64
    };
    // Prometheus reads PromQL only and ignores extra_label: the config refuses both.
    let prometheus = flags & 0b1000_0000 != 0;
    let (backend, dialect, extra_label) = if prometheus {
        ("prometheus", "promql", false)
    } else {
        ("victoriametrics", dialect, extra_label)
    };
    // Writes on VictoriaMetrics under one of the two policy values that mean "and", so
    // that every other combination keeps the default, writes denied.
    let writes = if !prometheus && flags & 0b11 == 0b11 {
        "victoriametrics"
    } else {
        "deny"
    };
    let json = serde_json::json!({
        "backend": backend,
        "writes": writes,
        "tenant_label": label,
        "on_conflict": policy,
        "dialect": dialect,
        "victoriametrics_extra_label": extra_label,
        "max_body_bytes": max_body_bytes,
        "identity": serde_json::from_str::<serde_json::Value>(identity).unwrap(),
    });
    // A label like `tenant.id` cannot go into VictoriaMetrics' `extra_label`; the
    // config refuses that pairing, so fall back to the plain label for it.
    Config::parse(json.to_string().as_bytes()).unwrap_or_else(|_| {
        let mut json = json;
        json["tenant_label"] = "client_id".into();
        Config::parse(json.to_string().as_bytes()).expect("the fuzz configs are valid")
    })
}
