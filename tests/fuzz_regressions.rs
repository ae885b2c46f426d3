//! Every input the fuzz targets (`fuzz/`, `make fuzz`) flagged, inline, so that
//! `make test` keeps each fix. Each test names its target and what the input broke; the
//! findings are listed in docs/security.md ("Fuzzing").

use promql_tenant_filter::config::Config;
use promql_tenant_filter::decision::{decide, Decision, RequestHead};
use promql_tenant_filter::identity::Identity;
use promql_tenant_filter::lifecycle::{Request, Trace};
use promql_tenant_filter::{parse, rewrite, ConflictPolicy, Dialect, TenantMatcher};

const FORM: &[u8] = b"application/x-www-form-urlencoded";

fn config(extra: &str) -> Config {
    let json = format!(
        r#"{{"tenant_label":"client_id","identity":{{"source":"userinfo","cluster":"idp","claim":"client_id"}}{extra}}}"#
    );
    Config::parse(json.as_bytes()).unwrap()
}

fn tenant(value: &str) -> Identity {
    Identity::Tenants(vec![value.to_string()])
}

/// request_decision: a GET carrying a form body with `match[]`. The body's `match[]`
/// counted as rewritten, so no tenant selector was added to the URL; Go backends read
/// no GET body, and `/api/v1/label/<name>/values` answered for every tenant.
#[test]
fn get_with_a_form_body_is_refused() {
    for extra_label in ["false", "true"] {
        let c = config(&format!(r#","victoriametrics_extra_label":{extra_label}"#));
        for path in [
            "/api/v1/label/job/values",
            "/api/v1/labels",
            "/api/v1/series",
            "/federate",
            "/api/v1/query?query=up",
        ] {
            let head = RequestHead {
                method: b"GET",
                path: path.as_bytes(),
                content_type: Some(FORM),
                credential: Some(b"Bearer dG9rZW4"),
                end_of_stream: false,
                ..RequestHead::default()
            };
            let body = b"match%5B%5D=up%7Bclient_id%3D%229%22%7D";
            match decide(&head, Some(body), tenant("9"), &c) {
                Decision::Refuse(r) => assert_eq!(r.status, 400, "{path}: {r:?}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
    // The same body by POST is read by the backend, and is rewritten.
    let head = RequestHead {
        method: b"POST",
        path: b"/api/v1/label/job/values",
        content_type: Some(FORM),
        credential: Some(b"Bearer dG9rZW4"),
        ..RequestHead::default()
    };
    let c = config(r#","victoriametrics_extra_label":false"#);
    match decide(&head, Some(b"match[]=up"), tenant("9"), &c) {
        Decision::Forward(r) => {
            assert_eq!(r.path, None);
            assert_eq!(
                r.body.as_deref(),
                Some(&b"match%5B%5D=up%7Bclient_id%3D%229%22%7D"[..])
            );
        }
        other => panic!("{other:?}"),
    }
}

/// rewrite_query (flag byte 0xae: policy `and`, MetricsQL, two tenant values): a range
/// too large for a `Duration`. promql-parser, the oracle, panics on its output; our
/// engine rewrites it in MetricsQL and refuses it in PromQL, as Prometheus does.
#[test]
fn huge_float_range_is_handled_without_panic() {
    let tenant = TenantMatcher::new("client_id", &["1999", "20.0"]).unwrap();
    let out = rewrite(
        "foo[9.5e90]",
        &tenant,
        ConflictPolicy::And,
        Dialect::Metricsql,
    )
    .unwrap();
    assert_eq!(out, r#"foo{client_id=~"1999|20\\.0"}[9.5e90]"#);
    assert!(parse(&out, Dialect::Metricsql).is_ok());
    let refused = rewrite("foo[9.5e90]", &tenant, ConflictPolicy::And, Dialect::Promql);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("duration out of range"));
}

/// rewrite_query (flag byte 0x72: policy `and`, PromQL, tenant `"tenant.id"`): a lone
/// carriage return inside a comment. Prometheus ends a comment there and read `/b -3`
/// as code; our lexer read it as comment, so `b` went out without the tenant matcher.
/// Now refused in both dialects (VictoriaMetrics ends comments only at `\n`).
#[test]
fn lone_carriage_return_in_a_comment_is_refused() {
    let tenant = TenantMatcher::new("tenant.id", &["x\"y\\z"]).unwrap();
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        for query in [
            "w#ta\0\0%\0\r/b -3",
            "x #\r/ y",
            "x #\r+ count_values(`\n or b #`, x)",
        ] {
            let refused = rewrite(query, &tenant, ConflictPolicy::And, dialect);
            assert!(refused.is_err(), "{query:?} in {dialect:?}: {refused:?}");
        }
        let out = rewrite("w # c\r\n/ b", &tenant, ConflictPolicy::And, dialect).unwrap();
        assert_eq!(
            out,
            "w{\"tenant.id\"=\"x\\\"y\\\\z\"} # c\r\n/ b{\"tenant.id\"=\"x\\\"y\\\\z\"}"
        );
    }
}

/// request_decision: `POST /api/v1/rules` with a valid token whose lookup gave an
/// empty tenant value. The local answers (rules, alerts, metadata) went out before the
/// tenant was checked; now every endpoint refuses a caller without a usable tenant.
#[test]
fn local_answers_need_a_usable_tenant() {
    let c = config(r#","max_body_bytes":64"#);
    for path in ["/api/v1/rules", "/api/v1/alerts", "/api/v1/metadata"] {
        let head = RequestHead {
            method: b"POST",
            path: path.as_bytes(),
            content_type: Some(b"end()G9rZlimitkW4tYWJjZG\xa5Vm"),
            content_encoding: Some(b"Z2hpams"),
            credential: Some(b"Bearer 1999"),
            end_of_stream: true,
            ..RequestHead::default()
        };
        match decide(&head, None, tenant(""), &c) {
            Decision::Refuse(r) => assert_eq!(r.status, 403, "{path}"),
            other => panic!("{path}: {other:?}"),
        }
        assert!(matches!(
            decide(&head, None, tenant("1999"), &c),
            Decision::Answer(_)
        ));
    }
}

/// rewrite_query (flag byte 0x1f: policy `and`, MetricsQL, tenants `a|b`, `c`): 64
/// unary minus signs spread over a query. The lexer's nesting score counted the brace
/// group the rewrite adds, so the output was "too deep" for our own parser to read back.
#[test]
fn output_with_added_braces_reads_back_at_the_nesting_limit() {
    let tenant = TenantMatcher::new("client_id", &["a|b", "c", "a|b"]).unwrap();
    let query = format!("ppve{}bytesve{}bytes > 0", "-".repeat(33), "-".repeat(33));
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        let out = rewrite(&query, &tenant, ConflictPolicy::And, dialect).unwrap();
        assert!(out.starts_with(r#"ppve{client_id=~"a\\|b|c"}---"#), "{out}");
        assert!(parse(&out, dialect).is_ok(), "{out}");
    }
    // The deepest unary chain the parser takes, on a selector: the rewrite reads back.
    let deepest = format!("{}x", "-".repeat(63));
    assert!(parse(&deepest, Dialect::Promql).is_ok());
    let out = rewrite(&deepest, &tenant, ConflictPolicy::And, Dialect::Promql).unwrap();
    assert!(parse(&out, Dialect::Promql).is_ok(), "{out}");
}

/// request_decision, through the lifecycle: an identity arriving for a request that was
/// not waiting for one (a verified JWT's, whose headers already settled it) threw the
/// request's state away, and the request was neither answered nor let go.
#[test]
fn an_identity_for_a_request_not_waiting_changes_nothing() {
    let c = Config::parse(
        br#"{"tenant_label":"client_id","identity":{"source":"jwt_payload_header","claim":"client_id"}}"#,
    )
    .unwrap();
    let head = RequestHead {
        method: b"POST",
        path: b"/api/v1/label/job/values",
        content_type: Some(FORM),
        credential: Some(b"eyJjbGllbnRfaWQiOiI5In0"), // {"client_id":"9"}
        ..RequestHead::default()
    };
    let mut request = Request::new();
    let mut trace = Trace::default();
    trace.apply(request.on_headers(&head, &c, 0, |_| None));
    trace.apply(request.on_identity(tenant("1999"), &c, 0));
    let body = b"match[]=up";
    trace.deliver(body, true);
    trace.apply(request.on_body(body.len(), true, &c, 0, || Some(body.to_vec())));
    assert!(
        trace.headers_gone && trace.body_gone && trace.reply.is_none(),
        "{trace:?}"
    );
    assert!(String::from_utf8_lossy(&trace.body).contains("client_id%3D%229%22"));
}
