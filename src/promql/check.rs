//! Type checks after parsing: Prometheus rejects these queries, so we do too.
//!
//! The rules follow Prometheus' `checkAST`: what may be ranged or offset, operand
//! types of operators, function arity and argument types, and the selector rules
//! (at least one non-empty matcher, the metric name set once). MetricsQL converts
//! types implicitly and accepts any function, so it gets only what metricsql's parser
//! itself refuses (`bool` off comparisons, grouping on set operators) and the bounds of
//! a duration VictoriaMetrics can evaluate.

use super::ast::*;
use super::lexer::{AggOp, Kw};
use super::{numbers, Dialect, ParseError};

/// The type an expression evaluates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    Scalar,
    Vector,
    Matrix,
    String,
}

impl ValueType {
    fn name(self) -> &'static str {
        match self {
            ValueType::Scalar => "scalar",
            ValueType::Vector => "instant vector",
            ValueType::Matrix => "range vector",
            ValueType::String => "string",
        }
    }
}

use ValueType::{Matrix as M, Scalar as S, String as Str, Vector as V};

/// A PromQL function's signature: argument types, how many may be left off at the end
/// (or `usize::MAX` arguments for the repeatable last one), and its result.
struct Function {
    name: &'static str,
    args: &'static [ValueType],
    optional: usize,
    variadic: bool,
    returns: ValueType,
}

const fn f(name: &'static str, args: &'static [ValueType], returns: ValueType) -> Function {
    Function {
        name,
        args,
        optional: 0,
        variadic: false,
        returns,
    }
}

const fn opt(
    name: &'static str,
    args: &'static [ValueType],
    optional: usize,
    returns: ValueType,
) -> Function {
    Function {
        name,
        args,
        optional,
        variadic: false,
        returns,
    }
}

const fn var(name: &'static str, args: &'static [ValueType], returns: ValueType) -> Function {
    Function {
        name,
        args,
        optional: 0,
        variadic: true,
        returns,
    }
}

/// Prometheus 3.x functions, experimental ones included, plus `holt_winters` which
/// older dashboards still send and VictoriaMetrics still answers. Sorted by name (byte
/// order), for a binary search.
static FUNCTIONS: &[Function] = &[
    f("abs", &[V], V),
    f("absent", &[V], V),
    f("absent_over_time", &[M], V),
    f("acos", &[V], V),
    f("acosh", &[V], V),
    f("asin", &[V], V),
    f("asinh", &[V], V),
    f("atan", &[V], V),
    f("atanh", &[V], V),
    f("avg_over_time", &[M], V),
    f("ceil", &[V], V),
    f("changes", &[M], V),
    f("clamp", &[V, S, S], V),
    f("clamp_max", &[V, S], V),
    f("clamp_min", &[V, S], V),
    f("cos", &[V], V),
    f("cosh", &[V], V),
    f("count_over_time", &[M], V),
    opt("day_of_month", &[V], 1, V),
    opt("day_of_week", &[V], 1, V),
    opt("day_of_year", &[V], 1, V),
    opt("days_in_month", &[V], 1, V),
    f("deg", &[V], V),
    f("delta", &[M], V),
    f("deriv", &[M], V),
    f("double_exponential_smoothing", &[M, S, S], V),
    f("exp", &[V], V),
    f("first_over_time", &[M], V),
    f("floor", &[V], V),
    f("histogram_avg", &[V], V),
    f("histogram_count", &[V], V),
    f("histogram_fraction", &[S, S, V], V),
    f("histogram_quantile", &[S, V], V),
    f("histogram_stddev", &[V], V),
    f("histogram_stdvar", &[V], V),
    f("histogram_sum", &[V], V),
    f("holt_winters", &[M, S, S], V),
    opt("hour", &[V], 1, V),
    f("idelta", &[M], V),
    f("increase", &[M], V),
    opt("info", &[V, V], 1, V),
    f("irate", &[M], V),
    var("label_join", &[V, Str, Str, Str], V),
    f("label_replace", &[V, Str, Str, Str, Str], V),
    f("last_over_time", &[M], V),
    f("ln", &[V], V),
    f("log10", &[V], V),
    f("log2", &[V], V),
    f("mad_over_time", &[M], V),
    f("max_over_time", &[M], V),
    f("min_over_time", &[M], V),
    opt("minute", &[V], 1, V),
    opt("month", &[V], 1, V),
    f("pi", &[], S),
    f("predict_linear", &[M, S], V),
    f("present_over_time", &[M], V),
    f("quantile_over_time", &[S, M], V),
    f("rad", &[V], V),
    f("rate", &[M], V),
    f("resets", &[M], V),
    opt("round", &[V, S], 1, V),
    f("scalar", &[V], S),
    f("sgn", &[V], V),
    f("sin", &[V], V),
    f("sinh", &[V], V),
    f("sort", &[V], V),
    var("sort_by_label", &[V, Str], V),
    var("sort_by_label_desc", &[V, Str], V),
    f("sort_desc", &[V], V),
    f("sqrt", &[V], V),
    f("stddev_over_time", &[M], V),
    f("stdvar_over_time", &[M], V),
    f("sum_over_time", &[M], V),
    f("tan", &[V], V),
    f("tanh", &[V], V),
    f("time", &[], S),
    f("timestamp", &[V], V),
    f("ts_of_first_over_time", &[M], V),
    f("ts_of_last_over_time", &[M], V),
    f("ts_of_max_over_time", &[M], V),
    f("ts_of_min_over_time", &[M], V),
    f("vector", &[S], V),
    opt("year", &[V], 1, V),
];

