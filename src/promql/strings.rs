//! Go-style string literals: decoding what users wrote, and encoding what we insert.

use std::borrow::Cow;
use std::fmt::Write;

/// Decodes a quoted literal (quotes included) that the lexer already validated.
///
/// Escapes that produce bytes which are not UTF-8 (`"\xff"`) decode lossily; the
/// value is only ever compared, never sent on, so nothing depends on those bytes.
pub fn decode(raw: &str) -> Cow<'_, str> {
    let quote = raw.as_bytes()[0];
    let inner = &raw[1..raw.len() - 1];
    if quote == b'`' || !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let c = bytes.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let simple = match c {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' | b'"' | b'\'' => Some(c),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let (len, base, start) = match c {
            b'x' => (2, 16, i),
            b'u' => (4, 16, i),
            b'U' => (8, 16, i),
            _ => (3, 8, i - 1),
        };
        let digits = inner.get(start..start + len).unwrap_or("0");
        let value = u32::from_str_radix(digits, base).unwrap_or(0xFFFD);
        i = start + len;
        if matches!(c, b'u' | b'U') {
            let ch = char::from_u32(value).unwrap_or('\u{FFFD}');
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        } else {
            out.push(value as u8);
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Writes `value` as a PromQL double-quoted string that decodes back to exactly `value`.
///
/// Quotes and backslashes are escaped and every control character uses an escape, so
/// no claim value can end the string or the selector it is placed in.
pub fn write_quoted(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // Unicode line and paragraph separators and other invisible controls: escape
            // them too, so logs and diffs show what is there.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Escapes every regular-expression metacharacter, like Go's `regexp.QuoteMeta`.
pub fn quote_meta(value: &str) -> Cow<'_, str> {
    const SPECIAL: &[u8] = b"\\.+*?()|[]{}^$";
    if !value.bytes().any(|b| SPECIAL.contains(&b)) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for ch in value.chars() {
        if ch.is_ascii() && SPECIAL.contains(&(ch as u8)) {
            out.push('\\');
        }
        out.push(ch);
    }
    Cow::Owned(out)
}

/// True for names that PromQL accepts unquoted as label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_legacy_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_go_escapes() {
        assert_eq!(decode(r#""a\"b""#), "a\"b");
        assert_eq!(decode(r"'a\'b'"), "a'b");
        assert_eq!(decode(r#""\x41\101\u00e9\U0001F600""#), "AAé😀");
        assert_eq!(decode(r#""\n\t\\""#), "\n\t\\");
        assert_eq!(decode(r"`a\nb`"), "a\\nb");
    }

    #[test]
    fn quoting_round_trips_hostile_values() {
        for v in [
            "1999\"} or vector(1) #",
            "a\\b",
            "line\nbreak",
            "\u{0}\u{7f}\u{2028}",
            "é😀",
        ] {
            let mut out = String::new();
            write_quoted(&mut out, v);
            assert_eq!(decode(&out), v, "{out}");
            assert!(!out[1..out.len() - 1].contains('\n'));
        }
    }

    #[test]
    fn quote_meta_matches_go() {
        assert_eq!(quote_meta("a.b|c"), "a\\.b\\|c");
        assert_eq!(
            quote_meta(r"\.+*?()|[]{}^$"),
            r"\\\.\+\*\?\(\)\|\[\]\{\}\^\$"
        );
        assert_eq!(quote_meta("plain-1999"), "plain-1999");
    }
}
