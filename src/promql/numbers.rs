//! Number and duration literals: where each backend's lexer ends one, what it is worth,
//! and which spellings a backend cannot evaluate.
//!
//! The two backends disagree here, so each dialect scans like its backend:
//! - Prometheus reads a number (`1`, `.5`, `1e3`, `0x1F`), or digits and units as a
//!   duration (`1h30m`: units in decreasing order, each once, no fractions).
//! - VictoriaMetrics (metricsql 0.49) tries a duration first, fractions and negative
//!   later parts included (`1.5h`, `5m-30s`, `10i` in steps), and only then a number
//!   with an optional size multiplier, case-insensitive (`2Ki`, `5M`, `1kb`; `.5m` is
//!   500000, not half a minute). It evaluates a range, step or offset written as a
//!   number with `ParseFloat`, and panics (taking the process down) when that fails:
//!   `x[0x10]`, `x[1Ki]`, `x[.5m]`. [`is_plain_decimal`] is the form both read.

use super::Dialect;

/// What a literal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    Number,
    Duration,
}

/// Scans the literal that starts at `start` (a digit, or `.` and a digit) the way the
/// dialect's backend does. Returns its kind and where it ends; what follows is for the
/// caller to judge.
pub fn scan(bytes: &[u8], start: usize, dialect: Dialect) -> Result<(Literal, usize), String> {
    match dialect {
        Dialect::Promql => scan_prometheus(bytes, start),
        Dialect::Metricsql => scan_metricsql(bytes, start),
    }
}

/// Where the run of bytes matching `class` from `i` ends.
fn run(bytes: &[u8], mut i: usize, class: fn(&u8) -> bool) -> usize {
    while bytes.get(i).is_some_and(class) {
        i += 1;
    }
    i
}

fn digits(bytes: &[u8], i: usize) -> usize {
    run(bytes, i, u8::is_ascii_digit)
}

/// Prometheus' `lexNumberOrDuration`: a number, else digits followed by unit letters.
fn scan_prometheus(bytes: &[u8], start: usize) -> Result<(Literal, usize), String> {
    let mut i = start;
    if bytes[i] == b'0' && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
        i = run(bytes, i + 2, u8::is_ascii_hexdigit);
        if i == start + 2 {
            return Err("bad number syntax".into());
        }
        return Ok((Literal::Number, i));
    }
    let int_end = digits(bytes, i);
    if bytes.get(int_end).is_some_and(u8::is_ascii_alphabetic) && !is_exponent(bytes, int_end) {
        // Digits and units, repeated (`1h30m`); validated by `duration_seconds`.
        i = start;
        loop {
            let num_start = i;
            i = digits(bytes, i);
            if i == num_start {
                break;
            }
            let unit_start = i;
            i = run(bytes, i, u8::is_ascii_alphabetic);
            if i == unit_start {
                return Err("digits without a unit in a duration".into());
            }
        }
        return Ok((Literal::Duration, i));
    }
    i = int_end;
    if bytes.get(i) == Some(&b'.') {
        i = digits(bytes, i + 1);
    }
    if is_exponent(bytes, i) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(bytes, i);
    }
    Ok((Literal::Number, i))
}

fn is_exponent(bytes: &[u8], i: usize) -> bool {
    if !matches!(bytes.get(i), Some(b'e' | b'E')) {
        return false;
    }
    let j = if matches!(bytes.get(i + 1), Some(b'+' | b'-')) {
        i + 2
    } else {
        i + 1
    };
    bytes.get(j).is_some_and(u8::is_ascii_digit)
}

