//! A recursive-descent reader for the commonest PromQL shapes, tried before the chumsky
//! grammar.
//!
//! chumsky stays the parser: this reader accepts only a subset of its language and
//! answers "not mine" (`None`) at the first token outside it, and then the grammar in
//! `parser.rs` parses the query from the start, with its error messages. Where this
//! reader answers, the tree is the one the grammar builds, node for node and span for
//! span (`tests/fast_path.rs` compares the two over the corpus and the generated
//! queries): it builds nodes with the grammar's own helpers (`word_expr`,
//! `call_expr`, `apply_postfix`, `build_tree`), so the rules they carry are not written twice.
//!
//! Why it exists: chumsky's cost per combinator layer (a call, an input save and
//! rewind, error bookkeeping for every alternative that fails) was most of a rewrite's
//! time, and issue 14's engine target needs it gone for the queries people write.
//!
//! The subset, PromQL only: selectors (a plain or aggregation name, braces with
//! `label op "value"` or a quoted name), calls and aggregations with `by`/`without`
//! before or after the arguments, numbers, strings, durations, parentheses, signs,
//! every binary operator with `bool`, `on`/`ignoring` and `group_left`/`group_right`,
//! and after an atom `[d]`, `[d:]`, `[d:d]` and `offset d` with single duration tokens.
//! Not in it: `@`, duration arithmetic, `anchored`/`smoothed`, keywords as names,
//! `start()`/`end()`/`step()`/`range()`, and MetricsQL.

use super::ast::{Expr, ExprKind, GroupModifier, Grouping, MatchOp, Matcher, MatcherGroup};
use super::ast::{Selector, VectorMatching};
use super::lexer::{Kw, Tok, Token};
use super::parser::{
    apply_postfix, binary_operator, build_tree, call_expr, span_of, word_expr, AfterWord,
    BinOpWithModifiers, CallTail, Operand, Postfix,
};
use super::strings::decode;
use super::Dialect;
use std::borrow::Cow;

/// The tree of a PromQL query's tokens, or `None` when the query leaves the subset.
pub fn parse<'a>(src: &'a str, tokens: &[Token]) -> Option<Expr<'a>> {
    let mut reader = Reader { src, tokens, at: 0 };
    let expr = reader.expr()?;
    (reader.at == tokens.len()).then_some(expr)
}

struct Reader<'a, 't> {
    src: &'a str,
    tokens: &'t [Token],
    at: usize,
}

