//! The spanned AST. Every node carries the byte range of the input it came from.

/// Byte range into the parsed input.
pub type Span = std::ops::Range<usize>;

/// An expression node.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub span: Span,
}
