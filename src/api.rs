//! The Prometheus HTTP API policy: which requests may pass, and how they are rewritten.
//!
//! This is an allowlist. [`plan_request`] maps a method and `:path` to a [`Plan`] or a
//! [`Refusal`]; [`rewrite_request`] then confines every selector-carrying parameter, in
//! the URL and in a form body, to the caller's tenant. The PromQL rewrite itself comes
//! in as a [`QueryRewriter`], so this module stays testable without the engine.
//!
//! Paths are matched after percent-decoding, as the backends' routers do, and any path
//! a router might normalise differently from us (`..`, `//`, encoded `/`, `;`, a
//! fragment) is refused outright rather than guessed at.

use crate::form::{FormError, Params};
use serde_json::json;

/// Parameters the client may not set: VictoriaMetrics would apply them as filters, and
/// only the filter decides the tenant.
pub const STRIPPED_PARAMS: &[&str] = &["extra_label", "extra_filters", "extra_filters[]"];
/// Headers the client may not set: VictoriaMetrics cluster reads the tenant from them.
pub const STRIPPED_HEADERS: &[&str] = &["accountid", "projectid"];

/// Answer to `/api/v1/metadata`: metadata cannot be filtered by tenant.
pub const METADATA_ANSWER: &str = r#"{"status":"success","data":{}}"#;
/// Answer to `/api/v1/rules`.
pub const RULES_ANSWER: &str = r#"{"status":"success","data":{"groups":[]}}"#;
/// Answer to `/api/v1/alerts`.
pub const ALERTS_ANSWER: &str = r#"{"status":"success","data":{"alerts":[]}}"#;

/// The Prometheus `errorType` of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Unauthorized,
    Forbidden,
    Unavailable,
    Timeout,
}

impl ErrorType {
    /// The wire name, as Prometheus spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Unauthorized => "unauthorized",
            ErrorType::Forbidden => "forbidden",
            ErrorType::Unavailable => "unavailable",
            ErrorType::Timeout => "timeout",
        }
    }
}

/// A request the filter answers itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Prometheus `errorType`.
    pub error_type: ErrorType,
    /// Human-readable reason; never contains a token.
    pub message: String,
    /// Value of the `Allow` header, for 405.
    pub allow: Option<&'static str>,
}

impl Refusal {
    fn new(status: u16, error_type: ErrorType, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error_type,
            message: message.into(),
            allow: None,
        }
    }
    /// 400 `bad_data`.
    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(400, ErrorType::BadData, message)
    }
    /// 401 `unauthorized`, answered with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Refusal {
        Refusal::new(401, ErrorType::Unauthorized, message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal::new(403, ErrorType::Forbidden, message)
    }
    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(503, ErrorType::Unavailable, message)
    }
    /// 408 `timeout`: the request itself did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> Refusal {
        Refusal::new(408, ErrorType::Timeout, message)
    }
    /// 405, with the methods the path does allow.
    pub fn method_not_allowed(allow: &'static str) -> Refusal {
        Refusal {
            allow: Some(allow),
            ..Refusal::new(
                405,
                ErrorType::BadData,
                format!("method not allowed, use {allow}"),
            )
        }
    }
    /// 413.
    pub fn too_large(max_body_bytes: usize) -> Refusal {
        Refusal::new(
            413,
            ErrorType::BadData,
            format!("request body larger than {max_body_bytes} bytes"),
        )
    }
    /// 415.
    pub fn unsupported_media_type() -> Refusal {
        Refusal::new(
            415,
            ErrorType::BadData,
            "request body must be application/x-www-form-urlencoded",
        )
    }

    /// The JSON body, in Prometheus' error shape.
    pub fn body(&self) -> Vec<u8> {
        json!({
            "status": "error",
            "errorType": self.error_type.as_str(),
            "error": self.message,
        })
        .to_string()
        .into_bytes()
    }

    /// The response headers besides `:status`.
    pub fn headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut headers = vec![("content-type", "application/json")];
        if self.status == 401 {
            headers.push(("www-authenticate", "Bearer"));
        }
        if let Some(allow) = self.allow {
            headers.push(("allow", allow));
        }
        headers
    }
}

/// What the filter does with an allowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Rewrite every `query` parameter.
    RewriteQuery,
    /// Rewrite every `match[]` / `match`, adding one when there is none.
    RewriteMatch,
    /// Answer with this JSON body, without asking the backend.
    Answer(&'static str),
    /// Forward as is (after stripping).
    PassThrough,
}

