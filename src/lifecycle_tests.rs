//! The request lifecycle driven the way Envoy drives it, with and without
//! `allow_on_headers_stop_iteration`: bodies arriving before, during and after the
//! identity lookup, in one piece or in many, and what reaches the backend each time.

use super::*;
use crate::api::METADATA_ANSWER;
use crate::decision::{decide, Decision, Forwarded};
use crate::form::Params;

const NOW: u64 = 1_800_000_000;
const FORM: &[u8] = b"application/x-www-form-urlencoded";

/// How Envoy hands the body to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envoy {
    /// `allow_on_headers_stop_iteration: true`: body callbacks while the headers are held.
    StopIteration,
    /// Without it (Istio): Envoy holds the body until the headers go on.
    Istio,
}

/// When the identity is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// At the headers (a cached token).
    Cached,
    /// From a callout, after this many chunks have reached Envoy.
    After(usize),
}

fn config(extra: &str) -> Config {
    let json = format!(
        r#"{{"tenant_label":"client_id","identity":{{"source":"userinfo","cluster":"idp","claim":"client_id"}},"victoriametrics_extra_label":false{extra}}}"#
    );
    Config::parse(json.as_bytes()).unwrap()
}

fn alice() -> Identity {
    Identity::Tenants(vec!["1999".into()].into())
}

fn post<'a>(path: &'a str, content_type: Option<&'a [u8]>) -> RequestHead<'a> {
    RequestHead {
        method: b"POST",
        path: path.as_bytes(),
        content_type,
        credential: Some(b"Bearer tok"),
        end_of_stream: false,
        ..RequestHead::default()
    }
}

/// A form POST whose identity is known at its headers (a cached token).
fn cached_post(path: &str) -> (Config, Request) {
    let c = config("");
    let mut request = Request::new();
    request.on_headers(&post(path, Some(FORM)), &c, NOW, |_| Some(alice()));
    (c, request)
}

fn get(path: &str) -> RequestHead<'_> {
    RequestHead {
        method: b"GET",
        path: path.as_bytes(),
        credential: Some(b"Bearer tok"),
        end_of_stream: true,
        ..RequestHead::default()
    }
}

/// One request through the machine, as Envoy would run it. The client's `chunks`
/// reach Envoy one at a time; the first `first_read` of them with the headers, in the
/// same read. A turn of the event loop comes after that first read.
fn drive(
    envoy: Envoy,
    head: &RequestHead<'_>,
    chunks: &[&[u8]],
    first_read: usize,
    lookup: Lookup,
    identity: Identity,
    config: &Config,
) -> Trace {
    let run = Run {
        envoy,
        chunks,
        first_read,
        lookup,
        knowing: false,
    };
    run.drive(head, identity, config).trace
}

/// How one request is driven: see [`drive`]. `knowing`: the worker knows that Envoy
/// hands bodies to held requests ([`Request::knowing`]).
struct Run<'a> {
    envoy: Envoy,
    chunks: &'a [&'a [u8]],
    first_read: usize,
    lookup: Lookup,
    knowing: bool,
}

/// What came of a [`Run`].
struct Ran {
    trace: Trace,
    /// Turns asked for.
    turns: usize,
    /// What the request taught its worker ([`Request::take_lesson`]), in order.
    lessons: Vec<bool>,
}

