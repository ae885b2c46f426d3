//! Tenant-scoped writes (`writes: victoriametrics`): which ingestion endpoints pass,
//! which one tenant a write belongs to, and the `:path` that makes VictoriaMetrics stamp
//! every ingested series with it.
//!
//! The body is never read. VictoriaMetrics appends each `extra_label=name=value` of the
//! URL's query string to every series it ingests on these endpoints, after the series'
//! own labels, and where a name repeats the last value wins: so the tenant the filter
//! puts there replaces any tenant label the client wrote (v1.79 source: the handlers in
//! `app/vminsert/*/request_handler.go`, `lib/protoparser/common/extra_labels.go`, and
//! `MetricName.sortTags` in `lib/storage/metric_name.go`). It reads `extra_label` from
//! the URL only (`req.URL.Query()`), never from a form body.
//!
//! One caveat lives in the backend, not here (docs/writes.md): VictoriaMetrics before
//! v1.108 drops the labels of a series past `-maxLabelsPerTimeseries` (30 by default),
//! counting the appended `extra_label` last, so a series sent with that many labels of
//! its own loses the tenant. From v1.108 such a series is refused whole.

use crate::api::{check_param_count, extra_label, Plan, Refusal, STRIPPED_PARAMS};
use crate::config::IdentityConfig;
use crate::form::Params;
use crate::identity::{self, Identity};
use serde_json::Value;
use std::rc::Rc;

/// The ingestion endpoints allowed under `writes: victoriametrics`, without the
/// `/prometheus` prefix VictoriaMetrics also serves them under.
const PREFIXABLE: &[&str] = &[
    "/api/v1/write",
    "/api/v1/import",
    "/api/v1/import/prometheus",
    "/api/v1/import/csv",
];
/// The Influx line protocol endpoint: VictoriaMetrics 1.79 serves it without the
/// `/prometheus` prefix only.
const INFLUX_WRITE: &str = "/influx/write";

/// VictoriaMetrics' other ingestion endpoints (v1.79, with or without `/prometheus`):
/// never allowed, but counted as writes when refused.
const OTHER_INGESTION: &[&str] = &[
    "/api/v1/import/native",
    "/influx/api/v2/write",
    "/write",
    "/api/v2/write",
    "/datadog/api/v1/series",
    "/api/put",
    "/newrelic/infra/v2/metrics/events/bulk",
    "/opentelemetry/api/v1/push",
];

/// The one method the write endpoints are allowed with.
pub const WRITE_METHOD: &str = "POST";

/// True for a (percent-decoded, canonical) path of an allowed ingestion endpoint.
pub fn is_write_path(path: &str) -> bool {
    PREFIXABLE.contains(&unprefixed(path)) || path == INFLUX_WRITE
}

/// True for the path of any ingestion endpoint VictoriaMetrics serves, allowed or not.
pub fn is_ingestion_path(path: &str) -> bool {
    let unprefixed = unprefixed(path);
    is_write_path(path) || OTHER_INGESTION.contains(&unprefixed) || unprefixed == INFLUX_WRITE
}

