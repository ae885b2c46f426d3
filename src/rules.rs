//! Rules and alerts, per tenant: what the filter asks the rule engine for on
//! `/api/v1/rules` and `/api/v1/alerts`, and what it lets through of the answer.
//!
//! The request side ([`upstream_request`]) reads the parameters Prometheus 2.x/3.x and
//! vmalert accept there and keeps them for the filter to apply itself, so that every
//! engine version answers alike; only the tenant-confined `match[]` is forwarded. Both
//! views ask the engine for `/api/v1/rules`: an alert is shown only as part of a rule
//! the caller may see, which `/api/v1/alerts` alone could not tell (its alerts do not
//! say which rule made them).
//!
//! The response side ([`ResponseFilter`]) reads the engine's JSON, keeps a rule only if
//! its labels carry one of the caller's tenants *and* every series selector of its
//! expression is confined to that tenant with `=`, keeps only the alerts that carry the
//! caller's tenant, drops the groups left empty, and rebuilds the answer from an
//! allowlist of the fields Prometheus documents (and Grafana parses): nothing the engine
//! adds (vmalert's source links, request headers or parameters of a group, paging
//! totals) passes. Whatever is not in that shape is left out; an answer that is not
//! JSON of that shape, too large, or compressed is refused, never passed on.

use crate::api::{ErrorType, Plan, Refusal};
use crate::form::Params;
use crate::promql::ast::MatchOp;
use crate::promql::inject::unconfinable_call;
use crate::Dialect;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Which of the two endpoints the caller asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleView {
    /// `/api/v1/rules`: `data.groups[].rules[]`, alerts inside alerting rules.
    Rules,
    /// `/api/v1/alerts`: `data.alerts[]`.
    Alerts,
}

/// `type=alert` or `type=record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Alerting,
    Recording,
}

/// The caller's own narrowing of the answer, applied by the filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSelection {
    /// `type`: only alerting or only recording rules.
    pub kind: Option<RuleKind>,
    /// `rule_name[]`: rules with one of these names (none: any).
    pub rule_names: Vec<String>,
    /// `rule_group[]`: groups with one of these names (none: any).
    pub groups: Vec<String>,
    /// `file[]`: groups from one of these files (none: any).
    pub files: Vec<String>,
    /// `exclude_alerts`: alerting rules without their alerts.
    pub exclude_alerts: bool,
}

/// Request headers the filter removes on these endpoints: the engines compress their
/// answer when asked to, and the filter can only read (and so only pass) plain JSON.
pub const UPSTREAM_HEADERS_TO_REMOVE: &[&str] = &["accept-encoding"];

/// Deepest JSON nesting read from an engine. A rules answer nests 9 levels; the bound
/// keeps serde_json's recursion (and `Value`'s recursive drop) far from the Wasm VM's
/// stack limit whatever the engine sends.
pub const MAX_JSON_DEPTH: usize = 32;

/// Longest engine error message passed on to the caller.
const MAX_ERROR_MESSAGE: usize = 512;

/// The request the engine gets for `plan` and what the filter applies itself.
///
/// The returned plan asks for `/api/v1/rules` (under the same prefix) with only the
/// client's `match[]` pairs (the caller rewrites them as any `match[]`) and, for the
/// alerts view, `type=alert`. Every other parameter is either read into the selection
/// or dropped: `group_limit`/`group_next_token`, vmalert's `page_num`, `search`,
/// `state`, `datasource_type`... A caller asking for a page gets the whole (filtered)
/// answer, without a `groupNextToken`, which clients read as the last page.
pub fn upstream_request(plan: &Plan, view: RuleView) -> Result<(Plan, RuleSelection), Refusal> {
    let mut params = Params::parse(plan.raw_query())
        .map_err(|e| Refusal::bad_request(format!("invalid query string: {e}")))?;
    let mut selection = selection_from(&params)?;
    if view == RuleView::Alerts {
        selection.kind = Some(RuleKind::Alerting);
        selection.exclude_alerts = false;
    }
    let others: Vec<String> = params
        .pairs()
        .iter()
        .map(|p| p.name().to_string())
        .filter(|name| name != "match[]")
        .collect();
    params.remove_all(&others.iter().map(String::as_str).collect::<Vec<_>>());
    if view == RuleView::Alerts {
        params.push("type", "alert");
    }
    let raw_path = match view {
        RuleView::Rules => Cow::Borrowed(plan.raw_path()),
        RuleView::Alerts => Cow::Owned(rules_path_for(plan.raw_path())),
    };
    let upstream = Plan::new(plan.action, &raw_path, &params.encode(), plan.reads_body);
    Ok((upstream, selection))
}

