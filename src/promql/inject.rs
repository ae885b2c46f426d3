//! Tenant injection: add the tenant matcher to every series selector of a query.

use super::ast::{ExprKind, MatchOp, Selector};
use super::strings::{is_legacy_label_name, quote_meta, write_quoted};
use super::{lexer, parse_lexed, Dialect, ParseError};
use std::borrow::Cow;
use std::fmt;

/// What to do with a selector that already has matchers on the tenant label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Keep the user's matchers and add ours (matchers AND, so this is always safe).
    #[default]
    And,
    /// Drop the user's matchers on the tenant label, then add ours.
    Replace,
    /// Refuse the query when a user matcher on the tenant label differs from ours.
    Reject,
}

impl std::str::FromStr for ConflictPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "and" => Ok(ConflictPolicy::And),
            "replace" => Ok(ConflictPolicy::Replace),
            "reject" => Ok(ConflictPolicy::Reject),
            other => Err(format!(
                "unknown conflict policy {other:?}, expected \"and\", \"replace\" or \"reject\""
            )),
        }
    }
}

/// A tenant label and its values, with the matcher text rendered once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMatcher {
    label: String,
    values: Vec<String>,
    text: String,
    /// Where the operator starts in `text`, after the label.
    op_at: usize,
}

/// A tenant that cannot be expressed as a matcher (no values, empty label...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenant(pub String);

impl fmt::Display for InvalidTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidTenant {}

impl TenantMatcher {
    /// Builds the matcher: `label="v"` for one value, `label=~"v1|v2"` for several.
    ///
    /// An empty value is refused: `label=""` would also match series that lack the
    /// label altogether, which is exactly the data a tenant must not see.
    pub fn new<S: AsRef<str>>(label: &str, values: &[S]) -> Result<Self, InvalidTenant> {
        if label.is_empty() {
            return Err(InvalidTenant("the tenant label name is empty".into()));
        }
        if label == "__name__" {
            return Err(InvalidTenant("the tenant label cannot be __name__".into()));
        }
        let mut unique: Vec<String> = Vec::with_capacity(values.len());
        for v in values {
            let v = v.as_ref();
            if v.is_empty() {
                return Err(InvalidTenant("a tenant value is empty".into()));
            }
            if !unique.iter().any(|u| u == v) {
                unique.push(v.to_string());
            }
        }
        if unique.is_empty() {
            return Err(InvalidTenant("no tenant value".into()));
        }
        // The label is written as PromQL writes it; `text_for` rewrites it for MetricsQL.
        let mut text = String::with_capacity(
            label.len() + 8 + unique.iter().map(|v| v.len() + 1).sum::<usize>(),
        );
        if is_legacy_label_name(label) {
            text.push_str(label);
        } else {
            write_quoted(&mut text, label);
        }
        let op_at = text.len();
        if let [only] = unique.as_slice() {
            text.push('=');
            write_quoted(&mut text, only);
        } else {
            text.push_str("=~");
            write_quoted(&mut text, &regex_alternatives(&unique));
        }
        Ok(TenantMatcher {
            label: label.to_string(),
            values: unique,
            text,
            op_at,
        })
    }
    /// The tenant label name.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The tenant values, in the order given.
    pub fn values(&self) -> &[String] {
        &self.values
    }
    /// The matcher as PromQL text, e.g. `client_id="1999"` or `"tenant.id"=~"a|b"`.
    pub fn matcher_text(&self) -> &str {
        &self.text
    }

    /// The matcher as the dialect writes it. MetricsQL (VictoriaMetrics 1.79) has no
    /// quoted label names but takes `.` and `:` in bare ones (`tenant.id="1999"`); a
    /// label it cannot spell makes every query fail to rewrite, loudly.
    pub fn text_for(&self, dialect: Dialect) -> Result<Cow<'_, str>, RewriteError> {
        if dialect == Dialect::Metricsql && !self.metricsql_spells_label() {
            return Err(RewriteError::Parse(ParseError::at(
                "",
                0,
                format!(
                    "the tenant label {:?} cannot be written in MetricsQL, which has no quoted label names",
                    self.label
                ),
            )));
        }
        Ok(self.matcher_text_for(dialect))
    }

    /// The matcher for selectors the filter adds itself (`match[]`, `extra_filters[]`):
    /// as [`TenantMatcher::text_for`], but a label MetricsQL cannot spell stays quoted
    /// (VictoriaMetrics then refuses the request: it fails closed).
    pub fn matcher_text_for(&self, dialect: Dialect) -> Cow<'_, str> {
        if dialect == Dialect::Promql
            || is_legacy_label_name(&self.label)
            || !self.metricsql_spells_label()
        {
            return Cow::Borrowed(&self.text);
        }
        Cow::Owned(format!("{}{}", self.label, &self.text[self.op_at..]))
    }

    /// Whether metricsql reads the label as a bare name: `[a-zA-Z_][a-zA-Z0-9_.:]*`.
    fn metricsql_spells_label(&self) -> bool {
        let mut chars = self.label.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':'))
    }

    /// The regular expression matching exactly the tenant values (`a|b`, metacharacters escaped).
    pub fn values_regex(&self) -> String {
        regex_alternatives(&self.values)
    }

    /// Whether a user's own matcher on the tenant label asks for nothing beyond ours.
    fn allows(&self, op: MatchOp, value: &str) -> bool {
        match op {
            MatchOp::Equal => self.values.iter().any(|v| v == value),
            MatchOp::Regex => value == self.values_regex(),
            MatchOp::NotEqual | MatchOp::NotRegex => false,
        }
    }
}

