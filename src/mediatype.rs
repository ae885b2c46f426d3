//! `Content-Type` as Go's `mime.ParseMediaType` reads it.
//!
//! Both backends are Go programs, and `Request.ParseForm` reads a POST body as a form
//! only when `mime.ParseMediaType` returns `application/x-www-form-urlencoded` for its
//! `Content-Type`. Where Go returns an error it reads nothing, or reads the body and
//! reports the error, depending on the error (see [`MediaTypeError::go_reads_type`]).
//! The filter decides whether a body counts by this module's answer, so it must be
//! Go's answer, byte for byte: a parameter given twice (`; a=1; a=2`) makes Go ignore
//! the body, and a filter that read the body anyway rewrote parameters the backend
//! never saw while adding no tenant selector of its own.
//!
//! This follows Go 1.19's `mime/mediatype.go` (the Go of Debian's Prometheus 2.42 and
//! VictoriaMetrics 1.79), parameters and RFC 2231 continuations included. The one
//! later change to what parses: Go 1.21 accepts a repeated parameter whose values are
//! equal, which Go 1.19 refuses; [`MediaTypeError::DuplicateParameter`] says which
//! case it is, so that the caller can refuse where versions differ.
//!
//! The input is the header's bytes. Go would read bytes that are not UTF-8 inside a
//! quoted value; this module refuses them instead ([`MediaTypeError::NotUtf8`]), so
//! that it never guesses.

use std::collections::BTreeMap;
use std::fmt;

/// A media type Go accepts: the type in lower case, and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype` (or a lone token, which Go accepts too), lower-cased and trimmed.
    pub essence: String,
    /// Parameter names in lower case to their values, RFC 2231 continuations joined
    /// and decoded. Values are bytes: a `%ff` in an encoded value is one byte.
    pub params: BTreeMap<String, Vec<u8>>,
}

/// Why Go's `mime.ParseMediaType` refuses a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaTypeError {
    /// Not UTF-8: the filter's own refusal, Go has no such error.
    NotUtf8,
    /// `mime: no media type`.
    NoMediaType,
    /// `mime: expected slash after first token`.
    ExpectedSlash,
    /// `mime: expected token after slash`.
    ExpectedTokenAfterSlash,
    /// `mime: unexpected content after media subtype`.
    UnexpectedContent,
    /// `mime: invalid media parameter`. Go still returns the media type with this
    /// error, so `ParseForm` reads the body, and reports the error.
    InvalidParameter {
        /// The media type Go returns along with the error.
        essence: String,
    },
    /// `mime: duplicate parameter name`. Go 1.19 refuses every repeat; Go 1.21 and
    /// later accept a repeat with an equal value (`same_value`).
    DuplicateParameter { name: String, same_value: bool },
}

impl MediaTypeError {
    /// Go's error text.
    pub fn go_message(&self) -> &'static str {
        match self {
            MediaTypeError::NotUtf8 => "not valid UTF-8",
            MediaTypeError::NoMediaType => "mime: no media type",
            MediaTypeError::ExpectedSlash => "mime: expected slash after first token",
            MediaTypeError::ExpectedTokenAfterSlash => "mime: expected token after slash",
            MediaTypeError::UnexpectedContent => "mime: unexpected content after media subtype",
            MediaTypeError::InvalidParameter { .. } => "mime: invalid media parameter",
            MediaTypeError::DuplicateParameter { .. } => "mime: duplicate parameter name",
        }
    }

    /// The media type Go returns along with this error (it is empty for all others).
    pub fn go_reads_type(&self) -> Option<&str> {
        match self {
            MediaTypeError::InvalidParameter { essence } => Some(essence),
            _ => None,
        }
    }
}