impl<'a> Reader<'a, '_> {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.at).map(|t| t.0)
    }

    fn peek_at(&self, ahead: usize) -> Option<Tok> {
        self.tokens.get(self.at + ahead).map(|t| t.0)
    }

    /// Reads the next token if it is `tok`.
    fn eat(&mut self, tok: Tok) -> bool {
        let found = self.peek() == Some(tok);
        self.at += usize::from(found);
        found
    }

    /// The span of the token at `at`.
    fn span(&self, at: usize) -> std::ops::Range<usize> {
        self.tokens.get(at).map_or(0..0, |t| span_of(t.1))
    }

    /// The text of the token at `at`.
    fn text(&self, at: usize) -> &'a str {
        let span = self.span(at);
        self.src.get(span).unwrap_or("")
    }

    /// Where the last read token ends.
    fn end(&self) -> usize {
        self.at.checked_sub(1).map_or(0, |i| self.span(i).end)
    }

    /// `operand (operator modifiers operand)*`, precedence applied afterwards.
    fn expr(&mut self) -> Option<Expr<'a>> {
        let first = self.operand()?;
        let mut rest = Vec::new();
        while let Some(op) = self
            .peek()
            .and_then(|t| binary_operator(t, Dialect::Promql))
        {
            self.at += 1;
            let modifiers = self.modifiers(op)?;
            rest.push((modifiers, self.operand()?));
        }
        Some(build_tree(first, rest))
    }

    /// `bool`, then `on`/`ignoring (labels)` with an optional group modifier.
    fn modifiers(&mut self, op: super::ast::BinOp) -> Option<BinOpWithModifiers<'a>> {
        let return_bool = self.eat(Tok::Ident(Kw::Bool));
        let on = match self.peek() {
            Some(Tok::Ident(Kw::On)) => true,
            Some(Tok::Ident(Kw::Ignoring)) => false,
            _ => return Some((op, return_bool, None)),
        };
        self.at += 1;
        let labels = self.label_list()?;
        let left = match self.peek() {
            Some(Tok::Ident(Kw::GroupLeft)) => true,
            Some(Tok::Ident(Kw::GroupRight)) => false,
            _ => {
                let matching = VectorMatching {
                    on,
                    labels,
                    group: None,
                };
                return Some((op, return_bool, Some(matching)));
            }
        };
        self.at += 1;
        let group_labels = if self.peek() == Some(Tok::LParen) {
            self.label_list()?
        } else {
            Vec::new()
        };
        let group = GroupModifier {
            left,
            labels: group_labels,
        };
        let matching = VectorMatching {
            on,
            labels,
            group: Some(group),
        };
        Some((op, return_bool, Some(matching)))
    }

    /// Prefix signs, an atom and its postfix modifiers.
    fn operand(&mut self) -> Option<Operand<'a>> {
        let mut signs = Vec::new();
        loop {
            let negative = match self.peek() {
                Some(Tok::Add) => false,
                Some(Tok::Sub) => true,
                _ => break,
            };
            signs.push((negative, self.span(self.at).start));
            self.at += 1;
        }
        let mut atom = self.atom()?;
        loop {
            let post = match self.peek() {
                Some(Tok::LBracket) => self.bracket()?,
                Some(Tok::Ident(Kw::Offset)) => {
                    let Some(Tok::Duration(v)) = self.peek_at(1) else {
                        return None;
                    };
                    self.at += 2;
                    let span = self.span(self.at - 1);
                    let end = span.end;
                    let value = Expr {
                        kind: ExprKind::Duration(v.get()),
                        span,
                    };
                    Postfix::Offset(value, end)
                }
                Some(Tok::At) => return None,
                _ => break,
            };
            atom = apply_postfix(atom, post);
        }
        Some((signs, atom))
    }

    /// `[d]`, `[d:]` or `[d:d]`.
    fn bracket(&mut self) -> Option<Postfix<'a>> {
        self.at += 1;
        let range = Some(self.duration()?);
        let step = if self.eat(Tok::Colon) {
            if self.peek() == Some(Tok::RBracket) {
                Some(None)
            } else {
                Some(Some(self.duration()?))
            }
        } else {
            None
        };
        if !self.eat(Tok::RBracket) {
            return None;
        }
        let end = self.end();
        if matches!(self.peek(), Some(Tok::Ident(Kw::Anchored | Kw::Smoothed))) {
            return None;
        }
        Some(Postfix::Range {
            range,
            step,
            smoothing: None,
            end,
        })
    }

    /// One duration token that the bracket's `]` or `:` follows.
    fn duration(&mut self) -> Option<Expr<'a>> {
        let Some(Tok::Duration(v)) = self.peek() else {
            return None;
        };
        if !matches!(self.peek_at(1), Some(Tok::RBracket | Tok::Colon)) {
            return None;
        }
        self.at += 1;
        Some(Expr {
            kind: ExprKind::Duration(v.get()),
            span: self.span(self.at - 1),
        })
    }

    fn atom(&mut self) -> Option<Expr<'a>> {
        let at = self.at;
        let kind = match self.peek()? {
            Tok::Number(v) => ExprKind::Number(v.get()),
            Tok::Ident(Kw::Inf) => ExprKind::Number(f64::INFINITY),
            Tok::Ident(Kw::Nan) => ExprKind::Number(f64::NAN),
            Tok::Duration(v) => ExprKind::Duration(v.get()),
            Tok::Str => ExprKind::String(decode(self.text(at))),
            Tok::Ident(k @ (Kw::None | Kw::Aggregation(_))) => return self.word(k),
            Tok::LParen => {
                self.at += 1;
                let inner = self.expr()?;
                if !self.eat(Tok::RParen) {
                    return None;
                }
                return Some(Expr {
                    kind: ExprKind::Paren(Box::new(inner)),
                    span: self.span(at).start..self.end(),
                });
            }
            Tok::LBrace => {
                let (groups, braces) = self.braces()?;
                let selector = Selector {
                    name: None,
                    braces: Some(braces.clone()),
                    groups,
                };
                return Some(Expr {
                    kind: ExprKind::Selector(Box::new(selector)),
                    span: braces,
                });
            }
            _ => return None,
        };
        self.at += 1;
        Some(Expr {
            kind,
            span: self.span(at),
        })
    }

    /// A name and what follows it: arguments, grouping, braces, or nothing.
    fn word(&mut self, k: Kw) -> Option<Expr<'a>> {
        let at = self.at;
        let name = self.text(at);
        self.at += 1;
        let (args, grouping) = match self.peek() {
            Some(Tok::LParen) => {
                let args = self.args()?;
                let grouping = match self.peek() {
                    Some(Tok::Ident(Kw::By | Kw::Without)) => Some(self.grouping()?),
                    _ => None,
                };
                (args, grouping)
            }
            Some(Tok::Ident(Kw::By | Kw::Without)) => {
                let grouping = self.grouping()?;
                if self.peek() != Some(Tok::LParen) {
                    return None;
                }
                (self.args()?, Some(grouping))
            }
            next => {
                let after = match next {
                    Some(Tok::LBrace) => {
                        let (groups, braces) = self.braces()?;
                        AfterWord::Braces(groups, braces)
                    }
                    _ => AfterWord::Bare,
                };
                let span = (self.span(at).start..self.end()).into();
                return word_expr(name, k, self.span(at), after, span, Dialect::Promql).ok();
            }
        };
        let tail = CallTail {
            args,
            grouping,
            limit: false,
            keep_metric_names: None,
        };
        let span = (self.span(at).start..self.end()).into();
        call_expr(name, k, tail, span, Dialect::Promql).ok()
    }

    /// `(expr, expr, ...)`, no comma after the last.
    fn args(&mut self) -> Option<Vec<Expr<'a>>> {
        self.at += 1;
        let mut args = Vec::new();
        if self.eat(Tok::RParen) {
            return Some(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(Tok::RParen) {
                return Some(args);
            }
            if !self.eat(Tok::Comma) {
                return None;
            }
        }
    }

    /// `by (labels)` or `without (labels)`.
    fn grouping(&mut self) -> Option<Grouping<'a>> {
        let without = self.peek() == Some(Tok::Ident(Kw::Without));
        self.at += 1;
        let labels = self.label_list()?;
        Some(Grouping { without, labels })
    }

    /// `(name, name, ...)`, a comma after the last allowed.
    fn label_list(&mut self) -> Option<Vec<Cow<'a, str>>> {
        if !self.eat(Tok::LParen) {
            return None;
        }
        let mut labels = Vec::new();
        loop {
            if self.eat(Tok::RParen) {
                return Some(labels);
            }
            labels.push(self.label_name()?);
            if !self.eat(Tok::Comma) {
                return self.eat(Tok::RParen).then_some(labels);
            }
        }
    }

    /// Any word, or a quoted name.
    fn label_name(&mut self) -> Option<Cow<'a, str>> {
        let text = self.text(self.at);
        let name = match self.peek()? {
            Tok::Ident(_) => Cow::Borrowed(text),
            Tok::Str => decode(text),
            _ => return None,
        };
        self.at += 1;
        Some(name)
    }

    /// `{ matcher, matcher, ... }`: one group, and the braces' span.
    fn braces(&mut self) -> Option<(Vec<MatcherGroup<'a>>, std::ops::Range<usize>)> {
        let open = self.span(self.at).start;
        self.at += 1;
        // Sized once: a matcher per comma, and one more (the lexer refused a `{` or `(`
        // inside braces, so the first `}` closes these).
        let commas = self
            .tokens
            .get(self.at..)
            .unwrap_or_default()
            .iter()
            .take_while(|t| t.0 != Tok::RBrace)
            .filter(|t| t.0 == Tok::Comma)
            .count();
        let mut matchers: Vec<Matcher<'a>> = Vec::with_capacity(commas + 1);
        let mut ends_with_comma = false;
        while self.peek() != Some(Tok::RBrace) {
            let mut matcher = self.matcher()?;
            ends_with_comma = self.peek() == Some(Tok::Comma);
            if ends_with_comma {
                matcher.comma = Some(self.span(self.at));
                self.at += 1;
            }
            let last = !ends_with_comma;
            matchers.push(matcher);
            if last {
                break;
            }
        }
        if self.peek() != Some(Tok::RBrace) {
            return None;
        }
        let close = self.span(self.at);
        self.at += 1;
        let group = MatcherGroup {
            matchers,
            insert_at: close.start,
            ends_with_comma,
        };
        Some((vec![group], open..close.end))
    }

    /// `label op "value"`, or a quoted name alone.
    fn matcher(&mut self) -> Option<Matcher<'a>> {
        let start = self.at;
        let op = match self.peek_at(1) {
            Some(Tok::Assign) => MatchOp::Equal,
            Some(Tok::Neq) => MatchOp::NotEqual,
            Some(Tok::EqlRegex) => MatchOp::Regex,
            Some(Tok::NeqRegex) => MatchOp::NotRegex,
            _ if self.peek() == Some(Tok::Str) => {
                self.at += 1;
                return Some(Matcher {
                    label: Cow::Borrowed("__name__"),
                    op: MatchOp::Equal,
                    value: decode(self.text(start)),
                    span: self.span(start),
                    comma: None,
                    name_only: true,
                });
            }
            _ => return None,
        };
        let label = self.label_name()?;
        self.at += 1;
        if self.peek() != Some(Tok::Str) {
            return None;
        }
        self.at += 1;
        Some(Matcher {
            label,
            op,
            value: decode(self.text(start + 2)),
            span: self.span(start).start..self.end(),
            comma: None,
            name_only: false,
        })
    }
}
