//! Helpers shared by the integration tests: reading `../shared/corpus` in place,
//! printing counts past libtest's output capture, and the `promql-parser` oracle
//! (walk an AST, check and strip the tenant matcher of every selector).

#![allow(dead_code)] // each test crate uses a different subset

pub mod metricsql;

use promql_parser::parser::{Expr, VectorSelector};
use std::io::Write;
use std::path::PathBuf;

/// `../shared/corpus` next to the checkout, read in place (never copied); a checkout
/// elsewhere (e.g. `git clone . /tmp/x`) points `PROMQL_CORPUS_DIR` at it instead.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("PROMQL_CORPUS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"),
    }
}

/// One line of `promql_corpus.jsonl`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CorpusRecord {
    pub expr: String,
    pub source: String,
    pub kind: String,
}

/// Every record of `promql_corpus.jsonl`, with its 1-based line number.
pub fn load_corpus() -> Vec<(usize, CorpusRecord)> {
    let path = corpus_dir().join("promql_corpus.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let records: Vec<(usize, CorpusRecord)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let record = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            (i + 1, record)
        })
        .collect();
    assert!(
        records.len() > 10_000,
        "corpus looks truncated: {} records",
        records.len()
    );
    records
}

/// A MetricsQL `WITH (...)` template: the first token, after blanks and `#` comment
/// lines, is the keyword `WITH` followed by `(`.
pub fn is_with_template(expr: &str) -> bool {
    let mut rest = expr.trim_start();
    while let Some(comment) = rest.strip_prefix('#') {
        rest = comment
            .split_once('\n')
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    rest.get(..4)
        .is_some_and(|keyword| keyword.eq_ignore_ascii_case("with"))
        && rest[4..].trim_start().starts_with('(')
}

/// The one record the corpus README names as invalid in every dialect: ceph's radosgw
/// dashboard with an unrendered jsonnet placeholder `{%(matchers)s}`.
pub fn is_invalid_ceph_record(record: &CorpusRecord) -> bool {
    record.expr.contains("{%(matchers)s}")
        && record.source.contains("ceph")
        && record.source.contains("radosgw")
}

/// Prints a line to the real stderr, bypassing libtest's capture, so that counts show
/// up in `make test` without `--nocapture`.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Visits every vector selector, including the one inside each matrix selector.
pub fn for_each_selector_mut(expr: &mut Expr, f: &mut dyn FnMut(&mut VectorSelector)) {
    match expr {
        Expr::Aggregate(a) => {
            for_each_selector_mut(&mut a.expr, f);
            if let Some(param) = &mut a.param {
                for_each_selector_mut(param, f);
            }
        }
        Expr::Unary(u) => for_each_selector_mut(&mut u.expr, f),
        Expr::Binary(b) => {
            for_each_selector_mut(&mut b.lhs, f);
            for_each_selector_mut(&mut b.rhs, f);
        }
        Expr::Paren(p) => for_each_selector_mut(&mut p.expr, f),
        Expr::Subquery(s) => for_each_selector_mut(&mut s.expr, f),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&mut ms.vs),
        Expr::Call(c) => {
            for arg in &mut c.args.args {
                for_each_selector_mut(arg, f);
            }
        }
        Expr::Extension(_) => panic!("promql-parser never produces Extension nodes"),
    }
}

/// The tenant matcher as promql-parser should read it back from our output.
#[derive(Debug, Clone)]
pub struct ExpectedMatcher {
    pub label: String,
    /// `=` for one value, `=~` for several.
    pub op: &'static str,
    /// The unescaped string value.
    pub value: String,
    /// The tenant values, as given.
    pub values: Vec<String>,
}

impl ExpectedMatcher {
    /// Derived independently of the engine: one value → `=`, several → `=~` with each
    /// value escaped like Go's `regexp.QuoteMeta` and joined with `|` (duplicates
    /// dropped, order kept, as a tenant listed twice is still one tenant).
    pub fn new<S: AsRef<str>>(label: &str, values: &[S]) -> Self {
        let mut unique: Vec<&str> = Vec::new();
        for v in values {
            if !unique.contains(&v.as_ref()) {
                unique.push(v.as_ref());
            }
        }
        match unique.as_slice() {
            [one] => ExpectedMatcher {
                label: label.into(),
                op: "=",
                value: (*one).into(),
                values: vec![(*one).into()],
            },
            many => ExpectedMatcher {
                label: label.into(),
                op: "=~",
                value: many
                    .iter()
                    .map(|v| quote_meta(v))
                    .collect::<Vec<_>>()
                    .join("|"),
                values: many.iter().map(|v| (*v).into()).collect(),
            },
        }
    }

    /// Whether `m` is exactly this matcher (label, operator and unescaped value).
    pub fn is(&self, m: &promql_parser::label::Matcher) -> bool {
        m.name == self.label && m.op.to_string() == self.op && m.value == self.value
    }
}

impl ExpectedMatcher {
    /// A user matcher that selects exactly one of the tenant's own values: `="v"` or
    /// `=~"QuoteMeta(v)"`. The engine's `reject` lets these through (narrowing among
    /// one's own tenants); the issue's wording ("differs from ours") would refuse them.
    /// The proptest accepts both answers for these; `inject_rules` pins the wording.
    pub fn is_own_value(&self, m: &promql_parser::label::Matcher) -> bool {
        m.name == self.label
            && match m.op.to_string().as_str() {
                "=" => self.values.contains(&m.value),
                "=~" => self.values.iter().any(|v| quote_meta(v) == m.value),
                _ => false,
            }
    }
}

