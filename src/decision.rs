//! The whole per-request decision, sans IO: from what the client sent and who it is to
//! "refuse", "answer" or "forward with this path and body".
//!
//! It comes in three steps, because Envoy hands a request over in parts and the headers
//! leave for the backend before the body can be read (docs/request-lifecycle.md):
//! - [`on_headers`]: method, `:path` and the body headers decide whether the request is
//!   planned at all, and the credential header says who asks (a bearer token to look
//!   up, or tenants already verified by Envoy's `jwt_authn`);
//! - [`on_identity`]: once the caller's [`Identity`] is known: refuse, answer locally,
//!   or forward with a new `:path`, with a [`BodyRule`] when a body follows, and, for
//!   rules and alerts, with the [`ResponseFilter`] the engine's answer must pass;
//! - [`on_body`]: once the whole body is in: refuse it, or replace it.
//!
//! [`decide`] chains the three for one complete request, with the identity lookup's
//! result passed in. It is what the regression tests drive; the `request_decision` fuzz
//! target drives the same steps through [`crate::lifecycle`], as Envoy's callbacks do.

use crate::api::{
    self, Action, Plan, QueryRejection, Refusal, RewriteOptions, RewrittenQuery, Tenant,
    TenantParam, UrlRewritten,
};
use crate::config::{Config, IdentitySource};
use crate::form::FormError;
use crate::identity::{self, Identity, Tenants};
use crate::memo::{self, MemoKey, QueryForm};
use crate::rules::{self, ResponseFilter};
use crate::{rewrite, verified, writes, Dialect, RewriteError, TenantMatcher};
use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

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
pub enum Caller<'h> {
    /// A bearer token, still to be looked up at the identity provider: borrowed from
    /// the headers until the request must wait for it.
    Token(Cow<'h, str>),
    /// Tenants read from claims Envoy already verified.
    Tenants(Tenants),
}

/// A request whose headers passed: its plan, its caller, and what its body will be read
/// as. It borrows from the headers; [`Admitted::into_owned`] keeps it past them, for a
/// request that waits for its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<'h> {
    pub plan: Plan,
    pub caller: Caller<'h>,
    pub content_type: Option<Cow<'h, [u8]>>,
    /// The headers did not end the stream: a body follows, to be judged (or, for a
    /// write, streamed through unread).
    pub body_follows: bool,
}

impl Admitted<'_> {
    /// A write: decided at the headers, its body never read nor bounded.
    pub fn streams_body(&self) -> bool {
        self.plan.action == Action::Write
    }

    /// The same, owning what it borrowed from the headers.
    pub fn into_owned(self) -> Admitted<'static> {
        Admitted {
            plan: self.plan,
            caller: match self.caller {
                Caller::Token(token) => Caller::Token(Cow::Owned(token.into_owned())),
                Caller::Tenants(tenants) => Caller::Tenants(tenants),
            },
            content_type: self.content_type.map(|t| Cow::Owned(t.into_owned())),
            body_follows: self.body_follows,
        }
    }
}

/// The headers half: the endpoint policy first (so an unknown path is 403 whoever
/// asks), then the body headers when a body follows, then the credential.
///
/// A write's body is the client's to shape (snappy, gzip, any type, any length): the
/// filter never reads it, so it checks none of its headers either.
pub fn on_headers<'h>(head: &RequestHead<'h>, config: &Config) -> Result<Admitted<'h>, Refusal> {
    let plan = api::plan_request(head.method, head.path, config.backend, config.writes)?;
    let write = plan.action == Action::Write;
    if !head.end_of_stream && !write {
        api::check_content_encoding(head.content_encoding)?;
        api::check_body_headers(
            head.content_type,
            head.content_length,
            config.max_body_bytes,
        )?;
        // Known from the length alone: refused before any of it leaves Envoy.
        if !plan.reads_body && declares_a_body(head.content_length) {
            return Err(get_body_refusal());
        }
    }
    let caller = match &config.identity.source {
        IdentitySource::Userinfo(_) => match identity::bearer_token(head.credential) {
            Ok(token) => Caller::Token(Cow::Borrowed(token)),
            Err(identity) => return Err(refusal(identity)),
        },
        IdentitySource::JwtPayloadHeader { .. } => {
            let verified = if write {
                match identity::claims_from_payload_header(head.credential) {
                    Ok(claims) => writes::tenants_from_claims(&claims, &config.identity),
                    Err(identity) => identity,
                }
            } else {
                verified::read_tenants(head.credential, &config.identity.claim)
            };
            Caller::Tenants(tenants_of(verified)?)
        }
    };
    Ok(Admitted {
        plan,
        caller,
        content_type: head.content_type.map(Cow::Borrowed),
        body_follows: !head.end_of_stream,
    })
}

