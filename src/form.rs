//! The `application/x-www-form-urlencoded` and URL query-string codec.
//!
//! Parameters are kept as ordered raw pairs, so that a request can be re-encoded with
//! only the pairs that changed touched: duplicates, their order, empty pairs and the
//! client's own escaping all survive. Names are compared after decoding, because the
//! backend compares them after decoding too (`%71uery` is `query`).
//!
//! [`Params::parse_deferring`] leaves the escaped values of the parameters the filter
//! rewrites as the client sent them, so that a rewriter that remembers its answers by
//! the raw text need not decode a repeated query at all. A deferred value is decoded
//! when it is read, or by [`Params::resolve_pending`], and refusals come out as if
//! everything had been decoded at once: the first bad pair in input order.
//!
//! Decoding follows Go's `url.ParseQuery`, which Prometheus and VictoriaMetrics use for
//! both the URL and the body: `+` is a space in both places. Where Go would silently
//! drop a pair (bad escape, `;`), this codec refuses the whole input instead, so the
//! filter can never see a different parameter list than the backend.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;

/// Why a query string or form body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    BadEscape { offset: usize },
    /// A decoded name or value that is not UTF-8.
    NotUtf8 { offset: usize },
    /// A raw `;`: older Go versions split pairs on it, newer ones drop the pair.
    Semicolon { offset: usize },
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::BadEscape { offset } => {
                write!(f, "invalid percent-escape at byte {offset}")
            }
            FormError::NotUtf8 { offset } => {
                write!(
                    f,
                    "parameter at byte {offset} is not valid UTF-8 once decoded"
                )
            }
            FormError::Semicolon { offset } => {
                write!(
                    f,
                    "unescaped ';' at byte {offset} is not allowed in parameters"
                )
            }
        }
    }
}

impl std::error::Error for FormError {}

/// A decoded value: borrowed from the input, built for the pair, or shared with the
/// memo that remembered it, so that a repeated query's answer is not copied out of the
/// memo to be forwarded.
#[derive(Debug, Clone)]
pub enum Text<'a> {
    Borrowed(&'a str),
    Owned(String),
    Shared(Rc<str>),
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(text) => text,
            Text::Owned(text) => text,
            Text::Shared(text) => text,
        }
    }
}

/// Compared as text, however each side holds it.
impl PartialEq for Text<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text<'_> {}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text::Borrowed(text)
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Text::Owned(text)
    }
}

impl From<Rc<str>> for Text<'_> {
    fn from(text: Rc<str>) -> Self {
        Text::Shared(text)
    }
}

impl<'a> From<Cow<'a, str>> for Text<'a> {
    fn from(text: Cow<'a, str>) -> Self {
        match text {
            Cow::Borrowed(text) => Text::Borrowed(text),
            Cow::Owned(text) => Text::Owned(text),
        }
    }
}

/// One `name=value` pair: its raw text and its decoded form, borrowed from the input
/// wherever decoding changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The pair's text as forwarded: the client's own while the pair is untouched, or
    /// the encoding of a pair pushed with [`Params::push_encoded`].
    raw: Option<&'a str>,
    name: Cow<'a, str>,
    value: Text<'a>,
    /// `value` already percent-encoded by [`encode`], when the caller had it at hand (a
    /// remembered rewrite), so that [`Params::encode`] need not encode it again.
    encoded_value: Option<Rc<str>>,
    has_equals: bool,
    /// Set while the value's decoding is deferred: `value` then borrows the client's
    /// escaped text.
    pending: Option<Pending>,
}

/// Where a deferred value starts in the input, and how long it is once decoded if it
/// decodes at all (every `%XX` is one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    offset: usize,
    decoded_len: usize,
}

impl<'a> Pair<'a> {
    /// The decoded name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The decoded value (empty when the pair has no `=`). While the value's decoding
    /// is deferred ([`Pair::escaped_value`]), its raw text: only
    /// [`Params::parse_deferring`] defers, and its callers read those values through
    /// [`Pair::escaped_value`] first.
    pub fn value(&self) -> &str {
        &self.value
    }
    /// The value as the client escaped it, and the byte of the input it starts at,
    /// while its decoding is deferred; `None` once it is decoded (or never was
    /// deferred).
    pub fn escaped_value(&self) -> Option<(&'a str, usize)> {
        match (&self.value, self.pending) {
            (Text::Borrowed(raw), Some(pending)) => Some((raw, pending.offset)),
            _ => None,
        }
    }
}

