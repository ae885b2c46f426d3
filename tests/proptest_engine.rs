//! Property tests of the engine.
//!
//! - A grammar-based generator of well-formed PromQL (selectors with and without names,
//!   matchers in every quoting style, matrix selectors, subqueries, offsets, `@`,
//!   functions, aggregations with `by`/`without` before or after, binary operators with
//!   `bool`/`on`/`ignoring`/`group_left`/`group_right`, unary operators, parentheses,
//!   numbers, strings, comments), checked against `promql-parser` under all three
//!   conflict policies, with hostile tenant values and label names, in dialect
//!   `promql`, and in dialect `metricsql` too wherever VictoriaMetrics' parser (the
//!   metricsql oracle) reads the query; and MetricsQL or-filters, which promql-parser
//!   reads too.
//! - `parse` and `rewrite` never panic on arbitrary strings, bytes, token soup, or
//!   mutated queries, in both dialects.
//! - Wherever the fast reader (`src/promql/fast.rs`) takes a generated, mutated or
//!   token-soup query, the chumsky grammar builds the same tree.
//! - Deep nesting (100k levels) returns an error instead of overflowing the stack.

mod common;

use common::metricsql::{is_confined, Oracle, Verdict};
use common::{
    check_only_insertions, check_output, classify_user_matchers, drop_label_matchers,
    ExpectedMatcher, UserMatchers,
};
use promql_tenant_filter::promql::{__fast_path_agrees, is_legacy_label_name};
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, RewriteError, TenantMatcher};
use proptest::prelude::*;
use proptest::sample::select;
use std::sync::{Mutex, OnceLock};

type Gen = BoxedStrategy<String>;

/// Cases per property: `default`, or `PROPTEST_CASES` for a longer campaign.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- lexical pieces

/// Blank between tokens: nothing, spaces, newlines, or a comment with hostile text.
fn blank() -> Gen {
    prop_oneof![
        6 => Just(String::new()),
        3 => Just(" ".to_string()),
        1 => Just("\n  ".to_string()),
        1 => Just("\t".to_string()),
        1 => select(vec!["} or vector(1)", "{a=\"b\"}", "", "client_id=\"x\"", "é"])
            .prop_map(|c| format!(" # {c}\n")),
    ]
    .boxed()
}

fn metric_name() -> Gen {
    prop_oneof![
        select(vec![
            "foo",
            "http_requests_total",
            "a:b:c",
            "_x1",
            "node_cpu_seconds_total"
        ])
        .prop_map(str::to_string),
        "m_[a-z0-9_:]{1,6}",
    ]
    .boxed()
}

/// Label names in selectors; `client_id` and `tenant.id` collide with tenant labels.
fn label_name() -> Gen {
    prop_oneof![
        4 => select(vec!["job", "instance", "le", "client_id", "offset", "by", "bool"])
            .prop_map(str::to_string),
        1 => select(vec!["\"tenant.id\"", "\"a.b\"", "\"ключ\"", "\"client_id\""])
            .prop_map(str::to_string),
        1 => "l_[a-z0-9_]{1,5}",
    ]
    .boxed()
}

/// Label names MetricsQL reads: no quoted ones (metricsql 0.49 has none).
fn plain_label_name() -> Gen {
    prop_oneof![
        4 => select(vec!["job", "instance", "le", "client_id", "offset", "by", "bool"])
            .prop_map(str::to_string),
        1 => "l_[a-z0-9_]{1,5}",
    ]
    .boxed()
}

/// User label values, hostile ones included.
fn label_value() -> Gen {
    prop_oneof![
        3 => select(vec!["x", "1999", "a\"b", "a\\b", "} or vector(1) #", "日本", "a\nb", "'", "`", ""])
            .prop_map(str::to_string),
        1 => "[a-z0-9 \"'\\\\{}#|é]{0,8}",
    ]
    .boxed()
}

/// Values that are valid regexes for both Go's RE2 and Rust's regex.
fn regex_value() -> Gen {
    select(vec![
        ".*", ".+", "a|b", "foo.*bar", "[0-9]+", "2..", "(a|b)c?", "\\d+", "x",
    ])
    .prop_map(str::to_string)
    .boxed()
}