/// `/api/v1/alerts` → `/api/v1/rules`, keeping whatever prefix (and spelling of the
/// prefix) the client used: the planner accepted the decoded path as an alerts path.
fn rules_path_for(raw_alerts_path: &str) -> String {
    let prefix = match raw_alerts_path.rfind("/api/v1/") {
        Some(at) => &raw_alerts_path[..at],
        None => "",
    };
    format!("{prefix}/api/v1/rules")
}

/// Reads the parameters as Prometheus does: `type` and `exclude_alerts` from their
/// first value, the lists from every value.
fn selection_from(params: &Params) -> Result<RuleSelection, Refusal> {
    let first = |name: &str| {
        params
            .pairs()
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.value().to_ascii_lowercase())
    };
    let all = |name: &str| -> Vec<String> {
        params
            .pairs()
            .iter()
            .filter(|p| p.name() == name)
            .map(|p| p.value().to_string())
            .collect()
    };
    let kind = match first("type").as_deref() {
        None | Some("") => None,
        Some("alert") => Some(RuleKind::Alerting),
        Some("record") => Some(RuleKind::Recording),
        Some(other) => {
            return Err(Refusal::bad_request(format!(
                "invalid parameter \"type\": not supported value {other:?}"
            )))
        }
    };
    // Go's strconv.ParseBool, after Prometheus lowercases the value.
    let exclude_alerts = match first("exclude_alerts").as_deref() {
        None | Some("") | Some("0") | Some("f") | Some("false") => false,
        Some("1") | Some("t") | Some("true") => true,
        Some(other) => {
            return Err(Refusal::bad_request(format!(
                "invalid parameter \"exclude_alerts\": not a boolean: {other:?}"
            )))
        }
    };
    Ok(RuleSelection {
        kind,
        rule_names: all("rule_name[]"),
        groups: all("rule_group[]"),
        files: all("file[]"),
        exclude_alerts,
    })
}

/// How the filter reads one engine answer for one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFilter {
    pub view: RuleView,
    pub selection: RuleSelection,
    /// The tenant label, e.g. `client_id`.
    pub tenant_label: String,
    /// The caller's tenants (at least one).
    pub tenants: Vec<String>,
    /// How the engine reads rule expressions: MetricsQL for vmalert, PromQL for
    /// Prometheus.
    pub dialect: Dialect,
    /// Largest answer the filter reads (`max_response_bytes`).
    pub max_bytes: usize,
}