/// An ordered list of parameters that re-encodes untouched pairs byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params<'a> {
    pairs: Vec<Pair<'a>>,
    changed: bool,
}

impl<'a> Params<'a> {
    /// Splits `raw` on `&` and decodes each pair. An empty input has no pairs.
    pub fn parse(raw: &'a str) -> Result<Params<'a>, FormError> {
        Params::parse_deferring(raw, &[])
    }

    /// [`Params::parse`], except that the escaped values of pairs whose decoded name is
    /// one of `deferred` are left undecoded and unchecked ([`Pair::escaped_value`]).
    ///
    /// The caller must resolve each of them before it forwards or refuses anything:
    /// by decoding it itself, or by having proof that its raw text decodes (an answer
    /// remembered after it did), then [`Params::set_value_encoded`]; and
    /// [`Params::resolve_pending`] for the rest, before any refusal of its own, so
    /// that a bad value is refused as [`Params::parse`] would have refused it. When a
    /// later pair is refused here, the deferred values before it are decoded first,
    /// for the same reason.
    pub fn parse_deferring(raw: &'a str, deferred: &[&str]) -> Result<Params<'a>, FormError> {
        if raw.is_empty() {
            return Ok(Params::default());
        }
        // Room for a Grafana request's parameters without counting `&` first: a count
        // costs a pass over the whole input, and a longer list grows as usual.
        let mut pairs = Vec::with_capacity(8);
        match split_pairs(raw, deferred, &mut pairs) {
            Ok(()) => Ok(Params {
                pairs,
                changed: false,
            }),
            Err(error) => {
                let mut params = Params {
                    pairs,
                    changed: false,
                };
                params.resolve_pending()?;
                Err(error)
            }
        }
    }

    /// Decodes every value still deferred, in input order; the first that does not
    /// decode is the error, as [`Params::parse`] would have given it.
    pub fn resolve_pending(&mut self) -> Result<(), FormError> {
        for pair in &mut self.pairs {
            if let Some((raw, offset)) = pair.escaped_value() {
                pair.value = decode_if(true, raw, offset)?.into();
                pair.pending = None;
            }
        }
        Ok(())
    }

    /// All pairs, in order.
    pub fn pairs(&self) -> &[Pair<'a>] {
        &self.pairs
    }

    /// What [`go_param_count`] gives for [`Params::encode`]'s output, and for the input
    /// while nothing changed, without a pass over either: the pairs are joined by `&`,
    /// and no pair holds a raw `&` (the input was split on it, and [`encode`] escapes
    /// it), so Go counts one parameter per pair, and one for an empty list.
    pub fn go_param_count(&self) -> usize {
        self.pairs.len().max(1)
    }

    /// True once any pair was replaced, removed or added.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// True when some pair's decoded name is `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|p| p.name == name)
    }

    /// Replaces the value of the pair at `index`; the pair is re-encoded.
    ///
    /// Setting the value it already has keeps the client's raw text.
    pub fn set_value(&mut self, index: usize, value: impl Into<Text<'a>>) {
        self.set_value_encoded(index, value, None);
    }

    /// [`Params::set_value`], with `encoded` the value as [`encode`] gives it, if the
    /// caller has it: [`Params::encode`] then copies it instead of encoding `value`.
    ///
    /// A value whose decoding was deferred is compared with what its raw text decodes
    /// to, without decoding it whole: a rewrite differs from its query within a few
    /// bytes. Either way the pair holds `value` afterwards, decoded.
    pub fn set_value_encoded(
        &mut self,
        index: usize,
        value: impl Into<Text<'a>>,
        encoded: Option<Rc<str>>,
    ) {
        let value = value.into();
        if let Some(pair) = self.pairs.get_mut(index) {
            let same = match (&pair.value, pair.pending) {
                (Text::Borrowed(raw), Some(pending)) => {
                    value.len() == pending.decoded_len && decodes_to(raw, &value)
                }
                _ => *pair.value == *value,
            };
            if !same || !pair.has_equals {
                pair.encoded_value = encoded;
                pair.has_equals = true;
                pair.raw = None;
                self.changed = true;
            }
            pair.value = value;
            pair.pending = None;
        }
    }

    /// Removes every pair whose decoded name is one of `names`; returns how many.
    pub fn remove_all(&mut self, names: &[&str]) -> usize {
        let before = self.pairs.len();
        self.pairs.retain(|p| !names.contains(&&*p.name));
        let removed = before - self.pairs.len();
        if removed > 0 {
            self.changed = true;
        }
        removed
    }

    /// Appends a new pair at the end. The value is taken as given, borrowed or owned,
    /// so that a value built for the pair is not copied again.
    pub fn push(&mut self, name: &'a str, value: impl Into<Text<'a>>) {
        self.pairs.push(Pair {
            raw: None,
            name: Cow::Borrowed(name),
            value: value.into(),
            encoded_value: None,
            has_equals: true,
            pending: None,
        });
        self.changed = true;
    }

    /// Appends a new pair whose encoding the caller already has: `encoded` must be what
    /// [`Params::encode`] writes for `name` and `value` pushed with [`Params::push`],
    /// and is copied as it is.
    pub fn push_encoded(&mut self, name: &'a str, value: &'a str, encoded: &'a str) {
        self.pairs.push(Pair {
            raw: Some(encoded),
            name: Cow::Borrowed(name),
            value: Text::Borrowed(value),
            encoded_value: None,
            has_equals: true,
            pending: None,
        });
        self.changed = true;
    }

    /// The encoded form: untouched pairs verbatim, changed ones percent-encoded.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len_hint());
        self.encode_onto(&mut out);
        out
    }

