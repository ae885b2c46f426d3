//! Unit tests for each rule of the issue's "Tenant injection" section: the exact
//! examples, where the matcher and its comma go, the matcher text (one value, several
//! values regex-quoted like Go's `regexp.QuoteMeta`, PromQL string escaping of hostile
//! values, quoting of non-legacy label names), the three conflict policies, queries with
//! no selector, MetricsQL or-filters, and selectors nested anywhere.

use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, RewriteError, TenantMatcher};

fn tenant(label: &str, values: &[&str]) -> TenantMatcher {
    TenantMatcher::new(label, values).unwrap_or_else(|e| panic!("{label} {values:?}: {e}"))
}

fn client_1999() -> TenantMatcher {
    tenant("client_id", &["1999"])
}

#[track_caller]
fn assert_rewrite_with(
    t: &TenantMatcher,
    policy: ConflictPolicy,
    dialect: Dialect,
    input: &str,
    expected: &str,
) {
    match rewrite(input, t, policy, dialect) {
        Ok(got) => assert_eq!(got, expected, "input {input:?} ({policy:?}, {dialect:?})"),
        Err(e) => panic!(
            "input {input:?} ({policy:?}, {dialect:?}): expected {expected:?}, got error {e}"
        ),
    }
}

/// Default policy, both dialects (PromQL syntax must rewrite the same in MetricsQL).
#[track_caller]
fn assert_rewrite(input: &str, expected: &str) {
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        assert_rewrite_with(
            &client_1999(),
            ConflictPolicy::And,
            dialect,
            input,
            expected,
        );
    }
}

