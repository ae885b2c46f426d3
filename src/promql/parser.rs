//! The chumsky grammar: tokens in, spanned AST out.
//!
//! Syntax only. Type rules (what may be ranged, which functions take what) live in
//! `check.rs`, so the grammar stays close to the language's shape and the two
//! dialects differ here only where their syntax does.

use super::ast::*;
use super::error::SyntaxError;
use super::lexer::{Kw, Tok, Token};
use super::strings::decode;
use super::tokens::Tokens;
use super::Dialect;
use chumsky::cache::{Cache, Cached};
use chumsky::input::MapExtra;
use chumsky::inspector::SimpleState;
use chumsky::pratt::{infix, left, prefix, right};
use chumsky::prelude::*;
use std::borrow::Cow;

/// The query text rides in the parser state, so the grammar's type does not depend on
/// it and one grammar serves every query.
type Extra<'a> = extra::Full<SyntaxError, SimpleState<&'a str>, ()>;

/// One dialect's grammar, built once per thread by chumsky's parser cache.
struct Grammar(Dialect);

impl Cached for Grammar {
    type Parser<'a> = Boxed<'a, 'a, Tokens, Expr<'a>, Extra<'a>>;

    fn make_parser<'a>(self) -> Self::Parser<'a> {
        expr_parser(self.0).then_ignore(end()).boxed()
    }
}

// Building the grammar cost about as much as parsing a short query. A parser is an
// `Rc` graph (not `Send`), so each thread keeps its own: in the filter that is one per
// Wasm VM, whose host calls run on one thread, so each Envoy worker builds it once.
thread_local! {
    static PROMQL: Cache<Grammar> = Cache::new(Grammar(Dialect::Promql));
    static METRICSQL: Cache<Grammar> = Cache::new(Grammar(Dialect::Metricsql));
}

/// Parses lexed tokens into an expression. `src` is the text the tokens point into.
// The error is fixed-size so trying alternatives never allocates; it is returned once per parse.
#[allow(clippy::result_large_err)]
pub fn parse_tokens(
    src: &str,
    tokens: Vec<Token>,
    dialect: Dialect,
) -> Result<Expr<'_>, SyntaxError> {
    let input = Tokens::new(tokens, src.len());
    let mut state = SimpleState(src);
    let grammar = match dialect {
        Dialect::Promql => &PROMQL,
        Dialect::Metricsql => &METRICSQL,
    };
    let result = grammar.with(|cache| {
        cache
            .get()
            .parse_with_state(input, &mut state)
            .into_result()
    });
    match result {
        Ok(expr) => Ok(expr),
        Err(mut errors) => Err(errors.swap_remove(0)),
    }
}

/// The text of the token(s) a parser just read.
fn text<'a>(e: &mut MapExtra<'a, '_, Tokens, Extra<'a>>) -> &'a str {
    let span: SimpleSpan = e.span();
    let src: &'a str = e.state().0;
    src.get(span.start..span.end).unwrap_or("")
}

/// A postfix modifier, folded onto the expression before it.
pub(super) enum Postfix<'a> {
    Range {
        range: Option<Expr<'a>>,
        step: Option<Option<Expr<'a>>>,
        smoothing: Option<Kw>,
        end: usize,
    },
    Offset(Expr<'a>, usize),
    At(Expr<'a>, usize),
}

/// What follows a word at the start of an atom.
pub(super) enum AfterWord<'a> {
    Call(Box<CallTail<'a>>),
    Braces(Vec<MatcherGroup<'a>>, Span),
    Bare,
}

/// A call's arguments and what may follow them.
pub(super) struct CallTail<'a> {
    pub args: Vec<Expr<'a>>,
    pub grouping: Option<Grouping<'a>>,
    /// MetricsQL `limit N`.
    pub limit: bool,
    /// MetricsQL `keep_metric_names`: where it ends.
    pub keep_metric_names: Option<usize>,
}

/// What a bracket holds: range, step (absent, empty or given), the `]`, and a smoothing
/// modifier after it.
type BracketParts<'a> = (
    ((Option<Expr<'a>>, Option<Option<Expr<'a>>>), SimpleSpan),
    Option<Kw>,
);