    /// `path`, then `?` and [`Params::encode`]'s text unless that text is empty: a
    /// request's new `:path`, built in one String rather than joined from two.
    pub fn encode_target(&self, path: &str) -> String {
        let mut out = String::with_capacity(path.len() + 1 + self.encoded_len_hint());
        out.push_str(path);
        out.push('?');
        self.encode_onto(&mut out);
        if out.len() == path.len() + 1 {
            out.pop();
        }
        out
    }

    /// Room for the untouched pairs and separators; changed ones may still grow it.
    fn encoded_len_hint(&self) -> usize {
        let raw_len: usize = self
            .pairs
            .iter()
            .map(|p| {
                let value_len = p.encoded_value.as_deref().unwrap_or(&p.value).len();
                p.raw.map_or(p.name.len() + value_len, str::len) + 1
            })
            .sum();
        raw_len + raw_len / 2
    }

    fn encode_onto(&self, out: &mut String) {
        for (i, pair) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.raw {
                Some(raw) => out.push_str(raw),
                None => {
                    encode_into(&pair.name, out);
                    if pair.has_equals {
                        out.push('=');
                        match &pair.encoded_value {
                            Some(encoded) => out.push_str(encoded),
                            None => encode_into(&pair.value, out),
                        }
                    }
                }
            }
        }
    }
}

/// The pairs of a non-empty `raw`, pushed onto `pairs` as they are read, so that the
/// caller still has those before a refused one.
///
/// One pass over each pair finds its `=`, any `;` and whether its name or value needs
/// decoding at all: a Grafana query string has a dozen pairs and most of them are
/// plain, so they cost no copy.
fn split_pairs<'a>(
    raw: &'a str,
    deferred: &[&str],
    pairs: &mut Vec<Pair<'a>>,
) -> Result<(), FormError> {
    let bytes = raw.as_bytes();
    let mut start = 0;
    loop {
        let mut end = start;
        let mut eq = None;
        let mut name_escaped = false;
        let mut value_escaped = false;
        let mut value_percents = 0;
        while let Some(&b) = bytes.get(end) {
            if !PAIR_STOPS[usize::from(b)] {
                end += 1;
                continue;
            }
            match b {
                b'&' => break,
                b';' => return Err(FormError::Semicolon { offset: end }),
                b'=' if eq.is_none() => eq = Some(end),
                b'%' | b'+' if eq.is_none() => name_escaped = true,
                b'%' => {
                    value_escaped = true;
                    value_percents += 1;
                }
                b'+' => value_escaped = true,
                _ => {}
            }
            end += 1;
        }
        // `start`, `end` and `eq` sit next to ASCII bytes (or at the ends), so they
        // are char boundaries.
        let (name_end, value_start) = eq.map_or((end, end), |eq| (eq, eq + 1));
        let name = decode_if(name_escaped, &raw[start..name_end], start)?;
        let value_raw = &raw[value_start..end];
        let (value, pending) = if value_escaped && deferred.contains(&&*name) {
            let pending = Pending {
                offset: value_start,
                // Saturating: a value that does not decode is never compared.
                decoded_len: value_raw.len().saturating_sub(2 * value_percents),
            };
            (Text::Borrowed(value_raw), Some(pending))
        } else {
            (
                decode_if(value_escaped, value_raw, value_start)?.into(),
                None,
            )
        };
        pairs.push(Pair {
            raw: Some(&raw[start..end]),
            name,
            value,
            encoded_value: None,
            has_equals: eq.is_some(),
            pending,
        });
        if end == bytes.len() {
            return Ok(());
        }
        start = end + 1;
    }
}

