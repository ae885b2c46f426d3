//! Fuzz target: the whole request decision, from method, `:path`, headers, body and
//! identity to a verdict: `decision::decide`, and the request lifecycle that runs the
//! same steps in Envoy (`lifecycle::Request`), fed the events in one of the orders
//! Envoy produces (the input's length picks it): the identity at the headers, then a
//! turn, then the body; the identity from a callout, then the body (Envoy without
//! `allow_on_headers_stop_iteration`); the body, then the identity (with it); and, on a
//! worker that knows Envoy hands bodies to held requests (no turn asked), the identity
//! at the headers, then the body while they are held, or (a wrong guess) the root's
//! tick after the turn's wait, then the body.
//!
//! Input: a config flag byte (see `config_from_flags`), a request flag byte, then the
//! fields method, path, content-type, content-encoding, content-length, credential,
//! body and tenants, separated by 0xFF (tenant values by 0xFE). The request flags say
//! which headers are present, whether a body follows, and what the identity provider
//! answered for the token.
//!
//! Invariants, besides no panic:
//! - the lifecycle ends as `decide` says (a body over `max_body_bytes` may be refused
//!   before the identity is judged), never touches the headers after they went on, and
//!   never lets part of a body go on unjudged (`lifecycle::Trace` checks both);
//! - a refusal is Prometheus' error JSON with a matching status;
//! - the decision does not depend on the bearer token's text (so no refusal quotes it):
//!   the same request with another token of the same shape gets the same decision;
//! - nothing but a refusal without a verified identity;
//! - a write goes on untouched but for its `:path`, which carries exactly one
//!   `extra_label`, its one verified tenant's;
//! - a forwarded request is on an allowed endpoint, and what Go's `net/http` hands the
//!   backend's handler for it (the Go form oracle, given the final `:path`, the client's
//!   `Content-Type` and the final body) has every `query` / `match[]` / `match`
//!   re-parsing and confined to the tenant, at least one `match[]` where the endpoint
//!   needs one, and only our own `extra_label` / `extra_filters[]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::api::{self, Action, Refusal};
use promql_tenant_filter::config::{Config, IdentitySource};
use promql_tenant_filter::decision::{decide, Decision, Forwarded, RequestHead};
use promql_tenant_filter::form::Params;
use promql_tenant_filter::identity::{self, Identity};
use promql_tenant_filter::lifecycle::{self, Reply, Request, Trace};
use promql_tenant_filter::TenantMatcher;
use promql_tenant_filter_fuzz::{
    check_confined, compare, config_from_flags, forwarded_request, with_go, ExpectedMatcher,
};