impl Run<'_> {
    fn drive(&self, head: &RequestHead<'_>, identity: Identity, config: &Config) -> Ran {
        let Run {
            envoy,
            chunks,
            first_read,
            lookup,
            knowing,
        } = *self;
        let mut request = Request::knowing(knowing);
        let mut trace = Trace::new(head);
        let mut turns = 0;
        let cached = (lookup == Lookup::Cached).then(|| identity.clone());
        let step = request.on_headers(head, config, NOW, |token| {
            assert_eq!(token, "tok");
            cached
        });
        trace.apply(step);
        let mut envoy = Arrivals {
            envoy,
            chunks,
            arrived: first_read.min(chunks.len()),
            delivered: 0,
            lessons: request.take_lesson().into_iter().collect(),
        };
        envoy.pump(&mut request, &mut trace, config);
        if trace.awaiting_turn {
            trace.awaiting_turn = false;
            turns += 1;
            trace.apply(request.on_turn(NOW));
            envoy.pump(&mut request, &mut trace, config);
        }
        // A callout answers at the earliest after what came with the headers.
        let answered_at = match lookup {
            Lookup::Cached => None,
            Lookup::After(at) => Some(at.clamp(envoy.arrived, chunks.len())),
        };
        for position in envoy.arrived..=chunks.len() {
            if answered_at == Some(position) {
                trace.apply(request.on_identity(identity.clone(), config, NOW));
                envoy.lessons.extend(request.take_lesson());
                envoy.pump(&mut request, &mut trace, config);
            }
            if position < chunks.len() {
                envoy.arrived = position + 1;
                envoy.pump(&mut request, &mut trace, config);
            }
        }
        if !trace.headers_gone && trace.reply.is_none() {
            // Everything the client sent has come, and the request still waits: the
            // root's tick, once the turn's wait is over.
            trace.apply(request.on_tick(NOW + TURN_WAIT_S + 1));
            envoy.lessons.extend(request.take_lesson());
            envoy.pump(&mut request, &mut trace, config);
        }
        Ran {
            trace,
            turns,
            lessons: envoy.lessons,
        }
    }
}

/// The client's chunks as they reach Envoy, and what Envoy has handed the filter.
struct Arrivals<'a> {
    envoy: Envoy,
    chunks: &'a [&'a [u8]],
    /// Chunks that reached Envoy.
    arrived: usize,
    /// Chunks handed to the filter.
    delivered: usize,
    /// What the request taught its worker so far.
    lessons: Vec<bool>,
}

impl Arrivals<'_> {
    /// Hands the filter what Envoy would: each chunk as it comes while the filter may
    /// receive it; without the setting, what Envoy held comes all at once after the
    /// resume.
    fn pump(&mut self, request: &mut Request, trace: &mut Trace, config: &Config) {
        let may_receive = self.envoy == Envoy::StopIteration || trace.headers_gone;
        let nothing_new = self.delivered == self.arrived;
        if !may_receive || nothing_new || trace.reply.is_some() || trace.body_gone {
            return;
        }
        let chunks = &self.chunks[self.delivered..self.arrived];
        let held: Vec<Vec<u8>> = if self.envoy == Envoy::Istio && self.delivered == 0 {
            // Everything Envoy held during StopAllIterationAndWatermark, in one callback.
            vec![chunks.concat()]
        } else {
            chunks.iter().map(|c| c.to_vec()).collect()
        };
        self.delivered = self.arrived;
        let last = held.len().saturating_sub(1);
        for (i, chunk) in held.into_iter().enumerate() {
            let end = self.arrived == self.chunks.len() && i == last;
            trace.deliver(&chunk, end);
            let body = trace.body.clone();
            trace.apply(request.on_body(body.len(), end, config, || NOW, || Some(body)));
            self.lessons.extend(request.take_lesson());
            if trace.reply.is_some() || trace.body_gone {
                break;
            }
        }
    }
}

/// What the trace comes to, in `decide`'s terms.
fn outcome(trace: &Trace) -> Decision {
    match &trace.reply {
        Some(Reply::Refusal(refusal)) => Decision::Refuse(refusal.clone()),
        Some(Reply::Answer(answer)) => Decision::Answer(answer),
        None => Decision::Forward(Forwarded {
            path: trace.path.clone(),
            body: None,
            response: None,
        }),
    }
}

/// The pairs of a query string (after any `?`) or a form body, decoded.
pub(crate) fn params(text: &str) -> Vec<(String, String)> {
    let query = text.split_once('?').map_or(text, |(_, q)| q);
    Params::parse(query)
        .unwrap()
        .pairs()
        .iter()
        .map(|p| (p.name().to_string(), p.value().to_string()))
        .collect()
}

pub(crate) fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

const GRAFANA: &[u8] = b"query=rate(http_requests_total%5B5m%5D)&start=1&end=2&step=15";
/// [`GRAFANA`] as a client may send it, in three chunks.
const GRAFANA_IN_THREE: [&[u8]; 3] = [
    GRAFANA.split_at(10).0,
    GRAFANA.split_at(30).0.split_at(10).1,
    GRAFANA.split_at(30).1,
];