fn regex_alternatives(values: &[String]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(&quote_meta(v));
    }
    out
}

/// Why a query was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// The query does not parse (or fails the type checks).
    Parse(ParseError),
    /// Policy `reject`: the query has its own matcher on the tenant label.
    Conflict(String),
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::Parse(e) => e.fmt(f),
            RewriteError::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RewriteError {}

/// Rewrites `query` so that every series selector carries the tenant matcher.
///
/// The output equals the input byte for byte except for the inserted matcher text
/// (and, with [`ConflictPolicy::Replace`], the removed user matchers).
pub fn rewrite(
    query: &str,
    tenant: &TenantMatcher,
    policy: ConflictPolicy,
    dialect: Dialect,
) -> Result<String, RewriteError> {
    let tokens = lexer::lex(query, dialect).map_err(RewriteError::Parse)?;
    let expr = parse_lexed(query, tokens, dialect).map_err(RewriteError::Parse)?;
    // One walk finds an unconfinable call and plans every selector's edit.
    let matcher = tenant.text_for(dialect);
    let mut info_at = None;
    let mut edits: Vec<Edit> = Vec::new();
    let mut conflict = None;
    expr.for_each_node(&mut |node| match &node.kind {
        ExprKind::Call(call) if info_at.is_none() && is_unconfinable(call) => {
            info_at = Some(node.span.start);
        }
        ExprKind::Selector(sel) => {
            if let (Ok(matcher), None) = (&matcher, &conflict) {
                if let Err(e) = plan_selector(sel, tenant, matcher, policy, &mut edits) {
                    conflict = Some(e);
                }
            }
        }
        _ => {}
    });
    if let Some(at) = info_at {
        return Err(RewriteError::Parse(ParseError::at(
            query,
            at,
            "info() without a data-label selector joins in info series of every tenant and \
             cannot be confined: name the data labels, e.g. info(v, {k8s_cluster_name=~\".+\"})",
        )));
    }
    // Not `matcher?`, which would move the matcher text that the edits borrow.
    #[allow(clippy::question_mark)]
    if let Err(e) = matcher {
        return Err(e);
    }
    if let Some(e) = conflict {
        return Err(e);
    }
    Ok(apply_edits(query, &mut edits))
}

/// Where the query calls a function that reads series no selector names, if it does.
///
/// Prometheus' `info(v)` selects `target_info` series by the identifying labels
/// (`instance`, `job`) of `v`'s series alone, so another tenant's info series with the
/// same instance and job would lend its labels to ours. With a second argument, every
/// matcher of that selector (ours included) takes part in selecting the info series.
pub(crate) fn unconfinable_call(expr: &super::ast::Expr<'_>) -> Option<usize> {
    let mut found = None;
    expr.for_each_node(&mut |node| {
        if let ExprKind::Call(call) = &node.kind {
            if found.is_none() && is_unconfinable(call) {
                found = Some(node.span.start);
            }
        }
    });
    found
}

/// `info()` with no data-label selector (see [`unconfinable_call`]).
fn is_unconfinable(call: &super::ast::Call<'_>) -> bool {
    call.aggregation.is_none() && call.name == "info" && call.args.len() < 2
}

/// Replace `start..end` of the input with `text` (an insertion when empty, a deletion when `text` is).
/// Replaces `start..end` of the query with the concatenated pieces (no allocation per
/// selector: the pieces are punctuation and the tenant's matcher).
struct Edit<'m> {
    start: usize,
    end: usize,
    text: [&'m str; 3],
}

