//! The MetricsQL oracle: VictoriaMetrics' own parser (`tests/metricsql_oracle/main.go`,
//! built from Debian's metricsql, the library VictoriaMetrics 1.79 is built with) as a
//! child process, and the checks that judge a rewrite by what the backend reads.
//!
//! One process serves a whole test run: queries go in as JSON lines, verdicts come back
//! in order. [`Oracle::judge_all`] pipelines a corpus; [`Oracle::judge`] asks one at a
//! time (the fuzz target).

use super::ExpectedMatcher;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// One label filter as metricsql holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Filter {
    pub label: String,
    pub op: String,
    pub value: String,
}

/// One selector (`*metricsql.MetricExpr`): its printed form and its filter groups (one
/// per `or` branch; metricsql 0.49 has no `or` filters, so one group).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Selector {
    pub printed: String,
    pub groups: Vec<Vec<Filter>>,
}

/// What the backend's parser makes of one query (see main.go for each field).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Verdict {
    pub parses: bool,
    #[serde(default)]
    pub error: String,
    pub selectors: Vec<Selector>,
    #[serde(default)]
    pub printed: String,
    pub reparses: bool,
    #[serde(default)]
    pub reparse_error: String,
    #[serde(default)]
    pub reprinted: String,
    pub reparse_selectors: Vec<Selector>,
    #[serde(default)]
    pub optimize_panic: String,
    #[serde(default)]
    pub duration_panic: String,
    pub run_selectors: Vec<Selector>,
}

/// The repository root: the directory holding `tests/metricsql_oracle/`, found from the
/// crate being built (the main crate, or `fuzz/` inside it).
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("tests/metricsql_oracle/main.go").is_file())
        .unwrap_or(&manifest)
        .to_path_buf()
}

/// The oracle binary: `$METRICSQL_ORACLE`, or `target/metricsql-oracle`, built here when
/// missing or older than its source (`make metricsql-oracle` builds the same file).
pub fn oracle_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("METRICSQL_ORACLE") {
        return PathBuf::from(path);
    }
    let root = repo_root();
    let source = root.join("tests/metricsql_oracle/main.go");
    let binary = root.join("target/metricsql-oracle");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (modified(&binary), modified(&source)) {
        (Some(built), Some(src)) => built < src,
        _ => true,
    };
    if stale {
        build(&root, &binary);
    }
    binary
}

fn build(root: &Path, binary: &Path) {
    // Several test binaries may build at once: each writes its own file, then renames.
    let tmp = binary.with_extension(format!("tmp{}", std::process::id()));
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg("./tests/metricsql_oracle")
        .current_dir(root)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `go` to build the metricsql oracle ({e}); `make deps` installs golang-go and golang-github-victoriametrics-metricsql-dev")
        });
    assert!(
        status.success(),
        "building the metricsql oracle failed; `make deps` installs golang-go and golang-github-victoriametrics-metricsql-dev"
    );
    std::fs::rename(&tmp, binary).expect("rename the oracle binary into place");
}

/// A running oracle process.
pub struct Oracle {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
}

fn request_line(query: &str) -> String {
    let mut line = serde_json::json!({ "q": query }).to_string();
    line.push('\n');
    line
}