/// [`post`] with the `Content-Length` of [`GRAFANA`].
fn post_with_length<'a>(path: &'a str) -> RequestHead<'a> {
    RequestHead {
        content_length: Some(b"61"),
        ..post(path, Some(FORM))
    }
}

fn grafana_body_rewritten(trace: &Trace) {
    assert!(trace.reply.is_none(), "{:?}", trace.reply);
    assert!(trace.headers_gone && trace.body_gone);
    // Trace checks the length against the body as it goes on; here, that the client's
    // length never goes on with the rewritten body.
    assert_ne!(trace.length, Length::Client);
    assert_eq!(trace.path, None, "nothing to change in the URL");
    assert_eq!(
        params(std::str::from_utf8(&trace.body).unwrap()),
        owned(&[
            (
                "query",
                r#"rate(http_requests_total{client_id="1999"}[5m])"#
            ),
            ("start", "1"),
            ("end", "2"),
            ("step", "15"),
        ])
    );
    assert_eq!(trace.counted, vec![Counter::Allowed]);
}

#[test]
fn a_get_with_a_cached_identity_goes_on_from_its_headers() {
    let c = config("");
    let mut request = Request::new();
    let step = request.on_headers(&get("/api/v1/query?query=up"), &c, NOW, |_| Some(alice()));
    assert!(step.release);
    assert_eq!(
        step.effects,
        vec![
            Effect::StripHeaders,
            Effect::SetPath("/api/v1/query?query=up%7Bclient_id%3D%221999%22%7D".into()),
            Effect::Count(Counter::Allowed),
        ]
    );
    assert!(request.is_forwarded());
}

#[test]
fn grafanas_post_form_is_rewritten_in_every_order_and_either_envoy() {
    let c = config("");
    assert_eq!(GRAFANA.len(), 61);
    let chunked = post("/api/v1/query_range", Some(FORM));
    let with_length = post_with_length("/api/v1/query_range");
    let split = GRAFANA_IN_THREE;
    for head in [&chunked, &with_length] {
        for envoy in [Envoy::StopIteration, Envoy::Istio] {
            for lookup in [
                Lookup::Cached,
                Lookup::After(0),
                Lookup::After(1),
                Lookup::After(3),
            ] {
                for first_read in 0..=3 {
                    let trace = drive(envoy, head, &split, first_read, lookup, alice(), &c);
                    grafana_body_rewritten(&trace);
                    // A body judged while its headers are held goes on with them and
                    // its exact length, where the client gave one; that happens only
                    // where Envoy hands bodies to held requests, and in some orders.
                    let expected = match head.content_length {
                        Some(_) if trace.together => Length::Set(trace.body.len()),
                        _ => Length::Absent,
                    };
                    let case = format!("{envoy:?} {lookup:?} {first_read}");
                    assert_eq!(trace.length, expected, "{case}");
                    // Only where no byte of the body had reached Envoy when the
                    // headers could go do they go alone.
                    let alone =
                        first_read == 0 && matches!(lookup, Lookup::Cached | Lookup::After(0));
                    assert_eq!(
                        trace.together,
                        envoy == Envoy::StopIteration && !alone,
                        "{case}"
                    );
                }
            }
        }
    }
}

#[test]
fn with_the_setting_a_body_that_came_with_the_headers_goes_on_with_them() {
    // A cached token: the headers wait one turn, in which Envoy hands over the body;
    // both go on together once it is judged.
    let c = config("");
    let head = post_with_length("/api/v1/query_range");
    let mut request = Request::new();
    let step = request.on_headers(&head, &c, NOW, |_| Some(alice()));
    assert!(!step.release);
    assert_eq!(step.effects, vec![Effect::StripHeaders, Effect::AwaitTurn]);
    let step = request.on_body(GRAFANA.len(), true, &c, || NOW, || Some(GRAFANA.to_vec()));
    assert!(step.release, "Continue from the body callback sends both");
    let Effect::ReplaceBody { len, body } = &step.effects[1] else {
        panic!("{step:?}");
    };
    assert_eq!(*len, GRAFANA.len());
    assert_eq!(step.effects[0], Effect::SetContentLength(body.len()));
    // The turn that follows changes nothing.
    assert_eq!(request.on_turn(NOW), Step::default());
}

