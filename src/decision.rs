//! The whole per-request decision, sans IO: from what the client sent and who it is to
//! "refuse", "answer" or "forward with this path and body".
//!
//! The filter ([`crate::filter`]) runs it in two halves, because the identity and the
//! body arrive later than the headers:
//! - [`on_headers`]: method, `:path` and the body headers decide whether the request is
//!   planned at all, and the credential header says who asks (a bearer token to look
//!   up, or tenants already verified by Envoy's `jwt_authn`);
//! - [`finish`]: once the tenants and the body are known, answer locally, refuse, or
//!   rewrite (and, for rules and alerts, say how to filter the answer: the plan's
//!   [`Rewritten::response`]).
//!
//! [`decide`] chains the two for one complete request, with the identity lookup's
//! result passed in. It is what the `request_decision` fuzz target and the regression
//! tests drive, so the code they exercise is the code Envoy runs.

use crate::api::{self, Action, Plan, QueryRejection, Refusal, RewriteOptions, Rewritten, Tenant};
use crate::config::{Config, IdentitySource};
use crate::identity::{self, IdentityError};
use crate::rules::{self, ResponseFilter};
use crate::{rewrite, RewriteError, TenantMatcher};

/// What the filter reads from the request headers. `None` is an absent header.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    /// `:path`: path and query string.
    pub path: &'a [u8],
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
    pub content_length: Option<&'a [u8]>,
    /// The header named by [`credential_header`]: `Authorization` for `userinfo`, the
    /// `jwt_authn` payload header otherwise.
    pub credential: Option<&'a [u8]>,
    /// True when the headers end the stream: there is no body at all.
    pub end_of_stream: bool,
}

/// The header that carries the caller's credential under `config`.
pub fn credential_header(config: &Config) -> &str {
    match &config.identity.source {
        IdentitySource::Userinfo(_) => "authorization",
        IdentitySource::JwtPayloadHeader { header } => header,
    }
}

/// Who asks, as far as the headers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A bearer token, still to be looked up at the identity provider.
    Token(String),
    /// Tenants read from claims Envoy already verified.
    Tenants(Vec<String>),
}

/// A request whose headers passed: its plan and its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub plan: Plan,
    pub caller: Caller,
}

/// The headers half: the endpoint policy first (so an unknown path is 403 whoever
/// asks), then the body headers when a body follows, then the credential.
pub fn on_headers(head: &RequestHead<'_>, config: &Config) -> Result<Admitted, Refusal> {
    let plan = api::plan_request(head.method, head.path, config.backend)?;
    if !head.end_of_stream {
        api::check_content_encoding(head.content_encoding)?;
        api::check_body_headers(
            head.content_type,
            head.content_length,
            config.max_body_bytes,
        )?;
    }
    let caller = match &config.identity.source {
        IdentitySource::Userinfo(_) => {
            let token = identity::bearer_token(head.credential).map_err(refusal_for)?;
            Caller::Token(token.to_string())
        }
        IdentitySource::JwtPayloadHeader { .. } => {
            let tenants = identity::claims_from_payload_header(head.credential)
                .and_then(|claims| identity::tenants_from_claims(&claims, &config.identity.claim))
                .map_err(refusal_for)?;
            Caller::Tenants(tenants)
        }
    };
    Ok(Admitted { plan, caller })
}

/// The refusal for a caller without a usable identity.
pub fn refusal_for(e: IdentityError) -> Refusal {
    match e {
        IdentityError::Unauthorized(why) => Refusal::unauthorized(why),
        IdentityError::Forbidden(why) => Refusal::forbidden(why),
        IdentityError::Unavailable(why) => Refusal::unavailable(why),
    }
}

/// What becomes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this error; the request goes no further.
    Refuse(Refusal),
    /// Answer 200 with this JSON body, without asking the backend.
    Answer(&'static str),
    /// Let the request go, with these changes to its `:path` and body.
    Forward(Rewritten),
}