fuzz_target!(|data: &[u8]| {
    let [config_flags, request_flags, rest @ ..] = data else {
        return;
    };
    let config = config_from_flags(*config_flags);
    let mut fields = rest.split(|&b| b == 0xFF);
    let mut next = || fields.next().unwrap_or_default();
    let (method, path, content_type, content_encoding, content_length, credential, body) =
        (next(), next(), next(), next(), next(), next(), next());
    let tenants: Vec<String> = next()
        .split(|&b| b == 0xFE)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let present = |bit: u8| request_flags & (1 << bit) != 0;
    let end_of_stream = present(0);
    let bearer;
    let credential = if present(7) {
        bearer = [&b"Bearer "[..], credential].concat();
        &bearer[..]
    } else {
        credential
    };
    let head = RequestHead {
        method,
        path,
        content_type: present(1).then_some(content_type),
        content_encoding: present(2).then_some(content_encoding),
        content_length: present(3).then_some(content_length),
        credential: present(4).then_some(credential),
        end_of_stream,
    };
    let looked_up = match (request_flags >> 5) & 0b11 {
        0 => Identity::Tenants(tenants.clone().into()),
        1 => Identity::Unauthorized("rejected".into()),
        2 => Identity::Forbidden("no claim".into()),
        _ => Identity::Unavailable("down".into()),
    };
    let body = (!end_of_stream).then_some(body);

    let decision = decide(&head, body, looked_up.clone(), &config);
    let lived = live(&head, body, &looked_up, &config, data.len() % 5);
    match (&decision, &lived) {
        (_, Decision::Refuse(r))
            if r.status == 413 && body.is_some_and(|b| b.len() > config.max_body_bytes) => {}
        (decided, lived) => assert_eq!(
            sent(decided, body),
            sent(lived, body),
            "the lifecycle and decide disagree"
        ),
    }

    // The token's text must not matter beyond its validity: the same request with
    // another valid token of the same shape gets the same decision. A refusal that
    // quoted the token would differ.
    if let (IdentitySource::Userinfo(_), Some(other)) =
        (&config.identity.source, another_token(credential))
    {
        let again = RequestHead {
            credential: head.credential.map(|_| &other[..]),
            ..head
        };
        assert_eq!(
            decide(&again, body, looked_up.clone(), &config),
            decision,
            "the decision depends on the token's text"
        );
    }
    match &decision {
        Decision::Refuse(refusal) => check_refusal(refusal),
        Decision::Answer(_) | Decision::Forward(_) => {
            let plan = api::plan_request(method, path, config.backend, config.writes)
                .unwrap_or_else(|r| panic!("let through a request planning refuses: {r:?}"));
            let write = plan.action == Action::Write;
            let tenants = verified_tenants(&config, head.credential, looked_up, write)
                .expect("let through without a verified identity");
            let Decision::Forward(rewritten) = &decision else {
                assert!(matches!(plan.action, Action::Answer(_)));
                return;
            };
            assert!(!matches!(plan.action, Action::Answer(_)));
            if plan.action == Action::Write {
                check_write(&config, rewritten, &tenants);
                return;
            }
            // Rules and alerts: the answer is filtered for exactly the caller's tenants.
            match (&plan.action, &rewritten.response) {
                (Action::FilterRules(view), Some(filter)) => {
                    assert_eq!(filter.view, *view);
                    let matcher = TenantMatcher::new(&config.tenant_label, &tenants).unwrap();
                    assert_eq!(filter.tenants, matcher.values());
                    assert_eq!(filter.tenant_label, config.tenant_label);
                    assert_eq!(filter.max_bytes, config.max_response_bytes);
                }
                (Action::FilterRules(_), None) => panic!("rules forwarded without a filter"),
                (_, Some(_)) => panic!("a response filter on {:?}", plan.action),
                (_, None) => {}
            }
            if let Some(b) = body {
                assert!(
                    b.len() <= config.max_body_bytes,
                    "forwarded an oversized body"
                );
            }
            let final_path = rewritten.path.clone().unwrap_or_else(|| {
                String::from_utf8(path.to_vec()).expect("an allowed path is UTF-8")
            });
            let final_body = rewritten.body.as_deref().or(body);
            check_forwarded(
                &config,
                &plan.action,
                method,
                head.content_type,
                &final_path,
                final_body,
                &tenants,
            );
        }
    }
});

/// A write goes on with its body untouched and exactly one `extra_label`: the one
/// tenant of its verified identity. The client's own `extra_label` / `extra_filters`
/// are gone, and the query string reads as it will be read (the codec is Go's).
fn check_write(config: &Config, rewritten: &Forwarded, tenants: &[String]) {
    assert!(rewritten.body.is_none(), "a write body was replaced");
    assert!(rewritten.response.is_none(), "a response filter on a write");
    let path = rewritten
        .path
        .as_deref()
        .expect("a write goes on with its :path set");
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let params = Params::parse(query).expect("a forwarded query string parses");
    let matcher = TenantMatcher::new(&config.tenant_label, tenants).unwrap();
    let [tenant] = matcher.values() else {
        panic!("a write let through for several tenants: {tenants:?}");
    };
    let extra: Vec<&str> = params
        .pairs()
        .iter()
        .filter(|p| p.name() == "extra_label")
        .map(|p| p.value())
        .collect();
    assert_eq!(
        extra,
        [format!("{}={tenant}", config.tenant_label)],
        "{path}"
    );
    // VictoriaMetrics reads the form keys `extra_filters` and `extra_filters[]` exactly
    // (Go's form keys are exact strings): `extra_filters[\n]` is another parameter.
    assert!(
        !params
            .pairs()
            .iter()
            .any(|p| matches!(p.name(), "extra_filters" | "extra_filters[]")),
        "{path}"
    );
    assert!(
        promql_tenant_filter::form::go_param_count(query.as_bytes()) <= api::MAX_FORWARDED_PARAMS
    );
}

