//! The chumsky grammar: tokens in, spanned AST out.
//!
//! Syntax only. Type rules (what may be ranged, which functions take what) live in
//! `check.rs`, so the grammar stays close to the language's shape and the two
//! dialects differ here only where their syntax does.

use super::ast::*;
use super::error::SyntaxError;
use super::lexer::{Kw, Tok, Token};
use super::strings::decode;
use super::Dialect;
use chumsky::input::MappedInput;
use chumsky::pratt::{infix, left, prefix, right};
use chumsky::prelude::*;
use std::borrow::Cow;

type TokenInput<'s> = MappedInput<'s, Tok, SimpleSpan, &'s [Token]>;
type Extra = extra::Err<SyntaxError>;

/// Parses lexed tokens into an expression. `src` is the text the tokens point into.
// The error is fixed-size so trying alternatives never allocates; it is returned once per parse.
#[allow(clippy::result_large_err)]
pub fn parse_tokens<'a>(
    src: &'a str,
    tokens: &[Token],
    dialect: Dialect,
) -> Result<Expr<'a>, SyntaxError> {
    let eoi = SimpleSpan::from(src.len()..src.len());
    let input = tokens.split_token_span(eoi);
    let result = expr_parser(src, dialect).then_ignore(end()).parse(input);
    match result.into_result() {
        Ok(expr) => Ok(expr),
        Err(mut errors) => Err(errors.swap_remove(0)),
    }
}