fn declares_a_body(content_length: Option<&[u8]>) -> bool {
    content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > 0)
}

fn get_body_refusal() -> Refusal {
    Refusal::bad_request("a request body is only read on POST; send GET parameters in the URL")
}

/// The one place an identity becomes a refusal: its tenants, or why there are none.
pub fn tenants_of(identity: Identity) -> Result<Tenants, Refusal> {
    match identity {
        Identity::Tenants(tenants) => Ok(tenants),
        identity => Err(refusal(identity)),
    }
}

fn refusal(identity: Identity) -> Refusal {
    match identity {
        Identity::Unauthorized(why) => Refusal::unauthorized(why),
        Identity::Forbidden(why) => Refusal::forbidden(why),
        Identity::Unavailable(why) => Refusal::unavailable(why),
        // Not a refusal: only reached through a caller's mistake.
        Identity::Tenants(_) => Refusal::unavailable("the identity was not judged"),
    }
}

/// What becomes of a request once its identity is known.
#[derive(Debug, Clone, PartialEq, Eq)]
// One per request, moved once: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// Answer with this error; the request goes no further.
    Refuse(Refusal),
    /// Answer 200 with this JSON body, without asking the backend.
    Answer(&'static str),
    /// Let the headers go with this `:path` (`None`: unchanged); a body that follows
    /// must pass [`on_body`] under `body` first, and the answer `response`.
    Forward {
        path: Option<String>,
        body: Option<BodyRule>,
        response: Option<ResponseFilter>,
    },
}

/// What a body still to come must satisfy, and how it is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRule {
    plan: Plan,
    url: UrlRewritten,
    content_type: Option<Vec<u8>>,
    tenants: Tenants,
}

/// The identity half: answer, refuse, or rewrite the URL.
pub fn on_identity(admitted: Admitted<'_>, identity: Identity, config: &Config) -> Verdict {
    let tenants = match admitted.caller {
        Caller::Tenants(ref tenants) => Rc::clone(tenants),
        Caller::Token(_) => match tenants_of(identity) {
            Ok(tenants) => tenants,
            Err(refusal) => return Verdict::Refuse(refusal),
        },
    };
    if admitted.streams_body() {
        // The tenant's `extra_label` in the URL; the body goes on with no rule.
        let path = with_tenant(&tenants, config, |tenant, _| {
            writes::path_for(&admitted.plan, tenant.values, &config.tenant_label)
        });
        return match path {
            Ok(path) => Verdict::Forward {
                path: Some(path),
                body: None,
                response: None,
            },
            Err(refusal) => Verdict::Refuse(refusal),
        };
    }
    let form_follows = admitted.body_follows && api::is_form(admitted.content_type.as_deref());
    let Admitted {
        plan: client_plan,
        content_type,
        body_follows,
        ..
    } = admitted;
    let url = with_tenant(&tenants, config, |tenant, rewriter| {
        // Metadata is answered for any caller with a tenant.
        if let Action::Answer(answer) = client_plan.action {
            return Ok(Err(answer));
        }
        // Rules and alerts: the engine is asked for the rules, with the caller's own
        // narrowing kept back to be applied to the answer.
        let (plan, response) = match client_plan.action {
            Action::FilterRules(view) => {
                let (upstream, selection) = rules::upstream_request(&client_plan, view)?;
                let response = ResponseFilter {
                    view,
                    selection,
                    tenant_label: config.tenant_label.clone(),
                    tenants: tenant.values.to_vec(),
                    // vmalert hands its rules to VictoriaMetrics, which reads MetricsQL
                    // whatever `dialect` the filter parses the clients' queries in.
                    dialect: config.backend.dialect(),
                    max_bytes: config.max_response_bytes,
                };
                (upstream, Some(response))
            }
            // Moved, not copied: a body still to come keeps it in its `BodyRule`.
            _ => (client_plan, None),
        };
        let mut url = api::rewrite_url(&plan, tenant, options(config), rewriter, form_follows)?;
        if response.is_some() && url.path.is_none() {
            // The engine's path and parameters differ from the client's even when the
            // rewrite left them alone.
            url.path = Some(plan.target());
        }
        Ok(Ok((plan, url, response)))
    });
    match url {
        Err(refusal) => Verdict::Refuse(refusal),
        Ok(Err(answer)) => Verdict::Answer(answer),
        Ok(Ok((plan, mut url, response))) if body_follows => Verdict::Forward {
            // The body's rule needs the rest of the URL's rewrite, not its path.
            path: url.path.take(),
            body: Some(BodyRule {
                plan,
                url,
                content_type: content_type.map(Cow::into_owned),
                tenants,
            }),
            response,
        },
        Ok(Ok((_, url, response))) => Verdict::Forward {
            path: url.path,
            body: None,
            response,
        },
    }
}

