//! The spanned AST. Every node carries the byte range of the input it came from.
//!
//! Names and string values borrow from the input when they hold no escapes, so a
//! parse allocates little beyond the tree itself.

use super::lexer::{AggOp, Kw};
use std::borrow::Cow;

/// Byte range into the parsed input.
pub type Span = std::ops::Range<usize>;

/// An expression node.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr<'s> {
    pub kind: ExprKind<'s>,
    pub span: Span,
}

/// What an expression is.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind<'s> {
    /// A number literal (`1`, `0x1F`, `Inf`, MetricsQL `2Ki`).
    Number(f64),
    /// A duration literal used as a value, in seconds (`5m`).
    Duration(f64),
    /// A string literal, decoded.
    String(Cow<'s, str>),
    /// A series selector: `name`, `name{...}` or `{...}`.
    Selector(Box<Selector<'s>>),
    /// `( expr )`
    Paren(Box<Expr<'s>>),
    /// `-expr` or `+expr`
    Unary { negative: bool, expr: Box<Expr<'s>> },
    /// `lhs op rhs` with its modifiers.
    Binary(Box<Binary<'s>>),
    /// A function call or aggregation.
    Call(Box<Call<'s>>),
    /// `expr[range]` (a matrix selector) or `expr[range:step]` (a subquery).
    Range(Box<RangeExpr<'s>>),
    /// `expr offset duration`
    Offset {
        expr: Box<Expr<'s>>,
        offset: Box<Expr<'s>>,
    },
    /// `expr @ timestamp`, `expr @ start()`, `expr @ end()`
    At {
        expr: Box<Expr<'s>>,
        at: Box<Expr<'s>>,
    },
    /// Duration-expression functions: `step()`, `range()`, `min_of(a, b)`, `max_of(a, b)`,
    /// and the `start()`/`end()` preprocessors.
    DurationFn { func: Kw, args: Vec<Expr<'s>> },
    /// MetricsQL `func(...) keep_metric_names`.
    KeepMetricNames(Box<Expr<'s>>),
    /// MetricsQL `(a, b, ...)`: the union of its elements' series (also `()`).
    Union(Vec<Expr<'s>>),
}

/// A series selector: the thing that must carry the tenant matcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector<'s> {
    /// The bare metric name before the braces, if any.
    pub name: Option<(Cow<'s, str>, Span)>,
    /// The span of `{ ... }`, braces included, if present.
    pub braces: Option<Span>,
    /// The matcher groups; PromQL has at most one, MetricsQL `or` makes several.
    pub groups: Vec<MatcherGroup<'s>>,
}

/// Matchers that AND together; groups of one selector OR together (MetricsQL).
#[derive(Debug, Clone, PartialEq)]
pub struct MatcherGroup<'s> {
    pub matchers: Vec<Matcher<'s>>,
    /// Where a new matcher goes: before `}` for the last group, else after the group's last token.
    pub insert_at: usize,
    /// The group's last token is a comma, so a new matcher needs none.
    pub ends_with_comma: bool,
}

/// One label matcher, `label op "value"`, or a quoted metric name standing alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher<'s> {
    pub label: Cow<'s, str>,
    pub op: MatchOp,
    pub value: Cow<'s, str>,
    /// The matcher's own text.
    pub span: Span,
    /// The comma right after it, if any.
    pub comma: Option<Span>,
    /// `{"metric.name"}`: a name written as a lone quoted string.
    pub name_only: bool,
}

/// Label matching operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A binary operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Binary<'s> {
    pub op: BinOp,
    pub lhs: Expr<'s>,
    pub rhs: Expr<'s>,
    /// `bool` modifier on a comparison.
    pub return_bool: bool,
    pub matching: Option<VectorMatching<'s>>,
}

/// Binary operators, PromQL and MetricsQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eql,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    And,
    Or,
    Unless,
    Default,
    If,
    Ifnot,
}

impl BinOp {
    /// Comparison operators, which take the `bool` modifier.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eql | BinOp::Neq | BinOp::Lt | BinOp::Lte | BinOp::Gt | BinOp::Gte
        )
    }

    /// Set operators, defined only between instant vectors.
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Atan2 => "atan2",
            BinOp::Eql => "==",
            BinOp::Neq => "!=",
            BinOp::Lt => "<",
            BinOp::Lte => "<=",
            BinOp::Gt => ">",
            BinOp::Gte => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
            BinOp::Default => "default",
            BinOp::If => "if",
            BinOp::Ifnot => "ifnot",
        }
    }
}

/// `on(...)`/`ignoring(...)` and `group_left(...)`/`group_right(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorMatching<'s> {
    /// `on` when true, `ignoring` when false.
    pub on: bool,
    pub labels: Vec<Cow<'s, str>>,
    pub group: Option<GroupModifier<'s>>,
}

