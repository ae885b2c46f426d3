//! One request's life in the filter, as a sans-IO state machine: Envoy's callbacks go
//! in as events, and what to do with the request comes out as a [`Step`].
//!
//! The same machine serves Envoy with and without `allow_on_headers_stop_iteration`
//! (docs/request-lifecycle.md says what Envoy does in each case). The setting only
//! changes the order of the events:
//! - with it, a body arrives while the headers are held, before or after the identity;
//! - without it, Envoy holds the body itself while the headers are held, and hands it
//!   over only once the filter lets the headers go.
//!
//! So everything that touches the headers happens while they are held: the identity,
//! the `:path`, the stripped headers, the `Content-Length`. The body is then buffered
//! whole, judged, and replaced; nothing of it goes on before that. A body judged while
//! its headers are still held goes on with its exact `Content-Length`; headers that go
//! on before their body is judged lose theirs, and Envoy sends the body chunked. When Envoy
//! hands the body over while the headers are held, both go on together once the body is
//! judged, so a refused body never opens a request to the backend. When it does not,
//! the headers go on first, and a refused body is answered locally while Envoy resets
//! the request it opened to the backend, which by then has seen headers but no body.
//!
//! A request whose identity is known at once (a cached token, a verified JWT) cannot
//! tell which Envoy it runs in from inside its headers callback: it waits one turn of
//! Envoy's event loop ([`Effect::AwaitTurn`]), in which Envoy delivers a body that came
//! with the headers if it delivers bodies to held requests at all.
//!
//! A worker learns that from its requests ([`Request::take_lesson`]): once one was handed
//! body data while its headers were held, the next ones skip the turn
//! ([`Request::knowing`]) and wait for their body. Two listeners may share one worker's
//! plugin with different settings, so the knowledge is a guess: a request that skipped
//! its turn and got no body within [`TURN_WAIT_S`] takes the turn's way out (its headers
//! go on) and teaches the worker to take turns again.

use crate::api::Refusal;
use crate::config::Config;
use crate::decision::{self, Admitted, BodyRule, Caller, RequestHead, Verdict};
use crate::identity::Identity;
use crate::response::{Response, ResponseStep};
use crate::rules::{ResponseFilter, UPSTREAM_HEADERS_TO_REMOVE};

/// How long a body may make no progress before the request is refused. A held body
/// larger than Envoy's buffer limit stops the client's connection without an error:
/// without this, such a request would hang until Envoy's stream idle timeout.
pub const BODY_STALL_S: u64 = 10;
/// How long a request may wait for its turn before it takes it anyway.
pub const TURN_WAIT_S: u64 = 1;

/// What the host must do to the request, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Remove the headers of [`crate::api::STRIPPED_HEADERS`] that are present.
    StripHeaders,
    /// Remove this request header.
    RemoveHeader(&'static str),
    /// Set `Content-Length` to this: the body that goes on with the headers was
    /// replaced, and the client had sent one.
    SetContentLength(usize),
    /// Set `:path`.
    SetPath(String),
    /// Replace the `len` bytes Envoy holds as the body with `body`.
    ReplaceBody { len: usize, body: Vec<u8> },
    /// Answer the request; it goes no further.
    Respond(Reply),
    /// Give the request a turn of Envoy's event loop, then call [`Request::on_turn`].
    AwaitTurn,
    /// Add to this counter.
    Count(Counter),
    /// Nothing for the host to do: a write's body goes on unread, whatever of it Envoy
    /// holds (for [`Trace`], which checks that every other body is judged first).
    PassBodyUnread,
}

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Refusal(Refusal),
    /// 200 with this JSON body.
    Answer(&'static str),
}

/// The filter's per-request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Denied,
    /// A refusal of the query or form itself (400), besides [`Counter::Denied`].
    BadQuery,
    /// A write let through, besides [`Counter::Allowed`].
    WriteAllowed,
    /// A request to an ingestion endpoint refused, besides [`Counter::Denied`].
    WriteDenied,
    /// Bytes of a write's body gone on.
    WriteBytes(usize),
}

/// The outcome of one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// Applied first, in order, while Envoy still holds what they touch.
    pub effects: Vec<Effect>,
    /// Let the request go on: `Continue` from a stream callback, a resume otherwise.
    /// False means hold it (`Pause`).
    pub release: bool,
}

