//! The filter's reading of a form held up against Go's: each function returns the first
//! disagreement, or `Ok` when Go reads what the filter reads.

use super::client::{GoOracle, GoString, HandlerView};
use promql_tenant_filter::api::Action;
use promql_tenant_filter::form::Params;
use promql_tenant_filter::mediatype;

fn text(value: &GoString) -> String {
    String::from_utf8_lossy(&value.bytes()).into_owned()
}

/// `mediatype::parse` against `mime.ParseMediaType`: the same type, parameters and
/// error. Input that is not UTF-8 is ours to refuse.
pub fn media_type(go: &mut GoOracle, input: &[u8]) -> Result<(), String> {
    let ours = mediatype::parse(input);
    if std::str::from_utf8(input).is_err() {
        return match ours {
            Err(mediatype::MediaTypeError::NotUtf8) => Ok(()),
            other => Err(format!("{input:?} is not UTF-8, yet: {other:?}")),
        };
    }
    let theirs = go.media_type(input);
    let (want_type, want_error) = (text(&theirs.media_type), theirs.error.as_deref());
    match ours {
        Ok(ours) => {
            let their_params: Vec<(String, Vec<u8>)> = theirs
                .params
                .iter()
                .map(|p| (text(&p.key), p.values[0].bytes()))
                .collect();
            let our_params: Vec<(String, Vec<u8>)> = ours.params.into_iter().collect();
            if want_error.is_some() || want_type != ours.essence || their_params != our_params {
                return Err(format!(
                    "{input:?}: Go reads {want_type:?} {their_params:?} (error {want_error:?}), \
                     we read {:?} {our_params:?}",
                    ours.essence
                ));
            }
        }
        Err(e) => {
            if want_error != Some(e.go_message())
                || want_type != e.go_reads_type().unwrap_or_default()
            {
                return Err(format!(
                    "{input:?}: Go reads {want_type:?} (error {want_error:?}), we refuse: {e:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Our codec against `url.ParseQuery`: where ours accepts, Go reads the same parameters
/// with no error; where ours refuses, Go reports an error or keeps bytes that are not
/// UTF-8 (which the filter never forwards).
pub fn query(go: &mut GoOracle, input: &str) -> Result<(), String> {
    let theirs = go.parse_query(input.as_bytes());
    let ours = match Params::parse(input) {
        Ok(ours) => ours,
        Err(e) => {
            let kept_bytes = theirs
                .values
                .iter()
                .flat_map(|p| std::iter::once(&p.key).chain(&p.values))
                .any(|v| v.text().is_none());
            return match theirs.error.is_some() || kept_bytes {
                true => Ok(()),
                false => Err(format!("{input:?}: we refuse ({e}) what Go reads cleanly")),
            };
        }
    };
    // Go's url.Values: values grouped by name, names sorted; an empty chunk (`&&`) is
    // no parameter for Go, a lone `=` is one.
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (chunk, pair) in input.split('&').zip(ours.pairs()) {
        if chunk.is_empty() {
            continue;
        }
        match grouped.iter_mut().find(|(n, _)| n == pair.name()) {
            Some((_, values)) => values.push(pair.value().to_string()),
            None => grouped.push((pair.name().into(), vec![pair.value().into()])),
        }
    }
    grouped.sort();
    let their_values: Vec<(String, Vec<String>)> = theirs
        .values
        .iter()
        .map(|p| (text(&p.key), p.values.iter().map(text).collect()))
        .collect();
    if theirs.error.is_some() || their_values != grouped {
        return Err(format!(
            "{input:?}: Go reads {their_values:?} (error {:?}), we read {grouped:?}",
            theirs.error
        ));
    }
    Ok(())
}

/// What the filter forwarded, as Go hands it to the backend's handler, against the
/// filter's promise: every `query` (query endpoints) or `match[]` and `match` (selector
/// endpoints) passes `confined`; a query endpoint's `FormValue("query")` is set; a
/// selector endpoint has a `match[]`, the only selectors Prometheus reads; and the
/// only `extra_label` / `extra_filters` / `extra_filters[]` is `extra`, the one the
/// filter adds (none when it adds none).
pub fn forwarded(
    view: &HandlerView,
    action: Action,
    confined: &dyn Fn(&[u8]) -> Result<(), String>,
    extra: Option<(&str, &[u8])>,
) -> Result<(), String> {
    if view.server_error.is_some() {
        return Ok(()); // the Go server answers 400 itself: no handler runs
    }
    let targets: &[&str] = match action {
        Action::RewriteQuery => &["query"],
        Action::RewriteMatch => &["match[]", "match"],
        // The rule engines read `match[]` only.
        Action::FilterRules(_) => &["match[]"],
        _ => &[],
    };
    for name in targets {
        for value in view.form_values(name) {
            confined(&value).map_err(|e| format!("the backend reads {name}: {e}"))?;
        }
    }
    match action {
        Action::RewriteQuery if view.query.bytes().is_empty() => {
            return Err("FormValue(\"query\") is empty".into());
        }
        Action::RewriteMatch | Action::FilterRules(_) if view.form_values("match[]").is_empty() => {
            return Err(format!("the backend reads no match[]: {view:?}"));
        }
        _ => {}
    }
    for name in ["extra_label", "extra_filters", "extra_filters[]"] {
        for value in view.form_values(name) {
            if extra != Some((name, value.as_slice())) {
                return Err(format!(
                    "{name}={:?} reaches the backend",
                    String::from_utf8_lossy(&value)
                ));
            }
        }
    }
    Ok(())
}