/// The bytes the pair scan in [`split_pairs`] acts on; every other byte is skipped
/// with one table load, which matters because a query is mostly plain text.
const PAIR_STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    stops[b'&' as usize] = true;
    stops[b';' as usize] = true;
    stops[b'=' as usize] = true;
    stops[b'%' as usize] = true;
    stops[b'+' as usize] = true;
    stops
};

/// How many parameters Go's `url.ParseQuery` counts in `raw` before reading it, for
/// its limit (Go 1.24.12 and later): every `&` plus one, empty pairs and the empty input
/// included.
pub fn go_param_count(raw: &[u8]) -> usize {
    raw.iter().filter(|&&b| b == b'&').count() + 1
}

/// Decodes one name or value: `+` is a space, `%XX` a byte; the result must be UTF-8.
/// `offset` is where `raw` starts in the whole input, for error messages.
pub fn decode(raw: &str, offset: usize) -> Result<String, FormError> {
    decode_if(raw.contains(['%', '+']), raw, offset).map(Cow::into_owned)
}

/// [`decode`], borrowing `raw` when it holds neither `%` nor `+` (`escaped` false).
fn decode_if(escaped: bool, raw: &str, offset: usize) -> Result<Cow<'_, str>, FormError> {
    if !escaped {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(FormError::BadEscape { offset: offset + i }),
                }
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::NotUtf8 { offset })
}

/// True when `raw` decodes to exactly `text`; false as soon as a byte differs, and for
/// a `raw` that does not decode at all.
fn decodes_to(raw: &str, text: &str) -> bool {
    let (raw, text) = (raw.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    while let Some(&b) = raw.get(i) {
        let (decoded, width) = match b {
            b'+' => (b' ', 1),
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                    _ => return false,
                }
            }
            other => (other, 1),
        };
        if text.get(j) != Some(&decoded) {
            return false;
        }
        i += width;
        j += 1;
    }
    j == text.len()
}

/// Percent-encodes everything but RFC 3986 unreserved characters. Spaces become `%20`
/// rather than `+`, which means the same thing in a URL and in a form body.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    encode_into(text, &mut out);
    out
}

/// The bytes [`encode`] leaves as they are: RFC 3986's unreserved characters.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

fn encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // PromQL escapes about one byte in three (spaces, brackets, quotes), each to three.
    out.reserve(text.len() + text.len() / 2);
    // Written a byte at a time into a small buffer, then copied into `out` a buffer at a
    // time: copying each run of plain bytes was a copy call (out of the module, in the
    // VM) for every few bytes, and a `push` per character costs more than a store.
    let mut chunk = [0u8; 64];
    let mut n = 0;
    for &b in text.as_bytes() {
        if n + 3 > chunk.len() {
            push_ascii(out, &chunk[..n]);
            n = 0;
        }
        if UNRESERVED[usize::from(b)] {
            chunk[n] = b;
            n += 1;
        } else {
            chunk[n] = b'%';
            chunk[n + 1] = HEX[usize::from(b >> 4)];
            chunk[n + 2] = HEX[usize::from(b & 0x0f)];
            n += 3;
        }
    }
    push_ascii(out, &chunk[..n]);
}

