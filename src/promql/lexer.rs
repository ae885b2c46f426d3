//! The lexer: turns query text into spanned tokens for the chumsky parser.
//!
//! It is hand-written because PromQL's lexing is context-sensitive, exactly like
//! Prometheus' own lexer: inside `{...}` every word is a label name and `:` is an
//! error; inside `[...]` a `:` separates range and step; `=~` and `!~` exist only
//! inside braces. The lexer also enforces the nesting cap, so the recursive-descent
//! parser after it can never exhaust the stack.

use super::error::ParseError;
use super::numbers::{self, Literal};
use super::Dialect;

/// Deepest nesting accepted: brackets, unary operators and `^` chains all count.
///
/// Real queries nest a few levels; the corpus' deepest stays far below this.
pub const MAX_NESTING: usize = 64;

/// Most binary operators accepted in one query. A chain `a + b + c ...` parses in a
/// loop but makes a tree as deep as it is long, and walking that tree recurses.
pub const MAX_BINARY_OPERATORS: usize = 2000;

/// What a word means when it is not a name. Matched case-insensitively, like Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kw {
    /// A plain identifier.
    None,
    And,
    Or,
    Unless,
    Atan2,
    By,
    Without,
    On,
    Ignoring,
    GroupLeft,
    GroupRight,
    Bool,
    Offset,
    Start,
    End,
    Step,
    Range,
    MinOf,
    MaxOf,
    Smoothed,
    Anchored,
    Inf,
    Nan,
    // MetricsQL
    Default,
    If,
    Ifnot,
    KeepMetricNames,
    Limit,
    With,
    /// An aggregation operator (`sum`, `topk`, ...).
    Aggregation(AggOp),
}

/// Aggregation operators of PromQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    CountValues,
    Quantile,
    Limitk,
    LimitRatio,
}

impl AggOp {
    /// The operator's name as Prometheus spells it.
    pub fn name(self) -> &'static str {
        match self {
            AggOp::Sum => "sum",
            AggOp::Avg => "avg",
            AggOp::Count => "count",
            AggOp::Min => "min",
            AggOp::Max => "max",
            AggOp::Group => "group",
            AggOp::Stddev => "stddev",
            AggOp::Stdvar => "stdvar",
            AggOp::Topk => "topk",
            AggOp::Bottomk => "bottomk",
            AggOp::CountValues => "count_values",
            AggOp::Quantile => "quantile",
            AggOp::Limitk => "limitk",
            AggOp::LimitRatio => "limit_ratio",
        }
    }
}

/// A literal's value, read once by the lexer. Kept as bits so tokens stay `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Value(u64);

impl Value {
    pub const ZERO: Value = Value(0);

    fn new(v: f64) -> Self {
        Value(v.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// Token kinds. Numbers and durations carry their value; text is read from the source
/// through the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tok {
    Ident(Kw),
    /// A number, its value.
    Number(Value),
    /// A duration, in seconds.
    Duration(Value),
    /// A quoted string: `"..."`, `'...'` or `` `...` ``.
    Str,
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Colon,
    At,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    /// `==`
    EqlEql,
    /// `!=`
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    /// `=`
    Assign,
    /// `=~`
    EqlRegex,
    /// `!~`
    NeqRegex,
}

impl Tok {
    /// How an error message names this token kind when it was expected.
    pub fn describe(self) -> &'static str {
        match self {
            Tok::Ident(_) => "identifier",
            Tok::Number(_) => "number",
            Tok::Duration(_) => "duration",
            Tok::Str => "string",
            Tok::LParen => "\"(\"",
            Tok::RParen => "\")\"",
            Tok::LBrace => "\"{\"",
            Tok::RBrace => "\"}\"",
            Tok::LBracket => "\"[\"",
            Tok::RBracket => "\"]\"",
            Tok::Comma => "\",\"",
            Tok::Colon => "\":\"",
            Tok::At => "\"@\"",
            Tok::Add => "\"+\"",
            Tok::Sub => "\"-\"",
            Tok::Mul => "\"*\"",
            Tok::Div => "\"/\"",
            Tok::Mod => "\"%\"",
            Tok::Pow => "\"^\"",
            Tok::EqlEql => "\"==\"",
            Tok::Neq => "\"!=\"",
            Tok::Lt => "\"<\"",
            Tok::Lte => "\"<=\"",
            Tok::Gt => "\">\"",
            Tok::Gte => "\">=\"",
            Tok::Assign => "\"=\"",
            Tok::EqlRegex => "\"=~\"",
            Tok::NeqRegex => "\"!~\"",
        }
    }

    /// True for tokens after which a `+`/`-` is binary rather than unary.
    fn ends_operand(self) -> bool {
        matches!(
            self,
            Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Duration(_)
                | Tok::Str
                | Tok::RParen
                | Tok::RBracket
                | Tok::RBrace
        )
    }
}

/// A token and the byte range it covers (a tuple, so chumsky can split it).
pub type Token = (Tok, chumsky::span::SimpleSpan);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Paren,
    Brace,
    Bracket,
}

