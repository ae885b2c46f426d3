//! What VictoriaMetrics prints and must read back: queries refused because the backend
//! would fail to re-read its own printout of them (and exit), or read back another query.
//!
//! VictoriaMetrics 1.79 parses a query, prints it (`AppendString`) and parses the
//! printout again (`metricsql.Optimize` → `Clone`) before running it; when that second
//! parse fails it panics, and the process exits. So what it prints must read back as
//! the same query. Its printer writes metric and function names as bare words and drops
//! parentheses it considers redundant; its parser looks at the word where an operand
//! starts before deciding it is an operand. The rules below follow from those two
//! facts, for both dialects (a `promql` filter may front VictoriaMetrics too):
//! - A name that the parser reads as syntax where an operand starts: `bool`, `on`,
//!   `ignoring`, `group_left`, `group_right` right after a binary operator (the
//!   modifiers), `inf` and `nan` anywhere (numbers). `-bool` prints as `0 - bool`,
//!   which reads as `-` with a `bool` modifier and fails. Refused as a metric name
//!   (bare, `{__name__="..."}` or quoted) and as a function name, in any case.
//! - `__name__=""`: printed as an empty name, the matcher disappears on the way back.
//!   It selects nothing in either backend, so nothing is lost.
//! - After `@` (MetricsQL), an expression with its own range, offset or `@`: printed
//!   without its parentheses or a `+` sign, its modifiers become the outer
//!   expression's (`x @ (y[5m])` and `x @ +y @ z` fail to read back, `x @ (y offset 5m)`
//!   moves the offset).

use super::ast::{Expr, ExprKind, MatchOp};
use super::ParseError;

/// Words metricsql reads as syntax at the start of an operand (lower case).
const OPERAND_START_WORDS: [&str; 7] = [
    "bool",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

fn is_operand_start_word(name: &str) -> bool {
    OPERAND_START_WORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(name))
}

/// Refuses what VictoriaMetrics would print in a form it cannot read back as the same query.
pub fn check(src: &str, expr: &Expr<'_>) -> Result<(), ParseError> {
    let mut found: Option<(usize, String)> = None;
    expr.for_each_node(&mut |node| {
        if found.is_some() {
            return;
        }
        match &node.kind {
            ExprKind::Selector(sel) => {
                let names = sel.name.iter().map(|(n, _)| n.as_ref()).chain(
                    sel.groups
                        .iter()
                        .flat_map(|g| &g.matchers)
                        .filter(|m| m.label == "__name__" && m.op == MatchOp::Equal)
                        .map(|m| m.value.as_ref()),
                );
                for name in names {
                    if name.is_empty() {
                        found = Some((
                            node.span.start,
                            "__name__=\"\" selects no series, and VictoriaMetrics would drop it when it prints the query back".into(),
                        ));
                    } else if is_operand_start_word(name) {
                        found = Some((
                            node.span.start,
                            format!(
                                "a metric named {name:?} cannot be sent: VictoriaMetrics prints it back as a bare word, reads that as a keyword, and fails on its own query"
                            ),
                        ));
                    }
                }
            }
            ExprKind::Call(call) if is_operand_start_word(call.name) => {
                found = Some((
                    node.span.start,
                    format!(
                        "a function named {:?} cannot be sent: VictoriaMetrics reads that word as a keyword when it prints the query back",
                        call.name
                    ),
                ));
            }
            ExprKind::At { at, .. } => {
                // metricsql drops parentheses and a unary `+` from what it prints.
                let mut inner: &Expr<'_> = at;
                while let ExprKind::Paren(e)
                | ExprKind::Unary {
                    negative: false,
                    expr: e,
                } = &inner.kind
                {
                    inner = e;
                }
                if matches!(
                    inner.kind,
                    ExprKind::Range(_) | ExprKind::Offset { .. } | ExprKind::At { .. }
                ) {
                    found = Some((
                        at.span.start,
                        "the expression after @ cannot have its own range, offset or @: VictoriaMetrics prints it without parentheses and then reads them as the outer expression's".into(),
                    ));
                }
            }
            _ => {}
        }
    });
    match found {
        Some((at, message)) => Err(ParseError::at(src, at, message)),
        None => Ok(()),
    }
}