/// Appends bytes that [`encode_into`] wrote: ASCII only, so they are always text.
fn push_ascii(out: &mut String, ascii: &[u8]) {
    if let Ok(text) = std::str::from_utf8(ascii) {
        out.push_str(text);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_values<'a>(p: &'a Params<'_>) -> Vec<(&'a str, &'a str)> {
        p.pairs().iter().map(|p| (p.name(), p.value())).collect()
    }

    #[test]
    fn empty_input_has_no_pairs() {
        let p = Params::parse("").unwrap();
        assert!(p.pairs().is_empty());
        assert_eq!(p.encode(), "");
    }

    #[test]
    fn untouched_input_round_trips_byte_for_byte() {
        for raw in [
            "query=up&time=1",
            "a=1&&b=2&",
            "flag&query=rate%28x%5B5m%5D%29",
            "query=a+b&query=%7Bjob%3D%22x%22%7D",
            "match%5B%5D=up&match[]=down",
            "x=%e2%82%ac",
        ] {
            let p = Params::parse(raw).unwrap();
            assert!(!p.is_changed());
            assert_eq!(p.encode(), raw, "{raw}");
        }
    }

    #[test]
    fn names_are_compared_after_decoding() {
        let p = Params::parse("%71uery=up&match%5B%5D=x").unwrap();
        assert_eq!(names_values(&p), vec![("query", "up"), ("match[]", "x")]);
        assert!(p.contains("query"));
    }

    #[test]
    fn plus_is_space_and_percent_is_a_byte() {
        let p = Params::parse("query=sum+by+(job)+(up%7Bx%3D%22a%2Bb%22%7D)").unwrap();
        assert_eq!(p.pairs()[0].value(), "sum by (job) (up{x=\"a+b\"})");
    }

    #[test]
    fn pair_without_equals_has_empty_value() {
        let p = Params::parse("nocache&query=").unwrap();
        assert_eq!(names_values(&p), vec![("nocache", ""), ("query", "")]);
    }

    #[test]
    fn value_may_contain_equals() {
        let p = Params::parse("extra_label=a=b").unwrap();
        assert_eq!(names_values(&p), vec![("extra_label", "a=b")]);
    }

    #[test]
    fn duplicates_keep_their_order_and_only_changed_pairs_are_reencoded() {
        let mut p = Params::parse("query=a&time=%31&query=b").unwrap();
        p.set_value(2, "b{t=\"1\"}".to_string());
        assert!(p.is_changed());
        assert_eq!(p.encode(), "query=a&time=%31&query=b%7Bt%3D%221%22%7D");
    }

    #[test]
    fn setting_the_same_value_keeps_raw_text() {
        let mut p = Params::parse("query=a+b").unwrap();
        p.set_value(0, "a b".to_string());
        assert!(!p.is_changed());
        assert_eq!(p.encode(), "query=a+b");
    }

    #[test]
    fn remove_and_push() {
        let mut p =
            Params::parse("extra_label=x%3D1&query=up&extra_filters%5B%5D=y&extra_filters=z")
                .unwrap();
        assert_eq!(
            p.remove_all(&["extra_label", "extra_filters", "extra_filters[]"]),
            3
        );
        p.push("extra_label", "client_id=1999");
        assert_eq!(p.encode(), "query=up&extra_label=client_id%3D1999");
    }

    #[test]
    fn changed_values_round_trip_through_decode() {
        let tricky = "sum(rate(x{a=\"+ &=%;#\u{20ac}\"}[5m])) / 2";
        let mut p = Params::parse("query=placeholder").unwrap();
        p.set_value(0, tricky.to_string());
        let encoded = p.encode();
        let again = Params::parse(&encoded).unwrap();
        assert_eq!(again.pairs()[0].value(), tricky);
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(
            Params::parse("a=1&query=%zz"),
            Err(FormError::BadEscape { offset: 10 })
        );
        assert_eq!(
            Params::parse("query=%4"),
            Err(FormError::BadEscape { offset: 6 })
        );
        assert_eq!(
            Params::parse("q%=1"),
            Err(FormError::BadEscape { offset: 1 })
        );
    }

    #[test]
    fn non_utf8_after_decoding_is_refused() {
        assert!(matches!(
            Params::parse("query=%ff%fe"),
            Err(FormError::NotUtf8 { .. })
        ));
        assert!(matches!(
            Params::parse("%c3=1"),
            Err(FormError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn semicolons_are_refused_but_escaped_ones_are_data() {
        assert_eq!(
            Params::parse("foo=1;query=evil"),
            Err(FormError::Semicolon { offset: 5 })
        );
        let p = Params::parse("query=a%3Bb").unwrap();
        assert_eq!(p.pairs()[0].value(), "a;b");
    }

    #[test]
    fn encode_keeps_unreserved_only() {
        assert_eq!(encode("aZ09-._~ /+=&%\""), "aZ09-._~%20%2F%2B%3D%26%25%22");
        assert_eq!(encode("é x€"), "%C3%A9%20x%E2%82%AC");
        assert_eq!(encode(""), "");
        assert_eq!(encode("%"), "%25");
    }

    /// Deferred in these tests: the filter's own names, and one short enough for
    /// [`HOSTILE`] input to hit often.
    const DEFERRED: &[&str] = &["query", "match[]", "q"];

    #[test]
    fn deferred_values_stay_escaped_until_resolved() {
        let raw = "a=%31&query=up%7Bx%3D%221%22%7D&query=plain&match%5B%5D=a+b";
        let mut p = Params::parse_deferring(raw, DEFERRED).unwrap();
        let escaped: Vec<_> = p.pairs().iter().map(Pair::escaped_value).collect();
        assert_eq!(
            escaped,
            [
                None,
                Some(("up%7Bx%3D%221%22%7D", 12)),
                None,
                Some(("a+b", 56))
            ]
        );
        assert_eq!(p.pairs()[0].value(), "1", "other names are decoded at once");
        p.resolve_pending().unwrap();
        assert_eq!(p, Params::parse(raw).unwrap());
        assert_eq!(p.encode(), raw);
    }

    #[test]
    fn a_deferred_value_is_refused_before_a_later_bad_pair() {
        for (raw, error) in [
            // The query's own escape comes first in the input.
            ("query=%zz&x=%", FormError::BadEscape { offset: 6 }),
            ("query=%ff&x=%", FormError::NotUtf8 { offset: 6 }),
            ("query=%ff&x=1;", FormError::NotUtf8 { offset: 6 }),
            (
                "query=a%2&query=%zz&x=%",
                FormError::BadEscape { offset: 7 },
            ),
            // A good deferred value does not hide the later error.
            ("query=a%20b&x=%zz", FormError::BadEscape { offset: 14 }),
            ("query=a+b&x=1;", FormError::Semicolon { offset: 13 }),
            // A bad name comes before its own value.
            ("%zz=%zz", FormError::BadEscape { offset: 0 }),
        ] {
            assert_eq!(Params::parse(raw), Err(error.clone()), "{raw}");
            assert_eq!(Params::parse_deferring(raw, DEFERRED), Err(error), "{raw}");
        }
        // With no later error, the bad value waits for the caller.
        let mut p = Params::parse_deferring("query=%zz&x=1", DEFERRED).unwrap();
        assert_eq!(p.resolve_pending(), Err(FormError::BadEscape { offset: 6 }));
    }

    #[test]
    fn setting_a_deferred_value_compares_it_decoded() {
        // The same query: the client's text is kept, and the value reads decoded.
        for (raw, same) in [
            ("query=a+b", "a b"),
            ("query=%7Bx%7D", "{x}"),
            ("query=%e2%82%ac+", "\u{20ac} "),
        ] {
            let mut p = Params::parse_deferring(raw, DEFERRED).unwrap();
            p.set_value(0, same.to_string());
            assert!(!p.is_changed(), "{raw}");
            assert_eq!((p.encode().as_str(), p.pairs()[0].value()), (raw, same));
            assert_eq!(p.pairs()[0].escaped_value(), None);
        }
        // Another one, of the same decoded length or not: re-encoded.
        for (raw, other) in [
            ("query=a+b", "a+b"),
            ("query=a+b", "a c"),
            ("query=a+b", "a bc"),
            ("query=%7Bx%7D", "%7Bx%7D"),
        ] {
            let mut p = Params::parse_deferring(raw, DEFERRED).unwrap();
            p.set_value(0, other.to_string());
            assert!(p.is_changed(), "{raw} {other}");
            assert_eq!(p.encode(), format!("query={}", encode(other)));
        }
    }

    /// The codec as it was before it borrowed from its input: `split` on `&`, `find` of
    /// `;` and `=`, every name and value decoded into its own String. The borrowing
    /// parser must read every input exactly as this did, refusals and their offsets
    /// included.
    fn split_then_decode(raw: &str) -> Result<Vec<(String, String, String, bool)>, FormError> {
        let mut pairs = Vec::new();
        let mut start = 0;
        for chunk in raw.split('&') {
            if let Some(pos) = chunk.find(';') {
                return Err(FormError::Semicolon {
                    offset: start + pos,
                });
            }
            let (name, value, has_equals) = match chunk.find('=') {
                Some(eq) => (&chunk[..eq], &chunk[eq + 1..], true),
                None => (chunk, "", false),
            };
            let value_start = start + name.len() + usize::from(has_equals);
            pairs.push((
                chunk.to_string(),
                decode(name, start)?,
                decode(value, value_start)?,
                has_equals,
            ));
            start += chunk.len() + 1;
        }
        if raw.is_empty() {
            pairs.clear();
        }
        Ok(pairs)
    }

    /// What the old codec sent after replacing the value at `index` with `value`.
    fn old_encoding_after_set(
        pairs: &[(String, String, String, bool)],
        index: usize,
        value: &str,
    ) -> String {
        let mut parts = Vec::new();
        for (i, (raw, name, old, has_equals)) in pairs.iter().enumerate() {
            if i == index && (old != value || !has_equals) {
                parts.push(format!("{}={}", encode(name), encode(value)));
            } else {
                parts.push(raw.clone());
            }
        }
        parts.join("&")
    }

    /// Inputs made of what a hostile client would try: separators, raw `;`, bad and
    /// truncated escapes, escapes of non-UTF-8 bytes and of `query`'s letters, `+`,
    /// multi-byte characters, empty and duplicate pairs.
    const HOSTILE: &str =
        "(&|=|;|\\+|%|%[0-9a-fA-F]|%[0-9a-fA-FgzG%+&;=]{2}|%ff|%c3|%e2%82|%71|%3[bB]|query|q|é|€|[a-z0-9])*";

    #[test]
    fn the_borrowing_parser_reads_known_inputs_as_the_old_one_did() {
        for raw in [
            "",
            "&",
            "&&",
            "=",
            "==",
            "a",
            "a=",
            "=a",
            "a=b=c",
            "a;b",
            "a=;",
            ";",
            "%",
            "%4",
            "%zz",
            "q%=1",
            "%71uery=up&query=x",
            "a=1&query=%ff%fe",
            "%c3=1",
            "+=+",
            "a+b=c+d",
            "x=%e2%82%ac",
            "query=a&query=b&query=a",
            "a=1;query=evil&b",
            "&query=up&",
        ] {
            let new = Params::parse(raw).map(|p| {
                p.pairs()
                    .iter()
                    .map(|p| (p.name().to_string(), p.value().to_string()))
                    .collect::<Vec<_>>()
            });
            let old = split_then_decode(raw)
                .map(|pairs| pairs.into_iter().map(|(_, n, v, _)| (n, v)).collect());
            assert_eq!(new, old, "{raw:?}");
        }
    }

    /// [`HOSTILE`] input made of pairs whose names are deferred, with hostile values.
    const HOSTILE_DEFERRED: &str =
        "((query|q|match%5B%5D|%71)=(=|;|\\+|%|%[0-9a-fA-F]|%[0-9a-fA-FgzG%+&;=]{2}|%ff|%c3|%e2%82|%2[0bB]|é|[a-z0-9])*&?)*";

    fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            proptest::string::string_regex(HOSTILE).unwrap(),
            proptest::string::string_regex(HOSTILE_DEFERRED).unwrap(),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_borrowing_parser_and_encoder_match_the_old_ones(
            raw in hostile(),
            index in 0usize..16,
            value in "\\PC{0,12}",
        ) {
            let old = split_then_decode(&raw);
            let new = Params::parse(&raw);
            match (&old, &new) {
                (Err(old), Err(new)) => proptest::prop_assert_eq!(old, new),
                (Ok(old), Ok(new)) => {
                    let read: Vec<_> = new
                        .pairs()
                        .iter()
                        .map(|p| (p.name(), p.value(), p.has_equals))
                        .collect();
                    let want: Vec<_> = old
                        .iter()
                        .map(|(_, n, v, e)| (n.as_str(), v.as_str(), *e))
                        .collect();
                    proptest::prop_assert_eq!(read, want);
                    proptest::prop_assert_eq!(new.encode(), raw.clone());
                    let index = index % old.len().max(1);
                    let expected = old_encoding_after_set(old, index, &value);
                    let mut set = new.clone();
                    set.set_value(index, value.clone());
                    proptest::prop_assert_eq!(set.encode(), expected.clone());
                    let mut given = new.clone();
                    given.set_value_encoded(index, value.clone(), Some(encode(&value).into()));
                    proptest::prop_assert_eq!(given.encode(), expected);
                }
                _ => proptest::prop_assert!(false, "old {:?}, new {:?}", old, new),
            }
            // The lazy path: deferred values resolved, or one of them set without being
            // decoded (as after a remembered answer, which proves its text decodes) and
            // the rest resolved, reads and refuses as the old codec did.
            let lazy = Params::parse_deferring(&raw, DEFERRED).and_then(|mut p| {
                p.resolve_pending()?;
                Ok(p)
            });
            match (&old, &lazy) {
                (Err(old), Err(lazy)) => proptest::prop_assert_eq!(old, lazy),
                (Ok(old), Ok(lazy)) => {
                    let read: Vec<_> = lazy.pairs().iter().map(|p| (p.name(), p.value())).collect();
                    let want: Vec<_> = old.iter().map(|(_, n, v, _)| (n.as_str(), v.as_str())).collect();
                    proptest::prop_assert_eq!(read, want);
                    proptest::prop_assert_eq!(lazy.encode(), raw.clone());
                    let index = index % old.len().max(1);
                    let same = old.get(index).map(|(_, _, v, _)| v.clone());
                    for value in std::iter::once(value.clone()).chain(same) {
                        let mut set = Params::parse_deferring(&raw, DEFERRED).unwrap();
                        set.set_value(index, value.clone());
                        set.resolve_pending().unwrap();
                        proptest::prop_assert_eq!(
                            set.encode(),
                            old_encoding_after_set(old, index, &value)
                        );
                    }
                }
                _ => proptest::prop_assert!(false, "old {:?}, lazy {:?}", old, lazy),
            }
        }

        #[test]
        fn the_pair_count_is_what_go_counts_in_the_text_forwarded(
            raw in hostile(),
            index in 0usize..16,
            value in "\\PC{0,12}",
            removed in proptest::sample::select(vec!["query", "match[]", "a", "b", "%71uery", ""]),
            pushed in proptest::option::of(("[a-z&=%+ ]{0,6}", "[a-z&=%+ ]{0,6}")),
        ) {
            if let Ok(mut p) = Params::parse_deferring(&raw, DEFERRED) {
                proptest::prop_assert_eq!(p.go_param_count(), go_param_count(raw.as_bytes()));
                if p.resolve_pending().is_err() {
                    return Ok(());
                }
                let index = index % p.pairs().len().max(1);
                p.set_value(index, value);
                p.remove_all(&[removed]);
                if let Some((name, value)) = &pushed {
                    p.push(name, value.as_str());
                }
                proptest::prop_assert_eq!(p.go_param_count(), go_param_count(p.encode().as_bytes()));
                // The forwarded `:path` is the path joined with that same text.
                let query = p.encode();
                let joined = if query.is_empty() { "/p".to_string() } else { format!("/p?{query}") };
                proptest::prop_assert_eq!(p.encode_target("/p"), joined);
            }
        }

        #[test]
        fn decodes_to_agrees_with_decode(raw in HOSTILE, text in HOSTILE) {
            let decoded = decode(&raw, 0).ok();
            proptest::prop_assert_eq!(decodes_to(&raw, &text), decoded.as_deref() == Some(text.as_str()));
            if let Some(decoded) = decoded {
                proptest::prop_assert!(decodes_to(&raw, &decoded));
            }
        }

        #[test]
        fn parse_never_panics_and_untouched_input_round_trips(raw in "\\PC*") {
            if let Ok(p) = Params::parse(&raw) {
                proptest::prop_assert_eq!(p.encode(), raw);
            }
        }

        #[test]
        fn encode_escapes_every_byte_but_the_unreserved(text in "\\PC{0,300}") {
            let mut expected = String::new();
            for b in text.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    expected.push(char::from(b));
                } else {
                    expected.push_str(&format!("%{b:02X}"));
                }
            }
            proptest::prop_assert_eq!(encode(&text), expected);
        }

        #[test]
        fn any_value_survives_encode_then_decode(name in "[a-z_\\[\\]]{1,8}", value in "\\PC*") {
            let mut p = Params::parse("x=1").unwrap();
            p.push(&name, value.as_str());
            let encoded = p.encode();
            let again = Params::parse(&encoded).unwrap();
            proptest::prop_assert_eq!(again.pairs()[1].name(), name.as_str());
            proptest::prop_assert_eq!(again.pairs()[1].value(), value.as_str());
        }
    }
}
