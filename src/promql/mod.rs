//! PromQL and MetricsQL: lexing, parsing into a spanned AST, type checks, and tenant injection.
//!
//! The entry points are [`parse`] and [`inject::rewrite`].

pub mod ast;
mod check;
mod error;
mod fast;
pub mod inject;
pub mod lexer;
mod numbers;
mod parser;
mod reprint;
mod strings;
mod tokens;

pub use error::ParseError;
pub use strings::{is_legacy_label_name, quote_meta, write_quoted};

/// Which query language the backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Prometheus 3.x PromQL.
    #[default]
    Promql,
    /// The MetricsQL subset VictoriaMetrics users write (no `WITH` templates).
    Metricsql,
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "promql" => Ok(Dialect::Promql),
            "metricsql" => Ok(Dialect::Metricsql),
            other => Err(format!(
                "unknown dialect {other:?}, expected \"promql\" or \"metricsql\""
            )),
        }
    }
}

/// Parses `input` into an AST, with every node carrying its byte span.
///
/// Lexing, syntax and the type checks all happen here: an `Ok` is a query the
/// backend would accept too.
pub fn parse(input: &str, dialect: Dialect) -> Result<ast::Expr<'_>, ParseError> {
    let tokens = lexer::lex(input, dialect)?;
    parse_lexed(input, tokens, dialect)
}

/// Parses and checks already-lexed tokens of `input`.
pub(crate) fn parse_lexed<'a>(
    input: &'a str,
    tokens: Vec<lexer::Token>,
    dialect: Dialect,
) -> Result<ast::Expr<'a>, ParseError> {
    if tokens.is_empty() {
        return Err(ParseError::at(
            input,
            input.len(),
            "no expression found in input",
        ));
    }
    if dialect == Dialect::Metricsql {
        if let Some(at) = tokens.windows(2).find_map(|w| {
            (w[0].0 == lexer::Tok::Ident(lexer::Kw::With) && w[1].0 == lexer::Tok::LParen)
                .then_some(w[0].1.start)
        }) {
            return Err(ParseError::at(
                input,
                at,
                "MetricsQL WITH templates are not supported: expand the template and send the resulting query",
            ));
        }
    }
    let fast = match dialect {
        Dialect::Promql => fast::parse(input, &tokens),
        Dialect::Metricsql => None,
    };
    let expr = match fast {
        Some(expr) => expr,
        None => {
            parser::parse_tokens(input, tokens, dialect).map_err(|e| e.into_parse_error(input))?
        }
    };
    // The lexer's nesting score bounds the parser's recursion; chains of postfix
    // modifiers (`x[1m][1m]...`, `x @ 1 @ 1 ...`) are read in a loop but make a tree as
    // deep as they are long, and the checks below walk trees recursively.
    let (depth, at) = expr.nesting_depth();
    if depth > lexer::MAX_NESTING {
        return Err(ParseError::at(
            input,
            at,
            format!(
                "query nests too deeply (more than {} levels)",
                lexer::MAX_NESTING
            ),
        ));
    }
    check::check(input, &expr, dialect)?;
    reprint::check(input, &expr)?;
    Ok(expr)
}

/// For `tests/fast_path.rs`: `None` when the query does not lex or the fast reader
/// leaves it to the grammar; otherwise whether the grammar builds the same tree.
#[doc(hidden)]
pub fn __fast_path_agrees(input: &str) -> Option<Result<(), String>> {
    let tokens = lexer::lex(input, Dialect::Promql).ok()?;
    let fast = format!("{:?}", fast::parse(input, &tokens)?);
    Some(match parser::parse_tokens(input, tokens, Dialect::Promql) {
        Ok(grammar) if format!("{grammar:?}") == fast => Ok(()),
        Ok(grammar) => Err(format!("fast reader: {fast}\ngrammar: {grammar:?}")),
        Err(e) => Err(format!(
            "the grammar refuses it ({}), the fast reader built {fast}",
            e.into_parse_error(input)
        )),
    })
}

