//! The Prometheus HTTP API policy: which requests may pass, and how they are rewritten.
//!
//! This is an allowlist. [`plan_request`] maps a method and `:path` to a [`Plan`] or a
//! [`Refusal`]; [`rewrite_request`] then confines every selector-carrying parameter, in
//! the URL and in a form body, to the caller's tenant. The PromQL rewrite itself comes
//! in as a [`QueryRewriter`], so this module stays testable without the engine.
//!
//! Paths are matched after percent-decoding, as the backends' routers do, and any path
//! a router might normalise differently from us (`..`, `//`, encoded `/`, `;`, a
//! fragment) is refused outright rather than guessed at. Parameters are read as Go's
//! `Request.ParseForm` reads them (both backends are Go), or refused: a body counts only
//! where every Go version reads it as a form ([`check_form_media_type`]), and nothing is
//! forwarded that Go would drop whole (a form over 10 MiB, over 10,000 parameters).

use crate::config::{Backend, Writes};
use crate::form::{go_param_count, FormError, Params};
use crate::mediatype::{self, MediaTypeError};
use crate::rules::RuleView;
use serde_json::json;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::rc::Rc;

/// Parameters the client may not set: VictoriaMetrics would apply them as filters, and
/// only the filter decides the tenant. `include_metadata` (Prometheus 3's search API)
/// would add the metadata of every tenant's targets, which, like `/api/v1/metadata`,
/// cannot be confined.
pub const STRIPPED_PARAMS: &[&str] = &[
    "extra_label",
    "extra_filters",
    "extra_filters[]",
    "include_metadata",
];
/// Headers the client may not set: VictoriaMetrics cluster reads the tenant from them.
pub const STRIPPED_HEADERS: &[&str] = &["accountid", "projectid"];

/// The media type of a form body, which Go's `Request.ParseForm` reads.
pub const FORM_MEDIA_TYPE: &str = "application/x-www-form-urlencoded";
/// Go's `maxFormSize`: `ParseForm` reads nothing of a larger form body ("http: POST too
/// large") and both backends then see only the URL's parameters.
pub const GO_MAX_FORM_BYTES: usize = 10 << 20;
/// The most parameters the filter forwards in a query string or a form body. Go 1.24.12,
/// 1.25.6 and 1.26 drop every parameter of a query string or body holding more than
/// 10,000 (their default `urlmaxqueryparams`; Go counts `&`s plus one), so a tenant
/// selector among them would vanish. A tenth of that leaves room for a backend run with
/// a lower `GODEBUG=urlmaxqueryparams`.
pub const MAX_FORWARDED_PARAMS: usize = 1000;

/// Answer to `/api/v1/metadata`: metadata cannot be filtered by tenant.
pub const METADATA_ANSWER: &str = r#"{"status":"success","data":{}}"#;