impl Step {
    fn hold(effects: Vec<Effect>) -> Step {
        Step {
            effects,
            release: false,
        }
    }

    fn release(effects: Vec<Effect>) -> Step {
        Step {
            effects,
            release: true,
        }
    }
}

/// What has come of the body while the headers wait for the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// The headers ended the stream.
    None,
    /// Nothing of it yet.
    Awaited,
    /// Part of it, held by Envoy.
    Arriving,
    /// All of it, held by Envoy.
    Complete(Vec<u8>),
}

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the request headers.
    Start,
    /// Headers held while the identity is looked up.
    Identifying {
        admitted: Admitted<'static>,
        body: Body,
    },
    /// Identity and `:path` settled at the headers, headers held: a turn of the event
    /// loop shows whether Envoy hands the body over while they are. `asked`: false when
    /// the worker knew it would, and no turn was asked for.
    Turning {
        rule: BodyRule,
        since: u64,
        asked: bool,
    },
    /// Headers held, the body arriving meanwhile: both go on once it is judged.
    Holding { rule: BodyRule, since: u64 },
    /// Headers gone on; the body is buffered to its end, then judged.
    Streaming { rule: BodyRule, since: u64 },
    /// Judged and gone on: the backend has all of it, or, for a write (`write`), gets
    /// the body as it streams.
    Forwarded { write: bool },
    /// Answered by the filter.
    Answered,
}

/// One request, from its headers to its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    state: State,
    /// The request is to an ingestion endpoint, allowed or not: counted as a write.
    write: bool,
    /// The client sent a `Content-Length`. Envoy's codecs hold it to the body they
    /// deliver, and never pass it on beside `Transfer-Encoding`.
    has_length: bool,
    /// Bytes of a write's body Envoy handed over while the identity was looked up.
    held: usize,
    /// The filter the backend's answer must pass (rules and alerts), from the moment
    /// the headers may go on: a backend may answer before the body has all gone.
    answer_filter: Option<ResponseFilter>,
    /// The answer's stage, once the response headers came.
    answer: Option<Response>,
    /// The worker knew, when the request started, that Envoy hands body data to a
    /// request whose headers are held: no turn is asked for.
    held_bodies_known: bool,
    /// What the request showed of that, not yet taken by [`Request::take_lesson`].
    lesson: Option<bool>,
}

impl Default for Request {
    fn default() -> Self {
        Request::new()
    }
}

impl Request {
    pub fn new() -> Request {
        Request::knowing(false)
    }

    /// A request on a worker that knows (`held_bodies`) whether Envoy hands body data to
    /// a request whose headers are held: a request that knows skips its turn.
    pub fn knowing(held_bodies: bool) -> Request {
        Request {
            state: State::Start,
            write: false,
            has_length: false,
            held: 0,
            answer_filter: None,
            answer: None,
            held_bodies_known: held_bodies,
            lesson: None,
        }
    }

    /// What this request showed of its Envoy since last asked, once: `Some(true)` when
    /// Envoy handed it body data while its headers were held; `Some(false)` when it
    /// skipped its turn on that knowledge and no body came.
    pub fn take_lesson(&mut self) -> Option<bool> {
        self.lesson.take()
    }

    /// True once the filter has answered the request itself.
    pub fn is_answered(&self) -> bool {
        self.state == State::Answered
    }

    /// True once the request is judged and gone on to the backend.
    pub fn is_forwarded(&self) -> bool {
        matches!(self.state, State::Forwarded { .. })
    }

    /// The response headers: the answer's stage starts when the request has one
    /// ([`crate::response`]), whether or not all its body has gone on. `None`: the
    /// answer passes untouched (the filter's own replies too).
    pub fn on_response_headers(
        &mut self,
        status: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
        end_of_stream: bool,
    ) -> Option<ResponseStep> {
        let filter = self.answer_filter.take()?;
        let answer = self.answer.insert(Response::new(filter));
        Some(answer.on_headers(status, content_encoding, content_length, end_of_stream))
    }

    /// True when the answer will pass a filter: only then are its headers worth
    /// reading, each a call into the host.
    pub fn filters_answer(&self) -> bool {
        self.answer_filter.is_some()
    }