/// metricsql's lexer: `scanDuration` first, then `scanPositiveNumber`.
fn scan_metricsql(bytes: &[u8], start: usize) -> Result<(Literal, usize), String> {
    let s = &bytes[start..];
    if let Some(len) = metricsql_duration_len(s) {
        return Ok((Literal::Duration, start + len));
    }
    let mut i = 0;
    if s[0] == b'0' {
        match s.get(1).map(u8::to_ascii_lowercase) {
            Some(b'x') => return Ok((Literal::Number, start + run(s, 2, u8::is_ascii_hexdigit))),
            Some(b'o' | b'b') => i = 2,
            _ => {}
        }
    }
    i = digits(s, i);
    if let Some(m) = multiplier_len(&s[i..]) {
        return Ok((Literal::Number, start + i + m));
    }
    if s.get(i) == Some(&b'.') {
        i = digits(s, i + 1);
        if let Some(m) = multiplier_len(&s[i..]) {
            return Ok((Literal::Number, start + i + m));
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        i = digits(s, i);
        if i == exp_start {
            return Err("missing exponent".into());
        }
    }
    Ok((Literal::Number, start + i))
}

/// Length of metricsql's duration at the start of `s`: parts like `5m`, `1.5h`, later
/// ones possibly negative (`5m-30s`). Like metricsql, a later part may lack digits
/// (`5m-m` is one token to it); [`duration_seconds`] refuses those.
fn metricsql_duration_len(s: &[u8]) -> Option<usize> {
    let mut len = metricsql_duration_part(s, false)?;
    while let Some(n) = metricsql_duration_part(&s[len..], true) {
        len += n;
    }
    Some(len)
}

fn metricsql_duration_part(s: &[u8], may_be_negative: bool) -> Option<usize> {
    let mut i = usize::from(may_be_negative && s.first() == Some(&b'-'));
    i = digits(s, i);
    if i == 0 || i == s.len() {
        return None;
    }
    if s[i] == b'.' {
        i = digits(s, i + 1);
        if i == s.len() {
            return None;
        }
    }
    match s[i] {
        b'm' if s.get(i + 1) == Some(&b's') => Some(i + 2),
        b'm' | b's' | b'h' | b'd' | b'w' | b'y' | b'i' => Some(i + 1),
        _ => None,
    }
}

/// metricsql's size multipliers, longest first, matched case-insensitively.
const MULTIPLIERS: [(&str, f64); 16] = [
    ("kib", 1024.0),
    ("ki", 1024.0),
    ("kb", 1e3),
    ("k", 1e3),
    ("mib", 1048576.0),
    ("mi", 1048576.0),
    ("mb", 1e6),
    ("m", 1e6),
    ("gib", 1073741824.0),
    ("gi", 1073741824.0),
    ("gb", 1e9),
    ("g", 1e9),
    ("tib", 1099511627776.0),
    ("ti", 1099511627776.0),
    ("tb", 1e12),
    ("t", 1e12),
];

fn multiplier_len(rest: &[u8]) -> Option<usize> {
    MULTIPLIERS
        .iter()
        .find(|(m, _)| rest.len() >= m.len() && rest[..m.len()].eq_ignore_ascii_case(m.as_bytes()))
        .map(|(m, _)| m.len())
}

/// The value of a number literal the lexer produced, or `None` when the backend cannot
/// read it (out of range, a bad octal or binary integer).
pub fn number_value(text: &str, dialect: Dialect) -> Option<f64> {
    let value = match dialect {
        // Prometheus' parseNumber: `ParseInt(s, 0, 64)` first, then `ParseFloat`.
        Dialect::Promql => go_parse_int(text).or_else(|| text.parse::<f64>().ok())?,
        Dialect::Metricsql => {
            let b = text.as_bytes();
            let special = b.len() > 1
                && b[0] == b'0'
                && (b[1].is_ascii_digit()
                    || matches!(b[1].to_ascii_lowercase(), b'x' | b'o' | b'b'));
            if special {
                go_parse_int(text)?
            } else {
                let (digits, times) = MULTIPLIERS
                    .iter()
                    .find(|(m, _)| {
                        text.len() > m.len() && text[text.len() - m.len()..].eq_ignore_ascii_case(m)
                    })
                    .map_or((text, 1.0), |(m, f)| (&text[..text.len() - m.len()], *f));
                digits.parse::<f64>().ok()? * times
            }
        }
    };
    value.is_finite().then_some(value)
}

/// Go's `strconv.ParseInt(s, 0, 64)` on the digit forms the lexers produce.
fn go_parse_int(text: &str) -> Option<f64> {
    // The prefix letter in either case; `from_str_radix` takes digits in either case.
    let (digits, radix) = match text.as_bytes() {
        [b'0', x, ..] if x.eq_ignore_ascii_case(&b'x') => (&text[2..], 16),
        [b'0', o, ..] if o.eq_ignore_ascii_case(&b'o') => (&text[2..], 8),
        [b'0', b, ..] if b.eq_ignore_ascii_case(&b'b') => (&text[2..], 2),
        [b'0', _, ..] => (&text[1..], 8),
        _ => (text, 10),
    };
    if digits.is_empty() {
        return None;
    }
    i64::from_str_radix(digits, radix).ok().map(|v| v as f64)
}

/// Whether a number literal is one both backends read as seconds where a duration goes:
/// decimal digits with an optional fraction and exponent, what Go's `ParseFloat` takes.
pub fn is_plain_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let int_end = digits(b, 0);
    let mut i = int_end;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        let f = digits(b, i + 1);
        frac = f - i - 1;
        i = f;
    }
    if int_end == 0 && frac == 0 {
        return false;
    }
    if is_exponent(b, i) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i);
    }
    i == b.len()
}

