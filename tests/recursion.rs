//! Every recursive form of the language, at the deepest the filter accepts and one step
//! over, in both dialects, on a small stack: accepted (or refused for another reason)
//! without overflowing, then refused as too deep. And at 100,000 levels, refused.
//!
//! The forms and their largest sizes are the ones `tests/e2e/test_hostile_depth.py`
//! sends through the real Envoy, where V8's stack is far smaller than the native one
//! (docs/security.md, "Recursion"). Keep the two tables in step.

use promql_tenant_filter::promql::lexer::{MAX_BINARY_OPERATORS, MAX_NESTING};
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, TenantMatcher};

/// A recursive form: its name, the query of size `n`, and the largest `n` accepted
/// (deeper queries are refused as "nests too deeply" or "too many operators").
struct Form {
    name: &'static str,
    query: fn(usize) -> String,
    largest: usize,
}

impl Form {
    /// The dialects whose grammar takes the form at all (in the others it is a syntax
    /// error at any size). The chains of modifiers parse in PromQL, where the checks
    /// then refuse them; MetricsQL's grammar refuses them at once.
    fn dialects(&self) -> &'static [Dialect] {
        match self.name {
            "@ with signs" | "unions" => &[Dialect::Metricsql],
            "parentheses in a range" | "duration arithmetic" => &[Dialect::Promql],
            "range chain" | "subquery chain" | "offset chain" | "@ chain" => &[Dialect::Promql],
            _ => &[Dialect::Promql, Dialect::Metricsql],
        }
    }

    /// Whether the form, at its largest size, is a query the backends answer.
    fn valid(&self) -> bool {
        !matches!(
            self.name,
            "range chain" | "subquery chain" | "offset chain" | "@ chain"
        )
    }
}

fn form(name: &'static str, query: fn(usize) -> String, largest: usize) -> Form {
    Form {
        name,
        query,
        largest,
    }
}

fn forms() -> Vec<Form> {
    let m = MAX_NESTING;
    vec![
        form(
            "parentheses",
            |n| format!("{}x{}", "(".repeat(n), ")".repeat(n)),
            m,
        ),
        form("unary minus", |n| format!("{}x", "-".repeat(n)), m),
        form(
            "unary plus and minus",
            |n| format!("{}x", "+-".repeat(n / 2) + &"-".repeat(n % 2)),
            m,
        ),
        form("power chain", |n| format!("x{}", "^x".repeat(n)), m),
        form(
            "function calls",
            |n| format!("{}x{}", "abs(".repeat(n), ")".repeat(n)),
            m,
        ),
        form(
            "aggregations",
            |n| format!("{}x{}", "sum(".repeat(n), ")".repeat(n)),
            m,
        ),
        // Each level is a call and a subquery: two levels per step, plus rate(x[5m]).
        form(
            "subqueries in calls",
            |n| {
                format!(
                    "{}rate(x[5m]){}",
                    "max_over_time(".repeat(n),
                    "[1m:1m])".repeat(n)
                )
            },
            (m - 2) / 2,
        ),
        // Chains of postfix modifiers: read in a loop, one tree level each.
        form("range chain", |n| format!("x{}", "[1m]".repeat(n)), m),
        form("subquery chain", |n| format!("x{}", "[1m:1m]".repeat(n)), m),
        form(
            "offset chain",
            |n| format!("x{}", " offset 1m".repeat(n)),
            m,
        ),
        form("@ chain", |n| format!("x{}", " @ 1".repeat(n)), m),
        // A right operand in parentheses: a binary node and a parenthesis per step.
        form(
            "right-nested operators",
            |n| format!("{}x{}", "x + (".repeat(n), ")".repeat(n)),
            m / 2,
        ),
        // Inside brackets: the bracket is one level, then the parentheses.
        form(
            "parentheses in a range",
            |n| format!("x[{}1m{}]", "(".repeat(n), ")".repeat(n)),
            m - 1,
        ),
        // MetricsQL: `@` takes an expression, a sign and its own modifiers (two levels).
        form("@ with signs", |n| format!("x{}", " @ -x".repeat(n)), m / 2),
        form(
            "unions",
            |n| format!("{}x{}", "(x, ".repeat(n), ")".repeat(n)),
            m,
        ),
        // Operator chains: no deeper walk at all, capped by count.
        form(
            "operator chain",
            |n| format!("x{}", " + x".repeat(n)),
            MAX_BINARY_OPERATORS,
        ),
        form(
            "duration arithmetic",
            |n| format!("x[1m{}]", "+1m".repeat(n)),
            MAX_BINARY_OPERATORS,
        ),
    ]
}