/// `group_left(labels)` or `group_right(labels)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupModifier<'s> {
    pub left: bool,
    pub labels: Vec<Cow<'s, str>>,
}

/// A function call or an aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct Call<'s> {
    /// The name as written.
    pub name: &'s str,
    /// Set when the name is a PromQL aggregation operator (matched case-insensitively).
    pub aggregation: Option<AggOp>,
    pub args: Vec<Expr<'s>>,
    /// `by (...)` / `without (...)`, before or after the arguments.
    pub grouping: Option<Grouping<'s>>,
    /// MetricsQL `limit N` after an aggregation.
    pub limit: bool,
}

/// `by (labels)` or `without (labels)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping<'s> {
    pub without: bool,
    pub labels: Vec<Cow<'s, str>>,
}

/// `expr[range]`, `expr[range:step]`, `expr[range:]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeExpr<'s> {
    pub expr: Expr<'s>,
    /// The range; MetricsQL may leave it out (`x[:5m]`).
    pub range: Option<Expr<'s>>,
    /// `None` for a matrix selector; `Some(step)` for a subquery, with an optional step.
    pub subquery_step: Option<Option<Expr<'s>>>,
    /// Prometheus 3 `anchored` / `smoothed` after a range.
    pub smoothing: Option<Kw>,
}

/// A walk's stack: its first `N` entries live in an array (no allocation for a tree of
/// ordinary size), the rest in a vector. `filler` only initialises the array.
struct WalkStack<T: Copy, const N: usize> {
    inline: [T; N],
    spill: Vec<T>,
    len: usize,
}

impl<T: Copy, const N: usize> WalkStack<T, N> {
    fn new(filler: T) -> Self {
        WalkStack {
            inline: [filler; N],
            spill: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = item,
            None => self.spill.push(item),
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<T> {
        self.len = self.len.checked_sub(1)?;
        match self.inline.get(self.len) {
            Some(item) => Some(*item),
            None => self.spill.pop(),
        }
    }

    fn get(&self, i: usize) -> T {
        match self.inline.get(i) {
            Some(item) => *item,
            None => self.spill[i - N],
        }
    }

    fn set(&mut self, i: usize, item: T) {
        match self.inline.get_mut(i) {
            Some(slot) => *slot = item,
            None => self.spill[i - N] = item,
        }
    }

    /// Reverses the entries from `first` to the top.
    fn reverse_from(&mut self, first: usize) {
        let (mut i, mut j) = (first, self.len);
        while i + 1 < j {
            j -= 1;
            let (a, b) = (self.get(i), self.get(j));
            self.set(i, b);
            self.set(j, a);
            i += 1;
        }
    }
}

/// Entries a walk keeps without allocating.
const WALK_INLINE: usize = 32;

/// Calls `$visit` on each child of an expression kind, in source order: the one place
/// that says what a node holds. `children!(&kind, f)` visits `&Expr`s;
/// `children!(&mut kind, mut f)` visits `&mut Expr`s.
macro_rules! children {
    ($kind:expr, $($m:ident)? $visit:expr) => {{
        let mut visit = $visit;
        match $kind {
            ExprKind::Number(_)
            | ExprKind::Duration(_)
            | ExprKind::String(_)
            | ExprKind::Selector(_) => {}
            ExprKind::Paren(inner)
            | ExprKind::Unary { expr: inner, .. }
            | ExprKind::KeepMetricNames(inner) => visit(& $($m)? **inner),
            ExprKind::Binary(b) => {
                visit(& $($m)? b.lhs);
                visit(& $($m)? b.rhs);
            }
            ExprKind::Call(c) => {
                for arg in & $($m)? c.args {
                    visit(arg);
                }
            }
            ExprKind::Union(items) | ExprKind::DurationFn { args: items, .. } => {
                for item in items {
                    visit(item);
                }
            }
            ExprKind::Range(r) => {
                visit(& $($m)? r.expr);
                if let Some(range) = & $($m)? r.range {
                    visit(range);
                }
                if let Some(Some(step)) = & $($m)? r.subquery_step {
                    visit(step);
                }
            }
            ExprKind::Offset { expr, offset: other } | ExprKind::At { expr, at: other } => {
                visit(& $($m)? **expr);
                visit(& $($m)? **other);
            }
        }
    }};
}

impl<'s> Expr<'s> {
    /// Calls `visit` on every series selector in the tree, in source order.
    ///
    /// Iterative, with its own stack: operator chains make trees far deeper than
    /// their nesting, and a recursive walk could exhaust the wasm VM's stack.
    pub fn for_each_selector<'a>(&'a self, visit: &mut impl FnMut(&'a Selector<'s>)) {
        self.for_each_node(&mut |e| {
            if let ExprKind::Selector(sel) = &e.kind {
                visit(sel);
            }
        });
    }

    /// Calls `visit` on every node of the tree (this one included), in source order.
    ///
    /// Iterative for the same reason as [`Expr::for_each_selector`].
    pub fn for_each_node<'a>(&'a self, visit: &mut impl FnMut(&'a Expr<'s>)) {
        let mut pending: WalkStack<&'a Expr<'s>, WALK_INLINE> = WalkStack::new(self);
        pending.push(self);
        while let Some(e) = pending.pop() {
            visit(e);
            // Children are pushed in reverse so they pop in source order.
            let first = pending.len;
            children!(&e.kind, |child| pending.push(child));
            if pending.len > first + 1 {
                pending.reverse_from(first);
            }
        }
    }

