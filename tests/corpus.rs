//! The real-world corpus (`../shared/corpus/promql_corpus.jsonl`, read in place):
//! every record parses in `Dialect::Metricsql` except the `WITH` templates (which must
//! be refused with an error naming `WITH`) and the one invalid ceph record; every record
//! that `promql-parser` 0.11 parses also parses in `Dialect::Promql`. Prints the counts.

mod common;

use common::{is_invalid_ceph_record, is_with_template, load_corpus, report};
use promql_tenant_filter::{parse, Dialect};

/// How many failures to show; the rest are only counted.
const SHOWN: usize = 20;

#[derive(Default)]
struct Failures {
    count: usize,
    shown: Vec<String>,
}

impl Failures {
    fn push(&mut self, line: usize, expr: &str, why: String) {
        self.count += 1;
        if self.shown.len() < SHOWN {
            let expr: String = expr.chars().take(300).collect();
            self.shown
                .push(format!("  line {line}: {expr:?}\n    -> {why}"));
        }
    }

    fn render(&self, what: &str) -> String {
        format!(
            "{} {what}; first {}:\n{}",
            self.count,
            self.shown.len(),
            self.shown.join("\n")
        )
    }
}

#[test]
fn corpus_parses_in_both_dialects() {
    let records = load_corpus();
    let mut with_templates = 0;
    let mut invalid = 0;
    let mut metricsql_ok = 0;
    let mut reference_ok = 0;
    let mut promql_ok = 0;
    let mut promql_only_ours = 0;
    let mut metricsql_failures = Failures::default();
    let mut promql_failures = Failures::default();

    for (line, record) in &records {
        let expr = record.expr.as_str();
        let ours_metricsql = parse(expr, Dialect::Metricsql);
        if is_with_template(expr) {
            with_templates += 1;
            match ours_metricsql {
                Ok(_) => metricsql_failures.push(*line, expr, "WITH template accepted".into()),
                Err(e) if !e.message.to_ascii_uppercase().contains("WITH") => {
                    metricsql_failures.push(*line, expr, format!("unclear WITH refusal: {e}"))
                }
                Err(_) => {}
            }
        } else if is_invalid_ceph_record(record) {
            invalid += 1;
            if ours_metricsql.is_ok() || parse(expr, Dialect::Promql).is_ok() {
                metricsql_failures.push(*line, expr, "invalid ceph record accepted".into());
            }
        } else {
            match ours_metricsql {
                Ok(_) => metricsql_ok += 1,
                Err(e) => metricsql_failures.push(*line, expr, e.to_string()),
            }
        }

        let ours_promql = parse(expr, Dialect::Promql);
        if promql_parser::parser::parse(expr).is_ok() {
            reference_ok += 1;
            match ours_promql {
                Ok(_) => promql_ok += 1,
                Err(e) => promql_failures.push(*line, expr, e.to_string()),
            }
        } else if ours_promql.is_ok() {
            promql_only_ours += 1;
        }
    }

    let expected_metricsql = records.len() - with_templates - invalid;
    report(&format!(
        "corpus: {} records; {with_templates} WITH templates (must be refused), {invalid} invalid (ceph); \
         dialect metricsql parses {metricsql_ok}/{expected_metricsql}",
        records.len()
    ));
    report(&format!(
        "corpus: promql-parser 0.11 parses {reference_ok}; dialect promql parses {promql_ok}/{reference_ok} of those \
         (and {promql_only_ours} that promql-parser rejects)"
    ));

    assert_eq!(
        invalid, 1,
        "the README names exactly one invalid ceph record"
    );
    assert!(
        with_templates > 0,
        "the corpus has WITH templates; is_with_template finds none"
    );
    let mut message = String::new();
    if metricsql_failures.count > 0 {
        message += &metricsql_failures.render("records fail in dialect metricsql");
        message += "\n";
    }
    if promql_failures.count > 0 {
        message +=
            &promql_failures.render("records that promql-parser parses fail in dialect promql");
    }
    assert!(message.is_empty(), "{message}");
    assert_eq!(metricsql_ok, expected_metricsql);
    assert_eq!(promql_ok, reference_ok);
}

#[test]
fn with_template_detection() {
    assert!(is_with_template("WITH (f = {a=\"b\"}) x{f}"));
    assert!(is_with_template("# comment\n  with(f={a=\"b\"}) x{f}"));
    assert!(!is_with_template("without_thing(x)"));
    assert!(!is_with_template("sum(x) without (a)"));
    assert!(!is_with_template("with_metric{a=\"b\"}"));
}
