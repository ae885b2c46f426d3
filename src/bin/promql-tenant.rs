//! `promql-tenant`: preview what the filter does to a query.
//!
//! ```text
//! promql-tenant rewrite --label client_id --value 1999 [--value 2000]
//!               [--on-conflict and|replace|reject] [--dialect promql|metricsql] 'QUERY'
//! promql-tenant rewrite --label client_id --value 1999 --jsonl < queries.jsonl
//! promql-tenant time --label client_id --value 1999 [--rounds N] < queries.jsonl
//! ```
//!
//! `time` runs the engine over the queries natively and prints one JSON line of
//! timings: the same loop the plugin runs inside Envoy with `debug_time_engine`, so
//! that `make bench` can compare the two (see `promql_tenant_filter::timing`).
//!
//! Exit codes: 0 on success, 1 when the query is refused (parse error, conflict) or on
//! an I/O error, 2 on a usage error (bad flags, missing label or value, invalid tenant).
//! In `--jsonl` mode a refused query is reported in-band as `{"error": ...}` and does
//! not change the exit code; every input line gives exactly one output line, in order.

use promql_tenant_filter::timing::time_engine;
use promql_tenant_filter::{rewrite, ConflictPolicy, Dialect, TenantMatcher};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: promql-tenant rewrite --label LABEL --value VALUE [--value VALUE]...
                             [--on-conflict and|replace|reject]
                             [--dialect promql|metricsql]
                             (QUERY | --jsonl)
       promql-tenant time --label LABEL --value VALUE [--rounds N]
                          [--on-conflict ...] [--dialect ...] < queries.jsonl

  Prints QUERY with the tenant matcher added to every series selector.
  With --jsonl, reads {\"query\": \"...\"} lines from stdin and writes one
  {\"output\": \"...\"} or {\"error\": \"...\"} line per input line.
  `time` rewrites the queries of stdin N times (default 1) and prints the
  timing as one JSON line.";

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    label: String,
    values: Vec<String>,
    policy: ConflictPolicy,
    dialect: Dialect,
    /// `None` means `--jsonl`.
    query: Option<String>,
    /// `Some(rounds)` for the `time` command.
    time_rounds: Option<u32>,
}

enum Parsed {
    Run(Options),
    Help,
}

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(args) => args,
        Err(_) => return usage_error("arguments must be valid UTF-8"),
    };
    let options = match parse_args(&args) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    let tenant = match TenantMatcher::new(&options.label, &options.values) {
        Ok(tenant) => tenant,
        Err(e) => return usage_error(&format!("invalid tenant: {e}")),
    };
    if let Some(rounds) = options.time_rounds {
        return time_stdin(&tenant, &options, rounds);
    }
    match &options.query {
        Some(query) => match rewrite(query, &tenant, options.policy, options.dialect) {
            Ok(output) => {
                println!("{output}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("promql-tenant: {e}");
                ExitCode::from(1)
            }
        },
        None => {
            let stdin = io::stdin().lock();
            let stdout = io::BufWriter::new(io::stdout().lock());
            match rewrite_jsonl(stdin, stdout, &tenant, &options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("promql-tenant: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn time_stdin(tenant: &TenantMatcher, options: &Options, rounds: u32) -> ExitCode {
    let mut queries = Vec::new();
    for (number, line) in io::stdin().lock().lines().enumerate() {
        let query = line
            .map_err(|e| e.to_string())
            .and_then(|line| query_of_line(line.as_bytes()));
        match query {
            Ok(query) => queries.push(query),
            Err(e) => {
                eprintln!("promql-tenant: line {}: {e}", number + 1);
                return ExitCode::from(1);
            }
        }
    }
    let epoch = Instant::now();
    let clock_ns = || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let timing = time_engine(
        &queries,
        tenant,
        options.policy,
        options.dialect,
        rounds,
        clock_ns,
    );
    println!("{}", timing.to_json());
    ExitCode::SUCCESS
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("promql-tenant: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Hand-rolled parsing: `--flag value` and `--flag=value`, `--` ends the options.
fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut rest = args.iter();
    let timing = match rest.next().map(String::as_str) {
        Some("rewrite") => false,
        Some("time") => true,
        Some("-h" | "--help" | "help") => return Ok(Parsed::Help),
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}, expected \"rewrite\" or \"time\""
            ))
        }
        None => return Err("missing command \"rewrite\"".into()),
    };
    let mut rounds = None;
    let mut label = None;
    let mut values = Vec::new();
    let mut policy = None;
    let mut dialect = None;
    let mut jsonl = false;
    let mut positional = Vec::new();
    let mut only_positional = false;
    while let Some(arg) = rest.next() {
        if only_positional || !arg.starts_with("--") {
            positional.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_string())),
            None => (arg.as_str(), None),
        };
        let mut take_value = || -> Result<String, String> {
            match &inline_value {
                Some(value) => Ok(value.clone()),
                None => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--label" => set_once(&mut label, take_value()?, flag)?,
            "--value" => values.push(take_value()?),
            "--on-conflict" => set_once(&mut policy, take_value()?.parse()?, flag)?,
            "--dialect" => set_once(&mut dialect, take_value()?.parse()?, flag)?,
            "--jsonl" if inline_value.is_none() => jsonl = true,
            "--rounds" if timing => {
                let n: u32 = take_value()?
                    .parse()
                    .map_err(|_| "--rounds needs a whole number".to_string())?;
                if n == 0 {
                    return Err("--rounds must be at least 1".into());
                }
                set_once(&mut rounds, n, flag)?;
            }
            "--help" => return Ok(Parsed::Help),
            _ => return Err(format!("unknown option {arg:?}")),
        }
    }
    let label = label.ok_or("missing --label")?;
    if values.is_empty() {
        return Err("missing --value".into());
    }
    if timing {
        if jsonl || !positional.is_empty() {
            return Err("time reads {\"query\": ...} lines from stdin and takes no QUERY".into());
        }
        return Ok(Parsed::Run(Options {
            label,
            values,
            policy: policy.unwrap_or_default(),
            dialect: dialect.unwrap_or_default(),
            query: None,
            time_rounds: Some(rounds.unwrap_or(1)),
        }));
    }
    let query = match (jsonl, positional.len()) {
        (true, 0) => None,
        (true, _) => return Err("--jsonl reads queries from stdin and takes no QUERY".into()),
        (false, 1) => positional.pop(),
        (false, 0) => return Err("missing QUERY (or --jsonl)".into()),
        (false, n) => {
            return Err(format!("expected one QUERY, got {n} (quote the query)"));
        }
    };
    Ok(Parsed::Run(Options {
        label,
        values,
        policy: policy.unwrap_or_default(),
        dialect: dialect.unwrap_or_default(),
        query,
        time_rounds: None,
    }))
}

fn set_once<T>(slot: &mut Option<T>, value: T, flag: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{flag} given twice"));
    }
    Ok(())
}

/// One output line per input line; a line that is not `{"query": "<string>"}` (or not
/// UTF-8) gets an `error` line instead of stopping the stream.
fn rewrite_jsonl(
    input: impl BufRead,
    mut output: impl Write,
    tenant: &TenantMatcher,
    options: &Options,
) -> io::Result<()> {
    for line in input.split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let answer = match query_of_line(&line) {
            Ok(query) => match rewrite(&query, tenant, options.policy, options.dialect) {
                Ok(rewritten) => serde_json::json!({ "output": rewritten }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            },
            Err(message) => serde_json::json!({ "error": message }),
        };
        serde_json::to_writer(&mut output, &answer)?;
        output.write_all(b"\n")?;
    }
    output.flush()
}

fn query_of_line(line: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed input line: {e}"))?;
    match value.get("query") {
        Some(serde_json::Value::String(query)) => Ok(query.clone()),
        Some(_) => Err("malformed input line: \"query\" must be a string".into()),
        None => Err("malformed input line: expected {\"query\": \"...\"}".into()),
    }
}
