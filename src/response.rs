//! The response stage, sans IO: how the filter passes on a rule engine's answer to
//! `/api/v1/rules` or `/api/v1/alerts` ([`crate::rules::ResponseFilter`] judges it).
//!
//! Envoy with and without `allow_on_headers_stop_iteration` differ on the response as on
//! the request (docs/request-lifecycle.md): without the setting, a `Pause` from the
//! response headers holds the body too, and nothing comes until the filter resumes, so a
//! stage that waited for the body with the headers held would hang under Istio. The
//! stage does what the request side does:
//! - it holds the headers for one turn of Envoy's event loop ([`ResponseEffect::AwaitTurn`]);
//! - a body Envoy hands over meanwhile (with the setting) is buffered whole with the
//!   headers held, judged, and both go on together: the status says what became of it;
//! - if none comes in that turn, the headers go on decided (the status the caller gets,
//!   the JSON content type, no `Content-Length` since the body changes length, no
//!   `Content-Encoding`), and the body is buffered whole as it follows them and replaced
//!   before any of it goes on. A 200 whose body then turns out unreadable or too large
//!   has no status left to change: its body becomes Prometheus' JSON error.
//!
//! Nothing of the engine's answer passes in any case.

use crate::api::{ErrorType, Refusal};
use crate::rules::{self, ResponseFilter};

/// What the host must do to the response, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEffect {
    /// Set this response header.
    SetHeader(&'static str, String),
    /// Remove this response header.
    RemoveHeader(&'static str),
    /// Replace the `len` bytes Envoy holds as the response body with `body`.
    ReplaceBody { len: usize, body: Vec<u8> },
    /// Answer with this refusal instead of the engine's answer, which has no body (the
    /// response headers are still held).
    Refuse(Refusal),
    /// Give the response a turn of Envoy's event loop, then call [`Response::on_turn`].
    AwaitTurn,
}

/// The outcome of one response event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseStep {
    pub effects: Vec<ResponseEffect>,
    /// Let the response go on: `Continue` from its own callback, a resume from any
    /// other. False: hold it (`Pause`), or, outside its callbacks, nothing.
    pub release: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the response headers.
    Headers,
    /// Headers held for one turn: does Envoy hand the body over while they are?
    Turning { status: u16 },
    /// Buffering the body: with the headers held (`held`), or after they went on.
    Body {
        status: u16,
        buffered: usize,
        held: bool,
    },
    /// Headers gone on with the status of this refusal, known from them: the body,
    /// whatever it is, becomes the refusal.
    Refused(Refusal),
    /// The body was replaced before its end (it grew past the bound): what follows is
    /// dropped.
    Dropping,
    /// Replaced, or answered locally: nothing more to do.
    Done,
}

/// One answer of a rule engine, from its headers to its replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    filter: ResponseFilter,
    state: State,
}

impl Response {
    pub fn new(filter: ResponseFilter) -> Response {
        Response {
            filter,
            state: State::Headers,
        }
    }