fn unprefixed(path: &str) -> &str {
    match path.strip_prefix("/prometheus") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The refusal of a write path while `writes` is `deny`.
pub fn writes_denied(path: &str) -> Refusal {
    Refusal::forbidden(format!(
        "path {path:?} writes data, and writes are not enabled (`writes` is \"deny\")"
    ))
}

/// The tenants a verified JWT may write to: those of the tenant claim, narrowed to the
/// one `identity.write_tenant_claim` names when the token carries it. That tenant must
/// be one of the token's own: the claim picks among them and never adds one.
pub fn tenants_from_claims(claims: &Value, identity: &IdentityConfig) -> Identity {
    let tenants = match identity::tenants_from_claims(claims, &identity.claim) {
        Identity::Tenants(tenants) => tenants,
        refused => return refused,
    };
    let Some(path) = &identity.write_tenant_claim else {
        return Identity::Tenants(tenants);
    };
    let present = path
        .iter()
        .try_fold(claims, |value, key| value.as_object()?.get(key))
        .is_some();
    if !present {
        return Identity::Tenants(tenants);
    }
    let forbidden = |why: &str| Identity::Forbidden(why.to_string());
    let named = match identity::tenants_from_claims(claims, path) {
        Identity::Tenants(named) => named,
        // Present but unusable: refused as the tenant claim would be.
        _ => return forbidden("the write tenant claim must name exactly one tenant"),
    };
    match &*named {
        [one] if tenants.contains(one) => Identity::Tenants(Rc::from([one.clone()])),
        [_] => forbidden("the write tenant claim names a tenant the identity does not have"),
        _ => forbidden("the write tenant claim must name exactly one tenant"),
    }
}

/// The `:path` a write goes on with: the client's query string without any
/// `extra_label` or `extra_filters` of its own, and the tenant's `extra_label` added.
/// Refused when the identity does not name exactly one tenant: nobody could say which
/// tenant the data belongs to.
pub fn path_for(plan: &Plan, tenants: &[String], tenant_label: &str) -> Result<String, Refusal> {
    let tenant = match tenants {
        [one] => one,
        [] => return Err(Refusal::forbidden("the identity has no tenant")),
        _ => {
            return Err(Refusal::forbidden(
                "the identity has several tenants, and a write must belong to exactly one: \
                 the token must name it in the write tenant claim",
            ))
        }
    };
    let mut url = Params::parse(plan.raw_query())
        .map_err(|e| Refusal::bad_request(format!("invalid query string: {e}")))?;
    url.remove_all(STRIPPED_PARAMS);
    url.push("extra_label", extra_label(tenant_label, tenant));
    let query = url.encode();
    // A query string Go would drop whole would drop the tenant's extra_label with it.
    check_param_count("query string", query.as_bytes())?;
    Ok(format!("{}?{query}", plan.raw_path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{plan_request, Action};
    use crate::config::{Backend, Config, Writes};
    use serde_json::json;

    const ALLOWED: &[&str] = &[
        "/api/v1/write",
        "/api/v1/import",
        "/api/v1/import/prometheus",
        "/api/v1/import/csv",
        "/prometheus/api/v1/write",
        "/prometheus/api/v1/import",
        "/prometheus/api/v1/import/prometheus",
        "/prometheus/api/v1/import/csv",
        "/influx/write",
    ];
    /// Ingestion endpoints VictoriaMetrics 1.79 serves that stay refused either way.
    const OTHER_INGESTION: &[&str] = &[
        "/api/v1/import/native",
        "/prometheus/api/v1/import/native",
        "/prometheus/influx/write",
        "/influx/api/v2/write",
        "/api/v2/write",
        "/write",
        "/datadog/api/v1/series",
        "/api/put",
        "/newrelic/infra/v2/metrics/events/bulk",
        "/opentelemetry/api/v1/push",
        "/api/v1/admin/tsdb/delete_series",
    ];

    fn plan(method: &str, path: &str, writes: Writes) -> Result<Plan, Refusal> {
        plan_request(
            method.as_bytes(),
            path.as_bytes(),
            Backend::VictoriaMetrics,
            writes,
        )
    }

    #[test]
    fn write_targets_are_told_apart_whatever_the_policy() {
        for path in ALLOWED.iter().chain(&OTHER_INGESTION[..10]) {
            assert!(crate::api::is_write_target(path.as_bytes()), "{path}");
            let with_query = format!("{path}?extra_label=a=b");
            assert!(crate::api::is_write_target(with_query.as_bytes()));
        }
        for path in [
            &b"/api/v1/query"[..],
            b"/api/v1/admin/tsdb/delete_series",
            b"/api/v1//write",
            b"/api/v1/write\xff",
        ] {
            assert!(!crate::api::is_write_target(path), "{path:?}");
        }
    }

    #[test]
    fn the_default_refuses_every_write_path() {
        for path in ALLOWED.iter().chain(OTHER_INGESTION) {
            for method in ["POST", "PUT", "GET"] {
                let refusal = plan(method, path, Writes::Deny).unwrap_err();
                assert_eq!(refusal.status, 403, "{method} {path}");
            }
        }
        let refusal = plan("POST", "/api/v1/write", Writes::Deny).unwrap_err();
        assert!(
            refusal.message.contains("`writes` is \"deny\""),
            "{refusal:?}"
        );
    }

    #[test]
    fn enabled_writes_pass_with_post_only() {
        for path in ALLOWED {
            for query in ["", "?db=x&extra_label=a=b"] {
                let full = format!("{path}{query}");
                let p = plan("POST", &full, Writes::VictoriaMetrics).unwrap();
                assert_eq!(p.action, Action::Write, "{full}");
                assert_eq!(p.raw_path(), *path);
                assert_eq!(p.raw_query(), query.trim_start_matches('?'));
                assert!(!p.reads_body, "a write body is never read");
            }
            for method in ["GET", "PUT", "DELETE", "post"] {
                let refusal = plan(method, path, Writes::VictoriaMetrics).unwrap_err();
                assert_eq!((refusal.status, refusal.allow), (405, Some("POST")));
            }
            // Percent-encoded, as a router decodes it.
            let encoded = path
                .replace("write", "%77rite")
                .replace("import", "%69mport");
            assert_eq!(
                plan("POST", &encoded, Writes::VictoriaMetrics).map(|p| p.action),
                Ok(Action::Write),
                "{encoded}"
            );
        }
        for path in OTHER_INGESTION {
            let refusal = plan("POST", path, Writes::VictoriaMetrics).unwrap_err();
            assert_eq!(refusal.status, 403, "{path}");
        }
        // Reads are planned as before.
        assert_eq!(
            plan("GET", "/api/v1/query?query=up", Writes::VictoriaMetrics).map(|p| p.action),
            Ok(Action::RewriteQuery)
        );
    }

    fn write_path(query: &str, tenants: &[&str]) -> Result<String, Refusal> {
        let p = plan(
            "POST",
            &format!("/api/v1/import{query}"),
            Writes::VictoriaMetrics,
        )?;
        let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
        path_for(&p, &tenants, "client_id")
    }

    #[test]
    fn the_tenant_replaces_every_extra_label_and_filter_of_the_client() {
        assert_eq!(
            write_path("", &["1999"]).unwrap(),
            "/api/v1/import?extra_label=client_id%3D1999"
        );
        let sent = "?format=1:metric:m,2:label:client_id&extra_label=client_id=2000\
                    &extra%5Flabel=client_id%3D2000&extra_filters=%7Ba%3D%22b%22%7D\
                    &extra_filters%5B%5D=x&extra_filters[]=y&db=2000";
        assert_eq!(
            write_path(sent, &["1999"]).unwrap(),
            "/api/v1/import?format=1:metric:m,2:label:client_id&db=2000\
             &extra_label=client_id%3D1999"
        );
        // A value with `=` stays whole: VictoriaMetrics splits at the first `=` only.
        assert_eq!(
            write_path("", &["a=b&c"]).unwrap(),
            "/api/v1/import?extra_label=client_id%3Da%3Db%26c"
        );
        // What Go would drop or split, the filter refuses: a `;` pair, or so many
        // parameters that Go (1.24.12 and later) reads none, the tenant's included.
        assert_eq!(
            write_path("?a;extra_label=x", &["1"]).unwrap_err().status,
            400
        );
        let many = "&a=1".repeat(crate::api::MAX_FORWARDED_PARAMS - 1);
        assert_eq!(
            write_path(&format!("?b=1{many}"), &["1"])
                .unwrap_err()
                .status,
            400
        );
        assert!(write_path(&format!("?extra_label=x{many}"), &["1"]).is_ok());
        assert_eq!(write_path("?%zz", &["1"]).unwrap_err().status, 400);
    }

    #[test]
    fn a_write_needs_exactly_one_tenant() {
        let refusal = write_path("", &["1999", "2000"]).unwrap_err();
        assert_eq!(refusal.status, 403);
        assert!(refusal.message.contains("several tenants"), "{refusal:?}");
        assert_eq!(write_path("", &[]).unwrap_err().status, 403);
    }

    fn identity(write_claim: Option<&str>) -> IdentityConfig {
        let extra = write_claim
            .map(|c| format!(r#","write_tenant_claim":{c}"#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"tenant_label":"client_id","writes":"victoriametrics","identity":{{"source":"jwt_payload_header","claim":"client_id"{extra}}}}}"#
        );
        Config::parse(json.as_bytes()).unwrap().identity
    }

    #[test]
    fn the_write_tenant_claim_picks_one_of_the_tokens_tenants() {
        let both = json!({"client_id": ["1999", 2000], "w": {"to": 2000}});
        let without = identity(None);
        assert_eq!(
            tenants_from_claims(&both, &without),
            Identity::Tenants(vec!["1999".to_string(), "2000".to_string()].into())
        );
        let with = identity(Some(r#"["w","to"]"#));
        assert_eq!(
            tenants_from_claims(&both, &with),
            Identity::Tenants(vec!["2000".to_string()].into())
        );
        // Absent: the tenants as they are (one is enough, several are refused later).
        let one = json!({"client_id": "1999"});
        assert_eq!(
            tenants_from_claims(&one, &with),
            Identity::Tenants(vec!["1999".to_string()].into())
        );
        let forbidden = |claims: Value| match tenants_from_claims(&claims, &with) {
            Identity::Forbidden(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(forbidden(json!({"client_id": "1999", "w": {"to": "2000"}})).contains("not have"));
        assert!(
            forbidden(json!({"client_id": ["1", "2"], "w": {"to": ["1", "2"]}}))
                .contains("exactly one")
        );
        forbidden(json!({"client_id": ["1", "2"], "w": {"to": 1.5}}));
        forbidden(json!({"client_id": ["1", "2"], "w": {"to": ""}}));
        forbidden(json!({"client_id": ["1", "2"], "w": {"to": null}}));
        // The tenant claim itself is still required.
        forbidden(json!({"w": {"to": "1"}}));
    }
}
