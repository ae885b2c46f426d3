//! The lexer's tokens as chumsky input, owned by the parse.
//!
//! The grammar is built once per thread and reused (`parser.rs`), so its type cannot
//! mention the lifetime of one query's token vector: chumsky's parser cache hands out
//! the parser for one lifetime, which must cover both the input and the output, and
//! the output borrows from the query text, which outlives the tokens. Owning the
//! tokens makes the input `'static`; the query text reaches the grammar through the
//! parser state instead.
//!
//! Spans are the tokens' byte spans in the text, exactly as chumsky's
//! `split_token_span` maps them: a parser's span runs from the start of its first
//! token to the end of its last.

use super::lexer::{Tok, Token};
use chumsky::input::{ExactSizeInput, Input, ValueInput};
use chumsky::span::SimpleSpan;
use std::ops::{Range, RangeFrom};

/// One query's tokens and where its text ends.
pub struct Tokens {
    tokens: Vec<Token>,
    eoi: usize,
}

impl Tokens {
    pub fn new(tokens: Vec<Token>, text_len: usize) -> Self {
        Tokens {
            tokens,
            eoi: text_len,
        }
    }

    fn start_of(&self, at: usize) -> usize {
        self.tokens.get(at).map_or(self.eoi, |t| t.1.start)
    }

    /// Where the token before cursor `at` ends: the end of what was read up to there.
    fn end_before(&self, at: usize) -> usize {
        match at.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(t) => t.1.end,
            None => self.eoi,
        }
    }

    fn get(&self, cursor: &mut usize) -> Option<Tok> {
        let tok = self.tokens.get(*cursor)?.0;
        *cursor += 1;
        Some(tok)
    }
}

// chumsky marks these methods `unsafe` because its own inputs skip bounds checks for
// cursors it vouches for; these bodies check every index, so nothing here relies on it.
impl<'src> Input<'src> for Tokens {
    type Cursor = usize;
    type Span = SimpleSpan;
    type Token = Tok;
    type MaybeToken = Tok;
    type Cache = Tokens;

    #[inline]
    fn begin(self) -> (usize, Tokens) {
        (0, self)
    }

    #[inline]
    fn cursor_location(cursor: &usize) -> usize {
        *cursor
    }

    #[inline(always)]
    unsafe fn next_maybe(this: &mut Tokens, cursor: &mut usize) -> Option<Tok> {
        this.get(cursor)
    }

    #[inline]
    unsafe fn span(this: &mut Tokens, range: Range<&usize>) -> SimpleSpan {
        if *range.start >= this.tokens.len() {
            return SimpleSpan::from(this.eoi..this.eoi);
        }
        let start = this.start_of(*range.start);
        SimpleSpan::from(start..this.end_before(*range.end))
    }
}

impl<'src> ExactSizeInput<'src> for Tokens {
    #[inline]
    unsafe fn span_from(this: &mut Tokens, range: RangeFrom<&usize>) -> SimpleSpan {
        SimpleSpan::from(this.start_of(*range.start)..this.eoi)
    }
}

impl<'src> ValueInput<'src> for Tokens {
    #[inline(always)]
    unsafe fn next(this: &mut Tokens, cursor: &mut usize) -> Option<Tok> {
        this.get(cursor)
    }
}
