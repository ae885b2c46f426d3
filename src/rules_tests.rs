//! Unit tests of [`crate::rules`], on answers captured from vmalert 1.79 (directly and
//! through VictoriaMetrics' `-vmalert.proxyURL`) and Prometheus 2.42 evaluating
//! `tests/e2e/rules/*.yml` (`tests/e2e/capture_rule_payloads.py` captures them again).

use super::*;
use crate::api::Action;
use crate::config::Backend;
use serde_json::json;

const PROMETHEUS_RULES: &str = include_str!("../tests/data/rules/prometheus-2.42-rules.json");
const PROMETHEUS_ALERTS: &str = include_str!("../tests/data/rules/prometheus-2.42-alerts.json");
const VMALERT_RULES: &str = include_str!("../tests/data/rules/vmalert-1.79-rules.json");
const VMALERT_ALERTS: &str = include_str!("../tests/data/rules/vmalert-1.79-alerts.json");
const PROXIED_RULES: &str =
    include_str!("../tests/data/rules/victoriametrics-1.79-proxy-rules.json");
const VMALERT_NO_GROUPS: &str =
    include_str!("../tests/data/rules/vmalert-1.79-no-groups-rules.json");

/// Each captured rules answer, with the dialect its engine reads rules in.
const RULE_ANSWERS: &[(&str, &str, Dialect)] = &[
    ("prometheus", PROMETHEUS_RULES, Dialect::Promql),
    ("vmalert", VMALERT_RULES, Dialect::Metricsql),
    ("vm-proxy", PROXIED_RULES, Dialect::Metricsql),
];

fn filter_for(view: RuleView, tenants: &[&str], dialect: Dialect) -> ResponseFilter {
    ResponseFilter {
        view,
        selection: RuleSelection::default(),
        tenant_label: "client_id".into(),
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        dialect,
        max_bytes: 1 << 20,
    }
}

fn run(filter: &ResponseFilter, body: &str) -> Value {
    let out = filter.filter(200, body.as_bytes()).expect("filtered");
    serde_json::from_slice(&out).expect("valid JSON")
}

/// (group, rule name, rule's client_id) of every rule in a filtered rules answer.
fn rules_in(answer: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for group in answer["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push((
                group["name"].as_str().unwrap().to_string(),
                rule["name"].as_str().unwrap().to_string(),
                rule["labels"]["client_id"].as_str().unwrap().to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = rows
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    out.sort();
    out
}

const ALICE_RULES: &[(&str, &str, &str)] = &[
    ("alice", "MemoryHuge", "1999"),
    ("alice", "ServerErrors", "1999"),
    ("alice", "client:http_requests:last1h", "1999"),
    ("own-metrics", "OwnMetricSeen", "1999"),
];
const BOB_RULES: &[(&str, &str, &str)] = &[
    ("bob", "MemoryHuge", "2000"),
    ("bob", "ServerErrors", "2000"),
    ("bob", "client:http_requests:last1h", "2000"),
    ("own-metrics", "OwnMetricSeen", "2000"),
];

#[test]
fn each_tenant_sees_exactly_its_own_rules_on_every_engine() {
    for &(engine, body, dialect) in RULE_ANSWERS {
        let alice = run(&filter_for(RuleView::Rules, &["1999"], dialect), body);
        assert_eq!(rules_in(&alice), owned(ALICE_RULES), "{engine}");
        let bob = run(&filter_for(RuleView::Rules, &["2000"], dialect), body);
        assert_eq!(rules_in(&bob), owned(BOB_RULES), "{engine}");
        let both = run(
            &filter_for(RuleView::Rules, &["2000", "1999"], dialect),
            body,
        );
        let mut want = [ALICE_RULES, BOB_RULES].concat();
        want.sort();
        assert_eq!(rules_in(&both), owned(&want), "{engine}");
        // The prefix trap's rules, the unlabelled ones, the one reading every tenant and
        // the one labelled for alice but reading bob's series are nobody's.
        for tenant in ["19999", "1999"] {
            let answer = run(&filter_for(RuleView::Rules, &[tenant], dialect), body);
            let text = answer.to_string();
            for hidden in [
                "AnyServerErrors",
                "AllTenantsRequests",
                "OtherTenantsErrors",
                "job:http_requests:last1h",
                "\"shared\"",
            ] {
                assert!(
                    !text.contains(hidden),
                    "{engine}: {hidden} shown to {tenant}"
                );
            }
        }
        let nobody = run(&filter_for(RuleView::Rules, &["3000"], dialect), body);
        assert_eq!(nobody, json!({"status": "success", "data": {"groups": []}}));
    }
}

#[test]
fn alerts_of_a_kept_rule_stay_with_it_and_carry_the_tenant() {
    for &(engine, body, dialect) in RULE_ANSWERS {
        let alice = run(&filter_for(RuleView::Rules, &["1999"], dialect), body);
        for group in alice["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let alerts = &rule["alerts"];
                match rule["type"].as_str() {
                    Some("alerting") => {
                        let firing = rule["name"] != "MemoryHuge";
                        assert_eq!(alerts.as_array().unwrap().len(), usize::from(firing));
                        for alert in alerts.as_array().unwrap() {
                            assert_eq!(alert["labels"]["client_id"], "1999", "{engine}");
                            assert_eq!(alert["state"], "firing");
                        }
                        let state = if firing { "firing" } else { "inactive" };
                        assert_eq!(rule["state"], state, "{engine}");
                    }
                    _ => assert!(alerts.is_null(), "{engine}: a recording rule with alerts"),
                }
            }
        }
    }
}