fn too_deep(message: &str) -> bool {
    message.contains("nests too deeply") || message.contains("too many operators")
}

/// Runs `f` on a thread with a small stack: an optimised build must fit the deepest
/// accepted queries in a quarter of the wasm module's 1 MiB; unoptimised frames are
/// several times larger, so debug runs get more.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(if cfg!(debug_assertions) {
            8 << 20
        } else {
            256 << 10
        })
        .spawn(f)
        .unwrap()
        .join()
        .expect("the engine overflowed or panicked");
}

#[test]
fn every_recursive_form_is_capped_at_its_largest_size() {
    on_small_stack(|| {
        let tenant = TenantMatcher::new("client_id", &["1"]).unwrap();
        let mut problems = Vec::new();
        for form in forms() {
            for dialect in [Dialect::Promql, Dialect::Metricsql] {
                let at = (form.query)(form.largest);
                match rewrite(&at, &tenant, ConflictPolicy::And, dialect) {
                    Err(e) if too_deep(&e.to_string()) => problems.push(format!(
                        "{} in {dialect:?}: size {} refused as too deep: {e}",
                        form.name, form.largest
                    )),
                    _ => {}
                }
                let over = (form.query)(form.largest + 1);
                match parse(&over, dialect) {
                    Ok(_) => problems.push(format!(
                        "{} in {dialect:?}: size {} accepted",
                        form.name,
                        form.largest + 1
                    )),
                    Err(e) if too_deep(&e.message) || !form.dialects().contains(&dialect) => {}
                    Err(e) => problems.push(format!(
                        "{} in {dialect:?}: size {} refused, but not as too deep: {e}",
                        form.name,
                        form.largest + 1
                    )),
                }
                let huge = (form.query)(100_000);
                if parse(&huge, dialect).is_ok() {
                    problems.push(format!(
                        "{} in {dialect:?}: size 100000 accepted",
                        form.name
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    });
}

/// The valid forms are accepted right up to the cap, and their output reads back.
#[test]
fn the_deepest_valid_queries_are_accepted() {
    on_small_stack(|| {
        let tenant = TenantMatcher::new("client_id", &["1"]).unwrap();
        for form in forms() {
            if !form.valid() {
                continue;
            }
            for &dialect in form.dialects() {
                let q = (form.query)(form.largest);
                let out = rewrite(&q, &tenant, ConflictPolicy::And, dialect)
                    .unwrap_or_else(|e| panic!("{} in {dialect:?}: {e}", form.name));
                assert!(
                    parse(&out, dialect).is_ok(),
                    "{}: output does not read back",
                    form.name
                );
            }
        }
    });
}

/// A deep tree abandoned by a failed parse is dropped without recursion: a chain of
/// 100,000 modifiers, then a syntax error.
#[test]
fn deep_trees_are_dropped_without_recursion() {
    on_small_stack(|| {
        for dialect in [Dialect::Promql, Dialect::Metricsql] {
            for tail in [" )", " +", ""] {
                let q = format!("x{}{tail}", "[1m:1m]".repeat(100_000));
                assert!(parse(&q, dialect).is_err());
                let q = format!("x{}{tail}", " offset 1m".repeat(100_000));
                assert!(parse(&q, dialect).is_err());
            }
        }
    });
}