impl Oracle {
    pub fn start() -> Oracle {
        let binary = oracle_binary();
        let mut child = Command::new(&binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdin = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Oracle {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    fn read_verdict(&mut self) -> Verdict {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read from the oracle");
        assert!(n > 0, "the metricsql oracle exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("oracle answer {line:?}: {e}"))
    }

    /// Asks about one query and waits for the answer.
    pub fn judge(&mut self, query: &str) -> Verdict {
        let stdin = self.stdin.as_mut().expect("oracle open");
        stdin
            .write_all(request_line(query).as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write to the oracle");
        self.read_verdict()
    }

    /// Asks about many queries at once: a writer thread feeds them while the answers
    /// are read, so neither pipe fills up.
    pub fn judge_all(&mut self, queries: &[String]) -> Vec<Verdict> {
        let mut stdin = self.stdin.take().expect("oracle open");
        let lines: Vec<String> = queries.iter().map(|q| request_line(q)).collect();
        let writer = std::thread::spawn(move || {
            for line in &lines {
                stdin
                    .write_all(line.as_bytes())
                    .expect("write to the oracle");
            }
            stdin.flush().expect("flush the oracle's input");
            stdin
        });
        let verdicts = queries.iter().map(|_| self.read_verdict()).collect();
        self.stdin = Some(writer.join().expect("oracle writer thread"));
        verdicts
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The default `WITH` templates metricsql expands in every query (`ru`, `ttf`, ...):
/// their bodies repeat an argument, so the backend counts more selectors than were
/// written. A call to one of these is compared with the backend's count of the input.
pub const DEFAULT_TEMPLATES: [&str; 5] = ["ru", "ttf", "median_over_time", "range_median", "alias"];

/// How a rewrite's output reads to the backend, when it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The backend's parser refuses the output (the filter accepted the input).
    DoesNotParse(String),
    /// A selector, or one `or` branch of it, lacks the tenant matcher.
    Unconfined(String),
    /// The backend sees another number of selectors than the filter did.
    SelectorCount { filter: usize, backend: usize },
    /// The printed form (`AppendString`) does not parse again: the backend crashes.
    ReparseFails(String),
    /// The printed form parses, but prints differently: the backend runs another query.
    ReprintDiffers { printed: String, reprinted: String },
    /// `metricsql.Optimize` panics (it re-parses the printed form).
    OptimizePanics(String),
    /// A window, step or offset panics when evaluated (`DurationExpr.Duration`).
    DurationPanics(String),
}

impl Finding {
    /// The two classes the acceptance counts: a leak, or a backend crash.
    pub fn is_leak_or_crash(&self) -> bool {
        !matches!(
            self,
            Finding::DoesNotParse(_) | Finding::SelectorCount { .. }
        )
    }
}

/// Whether `selector` carries `tenant` in every group.
pub fn is_confined(selector: &Selector, tenant: &ExpectedMatcher) -> bool {
    !selector.groups.is_empty()
        && selector.groups.iter().all(|group| {
            group
                .iter()
                .any(|f| f.label == tenant.label && f.op == tenant.op && f.value == tenant.value)
        })
}

/// Judges a verdict on the filter's output: it parses; every selector of the first
/// parse, of the re-parse and of the query that runs carries the tenant matcher; there
/// are `expected_selectors` of them; the printed form parses again to itself; Optimize
/// and the durations do not panic. Returns every finding (empty when the output is sound).
pub fn findings(
    verdict: &Verdict,
    tenant: &ExpectedMatcher,
    expected_selectors: usize,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if !verdict.parses {
        out.push(Finding::DoesNotParse(verdict.error.clone()));
        return out;
    }
    let all = verdict
        .selectors
        .iter()
        .chain(&verdict.reparse_selectors)
        .chain(&verdict.run_selectors);
    for s in all {
        if !is_confined(s, tenant) {
            let finding = Finding::Unconfined(s.printed.clone());
            if !out.contains(&finding) {
                out.push(finding);
            }
        }
    }
    if verdict.selectors.len() != expected_selectors {
        out.push(Finding::SelectorCount {
            filter: expected_selectors,
            backend: verdict.selectors.len(),
        });
    }
    if !verdict.reparses {
        out.push(Finding::ReparseFails(verdict.reparse_error.clone()));
    } else if verdict.reprinted != verdict.printed {
        out.push(Finding::ReprintDiffers {
            printed: verdict.printed.clone(),
            reprinted: verdict.reprinted.clone(),
        });
    }
    if !verdict.optimize_panic.is_empty() {
        out.push(Finding::OptimizePanics(verdict.optimize_panic.clone()));
    }
    if !verdict.duration_panic.is_empty() {
        out.push(Finding::DurationPanics(verdict.duration_panic.clone()));
    }
    out
}