fn plan_selector<'m>(
    sel: &Selector<'_>,
    tenant: &TenantMatcher,
    matcher: &'m str,
    policy: ConflictPolicy,
    edits: &mut Vec<Edit<'m>>,
) -> Result<(), RewriteError> {
    let Some(_) = &sel.braces else {
        // A bare metric name: `foo` becomes `foo{label="v"}`.
        if let Some((_, name_span)) = &sel.name {
            edits.push(Edit {
                start: name_span.end,
                end: name_span.end,
                text: ["{", matcher, "}"],
            });
        }
        return Ok(());
    };
    for group in &sel.groups {
        let on_tenant_label =
            |m: &&super::ast::Matcher<'_>| !m.name_only && m.label == tenant.label;
        let mut remaining = group.matchers.len();
        let mut last_remaining_has_comma = group.ends_with_comma;
        match policy {
            ConflictPolicy::And => {}
            ConflictPolicy::Reject => {
                if let Some(m) = group
                    .matchers
                    .iter()
                    .filter(on_tenant_label)
                    .find(|m| !tenant.allows(m.op, &m.value))
                {
                    return Err(RewriteError::Conflict(format!(
                        "the query selects its own {:?} matcher on the tenant label {:?}, which this tenant may not use",
                        m.value, tenant.label
                    )));
                }
            }
            ConflictPolicy::Replace => {
                last_remaining_has_comma = false;
                for (i, m) in group.matchers.iter().enumerate() {
                    if !on_tenant_label(&m) {
                        last_remaining_has_comma = m.comma.is_some();
                        continue;
                    }
                    remaining -= 1;
                    // Take the matcher with its comma and the blanks up to the next
                    // matcher; a last matcher without a comma goes alone, leaving the
                    // comma before it to separate the matcher we add.
                    let end = match (&m.comma, group.matchers.get(i + 1)) {
                        (Some(_), Some(next)) => next.span.start,
                        (Some(comma), None) => comma.end,
                        (None, _) => m.span.end,
                    };
                    edits.push(Edit {
                        start: m.span.start,
                        end,
                        text: [""; 3],
                    });
                }
            }
        }
        let comma = if remaining > 0 && !last_remaining_has_comma {
            ","
        } else {
            ""
        };
        edits.push(Edit {
            start: group.insert_at,
            end: group.insert_at,
            text: [comma, matcher, ""],
        });
    }
    Ok(())
}