#[test]
fn a_body_that_comes_whole_never_reads_the_clock() {
    // Only a body still arriving starts the stall timer; each read of the clock is a
    // call into the host. Whole, in every state a body can meet: held for a turn, held
    // for the identity, and after the headers went on.
    let c = config("");
    let whole = || Some(GRAFANA.to_vec());
    let no_clock = || -> u64 { panic!("the clock was read for a whole body") };
    let (_, mut turning) = cached_post("/api/v1/query_range");
    assert!(
        turning
            .on_body(GRAFANA.len(), true, &c, no_clock, whole)
            .release
    );
    let mut identifying = Request::new();
    identifying.on_headers(&post_with_length("/api/v1/query_range"), &c, NOW, |_| None);
    identifying.on_body(GRAFANA.len(), true, &c, no_clock, whole);
    assert!(identifying.on_identity(alice(), &c, NOW).release);
    let (_, mut streaming) = cached_post("/api/v1/query_range");
    streaming.on_turn(NOW);
    assert!(
        streaming
            .on_body(GRAFANA.len(), true, &c, no_clock, whole)
            .release
    );
    // Part of a body: the timer starts.
    let (_, mut arriving) = cached_post("/api/v1/query_range");
    let mut read = false;
    arriving.on_body(
        10,
        false,
        &c,
        || {
            read = true;
            NOW
        },
        || None,
    );
    assert!(read);
}

#[test]
fn without_the_setting_the_headers_go_on_after_one_turn() {
    let (c, mut request) = cached_post("/api/v1/query_range");
    assert_eq!(request.on_turn(NOW), Step::release(Vec::new()));
    let step = request.on_body(GRAFANA.len(), true, &c, || NOW, || Some(GRAFANA.to_vec()));
    assert!(step.release);
    assert!(request.is_forwarded());
    // The client's Content-Length leaves with the turn: the body may change length.
    let mut request = Request::new();
    request.on_headers(&post_with_length("/api/v1/query_range"), &c, NOW, |_| {
        Some(alice())
    });
    assert_eq!(
        request.on_turn(NOW),
        Step::release(vec![Effect::RemoveHeader("content-length")])
    );
    let step = request.on_body(GRAFANA.len(), true, &c, || NOW, || Some(GRAFANA.to_vec()));
    assert!(!step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::SetContentLength(_))));
}

#[test]
fn a_worker_that_knows_skips_the_turn_in_every_order_and_either_envoy() {
    // Knowing that Envoy hands bodies to held requests, a cached-token POST asks for no
    // turn. Where the knowledge is wrong (a listener without the setting sharing the
    // worker), the root's tick lets the headers go after the turn's wait, and the
    // worker unlearns; the body is judged either way.
    let c = config("");
    let head = post("/api/v1/query_range", Some(FORM));
    let split = GRAFANA_IN_THREE;
    for envoy in [Envoy::StopIteration, Envoy::Istio] {
        for first_read in 0..=3 {
            let run = Run {
                envoy,
                chunks: &split,
                first_read,
                lookup: Lookup::Cached,
                knowing: true,
            };
            let ran = run.drive(&head, alice(), &c);
            grafana_body_rewritten(&ran.trace);
            assert_eq!(ran.turns, 0);
            let taught = match envoy {
                Envoy::StopIteration => vec![true; ran.lessons.len().max(1)],
                Envoy::Istio => vec![false],
            };
            assert_eq!(ran.lessons, taught, "{envoy:?}, {first_read} chunks first");
        }
    }
}