/// A PromQL string literal for `value`: double-quoted, single-quoted or raw.
fn string_literal(value: Gen) -> Gen {
    (value, 0..3u8)
        .prop_map(|(v, style)| match style {
            0 => quote(&v, '"'),
            1 => quote(&v, '\''),
            // promql-parser 0.11 wrongly reads escapes inside raw strings, so raw strings
            // with a backslash would only be skipped by the oracle; quote those instead.
            _ if !v.contains(['`', '\n', '\\']) => format!("`{v}`"),
            _ => quote(&v, '"'),
        })
        .boxed()
}

/// Go-style quoting with the given quote character.
fn quote(value: &str, q: char) -> String {
    let mut out = String::from(q);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

fn duration() -> Gen {
    select(vec!["5m", "30s", "1h", "1h30m", "10m", "2d", "500ms", "1w"])
        .prop_map(str::to_string)
        .boxed()
}

fn number() -> Gen {
    select(vec![
        "1", "2.5", "0x1f", "1e3", ".5", "Inf", "NaN", "0", "100", "5e-3",
    ])
    .prop_map(str::to_string)
    .boxed()
}

/// `offset` and `@` in either order, each optional.
fn modifiers() -> Gen {
    let offset = prop_oneof![
        Just(String::new()),
        duration().prop_map(|d| format!(" offset {d}")),
        duration().prop_map(|d| format!(" offset -{d}"))
    ];
    let at = prop_oneof![
        2 => Just(String::new()),
        1 => select(vec![" @ 1609746000", " @ start()", " @ end()", " @ 1609746000.5"]).prop_map(str::to_string),
    ];
    (offset, at, any::<bool>())
        .prop_map(|(o, a, swap)| {
            if swap {
                format!("{a}{o}")
            } else {
                format!("{o}{a}")
            }
        })
        .boxed()
}

// ---------------------------------------------------------------- selectors

fn matcher() -> Gen {
    matcher_with(label_name())
}

/// A matcher on a label from `labels`: an equality or a regex, blanks and quoting varied.
fn matcher_with(labels: Gen) -> Gen {
    prop_oneof![
        3 => (labels.clone(), blank(), select(vec!["=", "!="]), blank(), string_literal(label_value()))
            .prop_map(|(l, b1, op, b2, v)| format!("{l}{b1}{op}{b2}{v}")),
        1 => (labels, select(vec!["=~", "!~"]), string_literal(regex_value()))
            .prop_map(|(l, op, v)| format!("{l}{op}{v}")),
    ]
    .boxed()
}

/// Matchers joined by commas, with optional blanks and trailing comma.
fn matcher_list(min: usize) -> Gen {
    (
        proptest::collection::vec((matcher(), blank()), min..4),
        any::<bool>(),
        blank(),
    )
        .prop_map(|(ms, trailing, end)| {
            let mut out = ms
                .iter()
                .map(|(m, b)| format!("{b}{m}"))
                .collect::<Vec<_>>()
                .join(",");
            if trailing && !ms.is_empty() {
                out.push(',');
            }
            out.push_str(&end);
            out
        })
        .boxed()
}

/// A vector selector without modifiers.
fn selector() -> Gen {
    prop_oneof![
        3 => metric_name(),
        3 => (metric_name(), matcher_list(0)).prop_map(|(n, ms)| format!("{n}{{{ms}}}")),
        // Without a name, one matcher must not match the empty string.
        2 => (label_name(), select(vec!["x", "a\"b", "é"]), matcher_list(0)).prop_map(|(l, v, ms)| {
            let sep = if ms.trim().is_empty() || ms.trim_start().starts_with(',') { "" } else { "," };
            format!("{{{l}={}{sep}{ms}}}", quote(v, '"'))
        }),
        1 => (metric_name(), matcher_list(0)).prop_map(|(n, ms)| {
            let sep = if ms.trim().is_empty() { "" } else { "," };
            format!("{{__name__=\"{n}\"{sep}{ms}}}")
        }),
        1 => (select(vec!["\"my.metric\"", "\"foo\"", "'a-b'"]), matcher_list(0)).prop_map(|(n, ms)| {
            let sep = if ms.trim().is_empty() { "" } else { ", " };
            format!("{{{n}{sep}{ms}}}")
        }),
    ]
    .boxed()
}

// ---------------------------------------------------------------- expressions

const RANGE_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "max_over_time",
    "avg_over_time",
    "count_over_time",
    "changes",
    "resets",
    "absent_over_time",
    "last_over_time",
];
const AGGREGATIONS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
];
const VECTOR_OPS: &[&str] = &[
    "+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or", "unless",
];
const ARITHMETIC: &[&str] = &["+", "-", "*", "/", "%", "^"];
const COMPARISON: &[&str] = &["==", "!=", ">", "<", ">=", "<="];