/// The request run through the lifecycle in one of five orders, as a `Decision`.
fn live(
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
    identity: &Identity,
    config: &Config,
    order: usize,
) -> Decision {
    const NOW: u64 = 1_800_000_000;
    let mut request = Request::knowing(order >= 3);
    let mut trace = Trace::new(head);
    let at_headers = order == 0 || order >= 3;
    trace.apply(request.on_headers(head, config, NOW, |_| at_headers.then(|| identity.clone())));
    let send_body = |request: &mut Request, trace: &mut Trace| {
        if let (Some(body), None) = (body, &trace.reply) {
            trace.deliver(body, true);
            let step = request.on_body(body.len(), true, config, || NOW, || Some(body.to_vec()));
            trace.apply(step);
        }
    };
    match order {
        0 => {
            if trace.awaiting_turn {
                trace.apply(request.on_turn(NOW));
            }
            send_body(&mut request, &mut trace);
        }
        1 => {
            trace.apply(request.on_identity(identity.clone(), config, NOW));
            send_body(&mut request, &mut trace);
        }
        3 => {
            send_body(&mut request, &mut trace);
            if trace.awaiting_turn {
                trace.apply(request.on_turn(NOW));
            }
        }
        4 => {
            if trace.awaiting_turn {
                trace.apply(request.on_turn(NOW));
            }
            if !trace.headers_gone && trace.reply.is_none() {
                trace.apply(request.on_tick(NOW + lifecycle::TURN_WAIT_S + 1));
            }
            send_body(&mut request, &mut trace);
        }
        _ => {
            send_body(&mut request, &mut trace);
            trace.apply(request.on_identity(identity.clone(), config, NOW));
        }
    }
    match trace.reply {
        Some(Reply::Refusal(refusal)) => Decision::Refuse(refusal),
        Some(Reply::Answer(answer)) => Decision::Answer(answer),
        None => {
            assert!(trace.headers_gone, "neither answered nor let go");
            assert!(body.is_none() || trace.body_gone, "the body never went on");
            Decision::Forward(Forwarded {
                path: trace.path,
                body: body.map(|_| if trace.unread { trace.sent } else { trace.body }),
                response: None,
            })
        }
    }
}

/// A decision with the body the backend gets spelled out, changed or not.
fn sent(decision: &Decision, body: Option<&[u8]>) -> Decision {
    match decision {
        Decision::Forward(f) => Decision::Forward(Forwarded {
            path: f.path.clone(),
            body: f.body.clone().or(body.map(<[u8]>::to_vec)),
            response: None,
        }),
        other => other.clone(),
    }
}

/// The credential with each letter and digit of its bearer token replaced by the next
/// one of its class (`a`→`b`, `z`→`a`, `9`→`0`): the same shape, another text. `None`
/// when it is no `Bearer` credential, or the token has no letter or digit.
fn another_token(credential: &[u8]) -> Option<Vec<u8>> {
    let space = credential.iter().position(|&b| b == b' ')?;
    let scheme = credential[..space].trim_ascii_start();
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let mut changed = false;
    let mut out = credential.to_vec();
    for b in &mut out[space..] {
        let (first, len) = match *b {
            b'a'..=b'z' => (b'a', 26),
            b'A'..=b'Z' => (b'A', 26),
            b'0'..=b'9' => (b'0', 10),
            _ => continue,
        };
        *b = first + (*b - first + 1) % len;
        changed = true;
    }
    changed.then_some(out)
}