const UNITS: [(&str, f64); 8] = [
    ("y", 365.0 * 86400.0),
    ("w", 7.0 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
    // MetricsQL only: a multiple of the query step; its length is unknown here.
    ("i", 0.0),
];

/// Seconds in a duration literal, or why the backend cannot read it.
///
/// Prometheus: units in decreasing order, each at most once, integers only. metricsql:
/// any order, fractions, `i`, and later parts that are negative (once one is, the rest
/// count negative too, as metricsql sums them); a part without digits is refused,
/// because metricsql lexes it and then panics evaluating it.
pub fn duration_seconds(text: &str, dialect: Dialect) -> Result<f64, String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total = 0.0;
    let mut last_unit = None::<usize>;
    let mut negative = false;
    while i < bytes.len() {
        let part_negative = dialect == Dialect::Metricsql && i > 0 && bytes[i] == b'-';
        let num_start = i + usize::from(part_negative);
        i = num_start;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number_text = &text[num_start..i];
        if !number_text.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!("bad number or duration syntax: {text:?}"));
        }
        let number: f64 = number_text
            .parse()
            .map_err(|_| format!("bad number or duration syntax: {text:?}"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("unknown unit {unit:?} in duration {text:?}"));
        };
        if dialect == Dialect::Promql {
            if unit == "i" {
                return Err(format!("unknown unit {unit:?} in duration {text:?}"));
            }
            if last_unit.is_some_and(|last| index <= last) || number_text.contains('.') {
                return Err(format!("not a valid duration string: {text:?}"));
            }
        }
        last_unit = Some(index);
        negative |= part_negative;
        let seconds = number * UNITS[index].1;
        total += if negative { -seconds } else { seconds };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str, dialect: Dialect) -> Result<(Literal, &str), String> {
        scan(text.as_bytes(), 0, dialect).map(|(k, end)| (k, &text[..end]))
    }

    #[test]
    fn each_dialect_ends_a_literal_where_its_backend_does() {
        use Literal::{Duration as D, Number as N};
        for (text, promql, metricsql) in [
            ("5m", (D, "5m"), (D, "5m")),
            ("1h30m", (D, "1h30m"), (D, "1h30m")),
            ("5m-30s", (D, "5m"), (D, "5m-30s")),
            ("5m-m", (D, "5m"), (D, "5m-m")),
            ("1.5h", (N, "1.5"), (D, "1.5h")),
            ("5.m", (N, "5."), (D, "5.m")),
            (".5m", (N, ".5"), (N, ".5m")),
            ("5M", (D, "5M"), (N, "5M")),
            ("2Ki", (D, "2Ki"), (N, "2Ki")),
            ("1kb", (D, "1kb"), (N, "1kb")),
            ("1e3", (N, "1e3"), (N, "1e3")),
            ("1e3k", (N, "1e3"), (N, "1e3")),
            ("0x1F", (N, "0x1F"), (N, "0x1F")),
            ("0755", (N, "0755"), (N, "0755")),
            ("10i", (D, "10i"), (D, "10i")),
            ("1and", (D, "1and"), (N, "1")),
        ] {
            assert_eq!(
                kind(text, Dialect::Promql).unwrap(),
                promql,
                "{text} promql"
            );
            assert_eq!(
                kind(text, Dialect::Metricsql).unwrap(),
                metricsql,
                "{text} metricsql"
            );
        }
        assert!(kind("0b101", Dialect::Promql).is_err());
        assert_eq!(kind("0b101", Dialect::Metricsql).unwrap(), (N, "0b101"));
    }

    #[test]
    fn values_follow_each_backend() {
        assert_eq!(number_value("0x1F", Dialect::Promql), Some(31.0));
        assert_eq!(number_value("0755", Dialect::Promql), Some(493.0));
        assert_eq!(number_value("09", Dialect::Promql), Some(9.0));
        assert_eq!(number_value("09", Dialect::Metricsql), None);
        assert_eq!(number_value(".5m", Dialect::Metricsql), Some(500000.0));
        assert_eq!(number_value("2Ki", Dialect::Metricsql), Some(2048.0));
        assert_eq!(number_value("1KB", Dialect::Metricsql), Some(1000.0));
        assert_eq!(number_value("0b101", Dialect::Metricsql), Some(5.0));
        assert_eq!(number_value("1e400", Dialect::Promql), None);
        assert_eq!(duration_seconds("1h30m", Dialect::Promql), Ok(5400.0));
        assert!(duration_seconds("30m1h", Dialect::Promql).is_err());
        assert_eq!(duration_seconds("30m1h", Dialect::Metricsql), Ok(5400.0));
        assert_eq!(duration_seconds("5m-30s", Dialect::Metricsql), Ok(270.0));
        assert_eq!(duration_seconds("5m-30s10s", Dialect::Metricsql), Ok(260.0));
        assert!(duration_seconds("5m-m", Dialect::Metricsql).is_err());
        assert!(duration_seconds("1.5h", Dialect::Promql).is_err());
    }

    #[test]
    fn plain_decimals_are_what_parse_float_reads() {
        for ok in ["5", "5.", ".5", "1e3", "1.5E-3", "010"] {
            assert!(is_plain_decimal(ok), "{ok}");
        }
        for bad in ["0x10", "1Ki", ".5m", "5M", ".", "1e", "0b1"] {
            assert!(!is_plain_decimal(bad), "{bad}");
        }
    }
}
