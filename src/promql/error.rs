//! Parse errors: a position and a human message, plus the allocation-free error type
//! the chumsky parser accumulates while it tries alternatives.

use super::lexer::{Tok, Value};
use chumsky::error::LabelError;
use chumsky::input::Input;
use chumsky::span::SimpleSpan;
use chumsky::util::MaybeRef;
use chumsky::DefaultExpected;
use std::fmt;

/// A query that could not be parsed: where, and why, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What went wrong, e.g. `unexpected "}"` or `unknown function with name "foo"`.
    pub message: String,
    /// What would have been accepted instead, when the parser knows.
    pub expected: Option<String>,
    /// Byte offset into the input.
    pub offset: usize,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

impl ParseError {
    /// An error at byte `offset` of `src`.
    pub fn at(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() as u32 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() as u32 + 1;
        ParseError {
            message: message.into(),
            expected: None,
            offset,
            line,
            column,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}:{}", self.message, self.line, self.column)?;
        if let Some(expected) = &self.expected {
            write!(f, ", expected {expected}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// Labels the grammar puts on its parts; an error records them as bits.
const LABELS: [&str; 10] = [
    "label name",
    "label matching operator",
    "label matcher",
    "string",
    "number, duration, step(), or range()",
    "timestamp",
    "expression",
    "\"(\"",
    "end of input",
    "something else",
];
const END_OF_INPUT: u32 = 1 << 8;
const OTHER_LABEL: u32 = 1 << 9;

/// Every token kind, in bit order (identifiers share one bit).
const TOKENS: [Tok; 28] = [
    Tok::Ident(super::lexer::Kw::None),
    Tok::Number(Value::ZERO),
    Tok::Duration(Value::ZERO),
    Tok::Str,
    Tok::LParen,
    Tok::RParen,
    Tok::LBrace,
    Tok::RBrace,
    Tok::LBracket,
    Tok::RBracket,
    Tok::Comma,
    Tok::Colon,
    Tok::At,
    Tok::Add,
    Tok::Sub,
    Tok::Mul,
    Tok::Div,
    Tok::Mod,
    Tok::Pow,
    Tok::EqlEql,
    Tok::Neq,
    Tok::Lt,
    Tok::Lte,
    Tok::Gt,
    Tok::Gte,
    Tok::Assign,
    Tok::EqlRegex,
    Tok::NeqRegex,
];

/// The token's kind bit; identifiers, numbers and durations are one kind whatever
/// they carry.
fn token_bit(t: Tok) -> u32 {
    let kind = std::mem::discriminant(&t);
    TOKENS
        .iter()
        .position(|k| std::mem::discriminant(k) == kind)
        .map_or(0, |i| 1 << i)
}

fn label_bit(label: &str) -> u32 {
    LABELS
        .iter()
        .position(|l| *l == label)
        .map_or(OTHER_LABEL, |i| 1 << i)
}

/// The syntax error chumsky builds while it tries alternatives. It is a few words of
/// bit sets, so the many errors of a successful parse cost no allocation and little copying.
#[derive(Debug, Clone, Copy)]
pub struct SyntaxError {
    span: SimpleSpan,
    found: Option<Tok>,
    custom: Option<&'static str>,
    tokens: u32,
    labels: u32,
}

impl SyntaxError {
    fn new(span: SimpleSpan, found: Option<Tok>) -> Self {
        SyntaxError {
            span,
            found,
            custom: None,
            tokens: 0,
            labels: 0,
        }
    }

    /// An error with a fixed message instead of expectations.
    pub fn custom(span: SimpleSpan, message: &'static str) -> Self {
        SyntaxError {
            span,
            found: None,
            custom: Some(message),
            tokens: 0,
            labels: 0,
        }
    }

    /// Renders the error against the source text.
    pub fn into_parse_error(self, src: &str) -> ParseError {
        let start = self.span.start.min(src.len());
        if let Some(message) = self.custom {
            return ParseError::at(src, start, message);
        }
        let message = match self.found {
            None => "unexpected end of input".to_string(),
            Some(tok) => {
                let text = src.get(start..self.span.end).unwrap_or("");
                match tok {
                    Tok::Ident(_) => format!("unexpected identifier {text:?}"),
                    Tok::Str => format!("unexpected string {text}"),
                    Tok::Number(_) => format!("unexpected number {text:?}"),
                    Tok::Duration(_) => format!("unexpected duration {text:?}"),
                    _ => format!("unexpected {text:?}"),
                }
            }
        };
        let mut names: Vec<&str> = Vec::new();
        for (i, label) in LABELS.iter().enumerate() {
            if self.labels & (1 << i) != 0 && (1 << i) != OTHER_LABEL {
                names.push(label);
            }
        }
        for (i, tok) in TOKENS.iter().enumerate() {
            if self.tokens & (1 << i) != 0 && !names.contains(&tok.describe()) {
                names.push(tok.describe());
            }
        }
        let mut err = ParseError::at(src, start, message);
        err.expected = match names.len() {
            0 => None,
            1 => Some(names[0].to_string()),
            n => Some(format!("{} or {}", names[..n - 1].join(", "), names[n - 1])),
        };
        err
    }
}

impl<'src, I> LabelError<'src, I, DefaultExpected<'src, Tok>> for SyntaxError
where
    I: Input<'src, Token = Tok, Span = SimpleSpan>,
{
    fn expected_found<E: IntoIterator<Item = DefaultExpected<'src, Tok>>>(
        expected: E,
        found: Option<MaybeRef<'src, Tok>>,
        span: SimpleSpan,
    ) -> Self {
        let mut err = SyntaxError::new(span, found.map(|t| *t));
        for e in expected {
            match e {
                DefaultExpected::Token(t) => err.tokens |= token_bit(*t),
                DefaultExpected::EndOfInput => err.labels |= END_OF_INPUT,
                _ => {}
            }
        }
        err
    }
}

impl<'src, I> LabelError<'src, I, &'static str> for SyntaxError
where
    I: Input<'src, Token = Tok, Span = SimpleSpan>,
{
    fn expected_found<E: IntoIterator<Item = &'static str>>(
        expected: E,
        found: Option<MaybeRef<'src, Tok>>,
        span: SimpleSpan,
    ) -> Self {
        let mut err = SyntaxError::new(span, found.map(|t| *t));
        for l in expected {
            err.labels |= label_bit(l);
        }
        err
    }

    fn label_with(&mut self, label: &'static str) {
        self.tokens = 0;
        self.labels = label_bit(label);
    }
}

impl<'src, I> chumsky::error::Error<'src, I> for SyntaxError
where
    I: Input<'src, Token = Tok, Span = SimpleSpan>,
{
    fn merge(mut self, other: Self) -> Self {
        self.tokens |= other.tokens;
        self.labels |= other.labels;
        // A grammar rule's own message says more than the expectations around it.
        self.custom = self.custom.or(other.custom);
        self
    }
}