fn grouping() -> Gen {
    select(vec![
        "",
        "by (job)",
        "without (instance, le)",
        "by ()",
        "by (\"a.b\", job)",
        "without (client_id)",
    ])
    .prop_map(str::to_string)
    .boxed()
}

/// A range vector: a matrix selector or a subquery, built from `vector`.
fn range_vector(vector: Gen) -> Gen {
    prop_oneof![
        3 => (selector(), blank(), duration(), modifiers())
            .prop_map(|(s, b, d, m)| format!("{s}{b}[{d}]{m}")),
        1 => (vector.clone(), duration(), proptest::option::of(duration()), modifiers())
            .prop_map(|(v, d, step, m)| format!("({v})[{d}:{}]{m}", step.unwrap_or_default())),
        1 => (metric_name(), duration(), modifiers()).prop_map(|(n, d, m)| format!("{n}[{d}:]{m}")),
    ]
    .boxed()
}

/// A scalar expression built from `vector`.
fn scalar(vector: Gen) -> Gen {
    prop_oneof![
        4 => number(),
        1 => Just("time()".to_string()),
        1 => vector.prop_map(|v| format!("scalar({v})")),
        1 => (number(), select(ARITHMETIC.to_vec()), number()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        1 => (number(), select(COMPARISON.to_vec()), number()).prop_map(|(a, op, b)| format!("{a} {op} bool {b}")),
        1 => number().prop_map(|n| format!("-{n}")),
    ]
    .boxed()
}

/// `bool`, `on`/`ignoring` and `group_left`/`group_right` for `op` between two vectors.
fn vector_matching(op: &'static str) -> Gen {
    let set_op = matches!(op, "and" | "or" | "unless");
    let comparison = COMPARISON.contains(&op);
    let bool_mod = if comparison {
        prop_oneof![Just(""), Just(" bool")].boxed()
    } else {
        Just("").boxed()
    };
    let matching = select(vec![
        "",
        " on(job)",
        " ignoring(instance)",
        " on()",
        " on(\"a.b\")",
    ]);
    let group = if set_op {
        Just("").boxed()
    } else {
        select(vec![
            "",
            " group_left",
            " group_left(le)",
            " group_right(mode)",
        ])
        .boxed()
    };
    (bool_mod, matching, group)
        .prop_map(|(b, m, g)| {
            // group_* needs on/ignoring.
            let g = if m.is_empty() { "" } else { g };
            format!("{b}{m}{g}")
        })
        .boxed()
}

/// An instant vector expression, recursively.
fn instant_vector() -> Gen {
    let leaf = prop_oneof![
        6 => (selector(), modifiers()).prop_map(|(s, m)| format!("{s}{m}")),
        1 => Just("vector(1)".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |v| {
        let v: Gen = v.boxed();
        let s = scalar(v.clone());
        prop_oneof![
            3 => (select(RANGE_FUNCTIONS.to_vec()), blank(), range_vector(v.clone()))
                .prop_map(|(f, b, r)| format!("{f}({b}{r})")),
            1 => (range_vector(v.clone()), number()).prop_map(|(r, q)| format!("quantile_over_time({q}, {r})")),
            1 => range_vector(v.clone()).prop_map(|r| format!("predict_linear({r}, 3600)")),
            2 => (select(AGGREGATIONS.to_vec()), grouping(), v.clone(), any::<bool>()).prop_map(|(a, g, e, before)| {
                if before { format!("{a} {g} ({e})") } else { format!("{a}({e}) {g}") }
            }),
            1 => (select(vec!["topk", "bottomk"]), v.clone()).prop_map(|(a, e)| format!("{a}(3, {e})")),
            1 => (v.clone(), grouping()).prop_map(|(e, g)| format!("quantile {g} (0.9, {e})")),
            1 => v.clone().prop_map(|e| format!("count_values(\"value\", {e})")),
            4 => (v.clone(), select(VECTOR_OPS.to_vec()), v.clone(), blank())
                .prop_flat_map(|(l, op, r, b)| {
                    vector_matching(op).prop_map(move |m| {
                        // `group_left (x)` would read `(x)` as the label list.
                        let m = if m.ends_with("left") || m.ends_with("right") { format!("{m}()") } else { m };
                        if m.contains("on(") || m.contains("ignoring(") {
                            // Vector matching needs vectors on both sides after precedence
                            // regroups the text (promql-parser does not check this).
                            format!("({l}) {op}{m}{b} ({r})")
                        } else {
                            format!("{l} {op}{m}{b} {r}")
                        }
                    })
                }),
            2 => (v.clone(), select(ARITHMETIC.iter().chain(COMPARISON).copied().collect::<Vec<_>>()), s.clone(), any::<bool>())
                .prop_map(|(e, op, sc, scalar_left)| if scalar_left { format!("{sc} {op} {e}") } else { format!("{e} {op} {sc}") }),
            1 => v.clone().prop_map(|e| format!("-{e}")),
            1 => v.clone().prop_map(|e| format!("+{e}")),
            2 => (blank(), v.clone(), blank()).prop_map(|(a, e, b)| format!("({a}{e}{b})")),
            2 => (select(vec!["abs", "ceil", "sort_desc", "absent", "timestamp", "exp"]), v.clone())
                .prop_map(|(f, e)| format!("{f}({e})")),
            1 => v.clone().prop_map(|e| format!("label_replace({e}, \"dst\", \"$1\", \"src\", \"(.*)\")")),
            1 => v.clone().prop_map(|e| format!("histogram_quantile(0.9, {e})")),
            1 => (v.clone(), s.clone()).prop_map(|(e, sc)| format!("clamp_max({e}, {sc})")),
            1 => s.clone().prop_map(|sc| format!("vector({sc})")),
        ]
    })
    .boxed()
}

/// A whole query, possibly led by comment lines.
fn query() -> Gen {
    (
        prop_oneof![3 => Just(String::new()), 1 => Just("# leading comment\n".to_string())],
        instant_vector(),
        blank(),
    )
        .prop_map(|(lead, q, tail)| format!("{lead}{q}{tail}"))
        .boxed()
}

/// A matcher with an unquoted label name, as MetricsQL writes them.
fn plain_matcher() -> Gen {
    matcher_with(plain_label_name())
}

/// MetricsQL or-filters: `name{a="b" or c="d", e="f"}`; each branch starts with a matcher
/// that does not match the empty string, and only the last may end with a comma.
fn or_filter_selector() -> Gen {
    let more = proptest::collection::vec((blank(), plain_matcher()), 0..3);
    let branch = (
        plain_label_name(),
        select(vec!["x", "a\"b", "é", "1999"]),
        more,
    )
        .prop_map(|(l, v, more)| {
            let rest: String = more.iter().map(|(b, m)| format!(",{b}{m}")).collect();
            format!("{l}={}{rest}", quote(v, '"'))
        });
    let branches = proptest::collection::vec(branch, 2..4);
    (
        proptest::option::of(metric_name()),
        branches,
        any::<bool>(),
        blank(),
    )
        .prop_map(|(name, branches, trailing, end)| {
            let comma = if trailing { "," } else { "" };
            format!(
                "{}{{{}{comma}{end}}}",
                name.unwrap_or_default(),
                branches.join(" or ")
            )
        })
        .boxed()
}

/// Or-filter selectors placed where selectors go.
fn or_filter_query() -> Gen {
    const FORMS: &[&str] = &[
        "\u{1}A",
        "rate(\u{1}A[5m])",
        "sum by (job) (rate(\u{1}A[5m])) / on(job) group_left sum by (job) (\u{1}B)",
        "\u{1}A offset 5m and \u{1}B",
        "max_over_time((\u{1}A + \u{1}B)[10m:1m])",
        "topk(3, \u{1}A) or -\u{1}B",
    ];
    (
        select(FORMS.to_vec()),
        or_filter_selector(),
        prop_oneof![
            or_filter_selector(),
            metric_name(),
            (metric_name(), plain_matcher()).prop_map(|(n, m)| format!("{n}{{{m}}}")),
        ],
    )
        .prop_map(|(form, a, b)| form.replace("\u{1}A", &a).replace("\u{1}B", &b))
        .boxed()
}

// ---------------------------------------------------------------- tenants

fn tenant_label() -> Gen {
    prop_oneof![
        3 => Just("client_id".to_string()),
        2 => select(vec!["tenant.id", "a-b", "ключ", "_", "x y", "1abc", "a:b", "job"]).prop_map(str::to_string),
        1 => "[a-zA-Z_][a-zA-Z0-9_]{0,6}".prop_filter("not __name__-like", |l| !l.starts_with("__")),
    ]
    .boxed()
}

fn tenant_value() -> Gen {
    prop_oneof![
        3 => Just("1999".to_string()),
        3 => select(vec![
            "1999\"} or vector(1) #", "a\\b", "x\ny", "é日本", ".*", "a|b", "\\\"", "'", "`",
            "\u{0}", "\u{7f}\u{2028}", "}", "{", "\"", "1999\"}) or up{a=\"",
        ]).prop_map(str::to_string),
        2 => "[\"\\\\\n\t\r'`{}|.*+?()\\[\\]^$# a-z0-9é€]{1,12}",
        1 => any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ]
    .boxed()
}

fn tenant() -> impl Strategy<Value = (String, Vec<String>)> {
    // Distinct values: how duplicates are written is not the issue's business.
    (
        tenant_label(),
        proptest::collection::btree_set(tenant_value(), 1..4),
    )
        .prop_map(|(label, values)| (label, values.into_iter().collect()))
}

fn policy() -> impl Strategy<Value = ConflictPolicy> {
    prop_oneof![
        Just(ConflictPolicy::And),
        Just(ConflictPolicy::Replace),
        Just(ConflictPolicy::Reject)
    ]
}

/// What VictoriaMetrics' parser makes of `q` (one oracle process for the whole run).
fn metricsql_verdict(q: &str) -> Verdict {
    static ORACLE: OnceLock<Mutex<Oracle>> = OnceLock::new();
    let oracle = ORACLE.get_or_init(|| Mutex::new(Oracle::start()));
    let mut oracle = oracle
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    oracle.judge(q)
}

fn metricsql_reads(q: &str) -> bool {
    metricsql_verdict(q).parses
}

/// Dialect `metricsql` with a tenant label PromQL would quote (`tenant.id`): MetricsQL
/// has no quoted label names, so the matcher is written bare where it can be, and the
/// query is refused where it cannot. The output is then the input plus the same
/// insertions as in PromQL, and where metricsql reads it, every selector is confined.
fn check_metricsql_bare_label(
    q: &str,
    tenant: &TenantMatcher,
    expected: &ExpectedMatcher,
    policy: ConflictPolicy,
    promql: Option<&Result<String, RewriteError>>,
) -> Result<(), String> {
    let out = rewrite(q, tenant, policy, Dialect::Metricsql);
    let Ok(text) = tenant.text_for(Dialect::Metricsql) else {
        return match out {
            Err(_) => Ok(()),
            Ok(o) => Err(format!(
                "an unspellable label was written in MetricsQL: {o:?}"
            )),
        };
    };
    let m = match (promql, &out) {
        (_, Ok(m)) if promql.is_none_or(Result::is_ok) => m,
        (None, Err(_)) => return Ok(()),
        (Some(Err(RewriteError::Conflict(_))), Err(RewriteError::Conflict(_)))
        | (Some(Err(RewriteError::Parse(_))), Err(RewriteError::Parse(_))) => return Ok(()),
        _ => return Err(format!("dialects disagree: {promql:?} and {out:?}")),
    };
    if policy != ConflictPolicy::Replace {
        let insertions = check_only_insertions(q, m, &text)?;
        if let Some(Ok(p)) = promql {
            let promql_insertions = check_only_insertions(q, p, tenant.matcher_text())?;
            if insertions != promql_insertions {
                return Err(format!(
                    "{insertions} insertions in MetricsQL, {promql_insertions} in PromQL: {m:?}"
                ));
            }
        }
    }
    let verdict = metricsql_verdict(m);
    if verdict.parses {
        if let Some(s) = verdict.selectors.iter().find(|s| !is_confined(s, expected)) {
            return Err(format!("metricsql finds {} unconfined in {m:?}", s.printed));
        }
    }
    Ok(())
}

/// Checks one generated case; `Err` carries a readable explanation.
fn check_case(
    q: &str,
    label: &str,
    values: &[String],
    policy: ConflictPolicy,
    dialects: &[Dialect],
) -> Result<(), String> {
    let original = promql_parser::parser::parse(q)
        .map_err(|e| format!("generator bug, promql-parser: {e}"))?;
    for &dialect in dialects {
        parse(q, dialect)
            .map_err(|e| format!("{dialect:?} parse refuses what promql-parser reads: {e}"))?;
    }
    let value_refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let tenant =
        TenantMatcher::new(label, &value_refs).map_err(|e| format!("TenantMatcher::new: {e}"))?;
    let expected = ExpectedMatcher::new(label, &value_refs);
    // With a label PromQL quotes, MetricsQL writes the matcher differently.
    let bare_in_metricsql = !is_legacy_label_name(label);
    let same_text: Vec<Dialect> = dialects
        .iter()
        .copied()
        .filter(|&d| !(bare_in_metricsql && d == Dialect::Metricsql))
        .collect();
    let results: Vec<_> = same_text
        .iter()
        .map(|&d| rewrite(q, &tenant, policy, d))
        .collect();
    if results.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err(format!("dialects {dialects:?} disagree: {results:?}"));
    }
    if bare_in_metricsql && dialects.contains(&Dialect::Metricsql) {
        let baseline = results.first();
        check_metricsql_bare_label(q, &tenant, &expected, policy, baseline)?;
        if baseline.is_none() {
            // Only MetricsQL was asked for (or-filters): its checks are the ones above.
            return Ok(());
        }
    }
    let promql = results.into_iter().next().expect("at least one dialect");
    let want = match policy {
        ConflictPolicy::And => original,
        ConflictPolicy::Replace => {
            let mut stripped = original;
            drop_label_matchers(&mut stripped, label);
            stripped
        }
        ConflictPolicy::Reject => match classify_user_matchers(&original, &expected) {
            UserMatchers::Foreign => {
                return match promql {
                    Err(RewriteError::Conflict(_)) => Ok(()),
                    other => Err(format!(
                        "reject policy, foreign matcher on the tenant label: expected Conflict, got {other:?}"
                    )),
                };
            }
            // Either answer is accepted here; see ExpectedMatcher::is_own_value.
            UserMatchers::OwnValuesOnly if matches!(promql, Err(RewriteError::Conflict(_))) => {
                return Ok(());
            }
            UserMatchers::OwnValuesOnly | UserMatchers::NoneOrOurs => original,
        },
    };
    let output = promql.map_err(|e| format!("rewrite refused: {e}"))?;
    let found =
        check_output(want, &output, &expected).map_err(|e| format!("{e}\n  output: {output:?}"))?;
    if policy != ConflictPolicy::Replace {
        // Nothing removed, so the output is the input plus one insertion per matcher.
        let inserted = check_only_insertions(q, &output, tenant.matcher_text())
            .map_err(|e| format!("{e}\n  output: {output:?}"))?;
        if inserted != found {
            return Err(format!(
                "{inserted} insertions for {found} tenant matchers\n  output: {output:?}"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), max_global_rejects: 4096, ..ProptestConfig::default() })]

    #[test]
    fn generated_queries_keep_the_invariants(q in query(), (label, values) in tenant(), policy in policy()) {
        // Generator slips (a type error promql-parser refuses) are skipped, not failed;
        // proptest fails the test if they become frequent.
        prop_assume!(promql_parser::parser::parse(&q).is_ok());
        let dialects: &[Dialect] = if metricsql_reads(&q) {
            &[Dialect::Promql, Dialect::Metricsql]
        } else {
            &[Dialect::Promql]
        };
        if let Err(e) = check_case(&q, &label, &values, policy, dialects) {
            prop_assert!(false, "query {:?}\n tenant {:?} {:?} {:?}\n {}", q, label, values, policy, e);
        }
    }

    #[test]
    fn metricsql_or_filters_keep_the_invariants(q in or_filter_query(), (label, values) in tenant(), policy in policy()) {
        // promql-parser reads or-filters too, so the same oracle applies branch by branch.
        prop_assume!(promql_parser::parser::parse(&q).is_ok());
        if let Err(e) = check_case(&q, &label, &values, policy, &[Dialect::Metricsql]) {
            prop_assert!(false, "query {:?}\n tenant {:?} {:?} {:?}\n {}", q, label, values, policy, e);
        }
    }
}

// ---------------------------------------------------------------- no panics

const TOKENS: &[&str] = &[
    "foo",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "!=",
    "=~",
    "!~",
    "\"a\"",
    "'b'",
    "`c`",
    "\"",
    "'",
    "`",
    "5m",
    "1h30m",
    ":",
    "offset",
    "@",
    "start()",
    "end()",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "==",
    ">",
    "<=",
    "sum",
    "rate",
    "topk",
    "count_values",
    "1",
    "0x",
    "1e",
    "Inf",
    "NaN",
    ".",
    "#",
    "\n",
    " ",
    "\\",
    "WITH",
    "default",
    "if",
    "ifnot",
    "limit",
    "keep_metric_names",
    "1Ki",
    "5M",
    "é",
    "\u{0}",
    "__name__",
    "\"a.b\"",
    "-1",
    "1e999",
    "9223372036854775808",
];

fn token_soup() -> Gen {
    proptest::collection::vec(select(TOKENS.to_vec()), 0..40)
        .prop_map(|t| t.concat())
        .boxed()
}

/// `q` with up to `cut` characters at `at` replaced by `token`.
fn mutate(q: &str, at: prop::sample::Index, cut: usize, token: &str) -> String {
    let chars: Vec<char> = q.chars().collect();
    let i = at.index(chars.len() + 1);
    let j = (i + cut).min(chars.len());
    chars[..i].iter().collect::<String>() + token + &chars[j..].iter().collect::<String>()
}

fn must_not_panic(input: &str) {
    let tenant = TenantMatcher::new("client_id", &["1999"]).expect("tenant");
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        let _ = parse(input, dialect);
        for policy in [
            ConflictPolicy::And,
            ConflictPolicy::Replace,
            ConflictPolicy::Reject,
        ] {
            if let Ok(out) = rewrite(input, &tenant, policy, dialect) {
                // What we accept, we accept again after rewriting (the backend sees it).
                assert!(
                    parse(&out, dialect).is_ok(),
                    "{input:?} -> {out:?} does not re-parse in {dialect:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

    #[test]
    fn no_panic_on_arbitrary_strings(s in any::<String>()) {
        must_not_panic(&s);
    }

    #[test]
    fn no_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        must_not_panic(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn no_panic_on_token_soup(s in token_soup()) {
        must_not_panic(&s);
    }

    #[test]
    fn no_panic_on_mutated_queries(q in query(), at in any::<prop::sample::Index>(), cut in 0..4usize, token in select(TOKENS.to_vec())) {
        must_not_panic(&mutate(&q, at, cut, token));
    }
}

// ---------------------------------------------------------------- deep nesting

/// Runs `f` on a thread with a small stack, close to the 1 MiB a wasm32-wasip1 module
/// gets by default. Debug builds have far larger frames, so they get more room; `make
/// test` runs the optimized build.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    let stack = if cfg!(debug_assertions) {
        16 << 20
    } else {
        1 << 20
    };
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic");
}

const DEEP: usize = 100_000;

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    on_small_stack(|| {
        let nested = [
            (
                "parens",
                format!("{}a{}", "(".repeat(DEEP), ")".repeat(DEEP)),
            ),
            ("unclosed parens", "(".repeat(DEEP)),
            ("unary minus", format!("{}a", "-".repeat(DEEP))),
            ("unary minus with blanks", format!("{}a", "- ".repeat(DEEP))),
            (
                "function calls",
                format!("{}a{}", "abs(".repeat(DEEP), ")".repeat(DEEP)),
            ),
            (
                "aggregations",
                format!("{}a{}", "sum(".repeat(DEEP), ")".repeat(DEEP)),
            ),
            (
                "subqueries",
                format!("{}a{}", "(".repeat(DEEP), ")[1m:]".repeat(DEEP)),
            ),
            ("braces", "{".repeat(DEEP)),
        ];
        let tenant = TenantMatcher::new("client_id", &["1999"]).expect("tenant");
        for (what, input) in &nested {
            for dialect in [Dialect::Promql, Dialect::Metricsql] {
                match parse(input, dialect) {
                    Ok(_) => panic!(
                        "{what}: {DEEP} levels accepted in {dialect:?}; expected the depth cap"
                    ),
                    Err(e) => assert!(!e.message.is_empty(), "{what}: empty message"),
                }
                assert!(
                    rewrite(input, &tenant, ConflictPolicy::And, dialect).is_err(),
                    "{what}"
                );
            }
        }
    });
}

#[test]
fn long_flat_chains_do_not_overflow() {
    // Long operator chains are deep trees too; Ok or Err are both fine, a crash is not,
    // and an accepted chain has every selector rewritten.
    on_small_stack(|| {
        let tenant = TenantMatcher::new("client_id", &["1999"]).expect("tenant");
        let chains = [
            (format!("a{}", " + a".repeat(DEEP)), DEEP + 1),
            (format!("a{}", " or a".repeat(DEEP)), DEEP + 1),
            (format!("a{}", " ^ a".repeat(DEEP)), DEEP + 1),
            (format!("1{}", " * 1".repeat(DEEP)), 0),
            (
                format!("{{a=\"b\"{}}}", " or a=\"b\"".repeat(DEEP)),
                DEEP + 1,
            ),
        ];
        for (input, selectors) in &chains {
            for dialect in [Dialect::Promql, Dialect::Metricsql] {
                let _ = parse(input, dialect);
                if let Ok(out) = rewrite(input, &tenant, ConflictPolicy::And, dialect) {
                    let added = out.matches(r#"client_id="1999""#).count();
                    assert_eq!(added, *selectors, "{dialect:?}: {}...", &input[..20]);
                }
            }
        }
    });
}

#[test]
fn moderate_nesting_still_parses() {
    // The cap must not refuse ordinary queries: 40 levels of each kind.
    let depth = 40;
    let inputs = [
        format!("{}a{}", "(".repeat(depth), ")".repeat(depth)),
        format!("{}a{}", "abs(".repeat(depth), ")".repeat(depth)),
        format!("{}a{}", "sum(".repeat(depth), ")".repeat(depth)),
        format!("{}a", "-".repeat(depth)),
    ];
    for input in &inputs {
        for dialect in [Dialect::Promql, Dialect::Metricsql] {
            if let Err(e) = parse(input, dialect) {
                panic!("{} ({dialect:?}): {e}", &input[..input.len().min(30)]);
            }
        }
    }
}

// ---------------------------------------------------------------- the fast reader

/// Fails when the fast reader builds a tree the grammar does not.
fn fast_reader_agrees(input: &str) -> Result<(), TestCaseError> {
    if let Some(Err(why)) = __fast_path_agrees(input) {
        return Err(TestCaseError::fail(format!("{input:?}\n {why}")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

    #[test]
    fn the_fast_reader_agrees_on_generated_queries(q in query()) {
        fast_reader_agrees(&q)?;
    }

    #[test]
    fn the_fast_reader_agrees_on_token_soup(s in token_soup()) {
        fast_reader_agrees(&s)?;
    }

    #[test]
    fn the_fast_reader_agrees_on_mutated_queries(q in query(), at in any::<prop::sample::Index>(), cut in 0..4usize, token in select(TOKENS.to_vec())) {
        fast_reader_agrees(&mutate(&q, at, cut, token))?;
    }
}