/// Prometheus' error shape, exactly, with a status that fits the error type.
fn check_refusal(refusal: &Refusal) {
    let body: serde_json::Value =
        serde_json::from_slice(&refusal.body()).expect("a refusal body is JSON");
    let object = body.as_object().expect("a refusal body is an object");
    assert_eq!(object.len(), 3, "{body}");
    assert_eq!(object["status"], "error");
    assert!(object["error"].is_string(), "{body}");
    let kind = object["errorType"].as_str().expect("errorType is a string");
    let fits = match kind {
        "bad_data" => matches!(refusal.status, 400 | 405 | 413 | 415),
        "unauthorized" => refusal.status == 401,
        "forbidden" => refusal.status == 403,
        "unavailable" => refusal.status == 503,
        "timeout" => refusal.status == 408,
        _ => false,
    };
    assert!(fits, "status {} with errorType {kind}", refusal.status);
    let headers = refusal.headers();
    assert!(headers.contains(&("content-type", "application/json")));
    assert_eq!(
        refusal.status == 401,
        headers.contains(&("www-authenticate", "Bearer"))
    );
}

/// The tenants the request may see, derived from the inputs: the lookup's answer for a
/// bearer token, or the verified payload's claim.
fn verified_tenants(
    config: &Config,
    credential: Option<&[u8]>,
    looked_up: Identity,
    write: bool,
) -> Option<Vec<String>> {
    let verified = match &config.identity.source {
        IdentitySource::Userinfo(_) => {
            identity::bearer_token(credential).ok()?;
            looked_up
        }
        IdentitySource::JwtPayloadHeader { .. } => {
            let claims = identity::claims_from_payload_header(credential).ok()?;
            if write {
                // A write's tenant: narrowed by `identity.write_tenant_claim`.
                promql_tenant_filter::writes::tenants_from_claims(&claims, &config.identity)
            } else {
                identity::tenants_from_claims(&claims, &config.identity.claim)
            }
        }
    };
    let Identity::Tenants(tenants) = verified else {
        return None;
    };
    TenantMatcher::new(&config.tenant_label, &tenants).ok()?;
    Some(tenants.to_vec())
}

fn check_forwarded(
    config: &Config,
    action: &Action,
    method: &[u8],
    content_type: Option<&[u8]>,
    final_path: &str,
    final_body: Option<&[u8]>,
    tenants: &[String],
) {
    // Our own codec must read what we forward, or the backend may read it differently.
    let query = final_path.split_once('?').map_or("", |(_, q)| q);
    assert!(
        Params::parse(query).is_ok(),
        "forwarded query string does not parse: {final_path:?}"
    );
    if let Some(body) = final_body {
        let text = std::str::from_utf8(body).expect("a forwarded body is UTF-8");
        assert!(
            Params::parse(text).is_ok(),
            "forwarded body does not parse: {text:?}"
        );
    }
    // A header Envoy's codec refuses (NUL, CR, LF) never reaches the filter.
    let Some(raw) = forwarded_request(method, final_path.as_bytes(), content_type, final_body)
    else {
        return;
    };
    let view = with_go(|go| go.request(&raw));
    let expected = ExpectedMatcher::new(&config.tenant_label, tenants);
    let matcher = TenantMatcher::new(&config.tenant_label, tenants).unwrap();
    // check_confined panics with its own reason, which libFuzzer reports as the crash.
    let confined = |value: &[u8]| -> Result<(), String> {
        let text = std::str::from_utf8(value).map_err(|_| format!("not UTF-8: {value:?}"))?;
        check_confined(text, config.dialect, &expected);
        Ok(())
    };
    let own_extra = match matcher.values() {
        [one] => ("extra_label", format!("{}={one}", config.tenant_label)),
        _ => (
            "extra_filters[]",
            format!("{{{}}}", matcher.matcher_text_for(config.dialect)),
        ),
    };
    let extra = config
        .victoriametrics_extra_label
        .then_some((own_extra.0, own_extra.1.as_bytes()));
    if let Err(e) = compare::forwarded(&view, *action, &confined, extra) {
        panic!(
            "{e}\n  path: {final_path:?}\n  content-type: {:?}\n  body: {:?}",
            content_type.map(String::from_utf8_lossy),
            final_body.map(String::from_utf8_lossy)
        );
    }
}