/// An allowed request: what to do, and its raw path and query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// The path as the client sent it (before `?`), forwarded unchanged.
    pub raw_path: String,
    /// The query string as the client sent it (after `?`), possibly empty.
    pub raw_query: String,
    /// Whether the backend reads a form body: only for POST. Go's `Request.ParseForm`
    /// ignores the body of a GET, so parameters there must not count as rewritten.
    pub reads_body: bool,
}

const GET_POST: &str = "GET, POST";
const GET_ONLY: &str = "GET";

/// The endpoint table: decoded path (without `/prometheus`) → action and methods.
fn endpoint(path: &str) -> Option<(Action, &'static str)> {
    let action = match path {
        "/api/v1/query" | "/api/v1/query_range" | "/api/v1/query_exemplars" => Action::RewriteQuery,
        "/api/v1/series"
        | "/api/v1/labels"
        | "/federate"
        | "/api/v1/export"
        | "/api/v1/status/tsdb" => Action::RewriteMatch,
        "/api/v1/metadata" => Action::Answer(METADATA_ANSWER),
        "/api/v1/rules" => Action::Answer(RULES_ANSWER),
        "/api/v1/alerts" => Action::Answer(ALERTS_ANSWER),
        "/api/v1/status/buildinfo" => return Some((Action::PassThrough, GET_ONLY)),
        _ => {
            let name = path
                .strip_prefix("/api/v1/label/")?
                .strip_suffix("/values")?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            Action::RewriteMatch
        }
    };
    Some((action, GET_POST))
}

/// Decides from the method and `:path` whether the request is allowed, and how.
pub fn plan_request(method: &[u8], path_and_query: &[u8]) -> Result<Plan, Refusal> {
    let Ok(target) = std::str::from_utf8(path_and_query) else {
        return Err(Refusal::bad_request("request path is not valid UTF-8"));
    };
    if target.contains('#') {
        return Err(Refusal::bad_request(
            "request path must not contain a fragment",
        ));
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = canonical_path(raw_path)?;
    let unprefixed = match path.strip_prefix("/prometheus") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path.as_str(),
    };
    let Some((action, allow)) = endpoint(unprefixed) else {
        return Err(Refusal::forbidden(format!("path {path:?} is not allowed")));
    };
    let method_allowed = match method {
        b"GET" => true,
        b"POST" => allow == GET_POST,
        _ => false,
    };
    if !method_allowed {
        return Err(Refusal::method_not_allowed(allow));
    }
    Ok(Plan {
        action,
        raw_path: raw_path.to_string(),
        raw_query: raw_query.to_string(),
        reads_body: method == b"POST",
    })
}

/// Percent-decodes a path, refusing anything a router could read two ways.
fn canonical_path(raw: &str) -> Result<String, Refusal> {
    let bad = |why: &str| {
        Err(Refusal::bad_request(format!(
            "non-canonical request path: {why}"
        )))
    };
    if !raw.starts_with('/') {
        return bad("must start with `/`");
    }
    if raw.contains("//") {
        return bad("`//`");
    }
    if raw.contains(';') {
        return bad("`;`");
    }
    if raw.contains('\\') {
        return bad("`\\`");
    }
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return bad("percent-encoded `/` or `\\`");
    }
    // `+` is not a space in a path, so decode with the form codec only after checking.
    if raw.contains('+') {
        return bad("`+`");
    }
    let path = match crate::form::decode(raw, 0) {
        Ok(path) => path,
        Err(FormError::NotUtf8 { .. }) => return bad("not UTF-8 once decoded"),
        Err(_) => return bad("invalid percent-escape"),
    };
    if path.chars().any(char::is_control) {
        return bad("control character");
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return bad("`.` or `..` segment");
    }
    Ok(path)
}

/// Early checks from the request headers, before any body is read: refuse what is
/// certainly too large or certainly not a form.
pub fn check_body_headers(
    content_type: Option<&[u8]>,
    content_length: Option<&[u8]>,
    max_body_bytes: usize,
) -> Result<(), Refusal> {
    let length = content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = length {
        if length > max_body_bytes as u64 {
            return Err(Refusal::too_large(max_body_bytes));
        }
        if length > 0 && !is_form(content_type) {
            return Err(Refusal::unsupported_media_type());
        }
    }
    Ok(())
}

