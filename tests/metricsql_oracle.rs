//! The backend's own parser as the oracle (`tests/common/metricsql.rs`): every query of
//! the corpus (`../shared/corpus/promql_corpus.jsonl`) and of Prometheus' parser cases
//! (`prometheus_parse_cases.jsonl`) goes through `rewrite` in both dialects, and each
//! accepted output is read by metricsql, the parser VictoriaMetrics 1.79 runs:
//! - it parses (required in dialect `metricsql`; in dialect `promql` an output only
//!   Prometheus reads is counted, since the backend then refuses it on its own);
//! - every selector metricsql finds, in the first parse, in the re-parse of its printed
//!   form and in the query `Optimize` hands to the engine, carries the tenant matcher in
//!   every `or` group, and there are as many as the filter saw;
//! - the printed form (`AppendString`) parses again and prints the same, and `Optimize`
//!   does not panic: VictoriaMetrics re-parses that printout and dies when it fails.
//!
//! Acceptance: 0 unconfined selectors and 0 crashes among accepted queries. It prints
//! the counts, and in dialect `metricsql` the queries metricsql reads that we refuse.

mod common;

use common::metricsql::{findings, Finding, Oracle, Verdict, DEFAULT_TEMPLATES};
use common::{corpus_dir, is_with_template, load_corpus, report, ExpectedMatcher};
use promql_tenant_filter::promql::ast::ExprKind;
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, TenantMatcher};

/// The inputs: the corpus, then every case of Prometheus' parser tests that is UTF-8.
fn inputs() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = load_corpus()
        .into_iter()
        .map(|(line, r)| (format!("corpus:{line}"), r.expr))
        .collect();
    let path = corpus_dir().join("prometheus_parse_cases.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: serde_json::Value = serde_json::from_str(line).expect("case JSON");
        if case.get("input_hex").is_some() {
            continue; // not UTF-8: refused before the parser (tests/prometheus_cases.rs)
        }
        let input = case["input"].as_str().expect("input").to_string();
        out.push((format!("parse_test.go:{}", case["line"]), input));
    }
    out
}

/// Selectors the filter sees in `query`.
fn filter_selectors(query: &str, dialect: Dialect) -> usize {
    let expr = parse(query, dialect).expect("accepted queries parse");
    let mut n = 0;
    expr.for_each_selector(&mut |_| n += 1);
    n
}

/// Whether the query calls one of metricsql's default templates (see DEFAULT_TEMPLATES).
fn calls_default_template(query: &str, dialect: Dialect) -> bool {
    let expr = parse(query, dialect).expect("accepted queries parse");
    let mut found = false;
    expr.for_each_node(&mut |e| {
        if let ExprKind::Call(c) = &e.kind {
            found |= DEFAULT_TEMPLATES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(c.name));
        }
    });
    found
}

struct Run {
    metricsql_reads: usize,
    selectors: usize,
    accepted: usize,
    refused: usize,
    backend_refuses_output: usize,
    leaks_or_crashes: Vec<String>,
    other_findings: Vec<String>,
    over_blocked: Vec<String>,
}

