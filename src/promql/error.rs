//! Parse errors: a position and a human message, plus the allocation-free error type
//! the chumsky parser accumulates while it tries alternatives.

use super::lexer::Tok;
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

/// One thing the parser would have accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expectation {
    Token(Tok),
    Label(&'static str),
    EndOfInput,
}

const MAX_EXPECTATIONS: usize = 8;

/// The syntax error chumsky builds. Fixed-size, so trying alternatives never allocates.
#[derive(Debug, Clone, Copy)]
pub struct SyntaxError {
    span: SimpleSpan,
    found: Option<Tok>,
    custom: Option<&'static str>,
    expected: [Option<Expectation>; MAX_EXPECTATIONS],
}

impl SyntaxError {
    fn new(span: SimpleSpan, found: Option<Tok>) -> Self {
        SyntaxError {
            span,
            found,
            custom: None,
            expected: [None; MAX_EXPECTATIONS],
        }
    }

    /// An error with a fixed message instead of expectations.
    pub fn custom(span: SimpleSpan, message: &'static str) -> Self {
        SyntaxError {
            span,
            found: None,
            custom: Some(message),
            expected: [None; MAX_EXPECTATIONS],
        }
    }

    fn add(&mut self, e: Expectation) {
        for slot in self.expected.iter_mut() {
            match slot {
                Some(existing) if *existing == e => return,
                Some(_) => {}
                None => {
                    *slot = Some(e);
                    return;
                }
            }
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
                    Tok::Number => format!("unexpected number {text:?}"),
                    Tok::Duration => format!("unexpected duration {text:?}"),
                    _ => format!("unexpected {text:?}"),
                }
            }
        };
        let mut names: Vec<&str> = Vec::new();
        for e in self.expected.iter().flatten() {
            let name = match e {
                Expectation::Token(t) => t.describe(),
                Expectation::Label(l) => l,
                Expectation::EndOfInput => "end of input",
            };
            if !names.contains(&name) {
                names.push(name);
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
                DefaultExpected::Token(t) => err.add(Expectation::Token(*t)),
                DefaultExpected::EndOfInput => err.add(Expectation::EndOfInput),
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
            err.add(Expectation::Label(l));
        }
        err
    }

    fn label_with(&mut self, label: &'static str) {
        self.expected = [None; MAX_EXPECTATIONS];
        self.add(Expectation::Label(label));
    }
}

impl<'src, I> chumsky::error::Error<'src, I> for SyntaxError
where
    I: Input<'src, Token = Tok, Span = SimpleSpan>,
{
    fn merge(mut self, other: Self) -> Self {
        for e in other.expected.iter().flatten() {
            self.add(*e);
        }
        self
    }
}
