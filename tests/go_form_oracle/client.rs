//! The oracle process: builds `main.go` with the Go that builds the backends, runs it
//! as a child, and asks it how Go's `net/http` reads a request, a query string or a
//! `Content-Type`.

use serde::Deserialize;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

/// A Go string as the oracle sends it: JSON text when UTF-8, hex otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GoString {
    Text(String),
    Hex { hex: String },
}

impl GoString {
    /// The bytes Go holds.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            GoString::Text(s) => s.as_bytes().to_vec(),
            GoString::Hex { hex } => (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("the oracle's hex"))
                .collect(),
        }
    }

    /// The text, where Go's bytes are UTF-8.
    pub fn text(&self) -> Option<&str> {
        match self {
            GoString::Text(s) => Some(s),
            GoString::Hex { .. } => None,
        }
    }
}

/// One key of Go's `url.Values`, its values in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GoPair {
    pub key: GoString,
    pub values: Vec<GoString>,
}

/// What a handler of the request sees (see `handlerView` in main.go).
#[derive(Debug, Clone, Deserialize)]
pub struct HandlerView {
    /// The Go server refused the request itself: no handler ran.
    pub server_error: Option<String>,
    /// `r.ParseForm()`'s error: Prometheus' `/series` and `/federate` answer 400 on it.
    pub parse_form_error: Option<String>,
    /// `r.FormValue("query")`.
    pub query: GoString,
    pub multipart_error: Option<String>,
    /// `r.Form` after `FormValue`, as VictoriaMetrics and Prometheus read it.
    pub form: Option<Vec<GoPair>>,
    pub post_form: Option<Vec<GoPair>>,
    /// `r.Form["match[]"]`: the only selectors Prometheus reads.
    #[serde(rename = "match[]")]
    pub match_brackets: Option<Vec<GoString>>,
    /// `r.Form["match"]`: VictoriaMetrics' alias, which Prometheus ignores.
    #[serde(rename = "match")]
    pub match_alias: Option<Vec<GoString>>,
    /// `r.URL.Query()`.
    pub url_query: Option<Vec<GoPair>>,
}

impl HandlerView {
    /// Every value of `name` in `r.Form`.
    pub fn form_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.form
            .iter()
            .flatten()
            .filter(|p| p.key.bytes() == name.as_bytes())
            .flat_map(|p| p.values.iter().map(GoString::bytes))
            .collect()
    }

    /// Whether any body parameter reached `r.Form`.
    pub fn read_the_body(&self) -> bool {
        self.post_form.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// `url.ParseQuery`'s answer.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryView {
    pub values: Vec<GoPair>,
    pub error: Option<String>,
}

/// `mime.ParseMediaType`'s answer.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaTypeView {
    #[serde(rename = "type")]
    pub media_type: GoString,
    pub params: Vec<GoPair>,
    pub error: Option<String>,
}

/// The oracle, running.
pub struct GoOracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Builds the oracle into `<repo>/target/go-form-oracle/` (once per process) and
/// returns its path. Go is run without modules (`GO111MODULE=off`): the program uses
/// the standard library only, so the build needs no network.
pub fn build(repo: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_now(repo)).clone()
}

fn build_now(repo: &Path) -> PathBuf {
    let dir = repo.join("target/go-form-oracle");
    std::fs::create_dir_all(&dir).expect("create target/go-form-oracle");
    let binary = dir.join("go-form-oracle");
    // Built under a name of its own and renamed, so that test binaries (processes)
    // building it at the same time never run a half-written file.
    let partial = dir.join(format!("go-form-oracle.{}", std::process::id()));
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg("./tests/go_form_oracle")
        .current_dir(repo)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", dir.join("cache"))
        .status();
    match built {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("building the Go form oracle failed ({status})"),
        Err(e) => panic!("cannot run `go` ({e}): `make deps` installs Debian's golang-go"),
    }
    std::fs::rename(&partial, &binary).expect("move the oracle into place");
    binary
}

impl GoOracle {
    /// Builds the oracle from `repo`'s sources and starts it.
    pub fn start(repo: &Path) -> GoOracle {
        let binary = build(repo);
        let mut child = Command::new(&binary)
            .arg("-serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        GoOracle {
            child,
            stdin,
            stdout,
        }
    }

    fn ask<T: for<'de> Deserialize<'de>>(&mut self, kind: u8, payload: &[u8]) -> T {
        let length = u32::try_from(payload.len()).expect("a frame under 4 GiB");
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.push(kind);
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
            .expect("the Go oracle stopped reading");
        let mut length = [0u8; 4];
        self.stdout
            .read_exact(&mut length)
            .expect("the Go oracle stopped answering");
        let mut answer = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stdout
            .read_exact(&mut answer)
            .expect("the Go oracle's answer was cut short");
        serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!(
                "the Go oracle's answer is not what we expect: {e}\n{}",
                String::from_utf8_lossy(&answer)
            )
        })
    }

    /// What a handler sees for this raw HTTP/1.1 request.
    pub fn request(&mut self, raw: &[u8]) -> HandlerView {
        self.ask(b'R', raw)
    }

    /// `url.ParseQuery` of a query string or form body.
    pub fn parse_query(&mut self, raw: &[u8]) -> QueryView {
        self.ask(b'Q', raw)
    }

    /// `mime.ParseMediaType` of a `Content-Type` value.
    pub fn media_type(&mut self, raw: &[u8]) -> MediaTypeView {
        self.ask(b'M', raw)
    }
}

impl Drop for GoOracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The request as Envoy hands it to the backend once the filter let it go: the final
/// `:path`, the client's `Content-Type` (Envoy joins repeated ones with `,`), the final
/// body with its length. `None` when a header value holds a byte Envoy's codec refuses
/// (NUL, CR, LF), so that such a request never reaches the filter at all.
pub fn forwarded_request(
    method: &[u8],
    path: &[u8],
    content_type: Option<&[u8]>,
    body: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let wire_safe = |v: &[u8]| !v.iter().any(|b| matches!(b, 0 | b'\r' | b'\n'));
    if !wire_safe(path) || path.contains(&b' ') || !content_type.is_none_or(wire_safe) {
        return None;
    }
    let mut raw = Vec::new();
    raw.extend_from_slice(method);
    raw.push(b' ');
    raw.extend_from_slice(path);
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: backend\r\n");
    if let Some(ct) = content_type {
        raw.extend_from_slice(b"Content-Type: ");
        raw.extend_from_slice(ct);
        raw.extend_from_slice(b"\r\n");
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        raw.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    Some(raw)
}