impl ResponseFilter {
    /// Early checks from the engine's response headers: a compressed answer or one
    /// announced larger than the bound is refused before its body is buffered.
    pub fn check_headers(
        &self,
        content_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        let identity = content_encoding.is_none_or(|v| {
            let v = v.trim_ascii();
            v.is_empty() || v.eq_ignore_ascii_case(b"identity")
        });
        if !identity {
            return Err(Refusal::upstream(
                502,
                ErrorType::Internal,
                "the rule engine answered compressed, which the filter cannot read",
            ));
        }
        let length = content_length
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|length| length > self.max_bytes as u64) {
            return Err(self.too_large());
        }
        Ok(())
    }

    /// The refusal for an answer over `max_bytes`.
    pub fn too_large(&self) -> Refusal {
        Refusal::upstream(
            502,
            ErrorType::Internal,
            format!(
                "the rule engine's answer is larger than max_response_bytes ({} bytes)",
                self.max_bytes
            ),
        )
    }

    /// The body the caller gets for the engine's complete answer (`status`, `body`):
    /// the filtered JSON for a 200, a refusal otherwise.
    pub fn filter(&self, status: u16, body: &[u8]) -> Result<Vec<u8>, Refusal> {
        if body.len() > self.max_bytes {
            return Err(self.too_large());
        }
        if status != 200 {
            return Err(engine_error(status, body));
        }
        let unreadable = |why: &str| {
            Refusal::upstream(
                502,
                ErrorType::Internal,
                format!("the rule engine's answer could not be read: {why}"),
            )
        };
        if json_depth_exceeds(body, MAX_JSON_DEPTH) {
            return Err(unreadable("nested too deeply"));
        }
        let answer: Value =
            serde_json::from_slice(body).map_err(|_| unreadable("not valid JSON"))?;
        if answer.get("status").and_then(Value::as_str) != Some("success") {
            return Err(unreadable("its status is not \"success\""));
        }
        let groups = match answer.get("data").and_then(|d| d.get("groups")) {
            Some(Value::Array(groups)) => groups.as_slice(),
            // vmalert 1.79 answers `"groups": null` when it has none.
            Some(Value::Null) => &[],
            _ => return Err(unreadable("it has no data.groups list")),
        };
        let kept = self.filter_groups(groups);
        let data = match self.view {
            RuleView::Rules => {
                let groups: Vec<Value> = kept.into_iter().map(Value::Object).collect();
                serde_json::json!({ "groups": groups })
            }
            RuleView::Alerts => {
                let alerts: Vec<Value> = kept
                    .into_iter()
                    .filter_map(|mut group| group.remove("rules"))
                    .filter_map(|rules| match rules {
                        Value::Array(rules) => Some(rules),
                        _ => None,
                    })
                    .flatten()
                    .filter_map(|mut rule| rule.get_mut("alerts").map(Value::take))
                    .filter_map(|alerts| match alerts {
                        Value::Array(alerts) => Some(alerts),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                serde_json::json!({ "alerts": alerts })
            }
        };
        let out = serde_json::json!({ "status": "success", "data": data });
        Ok(out.to_string().into_bytes())
    }

    /// The groups the caller may see, each with only the rules it may see.
    fn filter_groups(&self, groups: &[Value]) -> Vec<Map<String, Value>> {
        let mut kept = Vec::new();
        for group in groups {
            let Some(group) = group.as_object() else {
                continue;
            };
            let name = group.get("name").and_then(Value::as_str).unwrap_or("");
            let file = group.get("file").and_then(Value::as_str).unwrap_or("");
            if !listed(&self.selection.groups, name) || !listed(&self.selection.files, file) {
                continue;
            }
            let Some(rules) = group.get("rules").and_then(Value::as_array) else {
                continue;
            };
            let rules: Vec<Value> = rules
                .iter()
                .filter_map(|rule| self.filter_rule(rule))
                .map(Value::Object)
                .collect();
            if rules.is_empty() {
                continue;
            }
            let mut out = copy_fields(group, GROUP_FIELDS);
            out.insert("rules".into(), Value::Array(rules));
            kept.push(out);
        }
        kept
    }

    /// The rule as the caller may see it, or `None` when it is not the caller's.
    fn filter_rule(&self, rule: &Value) -> Option<Map<String, Value>> {
        let rule = rule.as_object()?;
        let kind = match rule.get("type").and_then(Value::as_str) {
            Some("alerting") => RuleKind::Alerting,
            Some("recording") => RuleKind::Recording,
            _ => return None,
        };
        if self.selection.kind.is_some_and(|wanted| wanted != kind) {
            return None;
        }
        let name = rule.get("name").and_then(Value::as_str).unwrap_or("");
        if !listed(&self.selection.rule_names, name) {
            return None;
        }
        let tenant = self.tenant_of(rule.get("labels"))?;
        let query = rule.get("query").and_then(Value::as_str)?;
        if !confined_to(query, &self.tenant_label, tenant, self.dialect) {
            return None;
        }
        if kind == RuleKind::Recording {
            return Some(copy_fields(rule, RECORDING_RULE_FIELDS));
        }
        let mut out = copy_fields(rule, ALERTING_RULE_FIELDS);
        let upstream_alerts = rule.get("alerts").and_then(Value::as_array);
        let alerts: Vec<Value> = upstream_alerts
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .filter(|alert| self.tenant_of(alert.get("labels")).is_some())
            .map(|alert| Value::Object(copy_fields(alert, ALERT_FIELDS)))
            .collect();
        // Alerts dropped here change what the rule's state summarises.
        if alerts.len() != upstream_alerts.map_or(0, Vec::len) {
            out.insert("state".into(), Value::from(state_of(&alerts)));
        }
        let alerts = if self.selection.exclude_alerts {
            Vec::new()
        } else {
            alerts
        };
        out.insert("alerts".into(), Value::Array(alerts));
        Some(out)
    }

    /// The caller's tenant that `labels` carry, if they carry one.
    fn tenant_of<'v>(&self, labels: Option<&'v Value>) -> Option<&'v str> {
        let value = labels?.get(&self.tenant_label)?.as_str()?;
        self.tenants.iter().any(|t| t == value).then_some(value)
    }
}