/// A postfix modifier, folded onto the expression before it.
enum Postfix<'a> {
    Range {
        range: Expr<'a>,
        step: Option<Option<Expr<'a>>>,
        smoothing: Option<Kw>,
        end: usize,
    },
    Offset(Expr<'a>, usize),
    At(Expr<'a>, usize),
    KeepMetricNames(usize),
}

/// What follows a word at the start of an atom.
#[derive(Clone)]
enum AfterWord<'a> {
    Call(Vec<Expr<'a>>, Option<Grouping<'a>>, Option<Expr<'a>>),
    Braces(Vec<MatcherGroup<'a>>, Span),
    Bare,
}

/// Binary operator with its `bool` and vector-matching modifiers.
type BinOpWithModifiers<'a> = (BinOp, bool, Option<VectorMatching<'a>>);

fn span_of(s: SimpleSpan) -> Span {
    s.start..s.end
}

#[allow(clippy::result_large_err)] // try_map closures return SyntaxError by value
fn expr_parser<'s, 'a: 's>(
    src: &'a str,
    dialect: Dialect,
) -> impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone {
    let metricsql = dialect == Dialect::Metricsql;
    let text = move |s: SimpleSpan| &src[s.start..s.end];
    let kw = |k: Kw| just(Tok::Ident(k));

    // A label name: any word (keywords included), or a quoted string.
    let label_name = select! {
        Tok::Ident(_) = e => Cow::Borrowed(text(e.span())),
        Tok::Str = e => decode(text(e.span())),
    }
    .labelled("label name");

    let label_list = label_name
        .separated_by(just(Tok::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(just(Tok::LParen), just(Tok::RParen));

    let grouping = select! { Tok::Ident(Kw::By) => false, Tok::Ident(Kw::Without) => true }
        .then(label_list.labelled("\"(\""))
        .map(|(without, labels)| Grouping { without, labels })
        .boxed();

    let string = select! { Tok::Str = e => (decode(text(e.span())), span_of(e.span())) };

    // ---- Selectors -------------------------------------------------------------------
    let match_op = select! {
        Tok::Assign => MatchOp::Equal,
        Tok::Neq => MatchOp::NotEqual,
        Tok::EqlRegex => MatchOp::Regex,
        Tok::NeqRegex => MatchOp::NotRegex,
    }
    .labelled("label matching operator");

    let full_matcher = label_name
        .then(match_op)
        .then(string.labelled("string"))
        .map_with(|((label, op), (value, _)), e| Matcher {
            label,
            op,
            value,
            span: span_of(e.span()),
            comma: None,
            name_only: false,
        });
    let name_only = string.map(|(value, span)| Matcher {
        label: Cow::Borrowed("__name__"),
        op: MatchOp::Equal,
        value,
        span,
        comma: None,
        name_only: true,
    });
    let matcher = full_matcher.or(name_only).labelled("label matcher").boxed();

    // `m, m, m` or `m, m,`: every matcher but the last is followed by a comma.
    let matcher_group = matcher
        .clone()
        .then(just(Tok::Comma).to_span())
        .map(|(mut m, comma): (Matcher<'a>, SimpleSpan)| {
            m.comma = Some(span_of(comma));
            m
        })
        .repeated()
        .collect::<Vec<_>>()
        .then(matcher.or_not())
        .map_with(|(mut matchers, last), e| {
            let ends_with_comma = last.is_none() && !matchers.is_empty();
            matchers.extend(last);
            let span: SimpleSpan = e.span();
            MatcherGroup {
                matchers,
                insert_at: span.end,
                ends_with_comma,
            }
        });

    let or_kw = select! { Tok::Ident(Kw::Or) if metricsql => () };
    let braces = matcher_group
        .separated_by(or_kw)
        .at_least(1)
        .collect::<Vec<_>>()
        .then(just(Tok::RBrace).to_span())
        .delimited_by(just(Tok::LBrace), empty())
        .map_with(
            |(mut groups, close): (Vec<MatcherGroup<'a>>, SimpleSpan), e| {
                // The last group takes its matcher right before `}`: the output stays readable
                // and a trailing comment inside the braces cannot swallow it.
                if let Some(last) = groups.last_mut() {
                    last.insert_at = close.start;
                }
                (groups, span_of(e.span()))
            },
        )
        .try_map(|(groups, span): (Vec<MatcherGroup<'a>>, Span), s| {
            if groups.len() > 1 && groups.iter().any(|g| g.matchers.is_empty()) {
                return Err(SyntaxError::custom(s, "empty group in or-filter"));
            }
            Ok((groups, span))
        })
        .boxed();

    let brace_selector = braces
        .clone()
        .map_with(|(groups, b), e| Expr {
            kind: ExprKind::Selector(Box::new(Selector {
                name: None,
                braces: Some(b),
                groups,
            })),
            span: span_of(e.span()),
        })
        .boxed();

    // ---- Literals --------------------------------------------------------------------
    let number = select! {
        Tok::Number = e => number_value(text(e.span())),
        Tok::Ident(Kw::Inf) => f64::INFINITY,
        Tok::Ident(Kw::Nan) => f64::NAN,
    }
    .map_with(|v, e| Expr {
        kind: ExprKind::Number(v),
        span: span_of(e.span()),
    });
    let duration = select! { Tok::Duration = e => duration_value(text(e.span()), dialect) }
        .map_with(|v, e| Expr {
            kind: ExprKind::Duration(v),
            span: span_of(e.span()),
        })
        .boxed();
    let string_literal = string.map(|(v, span)| Expr {
        kind: ExprKind::String(v),
        span,
    });

    // ---- Duration expressions (inside `[...]` and after `offset`) ---------------------
    let duration_expr = recursive(|dexpr| {
        let term = duration_term(number, duration.clone(), dexpr)
            .labelled("number, duration, step(), or range()");
        term.pratt((
            prefix(5, select! { Tok::Add => false, Tok::Sub => true }, unary),
            infix(right(4), just(Tok::Pow).to(BinOp::Pow), plain_binary),
            infix(
                left(3),
                select! { Tok::Mul => BinOp::Mul, Tok::Div => BinOp::Div, Tok::Mod => BinOp::Mod },
                plain_binary,
            ),
            infix(
                left(2),
                select! { Tok::Add => BinOp::Add, Tok::Sub => BinOp::Sub },
                plain_binary,
            ),
        ))
        .boxed()
    });

    // `offset` takes one signed term; `foo offset 5s - 8` subtracts 8 from the selector.
    let offset_term = duration_term(number, duration.clone(), duration_expr.clone());
    let offset_value = signed(offset_term.boxed())
        .labelled("number, duration, step(), or range()")
        .boxed();
    let at_value = signed(choice((number, duration.clone())))
        .or(empty_call(Kw::Start))
        .or(empty_call(Kw::End))
        .labelled("timestamp")
        .boxed();

    let smoothing = select! { Tok::Ident(Kw::Anchored) => Kw::Anchored, Tok::Ident(Kw::Smoothed) => Kw::Smoothed };
    let bracket = duration_expr
        .clone()
        .labelled("number, duration, step(), or range()")
        .then(
            just(Tok::Colon)
                .ignore_then(duration_expr.clone().or_not())
                .or_not(),
        )
        .then(just(Tok::RBracket).to_span())
        .delimited_by(just(Tok::LBracket), empty())
        .then(smoothing.or_not())
        .map_with(|(((range, step), _), smoothing), e| {
            let end: SimpleSpan = e.span();
            Postfix::Range {
                range,
                step,
                smoothing,
                end: end.end,
            }
        });
    // Most atoms have no modifier after them: one look at the next token rules out all
    // four before any of them is tried (each failed attempt costs error bookkeeping).
    let postfix_start = any().filter(move |t: &Tok| {
        matches!(t, Tok::LBracket | Tok::At | Tok::Ident(Kw::Offset))
            || (metricsql && *t == Tok::Ident(Kw::KeepMetricNames))
    });
    let postfix = postfix_start.rewind().ignore_then(choice((
        bracket,
        kw(Kw::Offset).ignore_then(offset_value).map_with(|v, e| {
            let s: SimpleSpan = e.span();
            Postfix::Offset(v, s.end)
        }),
        just(Tok::At).ignore_then(at_value).map_with(|v, e| {
            let s: SimpleSpan = e.span();
            Postfix::At(v, s.end)
        }),
        select! { Tok::Ident(Kw::KeepMetricNames) = e if metricsql => { let s: SimpleSpan = e.span(); Postfix::KeepMetricNames(s.end) } },
    )))
    .boxed();

    // ---- Expressions -----------------------------------------------------------------
    recursive(move |expr| {
        let args = expr
            .clone()
            .separated_by(just(Tok::Comma))
            .collect::<Vec<_>>()
            .delimited_by(just(Tok::LParen), just(Tok::RParen));

        // Everything that starts with a word: a call (an aggregation may put `by`/`without`
        // before its arguments; in MetricsQL any function may, since its aggregations are
        // ordinary functions), a preprocessor, or a selector. The word is read once and the
        // next token decides, so a selector costs no failed attempts at being a call.
        let limit = select! { Tok::Ident(Kw::Limit) if metricsql => () }
            .ignore_then(number)
            .or_not();
        // Likewise, a bare name (the commonest atom) is ruled out of being a call or a
        // braced selector by one look at the next token.
        let after_word_start = any().filter(|t: &Tok| {
            matches!(
                t,
                Tok::LParen | Tok::LBrace | Tok::Ident(Kw::By) | Tok::Ident(Kw::Without)
            )
        });
        let after_word = after_word_start
            .rewind()
            .ignore_then(choice((
                args.clone()
                    .then(grouping.clone().or_not())
                    .then(limit)
                    .map(|((args, grouping), limit)| AfterWord::Call(args, grouping, limit)),
                grouping
                    .clone()
                    .then(args)
                    .then(limit)
                    .map(|((grouping, args), limit)| AfterWord::Call(args, Some(grouping), limit)),
                braces
                    .clone()
                    .map(|(groups, span)| AfterWord::Braces(groups, span)),
            )))
            .or(empty().to(AfterWord::Bare));
        let word =
            select! { Tok::Ident(k) = e if !matches!(k, Kw::Inf | Kw::Nan) => (k, e.span()) };
        let word_led = word
            .then(after_word)
            .try_map(
                move |((k, word_span), after): ((Kw, SimpleSpan), AfterWord<'a>), span| {
                    let name = text(word_span);
                    let kind = match after {
                        AfterWord::Call(args, grouping, limit) => {
                            let aggregation = match k {
                                Kw::Aggregation(op) => Some(op),
                                _ => None,
                            };
                            if matches!(k, Kw::Start | Kw::End)
                                && args.is_empty()
                                && grouping.is_none()
                                && limit.is_none()
                            {
                                ExprKind::DurationFn { func: k, args }
                            } else {
                                ExprKind::Call(Box::new(Call {
                                    name,
                                    aggregation,
                                    args,
                                    grouping,
                                    limit: limit.map(Box::new),
                                }))
                            }
                        }
                        AfterWord::Braces(groups, braces) => {
                            ExprKind::Selector(Box::new(Selector {
                                name: Some((Cow::Borrowed(name), span_of(word_span))),
                                braces: Some(braces),
                                groups,
                            }))
                        }
                        AfterWord::Bare => ExprKind::Selector(Box::new(Selector {
                            name: Some((Cow::Borrowed(name), span_of(word_span))),
                            braces: None,
                            groups: Vec::new(),
                        })),
                    };
                    if let ExprKind::Call(call) = &kind {
                        if call.aggregation.is_none() && call.grouping.is_some() && !metricsql {
                            return Err(SyntaxError::custom(
                                span,
                                "only aggregations take by/without",
                            ));
                        }
                    }
                    Ok(Expr {
                        kind,
                        span: span_of(span),
                    })
                },
            )
            .boxed();

        let paren = expr
            .clone()
            .delimited_by(just(Tok::LParen), just(Tok::RParen))
            .map_with(|inner, e| Expr {
                kind: ExprKind::Paren(Box::new(inner)),
                span: span_of(e.span()),
            });

        let atom = choice((
            word_led,
            number,
            paren,
            string_literal,
            brace_selector.clone(),
            duration.clone(),
        ))
        .labelled("expression")
        .foldl(postfix.clone().repeated(), |lhs: Expr<'a>, post| {
            let start = lhs.span.start;
            match post {
                Postfix::Range {
                    range,
                    step,
                    smoothing,
                    end,
                } => Expr {
                    kind: ExprKind::Range(Box::new(RangeExpr {
                        expr: lhs,
                        range,
                        subquery_step: step,
                        smoothing,
                    })),
                    span: start..end,
                },
                Postfix::Offset(offset, end) => Expr {
                    kind: ExprKind::Offset {
                        expr: Box::new(lhs),
                        offset: Box::new(offset),
                    },
                    span: start..end,
                },
                Postfix::At(at, end) => Expr {
                    kind: ExprKind::At {
                        expr: Box::new(lhs),
                        at: Box::new(at),
                    },
                    span: start..end,
                },
                Postfix::KeepMetricNames(end) => Expr {
                    kind: ExprKind::KeepMetricNames(Box::new(lhs)),
                    span: start..end,
                },
            }
        })
        .boxed();

        // ---- Binary operators and their modifiers ----
        let on_or_ignoring =
            select! { Tok::Ident(Kw::On) => true, Tok::Ident(Kw::Ignoring) => false };
        let group_side =
            select! { Tok::Ident(Kw::GroupLeft) => true, Tok::Ident(Kw::GroupRight) => false };
        let group_modifier =
            group_side
                .then(label_list.or_not())
                .map(|(left, labels)| GroupModifier {
                    left,
                    labels: labels.unwrap_or_default(),
                });
        let matching = on_or_ignoring
            .then(label_list)
            .then(group_modifier.or_not())
            .map(|((on, labels), group)| VectorMatching { on, labels, group })
            .or_not();
        let return_bool = kw(Kw::Bool).or_not().map(|b| b.is_some());
        let modifiers = return_bool.then(matching).boxed();

        // An operand: its prefix signs, then an atom. Operators between operands are
        // read flat, each with one token look-up, and `build_tree` applies precedence and
        // associativity afterwards: trying every precedence level as a separate parser
        // at each position cost more than the rest of the parse together.
        let signs = select! { Tok::Add => false, Tok::Sub => true }
            .map_with(|negative, e| {
                let s: SimpleSpan = e.span();
                (negative, s.start)
            })
            .repeated()
            .collect::<Vec<_>>();
        let operand = signs.then(atom);
        let operator = select! {
            Tok::Pow => BinOp::Pow,
            Tok::Mul => BinOp::Mul,
            Tok::Div => BinOp::Div,
            Tok::Mod => BinOp::Mod,
            Tok::Ident(Kw::Atan2) => BinOp::Atan2,
            Tok::Add => BinOp::Add,
            Tok::Sub => BinOp::Sub,
            Tok::EqlEql => BinOp::Eql,
            Tok::Neq => BinOp::Neq,
            Tok::Lt => BinOp::Lt,
            Tok::Lte => BinOp::Lte,
            Tok::Gt => BinOp::Gt,
            Tok::Gte => BinOp::Gte,
            Tok::Ident(Kw::And) => BinOp::And,
            Tok::Ident(Kw::Unless) => BinOp::Unless,
            Tok::Ident(Kw::Or) => BinOp::Or,
            Tok::Ident(Kw::If) if metricsql => BinOp::If,
            Tok::Ident(Kw::Ifnot) if metricsql => BinOp::Ifnot,
            Tok::Ident(Kw::Default) if metricsql => BinOp::Default,
        };
        operand
            .clone()
            .then(
                with_modifiers(operator, modifiers)
                    .then(operand)
                    .repeated()
                    .collect::<Vec<_>>(),
            )
            .map(|(first, rest)| build_tree(first, rest))
    })
}

/// An operand as read: prefix signs (negative?, byte offset) and the atom.
type Operand<'a> = (Vec<(bool, usize)>, Expr<'a>);