    /// The response headers: `status` is `:status`, as read.
    pub fn on_headers(
        &mut self,
        status: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
        end_of_stream: bool,
    ) -> ResponseStep {
        if self.state != State::Headers {
            return release(Vec::new());
        }
        let status = status
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u16>().ok())
            .unwrap_or(0);
        let early = self
            .filter
            .check_headers(content_encoding, content_length)
            .err();
        if end_of_stream {
            // No body to replace: the answer is made anew (a 200 without a body is
            // never a rule list, so this is a refusal).
            self.state = State::Done;
            let refusal = match early {
                Some(refusal) => refusal,
                None => match self.filter.filter(status, &[]) {
                    Err(refusal) => refusal,
                    Ok(_) => return release(Vec::new()),
                },
            };
            return hold(vec![ResponseEffect::Refuse(refusal)]);
        }
        if let Some(refusal) = early {
            // Known from the headers: they go on saying so.
            let effects = headers(refusal.status);
            self.state = State::Refused(refusal);
            return release(effects);
        }
        self.state = State::Turning { status };
        hold(vec![ResponseEffect::AwaitTurn])
    }

    /// The turn awaited after [`ResponseEffect::AwaitTurn`]: no body came while the
    /// headers were held, so they go on decided, and the body is judged as it follows.
    /// Anywhere else, nothing.
    pub fn on_turn(&mut self) -> ResponseStep {
        let State::Turning { status } = self.state else {
            return ResponseStep::default();
        };
        self.state = State::Body {
            status,
            buffered: 0,
            held: false,
        };
        release(headers(rules::answer_status(status)))
    }

    /// Response body data: `size` bytes buffered so far; `read` gives them all.
    pub fn on_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> ResponseStep {
        let (status, held) = match &self.state {
            // With the setting: the body comes while the headers wait for their turn.
            State::Turning { status } => (*status, true),
            State::Body { status, held, .. } => (*status, *held),
            State::Refused(refusal) => {
                let body = refusal.body();
                self.state = if end_of_stream {
                    State::Done
                } else {
                    State::Dropping
                };
                return replace(size, body);
            }
            State::Dropping => {
                return release(vec![ResponseEffect::ReplaceBody {
                    len: size,
                    body: Vec::new(),
                }])
            }
            State::Headers | State::Done => return release(Vec::new()),
        };
        self.state = State::Body {
            status,
            buffered: size,
            held,
        };
        if size > self.filter.max_bytes {
            self.state = if end_of_stream {
                State::Done
            } else {
                State::Dropping
            };
            return self.answer(held, size, Err(self.filter.too_large()));
        }
        if !end_of_stream {
            return ResponseStep::default();
        }
        self.state = State::Done;
        let answer = match read() {
            Some(body) if body.len() == size => self.filter.filter(status, &body),
            _ => Err(Refusal::unavailable(
                "the rule engine's answer could not be read",
            )),
        };
        self.answer(held, size, answer)
    }

    /// Response trailers end the body. The engines send none over HTTP/1.1; an answer
    /// with them is refused rather than read in a way it was not sent.
    pub fn on_trailers(&mut self) -> ResponseStep {
        let (buffered, held) = match &self.state {
            State::Turning { .. } => (0, true),
            State::Body { buffered, held, .. } => (*buffered, *held),
            // Trailers without a body: the refusal is all the body there is.
            State::Refused(refusal) => {
                let body = refusal.body();
                self.state = State::Done;
                return replace(0, body);
            }
            _ => return release(Vec::new()),
        };
        self.state = State::Done;
        let refusal = Refusal::upstream(
            502,
            ErrorType::Internal,
            "the rule engine's answer had trailers",
        );
        self.answer(held, buffered, Err(refusal))
    }

    /// Replaces the `len` bytes held with the caller's answer; with the headers still
    /// held, they say what it is.
    fn answer(&self, held: bool, len: usize, answer: Result<Vec<u8>, Refusal>) -> ResponseStep {
        let (status, body) = match answer {
            Ok(body) => (200, body),
            Err(refusal) => (refusal.status, refusal.body()),
        };
        let mut effects = if held { headers(status) } else { Vec::new() };
        effects.push(ResponseEffect::ReplaceBody { len, body });
        release(effects)
    }
}

/// The response headers of a replaced answer.
fn headers(status: u16) -> Vec<ResponseEffect> {
    vec![
        ResponseEffect::SetHeader(":status", status.to_string()),
        ResponseEffect::SetHeader("content-type", "application/json".into()),
        ResponseEffect::RemoveHeader("content-length"),
        ResponseEffect::RemoveHeader("content-encoding"),
    ]
}

fn hold(effects: Vec<ResponseEffect>) -> ResponseStep {
    ResponseStep {
        effects,
        release: false,
    }
}

fn release(effects: Vec<ResponseEffect>) -> ResponseStep {
    ResponseStep {
        effects,
        release: true,
    }
}