fn run(dialect: Dialect, values: &[&str], oracle: &mut Oracle) -> Run {
    let tenant = TenantMatcher::new("client_id", values).unwrap();
    let expected = ExpectedMatcher::new("client_id", values);
    let inputs = inputs();
    let outputs: Vec<Option<String>> = inputs
        .iter()
        .map(|(_, q)| rewrite(q, &tenant, ConflictPolicy::And, dialect).ok())
        .collect();
    let mut asked: Vec<String> = inputs.iter().map(|(_, q)| q.clone()).collect();
    asked.extend(outputs.iter().flatten().cloned());
    let verdicts = oracle.judge_all(&asked);
    let (on_inputs, on_outputs) = verdicts.split_at(inputs.len());
    let mut on_outputs = on_outputs.iter();

    let mut r = Run {
        metricsql_reads: on_inputs.iter().filter(|v| v.parses).count(),
        selectors: 0,
        accepted: 0,
        refused: 0,
        backend_refuses_output: 0,
        leaks_or_crashes: Vec::new(),
        other_findings: Vec::new(),
        over_blocked: Vec::new(),
    };
    for (((place, input), output), input_verdict) in inputs.iter().zip(&outputs).zip(on_inputs) {
        let Some(output) = output else {
            r.refused += 1;
            if input_verdict.parses && !is_with_template(input) {
                r.over_blocked.push(format!("{place}: {input:?}"));
            }
            continue;
        };
        r.accepted += 1;
        let verdict: &Verdict = on_outputs.next().expect("one verdict per output");
        r.selectors += verdict.selectors.len();
        let expected_count = if calls_default_template(input, dialect) && input_verdict.parses {
            input_verdict.selectors.len()
        } else {
            filter_selectors(input, dialect)
        };
        for f in findings(verdict, &expected, expected_count) {
            let line = format!("{place}: {input:?}\n    output {output:?}\n    -> {f:?}");
            match f {
                Finding::DoesNotParse(_) if dialect == Dialect::Promql => {
                    r.backend_refuses_output += 1
                }
                _ if f.is_leak_or_crash() => r.leaks_or_crashes.push(line),
                _ => r.other_findings.push(line),
            }
        }
    }
    report(&format!(
        "metricsql oracle, dialect {dialect:?}, tenant {}: {} inputs (metricsql reads {}), \
         {} accepted, {} refused; among the accepted: {} selectors checked, {} unconfined or \
         crashing, {} other findings, {} that only Prometheus reads; {} refused that \
         metricsql reads (WITH templates aside)",
        tenant.matcher_text(),
        inputs.len(),
        r.metricsql_reads,
        r.accepted,
        r.refused,
        r.selectors,
        r.leaks_or_crashes.len(),
        r.other_findings.len(),
        r.backend_refuses_output,
        r.over_blocked.len(),
    ));
    r
}

fn first(lines: &[String], n: usize) -> String {
    lines.iter().take(n).cloned().collect::<Vec<_>>().join("\n")
}

fn check(dialect: Dialect) {
    let mut oracle = Oracle::start();
    for values in [&["1999"][..], &["1999", "2000"][..]] {
        let mut r = run(dialect, values, &mut oracle);
        if dialect == Dialect::Promql {
            // Prometheus' rules refuse some of what VictoriaMetrics reads (range vector
            // operands, dotted names); only dialect metricsql must take it all.
            r.over_blocked.clear();
        }
        assert!(r.accepted > 9_000, "only {} accepted", r.accepted);
        assert!(
            r.leaks_or_crashes.is_empty(),
            "{} accepted queries leak or crash the backend; first 20:\n{}",
            r.leaks_or_crashes.len(),
            first(&r.leaks_or_crashes, 20)
        );
        assert!(
            r.other_findings.is_empty(),
            "{} accepted queries read differently by the backend; first 20:\n{}",
            r.other_findings.len(),
            first(&r.other_findings, 100)
        );
        // What VictoriaMetrics reads is accepted, except `info()` without a data-label
        // selector, which cannot be confined (tests/inject_rules.rs).
        let unexpected: Vec<String> = r
            .over_blocked
            .iter()
            .filter(|line| !line.contains("\"info("))
            .cloned()
            .collect();
        assert!(
            unexpected.is_empty(),
            "{} queries metricsql reads are refused; first 20:\n{}",
            unexpected.len(),
            first(&unexpected, 20)
        );
    }
}

#[test]
fn corpus_through_the_metricsql_oracle_dialect_promql() {
    check(Dialect::Promql);
}

#[test]
fn corpus_through_the_metricsql_oracle_dialect_metricsql() {
    check(Dialect::Metricsql);
}

/// What the filter answers, per dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Refused,
    Accepted,
}
use Answer::{Accepted, Refused};