#[test]
fn only_an_envoy_that_hands_bodies_over_teaches_the_worker_to_skip_turns() {
    // Without the setting no body ever reaches a held request, so a worker there never
    // learns to skip a turn it needs.
    let c = config("");
    let head = post("/api/v1/query_range", Some(FORM));
    let split = GRAFANA_IN_THREE;
    let mut taught_somewhere = false;
    for envoy in [Envoy::StopIteration, Envoy::Istio] {
        for lookup in [Lookup::Cached, Lookup::After(0), Lookup::After(3)] {
            for first_read in 0..=3 {
                let run = Run {
                    envoy,
                    chunks: &split,
                    first_read,
                    lookup,
                    knowing: false,
                };
                let ran = run.drive(&head, alice(), &c);
                grafana_body_rewritten(&ran.trace);
                let expected = usize::from(lookup == Lookup::Cached);
                assert_eq!(ran.turns, expected, "{envoy:?} {lookup:?} {first_read}");
                match envoy {
                    Envoy::Istio => assert!(ran.lessons.is_empty(), "{lookup:?} {first_read}"),
                    Envoy::StopIteration => {
                        assert!(ran.lessons.iter().all(|&l| l));
                        taught_somewhere |= !ran.lessons.is_empty();
                    }
                }
            }
        }
    }
    assert!(taught_somewhere);
}

#[test]
fn a_request_that_knows_but_has_no_body_to_wait_for_still_takes_its_turn() {
    // Only a body still to come makes the turn useless; the skip is for that case alone.
    let c = config("");
    let mut request = Request::knowing(true);
    let step = request.on_headers(&get("/api/v1/query?query=up"), &c, NOW, |_| Some(alice()));
    assert!(step.release);
    assert_eq!(request.take_lesson(), None);
}

#[test]
fn with_the_setting_a_partial_body_is_never_let_through_with_the_headers() {
    // Found in real Envoy: resuming the headers while part of the body sits in the
    // filter's buffer sends that part on unjudged. The machine holds the headers until
    // the body is complete instead.
    let c = config("");
    let head = post("/api/v1/query", Some(FORM));
    let mut request = Request::new();
    request.on_headers(&head, &c, NOW, |_| None);
    assert_eq!(
        request.on_body(6, false, &c, || NOW, || None),
        Step::default()
    );
    let step = request.on_identity(alice(), &c, NOW);
    assert!(!step.release, "{step:?}");
    let body = b"query=up".to_vec();
    let step = request.on_body(body.len(), true, &c, || NOW, || Some(body.clone()));
    assert!(step.release);
    // And a body complete before the identity goes on with the headers, judged.
    let mut request = Request::new();
    request.on_headers(&head, &c, NOW, |_| None);
    request.on_body(body.len(), true, &c, || NOW, || Some(body.clone()));
    let step = request.on_identity(alice(), &c, NOW);
    assert!(step.release);
    assert!(step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::ReplaceBody { .. })));
}

#[test]
fn a_refused_body_opens_no_backend_request_when_envoy_hands_it_over_held() {
    let c = config("");
    let head = post("/api/v1/query", Some(FORM));
    let bad: &[&[u8]] = &[b"query=sum("];
    for lookup in [Lookup::Cached, Lookup::After(1)] {
        let trace = drive(Envoy::StopIteration, &head, bad, 1, lookup, alice(), &c);
        assert!(matches!(&trace.reply, Some(Reply::Refusal(r)) if r.status == 400));
        assert!(!trace.headers_gone, "{lookup:?}");
        assert_eq!(
            trace.counted,
            vec![Counter::Denied, Counter::BadQuery],
            "{lookup:?}"
        );
    }
    // Without the setting the headers went on first: Envoy resets that request, and
    // the backend never sees a byte of the body.
    let trace = drive(Envoy::Istio, &head, bad, 1, Lookup::Cached, alice(), &c);
    assert!(matches!(&trace.reply, Some(Reply::Refusal(r)) if r.status == 400));
    assert!(trace.headers_gone && !trace.body_gone);
}