/// Binding power of a binary operator, as in Prometheus (MetricsQL's `if`, `ifnot` and
/// `default` bind loosest). Unary minus sits between `*` and `^`: `-a^b` is `-(a^b)`.
fn precedence(op: BinOp) -> u8 {
    match op {
        BinOp::Pow => 16,
        BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Atan2 => 14,
        BinOp::Add | BinOp::Sub => 12,
        BinOp::Eql | BinOp::Neq | BinOp::Lt | BinOp::Lte | BinOp::Gt | BinOp::Gte => 10,
        BinOp::And | BinOp::Unless => 8,
        BinOp::Or => 6,
        BinOp::If | BinOp::Ifnot => 4,
        BinOp::Default => 2,
    }
}

/// Builds the expression tree of `first (op operand)*` by precedence climbing.
///
/// Left-associative chains are folded in a loop; only `^` (right-associative) and signs
/// recurse, and the lexer caps how many of those a query may hold.
fn build_tree<'a>(
    first: Operand<'a>,
    rest: Vec<(BinOpWithModifiers<'a>, Operand<'a>)>,
) -> Expr<'a> {
    let mut items = rest.into_iter().peekable();
    climb(first, &mut items, 0)
}

type Items<'a> = std::iter::Peekable<std::vec::IntoIter<(BinOpWithModifiers<'a>, Operand<'a>)>>;