impl fmt::Display for MediaTypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.go_message())?;
        if let MediaTypeError::DuplicateParameter { name, .. } = self {
            write!(f, " {name:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MediaTypeError {}

/// Go's `mime.ParseMediaType` (Go 1.19) on a header value.
pub fn parse(value: &[u8]) -> Result<MediaType, MediaTypeError> {
    let value = std::str::from_utf8(value).map_err(|_| MediaTypeError::NotUtf8)?;
    let base = value.split(';').next().unwrap_or_default();
    let essence = go_to_lower(base).trim().to_string();
    check_type(&essence)?;

    let mut params: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Parameters with a `*` in their name, by the name before it: RFC 2231 pieces.
    let mut continuation: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut rest = &value[base.len()..];
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some((name, param_value, after)) = consume_param(rest) else {
            if rest.trim() == ";" {
                // A trailing semicolon is no error.
                break;
            }
            return Err(MediaTypeError::InvalidParameter { essence });
        };
        let map = match name.split_once('*') {
            Some((base_name, _)) => continuation.entry(base_name.to_string()).or_default(),
            None => &mut params,
        };
        if let Some(previous) = map.get(&name) {
            return Err(MediaTypeError::DuplicateParameter {
                same_value: *previous == param_value,
                name,
            });
        }
        map.insert(name, param_value);
        rest = after;
    }

    for (base_name, pieces) in continuation {
        if let Some(whole) = pieces.get(&format!("{base_name}*")) {
            if let Some(decoded) = decode_2231(whole) {
                params.insert(base_name, decoded);
            }
            continue;
        }
        let mut joined = Vec::new();
        let mut valid = false;
        for n in 0.. {
            let simple = format!("{base_name}*{n}");
            if let Some(piece) = pieces.get(&simple) {
                valid = true;
                joined.extend_from_slice(piece);
                continue;
            }
            let Some(piece) = pieces.get(&format!("{simple}*")) else {
                break;
            };
            valid = true;
            if n == 0 {
                if let Some(decoded) = decode_2231(piece) {
                    joined.extend(decoded);
                }
            } else if let Some(decoded) = percent_unescape(piece) {
                joined.extend(decoded);
            }
        }
        if valid {
            params.insert(base_name, joined);
        }
    }
    Ok(MediaType { essence, params })
}

/// Go's `strings.ToLower` where it matters: every character that lower-cases to a
/// token character. Besides ASCII those are U+0130 (`İ` → `i`) and the Kelvin sign
/// (U+212A → `k`); any other character stays outside the token alphabet either way.
fn go_to_lower(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.chars()
        .map(|c| match c {
            '\u{130}' => 'i',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn is_tspecial(b: u8) -> bool {
    b"()<>@,;:\\\"/[]?=".contains(&b)
}

fn is_token_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !is_tspecial(b)
}

/// The longest run of token characters at the start, and what follows.
fn consume_token(text: &str) -> (&str, &str) {
    let end = text
        .bytes()
        .position(|b| !is_token_char(b))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Go's `checkMediaTypeDisposition`: a token, optionally `/` and a second token.
fn check_type(essence: &str) -> Result<(), MediaTypeError> {
    let (kind, rest) = consume_token(essence);
    if kind.is_empty() {
        return Err(MediaTypeError::NoMediaType);
    }
    if rest.is_empty() {
        return Ok(());
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(MediaTypeError::ExpectedSlash);
    };
    let (subtype, rest) = consume_token(rest);
    if subtype.is_empty() {
        return Err(MediaTypeError::ExpectedTokenAfterSlash);
    }
    if !rest.is_empty() {
        return Err(MediaTypeError::UnexpectedContent);
    }
    Ok(())
}

/// Go's `consumeMediaParam`: `; name = value`, with the name lower-cased.
fn consume_param(text: &str) -> Option<(String, Vec<u8>, &str)> {
    let rest = text.trim_start().strip_prefix(';')?.trim_start();
    let (name, rest) = consume_token(rest);
    if name.is_empty() {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let (value, after) = consume_value(rest)?;
    if value.is_empty() && after.len() == rest.len() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value, after))
}

/// Go's `consumeValue`: a token, or a quoted string in which a backslash escapes a
/// tspecial and stands for itself before anything else (Go's allowance for MSIE's
/// unescaped Windows paths). `None` for an unterminated quote or a CR or LF in one.
fn consume_value(text: &str) -> Option<(Vec<u8>, &str)> {
    let Some(quoted) = text.strip_prefix('"') else {
        let (token, rest) = consume_token(text);
        return Some((token.as_bytes().to_vec(), rest));
    };
    let bytes = quoted.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some((out, &quoted[i + 1..])),
            b'\\' if bytes.get(i + 1).copied().is_some_and(is_tspecial) => {
                out.push(bytes[i + 1]);
                i += 2;
                continue;
            }
            b'\r' | b'\n' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    None
}

/// Go's `decode2231Enc`: `charset'language'percent-encoded`, for US-ASCII and UTF-8.
fn decode_2231(value: &[u8]) -> Option<Vec<u8>> {
    let mut parts = value.splitn(3, |&b| b == b'\'');
    let (charset, _language, encoded) = (parts.next()?, parts.next()?, parts.next()?);
    let charset = go_to_lower(std::str::from_utf8(charset).ok()?);
    if charset != "us-ascii" && charset != "utf-8" {
        return None;
    }
    percent_unescape(encoded)
}

/// Go's `percentHexUnescape`: every `%` must start two hex digits.
fn percent_unescape(value: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let high = hex(*value.get(i + 1)?)?;
            let low = hex(*value.get(i + 2)?)?;
            out.push(u8::try_from(high << 4 | low).ok()?);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ascii_lowering_takes_the_short_way_and_agrees() {
        for text in ["Application/X-WWW-Form-URLEncoded", "a/b", "", "İ\u{212a}X"] {
            let long: String = text
                .chars()
                .map(|c| match c {
                    '\u{130}' => 'i',
                    '\u{212a}' => 'k',
                    c => c.to_ascii_lowercase(),
                })
                .collect();
            assert_eq!(super::go_to_lower(text), long);
        }
    }

    use super::*;

    fn ok(value: &str) -> (String, Vec<(String, String)>) {
        let parsed = parse(value.as_bytes()).unwrap_or_else(|e| panic!("{value:?}: {e}"));
        let params = parsed
            .params
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect();
        (parsed.essence, params)
    }

    fn err(value: &str) -> MediaTypeError {
        match parse(value.as_bytes()) {
            Ok(parsed) => panic!("{value:?} parsed: {parsed:?}"),
            Err(e) => e,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn forms_with_case_whitespace_quotes_and_trailing_semicolons() {
        for value in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded",
            "  application/x-www-form-urlencoded  ",
            "application/x-www-form-urlencoded;",
            "application/x-www-form-urlencoded ; ",
            "application/x-www-form-urlencoded\u{a0};\u{3000}charset=utf-8",
        ] {
            assert_eq!(
                ok(value).0,
                "application/x-www-form-urlencoded",
                "{value:?}"
            );
        }
        assert_eq!(
            ok("application/x-www-form-urlencoded; charset=\"UTF-8\"; a = b"),
            (
                "application/x-www-form-urlencoded".into(),
                pairs(&[("a", "b"), ("charset", "UTF-8")])
            )
        );
        // Go's strings.ToLower maps U+0130 to `i`: Go reads this as a form too.
        assert_eq!(
            ok("applİcation/x-www-form-urlencoded").0,
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn repeated_parameters_are_refused_and_say_whether_newer_go_accepts_them() {
        assert_eq!(
            err("application/x-www-form-urlencoded; a=1; a=2"),
            MediaTypeError::DuplicateParameter {
                name: "a".into(),
                same_value: false
            }
        );
        assert_eq!(
            err("application/x-www-form-urlencoded; charset=utf-8; CHARSET=latin1"),
            MediaTypeError::DuplicateParameter {
                name: "charset".into(),
                same_value: false
            }
        );
        assert_eq!(
            err("application/x-www-form-urlencoded; a=1; A=\"1\""),
            MediaTypeError::DuplicateParameter {
                name: "a".into(),
                same_value: true
            }
        );
        // RFC 2231 pieces are counted apart from plain parameters.
        assert_eq!(ok("text/plain; a=1; a*=utf-8''2").1, pairs(&[("a", "2")]));
        assert!(matches!(
            err("text/plain; a*0=1; a*0=2"),
            MediaTypeError::DuplicateParameter { .. }
        ));
    }

    #[test]
    fn broken_parameters_keep_the_type_and_broken_types_lose_it() {
        for value in [
            "application/x-www-form-urlencoded; charset",
            "application/x-www-form-urlencoded; charset=",
            "application/x-www-form-urlencoded; charset=\"utf-8",
            "application/x-www-form-urlencoded;;",
            "application/x-www-form-urlencoded; a=1,text/plain",
            "application/x-www-form-urlencoded; a=b c",
            "application/x-www-form-urlencoded; =x",
            "application/x-www-form-urlencoded; a=\"x\ry\"",
        ] {
            let e = err(value);
            assert_eq!(
                e.go_reads_type(),
                Some("application/x-www-form-urlencoded"),
                "{value:?}: {e:?}"
            );
        }
        for (value, expected) in [
            ("", MediaTypeError::NoMediaType),
            ("; charset=utf-8", MediaTypeError::NoMediaType),
            (
                "\"application/x-www-form-urlencoded\"",
                MediaTypeError::NoMediaType,
            ),
            (
                "application x-www-form-urlencoded",
                MediaTypeError::ExpectedSlash,
            ),
            ("application/", MediaTypeError::ExpectedTokenAfterSlash),
            (
                "application/x-www-form-urlencoded,text/plain",
                MediaTypeError::UnexpectedContent,
            ),
            (
                "application/x-www-form-urlencoded/x",
                MediaTypeError::UnexpectedContent,
            ),
        ] {
            assert_eq!(err(value), expected, "{value:?}");
            assert_eq!(expected.go_reads_type(), None);
        }
        assert_eq!(
            parse(b"application/x-www-form-urlencoded; a=\"\xff\""),
            Err(MediaTypeError::NotUtf8)
        );
    }

    #[test]
    fn quoted_strings_follow_go() {
        assert_eq!(
            ok(r#"a/b; x="C:\dev\go"; y="\"q\" \\"; z="""#).1,
            pairs(&[("x", r"C:\dev\go"), ("y", r#""q" \"#), ("z", "")])
        );
    }

    #[test]
    fn continuations_are_joined_and_decoded() {
        assert_eq!(
            ok("application/x-stuff; title*0*=us-ascii'en'This%20is%20; title*1*=%2A; title*2=\"!\"").1,
            pairs(&[("title", "This is *!")])
        );
        // A gap ends the pieces; an unknown charset drops the parameter.
        assert_eq!(ok("a; f*0=x; f*2=y").1, pairs(&[("f", "x")]));
        assert_eq!(ok("a; f*=latin1''x").1, pairs(&[]));
        let parsed = parse(b"a; f*=utf-8''%ff").unwrap();
        assert_eq!(parsed.params["f"], vec![0xff]);
    }

    #[test]
    fn trimming_uses_gos_unicode_spaces() {
        // Go's unicode.IsSpace, which strings.TrimSpace and TrimLeftFunc use.
        let go_spaces: Vec<u32> = [0x9, 0xa, 0xb, 0xc, 0xd, 0x20, 0x85, 0xa0, 0x1680]
            .into_iter()
            .chain(0x2000..=0x200a)
            .chain([0x2028, 0x2029, 0x202f, 0x205f, 0x3000])
            .collect();
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(
                c.is_whitespace(),
                go_spaces.contains(&u32::from(c)),
                "{c:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(value in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(&value);
        }

        #[test]
        fn never_panics_on_parameter_soup(value in "[a-z/ ;=\"\\\\*'%0-9\u{a0}]{0,48}") {
            let _ = parse(value.as_bytes());
        }
    }
}
