//! PromQL and MetricsQL: lexing, parsing into a spanned AST, type checks, and tenant injection.
//!
//! The entry points are [`parse`] and [`inject::rewrite`].

pub mod ast;
mod check;
mod duration;
mod error;
pub mod inject;
pub mod lexer;
mod parser;
mod strings;

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
    parse_lexed(input, &tokens, dialect)
}

/// Parses and checks already-lexed tokens of `input`.
pub(crate) fn parse_lexed<'a>(
    input: &'a str,
    tokens: &[lexer::Token],
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
    let expr =
        parser::parse_tokens(input, tokens, dialect).map_err(|e| e.into_parse_error(input))?;
    check::check(input, &expr, dialect)?;
    Ok(expr)
}