/// Longest duration Prometheus represents: `time.Duration` is int64 nanoseconds.
const MAX_DURATION_SECONDS: f64 = i64::MAX as f64 / 1e9;

/// Argument types of the first eight arguments of a call; callers re-check the rare
/// arguments past those.
struct ArgTypes {
    first: [ValueType; 8],
}

impl std::ops::Index<usize> for ArgTypes {
    type Output = ValueType;
    fn index(&self, i: usize) -> &ValueType {
        &self.first[i.min(7)]
    }
}

struct Checker<'q> {
    src: &'q str,
    dialect: Dialect,
}

/// Checks the parsed tree of `src`.
pub fn check(src: &str, expr: &Expr<'_>, dialect: Dialect) -> Result<(), ParseError> {
    Checker { src, dialect }.check(expr).map(|_| ())
}

impl Checker<'_> {
    fn err(&self, span: &Span, message: impl Into<String>) -> ParseError {
        ParseError::at(self.src, span.start, message)
    }

    fn promql(&self) -> bool {
        self.dialect == Dialect::Promql
    }

    fn check(&self, expr: &Expr<'_>) -> Result<ValueType, ParseError> {
        match &expr.kind {
            ExprKind::Number(_) | ExprKind::Duration(_) => Ok(S),
            ExprKind::String(_) => Ok(Str),
            ExprKind::Selector(sel) => {
                self.check_selector(sel, &expr.span, false)?;
                Ok(V)
            }
            ExprKind::Paren(inner) => self.check(inner),
            ExprKind::KeepMetricNames(inner) => self.check(inner),
            ExprKind::Union(items) => {
                for item in items {
                    self.check(item)?;
                }
                Ok(V)
            }
            ExprKind::Unary { expr: inner, .. } => {
                let t = self.check(inner)?;
                if self.promql() && !matches!(t, S | V) {
                    return Err(self.err(
                        &expr.span,
                        format!(
                            "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
                            t.name()
                        ),
                    ));
                }
                Ok(t)
            }
            // One operator, the commonest case: no spine to keep.
            ExprKind::Binary(b) if !matches!(b.lhs.kind, ExprKind::Binary(_)) => {
                let lt = self.check(&b.lhs)?;
                let rt = self.check(&b.rhs)?;
                self.check_binary(b, lt, rt, &expr.span)
            }
            ExprKind::Binary(_) => {
                // Walk the left spine of `a + b + c ...` in a loop: a long chain makes a
                // tree as deep as it is long, and recursing down it could exhaust the stack.
                let mut spine = Vec::new();
                let mut leftmost = expr;
                while let ExprKind::Binary(b) = &leftmost.kind {
                    spine.push((b, &leftmost.span));
                    leftmost = &b.lhs;
                }
                let mut lt = self.check(leftmost)?;
                for (b, span) in spine.into_iter().rev() {
                    let rt = self.check(&b.rhs)?;
                    lt = self.check_binary(b, lt, rt, span)?;
                }
                Ok(lt)
            }
            ExprKind::Call(c) => self.check_call(c, &expr.span),
            ExprKind::Range(r) => {
                self.check_metricsql_chain(expr)?;
                self.check_range(r, &expr.span)
            }
            ExprKind::Offset {
                expr: inner,
                offset,
            } => {
                self.check_metricsql_chain(expr)?;
                self.check_duration(offset, true)?;
                self.check_modified(inner, &expr.span, true)
            }
            ExprKind::At { expr: inner, at } => {
                self.check_metricsql_chain(expr)?;
                if self.promql() {
                    self.check_at(at)?;
                } else {
                    // MetricsQL evaluates any expression after `@`.
                    self.check(at)?;
                }
                self.check_modified(inner, &expr.span, false)
            }
            ExprKind::DurationFn { func, args } => {
                for a in args {
                    self.check(a)?;
                }
                match func {
                    Kw::Start | Kw::End => Ok(S),
                    _ if self.promql() => Err(self.err(
                        &expr.span,
                        "duration functions are only allowed in ranges and offsets",
                    )),
                    _ => Ok(S),
                }
            }
        }
    }

    /// MetricsQL (metricsql's `parseRollupExpr`) takes, after an atom, one range, then at
    /// most one `offset` and one `@` in either order; parentheses start a new chain.
    /// `node` is a range, offset or `@`: what its chain holds below it must fit.
    fn check_metricsql_chain(&self, node: &Expr<'_>) -> Result<(), ParseError> {
        if self.promql() {
            return Ok(());
        }
        let same_kind = |a: &ExprKind<'_>, b: &ExprKind<'_>| {
            std::mem::discriminant(a) == std::mem::discriminant(b)
        };
        let mut below = modified(node);
        while let Some(e) = below {
            let fits = match (&node.kind, &e.kind) {
                (_, ExprKind::Range(_)) => !matches!(node.kind, ExprKind::Range(_)),
                (ExprKind::Range(_), ExprKind::Offset { .. } | ExprKind::At { .. }) => false,
                (kind, other) => !same_kind(kind, other),
            };
            if !fits {
                return Err(self.err(
                    &node.span,
                    "MetricsQL takes one range, then at most one offset and one @, per expression: put the expression in parentheses first",
                ));
            }
            below = modified(e);
        }
        Ok(())
    }

    fn check_selector(
        &self,
        sel: &Selector<'_>,
        span: &Span,
        bypass_empty_check: bool,
    ) -> Result<(), ParseError> {
        let matchers = sel.groups.iter().flat_map(|g| g.matchers.iter());
        // MetricsQL takes a second `__name__` matcher and ANDs it with the name.
        if let (Some((name, _)), true) = (&sel.name, self.promql()) {
            if let Some(m) = matchers
                .clone()
                .find(|m| m.label == "__name__" && !m.name_only)
            {
                return Err(self.err(
                    span,
                    format!(
                        "metric name must not be set twice: {:?} or {:?}",
                        name, m.value
                    ),
                ));
            }
        }
        if !self.promql() || bypass_empty_check || sel.name.is_some() {
            return Ok(());
        }
        if !matchers.clone().any(|m| !matches_empty(m)) {
            return Err(self.err(
                span,
                "vector selector must contain at least one non-empty matcher",
            ));
        }
        Ok(())
    }

    fn check_binary(
        &self,
        b: &Binary<'_>,
        lt: ValueType,
        rt: ValueType,
        span: &Span,
    ) -> Result<ValueType, ParseError> {
        let op = b.op.symbol();
        if b.return_bool && !b.op.is_comparison() {
            return Err(self.err(
                span,
                "bool modifier can only be used on comparison operators",
            ));
        }
        let grouped = b.matching.as_ref().is_some_and(|m| m.group.is_some());
        if grouped && b.op.is_set() {
            return Err(self.err(span, format!("no grouping allowed for {op:?} operation")));
        }
        if !self.promql() {
            return Ok(if lt == S && rt == S { S } else { V });
        }
        if matches!(lt, Str | M) || matches!(rt, Str | M) {
            return Err(self.err(
                span,
                "binary expression must contain only scalar and instant vector types",
            ));
        }
        if let Some(m) = &b.matching {
            if lt != V || rt != V {
                return Err(self.err(span, "vector matching only allowed between instant vectors"));
            }
            if let Some(group) = &m.group {
                if m.on {
                    if let Some(l) = group.labels.iter().find(|l| m.labels.contains(l)) {
                        return Err(self.err(
                            span,
                            format!("label {l:?} must not occur in ON and GROUP clause at once"),
                        ));
                    }
                }
            }
        }
        if b.op.is_set() && (lt == S || rt == S) {
            return Err(self.err(
                span,
                format!("set operator {op:?} not allowed in binary scalar expression"),
            ));
        }
        if lt == S && rt == S {
            if b.op.is_comparison() && !b.return_bool {
                return Err(self.err(span, "comparisons between scalars must use BOOL modifier"));
            }
            return Ok(S);
        }
        Ok(V)
    }

    fn check_call(&self, call: &Call<'_>, span: &Span) -> Result<ValueType, ParseError> {
        if let Some(op) = call.aggregation {
            return self.check_aggregation(call, op, span);
        }
        let arg_types = self.check_args(&call.args)?;
        if !self.promql() {
            return Ok(V);
        }
        if call.grouping.is_some() {
            return Err(self.err(
                span,
                format!(
                    "unexpected grouping on function {:?}: only aggregations take by/without",
                    call.name
                ),
            ));
        }
        let Ok(func) = FUNCTIONS
            .binary_search_by(|f| f.name.cmp(call.name))
            .map(|i| &FUNCTIONS[i])
        else {
            return Err(self.err(span, format!("unknown function with name {:?}", call.name)));
        };
        let n = call.args.len();
        let min = func.args.len() - func.optional;
        if func.variadic {
            if n < func.args.len() - 1 {
                return Err(self.err(
                    span,
                    format!(
                        "expected at least {} argument(s) in call to {:?}, got {n}",
                        func.args.len() - 1,
                        func.name
                    ),
                ));
            }
        } else if n < min || n > func.args.len() {
            let message = if func.optional == 0 {
                format!(
                    "expected {} argument(s) in call to {:?}, got {n}",
                    func.args.len(),
                    func.name
                )
            } else if n > func.args.len() {
                format!(
                    "expected at most {} argument(s) in call to {:?}, got {n}",
                    func.args.len(),
                    func.name
                )
            } else {
                format!(
                    "expected at least {min} argument(s) in call to {:?}, got {n}",
                    func.name
                )
            };
            return Err(self.err(span, message));
        }
        for (i, arg) in call.args.iter().enumerate() {
            let got = &if i < 8 {
                arg_types[i]
            } else {
                self.check(arg)?
            };
            let want = func.args[i.min(func.args.len() - 1)];
            if *got != want {
                return Err(self.err(
                    &arg.span,
                    format!(
                        "expected type {} in call to function {:?}, got {}",
                        want.name(),
                        func.name,
                        got.name()
                    ),
                ));
            }
        }
        if func.name == "info" {
            if let Some(labels_arg) = call.args.get(1) {
                match &unwrap_parens(labels_arg).kind {
                    ExprKind::Selector(sel) if sel.name.is_none() => {
                        self.check_selector(sel, &labels_arg.span, true)?;
                    }
                    ExprKind::Selector(_) => {
                        return Err(self.err(
                            &labels_arg.span,
                            "expected label selectors only, got vector selector instead",
                        ));
                    }
                    _ => return Err(self.err(&labels_arg.span, "expected label selectors only")),
                }
            }
        }
        Ok(func.returns)
    }

    /// Checks every argument; returns the types of the first few (calls rarely have more,
    /// and this runs once per call on the hot path, so it does not allocate).
    fn check_args(&self, args: &[Expr<'_>]) -> Result<ArgTypes, ParseError> {
        let mut types = ArgTypes { first: [S; 8] };
        for (i, a) in args.iter().enumerate() {
            let t = self.check(a)?;
            if let Some(slot) = types.first.get_mut(i) {
                *slot = t;
            }
        }
        Ok(types)
    }

    fn check_aggregation(
        &self,
        call: &Call<'_>,
        op: AggOp,
        span: &Span,
    ) -> Result<ValueType, ParseError> {
        let arg_types = self.check_args(&call.args)?;
        if !self.promql() {
            return Ok(V);
        }
        let param = match op {
            AggOp::Topk | AggOp::Bottomk | AggOp::Quantile | AggOp::Limitk | AggOp::LimitRatio => {
                Some(S)
            }
            AggOp::CountValues => Some(Str),
            _ => None,
        };
        if call.args.is_empty() {
            return Err(self.err(span, "no arguments for aggregate expression provided"));
        }
        let expected = if param.is_some() { 2 } else { 1 };
        if call.args.len() != expected {
            return Err(self.err(
                span,
                format!(
                    "wrong number of arguments for aggregate expression provided, expected {expected}, got {}",
                    call.args.len()
                ),
            ));
        }
        if let Some(want) = param {
            if arg_types[0] != want {
                return Err(self.err(
                    &call.args[0].span,
                    format!(
                        "expected type {} in aggregation parameter, got {}",
                        want.name(),
                        arg_types[0].name()
                    ),
                ));
            }
        }
        let (last, last_type) = (&call.args[expected - 1], arg_types[expected - 1]);
        if last_type != V {
            return Err(self.err(
                &last.span,
                format!(
                    "expected type instant vector in aggregation expression, got {}",
                    last_type.name()
                ),
            ));
        }
        Ok(V)
    }

    fn check_range(&self, r: &RangeExpr<'_>, span: &Span) -> Result<ValueType, ParseError> {
        let inner = self.check(&r.expr)?;
        let range = match &r.range {
            Some(range) => self.check_duration(range, true)?,
            None => None,
        };
        if let Some(Some(step)) = &r.subquery_step {
            if self.check_duration(step, true)?.is_some_and(|s| s < 0.0) {
                return Err(self.err(&step.span, "step must be positive"));
            }
        }
        if let (Some(d), Some(range)) = (range, &r.range) {
            if d <= 0.0 && self.promql() {
                return Err(self.err(&range.span, "duration must be greater than 0"));
            }
        }
        if !self.promql() {
            return Ok(M);
        }
        match &r.subquery_step {
            None => {
                match &r.expr.kind {
                    ExprKind::Selector(_) => {}
                    ExprKind::Offset { expr, .. } if is_selector(expr) => {
                        return Err(self.err(span, "no offset modifiers allowed before range"))
                    }
                    ExprKind::At { expr, .. } if is_selector(expr) => {
                        return Err(self.err(span, "no @ modifiers allowed before range"))
                    }
                    _ => return Err(self.err(span, "ranges only allowed for vector selectors")),
                }
                if r.smoothing.is_some() && !matches!(r.expr.kind, ExprKind::Selector(_)) {
                    return Err(self.err(span, "ranges only allowed for vector selectors"));
                }
            }
            Some(_) => {
                if r.smoothing.is_some() {
                    return Err(self.err(
                        span,
                        "anchored and smoothed modifiers apply only to range selectors",
                    ));
                }
                if inner != V {
                    return Err(self.err(
                        span,
                        format!(
                            "subquery is only allowed on instant vector, got {} instead",
                            matrix_name(inner)
                        ),
                    ));
                }
            }
        }
        Ok(M)
    }

    /// `offset` and `@` apply to selectors, range selectors and subqueries, once each.
    fn check_modified(
        &self,
        inner: &Expr<'_>,
        span: &Span,
        is_offset: bool,
    ) -> Result<ValueType, ParseError> {
        let t = self.check(inner)?;
        if !self.promql() {
            return Ok(t);
        }
        let mut target = inner;
        loop {
            match &target.kind {
                ExprKind::Offset { expr, .. } => {
                    if is_offset {
                        return Err(self.err(span, "offset may not be set multiple times"));
                    }
                    target = expr;
                }
                ExprKind::At { expr, .. } => {
                    if !is_offset {
                        return Err(self.err(span, "@ <timestamp> may not be set multiple times"));
                    }
                    target = expr;
                }
                ExprKind::Selector(_) | ExprKind::Range(_) => return Ok(t),
                _ => {
                    let what = if is_offset { "offset" } else { "@" };
                    return Err(self.err(
                        span,
                        format!(
                            "{what} modifier must be preceded by an instant vector selector or range vector selector or a subquery"
                        ),
                    ));
                }
            }
        }
    }

    fn check_at(&self, at: &Expr<'_>) -> Result<(), ParseError> {
        if let ExprKind::DurationFn {
            func: Kw::Start | Kw::End,
            ..
        } = at.kind
        {
            return Ok(());
        }
        // Timestamps are bounded in milliseconds below, not as durations.
        let value = self.check_duration(at, false)?.unwrap_or(0.0);
        let millis = value * 1000.0;
        if !millis.is_finite() || millis >= i64::MAX as f64 || millis < i64::MIN as f64 {
            let text = &self.src[at.span.clone()];
            return Err(self.err(
                &at.span,
                format!("timestamp out of bounds for @ modifier: {}", text.trim()),
            ));
        }
        Ok(())
    }

    /// Evaluates a duration expression, in seconds, or `None` when it depends on
    /// `step()`/`range()`. Division by a constant zero is an error either way.
    ///
    /// `is_duration` is set for ranges, steps and offsets (not `@`): there a number must
    /// be plain decimal seconds, the only spelling VictoriaMetrics evaluates as a
    /// duration (`x[0x10]` and `x[1Ki]` parse, then panic the process when run), and
    /// Prometheus bounds the value. The left spine of `a + b + c ...` is walked in a
    /// loop, as in `check`.
    fn check_duration(&self, e: &Expr<'_>, is_duration: bool) -> Result<Option<f64>, ParseError> {
        let mut spine = Vec::new();
        let mut leftmost = e;
        while let ExprKind::Binary(b) = &leftmost.kind {
            spine.push((b, leftmost));
            leftmost = &b.lhs;
        }
        let mut value = self.duration_term(leftmost, is_duration)?;
        for (b, node) in spine.into_iter().rev() {
            let r = self.check_duration(&b.rhs, is_duration)?;
            if r == Some(0.0) && matches!(b.op, BinOp::Div | BinOp::Mod) {
                let what = if b.op == BinOp::Div {
                    "division by zero"
                } else {
                    "modulo by zero"
                };
                return Err(self.err(&node.span, what));
            }
            value = match (value, r) {
                (Some(l), Some(r)) => Some(match b.op {
                    BinOp::Add => l + r,
                    BinOp::Sub => l - r,
                    BinOp::Mul => l * r,
                    BinOp::Div => l / r,
                    BinOp::Mod => l % r,
                    _ => l.powf(r),
                }),
                _ => None,
            };
            self.duration_in_range(node, value, is_duration)?;
        }
        Ok(value)
    }

    fn duration_term(&self, e: &Expr<'_>, is_duration: bool) -> Result<Option<f64>, ParseError> {
        let value = match &e.kind {
            ExprKind::Number(v) => {
                let text = &self.src[e.span.clone()];
                if is_duration && !numbers::is_plain_decimal(text) {
                    return Err(self.err(
                        &e.span,
                        format!(
                            "a duration given as a number must be decimal seconds, not {text:?}: VictoriaMetrics cannot evaluate it"
                        ),
                    ));
                }
                Some(*v)
            }
            ExprKind::Duration(v) => Some(*v),
            ExprKind::Paren(inner) => self.check_duration(inner, is_duration)?,
            ExprKind::Unary { negative, expr } => self
                .check_duration(expr, is_duration)?
                .map(|v| if *negative { -v } else { v }),
            ExprKind::DurationFn { func, args } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.check_duration(a, is_duration)?);
                }
                match (func, values.as_slice()) {
                    (Kw::MinOf, [Some(a), Some(b)]) => Some(a.min(*b)),
                    (Kw::MaxOf, [Some(a), Some(b)]) => Some(a.max(*b)),
                    _ => None,
                }
            }
            _ => return Err(self.err(&e.span, "expected a number, duration, step(), or range()")),
        };
        self.duration_in_range(e, value, is_duration)?;
        Ok(value)
    }

    fn duration_in_range(
        &self,
        e: &Expr<'_>,
        value: Option<f64>,
        is_duration: bool,
    ) -> Result<(), ParseError> {
        // Prometheus holds durations as int64 nanoseconds; metricsql as int64
        // milliseconds, and panics evaluating a longer one (`x[99999999999999999m]`).
        let max = match self.dialect {
            Dialect::Promql => MAX_DURATION_SECONDS,
            Dialect::Metricsql => i64::MAX as f64 / 1e3,
        };
        if let Some(v) = value {
            if (v.abs() > max || v.is_nan()) && is_duration {
                return Err(self.err(&e.span, "duration out of range"));
            }
        }
        Ok(())
    }
}