fn climb<'a>(first: Operand<'a>, items: &mut Items<'a>, min_precedence: u8) -> Expr<'a> {
    let mut lhs = primary(first, items);
    while let Some(((op, ..), _)) = items.peek() {
        let precedence = precedence(*op);
        if precedence < min_precedence {
            break;
        }
        let Some(((op, return_bool, matching), operand)) = items.next() else {
            break;
        };
        let next_min = if op == BinOp::Pow {
            precedence
        } else {
            precedence + 1
        };
        let rhs = climb(operand, items, next_min);
        lhs = join(lhs, (op, return_bool, matching), rhs);
    }
    lhs
}

/// An operand with its signs: they apply to the atom and any `^` chain after it.
fn primary<'a>((signs, atom): Operand<'a>, items: &mut Items<'a>) -> Expr<'a> {
    if signs.is_empty() {
        return atom;
    }
    let mut expr = atom;
    while let Some(((BinOp::Pow, ..), _)) = items.peek() {
        let Some((op, operand)) = items.next() else {
            break;
        };
        let rhs = climb(operand, items, precedence(BinOp::Pow));
        expr = join(expr, op, rhs);
    }
    for (negative, start) in signs.into_iter().rev() {
        let end = expr.span.end;
        expr = Expr {
            kind: ExprKind::Unary {
                negative,
                expr: Box::new(expr),
            },
            span: start..end,
        };
    }
    expr
}