fn replace(len: usize, body: Vec<u8>) -> ResponseStep {
    release(vec![ResponseEffect::ReplaceBody { len, body }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleSelection, RuleView};
    use crate::Dialect;

    fn response(max_bytes: usize) -> Response {
        Response::new(ResponseFilter {
            view: RuleView::Rules,
            selection: RuleSelection::default(),
            tenant_label: "client_id".into(),
            tenants: vec!["1999".into()],
            dialect: Dialect::Metricsql,
            max_bytes,
        })
    }

    fn answer() -> String {
        serde_json::json!({"status": "success", "data": {"groups": [{"name": "g", "rules": [
            {"name": "mine", "type": "recording", "query": "sum(x{client_id=\"1999\"})",
             "labels": {"client_id": "1999"}},
            {"name": "theirs", "type": "recording", "query": "sum(x{client_id=\"2000\"})",
             "labels": {"client_id": "2000"}}]}]}})
        .to_string()
    }

    /// The body a step puts in place, and the status it sets, if any.
    fn replaced(step: &ResponseStep) -> (Option<String>, String) {
        let mut status = None;
        let mut body = None;
        for effect in &step.effects {
            match effect {
                ResponseEffect::SetHeader(":status", s) => status = Some(s.clone()),
                ResponseEffect::ReplaceBody { body: b, .. } => {
                    body = Some(String::from_utf8(b.clone()).unwrap())
                }
                _ => {}
            }
        }
        (status, body.expect("a replaced body"))
    }

    fn turning(max_bytes: usize, status: &[u8]) -> Response {
        let mut r = response(max_bytes);
        let step = r.on_headers(Some(status), None, None, false);
        assert_eq!(step, hold(vec![ResponseEffect::AwaitTurn]));
        r
    }

    #[test]
    fn a_body_that_comes_with_the_held_headers_goes_on_with_them_judged() {
        // With allow_on_headers_stop_iteration: the body comes during the turn.
        let body = answer();
        let mut r = turning(10_000, b"200");
        let step = r.on_body(body.len() / 2, false, || panic!("read before the end"));
        assert_eq!(step, ResponseStep::default());
        let step = r.on_body(body.len(), true, || Some(body.clone().into_bytes()));
        assert!(step.release);
        assert!(step
            .effects
            .contains(&ResponseEffect::RemoveHeader("content-length")));
        let (status, out) = replaced(&step);
        assert_eq!(status.as_deref(), Some("200"));
        assert!(out.contains("mine") && !out.contains("theirs"), "{out}");
        // The turn that comes later changes nothing.
        assert_eq!(r.on_turn(), ResponseStep::default());
        // Too large while held: the status says so.
        let mut r = turning(100, b"200");
        let (status, out) = replaced(&r.on_body(150, false, || None));
        assert_eq!(status.as_deref(), Some("502"));
        assert!(out.contains("max_response_bytes"), "{out}");
        let step = r.on_body(300, true, || None);
        assert_eq!(
            step.effects,
            [ResponseEffect::ReplaceBody {
                len: 300,
                body: Vec::new()
            }]
        );
        // Unreadable while held: 502 too.
        let mut r = turning(10_000, b"200");
        let (status, out) = replaced(&r.on_body(5, true, || Some(b"{\"a\":".to_vec())));
        assert_eq!(status.as_deref(), Some("502"));
        assert!(out.contains("could not be read"), "{out}");
    }

    #[test]
    fn without_a_body_in_the_turn_the_headers_go_on_decided() {
        // Without the setting (Istio): nothing comes while the headers are held.
        let body = answer();
        let mut r = turning(10_000, b"200");
        let step = r.on_turn();
        assert!(step.release);
        assert!(step
            .effects
            .contains(&ResponseEffect::SetHeader(":status", "200".into())));
        assert!(step
            .effects
            .contains(&ResponseEffect::RemoveHeader("content-length")));
        assert_eq!(r.on_turn(), ResponseStep::default(), "one turn only");
        assert_eq!(r.on_body(5, false, || None), ResponseStep::default());
        let step = r.on_body(body.len(), true, || Some(body.clone().into_bytes()));
        let (status, out) = replaced(&step);
        assert_eq!(status, None, "the headers went on already");
        assert!(out.contains("mine") && !out.contains("theirs"), "{out}");
        // An engine error keeps its status; nothing else of it passes.
        let mut r = turning(10_000, b"503");
        assert!(r
            .on_turn()
            .effects
            .contains(&ResponseEffect::SetHeader(":status", "503".into())));
        let (_, out) = replaced(&r.on_body(body.len(), true, || Some(body.clone().into_bytes())));
        assert!(!out.contains("mine"), "{out}");
        // Grown past the bound after the headers went on: the body says so.
        let mut r = turning(100, b"200");
        r.on_turn();
        let (status, out) = replaced(&r.on_body(150, false, || None));
        assert_eq!(status, None);
        assert!(out.contains("\"status\":\"error\""), "{out}");
    }

    #[test]
    fn compressed_bodiless_and_trailed_answers_are_refused() {
        // Announced too large, or compressed: refused at the headers, which go on at
        // once saying so, and the body becomes the refusal.
        for (encoding, length) in [(None, Some(&b"101"[..])), (Some(&b"gzip"[..]), None)] {
            let mut r = response(100);
            let step = r.on_headers(Some(b"200"), encoding, length, false);
            assert!(step.release);
            assert!(step
                .effects
                .contains(&ResponseEffect::SetHeader(":status", "502".into())));
            let (_, out) = replaced(&r.on_body(50, false, || panic!("no need to read it")));
            assert!(out.contains("\"status\":\"error\""), "{out}");
            let step = r.on_body(80, true, || panic!("no need to read it"));
            assert_eq!(
                step.effects,
                [ResponseEffect::ReplaceBody {
                    len: 80,
                    body: Vec::new()
                }]
            );
        }
        // No body at all: answered locally, the headers still held.
        let mut r = response(100);
        let step = r.on_headers(Some(b"200"), None, None, true);
        assert!(!step.release);
        assert!(matches!(
            step.effects.as_slice(),
            [ResponseEffect::Refuse(Refusal { status: 502, .. })]
        ));
        // Trailers, held or not.
        for turned in [false, true] {
            let mut r = turning(10_000, b"200");
            if turned {
                r.on_turn();
            }
            r.on_body(10, false, || None);
            let step = r.on_trailers();
            let (status, out) = replaced(&step);
            assert_eq!(status.is_some(), !turned);
            assert!(out.contains("had trailers"), "{out}");
            assert!(matches!(
                step.effects.last(),
                Some(ResponseEffect::ReplaceBody { len: 10, .. })
            ));
        }
    }
}