    /// The answer's stage, once it started.
    pub fn answer(&mut self) -> Option<&mut Response> {
        self.answer.as_mut()
    }

    /// The bearer token whose identity the request waits for.
    pub fn awaited_token(&self) -> Option<&str> {
        match &self.state {
            State::Identifying { admitted, .. } => match &admitted.caller {
                Caller::Token(token) => Some(token.as_ref()),
                Caller::Tenants(_) => None,
            },
            _ => None,
        }
    }

    /// The request headers. `look_up` asks for a bearer token's identity: `Some` when it
    /// is known at once, `None` when [`Request::on_identity`] will bring it later.
    pub fn on_headers(
        &mut self,
        head: &RequestHead<'_>,
        config: &Config,
        now: u64,
        look_up: impl FnOnce(&str) -> Option<Identity>,
    ) -> Step {
        if self.state != State::Start {
            return Step::hold(Vec::new());
        }
        let admitted = match decision::on_headers(head, config) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // Only a refused request needs the path read again to tell a write:
                // an admitted one's plan says it.
                self.write = crate::api::is_write_target(head.path);
                return self.refuse(Vec::new(), refusal);
            }
        };
        self.write = admitted.streams_body();
        self.has_length = head.content_length.is_some();
        let body = if admitted.body_follows {
            Body::Awaited
        } else {
            Body::None
        };
        let known = match &admitted.caller {
            Caller::Tenants(tenants) => Some(Identity::Tenants(tenants.clone())),
            Caller::Token(token) => look_up(token),
        };
        let mut step = match known {
            // Decided here: what it borrowed from the headers is never copied.
            Some(identity) => {
                self.state = State::Answered;
                self.judge_identity(admitted, body, identity, config, now, true)
            }
            None => {
                self.state = State::Identifying {
                    admitted: admitted.into_owned(),
                    body,
                };
                Step::hold(Vec::new())
            }
        };
        step.effects.insert(0, Effect::StripHeaders);
        step
    }

    /// The identity the request waited for, known after its headers callback.
    pub fn on_identity(&mut self, identity: Identity, config: &Config, now: u64) -> Step {
        self.identified(identity, config, now, false)
    }

    fn identified(
        &mut self,
        identity: Identity,
        config: &Config,
        now: u64,
        at_headers: bool,
    ) -> Step {
        // Refused meanwhile (a body too large, say), or never waiting: nothing changes.
        let Some((admitted, body)) = self.take_identifying() else {
            return Step::hold(Vec::new());
        };
        self.judge_identity(admitted, body, identity, config, now, at_headers)
    }

    /// The request's verdict once its identity is known; the request is out of
    /// [`State::Identifying`] (or never entered it).
    fn judge_identity(
        &mut self,
        admitted: Admitted<'_>,
        body: Body,
        identity: Identity,
        config: &Config,
        now: u64,
        at_headers: bool,
    ) -> Step {
        let write = admitted.streams_body();
        let (path, rule, response) = match decision::on_identity(admitted, identity, config) {
            Verdict::Refuse(refusal) => return self.refuse(Vec::new(), refusal),
            Verdict::Answer(answer) => {
                return Step::hold(vec![
                    Effect::Respond(Reply::Answer(answer)),
                    Effect::Count(Counter::Allowed),
                ])
            }
            Verdict::Forward {
                path,
                body,
                response,
            } => (path, body, response),
        };
        // Room for the path, a count and a header or two without growing.
        let mut effects: Vec<Effect> = Vec::with_capacity(4);
        effects.extend(path.map(Effect::SetPath));
        if response.is_some() {
            self.answer_filter.clone_from(&response);
            // The engines compress when asked to; the response stage reads plain JSON.
            effects.extend(
                UPSTREAM_HEADERS_TO_REMOVE
                    .iter()
                    .map(|h| Effect::RemoveHeader(h)),
            );
        }
        let Some(rule) = rule else {
            if write {
                effects.extend([Effect::PassBodyUnread, Effect::Count(Counter::WriteAllowed)]);
                if self.held > 0 {
                    effects.push(Effect::Count(Counter::WriteBytes(self.held)));
                }
            }
            self.state = State::Forwarded { write };
            effects.push(Effect::Count(Counter::Allowed));
            return Step::release(effects);
        };
        match body {
            Body::Complete(bytes) => self.judge(effects, &rule, &bytes, config, true),
            Body::Arriving => {
                self.state = State::Holding { rule, since: now };
                Step::hold(effects)
            }
            Body::Awaited | Body::None if at_headers => {
                // A body that came with the headers is handed over before any turn, and
                // one that comes later is awaited anyway: knowing that Envoy hands bodies
                // over, the turn shows nothing.
                let asked = !(self.held_bodies_known && body == Body::Awaited);
                if asked {
                    effects.push(Effect::AwaitTurn);
                }
                self.state = State::Turning {
                    rule,
                    since: now,
                    asked,
                };
                Step::hold(effects)
            }
            Body::Awaited | Body::None => {
                self.state = State::Streaming { rule, since: now };
                effects.extend(self.unknown_length());
                Step::release(effects)
            }
        }
    }

    /// Takes the request out of [`State::Identifying`], if it is there.
    fn take_identifying(&mut self) -> Option<(Admitted<'static>, Body)> {
        if !matches!(self.state, State::Identifying { .. }) {
            return None;
        }
        match std::mem::replace(&mut self.state, State::Answered) {
            State::Identifying { admitted, body } => Some((admitted, body)),
            _ => None,
        }
    }

    /// The turn awaited after [`Effect::AwaitTurn`]: no body came while the headers
    /// were held, so they go on, and the body is judged as it follows them.
    pub fn on_turn(&mut self, now: u64) -> Step {
        let State::Turning { rule, .. } = &self.state else {
            return Step::hold(Vec::new());
        };
        self.state = State::Streaming {
            rule: rule.clone(),
            since: now,
        };
        Step::release(self.unknown_length().into_iter().collect())
    }

    /// The headers go on before their body is judged, and the body may change length:
    /// no `Content-Length` may go with them.
    fn unknown_length(&self) -> Option<Effect> {
        self.has_length
            .then_some(Effect::RemoveHeader("content-length"))
    }

    /// Body data: `size` bytes buffered so far in all; `read` gives them all. `now`
    /// reads the clock, which only a body still arriving needs (each read is a call
    /// into the host, and a form POST's body nearly always comes whole).
    pub fn on_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        config: &Config,
        now: impl FnOnce() -> u64,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Step {
        if matches!(
            self.state,
            State::Identifying { .. } | State::Turning { .. } | State::Holding { .. }
        ) {
            // Body data while the headers are held: this Envoy hands bodies over.
            self.lesson = Some(true);
        }
        match &self.state {
            // Each callback after the request went on brings new data only.
            State::Forwarded { write: true, .. } if size > 0 => {
                return Step::release(vec![Effect::Count(Counter::WriteBytes(size))])
            }
            State::Forwarded { .. } => return Step::release(Vec::new()),
            State::Start | State::Answered => return Step::hold(Vec::new()),
            // A write's body is never read nor bounded: Envoy holds it until the
            // identity lets the request go (or refuses it).
            State::Identifying { admitted, .. } if admitted.streams_body() => {
                self.held = size;
                return Step::hold(Vec::new());
            }
            _ => {}
        }
        if size > config.max_body_bytes {
            return self.refuse(Vec::new(), Refusal::too_large(config.max_body_bytes));
        }
        let bytes = if end_of_stream {
            match read() {
                Some(bytes) if bytes.len() == size => Some(bytes),
                // A body we cannot read is a body we cannot rewrite.
                _ => {
                    let refusal = Refusal::unavailable("the request body could not be read");
                    return self.refuse(Vec::new(), refusal);
                }
            }
        } else {
            None
        };
        match std::mem::replace(&mut self.state, State::Answered) {
            State::Identifying { admitted, .. } => {
                let body = bytes.map_or(Body::Arriving, Body::Complete);
                self.state = State::Identifying { admitted, body };
                Step::hold(Vec::new())
            }
            State::Turning { rule, .. } | State::Holding { rule, .. } if bytes.is_some() => {
                let bytes = bytes.unwrap_or_default();
                self.judge(Vec::new(), &rule, &bytes, config, true)
            }
            State::Streaming { rule, .. } if bytes.is_some() => {
                let bytes = bytes.unwrap_or_default();
                self.judge(Vec::new(), &rule, &bytes, config, false)
            }
            State::Turning { rule, .. } | State::Holding { rule, .. } => {
                self.state = State::Holding { rule, since: now() };
                Step::hold(Vec::new())
            }
            State::Streaming { rule, .. } => {
                self.state = State::Streaming { rule, since: now() };
                Step::hold(Vec::new())
            }
            other => {
                self.state = other;
                Step::hold(Vec::new())
            }
        }
    }

    /// Request trailers: the last body callback did not end the stream, and nothing in
    /// the filter reads trailers, so a body is never judged complete.
    pub fn on_trailers(&mut self) -> Step {
        match &self.state {
            State::Forwarded { .. } => Step::release(Vec::new()),
            State::Start | State::Answered => Step::hold(Vec::new()),
            // A write's trailers go on with its body, once the identity lets it go.
            State::Identifying { admitted, .. } if admitted.streams_body() => {
                Step::hold(Vec::new())
            }
            _ => self.refuse(
                Vec::new(),
                Refusal::bad_request("request trailers are not supported"),
            ),
        }
    }

    /// The root's tick: a request waiting for its turn or its body too long.
    pub fn on_tick(&mut self, now: u64) -> Step {
        match &self.state {
            State::Turning { since, asked, .. } if now.saturating_sub(*since) > TURN_WAIT_S => {
                if !asked {
                    // Skipped on the worker's knowledge, and no body came: this Envoy may
                    // not hand bodies over (or the client is slow); take turns again.
                    self.lesson = Some(false);
                }
                self.on_turn(now)
            }
            State::Holding { since, .. } | State::Streaming { since, .. }
                if now.saturating_sub(*since) > BODY_STALL_S =>
            {
                let refusal = Refusal::timeout(format!(
                    "the request body made no progress for {BODY_STALL_S} s: the client \
                     stopped sending, or the body is larger than Envoy's buffer limit"
                ));
                self.refuse(Vec::new(), refusal)
            }
            _ => Step::hold(Vec::new()),
        }
    }

    /// The host could not read or change the request as a step asked: it is refused
    /// rather than let through as it was.
    pub fn fail(&mut self, refusal: Refusal) -> Step {
        self.refuse(Vec::new(), refusal)
    }

    /// Judges a complete body: the request goes on with it replaced, or is refused.
    /// `headers_held`: the headers go on with it, so their `Content-Length` can follow
    /// a new body (a body left as it came keeps the client's, which Envoy held to it).
    fn judge(
        &mut self,
        mut effects: Vec<Effect>,
        rule: &BodyRule,
        bytes: &[u8],
        config: &Config,
        headers_held: bool,
    ) -> Step {
        match decision::on_body(rule, bytes, config) {
            Ok(new_body) => {
                if let Some(body) = new_body {
                    if headers_held && self.has_length {
                        effects.push(Effect::SetContentLength(body.len()));
                    }
                    effects.push(Effect::ReplaceBody {
                        len: bytes.len(),
                        body,
                    });
                }
                effects.push(Effect::Count(Counter::Allowed));
                self.state = State::Forwarded { write: false };
                Step::release(effects)
            }
            Err(refusal) => self.refuse(effects, refusal),
        }
    }

    fn refuse(&mut self, mut effects: Vec<Effect>, refusal: Refusal) -> Step {
        self.state = State::Answered;
        // The answer is the filter's own.
        self.answer_filter = None;
        effects.push(Effect::Count(Counter::Denied));
        if self.write {
            effects.push(Effect::Count(Counter::WriteDenied));
        }
        if refusal.status == 400 {
            effects.push(Effect::Count(Counter::BadQuery));
        }
        effects.push(Effect::Respond(Reply::Refusal(refusal)));
        Step::hold(effects)
    }
}