/// Binary operator with its `bool` and vector-matching modifiers.
pub(super) type BinOpWithModifiers<'a> = (BinOp, bool, Option<VectorMatching<'a>>);

pub(super) fn span_of(s: SimpleSpan) -> Span {
    s.start..s.end
}

/// MetricsQL's aggregate functions (metricsql 0.49, `aggrFuncs`): only these take
/// `by`/`without` and `limit`, matched case-insensitively.
const METRICSQL_AGGREGATIONS: [&str; 35] = [
    "any",
    "avg",
    "bottomk",
    "bottomk_avg",
    "bottomk_max",
    "bottomk_median",
    "bottomk_last",
    "bottomk_min",
    "count",
    "count_values",
    "distinct",
    "geomean",
    "group",
    "histogram",
    "limitk",
    "mad",
    "max",
    "median",
    "min",
    "mode",
    "outliers_mad",
    "outliersk",
    "quantile",
    "quantiles",
    "stddev",
    "stdvar",
    "sum",
    "sum2",
    "topk",
    "topk_avg",
    "topk_max",
    "topk_median",
    "topk_last",
    "topk_min",
    "zscore",
];

/// Whether `name` is an aggregation in the dialect: a PromQL aggregation operator, or
/// one of MetricsQL's aggregate functions.
fn is_aggregation(name: &str, k: Kw, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Promql => matches!(k, Kw::Aggregation(_)),
        Dialect::Metricsql => METRICSQL_AGGREGATIONS
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name)),
    }
}

/// Words Prometheus' grammar does not take as a metric name (`metric_identifier`):
/// they are read as a modifier or an operator wherever a name could stand.
fn promql_reserved(k: Kw) -> bool {
    matches!(
        k,
        Kw::Bool | Kw::On | Kw::Ignoring | Kw::GroupLeft | Kw::GroupRight | Kw::Atan2
    )
}