/// The finishing half, once the tenants and the complete body are known: answer,
/// refuse, or rewrite every selector-carrying parameter.
pub fn finish(
    plan: &Plan,
    body: Option<&[u8]>,
    content_type: Option<&[u8]>,
    tenants: &[String],
    config: &Config,
) -> Decision {
    // The filter refuses a larger body as it arrives; checked again so that this
    // function alone never forwards one.
    if body.is_some_and(|b| b.len() > config.max_body_bytes) {
        return Decision::Refuse(Refusal::too_large(config.max_body_bytes));
    }
    // First, so that a caller without a usable tenant gets 403 on every endpoint.
    let matcher = match TenantMatcher::new(&config.tenant_label, tenants) {
        Ok(matcher) => matcher,
        Err(e) => {
            return Decision::Refuse(Refusal::forbidden(format!("unusable tenant claim: {e}")))
        }
    };
    // Metadata is answered for any caller with a tenant.
    if let Action::Answer(answer) = plan.action {
        return Decision::Answer(answer);
    }
    // Rules and alerts: the engine is asked for the rules, with the caller's own
    // narrowing kept back to be applied to the answer.
    let rules_request = match plan.action {
        Action::FilterRules(view) => match rules::upstream_request(plan, view) {
            Ok((upstream, selection)) => Some((upstream, view, selection)),
            Err(refusal) => return Decision::Refuse(refusal),
        },
        _ => None,
    };
    let plan = rules_request
        .as_ref()
        .map_or(plan, |(upstream, ..)| upstream);
    let rewriter = |query: &str| {
        rewrite(query, &matcher, config.on_conflict, config.dialect).map_err(|e| match e {
            RewriteError::Parse(p) => QueryRejection::BadQuery(p.to_string()),
            RewriteError::Conflict(m) => QueryRejection::Forbidden(m),
        })
    };
    let matcher_text = matcher.matcher_text_for(config.dialect);
    let tenant = Tenant {
        label: &config.tenant_label,
        values: matcher.values(),
        matcher_text: &matcher_text,
    };
    let options = RewriteOptions {
        victoriametrics_extra_label: config.victoriametrics_extra_label,
    };
    let mut rewritten =
        match api::rewrite_request(plan, body, content_type, &tenant, options, &rewriter) {
            Ok(rewritten) => rewritten,
            Err(refusal) => return Decision::Refuse(refusal),
        };
    if let Some((upstream, view, selection)) = rules_request {
        // The engine's path and parameters differ from the client's even when the
        // rewrite left them alone.
        if rewritten.path.is_none() {
            rewritten.path = Some(if upstream.raw_query.is_empty() {
                upstream.raw_path.clone()
            } else {
                format!("{}?{}", upstream.raw_path, upstream.raw_query)
            });
        }
        rewritten.response = Some(ResponseFilter {
            view,
            selection,
            tenant_label: config.tenant_label.clone(),
            tenants: matcher.values().to_vec(),
            // vmalert hands its rules to VictoriaMetrics, which reads MetricsQL whatever
            // `dialect` the filter parses the clients' queries in.
            dialect: config.backend.dialect(),
            max_bytes: config.max_response_bytes,
        });
    }
    Decision::Forward(rewritten)
}

