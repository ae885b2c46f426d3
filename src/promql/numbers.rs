//! Duration literals: `5m`, `1h30m`, `1y2w`; MetricsQL also `1.5h` and `10i` (steps).

use super::Dialect;

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

/// Seconds in a duration literal, with Prometheus' rules: units in decreasing order,
/// each at most once. MetricsQL is laxer (any order, fractions, `i`).
pub fn parse_duration_literal(text: &str, dialect: Dialect) -> Result<f64, String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total = 0.0;
    let mut last_unit = None::<usize>;
    while i < bytes.len() {
        let num_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number: f64 = text[num_start..i]
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
            if last_unit.is_some_and(|last| index <= last)
                || text[num_start..unit_start].contains('.')
            {
                return Err(format!("not a valid duration string: {text:?}"));
            }
        }
        last_unit = Some(index);
        total += number * UNITS[index].1;
    }
    Ok(total)
}