#[test]
fn issue_examples() {
    assert_rewrite("foo", r#"foo{client_id="1999"}"#);
    assert_rewrite(r#"foo{a="b"}"#, r#"foo{a="b",client_id="1999"}"#);
    assert_rewrite(
        r#"{__name__="foo"}[5m]"#,
        r#"{__name__="foo",client_id="1999"}[5m]"#,
    );
    // The long example must come out exactly. It has a range vector on the right of
    // `and`: VictoriaMetrics answers that, Prometheus refuses it, and so does each dialect.
    let input = r#"max_over_time(deriv(rate(distance_covered_total[5s])[30s:5s])[10m:])and http_requests_total{status_code=~"2.*"}[50h]"#;
    let expected = r#"max_over_time(deriv(rate(distance_covered_total{client_id="1999"}[5s])[30s:5s])[10m:])and http_requests_total{status_code=~"2.*",client_id="1999"}[50h]"#;
    let tenant = client_1999();
    assert_rewrite_with(
        &tenant,
        ConflictPolicy::And,
        Dialect::Metricsql,
        input,
        expected,
    );
    let refused = rewrite(input, &tenant, ConflictPolicy::And, Dialect::Promql);
    assert!(
        refused.as_ref().is_err_and(|e| e
            .to_string()
            .contains("binary expression must contain only scalar and instant vector types")),
        "{refused:?}"
    );
    assert_rewrite("rate(x[5m])", r#"rate(x{client_id="1999"}[5m])"#);
}

#[test]
fn comma_placement() {
    // An existing trailing comma: no second comma.
    assert_rewrite(r#"foo{a="b",}"#, r#"foo{a="b",client_id="1999"}"#);
    // Blanks before `}`: the matcher goes right before `}`, the blanks stay.
    assert_rewrite(r#"foo{a="b" }"#, r#"foo{a="b" ,client_id="1999"}"#);
    assert_rewrite("foo{a=\"b\",\n}", "foo{a=\"b\",\nclient_id=\"1999\"}");
    assert_rewrite(r#"foo{a="b", }"#, r#"foo{a="b", client_id="1999"}"#);
    // Empty braces: no comma at all.
    assert_rewrite("foo{}", r#"foo{client_id="1999"}"#);
    assert_rewrite("foo{ }", r#"foo{ client_id="1999"}"#);
    // A comment inside the braces counts as blank: the comma goes right before `}`,
    // and a comma before the comment means no second comma.
    assert_rewrite(
        "foo{a=\"b\" # c\n}",
        "foo{a=\"b\" # c\n,client_id=\"1999\"}",
    );
    assert_rewrite(
        "foo{a=\"b\", # c,\n}",
        "foo{a=\"b\", # c,\nclient_id=\"1999\"}",
    );
}

#[test]
fn bare_name_gets_braces_right_after_the_name() {
    assert_rewrite("foo offset 5m", r#"foo{client_id="1999"} offset 5m"#);
    assert_rewrite("foo @ 1609746000", r#"foo{client_id="1999"} @ 1609746000"#);
    assert_rewrite(
        "foo[5m] offset -1h",
        r#"foo{client_id="1999"}[5m] offset -1h"#,
    );
    assert_rewrite("foo [5m]", r#"foo{client_id="1999"} [5m]"#);
    assert_rewrite("foo:bar:rate5m", r#"foo:bar:rate5m{client_id="1999"}"#);
    assert_rewrite(
        "# comment\nfoo # other\n",
        "# comment\nfoo{client_id=\"1999\"} # other\n",
    );
}

#[test]
fn quoted_metric_names() {
    // Prometheus 3 syntax; VictoriaMetrics 1.79's parser has no quoted names.
    for (input, expected) in [
        (r#"{"my.metric"}"#, r#"{"my.metric",client_id="1999"}"#),
        (
            r#"{"my.metric", "a.b"="c"}"#,
            r#"{"my.metric", "a.b"="c",client_id="1999"}"#,
        ),
    ] {
        let tenant = client_1999();
        assert_rewrite_with(
            &tenant,
            ConflictPolicy::And,
            Dialect::Promql,
            input,
            expected,
        );
        assert!(rewrite(input, &tenant, ConflictPolicy::And, Dialect::Metricsql).is_err());
    }
}

#[test]
fn several_values_are_a_quoted_regex() {
    let t = tenant("client_id", &["1999", "2000"]);
    assert_eq!(t.matcher_text(), r#"client_id=~"1999|2000""#);
    assert_rewrite_with(
        &t,
        ConflictPolicy::And,
        Dialect::Promql,
        "foo",
        r#"foo{client_id=~"1999|2000"}"#,
    );
    // Every regex metacharacter of Go's QuoteMeta, then PromQL string escaping of the
    // resulting backslashes.
    let meta = tenant("t", &[r"a.b", r"\.+*?()|[]{}^$", "plain"]);
    assert_eq!(
        meta.matcher_text(),
        r#"t=~"a\\.b|\\\\\\.\\+\\*\\?\\(\\)\\|\\[\\]\\{\\}\\^\\$|plain""#
    );
    // Non-meta characters are left alone (QuoteMeta escapes only the meta set).
    assert_eq!(
        tenant("t", &["a-b", "c/d"]).matcher_text(),
        r#"t=~"a-b|c/d""#
    );
}

#[test]
fn hostile_values_become_one_harmless_string() {
    let t = tenant("client_id", &[r#"1999"} or vector(1) #"#]);
    assert_eq!(t.matcher_text(), r#"client_id="1999\"} or vector(1) #""#);
    assert_rewrite_with(
        &t,
        ConflictPolicy::And,
        Dialect::Promql,
        "up",
        r#"up{client_id="1999\"} or vector(1) #"}"#,
    );
    assert_eq!(tenant("c", &[r"a\b"]).matcher_text(), r#"c="a\\b""#);
    assert_eq!(tenant("c", &["a\nb"]).matcher_text(), r#"c="a\nb""#);
    assert_eq!(tenant("c", &["a\tb\rc"]).matcher_text(), r#"c="a\tb\rc""#);
    let control = tenant("c", &["a\u{0}b\u{7f}"]).matcher_text().to_owned();
    assert!(
        !control.chars().any(|c| c.is_control()),
        "control characters must be escaped: {control:?}"
    );
    // Non-ASCII printable text may stay as is, but must round-trip through promql-parser.
    for value in ["é", "日本", "a'b`c", "a\u{0}b\u{7f}", "\u{2028}"] {
        let t = tenant("c", &[value]);
        let out = rewrite("up", &t, ConflictPolicy::And, Dialect::Promql).expect("rewrite up");
        let ast = promql_parser::parser::parse(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        let promql_parser::parser::Expr::VectorSelector(vs) = ast else {
            panic!("{out:?}")
        };
        assert_eq!(vs.matchers.matchers.len(), 1, "{out:?}");
        assert_eq!(vs.matchers.matchers[0].value, value, "{out:?}");
    }
}

#[test]
fn non_legacy_label_names_are_quoted() {
    assert_eq!(
        tenant("client_id", &["x"]).matcher_text(),
        r#"client_id="x""#
    );
    assert_eq!(tenant("_a1", &["x"]).matcher_text(), r#"_a1="x""#);
    assert_eq!(
        tenant("tenant.id", &["x"]).matcher_text(),
        r#""tenant.id"="x""#
    );
    assert_eq!(tenant("a-b", &["x"]).matcher_text(), r#""a-b"="x""#);
    assert_eq!(tenant("1abc", &["x"]).matcher_text(), r#""1abc"="x""#);
    assert_eq!(tenant("ключ", &["x"]).matcher_text(), r#""ключ"="x""#);
    // A colon is legal in metric names but not in label names.
    assert_eq!(tenant("a:b", &["x"]).matcher_text(), r#""a:b"="x""#);
    assert_eq!(tenant("a\"b", &["x"]).matcher_text(), r#""a\"b"="x""#);
    assert_eq!(
        tenant("tenant.id", &["x", "y"]).matcher_text(),
        r#""tenant.id"=~"x|y""#
    );
    assert_rewrite_with(
        &tenant("tenant.id", &["x"]),
        ConflictPolicy::And,
        Dialect::Promql,
        r#"foo{a="b"}"#,
        r#"foo{a="b","tenant.id"="x"}"#,
    );
}

#[test]
fn invalid_tenants_are_refused() {
    assert!(
        TenantMatcher::new("client_id", &[] as &[&str]).is_err(),
        "no values"
    );
    assert!(TenantMatcher::new("", &["x"]).is_err(), "empty label");
}

#[test]
fn policy_and_keeps_the_users_matcher_and_adds_ours() {
    let t = client_1999();
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        assert_rewrite_with(
            &t,
            ConflictPolicy::And,
            dialect,
            r#"up{client_id="7"}"#,
            r#"up{client_id="7",client_id="1999"}"#,
        );
        assert_rewrite_with(
            &t,
            ConflictPolicy::And,
            dialect,
            r#"up{client_id=~"19.*", job="x"}"#,
            r#"up{client_id=~"19.*", job="x",client_id="1999"}"#,
        );
    }
    assert_eq!(ConflictPolicy::default(), ConflictPolicy::And);
}

#[test]
fn policy_replace_drops_the_users_matcher() {
    let t = client_1999();
    let replace = |input: &str, expected: &str| {
        assert_rewrite_with(
            &t,
            ConflictPolicy::Replace,
            Dialect::Promql,
            input,
            expected,
        )
    };
    replace(r#"up{client_id="7"}"#, r#"up{client_id="1999"}"#);
    replace(r#"up{client_id!="7"}"#, r#"up{client_id="1999"}"#);
    // Other labels stay, and no dangling comma is left behind.
    let out = rewrite(
        r#"up{a="1",client_id=~".+",b="2"}"#,
        &t,
        ConflictPolicy::Replace,
        Dialect::Promql,
    )
    .expect("replace");
    let reparsed = promql_parser::parser::parse(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    let expected = promql_parser::parser::parse(r#"up{a="1",b="2",client_id="1999"}"#).unwrap();
    assert_eq!(reparsed, expected, "output {out:?}");
    replace("up", r#"up{client_id="1999"}"#);
    replace(r#"up{job="x"}"#, r#"up{job="x",client_id="1999"}"#);
}

#[test]
fn policy_reject_refuses_a_different_matcher_only() {
    let t = client_1999();
    for input in [
        r#"up{client_id="7"}"#,
        r#"up{client_id!="1999"}"#,
        r#"up{client_id=~".*"}"#,
        r#"sum(rate(a[5m])) / sum(rate(b{client_id="2000"}[5m]))"#,
    ] {
        match rewrite(input, &t, ConflictPolicy::Reject, Dialect::Promql) {
            Err(RewriteError::Conflict(message)) => assert!(!message.is_empty()),
            other => panic!("input {input:?}: expected a Conflict, got {other:?}"),
        }
    }
    // Identical to ours (whatever the quoting): allowed, and ours is still added.
    assert_rewrite_with(
        &t,
        ConflictPolicy::Reject,
        Dialect::Promql,
        "up{client_id='1999'}",
        r#"up{client_id='1999',client_id="1999"}"#,
    );
    assert_rewrite_with(
        &t,
        ConflictPolicy::Reject,
        Dialect::Promql,
        r#"up{client_id="1999"}"#,
        r#"up{client_id="1999",client_id="1999"}"#,
    );
    assert_rewrite_with(
        &t,
        ConflictPolicy::Reject,
        Dialect::Promql,
        "up",
        r#"up{client_id="1999"}"#,
    );
}

/// Policy `reject` refuses a matcher that asks for anything beyond the tenant's own
/// values. A regex that spells exactly our values (`=~"1999"`, QuoteMeta-escaped) selects
/// the same series as ours, so it is allowed, and ours is added as always.
#[test]
fn policy_reject_allows_a_regex_spelling_of_exactly_our_values() {
    for (values, input, expected) in [
        (
            &["1999"][..],
            r#"up{client_id=~"1999"}"#,
            r#"up{client_id=~"1999",client_id="1999"}"#,
        ),
        (
            &["a.b"][..],
            r#"up{client_id=~"a\\.b"}"#,
            r#"up{client_id=~"a\\.b",client_id="a.b"}"#,
        ),
    ] {
        let t = tenant("client_id", values);
        let out = rewrite(input, &t, ConflictPolicy::Reject, Dialect::Promql);
        assert_eq!(
            out.as_deref().ok(),
            Some(expected),
            "input {input:?}: got {out:?}"
        );
    }
    // A regex that reaches further is refused.
    let t = tenant("client_id", &["1999"]);
    for input in [
        r#"up{client_id=~"1999|2000"}"#,
        r#"up{client_id=~"19.*"}"#,
        r#"up{client_id!="2000"}"#,
    ] {
        match rewrite(input, &t, ConflictPolicy::Reject, Dialect::Promql) {
            Err(RewriteError::Conflict(_)) => {}
            other => panic!("input {input:?}: expected a Conflict, got {other:?}"),
        }
    }
}

#[test]
fn queries_without_selectors_are_unchanged() {
    for input in [
        "1+1",
        "time()",
        "vector(1)",
        "scalar(vector(1)) * 2",
        "\"str\"",
        "-1 ^ 2",
        "pi()",
    ] {
        assert_rewrite(input, input);
    }
}

/// Where the matcher goes in a non-last branch is not pinned by the issue, so the
/// output is compared through promql-parser's AST (it reads or-filters too).
#[test]
fn metricsql_or_filters_get_the_matcher_in_every_branch() {
    let cases = [
        (
            r#"{a="b" or c="d"}"#,
            r#"{a="b",client_id="1999" or c="d",client_id="1999"}"#,
        ),
        (
            r#"foo{a="b" or c="d", e="f"}"#,
            r#"foo{a="b",client_id="1999" or c="d", e="f",client_id="1999"}"#,
        ),
        (
            r#"rate(foo{a="b" or c="d" or e="f"}[5m])"#,
            r#"rate(foo{a="b",client_id="1999" or c="d",client_id="1999" or e="f",client_id="1999"}[5m])"#,
        ),
    ];
    for (input, expected) in cases {
        let out = rewrite(
            input,
            &client_1999(),
            ConflictPolicy::And,
            Dialect::Metricsql,
        )
        .unwrap_or_else(|e| panic!("{input:?}: {e}"));
        let got = promql_parser::parser::parse(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        let want = promql_parser::parser::parse(expected).unwrap();
        assert_eq!(got, want, "input {input:?} gave {out:?}");
    }
    // The last branch follows the before-`}` rule exactly.
    let out = rewrite(
        r#"{a="b" or c="d"}"#,
        &client_1999(),
        ConflictPolicy::And,
        Dialect::Metricsql,
    )
    .unwrap();
    assert!(out.ends_with(r#"c="d",client_id="1999"}"#), "{out:?}");
    assert_rewrite_with(
        &client_1999(),
        ConflictPolicy::And,
        Dialect::Metricsql,
        "rate(x)",
        r#"rate(x{client_id="1999"})"#,
    );
}

#[test]
fn metricsql_extensions_rewrite_every_selector() {
    let cases = [
        ("x default 0", r#"x{client_id="1999"} default 0"#),
        ("x if y", r#"x{client_id="1999"} if y{client_id="1999"}"#),
        (
            "x ifnot y",
            r#"x{client_id="1999"} ifnot y{client_id="1999"}"#,
        ),
        (
            "sum(x) by (a) limit 10",
            r#"sum(x{client_id="1999"}) by (a) limit 10"#,
        ),
        (
            "rate(x) keep_metric_names",
            r#"rate(x{client_id="1999"}) keep_metric_names"#,
        ),
        (
            "topk_max(1, rollup_rate(x[5m]))",
            r#"topk_max(1, rollup_rate(x{client_id="1999"}[5m]))"#,
        ),
        (
            "limitk(y, x)",
            r#"limitk(y{client_id="1999"}, x{client_id="1999"})"#,
        ),
    ];
    for (input, expected) in cases {
        assert_rewrite_with(
            &client_1999(),
            ConflictPolicy::And,
            Dialect::Metricsql,
            input,
            expected,
        );
    }
}

/// The issue lists the number suffixes `Ki`, `Mi`, `K` and `M` for MetricsQL.
#[test]
fn metricsql_number_suffixes() {
    for number in ["1Ki", "1K", "2Mi", "3M", "1.5K", "1.5Mi"] {
        assert_rewrite_with(
            &client_1999(),
            ConflictPolicy::And,
            Dialect::Metricsql,
            &format!("x > {number}"),
            &format!(r#"x{{client_id="1999"}} > {number}"#),
        );
    }
}

#[test]
fn with_templates_are_refused_clearly() {
    let input = r#"WITH (f = {a="b"}) x{f}"#;
    for dialect in [Dialect::Metricsql, Dialect::Promql] {
        match rewrite(input, &client_1999(), ConflictPolicy::And, dialect) {
            Err(RewriteError::Parse(e)) if dialect == Dialect::Metricsql => {
                assert!(e.message.contains("WITH"), "unclear: {e}")
            }
            Err(RewriteError::Parse(_)) => {}
            other => panic!("{dialect:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn braces_and_hashes_inside_strings_are_not_structure() {
    assert_rewrite(r##"foo{a="#"}"##, r##"foo{a="#",client_id="1999"}"##);
    assert_rewrite(r#"foo{a="}"}"#, r#"foo{a="}",client_id="1999"}"#);
    assert_rewrite("foo{a='{', b=`}`}", "foo{a='{', b=`}`,client_id=\"1999\"}");
    assert_rewrite(r#"foo{a="\"}"}"#, r#"foo{a="\"}",client_id="1999"}"#);
    // `or` is a label name here, not an or-filter.
    assert_rewrite(r#"{or="x"}"#, r#"{or="x",client_id="1999"}"#);
    assert_rewrite(r#"{a="b", or="c"}"#, r#"{a="b", or="c",client_id="1999"}"#);
}

#[test]
fn info_data_label_selector_is_confined_too() {
    // info()'s second argument selects info series; unconfined, it would join in
    // labels from other tenants' series.
    assert_rewrite(
        r#"info(up, {k8s_cluster_name=~".+"})"#,
        r#"info(up{client_id="1999"}, {k8s_cluster_name=~".+",client_id="1999"})"#,
    );
}

#[test]
fn raw_string_ending_in_a_backslash_is_refused() {
    // VictoriaMetrics reads `\`` inside a raw string as an escaped backtick: here it
    // would see `bob` as code while PromQL sees it inside the last string argument.
    let smuggle = r#"label_replace(a, "x", `\`, "y", `, "a", "b") or bob # `)"#;
    for query in [smuggle, r"`\`", r"`a\\\`", r#"foo{a=`\`}"#] {
        for dialect in [Dialect::Promql, Dialect::Metricsql] {
            match rewrite(query, &client_1999(), ConflictPolicy::And, dialect) {
                Err(RewriteError::Parse(e)) => assert!(e.message.contains("backslash"), "{e}"),
                other => panic!("{query:?} ({dialect:?}): {other:?}"),
            }
        }
    }
    // Backslashes elsewhere in a raw string, or an even run at its end, read alike.
    assert_rewrite(r#"foo{a=~`\d+\\`}"#, r#"foo{a=~`\d+\\`,client_id="1999"}"#);
}

#[test]
fn info_without_data_label_selector_is_refused() {
    // info(v) joins in target_info series chosen by v's `instance` and `job` labels
    // alone: another tenant's info series with the same instance and job would lend its
    // labels to ours, and no matcher we could add takes part in that selection.
    for query in [
        "info(up)",
        "info(rate(http_requests_total[5m]))",
        "sum(info((up)))",
        "1 + info(up) * 2",
        "info(info(up), {k=~\".+\"})",
    ] {
        for dialect in [Dialect::Promql, Dialect::Metricsql] {
            for policy in [
                ConflictPolicy::And,
                ConflictPolicy::Replace,
                ConflictPolicy::Reject,
            ] {
                match rewrite(query, &client_1999(), policy, dialect) {
                    Err(RewriteError::Parse(e)) => {
                        assert!(e.message.contains("info()"), "{query:?}: {e}")
                    }
                    other => panic!("{query:?} ({dialect:?}, {policy:?}): {other:?}"),
                }
            }
        }
    }
    // A metric or label merely called info is not the function.
    assert_rewrite("info", r#"info{client_id="1999"}"#);
    assert_rewrite(r#"up{info="x"}"#, r#"up{info="x",client_id="1999"}"#);
}

#[test]
fn selectors_nested_anywhere() {
    let cases = [
        (
            "sum by (job) (rate(a[5m]))",
            r#"sum by (job) (rate(a{client_id="1999"}[5m]))"#,
        ),
        (
            "sum(rate(a[5m])) without (x)",
            r#"sum(rate(a{client_id="1999"}[5m])) without (x)"#,
        ),
        ("topk(3, a)", r#"topk(3, a{client_id="1999"})"#),
        (
            "quantile(scalar(q), a)",
            r#"quantile(scalar(q{client_id="1999"}), a{client_id="1999"})"#,
        ),
        (
            r#"count_values("v", a)"#,
            r#"count_values("v", a{client_id="1999"})"#,
        ),
        (
            "a + on(x) group_left(y) b",
            r#"a{client_id="1999"} + on(x) group_left(y) b{client_id="1999"}"#,
        ),
        (
            "a > bool ignoring(x) b",
            r#"a{client_id="1999"} > bool ignoring(x) b{client_id="1999"}"#,
        ),
        (
            "a or b unless c",
            r#"a{client_id="1999"} or b{client_id="1999"} unless c{client_id="1999"}"#,
        ),
        ("-a", r#"-a{client_id="1999"}"#),
        ("((a))", r#"((a{client_id="1999"}))"#),
        (
            "rate(a[5m:1m] offset 1h)",
            r#"rate(a{client_id="1999"}[5m:1m] offset 1h)"#,
        ),
        (
            "max_over_time((a + b)[1h:])",
            r#"max_over_time((a{client_id="1999"} + b{client_id="1999"})[1h:])"#,
        ),
        (
            r#"label_replace(a, "d", "$1", "s", "(.*)")"#,
            r#"label_replace(a{client_id="1999"}, "d", "$1", "s", "(.*)")"#,
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))",
            r#"histogram_quantile(0.9, sum by (le) (rate(h_bucket{client_id="1999"}[5m])))"#,
        ),
        (
            "a @ start() + b @ end()",
            r#"a{client_id="1999"} @ start() + b{client_id="1999"} @ end()"#,
        ),
        ("2 * a", r#"2 * a{client_id="1999"}"#),
        (
            "sum(a) by (job) > 0",
            r#"sum(a{client_id="1999"}) by (job) > 0"#,
        ),
        (
            "absent(nonexistent{job=\"x\"})",
            r#"absent(nonexistent{job="x",client_id="1999"})"#,
        ),
    ];
    for (input, expected) in cases {
        assert_rewrite(input, expected);
    }
}

#[test]
fn keywords_as_metric_names_are_selectors() {
    // Both from Prometheus' parse_test.go: `offset` and `step` as names.
    assert_rewrite(
        r#"offset{step="1s"}[5m]"#,
        r#"offset{step="1s",client_id="1999"}[5m]"#,
    );
    assert_rewrite(
        r#"step{offset="1s"}[5m]"#,
        r#"step{offset="1s",client_id="1999"}[5m]"#,
    );
}

/// Prometheus lexes only `inf` and `nan` (any case) as numbers; every other word is a
/// metric name, so a number-looking name left unrewritten would select all tenants.
#[test]
fn number_like_names_are_selectors() {
    for name in [
        "infinity",
        "Infinity",
        "infx",
        "nanx",
        "Inf_total",
        "e3",
        "x1e3",
        "sum",
        "start",
        "step",
    ] {
        assert_rewrite(name, &format!(r#"{name}{{client_id="1999"}}"#));
    }
    for number in ["inf", "iNf", "+Inf", "nan", "NaN", "-NaN"] {
        assert_rewrite(number, number);
    }
}

#[test]
fn parse_errors_are_refused_with_position() {
    for input in ["foo{", "sum(", "foo{a=}", "rate(x[5m]", "", ")"] {
        match rewrite(input, &client_1999(), ConflictPolicy::And, Dialect::Promql) {
            Err(RewriteError::Parse(e)) => {
                assert!(!e.message.is_empty(), "{input:?}");
                // The issue's format: `unexpected "}" at 1:17, expected label matcher`.
                let position = format!(" at {}:{}", e.line, e.column);
                assert!(e.to_string().contains(&position), "{e}");
                assert!(e.offset <= input.len(), "{input:?}: {e:?}");
            }
            other => panic!("input {input:?}: expected a parse error, got {other:?}"),
        }
    }
    // Lines are counted: the error is on line 2.
    let Err(RewriteError::Parse(e)) = rewrite(
        "up\n+ foo{",
        &client_1999(),
        ConflictPolicy::And,
        Dialect::Promql,
    ) else {
        panic!("expected a parse error")
    };
    assert_eq!(e.line, 2, "{e}");
}
