//! Fuzz target: the rules and alerts response filter (`rules::ResponseFilter`), what
//! the filter does with a rule engine's answer before a tenant sees it.
//!
//! Input: a flag byte (bit 0: the alerts view, not the rules view; bit 1: MetricsQL,
//! not PromQL; bit 2: the caller has tenants 1999 and 2000, not 1999 alone; bit 3: a
//! 300-byte bound instead of 1 MiB), then the engine's body. The status is 200.
//!
//! Invariants, besides no panic (and no stack overflow, whatever the nesting):
//! - the answer is Prometheus' success JSON in the view's shape, or an error in its
//!   error shape;
//! - every rule in it carries one of the caller's tenants and its expression reads only
//!   that tenant; every alert carries one of the caller's tenants;
//! - an answer over the bound is always an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::rules::{confined_to, ResponseFilter, RuleSelection, RuleView};
use promql_tenant_filter::Dialect;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let [flags, body @ ..] = data else {
        return;
    };
    let tenants: Vec<String> = if flags & 4 == 0 {
        vec!["1999".into()]
    } else {
        vec!["1999".into(), "2000".into()]
    };
    let filter = ResponseFilter {
        view: if flags & 1 == 0 {
            RuleView::Rules
        } else {
            RuleView::Alerts
        },
        selection: RuleSelection::default(),
        tenant_label: "client_id".into(),
        tenants: tenants.clone(),
        dialect: if flags & 2 == 0 {
            Dialect::Promql
        } else {
            Dialect::Metricsql
        },
        max_bytes: if flags & 8 == 0 { 1 << 20 } else { 300 },
    };
    let out = match filter.filter(200, body) {
        Ok(out) => out,
        Err(refusal) => {
            let v: Value = serde_json::from_slice(&refusal.body()).expect("error JSON");
            assert_eq!(v["status"], "error");
            assert!(refusal.status >= 400);
            return;
        }
    };
    assert!(
        body.len() <= filter.max_bytes,
        "an answer over the bound passed"
    );
    let v: Value = serde_json::from_slice(&out).expect("the filtered answer is JSON");
    assert_eq!(v["status"], "success");
    fn carries<'v>(labels: &'v Value, tenants: &[String]) -> Option<&'v str> {
        labels["client_id"]
            .as_str()
            .filter(|t| tenants.iter().any(|mine| mine == t))
    }
    let check_alert = |alert: &Value| {
        assert!(
            carries(&alert["labels"], &tenants).is_some(),
            "an alert of another tenant: {alert}"
        );
    };
    match filter.view {
        RuleView::Rules => {
            for group in v["data"]["groups"].as_array().expect("groups") {
                let rules = group["rules"].as_array().expect("rules");
                assert!(!rules.is_empty(), "an empty group");
                for rule in rules {
                    let tenant =
                        carries(&rule["labels"], &tenants).expect("a rule of another tenant");
                    let query = rule["query"].as_str().expect("a query");
                    assert!(confined_to(query, "client_id", tenant, filter.dialect));
                    for alert in rule["alerts"].as_array().into_iter().flatten() {
                        check_alert(alert);
                    }
                }
            }
        }
        RuleView::Alerts => {
            for alert in v["data"]["alerts"].as_array().expect("alerts") {
                check_alert(alert);
            }
        }
    }
});