#[doc(hidden)]
pub fn __lex_only(input: &str) -> usize {
    lexer::lex(input, Dialect::Promql)
        .map(|t| t.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_capped_with_a_clear_error() {
        let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        let err = parse(&deep, Dialect::Promql).unwrap_err();
        assert!(err.message.contains("nests too deeply"), "{err}");
        let unary = format!("{}1", "-".repeat(100_000));
        assert!(parse(&unary, Dialect::Metricsql)
            .unwrap_err()
            .message
            .contains("nests too deeply"));
        let pow = format!("1{}", "^1".repeat(100_000));
        assert!(parse(&pow, Dialect::Promql).is_err());
        let chain = format!("x{}", " + x".repeat(100_000));
        assert!(parse(&chain, Dialect::Promql)
            .unwrap_err()
            .message
            .contains("too many operators"));
    }

    #[test]
    fn a_lone_carriage_return_in_a_comment_is_refused() {
        // Found by the rewrite_query fuzz target: Prometheus reads `x #c\r/ y` as
        // `x / y`, so `y` went to the backend without the tenant matcher.
        for dialect in [Dialect::Promql, Dialect::Metricsql] {
            for query in ["x #c\r/ y", "x #\r", "# a\r\n# b\rc\nx"] {
                let err = parse(query, dialect).unwrap_err();
                assert!(err.message.contains("carriage return"), "{query:?}: {err}");
            }
            // A CRLF line end, and a carriage return outside comments, are fine.
            for query in ["# c\r\nx", "x # c\r\n/ y", "x\r/\ry"] {
                assert!(parse(query, dialect).is_ok(), "{query:?}");
            }
        }
    }

    #[test]
    fn matchers_do_not_count_as_operators() {
        // 1,000 selectors with three matchers each: 999 operators, 3,000 `=`.
        let query = (0..1000)
            .map(|i| format!("m{i}{{a=\"1\",b!=\"2\",c=~\"3\"}}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(parse(&query, Dialect::Promql).is_ok());
    }

    #[test]
    fn errors_carry_position_and_expectation() {
        let err = parse("sum(rate(foo{a=\"b\",}[5m])) by (", Dialect::Promql).unwrap_err();
        assert_eq!((err.line, err.column), (1, 32));
        let err = parse("foo{a=\"b\", }}", Dialect::Promql).unwrap_err();
        assert!(err.to_string().contains("at 1:"), "{err}");
        let err = parse("foo{a=}", Dialect::Promql).unwrap_err();
        assert_eq!(err.to_string(), "unexpected \"}\" at 1:7, expected string");
        let err = parse("WITH (x = y) x", Dialect::Metricsql).unwrap_err();
        assert!(
            err.message.contains("WITH templates are not supported"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod precedence_tests {
    use super::ast::{Expr, ExprKind};
    use super::*;

    /// The tree as an s-expression, to see how operators grouped.
    fn shape(src: &str, e: &Expr<'_>) -> String {
        match &e.kind {
            ExprKind::Binary(b) => format!(
                "({} {} {})",
                b.op.symbol(),
                shape(src, &b.lhs),
                shape(src, &b.rhs)
            ),
            ExprKind::Unary { negative, expr } => format!(
                "({} {})",
                if *negative { "neg" } else { "pos" },
                shape(src, expr)
            ),
            ExprKind::Paren(inner) => shape(src, inner),
            _ => src[e.span.clone()].to_string(),
        }
    }

    fn check(src: &str, dialect: Dialect, expected: &str) {
        let e = parse(src, dialect).unwrap();
        assert_eq!(shape(src, &e), expected, "{src}");
    }

    #[test]
    fn operators_group_like_prometheus() {
        check(
            "a + b * c ^ d ^ e - f",
            Dialect::Promql,
            "(- (+ a (* b (^ c (^ d e)))) f)",
        );
        check("-1 ^ 2", Dialect::Promql, "(neg (^ 1 2))");
        check("-a * b", Dialect::Promql, "(* (neg a) b)");
        check("2 ^ -3 * 4", Dialect::Promql, "(* (^ 2 (neg 3)) 4)");
        check(
            "a or b and c unless d",
            Dialect::Promql,
            "(or a (unless (and b c) d))",
        );
        check("1 < bool 2 - 1 * 2", Dialect::Promql, "(< 1 (- 2 (* 1 2)))");
        check("a == b or c > d", Dialect::Promql, "(or (== a b) (> c d))");
        check("a / b / c", Dialect::Promql, "(/ (/ a b) c)");
        check("a atan2 b + c", Dialect::Promql, "(+ (atan2 a b) c)");
        check(
            "a default b or c if d",
            Dialect::Metricsql,
            "(default a (if (or b c) d))",
        );
        check("- - a ^ b", Dialect::Promql, "(neg (neg (^ a b)))");
    }
}