/// The body half, once the whole body is in: refused, or the new body (`None`: keep it).
pub fn on_body(rule: &BodyRule, body: &[u8], config: &Config) -> Result<Option<Vec<u8>>, Refusal> {
    // The filter refuses a larger body as it arrives; checked again so that this
    // function alone never forwards one.
    if body.len() > config.max_body_bytes {
        return Err(Refusal::too_large(config.max_body_bytes));
    }
    let content_type = rule.content_type.as_deref();
    let rewritten = with_tenant(&rule.tenants, config, |tenant, rewriter| {
        api::rewrite_body(&rule.plan, &rule.url, body, content_type, tenant, rewriter)
    })?;
    Ok(rewritten.0)
}

fn options(config: &Config) -> RewriteOptions {
    RewriteOptions {
        victoriametrics_extra_label: config.victoriametrics_extra_label,
    }
}

/// Runs `f` with the caller's tenant and the PromQL rewriter confining to it. First, so
/// that a caller without a usable tenant gets 403 on every endpoint.
fn with_tenant<R>(
    tenants: &Tenants,
    config: &Config,
    f: impl FnOnce(&Tenant<'_>, &dyn api::QueryRewriter) -> Result<R, Refusal>,
) -> Result<R, Refusal> {
    let tenancy = tenancy(&config.tenant_label, tenants, config.dialect)
        .map_err(|e| Refusal::forbidden(format!("unusable tenant claim: {e}")))?;
    let rewriter = Remembering {
        matcher: &tenancy.matcher,
        config,
    };
    f(&tenancy.tenant(), &rewriter)
}

/// What a caller's requests need of its tenants, built once: the matcher, its text in
/// the dialect, and the VictoriaMetrics parameter once a request asks for it.
#[derive(Debug)]
struct Tenancy {
    /// The tenants as the identity gave them (the matcher keeps them deduplicated).
    tenants: Tenants,
    dialect: Dialect,
    matcher: TenantMatcher,
    matcher_text: String,
    param: OnceCell<TenantParam>,
}

impl Tenancy {
    fn tenant(&self) -> Tenant<'_> {
        Tenant {
            label: self.matcher.label(),
            values: self.matcher.values(),
            matcher_text: &self.matcher_text,
            param: Some(&self.param),
        }
    }

    fn is_for(&self, label: &str, tenants: &Tenants, dialect: Dialect) -> bool {
        self.dialect == dialect
            && self.matcher.label() == label
            && (Rc::ptr_eq(&self.tenants, tenants) || self.tenants == *tenants)
    }
}

/// Callers whose tenancy each thread keeps. Behind Grafana, a worker serves several
/// users' requests in turn; one kept for the last caller only was rebuilt on nearly
/// every request as soon as two users took turns.
const TENANCIES: usize = 16;

thread_local! {
    /// The last [`TENANCIES`] callers' tenancies on this thread, the most recent first.
    static KEPT: RefCell<Vec<Rc<Tenancy>>> = const { RefCell::new(Vec::new()) };
}

