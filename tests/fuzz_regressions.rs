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

/// `query` is refused in dialect metricsql, for a reason whose message holds `why`.
#[track_caller]
fn assert_refused_in_metricsql(query: &str, tenant: &TenantMatcher, why: &str) {
    let refused = rewrite(query, tenant, ConflictPolicy::And, Dialect::Metricsql);
    assert!(
        refused.as_ref().is_err_and(|e| e.to_string().contains(why)),
        "{query}: {refused:?}"
    );
}

fn tenant(value: &str) -> Identity {
    Identity::Tenants(vec![value.to_string()].into())
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
/// engine refuses it in PromQL, as Prometheus does, and (since metricsql_differential
/// found `[5555555555555555555555555555555555m]` crashing VictoriaMetrics, see below)
/// in MetricsQL too: any duration over metricsql's int64 milliseconds.
#[test]
fn huge_float_range_is_handled_without_panic() {
    let tenant = TenantMatcher::new("client_id", &["1999", "20.0"]).unwrap();
    for dialect in [Dialect::Promql, Dialect::Metricsql] {
        let refused = rewrite("foo[9.5e90]", &tenant, ConflictPolicy::And, dialect);
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("duration out of range"));
    }
    let out = rewrite(
        "foo[9.5e9]",
        &tenant,
        ConflictPolicy::And,
        Dialect::Metricsql,
    )
    .unwrap();
    assert_eq!(out, r#"foo{client_id=~"1999|20\\.0"}[9.5e9]"#);
    assert!(parse(&out, Dialect::Metricsql).is_ok());
}

/// metricsql_differential (MetricsQL): a duration over int64 milliseconds. metricsql
/// parses `5555555555555555555555555555555555m`, then panics evaluating it ("too big
/// duration"), and VictoriaMetrics exits. Refused now as out of range.
#[test]
fn durations_beyond_int64_milliseconds_are_refused() {
    let tenant = TenantMatcher::new("client_id", &["a|b", "c"]).unwrap();
    for query in [
        "rate(x[5555555555555555555555555555555555m])",
        "x offset 9999999999999999999s",
        "x[1m:300000000000000y]",
    ] {
        assert_refused_in_metricsql(query, &tenant, "duration out of range");
    }
    assert!(rewrite("x[100y]", &tenant, ConflictPolicy::And, Dialect::Metricsql).is_ok());
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
        // MetricsQL writes the dotted label bare (metricsql_writes_a_dotted_tenant_label_bare).
        let label = match dialect {
            Dialect::Promql => "\"tenant.id\"",
            Dialect::Metricsql => "tenant.id",
        };
        assert_eq!(
            out,
            format!("w{{{label}=\"x\\\"y\\\\z\"}} # c\r\n/ b{{{label}=\"x\\\"y\\\\z\"}}")
        );
    }
}