/// What Envoy would have done with the request, had a host applied every step: for the
/// tests and the fuzzer, which drive the machine the way Envoy's callbacks do, and check
/// on the way that nothing is changed after it went on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    /// `:path` as set, if it was.
    pub path: Option<String>,
    /// The `Content-Length` header as it stands.
    pub length: Length,
    /// The body Envoy holds was replaced.
    pub replaced: bool,
    /// The body Envoy holds at the filter (or sent on, once `body_gone`).
    pub body: Vec<u8>,
    /// Envoy has handed the filter the end of the body.
    pub complete: bool,
    /// The local answer, if any.
    pub reply: Option<Reply>,
    /// The headers went on to the backend.
    pub headers_gone: bool,
    /// The body went on to the backend.
    pub body_gone: bool,
    /// The headers and the whole body went on together.
    pub together: bool,
    /// The body goes on unread, as it comes (a write).
    pub unread: bool,
    /// What of an unread body went on so far (`body` then holds only what came since).
    pub sent: Vec<u8>,
    /// A turn was asked for and not yet given.
    pub awaiting_turn: bool,
    /// Counters, in order.
    pub counted: Vec<Counter>,
}

/// A request's `Content-Length` header, for [`Trace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Length {
    #[default]
    Absent,
    /// The client's, which Envoy holds to the body it delivers.
    Client,
    /// Set by the filter.
    Set(usize),
}

