//! Fuzz target: how a form is read, ours against Go's: the form / URL query-string codec
//! (`form.rs`) against `url.ParseQuery`, and the `Content-Type` reader (`mediatype.rs`)
//! against `mime.ParseMediaType`, both through the Go form oracle (Debian's Go 1.19).
//!
//! Input: the raw text of a query string or form body, which is also read as a
//! `Content-Type` value.
//! Invariants, besides no panic:
//! - an untouched parse re-encodes byte for byte, and is not marked changed;
//! - where our codec accepts the input, Go reads the same parameters with no error; where
//!   it refuses, Go reports an error or keeps bytes that are not UTF-8;
//! - our media type, parameters and error are Go's (for UTF-8 input);
//! - `decode(encode(x)) == x` for the input itself and every decoded name and value;
//! - every edit (`set_value` on each pair, or 32 of a long input; `remove_all`; `push`)
//!   re-encodes to text that parses back to exactly the edited pair list;
//! - the lazy reading the filter uses (`parse_deferring` with the rewritten names, their
//!   values resolved) is `parse`'s, refusals and offsets included; and each edit made
//!   on a value still deferred (as after a remembered answer) encodes as the same edit
//!   on the eager parse, its own old value keeping the client's text;
//! - the parameter count the filter checks Go's limit with (`Params::go_param_count`)
//!   is what Go counts in the input, and in the text forwarded after the edits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::form::{decode, encode, go_param_count, Params};
use promql_tenant_filter_fuzz::{compare, with_go};

/// The pairs as (name, value), dropping empty ones (`&&`, a lone `=`), for the edit
/// checks, which compare our own re-parses.
fn pairs(params: &Params) -> Vec<(String, String)> {
    params
        .pairs()
        .iter()
        .map(|p| (p.name().to_string(), p.value().to_string()))
        .filter(|(n, v)| !(n.is_empty() && v.is_empty()))
        .collect()
}

fn reparse(params: &Params) -> Vec<(String, String)> {
    let text = params.encode();
    match Params::parse(&text) {
        Ok(again) => pairs(&again),
        Err(e) => panic!("our encoding does not parse back: {e}\n  encoded: {text:?}"),
    }
}

/// The names whose values the filter leaves escaped: those it rewrites.
const DEFERRED: &[&str] = &["query", "match[]", "match"];

fuzz_target!(|data: &[u8]| {
    if let Err(e) = with_go(|go| compare::media_type(go, data)) {
        panic!("media type: {e}");
    }
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(decode(&encode(raw), 0).as_deref(), Ok(raw));
    if let Err(e) = with_go(|go| compare::query(go, raw)) {
        panic!("query string: {e}");
    }
    let lazy = Params::parse_deferring(raw, DEFERRED).and_then(|mut params| {
        params.resolve_pending()?;
        Ok(params)
    });
    assert_eq!(lazy, Params::parse(raw), "the lazy reading of {raw:?}");
    let Ok(params) = Params::parse(raw) else {
        return;
    };
    assert!(!params.is_changed());
    assert_eq!(params.go_param_count(), go_param_count(raw.as_bytes()));
    assert_eq!(
        params.encode(),
        raw,
        "untouched pairs must re-encode verbatim"
    );

    let ours = pairs(&params);
    for (name, value) in &ours {
        assert_eq!(decode(&encode(name), 0).as_deref(), Ok(name.as_str()));
        assert_eq!(decode(&encode(value), 0).as_deref(), Ok(value.as_str()));
    }

    // Replace a value with a hostile one: only that pair changes. Every pair of a short
    // input, 32 spread over a long one: each edit re-encodes and re-parses the whole
    // input, and checking all of ~1,700 pairs once took over 10 s (a timeout of this
    // check, not of the filter).
    let count = params.pairs().len();
    for index in (0..count).step_by(count.div_ceil(32).max(1)) {
        let mut edited = params.clone();
        let value = format!("{}&x=1;+%{}", params.pairs()[index].value(), index);
        edited.set_value(index, value.clone());
        let edited_encoding = edited.encode();
        let mut expected: Vec<(String, String)> = params
            .pairs()
            .iter()
            .map(|p| (p.name().to_string(), p.value().to_string()))
            .collect();
        expected[index].1 = value.clone();
        expected.retain(|(n, v)| !(n.is_empty() && v.is_empty()));
        assert_eq!(reparse(&edited), expected, "set_value({index}) on {raw:?}");
        // Its own value keeps the client's text (a pair without `=` gains one).
        let old = params.pairs()[index].value().to_string();
        let mut unchanged = params.clone();
        unchanged.set_value(index, old.clone());
        for (value, encoded) in [(value, edited_encoding), (old, unchanged.encode())] {
            let mut lazy = Params::parse_deferring(raw, DEFERRED).expect("parse accepted it");
            lazy.set_value(index, value);
            lazy.resolve_pending().expect("parse accepted it");
            assert_eq!(
                lazy.encode(),
                encoded,
                "deferred set_value({index}) on {raw:?}"
            );
        }
    }

    // Remove the names the filter strips, plus the first pair's name; then append.
    let mut edited = params.clone();
    let first = params.pairs().first().map(|p| p.name().to_string());
    let mut names = vec!["extra_label", "extra_filters", "extra_filters[]"];
    if let Some(first) = first.as_deref() {
        names.push(first);
    }
    edited.remove_all(&names);
    let mut expected: Vec<(String, String)> = ours
        .iter()
        .filter(|(n, _)| !names.contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(reparse(&edited), expected, "remove_all on {raw:?}");
    edited.push("match[]", raw);
    expected.push(("match[]".to_string(), raw.to_string()));
    assert_eq!(reparse(&edited), expected, "push on {raw:?}");
    let forwarded = edited.encode();
    assert_eq!(
        edited.go_param_count(),
        go_param_count(forwarded.as_bytes()),
        "count after edits of {raw:?}"
    );
});