/// True when `wanted` is empty (no narrowing) or lists `value`.
fn listed(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w == value)
}

/// The fields Prometheus documents for each object, the only ones passed on.
const GROUP_FIELDS: &[&str] = &[
    "name",
    "file",
    "interval",
    "limit",
    "evaluationTime",
    "lastEvaluation",
];
const ALERTING_RULE_FIELDS: &[&str] = &[
    "state",
    "name",
    "query",
    "duration",
    "keepFiringFor",
    "labels",
    "annotations",
    "health",
    "lastError",
    "evaluationTime",
    "lastEvaluation",
    "type",
];
const RECORDING_RULE_FIELDS: &[&str] = &[
    "name",
    "query",
    "labels",
    "health",
    "lastError",
    "evaluationTime",
    "lastEvaluation",
    "type",
];
const ALERT_FIELDS: &[&str] = &[
    "labels",
    "annotations",
    "state",
    "activeAt",
    "keepFiringSince",
    "value",
];

fn copy_fields(from: &Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|&field| Some((field.to_string(), from.get(field)?.clone())))
        .collect()
}

/// An alerting rule's state from its alerts, as Prometheus derives it.
fn state_of(alerts: &[Value]) -> &'static str {
    let has = |state: &str| {
        alerts
            .iter()
            .any(|a| a.get("state").and_then(Value::as_str) == Some(state))
    };
    if has("firing") {
        "firing"
    } else if has("pending") {
        "pending"
    } else {
        "inactive"
    }
}

/// True when `query` reads only series of `tenant`: it parses, calls no function that
/// reads series no selector names, and every selector (every `or` branch of a MetricsQL
/// one) has the matcher `label="tenant"`. A bare metric name, a regular expression or a
/// negative matcher on the tenant label does not count: a rule labelled for one tenant
/// that reads others would show them its values.
pub fn confined_to(query: &str, label: &str, tenant: &str, dialect: Dialect) -> bool {
    let Ok(expr) = crate::parse(query, dialect) else {
        return false;
    };
    if unconfinable_call(&expr).is_some() {
        return false;
    }
    let mut confined = true;
    expr.for_each_selector(&mut |selector| {
        confined &= !selector.groups.is_empty()
            && selector.groups.iter().all(|group| {
                group.matchers.iter().any(|m| {
                    !m.name_only && m.op == MatchOp::Equal && m.label == label && m.value == tenant
                })
            });
    });
    confined
}

/// The caller's refusal for an engine answer other than 200: the engine's own error, if
/// it is in Prometheus' shape (its type mapped, its message bounded), else a plain one.
/// The status the caller gets for an engine's answer with `status`: 200 for a 200 (its
/// body filtered), the engine's own for its errors, 502 for anything else.
pub fn answer_status(status: u16) -> u16 {
    match status {
        200 | 400..=599 => status,
        _ => 502,
    }
}

fn engine_error(status: u16, body: &[u8]) -> Refusal {
    let status = match answer_status(status) {
        200 => 502,
        status => status,
    };
    let parsed = (!json_depth_exceeds(body, MAX_JSON_DEPTH))
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
    };
    match (field("status"), field("errorType"), field("error")) {
        (Some("error"), Some(error_type), Some(message)) => {
            let error_type = match error_type {
                "bad_data" => ErrorType::BadData,
                "unavailable" => ErrorType::Unavailable,
                _ => ErrorType::Internal,
            };
            let mut end = message.len().min(MAX_ERROR_MESSAGE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            Refusal::upstream(
                status,
                error_type,
                format!("rule engine: {}", &message[..end]),
            )
        }
        _ => Refusal::upstream(
            status,
            if status < 500 {
                ErrorType::BadData
            } else {
                ErrorType::Unavailable
            },
            format!("the rule engine answered HTTP {status}"),
        ),
    }
}

/// True when the JSON text nests arrays and objects deeper than `max`. A byte scan
/// that skips strings; it does not validate, the parser does that afterwards.
pub fn json_depth_exceeds(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