/// Go's `regexp.QuoteMeta`: a backslash before each of `\.+*?()|[]{}^$`.
pub fn quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The oracle. `output` is our rewrite of `original`; both are parsed by promql-parser.
/// Every selector of the output must end with the tenant matcher (in each or-branch);
/// removing exactly that one matcher from each must give the original's AST.
/// Returns the number of tenant matchers found (one per selector, or per or-branch).
pub fn check_rewrite(
    original: &str,
    output: &str,
    tenant: &ExpectedMatcher,
) -> Result<usize, String> {
    let original_ast = promql_parser::parser::parse(original)
        .map_err(|e| format!("promql-parser rejects the original: {e}"))?;
    check_output(original_ast, output, tenant)
}

/// Like [`check_rewrite`], against an already parsed (and possibly transformed, see
/// [`drop_label_matchers`]) original AST.
pub fn check_output(
    original_ast: Expr,
    output: &str,
    tenant: &ExpectedMatcher,
) -> Result<usize, String> {
    let mut output_ast = promql_parser::parser::parse(output)
        .map_err(|e| format!("promql-parser rejects our output: {e}"))?;
    let mut found = 0;
    let mut problems = Vec::new();
    for_each_selector_mut(&mut output_ast, &mut |vs| {
        let shown = vs.to_string();
        let m = &mut vs.matchers;
        let groups: Vec<&mut Vec<promql_parser::label::Matcher>> = if m.or_matchers.is_empty() {
            vec![&mut m.matchers]
        } else {
            if !m.matchers.is_empty() {
                problems.push(format!(
                    "selector {shown}: matchers outside the or-branches"
                ));
            }
            m.or_matchers.iter_mut().collect()
        };
        for group in groups {
            match group.last() {
                Some(last) if tenant.is(last) => {
                    group.pop();
                    found += 1;
                }
                _ => problems.push(format!(
                    "selector {shown}: a branch does not end with the tenant matcher"
                )),
            }
        }
    });
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if output_ast != original_ast {
        let (want, got) = (original_ast.to_string(), output_ast.to_string());
        return Err(if want != got {
            format!("removing the tenant matcher does not give the original AST:\n  original: {want}\n  stripped: {got}")
        } else {
            format!("removing the tenant matcher does not give the original AST:\n  original: {original_ast:?}\n  stripped: {output_ast:?}")
        });
    }
    Ok(found)
}

/// The issue's output rule: the output equals the input byte for byte except for the
/// inserted matcher text, which is `M`, `,M` or (after a bare name) `{M}`. Returns the
/// number of insertions. Greedy alignment is exact here: an insertion never starts with
/// the input character it is inserted before (`}` or a character that cannot start a
/// brace after a bare name).
pub fn check_only_insertions(input: &str, output: &str, matcher: &str) -> Result<usize, String> {
    let insertions = [
        format!("{{{matcher}}}"),
        format!(",{matcher}"),
        matcher.to_string(),
    ];
    let (mut i, mut o, mut count) = (0, 0, 0);
    while o < output.len() {
        if input[i..]
            .chars()
            .next()
            .is_some_and(|c| output[o..].starts_with(c))
        {
            let c = input[i..].chars().next().unwrap();
            i += c.len_utf8();
            o += c.len_utf8();
            continue;
        }
        match insertions
            .iter()
            .find(|ins| output[o..].starts_with(ins.as_str()))
        {
            Some(ins) => {
                o += ins.len();
                count += 1;
            }
            None => {
                return Err(format!(
                "output differs from the input at input byte {i}, output byte {o}: {:?} vs {:?}",
                input[i..].chars().take(30).collect::<String>(),
                output[o..].chars().take(30).collect::<String>()
            ))
            }
        }
    }
    if i < input.len() {
        return Err(format!("output lacks the input's tail {:?}", &input[i..]));
    }
    Ok(count)
}

/// Removes every matcher on `label` from every selector (what policy `replace` does
/// before adding ours).
pub fn drop_label_matchers(expr: &mut Expr, label: &str) {
    for_each_selector_mut(expr, &mut |vs| {
        vs.matchers.matchers.retain(|m| m.name != label);
        for group in &mut vs.matchers.or_matchers {
            group.retain(|m| m.name != label);
        }
    });
}

/// How the user's matchers on the tenant label relate to ours, for policy `reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMatchers {
    /// None, or only exactly ours: never a conflict.
    NoneOrOurs,
    /// Besides exact copies of ours, only matchers that select one of our own values.
    OwnValuesOnly,
    /// At least one that selects something else: always a conflict.
    Foreign,
}

/// Classifies every matcher on the tenant label over all selectors.
pub fn classify_user_matchers(expr: &Expr, tenant: &ExpectedMatcher) -> UserMatchers {
    let mut expr = expr.clone();
    let mut class = UserMatchers::NoneOrOurs;
    for_each_selector_mut(&mut expr, &mut |vs| {
        let m = &vs.matchers;
        for m in m.matchers.iter().chain(m.or_matchers.iter().flatten()) {
            if m.name != tenant.label || tenant.is(m) {
                continue;
            }
            if tenant.is_own_value(m) {
                if class == UserMatchers::NoneOrOurs {
                    class = UserMatchers::OwnValuesOnly;
                }
            } else {
                class = UserMatchers::Foreign;
            }
        }
    });
    class
}