/// Refuses a compressed request body: the filter could not read its parameters, and
/// a backend that inflates it would see parameters the filter never rewrote.
pub fn check_content_encoding(content_encoding: Option<&[u8]>) -> Result<(), Refusal> {
    match content_encoding {
        None => Ok(()),
        Some(v)
            if v.trim_ascii().is_empty() || v.trim_ascii().eq_ignore_ascii_case(b"identity") =>
        {
            Ok(())
        }
        Some(_) => Err(Refusal::new(
            415,
            ErrorType::BadData,
            "compressed request bodies are not supported",
        )),
    }
}

/// True for `application/x-www-form-urlencoded`, with or without parameters.
pub fn is_form(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// Why the engine refused a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRejection {
    /// It does not parse: 400 `bad_data`, with the parser's message.
    BadQuery(String),
    /// It asks for another tenant (policy `reject`): 403.
    Forbidden(String),
}

/// Confines one query or selector to the tenant.
pub trait QueryRewriter {
    fn rewrite(&self, query: &str) -> Result<String, QueryRejection>;
}

impl<F: Fn(&str) -> Result<String, QueryRejection>> QueryRewriter for F {
    fn rewrite(&self, query: &str) -> Result<String, QueryRejection> {
        self(query)
    }
}

/// The caller's tenant, as the rewrite needs it.
#[derive(Debug, Clone, Copy)]
pub struct Tenant<'a> {
    /// The tenant label, e.g. `client_id`.
    pub label: &'a str,
    /// Its values (at least one).
    pub values: &'a [String],
    /// The matcher as PromQL, e.g. `client_id="1999"` or `client_id=~"1|2"`.
    pub matcher_text: &'a str,
}

/// Rewrite options from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Also add `extra_label` / `extra_filters[]` for VictoriaMetrics.
    pub victoriametrics_extra_label: bool,
}

/// What to change in the request. `None` means leave it alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewritten {
    /// New `:path` (path and query string).
    pub path: Option<String>,
    /// New body; the filter also removes `Content-Length`.
    pub body: Option<Vec<u8>>,
    /// How many parameters went through the rewriter.
    pub rewritten_params: usize,
}

/// What the URL half left for the body half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewritten {
    /// New `:path` (path and query string), `None` to leave it alone.
    pub path: Option<String>,
    /// How many parameters of the URL went through the rewriter.
    pub rewritten_params: usize,
    /// The endpoint's own selector was not settled in the URL because the backend also
    /// reads a form body still to come: the body half checks or adds it.
    pub settled_by_body: bool,
}

/// The URL half of [`rewrite_request`], decided at the headers, before any body: the
/// headers leave Envoy before the body, so the `:path` cannot wait for it.
///
/// `form_follows` says that a body the backend reads as a form is still to come (a POST
/// with a form `Content-Type` whose headers did not end the stream). Then a `query` or
/// `match[]` may still come in it: a missing `query` is refused, and a missing `match[]`
/// added, by [`rewrite_body`] instead of here.
pub fn rewrite_url(
    plan: &Plan,
    tenant: &Tenant<'_>,
    options: RewriteOptions,
    rewriter: &dyn QueryRewriter,
    form_follows: bool,
) -> Result<UrlRewritten, Refusal> {
    let mut url = Params::parse(&plan.raw_query)
        .map_err(|e| Refusal::bad_request(format!("invalid query string: {e}")))?;
    url.remove_all(STRIPPED_PARAMS);
    let rewritten_params = rewrite_params(&mut url, targets(plan.action), rewriter)?;
    let settled_by_body = rewritten_params == 0 && form_follows && plan.reads_body;
    if rewritten_params == 0 && !settled_by_body {
        add_missing_selector(plan.action, &mut url, tenant)?;
    }
    if options.victoriametrics_extra_label
        && matches!(plan.action, Action::RewriteQuery | Action::RewriteMatch)
    {
        match tenant.values {
            [one] => url.push("extra_label", &format!("{}={one}", tenant.label)),
            _ => url.push("extra_filters[]", &format!("{{{}}}", tenant.matcher_text)),
        }
    }
    let path = url.is_changed().then(|| {
        let query = url.encode();
        if query.is_empty() {
            plan.raw_path.clone()
        } else {
            format!("{}?{query}", plan.raw_path)
        }
    });
    Ok(UrlRewritten {
        path,
        rewritten_params,
        settled_by_body,
    })
}