fn apply_edits(src: &str, edits: &mut [Edit<'_>]) -> String {
    edits.sort_by_key(|e| (e.start, e.end));
    let added: usize = edits.iter().flat_map(|e| e.text).map(str::len).sum();
    let mut out = String::with_capacity(src.len() + added);
    let mut cursor = 0;
    for e in edits.iter() {
        let start = e.start.max(cursor);
        out.push_str(&src[cursor..start]);
        for piece in e.text {
            out.push_str(piece);
        }
        cursor = cursor.max(e.end);
    }
    out.push_str(&src[cursor..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(
        q: &str,
        values: &[&str],
        policy: ConflictPolicy,
        dialect: Dialect,
    ) -> Result<String, RewriteError> {
        rewrite(
            q,
            &TenantMatcher::new("client_id", values).unwrap(),
            policy,
            dialect,
        )
    }

    fn ok(q: &str) -> String {
        rw(q, &["1999"], ConflictPolicy::And, Dialect::Promql).unwrap()
    }

    #[test]
    fn issue_examples() {
        assert_eq!(ok("foo"), r#"foo{client_id="1999"}"#);
        assert_eq!(ok(r#"foo{a="b"}"#), r#"foo{a="b",client_id="1999"}"#);
        assert_eq!(
            ok(r#"{__name__="foo"}[5m]"#),
            r#"{__name__="foo",client_id="1999"}[5m]"#
        );
        // A range vector on the right of `and`: VictoriaMetrics answers it, Prometheus
        // refuses it, and so do the dialects.
        let long = r#"max_over_time(deriv(rate(distance_covered_total[5s])[30s:5s])[10m:])and http_requests_total{status_code=~"2.*"}[50h]"#;
        assert_eq!(
            rw(long, &["1999"], ConflictPolicy::And, Dialect::Metricsql).unwrap(),
            r#"max_over_time(deriv(rate(distance_covered_total{client_id="1999"}[5s])[30s:5s])[10m:])and http_requests_total{status_code=~"2.*",client_id="1999"}[50h]"#
        );
        assert!(rw(long, &["1999"], ConflictPolicy::And, Dialect::Promql).is_err());
    }

    #[test]
    fn comma_rules() {
        assert_eq!(ok(r#"foo{a="b",}"#), r#"foo{a="b",client_id="1999"}"#);
        assert_eq!(ok(r#"foo{a="b" }"#), r#"foo{a="b" ,client_id="1999"}"#);
        assert_eq!(ok(r#"foo{a="b", }"#), r#"foo{a="b", client_id="1999"}"#);
        assert_eq!(ok("foo{}"), r#"foo{client_id="1999"}"#);
        assert_eq!(
            ok("foo{a=\"b\" # c,\n}"),
            "foo{a=\"b\" # c,\n,client_id=\"1999\"}"
        );
    }

    #[test]
    fn no_selector_is_unchanged() {
        assert_eq!(ok("1+1"), "1+1");
        assert_eq!(ok("time()"), "time()");
    }

    #[test]
    fn several_values_and_hostile_ones() {
        assert_eq!(
            rw("foo", &["a.b", "c|d"], ConflictPolicy::And, Dialect::Promql).unwrap(),
            r#"foo{client_id=~"a\\.b|c\\|d"}"#
        );
        assert_eq!(
            rw(
                "foo",
                &["1999\"} or vector(1) #"],
                ConflictPolicy::And,
                Dialect::Promql
            )
            .unwrap(),
            r#"foo{client_id="1999\"} or vector(1) #"}"#
        );
        let quoted = TenantMatcher::new("tenant.id", &["x"]).unwrap();
        assert_eq!(quoted.matcher_text(), r#""tenant.id"="x""#);
        // MetricsQL has no quoted label names, but reads dotted ones bare.
        assert_eq!(
            quoted.text_for(Dialect::Metricsql).unwrap(),
            r#"tenant.id="x""#
        );
        assert_eq!(
            rewrite("foo", &quoted, ConflictPolicy::And, Dialect::Metricsql).unwrap(),
            r#"foo{tenant.id="x"}"#
        );
        let unspellable = TenantMatcher::new("a-b", &["x"]).unwrap();
        assert!(rewrite("foo", &unspellable, ConflictPolicy::And, Dialect::Metricsql).is_err());
        assert_eq!(
            rewrite("foo", &unspellable, ConflictPolicy::And, Dialect::Promql).unwrap(),
            r#"foo{"a-b"="x"}"#
        );
        assert!(TenantMatcher::new("client_id", &[""]).is_err());
        assert!(TenantMatcher::new("client_id", &[] as &[&str]).is_err());
    }

    #[test]
    fn conflict_policies() {
        let q = r#"foo{client_id="2000", a="b"}"#;
        assert_eq!(
            rw(q, &["1999"], ConflictPolicy::And, Dialect::Promql).unwrap(),
            r#"foo{client_id="2000", a="b",client_id="1999"}"#
        );
        assert_eq!(
            rw(q, &["1999"], ConflictPolicy::Replace, Dialect::Promql).unwrap(),
            r#"foo{a="b",client_id="1999"}"#
        );
        assert!(matches!(
            rw(q, &["1999"], ConflictPolicy::Reject, Dialect::Promql),
            Err(RewriteError::Conflict(_))
        ));
        assert_eq!(
            rw(
                r#"foo{client_id="1999"}"#,
                &["1999"],
                ConflictPolicy::Reject,
                Dialect::Promql
            )
            .unwrap(),
            r#"foo{client_id="1999",client_id="1999"}"#
        );
        assert_eq!(
            rw(
                r#"foo{a="b", client_id="x"}"#,
                &["1"],
                ConflictPolicy::Replace,
                Dialect::Promql
            )
            .unwrap(),
            r#"foo{a="b", client_id="1"}"#
        );
        assert_eq!(
            rw(
                r#"foo{client_id="x"}"#,
                &["1"],
                ConflictPolicy::Replace,
                Dialect::Promql
            )
            .unwrap(),
            r#"foo{client_id="1"}"#
        );
        assert_eq!(
            rw(
                r#"foo{client_id="x",}"#,
                &["1"],
                ConflictPolicy::Replace,
                Dialect::Promql
            )
            .unwrap(),
            r#"foo{client_id="1"}"#
        );
    }

    #[test]
    fn metricsql_or_filters_get_the_matcher_in_every_branch() {
        assert_eq!(
            rw(
                r#"foo{a="b" or c="d"}"#,
                &["1999"],
                ConflictPolicy::And,
                Dialect::Metricsql
            )
            .unwrap(),
            r#"foo{a="b",client_id="1999" or c="d",client_id="1999"}"#
        );
        assert_eq!(
            rw(
                "rate(x) default 0",
                &["1"],
                ConflictPolicy::And,
                Dialect::Metricsql
            )
            .unwrap(),
            r#"rate(x{client_id="1"}) default 0"#
        );
    }
}
