//! The `promql-tenant` CLI, run as a built binary: rewriting one query, every flag,
//! exit codes (0 ok, 1 refused query, 2 usage error), and the `--jsonl` stream mode
//! (one answer line per input line, in order, malformed lines answered in-band).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_promql-tenant");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run promql-tenant")
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promql-tenant");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("wait for promql-tenant")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_rewrites(args: &[&str], expected: &str) {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "args {args:?}, stderr: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), format!("{expected}\n"), "args {args:?}");
    assert!(
        out.stderr.is_empty(),
        "args {args:?}, stderr: {}",
        stderr(&out)
    );
}

#[track_caller]
fn assert_usage_error(args: &[&str], mention: &str) {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}, stdout: {}",
        stdout(&out)
    );
    assert!(out.stdout.is_empty(), "args {args:?}");
    let err = stderr(&out);
    assert!(
        err.contains(mention),
        "args {args:?}: stderr {err:?} should mention {mention:?}"
    );
    assert!(
        err.contains("usage: promql-tenant rewrite"),
        "args {args:?}: {err:?}"
    );
}

#[test]
fn rewrites_one_query() {
    assert_rewrites(
        &[
            "rewrite",
            "--label",
            "client_id",
            "--value",
            "1999",
            "rate(x[5m])",
        ],
        r#"rate(x{client_id="1999"}[5m])"#,
    );
}

#[test]
fn flags_accept_inline_values_and_any_order() {
    assert_rewrites(
        &[
            "rewrite",
            "foo{a=\"b\"}",
            "--value=1999",
            "--label=client_id",
        ],
        r#"foo{a="b",client_id="1999"}"#,
    );
}

#[test]
fn several_values_give_a_regex_matcher() {
    assert_rewrites(
        &[
            "rewrite",
            "--label",
            "client_id",
            "--value",
            "1999",
            "--value",
            "2000",
            "up",
        ],
        r#"up{client_id=~"1999|2000"}"#,
    );
}

#[test]
fn query_after_double_dash_may_start_with_dashes() {
    assert_rewrites(
        &[
            "rewrite",
            "--label",
            "client_id",
            "--value",
            "1",
            "--",
            "-up",
        ],
        r#"-up{client_id="1"}"#,
    );
}

#[test]
fn conflict_policies() {
    let base = ["rewrite", "--label", "client_id", "--value", "1999"];
    let query = r#"up{client_id="7"}"#;
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.push(query);
        args
    };
    assert_rewrites(&with(&[]), r#"up{client_id="7",client_id="1999"}"#);
    assert_rewrites(
        &with(&["--on-conflict", "and"]),
        r#"up{client_id="7",client_id="1999"}"#,
    );
    assert_rewrites(
        &with(&["--on-conflict", "replace"]),
        r#"up{client_id="1999"}"#,
    );

    let out = run(&with(&["--on-conflict", "reject"]));
    assert_eq!(out.status.code(), Some(1), "stdout {:?}", stdout(&out));
    assert!(out.stdout.is_empty());
    assert!(!stderr(&out).trim().is_empty());
}