    /// Whether this node holds other nodes.
    fn holds_nodes(&self) -> bool {
        !matches!(
            self.kind,
            ExprKind::Number(_)
                | ExprKind::Duration(_)
                | ExprKind::String(_)
                | ExprKind::Selector(_)
        )
    }
}

impl<'s> Expr<'s> {
    /// How deep the recursive walks over this tree go, and where the deepest node
    /// starts: one level per node that holds other nodes, except the left operand of a
    /// binary operator that is itself one (chains are walked in a loop). Computed with a
    /// heap stack, so it is safe on a tree of any depth.
    pub fn nesting_depth<'a>(&'a self) -> (usize, usize) {
        let mut deepest = (0, self.span.start);
        let mut pending: WalkStack<(&'a Expr<'s>, usize), WALK_INLINE> = WalkStack::new((self, 0));
        pending.push((self, usize::from(self.holds_nodes())));
        while let Some((e, level)) = pending.pop() {
            if level > deepest.0 {
                deepest = (level, e.span.start);
            }
            let binary_lhs = match &e.kind {
                ExprKind::Binary(b) => Some(&b.lhs),
                _ => None,
            };
            children!(&e.kind, |child: &'a Expr<'s>| {
                let chained = binary_lhs.is_some_and(|lhs| std::ptr::eq(lhs, child))
                    && matches!(child.kind, ExprKind::Binary(_));
                let child_level = if child.holds_nodes() && !chained {
                    level + 1
                } else {
                    level
                };
                pending.push((child, child_level));
            });
        }
        deepest
    }
}

impl Drop for Expr<'_> {
    /// Dismantles the tree with a heap stack instead of the call stack: the derived drop
    /// recurses once per level, and a tree may be deeper than the wasm VM's stack allows
    /// before the depth cap refuses it (operator chains, postfix chains, a tree
    /// abandoned half-built by a failed parse).
    fn drop(&mut self) {
        let mut pending = Vec::new();
        take_children(&mut self.kind, &mut pending);
        while let Some(mut kind) = pending.pop() {
            take_children(&mut kind, &mut pending);
            // `kind` drops here, its children already replaced by leaves.
        }
    }
}

/// Moves every child's kind that has children of its own into `out`, leaving a leaf.
fn take_children<'s>(kind: &mut ExprKind<'s>, out: &mut Vec<ExprKind<'s>>) {
    children!(&mut *kind, mut |child: &mut Expr<'s>| {
        if child.holds_nodes() {
            out.push(std::mem::replace(&mut child.kind, ExprKind::Number(0.0)));
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::promql::{parse, Dialect};

    #[test]
    fn walks_keep_source_order_past_their_inline_stack() {
        // A union of 100 selectors: 100 entries on the walk's stack at once.
        let names: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        let query = format!("({})", names.join(", "));
        let expr = parse(&query, Dialect::Metricsql).unwrap();
        let mut seen = Vec::new();
        expr.for_each_selector(&mut |sel| {
            seen.push(sel.name.as_ref().unwrap().0.to_string());
        });
        assert_eq!(seen, names);
        assert_eq!(expr.nesting_depth().0, 1);
    }
}