/// What a range, offset or `@` applies to.
fn modified<'e, 's>(e: &'e Expr<'s>) -> Option<&'e Expr<'s>> {
    match &e.kind {
        ExprKind::Range(r) => Some(&r.expr),
        ExprKind::Offset { expr, .. } | ExprKind::At { expr, .. } => Some(expr),
        _ => None,
    }
}

fn matrix_name(t: ValueType) -> &'static str {
    match t {
        M => "matrix",
        other => other.name(),
    }
}

fn is_selector(e: &Expr<'_>) -> bool {
    match &e.kind {
        ExprKind::Selector(_) => true,
        ExprKind::Offset { expr, .. } | ExprKind::At { expr, .. } => is_selector(expr),
        _ => false,
    }
}

fn unwrap_parens<'e, 's>(e: &'e Expr<'s>) -> &'e Expr<'s> {
    match &e.kind {
        ExprKind::Paren(inner) => unwrap_parens(inner),
        _ => e,
    }
}

/// Whether a matcher accepts the empty string, as Prometheus asks of `{x=""}`.
fn matches_empty(m: &Matcher<'_>) -> bool {
    match m.op {
        MatchOp::Equal => m.value.is_empty(),
        MatchOp::NotEqual => !m.value.is_empty(),
        MatchOp::Regex => regex_matches_empty(&m.value).unwrap_or(false),
        MatchOp::NotRegex => !regex_matches_empty(&m.value).unwrap_or(true),
    }
}