/// Hostile inputs, each sent through `rewrite` in both dialects: the answer is pinned,
/// and every accepted output is judged by the oracle (`findings`; in dialect `promql` an
/// output only Prometheus reads is allowed). Issue #10's examples, what reading
/// metricsql's lexer and parser turned up, and what fuzzing found.
const HOSTILE: &[(&str, Answer, Answer)] = &[
    // Class 2: lexing. metricsql reads `bool.5` as one metric name.
    ("0 < bool.5", Refused, Accepted),
    ("x > bool.5", Refused, Accepted),
    ("x * on() group_left.5", Refused, Accepted),
    ("x.5", Refused, Accepted),
    ("inf.5", Refused, Accepted),
    ("offset.5", Refused, Accepted),
    ("0 < bool .5", Accepted, Accepted),
    ("x offset 5m-3s", Accepted, Accepted),
    ("x[5m-30s]", Accepted, Accepted),
    ("x - 5m-m", Accepted, Refused),
    ("1and x", Refused, Refused),
    ("5mor x", Refused, Refused),
    ("x[.5m]", Refused, Refused),
    ("x[0x10]", Refused, Refused),
    ("x offset 1Ki", Refused, Refused),
    ("x[5M]", Refused, Refused),
    ("x[5m:1Ki]", Refused, Refused),
    ("x[1e3]", Accepted, Accepted),
    ("sum(x) limit 0x5", Refused, Refused),
    ("x\u{b}+ y", Refused, Refused),
    ("x\u{c}+ y", Refused, Refused),
    (r"x\-y", Refused, Refused),
    (r#"{a\.b="c"}"#, Refused, Refused),
    ("x[:]", Refused, Accepted),
    ("x @ 1 offset 1m", Accepted, Accepted),
    ("sum offset 5m", Accepted, Accepted),
    ("09", Accepted, Refused),
    ("x #c\r/ y", Refused, Refused),
    // Class 4: names VictoriaMetrics prints as keywords and cannot read back.
    ("-bool", Refused, Refused),
    ("abs(-on)", Refused, Refused),
    (r#"1 * {__name__="bool"}"#, Refused, Refused),
    (r#"x + {__name__="ignoring"}"#, Refused, Refused),
    (r#"{__name__="inf"} + 0"#, Refused, Refused),
    (r#"rate({__name__="nan"}[5m]) / 2"#, Refused, Refused),
    (r#"x - {__name__="Group_Left"}"#, Refused, Refused),
    (r#"x - {__name__="NaN", a="b"}"#, Refused, Refused),
    ("1 - (bool(x))", Refused, Refused),
    (r#"x + (on{a="b"})"#, Refused, Refused),
    (r#"{__name__="", a="b"}"#, Refused, Refused),
    ("x @ (y[5m])", Refused, Refused),
    ("x @ (y @ 5)", Refused, Refused),
    ("x @ (y offset 5m)", Refused, Refused),
    ("x @ ((y[1m]))", Refused, Refused),
    ("foo @ +Ifoo @ +nfo", Refused, Refused),
    ("x @ +(+y[5m])", Refused, Refused),
    ("x @ -y @ -z", Refused, Accepted),
    // Over-blocking that VictoriaMetrics answers.
    ("alice_metric.total", Refused, Accepted),
    ("sum(x) by (host.name)", Refused, Accepted),
    (r#"{host.name="x"}"#, Refused, Accepted),
    (r#"{a:b="c"}"#, Refused, Accepted),
    ("(a, b)", Refused, Accepted),
    ("(a, b,)", Refused, Accepted),
    ("sum((a, rate(b[5m])))", Refused, Accepted),
    ("x @ (end() - 60)", Refused, Accepted),
    ("x @ y", Refused, Accepted),
    ("x @ -y offset 5m", Refused, Accepted),
    ("x[:5m]", Refused, Accepted),
    ("rate(x) keep_metric_names", Refused, Accepted),
    ("sum(x) limit 5", Refused, Accepted),
    ("topk(2, x,)", Refused, Accepted),
    (r#"foo{__name__="bar"}"#, Refused, Accepted),
    // Over-acceptance in dialect promql (Prometheus refuses range vector operands).
    ("x[5m] > 1", Refused, Accepted),
    (
        r#"avg({__name__="x"}[5m] > 1) by (instance)"#,
        Refused,
        Accepted,
    ),
    // metricsql's grammar, which dialect metricsql now follows.
    ("x keep_metric_names", Refused, Refused),
    ("sum(x) keep_metric_names", Refused, Refused),
    ("rate(x) limit 5", Refused, Refused),
    ("foo by (a) (x)", Refused, Refused),
    ("x + bool y", Refused, Refused),
    ("x and on(a) group_left y", Refused, Refused),
    ("x[1m:1m][1m:1m]", Refused, Refused),
    ("x @ 1 @ 2", Refused, Refused),
    ("x offset 1m [5m]", Refused, Refused),
    ("x[5m+1m]", Accepted, Refused),
    (r#"{"quoted"}"#, Accepted, Refused),
    ("WITH (a = b) a", Refused, Refused),
];

#[test]
fn hostile_inputs_are_refused_or_read_alike() {
    let tenant = TenantMatcher::new("client_id", &["1999"]).unwrap();
    let expected = ExpectedMatcher::new("client_id", &["1999"]);
    let mut oracle = Oracle::start();
    let mut problems = Vec::new();
    for &(query, promql, metricsql) in HOSTILE {
        for (dialect, want) in [(Dialect::Promql, promql), (Dialect::Metricsql, metricsql)] {
            let out = rewrite(query, &tenant, ConflictPolicy::And, dialect);
            let got = if out.is_ok() { Accepted } else { Refused };
            if got != want {
                problems.push(format!(
                    "{query:?} in {dialect:?}: {got:?}, expected {want:?}: {out:?}"
                ));
            }
            let Ok(output) = out else { continue };
            let verdict = oracle.judge(&output);
            let count = filter_selectors(query, dialect);
            for f in findings(&verdict, &expected, count) {
                if !(dialect == Dialect::Promql && matches!(f, Finding::DoesNotParse(_))) {
                    problems.push(format!(
                        "{query:?} in {dialect:?}: output {output:?}: {f:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The oracle catches each class: what the filter used to send for issue #10's examples
/// (and the duration crash found since) is flagged, with the finding that names the harm.
#[test]
fn the_oracle_flags_what_the_filter_used_to_send() {
    let expected = ExpectedMatcher::new("client_id", &["1999"]);
    let mut oracle = Oracle::start();
    type Flagged = fn(&Finding) -> bool;
    let cases: &[(&str, usize, Flagged)] = &[
        // Sent unchanged: the filter saw no selector, metricsql sees `bool.5`.
        (
            "0 < bool.5",
            0,
            |f| matches!(f, Finding::Unconfined(s) if s == "bool.5"),
        ),
        (
            "x{client_id=\"1999\"} * on() group_left.5",
            1,
            |f| matches!(f, Finding::Unconfined(s) if s == "group_left.5"),
        ),
        // Printed back as `0 - bool{...}`, which fails to parse: the process exits.
        (r#"-bool{client_id="1999"}"#, 1, |f| {
            matches!(f, Finding::ReparseFails(_) | Finding::OptimizePanics(_))
        }),
        (r#"{__name__="inf",client_id="1999"} + 0"#, 1, |f| {
            matches!(f, Finding::OptimizePanics(_))
        }),
        (r#"x{client_id="1999"}[.5m]"#, 1, |f| {
            matches!(f, Finding::DurationPanics(_))
        }),
        (r#"x{client_id="1999"}[0x10]"#, 1, |f| {
            matches!(f, Finding::DurationPanics(_))
        }),
        // A selector the filter did not count.
        (r#"x{client_id="1999"} + y"#, 1, |f| {
            matches!(
                f,
                Finding::SelectorCount {
                    filter: 1,
                    backend: 2
                }
            )
        }),
    ];
    for (sent, filter_count, flagged) in cases {
        let verdict = oracle.judge(sent);
        let found = findings(&verdict, &expected, *filter_count);
        assert!(
            found.iter().any(flagged),
            "{sent:?}: the oracle did not flag it: {found:?}"
        );
    }
}