impl Trace {
    /// The trace of a request with these headers.
    pub fn new(head: &RequestHead<'_>) -> Trace {
        Trace {
            length: if head.content_length.is_some() {
                Length::Client
            } else {
                Length::Absent
            },
            ..Trace::default()
        }
    }

    /// Envoy hands the filter more of the body.
    pub fn deliver(&mut self, chunk: &[u8], end_of_stream: bool) {
        assert!(!self.body_gone, "body data after the body went on");
        self.body.extend_from_slice(chunk);
        self.complete |= end_of_stream;
    }

    /// Applies a step's effects, as a host would, then its release.
    pub fn apply(&mut self, step: Step) {
        for effect in step.effects {
            let touches_headers = matches!(
                effect,
                Effect::StripHeaders
                    | Effect::RemoveHeader(_)
                    | Effect::SetPath(_)
                    | Effect::SetContentLength(_)
            );
            assert!(
                !(touches_headers && self.headers_gone),
                "{effect:?} after the headers went on"
            );
            match effect {
                Effect::StripHeaders => {}
                Effect::RemoveHeader(name) => {
                    if name == "content-length" {
                        self.length = Length::Absent;
                    }
                }
                Effect::SetContentLength(len) => self.length = Length::Set(len),
                Effect::SetPath(path) => self.path = Some(path),
                Effect::ReplaceBody { len, body } => {
                    assert!(!self.body_gone, "a body replaced after it went on");
                    assert!(
                        !self.headers_gone || self.length == Length::Absent,
                        "a body replaced after a Content-Length went on: {:?}",
                        self.length
                    );
                    assert_eq!(len, self.body.len(), "a replacement of another length");
                    self.body = body;
                    self.replaced = true;
                }
                Effect::Respond(reply) => {
                    assert!(self.reply.is_none(), "two answers");
                    self.reply = Some(reply);
                }
                Effect::AwaitTurn => self.awaiting_turn = true,
                Effect::Count(counter) => self.counted.push(counter),
                Effect::PassBodyUnread => self.unread = true,
            }
        }
        if !step.release {
            return;
        }
        assert!(self.reply.is_none(), "released after an answer");
        if self.unread {
            // Envoy sends on what it holds, and each later chunk as it comes.
            self.headers_gone = true;
            self.sent.append(&mut self.body);
            self.body_gone = self.complete;
        } else if self.headers_gone {
            self.body_gone = true;
        } else {
            self.headers_gone = true;
            // Envoy sends on whatever body it handed the filter and holds.
            if !self.body.is_empty() || self.complete {
                assert!(self.complete, "part of the body went on unjudged");
                self.body_gone = true;
                self.together = true;
            }
            // What the backend reads as the body's end must be where it ends: a wrong
            // length makes the rest of the body the next request on the connection.
            match self.length {
                Length::Absent => {}
                Length::Client => assert!(
                    !self.replaced,
                    "the client's Content-Length went on with a replaced body"
                ),
                Length::Set(len) => assert!(
                    self.body_gone && len == self.body.len(),
                    "Content-Length {len} went on with a body of {}",
                    self.body.len()
                ),
            }
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
pub(crate) mod tests;