/// Whether an RE2 pattern (anchored, as Prometheus anchors it) matches "".
///
/// Only the nullability of the pattern matters, so this walks its structure without
/// compiling it. `None` means the pattern was not understood; callers then assume
/// the answer that accepts the query and leave the verdict to the backend's engine.
fn regex_matches_empty(pattern: &str) -> Option<bool> {
    let bytes = pattern.as_bytes();
    let mut pos = 0;
    let nullable = regex_alternation(bytes, &mut pos, 0)?;
    (pos == bytes.len()).then_some(nullable)
}

fn regex_alternation(b: &[u8], pos: &mut usize, depth: usize) -> Option<bool> {
    if depth > 32 {
        return None;
    }
    let mut any_branch = regex_sequence(b, pos, depth)?;
    while *pos < b.len() && b[*pos] == b'|' {
        *pos += 1;
        any_branch |= regex_sequence(b, pos, depth)?;
    }
    Some(any_branch)
}

fn regex_sequence(b: &[u8], pos: &mut usize, depth: usize) -> Option<bool> {
    let mut all = true;
    while *pos < b.len() && b[*pos] != b'|' && b[*pos] != b')' {
        let atom_nullable = match b[*pos] {
            b'(' => {
                *pos += 1;
                if b.get(*pos) == Some(&b'?') {
                    // Flags or a non-capturing group: skip to ':' or ')'.
                    while *pos < b.len() && b[*pos] != b':' && b[*pos] != b')' {
                        *pos += 1;
                    }
                    if b.get(*pos) == Some(&b')') {
                        *pos += 1;
                        continue;
                    }
                    *pos += 1;
                }
                let inner = regex_alternation(b, pos, depth + 1)?;
                if b.get(*pos) != Some(&b')') {
                    return None;
                }
                *pos += 1;
                inner
            }
            b'[' => {
                *pos += 1;
                if b.get(*pos) == Some(&b'^') {
                    *pos += 1;
                }
                if b.get(*pos) == Some(&b']') {
                    *pos += 1;
                }
                while *pos < b.len() && b[*pos] != b']' {
                    if b[*pos] == b'\\' {
                        *pos += 1;
                    }
                    *pos += 1;
                }
                if *pos >= b.len() {
                    return None;
                }
                *pos += 1;
                false
            }
            b'\\' => {
                let c = *b.get(*pos + 1)?;
                *pos += 2;
                // \b \B \A \z are zero-width; everything else consumes a character.
                matches!(c, b'b' | b'B' | b'A' | b'z')
            }
            b'^' | b'$' => {
                *pos += 1;
                true
            }
            b'*' | b'+' | b'?' | b'{' => return None,
            _ => {
                // One literal character, which may be several UTF-8 bytes.
                *pos += 1;
                while *pos < b.len() && (b[*pos] & 0xC0) == 0x80 {
                    *pos += 1;
                }
                false
            }
        };
        let mut nullable = atom_nullable;
        // Quantifiers, possibly lazy.
        while *pos < b.len() {
            match b[*pos] {
                b'*' | b'?' => {
                    nullable = true;
                    *pos += 1;
                }
                b'+' => *pos += 1,
                b'{' => {
                    let close = b[*pos..].iter().position(|&c| c == b'}')? + *pos;
                    let body = std::str::from_utf8(&b[*pos + 1..close]).ok()?;
                    let min = body.split(',').next()?.trim();
                    if min.parse::<u32>().ok()? == 0 {
                        nullable = true;
                    }
                    *pos = close + 1;
                }
                _ => break,
            }
            if b.get(*pos) == Some(&b'?') {
                *pos += 1;
            }
        }
        all &= nullable;
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::{regex_matches_empty, FUNCTIONS};

    #[test]
    fn functions_are_sorted_for_the_binary_search() {
        for pair in FUNCTIONS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn regex_nullability() {
        for (re, empty) in [
            (".*", true),
            (".+", false),
            ("", true),
            ("a|", true),
            ("(a|b)*", true),
            ("a?b?", true),
            ("a{0,3}", true),
            ("a{1,3}", false),
            ("[a-z]*", true),
            ("foo", false),
            ("(?i)foo", false),
            ("(?i).*", true),
            ("^$", true),
        ] {
            assert_eq!(regex_matches_empty(re), Some(empty), "{re}");
        }
    }
}