/// The Prometheus `errorType` of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Unauthorized,
    Forbidden,
    Unavailable,
    Internal,
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
            ErrorType::Internal => "internal",
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
    /// An answer from the backend the filter does not pass on as it is (a rule
    /// engine's error, or an answer it cannot read), with the status given.
    pub fn upstream(status: u16, error_type: ErrorType, message: impl Into<String>) -> Refusal {
        Refusal::new(status, error_type, message)
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
    /// 415, saying why the body is not read as a form.
    pub fn unsupported_media_type(why: &str) -> Refusal {
        Refusal::new(
            415,
            ErrorType::BadData,
            format!("request body must be {FORM_MEDIA_TYPE}: {why}"),
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
    /// Ask the rule engine (see [`crate::rules`]) and filter its answer by tenant.
    FilterRules(RuleView),
    /// Answer with this JSON body, without asking the backend.
    Answer(&'static str),
    /// Forward as is (after stripping).
    PassThrough,
    /// A write: decided at the headers, the `:path` given the tenant's `extra_label`
    /// (see [`crate::writes`]), the body streamed through unread.
    Write,
}

/// An allowed request: what to do, and its raw path and query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// The path, and `?` with the query string unless it is empty: one allocation per
    /// request rather than two.
    target: String,
    /// Where the path ends in `target`.
    path_end: usize,
    /// Whether the backend reads a form body: only for POST. Go's `Request.ParseForm`
    /// ignores the body of a GET (and of a DELETE), so parameters there must not count
    /// as rewritten; it reads PUT and PATCH bodies, which the filter refuses (405).
    pub reads_body: bool,
}

impl Plan {
    pub fn new(action: Action, raw_path: &str, raw_query: &str, reads_body: bool) -> Plan {
        Plan {
            action,
            target: join_path(raw_path, raw_query),
            path_end: raw_path.len(),
            reads_body,
        }
    }

    /// The path as the client sent it (before `?`), forwarded unchanged.
    pub fn raw_path(&self) -> &str {
        self.target.get(..self.path_end).unwrap_or_default()
    }

    /// The query string as the client sent it (after `?`), possibly empty.
    pub fn raw_query(&self) -> &str {
        self.target.get(self.path_end + 1..).unwrap_or_default()
    }

    /// The `:path` the plan stands for: path, and `?` with the query string if any.
    pub fn target(&self) -> String {
        self.target.clone()
    }
}

/// `path`, and `?` with `query` unless it is empty. Built by hand rather than with
/// `format!`, whose machinery was a visible part of a repeated request's cost.
fn join_path(path: &str, query: &str) -> String {
    let mut target = String::with_capacity(path.len() + 1 + query.len());
    target.push_str(path);
    if !query.is_empty() {
        target.push('?');
        target.push_str(query);
    }
    target
}

const GET_POST: &str = "GET, POST";
const GET_ONLY: &str = "GET";

/// The endpoint table: decoded path (without `/prometheus`) and backend → action and
/// methods. Methods are those the backend serves the path with: VictoriaMetrics takes
/// GET and POST everywhere, Prometheus only where it registers both.
///
/// Endpoints Prometheus 3 added, and why each is or is not here (docs/security.md):
/// `format_query` and `parse_query` hold no data, `features` lists feature flags, and
/// the `search/*` endpoints read series under `match[]` like `/api/v1/labels` and are
/// confined the same way. `notifications` (the server's own alerts), `status/tsdb/blocks`
/// (every block's series counts), `status/self_metrics` (the server's own metrics) and
/// `targets/relabel_steps` (scrape configuration) are about the server, not a tenant:
/// refused, like `/api/v1/status/tsdb` on Prometheus, which ignores `match[]` there.
fn endpoint(path: &str, backend: Backend) -> Option<(Action, &'static str)> {
    let vm = backend == Backend::VictoriaMetrics;
    let both = |action| Some((action, GET_POST));
    let get = |action| Some((action, GET_ONLY));
    // Prometheus serves these with GET only; VictoriaMetrics with any method.
    let read = |action| Some((action, if vm { GET_POST } else { GET_ONLY }));
    match path {
        "/api/v1/query" | "/api/v1/query_range" | "/api/v1/query_exemplars" => {
            both(Action::RewriteQuery)
        }
        "/api/v1/series" | "/api/v1/labels" => both(Action::RewriteMatch),
        "/federate" => read(Action::RewriteMatch),
        "/api/v1/export" | "/api/v1/status/tsdb" if vm => both(Action::RewriteMatch),
        "/api/v1/metadata" => both(Action::Answer(METADATA_ANSWER)),
        "/api/v1/rules" => get(Action::FilterRules(RuleView::Rules)),
        "/api/v1/alerts" => get(Action::FilterRules(RuleView::Alerts)),
        "/api/v1/status/buildinfo" => get(Action::PassThrough),
        "/api/v1/format_query" | "/api/v1/parse_query" if !vm => both(Action::PassThrough),
        "/api/v1/features" if !vm => get(Action::PassThrough),
        "/api/v1/search/metric_names"
        | "/api/v1/search/label_names"
        | "/api/v1/search/label_values"
            if !vm =>
        {
            both(Action::RewriteMatch)
        }
        _ => {
            let name = path
                .strip_prefix("/api/v1/label/")?
                .strip_suffix("/values")?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            read(Action::RewriteMatch)
        }
    }
}

/// Decides from the method and `:path` whether the request is allowed on `backend`,
/// with `writes`, and how.
pub fn plan_request(
    method: &[u8],
    path_and_query: &[u8],
    backend: Backend,
    writes: Writes,
) -> Result<Plan, Refusal> {
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
    if crate::writes::is_write_path(&path) {
        if writes == Writes::Deny {
            return Err(crate::writes::writes_denied(&path));
        }
        if method != crate::writes::WRITE_METHOD.as_bytes() {
            return Err(Refusal::method_not_allowed(crate::writes::WRITE_METHOD));
        }
        return Ok(Plan::new(Action::Write, raw_path, raw_query, false));
    }
    // VictoriaMetrics serves its Prometheus API under `/prometheus` too; Prometheus
    // does not, so there the prefixed paths are unknown.
    let unprefixed = match path.strip_prefix("/prometheus") {
        Some(rest) if rest.starts_with('/') && backend == Backend::VictoriaMetrics => rest,
        _ => &*path,
    };
    let Some((action, allow)) = endpoint(unprefixed, backend) else {
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
    Ok(Plan::new(action, raw_path, raw_query, method == b"POST"))
}

/// True when `path_and_query` names an ingestion endpoint ([`crate::writes`]), allowed
/// or not: what the filter counts as a write, refused or let through.
pub fn is_write_target(path_and_query: &[u8]) -> bool {
    let Ok(target) = std::str::from_utf8(path_and_query) else {
        return false;
    };
    let raw_path = target.split(['?', '#']).next().unwrap_or_default();
    canonical_path(raw_path).is_ok_and(|path| crate::writes::is_ingestion_path(&path))
}

/// Percent-decodes a path, refusing anything a router could read two ways.
fn canonical_path(raw: &str) -> Result<Cow<'_, str>, Refusal> {
    // Nearly every path is plain printable ASCII with nothing to decode: then one pass
    // decides, with no copy, where the checks below take one pass each and two copies.
    // Anything else takes the full checks.
    if is_plain_path(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    canonical_path_checked(raw).map(Cow::Owned)
}

/// True when `raw` is a path [`canonical_path_checked`] accepts as it is: it starts
/// with `/` and holds only printable ASCII, with no `%`, `+`, `;` or `\`, no `//`, and
/// no `.` or `..` segment.
fn is_plain_path(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    // A segment is `.` or `..` when it is one or two bytes long, all dots.
    let dot_segment = |len: usize, dots: usize| len > 0 && len <= 2 && dots == len;
    let mut previous = 0u8;
    let (mut segment_len, mut segment_dots) = (0, 0);
    for &b in bytes {
        if !(0x20..0x7f).contains(&b)
            || matches!(b, b'%' | b'+' | b';' | b'\\')
            || (b == b'/' && previous == b'/')
        {
            return false;
        }
        if b == b'/' {
            if dot_segment(segment_len, segment_dots) {
                return false;
            }
            (segment_len, segment_dots) = (0, 0);
        } else {
            segment_len += 1;
            segment_dots += usize::from(b == b'.');
        }
        previous = b;
    }
    !dot_segment(segment_len, segment_dots)
}

fn canonical_path_checked(raw: &str) -> Result<String, Refusal> {
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
        if length > 0 {
            check_form_media_type(content_type)?;
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

/// Accepts a body's `Content-Type` only where every Go version the backends may be
/// built with reads the body as a form, cleanly, through `Request.ParseForm`:
/// `mime.ParseMediaType` must return `application/x-www-form-urlencoded` and no error.
///
/// Anything else is refused, because counting what is in a body the backend does not
/// read would leave the request without a tenant selector: without a type Go takes the
/// body for `application/octet-stream`; a repeated parameter makes Go 1.19 read nothing
/// (Go 1.20 and later accept equal repeats); a broken parameter makes Go read the body
/// but report an error, on which Prometheus' series and federate handlers refuse and
/// VictoriaMetrics does not; `multipart/form-data` is read by `FormValue` but not by
/// this filter; and Go 1.25 took `{` and `}` out of the token alphabet until a later
/// point release put them back.
pub fn check_form_media_type(content_type: Option<&[u8]>) -> Result<(), Refusal> {
    let refuse = |why: &str| Err(Refusal::unsupported_media_type(why));
    let Some(value) = content_type else {
        return refuse("no Content-Type (Go reads such a body as application/octet-stream)");
    };
    // What Grafana and every form client send: no parameter, nothing to fold. Go's
    // parser gives this essence for these bytes (a test checks the full parse agrees),
    // and this runs twice per form POST.
    if value == FORM_MEDIA_TYPE.as_bytes() {
        return Ok(());
    }
    if value.contains(&b'{') || value.contains(&b'}') {
        return refuse("`{` or `}` in Content-Type (Go versions disagree on them)");
    }
    match mediatype::parse(value) {
        Ok(media_type) if media_type.essence == FORM_MEDIA_TYPE => Ok(()),
        Ok(_) => refuse("another Content-Type"),
        Err(e @ MediaTypeError::DuplicateParameter { same_value, .. }) => refuse(&format!(
            "{} in Content-Type (Go {} the body)",
            e.go_message(),
            if same_value {
                "1.19 ignores, Go 1.20 and later read"
            } else {
                "ignores"
            }
        )),
        Err(e) if e.go_reads_type() == Some(FORM_MEDIA_TYPE) => refuse(&format!(
            "{} in Content-Type (Go reads the body but reports an error)",
            e.go_message()
        )),
        Err(e) => refuse(&format!(
            "{} in Content-Type (Go ignores the body)",
            e.go_message()
        )),
    }
}

/// True where every Go version reads a body with this `Content-Type` as a form, as
/// [`check_form_media_type`] decides.
pub fn is_form(content_type: Option<&[u8]>) -> bool {
    check_form_media_type(content_type).is_ok()
}

/// Why the engine refused a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRejection {
    /// It does not parse: 400 `bad_data`, with the parser's message.
    BadQuery(String),
    /// It asks for another tenant (policy `reject`): 403.
    Forbidden(String),
}

/// A query or selector confined to the tenant. Shared, not owned: a remembered answer
/// is handed out of the memo without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenQuery {
    pub text: Rc<str>,
    /// `text` as [`crate::form::encode`] gives it, when the rewriter remembered it:
    /// the parameter is then re-encoded by copying this.
    pub encoded: Option<Rc<str>>,
}

/// Confines one query or selector to the tenant.
pub trait QueryRewriter {
    fn rewrite(&self, query: &str) -> Result<RewrittenQuery, QueryRejection>;

    /// True when [`QueryRewriter::rewrite_escaped`] can answer some queries without
    /// decoding them: only then are the parameters it rewrites left escaped when a
    /// query string or form body is read.
    fn takes_escaped(&self) -> bool {
        false
    }

    /// [`QueryRewriter::rewrite`] for a query as the client escaped it (`raw`, which
    /// starts at byte `offset` of its query string or form body). The error is why
    /// `raw` does not decode; a rewriter may skip decoding `raw` only where it has
    /// proof that it decodes.
    fn rewrite_escaped(
        &self,
        raw: &str,
        offset: usize,
    ) -> Result<Result<RewrittenQuery, QueryRejection>, FormError> {
        Ok(self.rewrite(&crate::form::decode(raw, offset)?))
    }
}

impl<F: Fn(&str) -> Result<String, QueryRejection>> QueryRewriter for F {
    fn rewrite(&self, query: &str) -> Result<RewrittenQuery, QueryRejection> {
        self(query).map(|text| RewrittenQuery {
            text: text.into(),
            encoded: None,
        })
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
    /// Where the caller's [`TenantParam`] is kept once built, if it is kept: it is the
    /// same for every request of the caller. `None`: built for each request.
    pub param: Option<&'a OnceCell<TenantParam>>,
}

/// The parameter that confines a request for VictoriaMetrics on top of its rewritten
/// selectors: `extra_label` for one tenant value, `extra_filters[]` for several, with
/// the pair encoded as the query string carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantParam {
    name: &'static str,
    value: String,
    /// `name=value`, encoded as [`Params::encode`] encodes a new pair.
    encoded: String,
}

impl TenantParam {
    pub fn new(tenant: &Tenant<'_>) -> TenantParam {
        let (name, value) = match tenant.values {
            [one] => ("extra_label", extra_label(tenant.label, one)),
            _ => ("extra_filters[]", format!("{{{}}}", tenant.matcher_text)),
        };
        let mut pair = Params::default();
        pair.push(name, value.as_str());
        let encoded = pair.encode();
        TenantParam {
            name,
            value,
            encoded,
        }
    }
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
    /// The URL's `match` aliases, rewritten, for the body half to send on as `match[]`
    /// when the body has no `match[]` either.
    pub match_aliases: Vec<String>,
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
    let bad_query_string =
        |e: FormError| Refusal::bad_request(format!("invalid query string: {e}"));
    let targets = targets(plan.action);
    // Before `url`, which may borrow it.
    let built: TenantParam;
    let mut url = Params::parse_deferring(plan.raw_query(), deferred(targets, rewriter))
        .map_err(bad_query_string)?;
    url.remove_all(STRIPPED_PARAMS);
    let rewritten_params = rewrite_params(&mut url, targets, rewriter, bad_query_string)?;
    let body_may_settle = form_follows && plan.reads_body;
    let mut settled_by_body = false;
    let mut match_aliases = Vec::new();
    match plan.action {
        Action::RewriteQuery if rewritten_params == 0 => {
            if body_may_settle {
                settled_by_body = true;
            } else {
                return Err(missing_query());
            }
        }
        Action::RewriteMatch if !url.contains("match[]") => {
            match_aliases = aliases(&url);
            if body_may_settle {
                settled_by_body = true;
            } else {
                add_match(&mut url, &match_aliases, tenant);
            }
        }
        Action::FilterRules(_) if rewritten_params == 0 => {
            url.push("match[]", format!("{{{}}}", tenant.matcher_text));
        }
        _ => {}
    }
    if options.victoriametrics_extra_label
        && matches!(plan.action, Action::RewriteQuery | Action::RewriteMatch)
    {
        let param = match tenant.param {
            Some(kept) => kept.get_or_init(|| TenantParam::new(tenant)),
            None => {
                built = TenantParam::new(tenant);
                &built
            }
        };
        url.push_encoded(param.name, &param.value, &param.encoded);
    }
    check_count("query string", url.go_param_count())?;
    let path = url.is_changed().then(|| url.encode_target(plan.raw_path()));
    Ok(UrlRewritten {
        path,
        rewritten_params,
        settled_by_body,
        match_aliases,
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
    let bad_form = |e: FormError| Refusal::bad_request(format!("invalid form body: {e}"));
    let targets = targets(plan.action);
    let mut form = if body.is_empty() {
        Params::parse("").map_err(bad_form)?
    } else {
        // The backend would ignore it: a `match[]` found there would stop the filter
        // from adding the tenant's own, and a label or series request without one
        // answers for every tenant.
        if !plan.reads_body {
            return Err(Refusal::bad_request(
                "a request body is only read on POST; send GET parameters in the URL",
            ));
        }
        check_form_media_type(content_type)?;
        let text = std::str::from_utf8(body)
            .map_err(|_| Refusal::bad_request("invalid form body: not valid UTF-8"))?;
        Params::parse_deferring(text, deferred(targets, rewriter)).map_err(bad_form)?
    };
    form.remove_all(STRIPPED_PARAMS);
    let rewritten_params = rewrite_params(&mut form, targets, rewriter, bad_form)?;
    if url.settled_by_body {
        match plan.action {
            Action::RewriteQuery if rewritten_params == 0 => return Err(missing_query()),
            Action::RewriteMatch if !form.contains("match[]") => {
                let mut all = url.match_aliases.clone();
                all.extend(aliases(&form));
                add_match(&mut form, &all, tenant);
            }
            _ => {}
        }
    }
    let new_body = form.is_changed().then(|| form.encode().into_bytes());
    if let Some(forwarded) = new_body.as_deref().or(Some(body)).filter(|b| !b.is_empty()) {
        if forwarded.len() > GO_MAX_FORM_BYTES {
            return Err(Refusal::new(
                413,
                ErrorType::BadData,
                format!(
                    "the form body would reach the backend larger than {GO_MAX_FORM_BYTES} \
                     bytes, and Go's ParseForm ignores such a body"
                ),
            ));
        }
        check_count("form body", form.go_param_count())?;
    }
    Ok((new_body, rewritten_params))
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

/// The value of VictoriaMetrics' `extra_label` for one tenant: `name=value`, which it
/// splits at the first `=` (so the label may hold none, and the value any).
pub fn extra_label(label: &str, tenant: &str) -> String {
    let mut value = String::with_capacity(label.len() + 1 + tenant.len());
    value.push_str(label);
    value.push('=');
    value.push_str(tenant);
    value
}

/// The parameters an action confines.
fn targets(action: Action) -> &'static [&'static str] {
    match action {
        Action::RewriteQuery => &["query"],
        Action::RewriteMatch => &["match[]", "match"],
        // The rule engines read `match[]` only (where they read it at all).
        Action::FilterRules(_) => &["match[]"],
        Action::PassThrough | Action::Answer(_) | Action::Write => &[],
    }
}

/// The parameters whose values are left escaped when a query string or form body is
/// read: the ones `rewriter` rewrites, if it takes them escaped. None of them is among
/// [`STRIPPED_PARAMS`], so every one reaches [`rewrite_params`].
fn deferred<'t>(targets: &'t [&'t str], rewriter: &dyn QueryRewriter) -> &'t [&'t str] {
    if rewriter.takes_escaped() {
        targets
    } else {
        &[]
    }
}

fn missing_query() -> Refusal {
    Refusal::bad_request("missing query parameter \"query\"")
}

/// The (already rewritten) values of the `match` parameters.
fn aliases(params: &Params) -> Vec<String> {
    params
        .pairs()
        .iter()
        .filter(|pair| pair.name() == "match")
        .map(|pair| pair.value().to_string())
        .collect()
}

/// Settles a selector endpoint that has no `match[]`. Prometheus reads only `match[]`;
/// VictoriaMetrics reads `match[]` and its alias `match`. A request with `match` alone
/// would reach Prometheus with no selector at all, which answers for every tenant: each
/// rewritten `match` goes out as a `match[]` too, and the tenant's own selector when
/// there is neither.
fn add_match(params: &mut Params, aliases: &[String], tenant: &Tenant<'_>) {
    if aliases.is_empty() {
        params.push("match[]", format!("{{{}}}", tenant.matcher_text));
    }
    for alias in aliases {
        params.push("match[]", alias.clone());
    }
}

/// Refuses a query string or form body Go's `url.ParseQuery` might drop whole.
pub(crate) fn check_param_count(place: &str, raw: &[u8]) -> Result<(), Refusal> {
    check_count(place, go_param_count(raw))
}

/// [`check_param_count`] with the count already known.
fn check_count(place: &str, count: usize) -> Result<(), Refusal> {
    if count > MAX_FORWARDED_PARAMS {
        return Err(Refusal::bad_request(format!(
            "too many parameters in the {place}: {count}, at most {MAX_FORWARDED_PARAMS}"
        )));
    }
    Ok(())
}

/// Rewrites every parameter named in `targets`, in order; `bad_form` words the refusal
/// of a value whose decoding was deferred and fails.
///
/// Every deferred value is resolved before this returns, and before any refusal of the
/// engine's, so that a request with a bad escape anywhere is refused for the first one,
/// as if the whole input had been decoded before anything else.
fn rewrite_params(
    params: &mut Params,
    targets: &[&str],
    rewriter: &dyn QueryRewriter,
    bad_form: impl Fn(FormError) -> Refusal,
) -> Result<usize, Refusal> {
    let mut count = 0;
    for index in 0..params.pairs().len() {
        let pair = &params.pairs()[index];
        if !targets.contains(&pair.name()) {
            continue;
        }
        let answer = match pair.escaped_value() {
            Some((raw, offset)) => rewriter.rewrite_escaped(raw, offset).map_err(&bad_form)?,
            None => rewriter.rewrite(pair.value()),
        };
        let rejection = match answer {
            Ok(value) => {
                params.set_value_encoded(index, value.text, value.encoded);
                count += 1;
                continue;
            }
            Err(rejection) => rejection,
        };
        params.resolve_pending().map_err(&bad_form)?;
        return Err(match rejection {
            QueryRejection::BadQuery(why) => {
                let name = params.pairs()[index].name();
                Refusal::bad_request(format!("invalid parameter {name:?}: {why}"))
            }
            QueryRejection::Forbidden(why) => Refusal::forbidden(why),
        });
    }
    params.resolve_pending().map_err(bad_form)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plain_form_type_parses_to_itself_as_the_shortcut_assumes() {
        let parsed = crate::mediatype::parse(super::FORM_MEDIA_TYPE.as_bytes()).unwrap();
        assert_eq!(parsed.essence, super::FORM_MEDIA_TYPE);
        assert!(parsed.params.is_empty());
        for refused in [&b"application/x-www-form-urlencoded;;"[..], b"text/plain"] {
            assert!(super::check_form_media_type(Some(refused)).is_err());
        }
    }

    use super::*;

    fn plan(method: &str, path: &str) -> Result<Plan, Refusal> {
        plan_request(
            method.as_bytes(),
            path.as_bytes(),
            Backend::VictoriaMetrics,
            Writes::Deny,
        )
    }

    fn plan_on(backend: Backend, method: &str, path: &str) -> Result<Plan, Refusal> {
        plan_request(method.as_bytes(), path.as_bytes(), backend, Writes::Deny)
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
            param: None,
        }
    }

    fn run(method: &str, path: &str, body: Option<&str>, vm: bool) -> Result<Rewritten, Refusal> {
        run_typed(method, path, body, FORM_MEDIA_TYPE.as_bytes(), vm)
    }

    fn run_typed(
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: &[u8],
        vm: bool,
    ) -> Result<Rewritten, Refusal> {
        let values = vec!["1999".to_string()];
        let plan = plan(method, path)?;
        rewrite_request(
            &plan,
            body.map(str::as_bytes),
            Some(content_type),
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
            (
                "/api/v1/rules",
                Action::FilterRules(RuleView::Rules),
                GET_ONLY,
            ),
            (
                "/api/v1/alerts",
                Action::FilterRules(RuleView::Alerts),
                GET_ONLY,
            ),
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

    /// Every endpoint, on each backend: its action and methods there, `None` where the
    /// filter refuses it (403). Prometheus rows follow its router (2.42 and 3.x).
    #[test]
    fn the_table_differs_by_backend() {
        type Row = (&'static str, Option<(Action, &'static str)>);
        let both: &[Row] = &[
            ("/api/v1/query", Some((Action::RewriteQuery, GET_POST))),
            (
                "/api/v1/query_range",
                Some((Action::RewriteQuery, GET_POST)),
            ),
            (
                "/api/v1/query_exemplars",
                Some((Action::RewriteQuery, GET_POST)),
            ),
            ("/api/v1/series", Some((Action::RewriteMatch, GET_POST))),
            ("/api/v1/labels", Some((Action::RewriteMatch, GET_POST))),
            (
                "/api/v1/metadata",
                Some((Action::Answer(METADATA_ANSWER), GET_POST)),
            ),
            (
                "/api/v1/rules",
                Some((Action::FilterRules(RuleView::Rules), GET_ONLY)),
            ),
            (
                "/api/v1/alerts",
                Some((Action::FilterRules(RuleView::Alerts), GET_ONLY)),
            ),
            (
                "/api/v1/status/buildinfo",
                Some((Action::PassThrough, GET_ONLY)),
            ),
            // Prometheus 3's endpoints about the server, not a tenant.
            ("/api/v1/notifications", None),
            ("/api/v1/notifications/live", None),
            ("/api/v1/status/tsdb/blocks", None),
            ("/api/v1/status/self_metrics", None),
            ("/api/v1/targets/relabel_steps", None),
            ("/api/v1/targets", None),
            ("/api/v1/scrape_pools", None),
            ("/api/v1/status/config", None),
            ("/api/v1/status/runtimeinfo", None),
            ("/api/v1/status/walreplay", None),
            ("/api/v1/alertmanagers", None),
            ("/api/v1/targets/metadata", None),
            ("/api/v1/otlp/v1/metrics", None),
            ("/api/v1/read", None),
            ("/api/v1/openapi.yaml", None),
            ("/api/v1/search/other", None),
        ];
        let victoriametrics: &[Row] = &[
            ("/federate", Some((Action::RewriteMatch, GET_POST))),
            (
                "/api/v1/label/job/values",
                Some((Action::RewriteMatch, GET_POST)),
            ),
            ("/api/v1/export", Some((Action::RewriteMatch, GET_POST))),
            (
                "/api/v1/status/tsdb",
                Some((Action::RewriteMatch, GET_POST)),
            ),
            ("/api/v1/format_query", None),
            ("/api/v1/parse_query", None),
            ("/api/v1/features", None),
            ("/api/v1/search/metric_names", None),
            ("/api/v1/search/label_names", None),
            ("/api/v1/search/label_values", None),
        ];
        let prometheus: &[Row] = &[
            ("/federate", Some((Action::RewriteMatch, GET_ONLY))),
            (
                "/api/v1/label/job/values",
                Some((Action::RewriteMatch, GET_ONLY)),
            ),
            // Prometheus ignores match[] there: every tenant's cardinality.
            ("/api/v1/status/tsdb", None),
            ("/api/v1/export", None),
            (
                "/api/v1/format_query",
                Some((Action::PassThrough, GET_POST)),
            ),
            ("/api/v1/parse_query", Some((Action::PassThrough, GET_POST))),
            ("/api/v1/features", Some((Action::PassThrough, GET_ONLY))),
            (
                "/api/v1/search/metric_names",
                Some((Action::RewriteMatch, GET_POST)),
            ),
            (
                "/api/v1/search/label_names",
                Some((Action::RewriteMatch, GET_POST)),
            ),
            (
                "/api/v1/search/label_values",
                Some((Action::RewriteMatch, GET_POST)),
            ),
            ("/prometheus/api/v1/query", None),
            ("/prometheus/api/v1/rules", None),
        ];
        for (backend, rows) in [
            (Backend::VictoriaMetrics, [both, victoriametrics].concat()),
            (Backend::Prometheus, [both, prometheus].concat()),
        ] {
            for (path, want) in rows {
                let got = plan_on(backend, "GET", path);
                match want {
                    None => assert_eq!(got.map_err(|r| r.status), Err(403), "{backend:?} {path}"),
                    Some((action, methods)) => {
                        assert_eq!(got.map(|p| p.action), Ok(action), "{backend:?} {path}");
                        let post = plan_on(backend, "POST", path).map_err(|r| (r.status, r.allow));
                        if methods == GET_POST {
                            assert!(post.is_ok(), "{backend:?} POST {path}");
                        } else {
                            assert_eq!(post.err(), Some((405, Some("GET"))), "{backend:?} {path}");
                        }
                    }
                }
            }
        }
    }

    /// `path` rewritten for tenant 1999 on `backend`, without extra_label.
    fn rewritten_on(backend: Backend, path: &str) -> Rewritten {
        let values = vec!["1999".to_string()];
        let p = plan_on(backend, "GET", path).unwrap();
        let options = RewriteOptions {
            victoriametrics_extra_label: false,
        };
        let tenant = tenant(&values, "client_id=\"1999\"");
        rewrite_request(&p, None, None, &tenant, options, &fake).unwrap()
    }

    const TENANT_MATCH: &str = "match%5B%5D=%7Bclient_id%3D%221999%22%7D";

    #[test]
    fn a_match_alone_reaches_either_backend_as_match_brackets() {
        // Prometheus ignores `match`: `/api/v1/labels?match=x` would list every
        // tenant's labels if no match[] went with it.
        for backend in [Backend::VictoriaMetrics, Backend::Prometheus] {
            let r = rewritten_on(backend, "/api/v1/labels?match=x");
            assert_eq!(
                r.path.as_deref(),
                Some("/api/v1/labels?match=%3Cx%3E&match%5B%5D=%3Cx%3E"),
                "{backend:?}"
            );
        }
    }

    #[test]
    fn search_endpoints_are_confined_and_lose_their_metadata() {
        let r = rewritten_on(
            Backend::Prometheus,
            "/api/v1/search/metric_names?search[]=http&include_metadata=true",
        );
        let want = format!("/api/v1/search/metric_names?search[]=http&{TENANT_MATCH}");
        assert_eq!(r.path.as_deref(), Some(want.as_str()));
    }

    #[test]
    fn rules_get_the_tenants_match_only() {
        let vm = Backend::VictoriaMetrics;
        let r = rewritten_on(vm, "/api/v1/rules?match[]=up");
        assert_eq!(
            r.path.as_deref(),
            Some("/api/v1/rules?match%5B%5D=%3Cup%3E")
        );
        // The rule engines read no `match` alias.
        let r = rewritten_on(vm, "/api/v1/rules?match=up");
        let want = format!("/api/v1/rules?match=up&{TENANT_MATCH}");
        assert_eq!(r.path.as_deref(), Some(want.as_str()));
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
            plan_request(
                b"GET",
                b"/api/v1/\xff",
                Backend::VictoriaMetrics,
                Writes::Deny
            )
            .map_err(|r| r.status),
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
        assert_eq!(p.raw_path(), "/api/v1/%71uery");
        assert_eq!(p.raw_query(), "query=up");
        assert_eq!(p.target(), "/api/v1/%71uery?query=up");
        for (target, path) in [
            ("/api/v1/query?", "/api/v1/query"),
            ("/api/v1/query", "/api/v1/query"),
        ] {
            let p = plan("GET", target).unwrap();
            assert_eq!(
                (p.raw_path(), p.raw_query(), p.target().as_str()),
                (path, "", path)
            );
        }
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
    fn a_kept_tenant_param_forwards_what_a_built_one_does() {
        let options = RewriteOptions {
            victoriametrics_extra_label: true,
        };
        let one = vec!["a b&=%/\u{e9}+".to_string()];
        let two = vec!["1".to_string(), "2".to_string()];
        let cases = [
            (
                &one,
                "client_id=\"a b&=%/\u{e9}+\"",
                "/api/v1/query?query=up&x=1",
            ),
            (&two, "client_id=~\"1|2\"", "/api/v1/series?match[]=up"),
            (&two, "client_id=~\"1|2\"", "/api/v1/labels"),
        ];
        for (values, text, path) in cases {
            let plan = plan("GET", path).unwrap();
            let built = rewrite_url(&plan, &tenant(values, text), options, &fake, false).unwrap();
            // What the backend reads back: the intended parameter, last.
            let forwarded = built.path.as_deref().unwrap().split_once('?').unwrap().1;
            let forwarded = Params::parse(forwarded).unwrap();
            let last = forwarded.pairs().last().unwrap();
            let want = match values.as_slice() {
                [one] => ("extra_label", format!("client_id={one}")),
                _ => ("extra_filters[]", format!("{{{text}}}")),
            };
            assert_eq!((last.name(), last.value()), (want.0, want.1.as_str()));
            // Kept: built on the first request, copied on the next.
            let cell = OnceCell::new();
            let kept = Tenant {
                param: Some(&cell),
                ..tenant(values, text)
            };
            for _ in 0..2 {
                let again = rewrite_url(&plan, &kept, options, &fake, false).unwrap();
                assert_eq!(again, built, "{path}");
            }
            assert!(cell.get().is_some());
        }
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
    fn a_body_counts_only_where_every_go_reads_it_as_a_form() {
        let status = |ct: &str| {
            let path = "/api/v1/label/client_id/values";
            run_typed("POST", path, Some("match[]=up"), ct.as_bytes(), false)
                .map(|r| r.rewritten_params)
                .map_err(|r| (r.status, r.message))
        };
        // Issue #10: Go ignores the body on a repeated parameter; a filter that read it
        // added no selector of its own, and the backend answered for every tenant.
        for ct in [
            "application/x-www-form-urlencoded; a=1; a=2",
            "application/x-www-form-urlencoded; charset=utf-8; CHARSET=latin1",
            // Go 1.19 ignores the body, Go 1.20 and later read it.
            "application/x-www-form-urlencoded; a=1; a=1",
            // Go reads the body, and reports an error.
            "application/x-www-form-urlencoded; charset",
            "application/x-www-form-urlencoded; charset=\"utf-8",
            "application/x-www-form-urlencoded;;",
            // Two Content-Type headers, as Envoy joins them.
            "application/x-www-form-urlencoded; a=1,text/plain",
            "application/x-www-form-urlencoded,application/x-www-form-urlencoded",
            // Go ignores the body.
            "",
            "application/x-www-form-urlencoded/x",
            "\"application/x-www-form-urlencoded\"",
            "multipart/form-data; boundary=x",
            // Go 1.25.0 and 1.19 disagree on braces.
            "application/x-www-form-urlencoded; a={b}",
        ] {
            let (code, message) = status(ct).unwrap_err();
            assert_eq!(code, 415, "{ct:?}: {message}");
            assert!(
                message.contains("application/x-www-form-urlencoded"),
                "{message}"
            );
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "APPLICATION/X-WWW-FORM-URLENCODED ; Charset=\"UTF-8\" ;",
            "application/x-www-form-urlencoded;a=1;b=1",
            "application/x-www-form-urlencoded;\u{a0}charset=utf-8",
        ] {
            assert_eq!(status(ct), Ok(1), "{ct:?}");
        }
        assert!(is_form(Some(
            b"application/x-www-form-urlencoded; charset=utf-8"
        )));
        assert!(!is_form(Some(
            b"application/x-www-form-urlencoded; a=1; a=2"
        )));
        assert!(!is_form(None));
        // The same verdict at header time, when a Content-Length announces a body.
        assert_eq!(
            check_body_headers(
                Some(b"application/x-www-form-urlencoded; a=1; a=2"),
                Some(b"10"),
                100
            )
            .map_err(|r| r.status),
            Err(415)
        );
    }

    #[test]
    fn a_match_alias_alone_also_goes_out_as_match_brackets() {
        // Prometheus reads no `match`: with it alone, every tenant's labels came back.
        // With a `match[]` anywhere, nothing is added. Where a form body follows, the
        // URL half cannot know what it holds: the body half adds them there (Go reads
        // both).
        for (method, path, body, forwarded, forwarded_body) in [
            (
                "GET",
                "/api/v1/labels?match=a&start=1",
                None,
                Some("/api/v1/labels?match=%3Ca%3E&start=1&match%5B%5D=%3Ca%3E"),
                None,
            ),
            (
                "POST",
                "/api/v1/series",
                Some("match=a&match=b"),
                None,
                Some("match=%3Ca%3E&match=%3Cb%3E&match%5B%5D=%3Ca%3E&match%5B%5D=%3Cb%3E"),
            ),
            (
                "POST",
                "/api/v1/series?match=a",
                Some("match=b"),
                Some("/api/v1/series?match=%3Ca%3E"),
                Some("match=%3Cb%3E&match%5B%5D=%3Ca%3E&match%5B%5D=%3Cb%3E"),
            ),
            (
                "POST",
                "/api/v1/series?match=a",
                Some("match[]=b"),
                Some("/api/v1/series?match=%3Ca%3E"),
                Some("match%5B%5D=%3Cb%3E"),
            ),
        ] {
            let r = run(method, path, body, false).unwrap();
            let body_out = r.body.as_deref().map(|b| std::str::from_utf8(b).unwrap());
            assert_eq!(
                (r.path.as_deref(), body_out),
                (forwarded, forwarded_body),
                "{method} {path} {body:?}"
            );
        }
    }

    #[test]
    fn what_go_would_drop_whole_is_refused() {
        let many = |n: usize| vec!["a=1"; n].join("&");
        // The tenant selector the filter appends counts too.
        let at_limit = format!("/api/v1/labels?{}", many(MAX_FORWARDED_PARAMS - 1));
        assert!(run("GET", &at_limit, None, false).is_ok());
        let over = format!("/api/v1/labels?{}", many(MAX_FORWARDED_PARAMS));
        let r = run("GET", &over, None, false).unwrap_err();
        assert_eq!((r.status, r.error_type), (400, ErrorType::BadData));
        assert!(r.message.contains("too many parameters"), "{}", r.message);
        let body = format!("match[]=x&{}", many(MAX_FORWARDED_PARAMS));
        let r = run("POST", "/api/v1/labels", Some(&body), false).unwrap_err();
        assert_eq!(r.status, 400);
        // Go's ParseForm ignores a form body over 10 MiB: a body the rewrite grows past
        // that is refused, one that stays at it passes (the stand-in adds `%3C` `%3E`).
        let fits = format!("query={}", "a".repeat(GO_MAX_FORM_BYTES - 12));
        let r = run("POST", "/api/v1/query", Some(&fits), false).unwrap();
        assert_eq!(r.body.map(|b| b.len()), Some(GO_MAX_FORM_BYTES));
        let grows = format!("query={}", "a".repeat(GO_MAX_FORM_BYTES - 11));
        let r = run("POST", "/api/v1/query", Some(&grows), false).unwrap_err();
        assert_eq!(r.status, 413);
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
            (Refusal::unsupported_media_type("x"), 415, "bad_data"),
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
        let v: serde_json::Value = serde_json::from_str(METADATA_ANSWER).unwrap();
        assert_eq!(v["status"], "success");
    }

    proptest::proptest! {
        #[test]
        fn planning_never_panics(method in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
                                 path in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = plan_request(&method, &path, Backend::VictoriaMetrics, Writes::VictoriaMetrics);
        }

        /// The one-pass check for plain paths agrees with the full checks on every path,
        /// plain or hostile: the same path, or the same refusal.
        #[test]
        fn the_plain_path_shortcut_agrees_with_the_full_checks(
            path in "[/a-zA-Z0-9%./;_+\\\\ \\x00-\\x1f\\x7f\u{80}-\u{a0}é]{0,24}",
        ) {
            let full = canonical_path_checked(&path).map_err(|r| r.body());
            let shortcut = canonical_path(&path).map(Cow::into_owned).map_err(|r| r.body());
            proptest::prop_assert_eq!(shortcut, full);
        }

        /// The same, on paths made of segments, where `//`, `.` and `..` are likely.
        #[test]
        fn the_plain_path_shortcut_agrees_on_segments(path in "(/[a-z.]{0,3}){0,6}") {
            let full = canonical_path_checked(&path).map_err(|r| r.body());
            let shortcut = canonical_path(&path).map(Cow::into_owned).map_err(|r| r.body());
            proptest::prop_assert_eq!(shortcut, full);
        }

        #[test]
        fn allowed_paths_are_canonical(path in "/[a-z0-9%./;_\\\\]{0,40}") {
            let writes = if path.len() % 2 == 0 { Writes::Deny } else { Writes::VictoriaMetrics };
            let method: &[u8] = if writes == Writes::Deny { b"GET" } else { b"POST" };
            if let Ok(plan) = plan_request(method, path.as_bytes(), Backend::Prometheus, writes) {
                let decoded = crate::form::decode(plan.raw_path(), 0).unwrap();
                proptest::prop_assert!(!decoded.contains("//"));
                proptest::prop_assert!(!decoded.split('/').any(|s| s == ".." || s == "."));
                proptest::prop_assert!(!plan.raw_path().contains(';'));
            }
        }

        #[test]
        fn rewriting_never_panics(query in "\\PC{0,60}", body in "\\PC{0,60}") {
            let values = vec!["1".to_string()];
            let t = tenant(&values, "client_id=\"1\"");
            for path in ["/api/v1/query", "/api/v1/series", "/api/v1/status/buildinfo"] {
                let p = Plan::new(plan("GET", path).unwrap().action, path, &query, true);
                let _ = rewrite_request(&p, Some(body.as_bytes()), Some(b"application/x-www-form-urlencoded"), &t,
                    RewriteOptions { victoriametrics_extra_label: true }, &fake);
            }
        }
    }
}
