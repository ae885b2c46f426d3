//! Type checks (placeholder).
use super::ast::Expr;
use super::{Dialect, ParseError};
pub fn check(_src: &str, _expr: &Expr<'_>, _dialect: Dialect) -> Result<(), ParseError> {
    Ok(())
}