/// The tenancy for `label`, `tenants` and `dialect`: one kept on this thread when it was
/// built from exactly the same ones (the tenants compared in full, in order, unless they
/// are the very list it was built from), else a new one. A refusal is not kept.
fn tenancy(
    label: &str,
    tenants: &Tenants,
    dialect: Dialect,
) -> Result<Rc<Tenancy>, crate::promql::inject::InvalidTenant> {
    let kept = KEPT.with(|kept| {
        let mut kept = kept.try_borrow_mut().ok()?;
        let at = kept
            .iter()
            .position(|t| t.is_for(label, tenants, dialect))?;
        let tenancy = kept.remove(at);
        kept.insert(0, Rc::clone(&tenancy));
        Some(tenancy)
    });
    if let Some(tenancy) = kept {
        return Ok(tenancy);
    }
    let matcher = TenantMatcher::new(label, tenants)?;
    let tenancy = Rc::new(Tenancy {
        tenants: Rc::clone(tenants),
        dialect,
        matcher_text: matcher.matcher_text_for(dialect).into_owned(),
        matcher,
        param: OnceCell::new(),
    });
    KEPT.with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            kept.truncate(TENANCIES - 1);
            kept.insert(0, Rc::clone(&tenancy));
        }
    });
    Ok(tenancy)
}

/// The engine behind this worker's memo of rewrites.
struct Remembering<'a> {
    matcher: &'a TenantMatcher,
    config: &'a Config,
}

impl Remembering<'_> {
    /// The memo's key for `query`, written as `form` says.
    fn key<'k>(&'k self, query: &'k str, form: QueryForm) -> MemoKey<'k> {
        MemoKey {
            query,
            form,
            label: self.matcher.label(),
            values: self.matcher.values(),
            policy: self.config.on_conflict,
            dialect: self.config.dialect,
        }
    }

    /// The engine itself, for a decoded query.
    fn engine(&self, query: &str) -> Result<String, QueryRejection> {
        let config = self.config;
        rewrite(query, self.matcher, config.on_conflict, config.dialect).map_err(|e| match e {
            RewriteError::Parse(p) => QueryRejection::BadQuery(p.to_string()),
            RewriteError::Conflict(m) => QueryRejection::Forbidden(m),
        })
    }
}

impl api::QueryRewriter for Remembering<'_> {
    fn rewrite(&self, query: &str) -> Result<RewrittenQuery, QueryRejection> {
        memo::memoized(&self.key(query, QueryForm::Decoded), || self.engine(query))
    }

    fn takes_escaped(&self) -> bool {
        true
    }

    /// A repeated query is found by its raw text, not decoded again: the memo keeps an
    /// escaped query's answer only once that text decoded.
    fn rewrite_escaped(
        &self,
        raw: &str,
        offset: usize,
    ) -> Result<Result<RewrittenQuery, QueryRejection>, FormError> {
        let key = self.key(raw, QueryForm::Escaped);
        memo::memoized_escaped(&key, offset, |query| self.engine(query))
    }
}

/// What becomes of a complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this error; the request goes no further.
    Refuse(Refusal),
    /// Answer 200 with this JSON body, without asking the backend.
    Answer(&'static str),
    /// Let the request go, with these changes to its `:path` and body.
    Forward(Forwarded),
}

/// The changes to a forwarded request. `None` means leave it alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded {
    /// New `:path` (path and query string).
    pub path: Option<String>,
    /// New body; the filter also removes `Content-Length`.
    pub body: Option<Vec<u8>>,
    /// How to filter the backend's answer before the client sees it, if it must be.
    pub response: Option<ResponseFilter>,
}

