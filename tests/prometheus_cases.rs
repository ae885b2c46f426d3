//! Prometheus' own parser cases (`../shared/corpus/prometheus_parse_cases.jsonl`, the
//! `testExpr` table of `promql/parser/parse_test.go`): in `Dialect::Promql` we accept
//! every `fail: false` input and reject every `fail: true` input, and `rewrite` agrees.
//!
//! Invalid UTF-8: two inputs hold bytes that are not UTF-8 (`input_hex`). Our API takes
//! `&str`, so such bytes cannot reach the parser at all: the filter converts the decoded
//! query with `std::str::from_utf8` and refuses it there. The test feeds the real bytes
//! to that same boundary and requires the refusal, so the pair is checked, not skipped.
//!
//! Deviations from Prometheus go in [`EXCEPTIONS`], each with its reason. The goal is
//! an empty table; a listed input that no longer deviates fails the test too.

mod common;

use common::{corpus_dir, report};
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, TenantMatcher};

/// `(input, reason)` for each input where we knowingly differ from Prometheus.
const EXCEPTIONS: &[(&str, &str)] = &[(
    "info(rate(http_request_counter_total{}[5m]))",
    "parses, but rewrite refuses info() without a data-label selector: it joins in \
     target_info series of every tenant (see tests/inject_rules.rs)",
)];

#[derive(serde::Deserialize)]
struct Case {
    input: String,
    fail: bool,
    err: Option<String>,
    line: u32,
    input_hex: Option<String>,
}

fn decode_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd hex length: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn load_cases() -> Vec<Case> {
    let path = corpus_dir().join("prometheus_parse_cases.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn prometheus_parse_cases() {
    let cases = load_cases();
    assert!(cases.len() >= 350, "only {} cases", cases.len());
    let tenant = TenantMatcher::new("client_id", &["1999"]).expect("valid tenant");
    let mut accepted = 0;
    let mut rejected = 0;
    let mut utf8_rejected = 0;
    let mut failures = Vec::new();
    let mut excepted = Vec::new();

    for case in &cases {
        if let Some(hex) = &case.input_hex {
            let bytes = decode_hex(hex);
            assert!(
                case.fail,
                "parse_test.go:{} invalid UTF-8 expected to pass?",
                case.line
            );
            assert!(
                std::str::from_utf8(&bytes).is_err(),
                "parse_test.go:{}: input_hex is valid UTF-8",
                case.line
            );
            utf8_rejected += 1;
            continue;
        }
        let input = case.input.as_str();
        let parsed = parse(input, Dialect::Promql);
        let rewritten = rewrite(input, &tenant, ConflictPolicy::And, Dialect::Promql);
        let problem = match (&parsed, case.fail) {
            (Ok(_), false) => rewritten
                .as_ref()
                .err()
                .map(|e| format!("parses but rewrite fails: {e}")),
            (Err(e), false) => Some(format!("rejected: {e}")),
            (Ok(_), true) => Some(format!("accepted; Prometheus says {:?}", case.err)),
            (Err(e), true) => {
                let bad_position = e.offset > input.len() || e.line == 0 || e.column == 0;
                if e.message.trim().is_empty() || bad_position {
                    Some(format!("error without message or position: {e:?}"))
                } else {
                    rewritten
                        .as_ref()
                        .ok()
                        .map(|o| format!("parse refuses but rewrite gives {o:?}"))
                }
            }
        };
        let exception = EXCEPTIONS.iter().find(|(i, _)| *i == input);
        match (problem, exception) {
            (None, None) => {
                if case.fail {
                    rejected += 1;
                } else {
                    accepted += 1;
                }
            }
            (Some(p), Some((_, reason))) => {
                excepted.push(format!("{input:?}: {p} (excepted: {reason})"))
            }
            (Some(p), None) => failures.push(format!(
                "parse_test.go:{} fail={} {input:?}\n    -> {p}",
                case.line, case.fail
            )),
            (None, Some((_, reason))) => failures.push(format!(
                "{input:?} is listed in EXCEPTIONS ({reason}) but behaves: remove it"
            )),
        }
    }

    report(&format!(
        "prometheus cases: {} total; {accepted} accepted as expected, {rejected} rejected as expected, \
         {utf8_rejected} invalid UTF-8 refused at from_utf8, {} excepted, {} failing",
        cases.len(),
        excepted.len(),
        failures.len()
    ));
    for e in &excepted {
        report(&format!("  exception: {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        utf8_rejected, 2,
        "the README names two invalid UTF-8 inputs"
    );
}

/// Prometheus' checkAST refuses range vectors as binary operands ("binary expression
/// must contain only scalar and instant vector types"), and dialect `promql` does too.
/// (It once accepted them, because the product's reference example has one; issue #10
/// asks for Prometheus' rules, and promql-parser and Prometheus 2.42 and 3.x agree.)
/// VictoriaMetrics answers them, so dialect `metricsql` keeps them, every selector confined.
#[test]
fn range_vector_operands_follow_each_backend() {
    let tenant = TenantMatcher::new("client_id", &["1999"]).unwrap();
    for (input, expected) in [
        ("x[5m] > 1", r#"x{client_id="1999"}[5m] > 1"#),
        ("1 + x[5m]", r#"1 + x{client_id="1999"}[5m]"#),
        (
            "x and y[5m]",
            r#"x{client_id="1999"} and y{client_id="1999"}[5m]"#,
        ),
        ("x[5m:] * 2", r#"x{client_id="1999"}[5m:] * 2"#),
        ("avg(x[5m] > 1)", r#"avg(x{client_id="1999"}[5m] > 1)"#),
        (
            r#"avg({__name__="x"}[5m] > 1) by (instance)"#,
            r#"avg({__name__="x",client_id="1999"}[5m] > 1) by (instance)"#,
        ),
    ] {
        assert!(
            promql_parser::parser::parse(input).is_err(),
            "promql-parser reads {input}"
        );
        let refused = rewrite(input, &tenant, ConflictPolicy::And, Dialect::Promql).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("binary expression must contain only scalar and instant vector types"),
            "{input}: {refused}"
        );
        let out = rewrite(input, &tenant, ConflictPolicy::And, Dialect::Metricsql).unwrap();
        assert_eq!(out, expected, "{input}");
    }
    // A string operand stays refused, as in Prometheus.
    assert!(parse(r#""a" + 1"#, Dialect::Promql).is_err());
}