/// The open groups, innermost last, on the stack: the nesting cap refuses a query before
/// it opens more than `MAX_NESTING + 1` parentheses and brackets, and a brace holds no
/// group, so the array never fills.
struct Groups {
    open: [Group; MAX_NESTING + 2],
    len: usize,
    brackets: usize,
}

impl Groups {
    fn last(&self) -> Option<Group> {
        self.len.checked_sub(1).map(|i| self.open[i])
    }

    /// Opens `group`; false when the array is full (the caller refuses the query).
    fn push(&mut self, group: Group) -> bool {
        let Some(slot) = self.open.get_mut(self.len) else {
            return false;
        };
        *slot = group;
        self.len += 1;
        self.brackets += usize::from(group == Group::Bracket);
        true
    }

    fn pop(&mut self) {
        if let Some(group) = self.last() {
            self.len -= 1;
            self.brackets -= usize::from(group == Group::Bracket);
        }
    }
}

/// Splits `src` into tokens; comments and blanks are dropped.
pub fn lex(src: &str, dialect: Dialect) -> Result<Vec<Token>, ParseError> {
    Lexer {
        src,
        bytes: src.as_bytes(),
        pos: 0,
        dialect,
        groups: Groups {
            open: [Group::Paren; MAX_NESTING + 2],
            len: 0,
            brackets: 0,
        },
        // Queries hold about one token per 5 bytes (the corpus' mean).
        out: Vec::with_capacity(src.len() / 4 + 4),
    }
    .run()
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    dialect: Dialect,
    groups: Groups,
    out: Vec<Token>,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// What each byte may be inside a word, as bits: `WORD_CHAR` always, `WORD_COLON` and
/// `WORD_DOT` where the dialect and place allow. One look-up a byte in `Lexer::word`.
const WORD_CHAR: u8 = 1;
const WORD_COLON: u8 = 2;
const WORD_DOT: u8 = 4;
static WORD_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric() || c == b'_' {
            WORD_CHAR
        } else if c == b':' {
            WORD_COLON
        } else if c == b'.' {
            WORD_DOT
        } else {
            0
        };
        b += 1;
    }
    table
};