fn join<'a>(
    lhs: Expr<'a>,
    (op, return_bool, matching): BinOpWithModifiers<'a>,
    rhs: Expr<'a>,
) -> Expr<'a> {
    let span = lhs.span.start..rhs.span.end;
    Expr {
        kind: ExprKind::Binary(Box::new(Binary {
            op,
            lhs,
            rhs,
            return_bool,
            matching,
        })),
        span,
    }
}

/// `step()`, `range()`, `start()`, `end()`: a duration function without arguments.
fn empty_call<'s, 'a: 's>(func: Kw) -> impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone {
    just(Tok::Ident(func))
        .then(just(Tok::LParen))
        .then(just(Tok::RParen))
        .map_with(move |_, e| Expr {
            kind: ExprKind::DurationFn {
                func,
                args: Vec::new(),
            },
            span: span_of(e.span()),
        })
}

/// One term of a duration expression: a number, a duration, `(expr)`, `step()`, `range()`,
/// `min_of(a, b)` or `max_of(a, b)`. `inner` parses the full duration expression.
fn duration_term<'s, 'a: 's>(
    number: impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone,
    duration: impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone,
    inner: impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone,
) -> impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone {
    let two_args =
        select! { Tok::Ident(Kw::MinOf) => Kw::MinOf, Tok::Ident(Kw::MaxOf) => Kw::MaxOf }
            .then(
                inner
                    .clone()
                    .then_ignore(just(Tok::Comma))
                    .then(inner.clone())
                    .delimited_by(just(Tok::LParen), just(Tok::RParen)),
            )
            .map_with(|(func, (a, b)), e| Expr {
                kind: ExprKind::DurationFn {
                    func,
                    args: vec![a, b],
                },
                span: span_of(e.span()),
            });
    let paren = inner
        .delimited_by(just(Tok::LParen), just(Tok::RParen))
        .map_with(|inner, e| Expr {
            kind: ExprKind::Paren(Box::new(inner)),
            span: span_of(e.span()),
        });
    choice((
        number,
        duration,
        paren,
        empty_call(Kw::Step),
        empty_call(Kw::Range),
        two_args,
    ))
}