#[allow(clippy::result_large_err)] // try_map closures return SyntaxError by value
fn expr_parser<'a>(dialect: Dialect) -> impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone {
    let metricsql = dialect == Dialect::Metricsql;
    let kw = |k: Kw| just(Tok::Ident(k));

    // A label name: any word (keywords included); Prometheus also takes a quoted string.
    let label_name = select! {
        Tok::Ident(_) = e => Cow::Borrowed(text(e)),
        Tok::Str = e if !metricsql => decode(text(e)),
    }
    .labelled("label name");

    let label_list = label_name
        .separated_by(just(Tok::Comma))
        .allow_trailing()
        .collect::<Vec<_>>()
        .delimited_by(just(Tok::LParen), just(Tok::RParen))
        .boxed();

    let grouping = select! { Tok::Ident(Kw::By) => false, Tok::Ident(Kw::Without) => true }
        .then(label_list.clone().labelled("\"(\""))
        .map(|(without, labels)| Grouping { without, labels })
        .boxed();

    let string = select! { Tok::Str = e => (decode(text(e)), span_of(e.span())) };

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
    // Prometheus 3: a metric name as a lone quoted string (`{"metric.name"}`).
    let name_only =
        select! { Tok::Str = e if !metricsql => (e.span(), text(e)) }.map(|(s, t)| Matcher {
            label: Cow::Borrowed("__name__"),
            op: MatchOp::Equal,
            value: decode(t),
            span: span_of(s),
            comma: None,
            name_only: true,
        });
    let matcher = full_matcher.or(name_only).labelled("label matcher").boxed();

    // `m, m, m` or `m, m,`: every matcher but the last is followed by a comma. Read as
    // `m (, m)* ,?` so that no matcher is read twice; each takes the comma after it.
    let comma = just(Tok::Comma).to_span();
    let matcher_group = matcher
        .clone()
        .then(comma.then(matcher).repeated().collect::<Vec<_>>())
        .then(comma.or_not())
        .or_not()
        .map_with(|group, e| {
            let mut matchers = Vec::new();
            let mut ends_with_comma = false;
            if let Some(((first, rest), trailing)) = group {
                matchers.reserve_exact(rest.len() + 1);
                let mut last: Matcher<'a> = first;
                for (comma, next) in rest {
                    last.comma = Some(span_of(comma));
                    matchers.push(std::mem::replace(&mut last, next));
                }
                last.comma = trailing.map(span_of);
                ends_with_comma = trailing.is_some();
                matchers.push(last);
            }
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
        Tok::Number(v) => v.get(),
        Tok::Ident(Kw::Inf) => f64::INFINITY,
        Tok::Ident(Kw::Nan) => f64::NAN,
    }
    .map_with(|v, e| Expr {
        kind: ExprKind::Number(v),
        span: span_of(e.span()),
    });
    let duration = select! { Tok::Duration(v) => v.get() }
        .map_with(|v, e| Expr {
            kind: ExprKind::Duration(v),
            span: span_of(e.span()),
        })
        .boxed();
    let string_literal = string.map(|(v, span)| Expr {
        kind: ExprKind::String(v),
        span,
    });

    // ---- Ranges, offsets and `@` -------------------------------------------------------
    let smoothing = select! { Tok::Ident(Kw::Anchored) => Kw::Anchored, Tok::Ident(Kw::Smoothed) => Kw::Smoothed };
    let range_end =
        |(((range, step), close), smoothing): BracketParts<'a>,
         e: &mut chumsky::input::MapExtra<'a, '_, Tokens, Extra<'a>>| {
            let end = smoothing.map_or(close.end, |_| {
                let s: SimpleSpan = e.span();
                s.end
            });
            Postfix::Range {
                range,
                step,
                smoothing,
                end,
            }
        };
    let (bracket, offset_value) = if metricsql {
        // metricsql's `parsePositiveDuration`: one duration or number token, no
        // arithmetic; the range may be left out (`[:5m]`, `[:]`), the step too.
        let literal = duration.clone().or(select! { Tok::Number(v) = e => Expr {
            kind: ExprKind::Number(v.get()),
            span: span_of(e.span()),
        } });
        let bracket = literal
            .clone()
            .or_not()
            .then(
                just(Tok::Colon)
                    .ignore_then(literal.clone().or_not())
                    .or_not(),
            )
            .labelled("number, duration, step(), or range()")
            .then(just(Tok::RBracket).to_span())
            .delimited_by(just(Tok::LBracket), empty())
            .try_map(|((range, step), close), s| {
                if range.is_none() && step.is_none() {
                    return Err(SyntaxError::custom(s, "expected a duration in brackets"));
                }
                Ok(((range, step), close))
            })
            .then(empty().to(None))
            .map_with(range_end)
            .boxed();
        let offset_value = select! { Tok::Sub => () }
            .or_not()
            .then(literal)
            .map_with(|(minus, expr), e| match minus {
                None => expr,
                Some(()) => unary(true, expr, e),
            })
            .labelled("number, duration, step(), or range()")
            .boxed();
        (bracket, offset_value)
    } else {
        // Prometheus: duration expressions (`[5m+1m]`, `step()`, `min_of(...)`).
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
        // A bracket of single durations (`[5m]`, `[1h:1m]`, nearly all of them) is the
        // fast reader's (`fast.rs`); here it goes through the full expression.
        let bracket = duration_expr
            .clone()
            .labelled("number, duration, step(), or range()")
            .map(Some)
            .then(
                just(Tok::Colon)
                    .ignore_then(duration_expr.clone().or_not())
                    .or_not(),
            )
            .then(just(Tok::RBracket).to_span())
            .delimited_by(just(Tok::LBracket), empty())
            .then(smoothing.or_not())
            .map_with(range_end)
            .boxed();
        // `offset` takes one signed term; `foo offset 5s - 8` subtracts 8 from the selector.
        let offset_term = duration_term(number, duration.clone(), duration_expr);
        let offset_value = signed(offset_term.boxed())
            .labelled("number, duration, step(), or range()")
            .boxed();
        (bracket, offset_value)
    };
    let promql_at_value = signed(choice((number, duration.clone())))
        .or(empty_call(Kw::Start))
        .or(empty_call(Kw::End))
        .labelled("timestamp")
        .boxed();

    // ---- Expressions -----------------------------------------------------------------
    recursive(move |expr| {
        // metricsql takes a comma after the last argument; Prometheus does not.
        let trailing_comma = select! { Tok::Comma if metricsql => () }.or_not();
        let args = expr
            .clone()
            .separated_by(just(Tok::Comma))
            .collect::<Vec<_>>()
            .then_ignore(trailing_comma)
            .delimited_by(just(Tok::LParen), just(Tok::RParen));

        // Everything that starts with a word: a call (an aggregation may put `by`/`without`
        // before its arguments), a preprocessor, or a selector. The word is read once and
        // the next token decides, so a selector costs no failed attempts at being a call.
        // metricsql reads the limit with `strconv.Atoi`: decimal digits only.
        let limit = select! { Tok::Ident(Kw::Limit) if metricsql => () }
            .ignore_then(
                select! { Tok::Number(_) = e => text(e).bytes().all(|b| b.is_ascii_digit()) }
                    .filter(|digits: &bool| *digits),
            )
            .or_not()
            .map(|l| l.is_some());
        let keep_metric_names = select! { Tok::Ident(Kw::KeepMetricNames) = e if metricsql => {
            let s: SimpleSpan = e.span();
            s.end
        } }
        .or_not();
        // Likewise, a bare name (the commonest atom) is ruled out of being a call or a
        // braced selector by one look at the next token.
        let after_word_start = any().filter(|t: &Tok| {
            matches!(
                t,
                Tok::LParen | Tok::LBrace | Tok::Ident(Kw::By) | Tok::Ident(Kw::Without)
            )
        });
        let call_tail = |args, grouping, limit, keep_metric_names| {
            AfterWord::Call(Box::new(CallTail {
                args,
                grouping,
                limit,
                keep_metric_names,
            }))
        };
        let after_word = after_word_start
            .rewind()
            .ignore_then(choice((
                args.clone()
                    .then(grouping.clone().or_not())
                    .then(limit)
                    .then(keep_metric_names)
                    .map(move |(((args, grouping), limit), keep)| {
                        call_tail(args, grouping, limit, keep)
                    }),
                grouping
                    .clone()
                    .then(args)
                    .then(limit)
                    .then(keep_metric_names)
                    .map(move |(((grouping, args), limit), keep)| {
                        call_tail(args, Some(grouping), limit, keep)
                    }),
                braces
                    .clone()
                    .map(|(groups, span)| AfterWord::Braces(groups, span)),
            )))
            .or(empty().map(|()| AfterWord::Bare));
        let word = select! { Tok::Ident(k) = e if !matches!(k, Kw::Inf | Kw::Nan) => (k, e.span(), text(e)) };
        let word_led = word
            .then(after_word)
            .try_map(
                move |((k, word_span, name), after): ((Kw, SimpleSpan, &'a str), AfterWord<'a>),
                      span| {
                    word_expr(name, k, span_of(word_span), after, span, dialect)
                },
            )
            .boxed();

        let paren = if metricsql {
            // `(a, b)` is a union in MetricsQL; `(a)` and `(a,)` are `a`; `()` is empty.
            expr.clone()
                .separated_by(just(Tok::Comma))
                .allow_trailing()
                .collect::<Vec<_>>()
                .then(just(Tok::Comma).or_not())
                .delimited_by(just(Tok::LParen), just(Tok::RParen))
                .map_with(|(mut items, _), e| {
                    let kind = if items.len() == 1 {
                        ExprKind::Paren(Box::new(items.swap_remove(0)))
                    } else {
                        ExprKind::Union(items)
                    };
                    Expr {
                        kind,
                        span: span_of(e.span()),
                    }
                })
                .boxed()
        } else {
            expr.clone()
                .delimited_by(just(Tok::LParen), just(Tok::RParen))
                .map_with(|inner, e| Expr {
                    kind: ExprKind::Paren(Box::new(inner)),
                    span: span_of(e.span()),
                })
                .boxed()
        };

        let atom_plain = choice((
            word_led,
            number,
            paren,
            string_literal,
            brace_selector.clone(),
            duration.clone(),
        ))
        .labelled("expression")
        .boxed();

        // An atom with its postfix modifiers. In MetricsQL the expression after `@` is
        // itself an atom, and after a sign one with modifiers (`x @ -y offset 5m`), so
        // the atom refers to itself (through a weak reference: `recursive` leaks nothing).
        let atom = recursive(move |atom| {
            let signs1 = select! { Tok::Add => false, Tok::Sub => true }
                .map_with(|negative, e| {
                    let s: SimpleSpan = e.span();
                    (negative, s.start)
                })
                .repeated()
                .at_least(1)
                .collect::<Vec<_>>();
            let at_value = if metricsql {
                signs1
                    .then(atom)
                    .map(|(signs, expr)| apply_signs(signs, expr))
                    .or(atom_plain.clone())
                    .labelled("timestamp")
                    .boxed()
            } else {
                promql_at_value.clone()
            };
            // Most atoms have no modifier after them: one look at the next token rules
            // out all three before any is tried (each failed attempt costs bookkeeping).
            let postfix_start = any().filter(move |t: &Tok| {
                matches!(t, Tok::LBracket | Tok::At | Tok::Ident(Kw::Offset))
            });
            let postfix = postfix_start
                .rewind()
                .ignore_then(choice((
                    bracket.clone(),
                    kw(Kw::Offset)
                        .ignore_then(offset_value.clone())
                        .map_with(|v, e| {
                            let s: SimpleSpan = e.span();
                            Postfix::Offset(v, s.end)
                        }),
                    just(Tok::At).ignore_then(at_value).map_with(|v, e| {
                        let s: SimpleSpan = e.span();
                        Postfix::At(v, s.end)
                    }),
                )))
                .boxed();
            atom_plain
                .clone()
                .then(postfix.repeated().collect::<Vec<_>>())
                .map(|(lhs, posts)| fold_postfix(lhs, posts))
                .boxed()
        });

        // ---- Binary operators and their modifiers ----
        let on_or_ignoring =
            select! { Tok::Ident(Kw::On) => true, Tok::Ident(Kw::Ignoring) => false };
        let group_side =
            select! { Tok::Ident(Kw::GroupLeft) => true, Tok::Ident(Kw::GroupRight) => false };
        let group_modifier = group_side
            .then(label_list.clone().or_not())
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
        let operator = chumsky::primitive::select(move |t, _| binary_operator(t, dialect));
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

/// The binary operator a token stands for in the dialect.
pub(super) fn binary_operator(t: Tok, dialect: Dialect) -> Option<BinOp> {
    let metricsql = dialect == Dialect::Metricsql;
    Some(match t {
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
        _ => return None,
    })
}

/// Builds what starts with a word: a call, a duration function, or a selector; refuses
/// what the dialect's grammar does not take there.
#[allow(clippy::result_large_err)]
pub(super) fn word_expr<'a>(
    name: &'a str,
    k: Kw,
    word_span: Span,
    after: AfterWord<'a>,
    span: SimpleSpan,
    dialect: Dialect,
) -> Result<Expr<'a>, SyntaxError> {
    let selector = |braces, groups| {
        if dialect == Dialect::Promql && promql_reserved(k) {
            return Err(SyntaxError::custom(
                span,
                "a keyword cannot be a metric name; select it with {__name__=\"...\"}",
            ));
        }
        Ok(ExprKind::Selector(Box::new(Selector {
            name: Some((Cow::Borrowed(name), word_span.clone())),
            braces,
            groups,
        })))
    };
    let kind = match after {
        AfterWord::Braces(groups, braces) => selector(Some(braces), groups)?,
        AfterWord::Bare => selector(None, Vec::new())?,
        AfterWord::Call(tail) => return call_expr(name, k, *tail, span, dialect),
    };
    Ok(Expr {
        kind,
        span: span_of(span),
    })
}

/// Builds a call (or `start()`/`end()`) from its name and what followed it; refuses
/// what only aggregations take on a function.
#[allow(clippy::result_large_err)]
pub(super) fn call_expr<'a>(
    name: &'a str,
    k: Kw,
    tail: CallTail<'a>,
    span: SimpleSpan,
    dialect: Dialect,
) -> Result<Expr<'a>, SyntaxError> {
    let CallTail {
        args,
        grouping,
        limit,
        keep_metric_names,
    } = tail;
    let aggregate = is_aggregation(name, k, dialect);
    if grouping.is_some() && !aggregate {
        return Err(SyntaxError::custom(
            span,
            "only aggregations take by/without",
        ));
    }
    if limit && !aggregate {
        return Err(SyntaxError::custom(span, "only aggregations take a limit"));
    }
    let keep_metric_names = keep_metric_names.is_some();
    if keep_metric_names && (aggregate || grouping.is_some()) {
        return Err(SyntaxError::custom(
            span,
            "keep_metric_names follows a function call, not an aggregation",
        ));
    }
    let kind = if matches!(k, Kw::Start | Kw::End)
        && args.is_empty()
        && grouping.is_none()
        && !limit
        && !keep_metric_names
    {
        ExprKind::DurationFn { func: k, args }
    } else {
        let call = ExprKind::Call(Box::new(Call {
            name,
            aggregation: match k {
                Kw::Aggregation(op) if dialect == Dialect::Promql => Some(op),
                _ => None,
            },
            args,
            grouping,
            limit,
        }));
        if keep_metric_names {
            ExprKind::KeepMetricNames(Box::new(Expr {
                kind: call,
                span: span_of(span),
            }))
        } else {
            call
        }
    };
    Ok(Expr {
        kind,
        span: span_of(span),
    })
}