#[test]
fn dialect_flag_switches_the_grammar() {
    // `rate(x)` (no range) is MetricsQL only.
    assert_rewrites(
        &[
            "rewrite",
            "--label",
            "client_id",
            "--value",
            "1",
            "--dialect",
            "metricsql",
            "rate(x)",
        ],
        r#"rate(x{client_id="1"})"#,
    );
    for dialect in [None, Some("promql")] {
        let mut args = vec!["rewrite", "--label", "client_id", "--value", "1"];
        if let Some(d) = dialect {
            args.extend(["--dialect", d]);
        }
        args.push("rate(x)");
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "dialect {dialect:?}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn query_without_selector_is_unchanged() {
    assert_rewrites(
        &["rewrite", "--label", "client_id", "--value", "1", "1+1"],
        "1+1",
    );
}

#[test]
fn parse_error_goes_to_stderr_with_a_position() {
    let out = run(&["rewrite", "--label", "client_id", "--value", "1", "foo{a=}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    // ParseError displays as `message at line:col`.
    assert!(err.contains(" at 1:"), "stderr {err:?}");
}

#[test]
fn usage_errors_exit_2() {
    assert_usage_error(&[], "missing command");
    assert_usage_error(&["frobnicate"], "unknown command");
    assert_usage_error(&["rewrite", "--value", "1", "up"], "--label");
    assert_usage_error(&["rewrite", "--label", "l", "up"], "--value");
    assert_usage_error(&["rewrite", "--label", "l", "--value", "1"], "QUERY");
    assert_usage_error(
        &["rewrite", "--label", "l", "--value", "1", "up", "down"],
        "one QUERY",
    );
    assert_usage_error(
        &["rewrite", "--label", "l", "--value", "1", "--jsonl", "up"],
        "--jsonl",
    );
    assert_usage_error(
        &["rewrite", "--label", "l", "--value", "1", "--bogus", "up"],
        "--bogus",
    );
    assert_usage_error(
        &[
            "rewrite", "--label", "l", "--label", "m", "--value", "1", "up",
        ],
        "twice",
    );
    assert_usage_error(
        &["rewrite", "--label", "l", "--value"],
        "--value needs a value",
    );
    assert_usage_error(
        &[
            "rewrite",
            "--label",
            "l",
            "--value",
            "1",
            "--on-conflict",
            "xor",
            "up",
        ],
        "conflict policy",
    );
    assert_usage_error(
        &[
            "rewrite",
            "--label",
            "l",
            "--value",
            "1",
            "--dialect",
            "logql",
            "up",
        ],
        "dialect",
    );
    // An empty label cannot form a matcher.
    assert_usage_error(
        &["rewrite", "--label", "", "--value", "1", "up"],
        "invalid tenant",
    );
}

#[test]
fn help_exits_0() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("usage: promql-tenant rewrite"));
}

#[test]
fn jsonl_answers_every_line_in_order() {
    let input = concat!(
        "{\"query\": \"up\"}\n",
        "not json\n",
        "{\"query\": \"foo{\"}\n",
        "{\"query\": 5}\n",
        "{\"other\": \"up\"}\n",
        "\n",
        "{\"query\": \"sum(rate(x[5m])) by (job)\"}\r\n",
        "{\"query\": \"1+1\"}", // no final newline
    );
    let out = run_with_stdin(
        &["rewrite", "--label", "client_id", "--value", "7", "--jsonl"],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr {}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    assert_eq!(lines.len(), 8, "one answer per input line: {lines:?}");
    let output = |i: usize| {
        lines[i]
            .get("output")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let is_error = |i: usize| {
        lines[i]
            .get("error")
            .is_some_and(|e| e.as_str().is_some_and(|s| !s.is_empty()))
            && lines[i].get("output").is_none()
    };
    assert_eq!(output(0).as_deref(), Some(r#"up{client_id="7"}"#));
    for i in [1, 2, 3, 4, 5] {
        assert!(is_error(i), "line {i} should be an error: {}", lines[i]);
    }
    assert_eq!(
        output(6).as_deref(),
        Some(r#"sum(rate(x{client_id="7"}[5m])) by (job)"#)
    );
    assert_eq!(output(7).as_deref(), Some("1+1"));
}

#[test]
fn jsonl_survives_invalid_utf8() {
    let mut input = b"{\"query\": \"up\xff\"}\n".to_vec();
    input.extend_from_slice(b"{\"query\": \"up\"}\n");
    let out = run_with_stdin(
        &["rewrite", "--label", "client_id", "--value", "7", "--jsonl"],
        &input,
    );
    assert_eq!(out.status.code(), Some(0), "stderr {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("{\"error\":"), "{}", lines[0]);
    assert_eq!(lines[1], r#"{"output":"up{client_id=\"7\"}"}"#);
}

#[test]
fn jsonl_escapes_hostile_output_as_json() {
    let input = "{\"query\": \"up\\n# comment\\n\"}\n";
    let out = run_with_stdin(
        &[
            "rewrite",
            "--label",
            "client_id",
            "--value",
            "a\"b\\c",
            "--jsonl",
        ],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().count(),
        1,
        "newlines inside the query stay escaped: {text:?}"
    );
    let answer: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(
        answer["output"],
        "up{client_id=\"a\\\"b\\\\c\"}\n# comment\n"
    );
}

#[test]
fn time_reports_the_engine_loop_as_json() {
    let input = b"{\"query\":\"up\"}\n{\"query\":\"sum(\"}\n{\"query\":\"rate(x[5m])\"}\n";
    let out = run_with_stdin(
        &[
            "time",
            "--label",
            "client_id",
            "--value",
            "1999",
            "--rounds",
            "3",
        ],
        input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let timing: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(timing["queries"], 3);
    assert_eq!(timing["accepted"], 2);
    assert_eq!(timing["rounds"], 3);
    assert_eq!(timing["bytes"], 17);
    assert!(timing["ns_per_query"].as_f64().unwrap() >= 0.0);

    let bad = run_with_stdin(&["time", "--label", "l", "--value", "v"], b"not json\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("line 1"), "{}", stderr(&bad));
    assert_usage_error(
        &["time", "--label", "l", "--value", "v", "--rounds", "0"],
        "--rounds",
    );
    assert_usage_error(
        &["time", "--label", "l", "--value", "v", "up"],
        "takes no QUERY",
    );
    assert_usage_error(
        &[
            "rewrite", "--label", "l", "--value", "v", "--rounds", "2", "up",
        ],
        "unknown option",
    );
}