/// request_decision: `POST /api/v1/rules` with a valid token whose lookup gave an
/// empty tenant value. The local answers (rules, alerts, metadata) went out before the
/// tenant was checked; now every endpoint refuses a caller without a usable tenant.
/// Rules and alerts are no longer local answers: they go to the rule engine, by GET
/// only (Prometheus serves them so), and come back filtered.
#[test]
fn local_answers_need_a_usable_tenant() {
    let c = config(r#","max_body_bytes":64"#);
    for (method, path) in [
        (&b"GET"[..], "/api/v1/rules"),
        (b"GET", "/api/v1/alerts"),
        (b"POST", "/api/v1/metadata"),
    ] {
        let head = RequestHead {
            method,
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
        match decide(&head, None, tenant("1999"), &c) {
            Decision::Answer(_) => assert_eq!(path, "/api/v1/metadata"),
            Decision::Forward(r) => assert!(r.response.is_some(), "{path}"),
            other => panic!("{path}: {other:?}"),
        }
        let post = RequestHead {
            method: b"POST",
            ..head
        };
        if path != "/api/v1/metadata" {
            match decide(&post, None, tenant("1999"), &c) {
                Decision::Refuse(r) => assert_eq!(r.status, 405, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
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

/// metricsql_differential (flag byte 0x05: MetricsQL, tenant `x"y\z`): a unary `+` before
/// an `@` expression that has its own `@`. metricsql keeps no node for the `+`, prints
/// `foo @ Ifoo @ nfo`, cannot read that back ("duplicate `@` token"), and
/// VictoriaMetrics exits. Refused now, like any `@` expression with its own modifiers.
#[test]
fn at_expression_behind_a_plus_with_its_own_at_is_refused() {
    let tenant = TenantMatcher::new("client_id", &["x\"y\\z"]).unwrap();
    for query in ["foo @ +Ifoo @ +nfo", "x @ +y[5m]", "x @ (+(y offset 1m))"] {
        assert_refused_in_metricsql(query, &tenant, "after @");
    }
    // A minus sign stays in metricsql's printout (`0 - ...`, in parentheses): fine.
    assert!(rewrite(
        "x @ -y @ -z",
        &tenant,
        ConflictPolicy::And,
        Dialect::Metricsql
    )
    .is_ok());
}

/// rewrite_query (MetricsQL, tenant label `tenant.id`): the filter wrote the tenant
/// matcher with a quoted label name, `{"tenant.id"="x\"y\\z"}`, which metricsql 0.49
/// (and so dialect metricsql) does not read: every query with such a label failed at
/// VictoriaMetrics. MetricsQL reads dotted label names bare, so the matcher is written
/// `tenant.id="..."` there; a label it cannot spell at all is refused.
#[test]
fn metricsql_writes_a_dotted_tenant_label_bare() {
    let tenant = TenantMatcher::new("tenant.id", &["x\"y\\z"]).unwrap();
    let out = rewrite("{}", &tenant, ConflictPolicy::And, Dialect::Metricsql).unwrap();
    assert_eq!(out, r#"{tenant.id="x\"y\\z"}"#);
    assert!(parse(&out, Dialect::Metricsql).is_ok());
    let out = rewrite("{}", &tenant, ConflictPolicy::And, Dialect::Promql);
    assert!(out.is_err(), "promql needs a non-empty matcher: {out:?}");
    let out = rewrite("x", &tenant, ConflictPolicy::And, Dialect::Promql).unwrap();
    assert_eq!(out, r#"x{"tenant.id"="x\"y\\z"}"#);
    let spaced = TenantMatcher::new("x y", &["1"]).unwrap();
    assert!(rewrite("x", &spaced, ConflictPolicy::And, Dialect::Metricsql).is_err());
}

/// request_decision (dialect metricsql, tenant label `tenant.id`): on the label
/// endpoints the filter adds `match[]={<tenant matcher>}` itself, and wrote it quoted,
/// `{"tenant.id"="1999"}`, which metricsql (and VictoriaMetrics 1.79) does not read.
/// It is written as the dialect reads it now, `{tenant.id="1999"}`.
#[test]
fn the_match_the_filter_adds_is_written_in_the_dialect() {
    let json = r#"{"tenant_label":"tenant.id","dialect":"metricsql","victoriametrics_extra_label":false,
        "identity":{"source":"userinfo","cluster":"idp","claim":"client_id"}}"#;
    let c = Config::parse(json.as_bytes()).unwrap();
    let head = RequestHead {
        method: b"GET",
        path: b"/api/v1/labels",
        credential: Some(b"Bearer dG9rZW4"),
        end_of_stream: true,
        ..RequestHead::default()
    };
    match decide(&head, None, tenant("1999"), &c) {
        Decision::Forward(r) => {
            let path = r.path.expect("a match[] is added");
            assert!(
                path.ends_with("match%5B%5D=%7Btenant.id%3D%221999%22%7D"),
                "{path}"
            );
            assert!(parse(r#"{tenant.id="1999"}"#, Dialect::Metricsql).is_ok());
        }
        other => panic!("{other:?}"),
    }
}

/// metricsql_differential (timeout, MetricsQL): a 525-byte chain of `@` expressions with
/// signs. The parser judged MetricsQL's one-range-one-offset-one-`@` rule while it
/// folded the modifiers; a chain that broke the rule failed the parse there, after it
/// had been read, and every enclosing `@` read it again: 3.7 s for this input, the
/// doubling of a Wasm worker's time per added `@`. The rule is now judged after the
/// parse (check.rs), so the parse never backtracks over a read chain. The input is
/// refused in both dialects, as metricsql refuses it; `make bench` and the fuzz
/// target's timeout watch the time.
#[test]
fn a_long_at_chain_is_read_once() {
    let query = "f/anno @ +Inf @ +Inno @ pi @ +Inno @ +i @ +Inno @ +Inf @ +Gnno @ +Inf @ +Inno @ \
        p@ +Inno @ pi @ +Inno @ +i @ +Inno @ +Inf @ +Gnno @ +Inf @ +Innonno @ +Inf @ +Gnno @ \
        +Inf @ +Inno @ p@ +Inno @ pi @ +Inno @ +i @ +Inno @ +Inf @ +Gnno @ +Inf @ +Inno @ pi \
        @ +Inno @ +m @ +Inno @ +Inf @ +Gnno @ +Infat@Inno @Inf @ +GInf@Inno @Inf @ +GInno @ \
        +o@ +GInno @ +o @ +In@ +Inno @ +m @ +Inno @ +Inf @ +Gnno @ +Inf@Innono @ +o@ +GInno \
        @ +o @ +In@ +Inno @ +m @ +Inno @ +Inf @ +Gnno @ +Inf@Inno @Inf @ +GInno @ +o @ +Inno \
        @ +  @fnI+Inno @ +Inf@";
    let tenant = TenantMatcher::new("client_id", &["1999"]).unwrap();
    for dialect in [Dialect::Metricsql, Dialect::Promql] {
        assert!(parse(query, dialect).is_err(), "{dialect:?}");
        assert!(rewrite(query, &tenant, ConflictPolicy::And, dialect).is_err());
    }
    // The rule itself still holds, now judged after the parse.
    for query in [
        "x[1m][1m]",
        "x @ 1 @ 2",
        "x offset 1m offset 2m",
        "x offset 1m [5m]",
    ] {
        assert_refused_in_metricsql(query, &tenant, "one range, then at most one offset");
    }
    for query in [
        "x[1m] offset 1m @ 2",
        "x[1m] @ 2 offset 1m",
        "(x offset 1m) offset 1m",
    ] {
        assert!(parse(query, Dialect::Metricsql).is_ok(), "{query}");
    }
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
    let mut trace = Trace::new(&head);
    trace.apply(request.on_headers(&head, &c, 0, |_| None));
    trace.apply(request.on_identity(tenant("1999"), &c, 0));
    let body = b"match[]=up";
    trace.deliver(body, true);
    trace.apply(request.on_body(body.len(), true, &c, || 0, || Some(body.to_vec())));
    assert!(
        trace.headers_gone && trace.body_gone && trace.reply.is_none(),
        "{trace:?}"
    );
    assert!(String::from_utf8_lossy(&trace.body).contains("client_id%3D%229%22"));
}

/// request_decision (writes): a write whose query string holds `extra_filters[\n]=x`.
/// The oracle took every name starting with `extra_filters` for VictoriaMetrics'
/// parameter; Go's form keys are exact strings, and VictoriaMetrics reads
/// `extra_filters` and `extra_filters[]` only (and no `extra_filters` at all on its
/// ingestion endpoints), so that key is another parameter and goes on as it came (Envoy
/// refuses a raw newline in a path anyway). The oracle now
/// says so; the write carries exactly the tenant's `extra_label`.
#[test]
fn a_write_keeps_only_the_tenants_extra_label() {
    let c = config(r#","writes":"victoriametrics""#);
    let head = RequestHead {
        method: b"POST",
        path: b"/prometheus/api/v1/import?extra_filters[\n]=x&extra_filters%5B%5D=y&extra_label=client_id=8",
        content_type: Some(b"application/x-protobuf"),
        content_encoding: Some(b"gzip"),
        credential: Some(b"Bearer dG9rZW4"),
        end_of_stream: false,
        ..RequestHead::default()
    };
    match decide(&head, Some(b"binary"), tenant("9"), &c) {
        Decision::Forward(r) => {
            assert_eq!(
                r.path.as_deref(),
                Some("/prometheus/api/v1/import?extra_filters[\n]=x&extra_label=client_id%3D9")
            );
            assert_eq!(r.body, None, "a write's body goes on unread");
        }
        other => panic!("{other:?}"),
    }
}