/// One complete request: the headers, the body (`None` when the headers ended the
/// stream), and what the identity provider said about the bearer token (used only
/// when the credential is a token to look up).
pub fn decide(
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
    looked_up: Result<Vec<String>, IdentityError>,
    config: &Config,
) -> Decision {
    let admitted = match on_headers(head, config) {
        Ok(admitted) => admitted,
        Err(refusal) => return Decision::Refuse(refusal),
    };
    let tenants = match admitted.caller {
        Caller::Tenants(tenants) => tenants,
        Caller::Token(_) => match looked_up {
            Ok(tenants) => tenants,
            Err(e) => return Decision::Refuse(refusal_for(e)),
        },
    };
    finish(&admitted.plan, body, head.content_type, &tenants, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"tenant_label":"client_id","identity":{{"source":"userinfo","cluster":"idp","claim":"client_id"}}{extra}}}"#
        );
        Config::parse(json.as_bytes()).unwrap()
    }

    fn get(path: &str) -> RequestHead<'_> {
        RequestHead {
            method: b"GET",
            path: path.as_bytes(),
            credential: Some(b"Bearer abc"),
            end_of_stream: true,
            ..RequestHead::default()
        }
    }

    fn tenants(values: &[&str]) -> Result<Vec<String>, IdentityError> {
        Ok(values.iter().map(|v| v.to_string()).collect())
    }

    fn forwarded(d: Decision) -> Rewritten {
        match d {
            Decision::Forward(r) => r,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    #[test]
    fn a_query_is_forwarded_rewritten() {
        let c = config(r#","victoriametrics_extra_label":false"#);
        let r = forwarded(decide(
            &get("/api/v1/query?query=up"),
            None,
            tenants(&["7"]),
            &c,
        ));
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=up%7Bclient_id%3D%227%22%7D")
        );
        assert_eq!(r.body, None);
    }

    #[test]
    fn policy_comes_before_identity_and_identity_before_the_query() {
        let c = config("");
        let refused = |d: Decision| match d {
            Decision::Refuse(r) => r.status,
            other => panic!("{other:?}"),
        };
        let no_token = RequestHead {
            credential: None,
            ..get("/api/v1/admin/tsdb/delete_series")
        };
        assert_eq!(refused(decide(&no_token, None, tenants(&["7"]), &c)), 403);
        let no_token = RequestHead {
            credential: None,
            ..get("/api/v1/query?query=up!")
        };
        assert_eq!(refused(decide(&no_token, None, tenants(&["7"]), &c)), 401);
        let lookup_failed = Err(IdentityError::Unavailable("down".into()));
        assert_eq!(
            refused(decide(
                &get("/api/v1/query?query=up"),
                None,
                lookup_failed,
                &c
            )),
            503
        );
        assert_eq!(
            refused(decide(
                &get("/api/v1/query?query=up!"),
                None,
                tenants(&["7"]),
                &c
            )),
            400
        );
        assert_eq!(
            refused(decide(
                &get("/api/v1/query?query=up"),
                None,
                tenants(&[""]),
                &c
            )),
            403
        );
    }

    #[test]
    fn body_headers_are_checked_only_when_a_body_follows() {
        let c = config(r#","max_body_bytes":10"#);
        let head = RequestHead {
            method: b"POST",
            content_type: Some(b"application/json"),
            content_length: Some(b"5"),
            content_encoding: Some(b"gzip"),
            ..get("/api/v1/query?query=up")
        };
        assert!(matches!(
            decide(&head, None, tenants(&["7"]), &c),
            Decision::Forward(_)
        ));
        let with_body = RequestHead {
            end_of_stream: false,
            ..head
        };
        assert!(matches!(
            decide(&with_body, Some(b"query=up"), tenants(&["7"]), &c),
            Decision::Refuse(Refusal { status: 415, .. })
        ));
        let form = RequestHead {
            content_type: Some(b"application/x-www-form-urlencoded"),
            content_encoding: None,
            content_length: None,
            ..with_body
        };
        assert!(matches!(
            decide(&form, Some(b"query=up&x=12345"), tenants(&["7"]), &c),
            Decision::Refuse(Refusal { status: 413, .. })
        ));
    }

    #[test]
    fn local_answers_need_an_identity_but_no_rewrite() {
        let c = config("");
        assert_eq!(
            decide(&get("/api/v1/metadata"), None, tenants(&["7"]), &c),
            Decision::Answer(api::METADATA_ANSWER)
        );
        // Found by the request_decision fuzz target: an unusable tenant used to get the
        // local answers all the same.
        for path in ["/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts"] {
            assert!(matches!(
                decide(&get(path), None, tenants(&[""]), &c),
                Decision::Refuse(Refusal { status: 403, .. })
            ));
        }
        let no_token = RequestHead {
            credential: None,
            ..get("/api/v1/rules")
        };
        assert!(matches!(
            decide(&no_token, None, tenants(&["7"]), &c),
            Decision::Refuse(Refusal { status: 401, .. })
        ));
    }

    #[test]
    fn rules_and_alerts_ask_the_engine_and_filter_its_answer() {
        use crate::config::Backend;
        use crate::rules::{RuleKind, RuleView};
        for (backend, extra, dialect) in [
            (Backend::VictoriaMetrics, "", crate::Dialect::Metricsql),
            (
                Backend::Prometheus,
                r#","backend":"prometheus""#,
                crate::Dialect::Promql,
            ),
        ] {
            let c = config(&format!(r#"{extra},"max_response_bytes":5000"#));
            let r = forwarded(decide(
                &get("/api/v1/alerts?rule_group[]=g&exclude_alerts=true&group_limit=2"),
                None,
                tenants(&["7", "8", "7"]),
                &c,
            ));
            assert_eq!(
                r.path.as_deref(),
                Some("/api/v1/rules?type=alert&match%5B%5D=%7Bclient_id%3D~%227%7C8%22%7D")
            );
            let filter = r.response.expect("a response filter");
            assert_eq!(filter.view, RuleView::Alerts);
            assert_eq!(filter.selection.kind, Some(RuleKind::Alerting));
            assert_eq!(filter.selection.groups, ["g"]);
            assert_eq!(filter.tenants, ["7", "8"]);
            assert_eq!(filter.tenant_label, "client_id");
            assert_eq!(filter.dialect, dialect, "{backend:?}");
            assert_eq!(filter.max_bytes, 5000);
            // No extra_label to a rule engine, whatever the setting.
            let r = forwarded(decide(&get("/api/v1/rules"), None, tenants(&["7"]), &c));
            assert_eq!(
                r.path.as_deref(),
                Some("/api/v1/rules?match%5B%5D=%7Bclient_id%3D%227%22%7D")
            );
            assert!(matches!(
                decide(&get("/api/v1/rules?type=x"), None, tenants(&["7"]), &c),
                Decision::Refuse(Refusal { status: 400, .. })
            ));
        }
        // Other endpoints have no response filter.
        let c = config("");
        let Decision::Forward(r) =
            decide(&get("/api/v1/query?query=up"), None, tenants(&["7"]), &c)
        else {
            panic!()
        };
        assert_eq!(r.response, None);
    }

    #[test]
    fn jwt_payload_tenants_ignore_the_lookup() {
        let c = Config::parse(
            br#"{"tenant_label":"client_id","identity":{"source":"jwt_payload_header","claim":"client_id"},"victoriametrics_extra_label":false}"#,
        )
        .unwrap();
        assert_eq!(credential_header(&c), "x-jwt-payload");
        // {"client_id":"9"}
        let head = RequestHead {
            credential: Some(b"eyJjbGllbnRfaWQiOiI5In0"),
            ..get("/api/v1/query?query=up")
        };
        let lookup_failed = Err(IdentityError::Unavailable("unused".into()));
        let Decision::Forward(r) = decide(&head, None, lookup_failed, &c) else {
            panic!()
        };
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=up%7Bclient_id%3D%229%22%7D")
        );
    }
}