/// One complete request: the headers, the body (`None` when the headers ended the
/// stream), and what the identity lookup said about the bearer token (used only when
/// the credential is a token to look up).
pub fn decide(
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
    looked_up: Identity,
    config: &Config,
) -> Decision {
    let admitted = match on_headers(head, config) {
        Ok(admitted) => admitted,
        Err(refusal) => return Decision::Refuse(refusal),
    };
    match on_identity(admitted, looked_up, config) {
        Verdict::Refuse(refusal) => Decision::Refuse(refusal),
        Verdict::Answer(answer) => Decision::Answer(answer),
        Verdict::Forward {
            path,
            body: rule,
            response,
        } => {
            let new_body = match (rule, body) {
                (Some(rule), Some(body)) => match on_body(&rule, body, config) {
                    Ok(new_body) => new_body,
                    Err(refusal) => return Decision::Refuse(refusal),
                },
                _ => None,
            };
            Decision::Forward(Forwarded {
                path,
                body: new_body,
                response,
            })
        }
    }
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

    fn tenants(values: &[&str]) -> Identity {
        Identity::Tenants(values.iter().map(|v| v.to_string()).collect())
    }

    fn forwarded(d: Decision) -> Forwarded {
        match d {
            Decision::Forward(r) => r,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    #[test]
    fn a_query_is_forwarded_rewritten() {
        let c = config(r#","victoriametrics_extra_label":false"#);
        let d = decide(&get("/api/v1/query?query=up"), None, tenants(&["7"]), &c);
        let Decision::Forward(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=up%7Bclient_id%3D%227%22%7D")
        );
        assert_eq!(r.body, None);
    }

    #[test]
    fn a_kept_tenancy_is_only_reused_for_the_same_label_values_and_dialect() {
        let s = |v: &[&str]| -> Tenants { v.iter().map(|v| v.to_string()).collect() };
        let (promql, metricsql) = (Dialect::Promql, Dialect::Metricsql);
        let callers = [
            ("client_id", s(&["7"]), promql),
            ("client_id", s(&["7"]), promql),
            ("client_id", s(&["8"]), promql),
            ("tenant", s(&["8"]), promql),
            ("client_id", s(&["7", "8"]), promql),
            ("client_id", s(&["8", "7"]), promql),
            ("client_id", s(&["7", "8"]), promql),
            ("client_id", s(&["7"]), promql),
            ("client.id", s(&["7"]), promql),
            ("client.id", s(&["7"]), metricsql),
        ];
        // Twice over, so that the second round is answered from what was kept.
        for (label, tenants, dialect) in callers.iter().chain(&callers) {
            let got = tenancy(label, tenants, *dialect).unwrap();
            let built = TenantMatcher::new(label, tenants).unwrap();
            assert_eq!(got.matcher, built);
            assert_eq!(got.matcher_text, built.matcher_text_for(*dialect));
            assert_eq!(*got.tenants, **tenants);
        }
        // A refusal is not kept, and does not disturb what is.
        assert!(tenancy("client_id", &s(&[]), promql).is_err());
        assert_eq!(
            tenancy("client_id", &s(&["9"]), promql).unwrap().matcher,
            TenantMatcher::new("client_id", &["9"]).unwrap()
        );
    }

    #[test]
    fn a_thread_keeps_its_last_callers_tenancies_and_their_parameter() {
        let callers: Vec<Tenants> = (0..TENANCIES).map(|n| vec![n.to_string()].into()).collect();
        let first: Vec<_> = callers
            .iter()
            .map(|t| tenancy("client_id", t, Dialect::Promql).unwrap())
            .collect();
        // Users taking turns: each finds its own, built once, with its parameter.
        for _ in 0..2 {
            for (tenants, kept) in callers.iter().zip(&first) {
                let again = tenancy("client_id", tenants, Dialect::Promql).unwrap();
                assert!(Rc::ptr_eq(&again, kept));
                let tenant = again.tenant();
                let param = tenant
                    .param
                    .unwrap()
                    .get_or_init(|| TenantParam::new(&tenant));
                assert_eq!(*param, TenantParam::new(&tenant));
            }
        }
        // One more caller pushes out the least recent.
        let newcomer: Tenants = vec!["new".to_string()].into();
        tenancy("client_id", &newcomer, Dialect::Promql).unwrap();
        let oldest = tenancy("client_id", &callers[0], Dialect::Promql).unwrap();
        assert!(!Rc::ptr_eq(&oldest, &first[0]));
        let kept = tenancy("client_id", &callers[TENANCIES - 1], Dialect::Promql).unwrap();
        assert!(Rc::ptr_eq(&kept, &first[TENANCIES - 1]));
    }

    #[test]
    fn a_remembered_rewrite_goes_only_to_the_same_tenants() {
        // The same query, in turn for three callers and three configurations, twice
        // over: the second round is answered from the worker's memo.
        let plain = config(r#","victoriametrics_extra_label":false"#);
        let other_label = Config {
            tenant_label: "tenant".into(),
            ..plain.clone()
        };
        let reject = Config {
            on_conflict: crate::ConflictPolicy::Reject,
            ..plain.clone()
        };
        let query = "/api/v1/query?query=sum(rate(x%7Bclient_id%3D%227%22%7D%5B5m%5D))";
        let cases = [
            (
                &plain,
                &["7"][..],
                "%7Bclient_id%3D%227%22%2Cclient_id%3D%227%22%7D",
            ),
            (
                &plain,
                &["8"][..],
                "%7Bclient_id%3D%227%22%2Cclient_id%3D%228%22%7D",
            ),
            (&plain, &["7", "8"][..], "client_id%3D~%227%7C8%22"),
            (
                &other_label,
                &["7"][..],
                "%7Bclient_id%3D%227%22%2Ctenant%3D%227%22%7D",
            ),
        ];
        for _ in 0..2 {
            for (config, values, expected) in cases {
                let path = forwarded(decide(&get(query), None, tenants(values), config)).path;
                let path = path.unwrap();
                assert!(path.contains(expected), "{values:?}: {path}");
            }
            let refused = decide(&get(query), None, tenants(&["8"]), &reject);
            assert!(matches!(refused, Decision::Refuse(r) if r.status == 403));
        }
    }

    /// `method` `path` (with a form `body`, if any) rewritten for tenant 7: through the
    /// worker's memo twice, the second time from it, and by the engine with every
    /// parameter decoded as it is read, as before the memo took escaped text. The three
    /// must be the same, refusals and their messages included.
    fn rewritten_every_way(
        method: &str,
        path: &str,
        body: Option<&str>,
        config: &Config,
    ) -> Result<api::Rewritten, Refusal> {
        let plan = api::plan_request(
            method.as_bytes(),
            path.as_bytes(),
            config.backend,
            config.writes,
        )?;
        let tenancy = tenancy(
            &config.tenant_label,
            &vec!["7".to_string()].into(),
            config.dialect,
        )
        .unwrap();
        let remembering = Remembering {
            matcher: &tenancy.matcher,
            config,
        };
        let eager = |query: &str| remembering.engine(query);
        let tenant = tenancy.tenant();
        let content_type = body.map(|_| &b"application/x-www-form-urlencoded"[..]);
        let run = |rewriter: &dyn api::QueryRewriter| {
            let body = body.map(str::as_bytes);
            api::rewrite_request(
                &plan,
                body,
                content_type,
                &tenant,
                options(config),
                rewriter,
            )
        };
        let reference = run(&eager);
        for round in 0..2 {
            assert_eq!(
                run(&remembering),
                reference,
                "{method} {path} {body:?}, round {round}"
            );
        }
        reference
    }

    #[test]
    fn a_bad_escape_is_refused_for_the_first_one_whatever_the_memo_holds() {
        let c = config(r#","victoriametrics_extra_label":false"#);
        let reject = Config {
            on_conflict: crate::ConflictPolicy::Reject,
            ..c.clone()
        };
        let message = |r: Result<api::Rewritten, Refusal>| {
            let refusal = r.unwrap_err();
            (refusal.status, refusal.message)
        };
        let bad = |at: usize| {
            (
                400,
                format!("invalid query string: invalid percent-escape at byte {at}"),
            )
        };
        // A bad query value and a later bad pair: the query's.
        let path = "/api/v1/query?query=%zz&x=%";
        assert_eq!(message(rewritten_every_way("GET", path, None, &c)), bad(6));
        // A query the engine refuses (remembered after the first round), then a bad one:
        // the bad escape, as when everything was decoded before the engine ran.
        let path = "/api/v1/query?query=up%21&query=%zz";
        assert_eq!(message(rewritten_every_way("GET", path, None, &c)), bad(18));
        let path = "/api/v1/query?query=up%7Bclient_id%3D%228%22%7D&query=%ff";
        assert_eq!(
            message(rewritten_every_way("GET", path, None, &reject)),
            (
                400,
                "invalid query string: parameter at byte 40 is not valid UTF-8 once decoded".into()
            )
        );
        let path = "/api/v1/series?match%5B%5D=up%21&match[]=x&match=%zz";
        assert_eq!(message(rewritten_every_way("GET", path, None, &c)), bad(34));
        // The engine's own refusal when every escape is good.
        let path = "/api/v1/query?query=up%21&query=up";
        assert_eq!(message(rewritten_every_way("GET", path, None, &c)).0, 400);
        // The same in a form body.
        let body = |body| rewritten_every_way("POST", "/api/v1/query", Some(body), &c);
        let bad_body = |at: usize| {
            (
                400,
                format!("invalid form body: invalid percent-escape at byte {at}"),
            )
        };
        assert_eq!(message(body("query=%zz&x=%")), bad_body(6));
        assert_eq!(message(body("query=up%21&query=%zz")), bad_body(18));
        assert_eq!(message(body("query=up%21&time=1&x=%4")), bad_body(21));
        // A good URL does not hide a bad body, nor the other way round.
        let url = "/api/v1/query?query=up%21";
        assert_eq!(
            message(rewritten_every_way("POST", url, Some("query=%zz"), &c)).1,
            "invalid parameter \"query\": unexpected end of input after '!' at 1:3"
        );
        let url = "/api/v1/query?query=%zz";
        assert_eq!(
            message(rewritten_every_way("POST", url, Some("query=up%21"), &c)),
            bad(6)
        );
        // And a good query still goes out rewritten, its client text kept where the
        // rewrite changed nothing.
        let path = "/api/v1/query?query=up%7Bclient_id%3D%227%22%7D&time=1";
        let replace = Config {
            on_conflict: crate::ConflictPolicy::Replace,
            ..c.clone()
        };
        let kept = rewritten_every_way("GET", path, None, &replace).unwrap();
        assert_eq!(kept.path, None);
        let path = "/api/v1/query?query=sum+by+(a)+(x%7Bb%3D%22c%22%7D)";
        let changed = rewritten_every_way("GET", path, None, &c).unwrap();
        assert_eq!(
            changed.path.as_deref(),
            Some("/api/v1/query?query=sum%20by%20%28a%29%20%28x%7Bb%3D%22c%22%2Cclient_id%3D%227%22%7D%29")
        );
    }

    #[test]
    fn an_escaped_query_never_gets_the_answer_of_its_decoded_spelling() {
        // A raw query too long for the memo is remembered by its decoded text; a short
        // raw query spelling that same text is another query (`+` is a space), and must
        // not be handed its answer.
        let c = config(r#","victoriametrics_extra_label":false"#);
        let padding = memo::MAX_QUERY_BYTES / 2;
        let long = format!("/api/v1/query?query=a%2Bb{}", "%20".repeat(padding));
        let spelled = format!("/api/v1/query?query=a+b{}", " ".repeat(padding));
        for _ in 0..2 {
            let long = forwarded(decide(&get(&long), None, tenants(&["7"]), &c)).path;
            assert!(long
                .unwrap()
                .starts_with("/api/v1/query?query=a%7Bclient_id"));
            let refused = decide(&get(&spelled), None, tenants(&["7"]), &c);
            assert!(
                matches!(refused, Decision::Refuse(Refusal { status: 400, .. })),
                "{refused:?}"
            );
        }
    }

    /// Query strings and form bodies a hostile client would send to the rewritten
    /// parameters: pairs named as the filter reads them or not, whose values are
    /// mostly PromQL, escaped or not, with now and then a bad escape, a `;` or a
    /// separator.
    fn hostile_params() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        use proptest::sample::select;
        let token = prop_oneof![
            12 => select(vec![
                "up", "x", "rate(", ")", "(", "%28", "%29", "%7B", "%7D", "{", "}", "a%3D%22b%22",
                "a=\"b\"", "+", "%20", "%5B5m%5D", "[5m]", "sum", "+by+", "%2C", "client_id",
                "%3D~", "%22", "\"", "7", "%2B", "%2b", "+or+", "%e2%82%ac",
            ]),
            1 => select(vec!["%zz", "%", "%f", "%ff", "%c3", ";", "&", "=", "%e2%82"]),
        ];
        let name = select(vec![
            "query",
            "match[]",
            "match%5B%5D",
            "match",
            "%71uery",
            "time",
            "x",
            "",
        ]);
        let pair = (name, proptest::collection::vec(token, 0..8))
            .prop_map(|(name, value)| format!("{name}={}", value.concat()));
        proptest::collection::vec(pair, 0..5).prop_map(|pairs| pairs.join("&"))
    }

    proptest::proptest! {
        #[test]
        fn the_memo_rewrites_and_refuses_as_the_engine_alone(
            url in hostile_params(),
            body in proptest::option::of(hostile_params()),
            endpoint in proptest::sample::select(vec!["/api/v1/query", "/api/v1/series"]),
        ) {
            let c = config("");
            let method = if body.is_some() { "POST" } else { "GET" };
            rewritten_every_way(method, &format!("{endpoint}?{url}"), body.as_deref(), &c).ok();
        }
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
        let lookup_failed = Identity::Unavailable("down".into());
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

    fn write(path: &str) -> RequestHead<'_> {
        RequestHead {
            method: b"POST",
            path: path.as_bytes(),
            content_type: Some(b"application/x-protobuf"),
            content_encoding: Some(b"snappy"),
            content_length: Some(b"99999999"),
            credential: Some(b"Bearer abc"),
            end_of_stream: false,
        }
    }

    #[test]
    fn writes_are_decided_at_the_headers_and_keep_their_body() {
        let denied = config("");
        assert!(matches!(
            decide(&write("/api/v1/write"), None, tenants(&["7"]), &denied),
            Decision::Refuse(Refusal { status: 403, .. })
        ));
        let c = config(r#","writes":"victoriametrics","max_body_bytes":10"#);
        // No body check applies: any encoding, type and length stream through.
        let admitted = on_headers(&write("/api/v1/write?extra_label=client_id=8"), &c).unwrap();
        assert_eq!(admitted.plan.action, Action::Write);
        let body = vec![0u8; 100];
        let r = forwarded(decide(
            &write("/api/v1/write?extra_label=client_id=8"),
            Some(&body),
            tenants(&["7"]),
            &c,
        ));
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/write?extra_label=client_id%3D7")
        );
        assert_eq!(r.body, None, "a write body is never replaced");
        assert_eq!(r.response, None);
        let status =
            |head: &RequestHead<'_>, who: &[&str]| match decide(head, None, tenants(who), &c) {
                Decision::Refuse(refusal) => refusal.status,
                _ => 200,
            };
        // Several tenants: nobody can say which one the data belongs to.
        assert_eq!(status(&write("/api/v1/write"), &["7", "8"]), 403);
        assert_eq!(status(&write("/api/v1/write"), &[""]), 403);
        // Identity before anything else about the write.
        let anonymous = RequestHead {
            credential: None,
            ..write("/api/v1/write")
        };
        assert_eq!(status(&anonymous, &["7"]), 401);
    }

    #[test]
    fn a_jwt_writes_to_the_tenant_its_write_claim_names() {
        let c = Config::parse(
            br#"{"tenant_label":"client_id","writes":"victoriametrics","identity":{"source":"jwt_payload_header","claim":"client_id","write_tenant_claim":"write_to"}}"#,
        )
        .unwrap();
        let unused = || Identity::Unavailable("unused".into());
        let decide_with = |claims: &str, path: &str| {
            use base64::Engine as _;
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            let head = if path.contains("import") {
                write(path)
            } else {
                get(path)
            };
            let head = RequestHead {
                credential: Some(payload.as_bytes()),
                ..head
            };
            decide(&head, None, unused(), &c)
        };
        let both = r#"{"client_id":["7","8"],"write_to":"8"}"#;
        let r = forwarded(decide_with(both, "/api/v1/import"));
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/import?extra_label=client_id%3D8")
        );
        // Reads keep every tenant of the token.
        let r = forwarded(decide_with(both, "/api/v1/series"));
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/series?match%5B%5D=%7Bclient_id%3D~%227%7C8%22%7D&extra_filters%5B%5D=%7Bclient_id%3D~%227%7C8%22%7D")
        );
        for (claims, status) in [
            (r#"{"client_id":["7","8"]}"#, 403),
            (r#"{"client_id":["7","8"],"write_to":"9"}"#, 403),
            (r#"{"client_id":"7","write_to":"8"}"#, 403),
        ] {
            match decide_with(claims, "/api/v1/import") {
                Decision::Refuse(r) => assert_eq!(r.status, status, "{claims}"),
                other => panic!("{claims}: {other:?}"),
            }
        }
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
        let lookup_failed = Identity::Unavailable("unused".into());
        let Decision::Forward(r) = decide(&head, None, lookup_failed, &c) else {
            panic!()
        };
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=up%7Bclient_id%3D%229%22%7D")
        );
    }
}