/// The body half of [`rewrite_request`], once the whole body is in: refuses a body the
/// backend would not read as we do, rewrites a form, and settles what the URL half left
/// to it. Returns the new body (`None`: leave it alone) and how many of its parameters
/// went through the rewriter.
pub fn rewrite_body(
    plan: &Plan,
    url: &UrlRewritten,
    body: &[u8],
    content_type: Option<&[u8]>,
    tenant: &Tenant<'_>,
    rewriter: &dyn QueryRewriter,
) -> Result<(Option<Vec<u8>>, usize), Refusal> {
    let mut form = if body.is_empty() {
        Params::parse("").map_err(|e| Refusal::bad_request(format!("invalid form body: {e}")))?
    } else {
        // The backend would ignore it: a `match[]` found there would stop the filter
        // from adding the tenant's own, and a label or series request without one
        // answers for every tenant.
        if !plan.reads_body {
            return Err(Refusal::bad_request(
                "a request body is only read on POST; send GET parameters in the URL",
            ));
        }
        if !is_form(content_type) {
            return Err(Refusal::unsupported_media_type());
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| Refusal::bad_request("invalid form body: not valid UTF-8"))?;
        Params::parse(text).map_err(|e| Refusal::bad_request(format!("invalid form body: {e}")))?
    };
    form.remove_all(STRIPPED_PARAMS);
    let rewritten_params = rewrite_params(&mut form, targets(plan.action), rewriter)?;
    if url.settled_by_body && rewritten_params == 0 {
        add_missing_selector(plan.action, &mut form, tenant)?;
    }
    let body = form.is_changed().then(|| form.encode().into_bytes());
    Ok((body, rewritten_params))
}

/// Rewrites a planned request for `tenant`. `body` is the complete request body, if
/// any; `content_type` its `Content-Type`. The URL half and the body half, as the
/// filter runs them on either side of the body's arrival.
pub fn rewrite_request(
    plan: &Plan,
    body: Option<&[u8]>,
    content_type: Option<&[u8]>,
    tenant: &Tenant<'_>,
    options: RewriteOptions,
    rewriter: &dyn QueryRewriter,
) -> Result<Rewritten, Refusal> {
    let form_follows = body.is_some() && is_form(content_type);
    let url = rewrite_url(plan, tenant, options, rewriter, form_follows)?;
    let (body, body_params) = match body {
        Some(body) => rewrite_body(plan, &url, body, content_type, tenant, rewriter)?,
        None => (None, 0),
    };
    Ok(Rewritten {
        path: url.path,
        body,
        rewritten_params: url.rewritten_params + body_params,
    })
}

/// The parameters an action confines.
fn targets(action: Action) -> &'static [&'static str] {
    match action {
        Action::RewriteQuery => &["query"],
        Action::RewriteMatch => &["match[]", "match"],
        Action::PassThrough | Action::Answer(_) => &[],
    }
}

/// When no parameter was confined: a query endpoint without `query` is refused, and a
/// selector endpoint gets the tenant's own `match[]`, or it would answer for everyone.
fn add_missing_selector(
    action: Action,
    params: &mut Params,
    tenant: &Tenant<'_>,
) -> Result<(), Refusal> {
    match action {
        Action::RewriteQuery => Err(Refusal::bad_request("missing query parameter \"query\"")),
        Action::RewriteMatch => {
            params.push("match[]", &format!("{{{}}}", tenant.matcher_text));
            Ok(())
        }
        Action::PassThrough | Action::Answer(_) => Ok(()),
    }
}