impl<'a> Lexer<'a> {
    fn err(&self, at: usize, message: String) -> ParseError {
        ParseError::at(self.src, at, message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.bytes.get(self.pos + n).copied()
    }

    fn push(&mut self, tok: Tok, start: usize) {
        self.out.push((tok, (start..self.pos).into()));
    }

    fn innermost(&self) -> Option<Group> {
        self.groups.last()
    }

    fn in_brackets(&self) -> bool {
        self.groups.brackets > 0
    }

    fn run(mut self) -> Result<Vec<Token>, ParseError> {
        // Nesting score: open groups plus every unary operator and `^` seen; a generous
        // over-estimate of the parser's recursion depth, checked before parsing starts.
        let mut unary_and_pow = 0usize;
        let mut binary_operators = 0usize;
        while let Some(b) = self.peek() {
            let start = self.pos;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    // Indented queries are mostly blanks: skip a run in one tight loop.
                    self.pos = start
                        + 1
                        + self.bytes[start + 1..]
                            .iter()
                            .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
                            .unwrap_or(self.bytes.len() - start - 1);
                }
                b'#' => {
                    // Prometheus ends a comment at `\r` or `\n`, VictoriaMetrics only at
                    // `\n`: after a lone `\r` one backend reads code where the other reads
                    // comment (`x # \r/ y` is `x / y` to Prometheus), so it is refused.
                    // `\r\n` ends the comment for both.
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        if c == b'\r' && self.bytes.get(self.pos + 1) != Some(&b'\n') {
                            return Err(self.err(
                                self.pos,
                                "a carriage return not followed by a line feed cannot end a comment"
                                    .to_string(),
                            ));
                        }
                        self.pos += 1;
                    }
                }
                b'(' | b'{' | b'[' => {
                    let (group, tok) = match b {
                        b'(' => (Group::Paren, Tok::LParen),
                        b'{' => (Group::Brace, Tok::LBrace),
                        _ => (Group::Bracket, Tok::LBracket),
                    };
                    if self.innermost() == Some(Group::Brace) {
                        return Err(self.err(
                            start,
                            format!("unexpected character inside braces: {:?}", b as char),
                        ));
                    }
                    // A brace group holds only a flat matcher list, never a nested
                    // expression, so it adds no recursion. Counting it also made the
                    // rewrite's own output (which adds braces) too deep to read back.
                    if !self.groups.push(group)
                        || (group != Group::Brace && self.groups.len + unary_and_pow > MAX_NESTING)
                    {
                        return Err(self.too_deep(start));
                    }
                    self.pos += 1;
                    self.push(tok, start);
                }
                b')' | b'}' | b']' => {
                    let (group, tok, name) = match b {
                        b')' => (Group::Paren, Tok::RParen, "right parenthesis ')'"),
                        b'}' => (Group::Brace, Tok::RBrace, "'}'"),
                        _ => (Group::Bracket, Tok::RBracket, "right bracket ']'"),
                    };
                    if self.innermost() != Some(group) {
                        return Err(self.err(start, format!("unexpected {name}")));
                    }
                    self.groups.pop();
                    self.pos += 1;
                    self.push(tok, start);
                }
                b'"' | b'\'' | b'`' => {
                    self.string(b)?;
                    self.push(Tok::Str, start);
                }
                b'0'..=b'9' => {
                    let tok = self.number_or_duration()?;
                    self.push(tok, start);
                }
                b'.' if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                    let tok = self.number_or_duration()?;
                    self.push(tok, start);
                }
                _ if is_ident_start(b) => {
                    self.word();
                    self.dot_after_word(start)?;
                    // A colon may also start a metric name (`:foo:rate5m`), handled below.
                    let kw = if self.innermost() == Some(Group::Brace) {
                        // Inside braces every word is a label name, except MetricsQL's `or`.
                        match (self.dialect, &self.src[start..self.pos]) {
                            (Dialect::Metricsql, w) if w.eq_ignore_ascii_case("or") => Kw::Or,
                            _ => Kw::None,
                        }
                    } else {
                        keyword(&self.src[start..self.pos])
                    };
                    if matches!(
                        kw,
                        Kw::And
                            | Kw::Or
                            | Kw::Unless
                            | Kw::Atan2
                            | Kw::Default
                            | Kw::If
                            | Kw::Ifnot
                    ) {
                        binary_operators += 1;
                        if binary_operators > MAX_BINARY_OPERATORS {
                            return Err(self.too_many_operators(start));
                        }
                    }
                    self.push(Tok::Ident(kw), start);
                }
                b':' if self.innermost() != Some(Group::Brace)
                    && !self.in_brackets()
                    && self
                        .peek_at(1)
                        .is_some_and(|c| is_ident_start(c) || c == b':') =>
                {
                    self.word();
                    self.dot_after_word(start)?;
                    self.push(Tok::Ident(Kw::None), start);
                }
                _ => {
                    let tok = self.operator(b, start)?;
                    let is_unary = matches!(tok, Tok::Add | Tok::Sub)
                        && !self.out.last().is_some_and(|t| t.0.ends_operand());
                    if is_unary || tok == Tok::Pow {
                        unary_and_pow += 1;
                        if self.groups.len + unary_and_pow > MAX_NESTING {
                            return Err(self.too_deep(start));
                        }
                    }
                    // Only operators that join expressions make the tree deeper; `=`, `=~`,
                    // `!=` inside braces, `:` and `@` do not.
                    let joins_expressions = !is_unary
                        && self.innermost() != Some(Group::Brace)
                        && matches!(
                            tok,
                            Tok::Add
                                | Tok::Sub
                                | Tok::Mul
                                | Tok::Div
                                | Tok::Mod
                                | Tok::Pow
                                | Tok::EqlEql
                                | Tok::Neq
                                | Tok::Lt
                                | Tok::Lte
                                | Tok::Gt
                                | Tok::Gte
                        );
                    if joins_expressions {
                        binary_operators += 1;
                        if binary_operators > MAX_BINARY_OPERATORS {
                            return Err(self.too_many_operators(start));
                        }
                    }
                    self.push(tok, start);
                }
            }
        }
        if let Some(open) = self.innermost() {
            let message = match open {
                Group::Paren => "unclosed left parenthesis",
                Group::Brace => "unexpected end of input inside braces",
                Group::Bracket => "unclosed left bracket",
            };
            return Err(self.err(self.src.len(), message.to_string()));
        }
        Ok(self.out)
    }

    /// Reads the rest of a word, as the dialect's backend does. Prometheus: letters,
    /// digits and `_`, and `:` in metric names (outside braces and brackets).
    /// VictoriaMetrics: `.` and `:` too, inside braces as well (`host.name`, `a:b`),
    /// so `bool.5` is one name to it; in brackets a `:` still separates range and step.
    fn word(&mut self) {
        let metricsql = self.dialect == Dialect::Metricsql;
        let in_braces = self.innermost() == Some(Group::Brace);
        let colon_allowed = !self.in_brackets() && (metricsql || !in_braces);
        let mask = WORD_CHAR
            | if colon_allowed { WORD_COLON } else { 0 }
            | if metricsql { WORD_DOT } else { 0 };
        self.pos += self.bytes[self.pos..]
            .iter()
            .position(|&c| WORD_BYTES[usize::from(c)] & mask == 0)
            .unwrap_or(self.bytes.len() - self.pos);
    }

    /// In dialect `promql`, a word followed directly by `.` is refused: Prometheus
    /// reads `bool.5` as the keyword and a number, VictoriaMetrics as one metric name,
    /// which would reach it without the tenant matcher. A space between them is fine.
    fn dot_after_word(&self, start: usize) -> Result<(), ParseError> {
        if self.dialect == Dialect::Promql && self.peek() == Some(b'.') {
            return Err(self.err(
                start,
                format!(
                    "{:?} is followed by \".\": Prometheus reads a name and a number there, VictoriaMetrics one dotted name; put a space between them",
                    &self.src[start..self.pos]
                ),
            ));
        }
        Ok(())
    }

    fn too_deep(&self, at: usize) -> ParseError {
        self.err(
            at,
            format!("query nests too deeply (more than {MAX_NESTING} levels)"),
        )
    }

    fn too_many_operators(&self, at: usize) -> ParseError {
        self.err(
            at,
            format!("query has too many operators (more than {MAX_BINARY_OPERATORS})"),
        )
    }

    fn operator(&mut self, b: u8, start: usize) -> Result<Tok, ParseError> {
        let in_braces = self.innermost() == Some(Group::Brace);
        let next = self.peek_at(1);
        let (tok, len) = match (b, next) {
            (b',', _) => (Tok::Comma, 1),
            (b'=', Some(b'~')) if in_braces => (Tok::EqlRegex, 2),
            (b'!', Some(b'~')) if in_braces => (Tok::NeqRegex, 2),
            (b'!', Some(b'=')) => (Tok::Neq, 2),
            (b'=', Some(b'=')) if !in_braces => (Tok::EqlEql, 2),
            (b'=', _) => (Tok::Assign, 1),
            (b'!', Some(c)) => {
                return Err(self.err(
                    start,
                    format!("unexpected character after '!': {:?}", c as char),
                ))
            }
            (b'!', None) => return Err(self.err(start, "unexpected end of input after '!'".into())),
            _ if in_braces => {
                return Err(self.err(
                    start,
                    format!(
                        "unexpected character inside braces: {}",
                        self.char_at(start)
                    ),
                ))
            }
            (b':', _) if self.in_brackets() => (Tok::Colon, 1),
            (b'@', _) => (Tok::At, 1),
            (b'+', _) => (Tok::Add, 1),
            (b'-', _) => (Tok::Sub, 1),
            (b'*', _) => (Tok::Mul, 1),
            (b'/', _) => (Tok::Div, 1),
            (b'%', _) => (Tok::Mod, 1),
            (b'^', _) => (Tok::Pow, 1),
            (b'<', Some(b'=')) => (Tok::Lte, 2),
            (b'<', _) => (Tok::Lt, 1),
            (b'>', Some(b'=')) => (Tok::Gte, 2),
            (b'>', _) => (Tok::Gt, 1),
            _ => {
                return Err(self.err(
                    start,
                    format!("unexpected character: {}", self.char_at(start)),
                ))
            }
        };
        self.pos += len;
        Ok(tok)
    }

    fn char_at(&self, at: usize) -> String {
        match self.src[at..].chars().next() {
            Some(c) => format!("{c:?}"),
            None => "end of input".to_string(),
        }
    }

    /// Scans a quoted string, checking Go's escape rules; decoding happens later.
    fn string(&mut self, quote: u8) -> Result<(), ParseError> {
        let start = self.pos;
        self.pos += 1;
        if quote == b'`' {
            match self.src[self.pos..].find('`') {
                Some(n) => {
                    // VictoriaMetrics' lexer takes a backtick after an odd run of
                    // backslashes as escaped and reads on, where PromQL ends the string:
                    // text we would leave as a string could be code to the backend.
                    let content = &self.src.as_bytes()[self.pos..self.pos + n];
                    let backslashes = content.iter().rev().take_while(|&&b| b == b'\\').count();
                    if backslashes % 2 == 1 {
                        return Err(self.err(
                            start,
                            "a raw string must not end in a backslash: the backend would read `\\`` as an escaped backtick".into(),
                        ));
                    }
                    self.pos += n + 1;
                    return Ok(());
                }
                None => return Err(self.err(start, "unterminated raw string".into())),
            }
        }
        loop {
            // Plain characters are most of a string: skip them in one tight loop.
            self.pos += self.bytes[self.pos..]
                .iter()
                .position(|&c| c == b'\\' || c == b'\n' || c == quote)
                .unwrap_or(self.bytes.len() - self.pos);
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated quoted string".into()));
            };
            match c {
                b'\\' => {
                    self.pos += 1;
                    self.escape(quote)?;
                }
                b'\n' => return Err(self.err(start, "unterminated quoted string".into())),
                _ if c == quote => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Validates one escape sequence after the backslash, as Go's lexer does.
    fn escape(&mut self, quote: u8) -> Result<(), ParseError> {
        let at = self.pos - 1;
        let Some(c) = self.peek() else {
            return Err(self.err(at, "escape sequence not terminated".into()));
        };
        let (digits, base, max): (usize, u32, u32) = match c {
            b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'\\' => {
                self.pos += 1;
                return Ok(());
            }
            _ if c == quote => {
                self.pos += 1;
                return Ok(());
            }
            b'0'..=b'7' => (3, 8, 255),
            b'x' => (2, 16, 255),
            b'u' => (4, 16, 0x10FFFF),
            b'U' => (8, 16, 0x10FFFF),
            _ => {
                return Err(self.err(
                    at,
                    format!("unknown escape sequence {}", self.char_at(self.pos)),
                ));
            }
        };
        if c != b'0' && !(b'1'..=b'7').contains(&c) {
            self.pos += 1;
        }
        let mut value: u32 = 0;
        for _ in 0..digits {
            let Some(d) = self.peek() else {
                return Err(self.err(at, "escape sequence not terminated".into()));
            };
            let Some(v) = (d as char).to_digit(base) else {
                return Err(self.err(
                    at,
                    format!(
                        "illegal character {} in escape sequence",
                        self.char_at(self.pos)
                    ),
                ));
            };
            value = value * base + v;
            self.pos += 1;
        }
        if value > max || (0xD800..0xE000).contains(&value) && max > 255 {
            return Err(self.err(
                at,
                "escape sequence is an invalid Unicode code point".into(),
            ));
        }
        Ok(())
    }

    /// A number or a duration, ended where the dialect's backend ends it
    /// (`numbers.rs`). Whatever follows must not continue a word or a number: both
    /// backends would split there and read two things we would not.
    fn number_or_duration(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        let (kind, end) = numbers::scan(self.bytes, start, self.dialect).map_err(|m: String| {
            self.bad_number_because(start, end_of_word(self.bytes, start), &m)
        })?;
        self.pos = end;
        if self.peek().is_some_and(|c| is_ident_char(c) || c == b'.') {
            return Err(self.bad_number(start, end_of_word(self.bytes, end)));
        }
        let text = &self.src[start..end];
        match kind {
            Literal::Number => match numbers::number_value(text, self.dialect) {
                Some(v) => Ok(Tok::Number(Value::new(v))),
                None => Err(self.err(
                    start,
                    format!("error parsing number: {text:?}: invalid or out of range"),
                )),
            },
            Literal::Duration => numbers::duration_seconds(text, self.dialect)
                .map(|v| Tok::Duration(Value::new(v)))
                .map_err(|m| self.err(start, m)),
        }
    }

    fn bad_number_because(&self, start: usize, end: usize, why: &str) -> ParseError {
        let mut e = self.bad_number(start, end);
        e.message = format!("{} ({why})", e.message);
        e
    }

    fn bad_number(&self, start: usize, end: usize) -> ParseError {
        let end = end.min(self.src.len());
        let end = (end..=self.src.len())
            .find(|&e| self.src.is_char_boundary(e))
            .unwrap_or(self.src.len());
        self.err(
            start,
            format!("bad number or duration syntax: {:?}", &self.src[start..end]),
        )
    }
}

/// Where the run of word and number characters from `start` ends (for messages).
fn end_of_word(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < bytes.len() && (is_ident_char(bytes[i]) || bytes[i] == b'.') {
        i += 1;
    }
    i
}

/// Classifies a word outside braces. Keywords are case-insensitive, as in Prometheus.
pub fn keyword(word: &str) -> Kw {
    if word.len() > 17 {
        return Kw::None;
    }
    let mut buf = [0u8; 17];
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word.as_bytes());
    lower.make_ascii_lowercase();
    match &*lower {
        b"and" => Kw::And,
        b"or" => Kw::Or,
        b"unless" => Kw::Unless,
        b"atan2" => Kw::Atan2,
        b"by" => Kw::By,
        b"without" => Kw::Without,
        b"on" => Kw::On,
        b"ignoring" => Kw::Ignoring,
        b"group_left" => Kw::GroupLeft,
        b"group_right" => Kw::GroupRight,
        b"bool" => Kw::Bool,
        b"offset" => Kw::Offset,
        b"start" => Kw::Start,
        b"end" => Kw::End,
        b"step" => Kw::Step,
        b"range" => Kw::Range,
        b"min_of" => Kw::MinOf,
        b"max_of" => Kw::MaxOf,
        b"smoothed" => Kw::Smoothed,
        b"anchored" => Kw::Anchored,
        b"inf" => Kw::Inf,
        b"nan" => Kw::Nan,
        b"default" => Kw::Default,
        b"if" => Kw::If,
        b"ifnot" => Kw::Ifnot,
        b"keep_metric_names" => Kw::KeepMetricNames,
        b"limit" => Kw::Limit,
        b"with" => Kw::With,
        b"sum" => Kw::Aggregation(AggOp::Sum),
        b"avg" => Kw::Aggregation(AggOp::Avg),
        b"count" => Kw::Aggregation(AggOp::Count),
        b"min" => Kw::Aggregation(AggOp::Min),
        b"max" => Kw::Aggregation(AggOp::Max),
        b"group" => Kw::Aggregation(AggOp::Group),
        b"stddev" => Kw::Aggregation(AggOp::Stddev),
        b"stdvar" => Kw::Aggregation(AggOp::Stdvar),
        b"topk" => Kw::Aggregation(AggOp::Topk),
        b"bottomk" => Kw::Aggregation(AggOp::Bottomk),
        b"count_values" => Kw::Aggregation(AggOp::CountValues),
        b"quantile" => Kw::Aggregation(AggOp::Quantile),
        b"limitk" => Kw::Aggregation(AggOp::Limitk),
        b"limit_ratio" => Kw::Aggregation(AggOp::LimitRatio),
        _ => Kw::None,
    }
}