#[test]
fn only_documented_fields_pass() {
    for &(engine, body, dialect) in RULE_ANSWERS {
        let answer = run(&filter_for(RuleView::Rules, &["1999"], dialect), body);
        assert_eq!(answer.as_object().unwrap().len(), 2, "{engine}");
        for group in answer["data"]["groups"].as_array().unwrap() {
            let group = group.as_object().unwrap();
            assert!(group
                .keys()
                .all(|k| GROUP_FIELDS.contains(&k.as_str()) || k == "rules"));
            for rule in group["rules"].as_array().unwrap() {
                let rule = rule.as_object().unwrap();
                let fields = match rule["type"].as_str() {
                    Some("alerting") => [ALERTING_RULE_FIELDS, &["alerts"]].concat(),
                    _ => RECORDING_RULE_FIELDS.to_vec(),
                };
                assert!(
                    rule.keys().all(|k| fields.contains(&k.as_str())),
                    "{engine}: {rule:?}"
                );
                for alert in rule
                    .get("alerts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let alert = alert.as_object().unwrap();
                    assert!(alert.keys().all(|k| ALERT_FIELDS.contains(&k.as_str())));
                }
            }
        }
        // vmalert's own links and ids, which name its host, do not pass.
        let text = answer.to_string();
        for vmalert_only in ["\"source\"", "\"group_id\"", "\"expression\"", "\"id\""] {
            assert!(!text.contains(vmalert_only), "{engine}: {vmalert_only}");
        }
    }
    // What Grafana reads stays: every field Prometheus gave, for a rule that is kept.
    let upstream: Value = serde_json::from_str(PROMETHEUS_RULES).unwrap();
    let alice = run(
        &filter_for(RuleView::Rules, &["1999"], Dialect::Promql),
        PROMETHEUS_RULES,
    );
    let find = |answer: &Value, group: &str| {
        answer["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&alice, "alice"), find(&upstream, "alice"));
}

#[test]
fn the_alerts_view_lists_the_alerts_of_the_rules_the_caller_sees() {
    for &(engine, body, dialect) in RULE_ANSWERS {
        let alice = run(&filter_for(RuleView::Alerts, &["1999"], dialect), body);
        let alerts = alice["data"]["alerts"].as_array().unwrap();
        let mut names: Vec<&str> = alerts
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["OwnMetricSeen", "ServerErrors"], "{engine}");
        for alert in alerts {
            assert_eq!(alert["labels"]["client_id"], "1999");
            assert!(alert
                .as_object()
                .unwrap()
                .keys()
                .all(|k| ALERT_FIELDS.contains(&k.as_str())));
        }
        assert_eq!(alice.as_object().unwrap().len(), 2);
        assert_eq!(alice["data"].as_object().unwrap().len(), 1);
    }
}

#[test]
fn the_engines_own_alerts_lists_would_show_more_than_the_rules_allow() {
    // Why the alerts view is built from the rules: the engines' /api/v1/alerts carries
    // alice's client_id on alerts of rules she may not see (a shared rule's, one that
    // reads every tenant, one labelled for her that reads bob's series), and does not
    // say which rule made an alert.
    for body in [PROMETHEUS_ALERTS, VMALERT_ALERTS] {
        let upstream: Value = serde_json::from_str(body).unwrap();
        let labelled_alice = upstream["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["client_id"] == "1999")
            .count();
        assert_eq!(labelled_alice, 5);
    }
}

#[test]
fn no_groups_is_an_empty_list() {
    // vmalert 1.79 answers `"groups": null`; Grafana iterates over the list.
    for view in [RuleView::Rules, RuleView::Alerts] {
        let answer = run(
            &filter_for(view, &["1999"], Dialect::Metricsql),
            VMALERT_NO_GROUPS,
        );
        let key = if view == RuleView::Rules {
            "groups"
        } else {
            "alerts"
        };
        assert_eq!(answer["data"][key], json!([]));
    }
}

#[test]
fn the_callers_selection_narrows_on_every_engine() {
    let narrowed = |selection: RuleSelection, body: &str, dialect| {
        let filter = ResponseFilter {
            selection,
            ..filter_for(RuleView::Rules, &["1999"], dialect)
        };
        rules_in(&run(&filter, body))
    };
    let tenants_file = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "alice")
            .unwrap()["file"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for &(engine, body, dialect) in RULE_ANSWERS {
        let own_metric = owned(&[("own-metrics", "OwnMetricSeen", "1999")]);
        let cases = [
            (
                RuleSelection {
                    kind: Some(RuleKind::Recording),
                    ..Default::default()
                },
                owned(&[("alice", "client:http_requests:last1h", "1999")]),
            ),
            (
                RuleSelection {
                    kind: Some(RuleKind::Alerting),
                    ..Default::default()
                },
                owned(&[
                    ("alice", "MemoryHuge", "1999"),
                    ("alice", "ServerErrors", "1999"),
                    ("own-metrics", "OwnMetricSeen", "1999"),
                ]),
            ),
            (
                RuleSelection {
                    rule_names: vec!["OwnMetricSeen".into(), "AnyServerErrors".into()],
                    ..Default::default()
                },
                own_metric.clone(),
            ),
            (
                RuleSelection {
                    groups: vec!["own-metrics".into(), "shared".into(), "bob".into()],
                    ..Default::default()
                },
                own_metric,
            ),
            (
                RuleSelection {
                    files: vec![tenants_file(body)],
                    ..Default::default()
                },
                owned(ALICE_RULES),
            ),
        ];
        for (selection, want) in cases {
            let got = narrowed(selection.clone(), body, dialect);
            assert_eq!(got, want, "{engine}: {selection:?}");
        }
        let no_file = narrowed(
            RuleSelection {
                files: vec!["elsewhere.yml".into()],
                ..Default::default()
            },
            body,
            dialect,
        );
        assert!(no_file.is_empty());
        let filter = ResponseFilter {
            selection: RuleSelection {
                exclude_alerts: true,
                ..Default::default()
            },
            ..filter_for(RuleView::Rules, &["1999"], dialect)
        };
        let answer = run(&filter, body);
        assert!(!answer.to_string().contains("activeAt"), "{engine}");
        assert_eq!(rules_in(&answer), owned(ALICE_RULES));
    }
}

/// A one-group rules answer holding `rule`.
fn answer_with(rule: Value) -> String {
    json!({"status": "success", "data": {"groups": [
        {"name": "g", "file": "f.yml", "rules": [rule], "interval": 1}
    ]}})
    .to_string()
}

#[test]
fn an_alert_without_the_tenant_is_dropped_and_the_state_follows() {
    let rule = json!({
        "state": "firing", "name": "A", "type": "alerting",
        "query": "up{client_id=\"1999\"} == 0",
        "labels": {"client_id": "1999"},
        "alerts": [
            {"labels": {"client_id": "2000"}, "state": "firing", "value": "1"},
            {"labels": {"client_id": "1999"}, "state": "pending", "value": "1"},
            {"labels": {}, "state": "firing", "value": "1"},
            "not an object",
        ],
    });
    let answer = run(
        &filter_for(RuleView::Rules, &["1999"], Dialect::Promql),
        &answer_with(rule),
    );
    let kept = &answer["data"]["groups"][0]["rules"][0];
    assert_eq!(kept["state"], "pending");
    assert_eq!(
        kept["alerts"],
        json!([{"labels": {"client_id": "1999"}, "state": "pending", "value": "1"}])
    );
}

#[test]
fn rules_in_another_shape_are_left_out() {
    let alice = filter_for(RuleView::Rules, &["1999"], Dialect::Promql);
    let good = json!({"name": "r", "type": "recording",
                      "query": "sum(x{client_id=\"1999\"})", "labels": {"client_id": "1999"}});
    assert_eq!(rules_in(&run(&alice, &answer_with(good.clone()))).len(), 1);
    let mut cases = Vec::new();
    for (field, value) in [
        ("type", json!("Recording")),
        ("type", json!(null)),
        ("labels", json!({"client_id": 1999})),
        ("labels", json!({"client_id": ["1999"]})),
        ("labels", json!({"Client_id": "1999"})),
        ("labels", json!("client_id=1999")),
        ("query", json!(null)),
        ("query", json!("sum(x{client_id=\"1999\"")),
    ] {
        let mut rule = good.clone();
        rule[field] = value;
        cases.push(rule);
    }
    let mut no_labels = good.clone();
    no_labels.as_object_mut().unwrap().remove("labels");
    cases.push(no_labels);
    cases.push(json!("a string"));
    for rule in cases {
        let answer = run(&alice, &answer_with(rule.clone()));
        assert_eq!(answer["data"]["groups"], json!([]), "{rule}");
    }
    // Groups in another shape, too.
    for groups in [
        json!([{"name": "g", "rules": "x"}]),
        json!([{"name": "g"}]),
        json!(["g"]),
    ] {
        let body = json!({"status": "success", "data": {"groups": groups}}).to_string();
        assert_eq!(run(&alice, &body)["data"]["groups"], json!([]));
    }
}

#[test]
fn expressions_must_read_only_the_rules_tenant() {
    let confined = |q: &str, dialect| confined_to(q, "client_id", "1999", dialect);
    for q in [
        r#"up{client_id="1999"} == 0"#,
        r#"sum by (job) (rate(x{client_id="1999",job=~"a.*"}[5m])) / on() group_left sum(y{client_id="1999"})"#,
        r#"max_over_time(x{client_id="1999"}[1h:1m] offset 5m)"#,
        "vector(1)",
        "vector(time()) > 0",
        r#"{"client_id"="1999", "__name__"="x"}"#,
    ] {
        assert!(confined(q, Dialect::Promql), "{q}");
    }
    for q in [
        "up == 0",
        r#"up{client_id="1999"} or down"#,
        r#"up{client_id="2000"}"#,
        r#"up{client_id=~"1999"}"#,
        r#"up{client_id!="2000"}"#,
        r#"up{client_id="1999"} + on() up{job="x"}"#,
        r#"up{}"#,
        r#"absent(nope{job="x"})"#,
        r#"info(up{client_id="1999"})"#,
        "up{client_id=\"1999\"",
        "",
    ] {
        assert!(!confined(q, Dialect::Promql), "{q}");
    }
    // MetricsQL: every `or` branch of a selector must carry it.
    assert!(confined(
        r#"x{client_id="1999",a="b" or client_id="1999",c="d"}"#,
        Dialect::Metricsql
    ));
    assert!(!confined(
        r#"x{client_id="1999",a="b" or c="d"}"#,
        Dialect::Metricsql
    ));
    assert!(confined(
        r#"rate(x{client_id="1999"}) default 0"#,
        Dialect::Metricsql
    ));
    // The label name must be the tenant label, written any way the parser reads it.
    assert!(!confined_to(
        r#"up{client_id="1999"}"#,
        "tenant",
        "1999",
        Dialect::Promql
    ));
}

#[test]
fn answers_that_are_not_a_success_are_refused() {
    let alice = filter_for(RuleView::Rules, &["1999"], Dialect::Promql);
    let refused = |status: u16, body: &[u8]| alice.filter(status, body).unwrap_err();
    // The engine's own error, kept in Prometheus' shape, with its status.
    let r = refused(
        400,
        br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"type\""}"#,
    );
    assert_eq!((r.status, r.error_type), (400, ErrorType::BadData));
    assert!(r.message.starts_with("rule engine: invalid parameter"));
    let r = refused(
        503,
        br#"{"status":"error","errorType":"execution","error":"x"}"#,
    );
    assert_eq!((r.status, r.error_type), (503, ErrorType::Internal));
    let long = format!(
        r#"{{"status":"error","errorType":"bad_data","error":"{}"}}"#,
        "é".repeat(1000)
    );
    assert!(refused(422, long.as_bytes()).message.len() <= 13 + MAX_ERROR_MESSAGE);
    // vmalert's plain-text errors, and odd statuses.
    let r = refused(500, b"unsupported path requested");
    assert_eq!((r.status, r.error_type), (500, ErrorType::Unavailable));
    assert_eq!(refused(404, b"").status, 404);
    assert_eq!(refused(302, b"").status, 502);
    assert_eq!(refused(204, b"").status, 502);
    // 200s that are not a rules answer.
    for body in [
        &b""[..],
        b"<html>",
        br#"{"status":"error","data":{"groups":[]}}"#,
        br#"{"status":"success","data":{"alerts":[]}}"#,
        br#"{"status":"success","data":{"groups":{}}}"#,
        br#"{"status":"success"}"#,
        b"[]",
        b"\xff\xfe",
    ] {
        let r = refused(200, body);
        assert_eq!(
            (r.status, r.error_type),
            (502, ErrorType::Internal),
            "{body:?}"
        );
    }
}

#[test]
fn size_and_depth_are_bounded() {
    let small = ResponseFilter {
        max_bytes: 100,
        ..filter_for(RuleView::Rules, &["1999"], Dialect::Promql)
    };
    let r = small.filter(200, PROMETHEUS_RULES.as_bytes()).unwrap_err();
    assert_eq!(r.status, 502);
    assert!(r.message.contains("max_response_bytes (100 bytes)"));
    // An error body over the bound is refused for its size, not passed on.
    assert!(small
        .filter(500, &[b' '; 101])
        .unwrap_err()
        .message
        .contains("max_response_bytes"));
    assert_eq!(
        small
            .check_headers(None, Some(b"101"))
            .map_err(|r| r.status),
        Err(502)
    );
    assert_eq!(small.check_headers(None, Some(b"100")), Ok(()));
    assert_eq!(small.check_headers(Some(b"identity"), Some(b"x")), Ok(()));
    for encoding in [&b"gzip"[..], b"br", b"deflate", b"gzip, identity"] {
        let r = small.check_headers(Some(encoding), None).unwrap_err();
        assert_eq!(r.status, 502);
    }
    // Nesting: refused before serde_json's recursion sees it.
    let alice = filter_for(RuleView::Rules, &["1999"], Dialect::Promql);
    let deep = format!(
        r#"{{"status":"success","data":{{"groups":[{{"name":"g","rules":[],"x":{}1{}}}]}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = alice.filter(200, deep.as_bytes()).unwrap_err();
    assert!(r.message.contains("nested too deeply"), "{}", r.message);
    assert!(alice.filter(500, deep.as_bytes()).is_err());
    assert!(!json_depth_exceeds(
        br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#,
        2
    ));
    assert!(!json_depth_exceeds(br#"{"a":"\"[[[["}"#, 1));
    assert!(json_depth_exceeds(b"[[[", 2));
}

#[test]
fn the_request_asks_the_engine_for_rules_with_only_match() {
    let plan_of = |path: &str| {
        crate::api::plan_request(
            b"GET",
            path.as_bytes(),
            Backend::VictoriaMetrics,
            crate::config::Writes::Deny,
        )
        .unwrap()
    };
    let upstream = |path: &str| {
        let plan = plan_of(path);
        let Action::FilterRules(view) = plan.action else {
            panic!("{path}: {:?}", plan.action)
        };
        upstream_request(&plan, view)
    };
    let (plan, selection) = upstream(
        "/api/v1/rules?type=Record&rule_name[]=a&rule_name%5B%5D=b&rule_group[]=g&file[]=f\
         &exclude_alerts=TRUE&group_limit=1&group_next_token=x&match[]=up&search=x&page_num=2",
    )
    .unwrap();
    assert_eq!(plan.raw_path(), "/api/v1/rules");
    assert_eq!(plan.raw_query(), "match[]=up");
    assert_eq!(
        selection,
        RuleSelection {
            kind: Some(RuleKind::Recording),
            rule_names: vec!["a".into(), "b".into()],
            groups: vec!["g".into()],
            files: vec!["f".into()],
            exclude_alerts: true,
        }
    );
    // The alerts view asks for the alerting rules, with their alerts.
    let (plan, selection) =
        upstream("/prometheus/api/v1/alerts?exclude_alerts=1&type=record&match%5B%5D=x").unwrap();
    assert_eq!(plan.raw_path(), "/prometheus/api/v1/rules");
    assert_eq!(plan.raw_query(), "match%5B%5D=x&type=alert");
    assert_eq!(selection.kind, Some(RuleKind::Alerting));
    assert!(!selection.exclude_alerts);
    let (plan, _) = upstream("/api/v1/%61lerts").unwrap();
    assert_eq!(
        (plan.raw_path(), plan.raw_query()),
        ("/api/v1/rules", "type=alert")
    );
    // Prometheus' own refusals, given before asking.
    for bad in ["type=alerts", "exclude_alerts=yes", "x=%zz"] {
        let r = upstream(&format!("/api/v1/rules?{bad}")).unwrap_err();
        assert_eq!(r.status, 400, "{bad}");
    }
    // `type` is read from its first value, as Prometheus reads it.
    let (_, selection) = upstream("/api/v1/rules?type=alert&type=bogus").unwrap();
    assert_eq!(selection.kind, Some(RuleKind::Alerting));
}

proptest::proptest! {
    #[test]
    fn filtering_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
                              status in 0u16..700) {
        let alice = filter_for(RuleView::Rules, &["1999"], Dialect::Promql);
        let _ = alice.filter(status, &body);
        let _ = alice.check_headers(Some(&body), Some(&body));
    }

    #[test]
    fn a_kept_rule_always_carries_a_callers_tenant(
        tenant in "(1999|2000|19999|)", query in "[a-z{}=\"0-9_ ]{0,40}",
        kind in "(alerting|recording|other)") {
        let rule = json!({"name": "r", "type": kind, "query": query,
                          "labels": {"client_id": tenant}});
        let alice = filter_for(RuleView::Rules, &["1999"], Dialect::Promql);
        let answer = run(&alice, &answer_with(rule));
        for group in answer["data"]["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                proptest::prop_assert_eq!(&rule["labels"]["client_id"], "1999");
                let q = rule["query"].as_str().unwrap();
                proptest::prop_assert!(confined_to(q, "client_id", "1999", Dialect::Promql));
            }
        }
    }
}