/// A binary operator token followed by its `bool` and vector-matching modifiers.
fn with_modifiers<'s, 'a: 's>(
    op: impl Parser<'s, TokenInput<'s>, BinOp, Extra> + Clone,
    modifiers: impl Parser<'s, TokenInput<'s>, (bool, Option<VectorMatching<'a>>), Extra> + Clone,
) -> impl Parser<'s, TokenInput<'s>, BinOpWithModifiers<'a>, Extra> + Clone {
    op.then(modifiers)
        .map(|(op, (return_bool, matching))| (op, return_bool, matching))
}

/// `term`, optionally preceded by a sign.
fn signed<'s, 'a: 's>(
    term: impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone,
) -> impl Parser<'s, TokenInput<'s>, Expr<'a>, Extra> + Clone {
    select! { Tok::Add => false, Tok::Sub => true }
        .or_not()
        .then(term)
        .map_with(|(sign, expr), e| match sign {
            None => expr,
            Some(negative) => Expr {
                kind: ExprKind::Unary {
                    negative,
                    expr: Box::new(expr),
                },
                span: span_of(e.span()),
            },
        })
}

fn unary<'s, 'p, 'a>(
    negative: bool,
    expr: Expr<'a>,
    e: &mut chumsky::input::MapExtra<'s, 'p, TokenInput<'s>, Extra>,
) -> Expr<'a> {
    Expr {
        kind: ExprKind::Unary {
            negative,
            expr: Box::new(expr),
        },
        span: span_of(e.span()),
    }
}

/// A binary node of a duration expression (chumsky's pratt calls it with the span too,
/// which equals the operands' combined span).
fn plain_binary<'s, 'p, 'a>(
    lhs: Expr<'a>,
    op: BinOp,
    rhs: Expr<'a>,
    _: &mut chumsky::input::MapExtra<'s, 'p, TokenInput<'s>, Extra>,
) -> Expr<'a> {
    join(lhs, (op, false, None), rhs)
}

/// The value of a number token. Hex and octal follow Go's `ParseInt(s, 0, 64)` first,
/// as Prometheus does; MetricsQL size suffixes multiply.
pub fn number_value(text: &str) -> f64 {
    let (digits, multiplier) = split_size_suffix(text);
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
            .map(|v| v as f64)
            .unwrap_or(f64::INFINITY)
    } else if digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        u64::from_str_radix(&digits[1..], 8)
            .map(|v| v as f64)
            .or_else(|_| digits.parse::<f64>())
            .unwrap_or(f64::INFINITY)
    } else {
        digits.parse::<f64>().unwrap_or(f64::NAN)
    };
    value * multiplier
}

fn split_size_suffix(text: &str) -> (&str, f64) {
    const SUFFIXES: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    if text.starts_with("0x") || text.starts_with("0X") {
        return (text, 1.0);
    }
    for (suffix, mult) in SUFFIXES {
        if let Some(digits) = text.strip_suffix(suffix) {
            return (digits, mult);
        }
    }
    (text, 1.0)
}

fn duration_value(text: &str, dialect: Dialect) -> f64 {
    super::duration::parse_duration_literal(text, dialect).unwrap_or(f64::NAN)
}