#[test]
fn a_body_over_the_limit_is_refused_while_the_identity_is_looked_up() {
    let c = config(r#","max_body_bytes":10"#);
    let head = post("/api/v1/query", Some(FORM));
    let mut request = Request::new();
    let step = request.on_headers(&head, &c, NOW, |_| None);
    assert!(!step.release);
    let step = request.on_body(11, false, &c, || NOW, || None);
    assert!(
        matches!(&step.effects[..], [.., Effect::Respond(Reply::Refusal(r))] if r.status == 413)
    );
    // The identity that comes later changes nothing.
    assert_eq!(request.on_identity(alice(), &c, NOW), Step::default());
    assert!(request.is_answered());
}

#[test]
fn identity_refusals_and_local_answers_come_before_any_body() {
    let c = config("");
    let head = post("/api/v1/query", Some(FORM));
    let body: &[&[u8]] = &[b"query=up"];
    for envoy in [Envoy::StopIteration, Envoy::Istio] {
        let unknown = Identity::Unauthorized("the identity provider rejected the token".into());
        let trace = drive(envoy, &head, body, 0, Lookup::After(0), unknown, &c);
        assert!(matches!(&trace.reply, Some(Reply::Refusal(r)) if r.status == 401));
        assert!(!trace.headers_gone);
        let trace = drive(
            envoy,
            &post("/api/v1/metadata", Some(FORM)),
            body,
            0,
            Lookup::Cached,
            alice(),
            &c,
        );
        assert_eq!(trace.reply, Some(Reply::Answer(METADATA_ANSWER)));
    }
    // A verified JWT needs no lookup at all.
    let jwt = Config::parse(
        br#"{"tenant_label":"client_id","identity":{"source":"jwt_payload_header","claim":"client_id"}}"#,
    )
    .unwrap();
    let head = RequestHead {
        credential: Some(b"eyJjbGllbnRfaWQiOiI5In0"), // {"client_id":"9"}
        ..get("/api/v1/metadata")
    };
    let mut request = Request::new();
    let step = request.on_headers(&head, &jwt, NOW, |_| panic!("no lookup for a JWT"));
    assert_eq!(
        step.effects[1],
        Effect::Respond(Reply::Answer(METADATA_ANSWER))
    );
}

#[test]
fn a_selector_endpoint_gets_the_tenant_selector_where_the_backend_reads_it() {
    let c = config("");
    // A POST form without any match[]: the body carries the tenant's selector.
    let head = post("/api/v1/series", Some(FORM));
    for envoy in [Envoy::StopIteration, Envoy::Istio] {
        let trace = drive(envoy, &head, &[b"start=1"], 1, Lookup::Cached, alice(), &c);
        assert_eq!(trace.path, None);
        assert_eq!(
            params(std::str::from_utf8(&trace.body).unwrap()),
            owned(&[("start", "1"), ("match[]", r#"{client_id="1999"}"#)])
        );
        // An empty form body too.
        let trace = drive(envoy, &head, &[b""], 1, Lookup::Cached, alice(), &c);
        assert_eq!(
            params(std::str::from_utf8(&trace.body).unwrap()),
            owned(&[("match[]", r#"{client_id="1999"}"#)])
        );
    }
    // No form type: the backend reads no body, so the URL carries it.
    let trace = drive(
        Envoy::Istio,
        &post("/api/v1/series", None),
        &[b""],
        0,
        Lookup::Cached,
        alice(),
        &c,
    );
    assert_eq!(
        params(trace.path.as_deref().unwrap()),
        owned(&[("match[]", r#"{client_id="1999"}"#)])
    );
    assert!(trace.body.is_empty());
}

#[test]
fn trailers_unreadable_bodies_and_stalls_are_refused() {
    let (c, mut request) = cached_post("/api/v1/query");
    request.on_turn(NOW);
    request.on_body(8, false, &c, || NOW, || None);
    let step = request.on_trailers();
    assert!(
        matches!(&step.effects[..], [.., Effect::Respond(Reply::Refusal(r))] if r.status == 400)
    );

    let (c, mut request) = cached_post("/api/v1/query");
    let step = request.on_body(8, true, &c, || NOW, || None);
    assert!(
        matches!(&step.effects[..], [.., Effect::Respond(Reply::Refusal(r))] if r.status == 503)
    );

    // A body that stops coming is refused after BODY_STALL_S; a turn that never comes
    // is taken after a second.
    let (c, mut request) = cached_post("/api/v1/query");
    assert_eq!(request.on_tick(NOW + 1), Step::default());
    assert_eq!(request.on_tick(NOW + 2), Step::release(Vec::new()));
    request.on_body(4, false, &c, || NOW + 3, || None);
    assert_eq!(request.on_tick(NOW + 3 + BODY_STALL_S), Step::default());
    let step = request.on_tick(NOW + 4 + BODY_STALL_S);
    assert!(
        matches!(&step.effects[..], [.., Effect::Respond(Reply::Refusal(r))]
        if r.status == 408 && r.error_type.as_str() == "timeout")
    );
}

#[test]
fn a_get_that_declares_a_body_is_refused_at_its_headers() {
    let c = config("");
    let head = RequestHead {
        content_type: Some(FORM),
        content_length: Some(b"8"),
        end_of_stream: false,
        ..get("/api/v1/labels")
    };
    let mut request = Request::new();
    let step = request.on_headers(&head, &c, NOW, |_| panic!("refused before any lookup"));
    assert!(
        matches!(&step.effects[..], [.., Effect::Respond(Reply::Refusal(r))] if r.status == 400)
    );
}

fn arbitrary_body() -> impl proptest::strategy::Strategy<Value = String> {
    proptest::prop_oneof![
        proptest::strategy::Just(String::new()),
        proptest::strategy::Just("query=up".to_string()),
        proptest::strategy::Just("match[]=up&start=1".to_string()),
        proptest::strategy::Just("query=sum(&x=1".to_string()),
        proptest::strategy::Just("extra_label=client_id%3D2000&query=a".to_string()),
        "[a-z=&\\[\\]%0-9()]{0,24}",
    ]
}

proptest::proptest! {
    /// Whatever Envoy does, in whatever order the body and the identity come, the
    /// request ends as `decide` says, nothing touches the headers after they went on,
    /// and no part of the body goes on unjudged.
    #[test]
    fn every_order_ends_as_decide_says(
        istio in proptest::bool::ANY,
        method in proptest::prop_oneof![proptest::strategy::Just("GET"), proptest::strategy::Just("POST")],
        path in proptest::prop_oneof![
            proptest::strategy::Just("/api/v1/query"),
            proptest::strategy::Just("/api/v1/query?query=up"),
            proptest::strategy::Just("/api/v1/series"),
            proptest::strategy::Just("/api/v1/series?match[]=up"),
            proptest::strategy::Just("/api/v1/rules"),
            proptest::strategy::Just("/api/v1/status/buildinfo"),
        ],
        form in proptest::bool::ANY,
        body in proptest::option::of(arbitrary_body()),
        cuts in proptest::collection::vec(0usize..24, 0..3),
        first_read in 0usize..4,
        lookup in proptest::option::of(0usize..4),
        identity in 0u8..4,
    ) {
        let c = config(r#","max_body_bytes":20"#);
        let head = RequestHead {
            method: method.as_bytes(),
            path: path.as_bytes(),
            content_type: form.then_some(FORM),
            credential: Some(b"Bearer tok"),
            end_of_stream: body.is_none(),
            ..RequestHead::default()
        };
        let bytes = body.clone().unwrap_or_default().into_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        if body.is_some() {
            let mut at = 0;
            for cut in cuts {
                chunks.push(&bytes[at..cut]);
                at = cut;
            }
            chunks.push(&bytes[at..]);
        }
        let identity = match identity {
            0 | 1 => alice(),
            2 => Identity::Forbidden("no claim".into()),
            _ => Identity::Unavailable("down".into()),
        };
        let lookup = lookup.map_or(Lookup::Cached, |at| Lookup::After(at.min(chunks.len())));
        let envoy = if istio { Envoy::Istio } else { Envoy::StopIteration };
        let trace = drive(envoy, &head, &chunks, first_read, lookup, identity.clone(), &c);
        let expected = decide(&head, body.as_deref().map(str::as_bytes), identity, &c);
        match (&expected, outcome(&trace)) {
            (Decision::Forward(want), Decision::Forward(got)) => {
                proptest::prop_assert_eq!(&want.path, &got.path);
                if body.is_some() {
                    proptest::prop_assert!(trace.body_gone, "the body never went on");
                    let want_body = want.body.clone().unwrap_or(bytes.clone());
                    proptest::prop_assert_eq!(&want_body, &trace.body);
                }
                proptest::prop_assert!(trace.headers_gone);
            }
            // A body over the limit may be refused before the identity is judged.
            (_, Decision::Refuse(got)) if got.status == 413 && bytes.len() > c.max_body_bytes => {}
            (want, got) => proptest::prop_assert_eq!(want, &got),
        }
        // Whatever was refused while Envoy held the headers never opened a request.
        if trace.reply.is_some() && envoy == Envoy::StopIteration && first_read >= chunks.len() {
            proptest::prop_assert!(!trace.headers_gone);
        }
    }
}

#[test]
fn a_write_is_decided_at_its_headers_and_its_body_streams_unread() {
    let c = config(r#","writes":"victoriametrics","max_body_bytes":16"#);
    let head = RequestHead {
        content_type: Some(b"application/x-protobuf"),
        content_encoding: Some(b"snappy"),
        ..post("/api/v1/write?extra_label=client_id=2000", None)
    };
    let chunks: &[&[u8]] = &[&[0xff; 20], &[0; 20], b"end"];
    let written = |trace: &Trace| -> usize {
        trace
            .counted
            .iter()
            .map(|c| match c {
                Counter::WriteBytes(n) => *n,
                _ => 0,
            })
            .sum()
    };
    for envoy in [Envoy::StopIteration, Envoy::Istio] {
        for lookup in [
            Lookup::Cached,
            Lookup::After(0),
            Lookup::After(2),
            Lookup::After(3),
        ] {
            let trace = drive(envoy, &head, chunks, 1, lookup, alice(), &c);
            let case = format!("{envoy:?} {lookup:?}: {trace:?}");
            assert_eq!(trace.reply, None, "{case}");
            assert_eq!(
                trace.path.as_deref(),
                Some("/api/v1/write?extra_label=client_id%3D1999"),
                "{case}"
            );
            // Larger than max_body_bytes, and not a form: neither matters to a write.
            assert!(trace.body_gone && trace.length == Length::Absent, "{case}");
            assert_eq!(trace.sent, chunks.concat(), "{case}");
            assert_eq!(written(&trace), 43, "{case}");
            assert!(trace.counted.contains(&Counter::WriteAllowed), "{case}");
        }
    }
    // Several tenants: which one would the data belong to? Refused, counted as a write,
    // and nothing of it goes on.
    let both = Identity::Tenants(vec!["1999".into(), "2000".into()].into());
    let trace = drive(
        Envoy::StopIteration,
        &head,
        chunks,
        1,
        Lookup::After(2),
        both,
        &c,
    );
    assert!(matches!(&trace.reply, Some(Reply::Refusal(r)) if r.status == 403));
    assert!(!trace.headers_gone && trace.sent.is_empty());
    assert!(trace.counted.contains(&Counter::WriteDenied));
    assert_eq!(written(&trace), 0);
    // Writes denied (the default): refused at the headers, counted as a write too.
    let trace = drive(
        Envoy::Istio,
        &head,
        chunks,
        1,
        Lookup::Cached,
        alice(),
        &config(""),
    );
    assert!(matches!(&trace.reply, Some(Reply::Refusal(r)) if r.status == 403));
    assert!(trace.counted.contains(&Counter::WriteDenied));
}

#[test]
fn a_rules_answer_is_filtered_even_before_the_request_body_has_gone_on() {
    // A GET whose headers did not end the stream: without the setting its headers go on
    // after a turn, and the rule engine may answer before the (empty) body has ended.
    let c = config("");
    let head = RequestHead {
        end_of_stream: false,
        ..get("/api/v1/rules")
    };
    let mut request = Request::new();
    let mut trace = Trace::new(&head);
    trace.apply(request.on_headers(&head, &c, NOW, |_| Some(alice())));
    assert!(trace.awaiting_turn);
    trace.apply(request.on_turn(NOW));
    assert!(trace.headers_gone && !trace.body_gone);
    let step = request.on_response_headers(Some(b"200"), None, None, false);
    assert!(step.is_some(), "the engine's answer passed unfiltered");
    // A request the filter answered itself: its own reply passes as it is.
    let mut refused = Request::new();
    refused.on_headers(&get("/api/v1/rules"), &c, NOW, |_| {
        Some(Identity::Forbidden("no tenant".into()))
    });
    assert!(refused.is_answered());
    assert_eq!(
        refused.on_response_headers(Some(b"403"), None, None, true),
        None
    );
}