/// Wraps `expr` in its prefix signs, innermost last.
fn apply_signs<'a>(signs: Vec<(bool, usize)>, mut expr: Expr<'a>) -> Expr<'a> {
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

/// Folds postfix modifiers onto their atom, in order. It never fails: a parse that
/// failed here, after reading a long chain, made every enclosing `@` expression read
/// that chain again (a 525-byte MetricsQL query took seconds). MetricsQL's limits on a
/// chain are checked afterwards, in `check.rs`, like Prometheus' rules.
pub(super) fn fold_postfix<'a>(lhs: Expr<'a>, posts: Vec<Postfix<'a>>) -> Expr<'a> {
    posts.into_iter().fold(lhs, apply_postfix)
}

/// One postfix modifier applied to the expression before it.
pub(super) fn apply_postfix<'a>(lhs: Expr<'a>, post: Postfix<'a>) -> Expr<'a> {
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
    }
}
/// An operand as read: prefix signs (negative?, byte offset) and the atom.
pub(super) type Operand<'a> = (Vec<(bool, usize)>, Expr<'a>);

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
pub(super) fn build_tree<'a>(
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
    apply_signs(signs, expr)
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
fn empty_call<'a>(func: Kw) -> impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone {
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
fn duration_term<'a>(
    number: impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone,
    duration: impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone,
    inner: impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone,
) -> impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone {
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
fn with_modifiers<'a>(
    op: impl Parser<'a, Tokens, BinOp, Extra<'a>> + Clone,
    modifiers: impl Parser<'a, Tokens, (bool, Option<VectorMatching<'a>>), Extra<'a>> + Clone,
) -> impl Parser<'a, Tokens, BinOpWithModifiers<'a>, Extra<'a>> + Clone {
    op.then(modifiers)
        .map(|(op, (return_bool, matching))| (op, return_bool, matching))
}

/// `term`, optionally preceded by a sign.
fn signed<'a>(
    term: impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone,
) -> impl Parser<'a, Tokens, Expr<'a>, Extra<'a>> + Clone {
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

fn unary<'a, 'p>(
    negative: bool,
    expr: Expr<'a>,
    e: &mut chumsky::input::MapExtra<'a, 'p, Tokens, Extra<'a>>,
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
fn plain_binary<'a, 'p>(
    lhs: Expr<'a>,
    op: BinOp,
    rhs: Expr<'a>,
    _: &mut chumsky::input::MapExtra<'a, 'p, Tokens, Extra<'a>>,
) -> Expr<'a> {
    join(lhs, (op, false, None), rhs)
}
