//! Fuzz target: the form / URL query-string codec (`form.rs`).
//!
//! Input: the raw text of a query string or form body.
//! Invariants, besides no panic:
//! - an untouched parse re-encodes byte for byte, and is not marked changed;
//! - the pairs agree with an independent decoder (`form_urlencoded`, lenient like Go)
//!   wherever ours accepts the input;
//! - `decode(encode(x)) == x` for the input itself and every decoded name and value;
//! - every edit (`set_value`, `remove_all`, `push`) re-encodes to text that parses back
//!   to exactly the edited pair list.

#![no_main]

use libfuzzer_sys::fuzz_target;
use promql_tenant_filter::form::{decode, encode, Params};

/// The pairs as (name, value), dropping empty ones (`&&`, a lone `=`), which carry no
/// parameter and which the independent decoder skips or keeps differently.
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

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(decode(&encode(raw), 0).as_deref(), Ok(raw));
    let Ok(params) = Params::parse(raw) else {
        return;
    };
    assert!(!params.is_changed());
    assert_eq!(
        params.encode(),
        raw,
        "untouched pairs must re-encode verbatim"
    );

    let ours = pairs(&params);
    let theirs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .filter(|(n, v)| !(n.is_empty() && v.is_empty()))
        .collect();
    assert_eq!(ours, theirs, "disagreement with form_urlencoded on {raw:?}");

    for (name, value) in &ours {
        assert_eq!(decode(&encode(name), 0).as_deref(), Ok(name.as_str()));
        assert_eq!(decode(&encode(value), 0).as_deref(), Ok(value.as_str()));
    }

    // Replace each value with a hostile one: only that pair changes.
    for index in 0..params.pairs().len() {
        let mut edited = params.clone();
        let value = format!("{}&x=1;+%{}", params.pairs()[index].value(), index);
        edited.set_value(index, value.clone());
        let mut expected: Vec<(String, String)> = params
            .pairs()
            .iter()
            .map(|p| (p.name().to_string(), p.value().to_string()))
            .collect();
        expected[index].1 = value;
        expected.retain(|(n, v)| !(n.is_empty() && v.is_empty()));
        assert_eq!(reparse(&edited), expected, "set_value({index}) on {raw:?}");
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
});