fn rewrite_params(
    params: &mut Params,
    targets: &[&str],
    rewriter: &dyn QueryRewriter,
) -> Result<usize, Refusal> {
    let mut count = 0;
    for index in 0..params.pairs().len() {
        let pair = &params.pairs()[index];
        if !targets.contains(&pair.name()) {
            continue;
        }
        let name = pair.name().to_string();
        let new_value = rewriter
            .rewrite(pair.value())
            .map_err(|rejection| match rejection {
                QueryRejection::BadQuery(why) => {
                    Refusal::bad_request(format!("invalid parameter {name:?}: {why}"))
                }
                QueryRejection::Forbidden(why) => Refusal::forbidden(why),
            })?;
        params.set_value(index, new_value);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(method: &str, path: &str) -> Result<Plan, Refusal> {
        plan_request(method.as_bytes(), path.as_bytes())
    }

    fn status(method: &str, path: &str) -> u16 {
        match plan(method, path) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    /// A stand-in for the engine: tags each selector-ish word, refuses `!`.
    fn fake(query: &str) -> Result<String, QueryRejection> {
        if query.is_empty() || query.contains('!') {
            return Err(QueryRejection::BadQuery(format!("cannot parse {query:?}")));
        }
        if query.contains("other") {
            return Err(QueryRejection::Forbidden("other tenant".into()));
        }
        Ok(format!("<{query}>"))
    }

    fn tenant<'a>(values: &'a [String], text: &'a str) -> Tenant<'a> {
        Tenant {
            label: "client_id",
            values,
            matcher_text: text,
        }
    }

    fn run(method: &str, path: &str, body: Option<&str>, vm: bool) -> Result<Rewritten, Refusal> {
        let values = vec!["1999".to_string()];
        let plan = plan(method, path)?;
        rewrite_request(
            &plan,
            body.map(str::as_bytes),
            Some(b"application/x-www-form-urlencoded"),
            &tenant(&values, "client_id=\"1999\""),
            RewriteOptions {
                victoriametrics_extra_label: vm,
            },
            &fake,
        )
    }

    #[test]
    fn policy_table_rows() {
        let rows: &[(&str, Action, &str)] = &[
            ("/api/v1/query", Action::RewriteQuery, GET_POST),
            ("/api/v1/query_range", Action::RewriteQuery, GET_POST),
            ("/api/v1/query_exemplars", Action::RewriteQuery, GET_POST),
            ("/api/v1/series", Action::RewriteMatch, GET_POST),
            ("/api/v1/labels", Action::RewriteMatch, GET_POST),
            ("/api/v1/label/job/values", Action::RewriteMatch, GET_POST),
            (
                "/api/v1/label/__name__/values",
                Action::RewriteMatch,
                GET_POST,
            ),
            ("/federate", Action::RewriteMatch, GET_POST),
            ("/api/v1/export", Action::RewriteMatch, GET_POST),
            ("/api/v1/status/tsdb", Action::RewriteMatch, GET_POST),
            (
                "/api/v1/metadata",
                Action::Answer(METADATA_ANSWER),
                GET_POST,
            ),
            ("/api/v1/rules", Action::Answer(RULES_ANSWER), GET_POST),
            ("/api/v1/alerts", Action::Answer(ALERTS_ANSWER), GET_POST),
            ("/api/v1/status/buildinfo", Action::PassThrough, GET_ONLY),
        ];
        for &(path, action, methods) in rows {
            for prefix in ["", "/prometheus"] {
                let full = format!("{prefix}{path}");
                assert_eq!(plan("GET", &full).map(|p| p.action), Ok(action), "{full}");
                let post = plan("POST", &full);
                if methods == GET_POST {
                    assert_eq!(post.map(|p| p.action), Ok(action), "{full}");
                } else {
                    assert_eq!(
                        post.map_err(|r| (r.status, r.allow)),
                        Err((405, Some("GET")))
                    );
                }
                for method in ["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get"] {
                    assert_eq!(status(method, &full), 405, "{method} {full}");
                }
            }
        }
    }

    #[test]
    fn unknown_paths_are_forbidden() {
        for path in [
            "/",
            "/metrics",
            "/api/v1/query/",
            "/api/v1/Query",
            "/api/v1/admin/tsdb/delete_series",
            "/api/v1/write",
            "/api/v1/import",
            "/api/v1/label/values",
            "/api/v1/label/a/b/values",
            "/api/v1/export/csv",
            "/api/v1/status/config",
            "/prometheus",
            "/prometheus/prometheus/api/v1/query",
            "/prometheusapi/v1/query",
            "/graph",
        ] {
            let r = plan("GET", path).expect_err(path);
            assert_eq!(r.status, 403, "{path}");
            assert_eq!(r.error_type, ErrorType::Forbidden);
        }
        // Unknown path wins over a bad method.
        assert_eq!(status("DELETE", "/api/v1/admin/tsdb/delete_series"), 403);
    }

    #[test]
    fn non_canonical_paths_are_bad_requests() {
        for path in [
            "/api/v1/../v1/query",
            "/api/v1/./query",
            "/api/v1/%2e%2e/v1/query",
            "/api/v1/%2E/query",
            "//api/v1/query",
            "/api//v1/query",
            "/api/v1/query;x=1",
            "/api/v1/label//values",
            "/api%2Fv1/query",
            "/api%2fv1/query",
            "/api/v1/query#frag",
            "/api/v1/query?query=up#frag",
            "/api\\v1/query",
            "/api%5cv1/query",
            "/api/v1/qu%zzery",
            "/api/v1/query%00",
            "/api/v1/label/%ff/values",
            "/api/v1/qu+ery",
            "api/v1/query",
            "*",
        ] {
            let r = plan("GET", path).expect_err(path);
            assert_eq!(r.status, 400, "{path}: {r:?}");
            assert_eq!(r.error_type, ErrorType::BadData);
        }
        assert_eq!(
            plan_request(b"GET", b"/api/v1/\xff").map_err(|r| r.status),
            Err(400)
        );
    }

    #[test]
    fn encoded_paths_match_after_decoding() {
        assert_eq!(
            plan("GET", "/api/v1/%71uery").map(|p| p.action),
            Ok(Action::RewriteQuery)
        );
        assert_eq!(
            plan("GET", "/api/v1/label/caf%C3%A9/values").map(|p| p.action),
            Ok(Action::RewriteMatch)
        );
        let p = plan("GET", "/api/v1/%71uery?query=up").unwrap();
        assert_eq!(p.raw_path, "/api/v1/%71uery");
        assert_eq!(p.raw_query, "query=up");
    }

    #[test]
    fn query_is_rewritten_everywhere_including_duplicates() {
        let r = run(
            "POST",
            "/api/v1/query?query=a&%71uery=b&time=1",
            Some("query=c&step=1&query=d"),
            false,
        )
        .unwrap();
        assert_eq!(r.rewritten_params, 4);
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=%3Ca%3E&query=%3Cb%3E&time=1")
        );
        assert_eq!(
            r.body.as_deref(),
            Some(&b"query=%3Cc%3E&step=1&query=%3Cd%3E"[..])
        );
    }

    #[test]
    fn query_only_in_body_leaves_url_alone() {
        let r = run(
            "POST",
            "/api/v1/query_range",
            Some("query=up&start=1"),
            false,
        )
        .unwrap();
        assert_eq!(r.path, None);
        assert_eq!(r.body.as_deref(), Some(&b"query=%3Cup%3E&start=1"[..]));
    }

    #[test]
    fn missing_query_is_a_bad_request() {
        let r = run("GET", "/api/v1/query?time=1", None, false).unwrap_err();
        assert_eq!((r.status, r.error_type), (400, ErrorType::BadData));
    }

    #[test]
    fn bad_query_is_400_with_the_parser_message() {
        let r = run("GET", "/api/v1/query?query=up!", None, false).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.message.contains("cannot parse \"up!\""), "{}", r.message);
        let r = run("GET", "/api/v1/query?query=", None, false).unwrap_err();
        assert_eq!(r.status, 400);
        let r = run("GET", "/api/v1/series?match[]=up!", None, false).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.message.contains("match[]"));
    }

    #[test]
    fn conflict_is_forbidden() {
        let r = run("GET", "/api/v1/query?query=other", None, false).unwrap_err();
        assert_eq!((r.status, r.error_type), (403, ErrorType::Forbidden));
    }

    #[test]
    fn match_and_vm_alias_are_rewritten() {
        let r = run(
            "GET",
            "/api/v1/series?match[]=a&match%5B%5D=b&match=c&start=1",
            None,
            false,
        )
        .unwrap();
        assert_eq!(r.rewritten_params, 3);
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/series?match%5B%5D=%3Ca%3E&match%5B%5D=%3Cb%3E&match=%3Cc%3E&start=1")
        );
    }

    #[test]
    fn missing_match_gets_the_tenant_selector() {
        for path in [
            "/api/v1/labels",
            "/api/v1/label/job/values?start=1",
            "/federate",
            "/api/v1/export",
            "/api/v1/status/tsdb",
            "/api/v1/series",
        ] {
            let r = run("GET", path, None, false).unwrap();
            let new_path = r.path.unwrap();
            assert!(
                new_path.ends_with("match%5B%5D=%7Bclient_id%3D%221999%22%7D"),
                "{new_path}"
            );
            assert!(new_path.starts_with(path), "{new_path}");
        }
        // A match[] in the body counts: no extra selector in the URL.
        let r = run("POST", "/api/v1/labels", Some("match[]=up"), false).unwrap();
        assert_eq!(r.path, None);
    }

    #[test]
    fn a_get_body_is_refused_because_the_backend_ignores_it() {
        // Found by the request_decision fuzz target: a `match[]` in a GET's form body
        // counted as rewritten, so no tenant selector was added to the URL, and the
        // backend (which reads no GET body) answered for every tenant.
        for path in [
            "/api/v1/label/client_id/values",
            "/api/v1/labels",
            "/api/v1/query?query=up",
        ] {
            for body in ["match[]=up", "query=up", "x=1"] {
                let r = run("GET", path, Some(body), false).unwrap_err();
                assert_eq!(
                    (r.status, r.error_type),
                    (400, ErrorType::BadData),
                    "{path}"
                );
            }
            // An empty body is no body.
            assert!(run("GET", path, Some(""), false).is_ok());
        }
        let r = run("POST", "/api/v1/labels", Some("match[]=up"), false).unwrap();
        assert_eq!((r.path, r.rewritten_params), (None, 1));
    }

    #[test]
    fn client_extra_filters_are_stripped() {
        let r = run(
            "POST",
            "/api/v1/query?extra_label=client_id%3D2000&query=up&extra_filters%5B%5D=x&extra_filters=y",
            Some("extra_label=client_id=2000&query=up"),
            false,
        )
        .unwrap();
        assert_eq!(r.path.as_deref(), Some("/api/v1/query?query=%3Cup%3E"));
        assert_eq!(r.body.as_deref(), Some(&b"query=%3Cup%3E"[..]));
        // Also on endpoints that are passed through.
        let r = run(
            "GET",
            "/api/v1/status/buildinfo?extra_label=a%3Db",
            None,
            false,
        )
        .unwrap();
        assert_eq!(r.path.as_deref(), Some("/api/v1/status/buildinfo"));
        let r = run("GET", "/api/v1/status/buildinfo", None, true).unwrap();
        assert_eq!(r, Rewritten::default());
    }

    #[test]
    fn vm_extra_label_for_one_tenant_and_extra_filters_for_several() {
        let r = run("GET", "/api/v1/query?query=up", None, true).unwrap();
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/query?query=%3Cup%3E&extra_label=client_id%3D1999")
        );
        let values = vec!["a".to_string(), "b".to_string()];
        let plan = plan("GET", "/api/v1/labels").unwrap();
        let r = rewrite_request(
            &plan,
            None,
            None,
            &tenant(&values, "client_id=~\"a|b\""),
            RewriteOptions {
                victoriametrics_extra_label: true,
            },
            &fake,
        )
        .unwrap();
        assert_eq!(
            r.path.as_deref(),
            Some(
                "/api/v1/labels?match%5B%5D=%7Bclient_id%3D~%22a%7Cb%22%7D\
                 &extra_filters%5B%5D=%7Bclient_id%3D~%22a%7Cb%22%7D"
            )
        );
    }

    #[test]
    fn body_content_type_rules() {
        let values = vec!["1".to_string()];
        let t = tenant(&values, "client_id=\"1\"");
        let opts = RewriteOptions {
            victoriametrics_extra_label: false,
        };
        let p = plan("POST", "/api/v1/query?query=up").unwrap();
        for ct in [
            None,
            Some(&b"multipart/form-data; boundary=x"[..]),
            Some(b"application/json"),
            Some(b"text/plain"),
        ] {
            let r = rewrite_request(&p, Some(b"query=x"), ct, &t, opts, &fake).unwrap_err();
            assert_eq!(r.status, 415, "{ct:?}");
        }
        // An empty body of any type is fine.
        assert!(rewrite_request(&p, Some(b""), Some(b"application/json"), &t, opts, &fake).is_ok());
        // Parameters and case in the content type are fine.
        assert!(rewrite_request(
            &p,
            Some(b"query=x"),
            Some(b"Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
            &t,
            opts,
            &fake
        )
        .is_ok());
        // Broken bodies are 400.
        for body in [&b"query=%zz"[..], b"query=%ff", b"\xff", b"a=1;query=x"] {
            let r = rewrite_request(
                &p,
                Some(body),
                Some(b"application/x-www-form-urlencoded"),
                &t,
                opts,
                &fake,
            )
            .unwrap_err();
            assert_eq!(r.status, 400, "{body:?}");
        }
        // Broken query strings too.
        let bad = plan("GET", "/api/v1/query?query=%ff").unwrap();
        assert_eq!(
            rewrite_request(&bad, None, None, &t, opts, &fake).map_err(|r| r.status),
            Err(400)
        );
    }

    #[test]
    fn body_header_checks() {
        let form = Some(&b"application/x-www-form-urlencoded"[..]);
        assert_eq!(check_body_headers(form, Some(b"100"), 100), Ok(()));
        assert_eq!(
            check_body_headers(form, Some(b"101"), 100).map_err(|r| r.status),
            Err(413)
        );
        assert_eq!(
            check_body_headers(Some(b"multipart/form-data"), Some(b"5"), 100).map_err(|r| r.status),
            Err(415)
        );
        assert_eq!(
            check_body_headers(Some(b"application/json"), Some(b"0"), 100),
            Ok(())
        );
        assert_eq!(check_body_headers(None, None, 100), Ok(()));
        // Unreadable lengths are left to the body-time checks.
        assert_eq!(check_body_headers(None, Some(b"x"), 100), Ok(()));
    }

    #[test]
    fn compressed_bodies_are_refused() {
        assert_eq!(check_content_encoding(None), Ok(()));
        assert_eq!(check_content_encoding(Some(b"identity")), Ok(()));
        assert_eq!(check_content_encoding(Some(b" ")), Ok(()));
        for encoding in [&b"gzip"[..], b"br", b"deflate", b"gzip, identity"] {
            assert_eq!(
                check_content_encoding(Some(encoding)).map_err(|r| r.status),
                Err(415)
            );
        }
    }

    #[test]
    fn refusal_shapes() {
        let r = Refusal::unauthorized("missing Authorization header");
        let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(
            body,
            json!({"status":"error","errorType":"unauthorized","error":"missing Authorization header"})
        );
        assert_eq!(
            r.headers(),
            vec![
                ("content-type", "application/json"),
                ("www-authenticate", "Bearer")
            ]
        );
        let cases = [
            (Refusal::bad_request("x"), 400, "bad_data"),
            (Refusal::forbidden("x"), 403, "forbidden"),
            (Refusal::unavailable("x"), 503, "unavailable"),
            (Refusal::method_not_allowed(GET_POST), 405, "bad_data"),
            (Refusal::too_large(1), 413, "bad_data"),
            (Refusal::unsupported_media_type(), 415, "bad_data"),
        ];
        for (r, status, kind) in cases {
            assert_eq!(r.status, status);
            let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(body["errorType"], kind);
            assert_eq!(body["status"], "error");
            assert_eq!(r.headers()[0], ("content-type", "application/json"));
        }
        assert!(Refusal::method_not_allowed(GET_ONLY)
            .headers()
            .contains(&("allow", "GET")));
        // Messages with quotes and control characters stay valid JSON.
        let r = Refusal::bad_request("bad \"q\"\n\u{1}");
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body()).is_ok());
    }

    #[test]
    fn answer_bodies_are_valid_json() {
        for body in [METADATA_ANSWER, RULES_ANSWER, ALERTS_ANSWER] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["status"], "success");
        }
    }

    proptest::proptest! {
        #[test]
        fn planning_never_panics(method in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
                                 path in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = plan_request(&method, &path);
        }

        #[test]
        fn allowed_paths_are_canonical(path in "/[a-z0-9%./;_\\\\]{0,40}") {
            if let Ok(plan) = plan_request(b"GET", path.as_bytes()) {
                let decoded = crate::form::decode(&plan.raw_path, 0).unwrap();
                proptest::prop_assert!(!decoded.contains("//"));
                proptest::prop_assert!(!decoded.split('/').any(|s| s == ".." || s == "."));
                proptest::prop_assert!(!plan.raw_path.contains(';'));
            }
        }

        #[test]
        fn rewriting_never_panics(query in "\\PC{0,60}", body in "\\PC{0,60}") {
            let values = vec!["1".to_string()];
            let t = tenant(&values, "client_id=\"1\"");
            for path in ["/api/v1/query", "/api/v1/series", "/api/v1/status/buildinfo"] {
                let p = Plan { action: plan("GET", path).unwrap().action, raw_path: path.into(), raw_query: query.clone(), reads_body: true };
                let _ = rewrite_request(&p, Some(body.as_bytes()), Some(b"application/x-www-form-urlencoded"), &t,
                    RewriteOptions { victoriametrics_extra_label: true }, &fake);
            }
        }
    }
}
