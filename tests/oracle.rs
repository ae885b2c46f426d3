//! Differential oracle against `promql-parser` 0.11 over the real-world corpus: for every
//! record promql-parser parses, our `rewrite(.., Dialect::Promql)` output must parse with
//! promql-parser too, every vector and matrix selector of it must end with the tenant
//! matcher, removing that matcher must give back the original's AST (`==`), and the
//! output must be the input with only the matcher text inserted (one per selector).
//! Run for one value (`client_id="1999"`), two values (`client_id=~"1999|2000"`) and
//! the quoted UTF-8 label `"tenant.id"` (promql-parser reads quoted label names).

mod common;

use common::{check_only_insertions, check_rewrite, load_corpus, report, ExpectedMatcher};
use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, TenantMatcher};

fn oracle(label: &str, values: &[&str]) {
    let tenant = TenantMatcher::new(label, values).expect("valid tenant");
    let expected = ExpectedMatcher::new(label, values);
    let mut reference_parses = 0;
    let mut checked = 0;
    let mut matchers = 0;
    let mut failures = Vec::new();
    for (line, record) in load_corpus() {
        let expr = record.expr.as_str();
        if promql_parser::parser::parse(expr).is_err() {
            continue;
        }
        reference_parses += 1;
        let result = rewrite(expr, &tenant, ConflictPolicy::And, Dialect::Promql)
            .map_err(|e| format!("rewrite refused: {e}"))
            .and_then(|output| {
                let checked = check_rewrite(expr, &output, &expected).and_then(|found| {
                    let inserted = check_only_insertions(expr, &output, tenant.matcher_text())?;
                    if inserted != found {
                        return Err(format!("{inserted} insertions for {found} tenant matchers"));
                    }
                    Ok(found)
                });
                checked.map_err(|e| format!("{e}\n    output: {output:?}"))
            });
        match result {
            Ok(n) => {
                checked += 1;
                matchers += n;
            }
            Err(e) => failures.push(format!("  line {line}: {expr:?}\n    -> {e}")),
        }
    }
    report(&format!(
        "oracle [{}]: {checked}/{reference_parses} corpus records that promql-parser parses pass, \
         {matchers} tenant matchers checked, {} failing",
        tenant.matcher_text(),
        failures.len()
    ));
    assert!(
        reference_parses > 9_000,
        "promql-parser parses only {reference_parses} records?"
    );
    assert!(
        failures.is_empty(),
        "oracle [{}]: {} failures; first 20:\n{}",
        tenant.matcher_text(),
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn oracle_one_value() {
    oracle("client_id", &["1999"]);
}

#[test]
fn oracle_two_values() {
    oracle("client_id", &["1999", "2000"]);
}

#[test]
fn oracle_quoted_utf8_label() {
    oracle("tenant.id", &["1999"]);
}

/// The oracle itself must be able to fail: a missing matcher, a wrong value, and a
/// changed query are each caught.
#[test]
fn oracle_catches_mistakes() {
    let one = ExpectedMatcher::new("client_id", &["1999"]);
    assert_eq!(
        check_rewrite("foo", r#"foo{client_id="1999"}"#, &one),
        Ok(1)
    );
    assert_eq!(
        check_rewrite(
            "a / on(x) rate(b[5m:])",
            r#"a{client_id="1999"} / on(x) rate(b{client_id="1999"}[5m:])"#,
            &one
        ),
        Ok(2)
    );
    assert!(check_rewrite("a + b", r#"a{client_id="1999"} + b"#, &one).is_err());
    assert!(check_rewrite("foo", r#"foo{client_id="2000"}"#, &one).is_err());
    assert!(check_rewrite("foo", r#"foo{client_id=~"1999"}"#, &one).is_err());
    assert!(check_rewrite("foo", r#"bar{client_id="1999"}"#, &one).is_err());
    assert!(check_rewrite("foo[5m]", r#"foo{client_id="1999"}[1m]"#, &one).is_err());
    // Our matcher must come last, after the user's.
    assert!(check_rewrite(r#"foo{a="b"}"#, r#"foo{client_id="1999",a="b"}"#, &one).is_err());
    assert!(check_rewrite("foo", "foo{", &one).is_err());

    let two = ExpectedMatcher::new("client_id", &["1999", "a.b"]);
    assert_eq!(
        check_rewrite("foo", r#"foo{client_id=~"1999|a\\.b"}"#, &two),
        Ok(1)
    );
    assert!(check_rewrite("foo", r#"foo{client_id=~"1999|a.b"}"#, &two).is_err());

    // Output that changes anything but the inserted text is caught.
    let m = r#"client_id="1999""#;
    assert_eq!(
        check_only_insertions("foo", r#"foo{client_id="1999"}"#, m),
        Ok(1)
    );
    assert_eq!(
        check_only_insertions(
            r#"a{b="c"} + d{}"#,
            r#"a{b="c",client_id="1999"} + d{client_id="1999"}"#,
            m
        ),
        Ok(2)
    );
    assert!(check_only_insertions("foo ", r#"foo{client_id="1999"}"#, m).is_err());
    assert!(check_only_insertions("foo{a='b'}", r#"foo{a="b",client_id="1999"}"#, m).is_err());
    assert!(check_only_insertions("foo", r#"foo{ client_id="1999"}"#, m).is_err());

    let quoted = ExpectedMatcher::new("tenant.id", &["x"]);
    assert_eq!(
        check_rewrite("foo", r#"foo{"tenant.id"="x"}"#, &quoted),
        Ok(1)
    );
}
