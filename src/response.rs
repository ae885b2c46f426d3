//! The response stage, sans IO: how the filter passes on a rule engine's answer to
//! `/api/v1/rules` or `/api/v1/alerts` ([`crate::rules::ResponseFilter`] judges it).
//!
//! Envoy with and without `allow_on_headers_stop_iteration` differ on the response as on
//! the request (docs/request-lifecycle.md): without the setting, a `Pause` from the
//! response headers holds the body too, and nothing comes until the filter resumes, so a
//! stage that waited for the body with the headers held would hang under Istio. This
//! stage therefore decides everything the headers can tell while it holds them (the
//! status the caller gets, the JSON content type, no `Content-Length` since the body
//! changes length, no `Content-Encoding`) and lets them go; then it buffers the body to
//! its end and replaces it whole before any of it goes on.
//!
//! A 200 whose body turns out unreadable or too large has no status left to change: its
//! body becomes Prometheus' JSON error. Nothing of the engine's answer passes either way.

use crate::api::Refusal;
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
}

/// The outcome of one response event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseStep {
    pub effects: Vec<ResponseEffect>,
    /// `Continue` (true) or `Pause` (false) from the stream callback.
    pub release: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the response headers.
    Headers,
    /// Headers gone on; the body is buffered to its end.
    Buffering { status: u16, buffered: usize },
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
            return ResponseStep {
                effects: vec![ResponseEffect::Refuse(refusal)],
                release: false,
            };
        }
        let final_status = match &early {
            Some(refusal) => refusal.status,
            None => rules::answer_status(status),
        };
        self.state = match early {
            Some(refusal) => State::Refused(refusal),
            None => State::Buffering {
                status,
                buffered: 0,
            },
        };
        release(vec![
            ResponseEffect::SetHeader(":status", final_status.to_string()),
            ResponseEffect::SetHeader("content-type", "application/json".into()),
            ResponseEffect::RemoveHeader("content-length"),
            ResponseEffect::RemoveHeader("content-encoding"),
        ])
    }

    /// Response body data: `size` bytes buffered so far; `read` gives them all.
    pub fn on_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> ResponseStep {
        let status = match &self.state {
            State::Buffering { status, .. } => *status,
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
        self.state = State::Buffering {
            status,
            buffered: size,
        };
        if size > self.filter.max_bytes {
            self.state = if end_of_stream {
                State::Done
            } else {
                State::Dropping
            };
            return replace(size, self.filter.too_large().body());
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
        replace(size, answer.unwrap_or_else(|refusal| refusal.body()))
    }

    /// Response trailers end the body. The engines send none over HTTP/1.1; an answer
    /// with them is refused rather than read in a way it was not sent.
    pub fn on_trailers(&mut self) -> ResponseStep {
        let buffered = match &self.state {
            State::Buffering { buffered, .. } => *buffered,
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
            crate::api::ErrorType::Internal,
            "the rule engine's answer had trailers",
        );
        replace(buffered, refusal.body())
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

    fn replaced(step: &ResponseStep) -> String {
        match step.effects.as_slice() {
            [ResponseEffect::ReplaceBody { body, .. }] => String::from_utf8(body.clone()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_headers_go_on_decided_and_the_body_is_replaced_whole() {
        let mut r = response(10_000);
        let step = r.on_headers(Some(b"200"), None, Some(b"999"), false);
        assert!(step.release);
        assert!(step
            .effects
            .contains(&ResponseEffect::RemoveHeader("content-length")));
        assert!(step
            .effects
            .contains(&ResponseEffect::SetHeader(":status", "200".into())));
        let body = answer();
        let half = body.len() / 2;
        let step = r.on_body(half, false, || panic!("read before the end"));
        assert!(!step.release && step.effects.is_empty());
        let step = r.on_body(body.len(), true, || Some(body.clone().into_bytes()));
        let out = replaced(&step);
        assert!(step.release);
        assert!(out.contains("mine") && !out.contains("theirs"), "{out}");
    }

    #[test]
    fn an_engine_error_keeps_its_status_and_nothing_else_passes() {
        let mut r = response(10_000);
        let step = r.on_headers(Some(b"503"), None, None, false);
        assert!(step
            .effects
            .contains(&ResponseEffect::SetHeader(":status", "503".into())));
        let body = answer();
        let out = replaced(&r.on_body(body.len(), true, || Some(body.clone().into_bytes())));
        assert!(!out.contains("mine"), "{out}");
        let mut r = response(10_000);
        r.on_headers(Some(b"302"), None, None, false);
        let step = r.on_headers(Some(b"200"), None, None, false);
        assert!(step.effects.is_empty(), "headers twice: {step:?}");
    }

    #[test]
    fn too_large_compressed_bodiless_and_trailed_answers_are_refused() {
        // Over the bound: replaced at once, the rest dropped.
        let mut r = response(100);
        r.on_headers(Some(b"200"), None, None, false);
        let out = replaced(&r.on_body(150, false, || None));
        assert!(out.contains("max_response_bytes"), "{out}");
        let step = r.on_body(300, true, || None);
        assert_eq!(
            step.effects,
            [ResponseEffect::ReplaceBody {
                len: 300,
                body: Vec::new()
            }]
        );
        // Announced too large, or compressed: refused at the headers, whose status says
        // so, and the body becomes the refusal.
        for (encoding, length) in [(None, Some(&b"101"[..])), (Some(&b"gzip"[..]), None)] {
            let mut r = response(100);
            let step = r.on_headers(Some(b"200"), encoding, length, false);
            assert!(step.release);
            assert!(step
                .effects
                .contains(&ResponseEffect::SetHeader(":status", "502".into())));
            let out = replaced(&r.on_body(50, false, || panic!("no need to read it")));
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
        // No body at all.
        let mut r = response(100);
        let step = r.on_headers(Some(b"200"), None, None, true);
        assert!(matches!(
            step.effects.as_slice(),
            [ResponseEffect::Refuse(Refusal { status: 502, .. })]
        ));
        // Unreadable, then trailers.
        let mut r = response(10_000);
        r.on_headers(Some(b"200"), None, None, false);
        let out = replaced(&r.on_body(10, true, || None));
        assert!(out.contains("could not be read"), "{out}");
        let mut r = response(10_000);
        r.on_headers(Some(b"200"), None, None, false);
        r.on_body(10, false, || None);
        let step = r.on_trailers();
        assert_eq!(
            step.effects,
            [ResponseEffect::ReplaceBody {
                len: 10,
                body: br#"{"error":"the rule engine's answer had trailers","errorType":"internal","status":"error"}"#.to_vec()
            }]
        );
    }
}
