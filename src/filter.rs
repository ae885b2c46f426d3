//! The binding to the proxy-wasm host: the only module that imports `proxy_wasm`.
//!
//! It reads what the host has (always through the `*_bytes` getters, since the `String`
//! ones panic on non-UTF-8), hands it to the sans-IO core ([`crate::lifecycle`] for each
//! request, [`crate::flight`] for the identity lookups), and applies what comes back.
//!
//! Host behaviour this module relies on (Envoy 1.40; docs/request-lifecycle.md):
//! - `resume_http_request` and `send_http_response` are deferred by Envoy until the VM
//!   call returns, so calling them for another context (after `set_effective_context`)
//!   cannot re-enter the SDK's dispatcher. Resuming clears Envoy's pointer to the
//!   headers at once, so every edit is applied before the resume.
//! - A body buffered with `Pause` stays readable and replaceable from another callback
//!   until the request goes on.
//! - Envoy posts a shared-queue item to the registering root context on the worker's
//!   event loop, after the read that is being dispatched: that is a request's turn.
//! - Envoy runs every callout on the root context, but the SDK routes its response to
//!   the context that dispatched it and drops it if that context is gone
//!   ([`crate::flight`] deals with that).
//! - A response body buffered with `Pause` is replaceable until it goes on; the
//!   response headers only until the headers callback returns ([`crate::response`]).

use crate::api::{Refusal, STRIPPED_HEADERS};
use crate::config::{Config, EngineTimingConfig, IdentitySource, DEBUG_TRAP_HEADER};
use crate::decision::{self, RequestHead};
use crate::flight::{self, CasMismatch, Command, Flights, SharedData};
use crate::header_map::HeaderMap;
use crate::identity::{self, Identity};
use crate::lifecycle::{Counter, Effect, Reply, Request, Step};
use crate::response::{ResponseEffect, ResponseStep};
use crate::TenantMatcher;
use log::{debug, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    // Envoy filters by its own `wasm` log level; per-request lines are at debug.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(FilterRoot { context_id, worker: None })
    });
}}

/// Envoy's counters, by id, in the order of [`COUNTERS`].
struct Metrics([u32; COUNTERS.len()]);

const COUNTERS: [&str; 11] = [
    "requests_allowed",
    "requests_denied",
    "bad_queries",
    "userinfo_calls",
    "cache_hits",
    "cache_misses",
    "idp_errors",
    "userinfo_remote_waits",
    "writes_allowed",
    "writes_denied",
    "write_bytes",
];

fn define_metric(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, &format!("promql_tenant_filter.{name}")).unwrap_or(0)
}

impl Metrics {
    fn define() -> Metrics {
        Metrics(COUNTERS.map(|name| define_metric(MetricType::Counter, name)))
    }

    fn bump(&self, index: usize) {
        self.add(index, 1);
    }

    fn add(&self, index: usize, by: usize) {
        // Counting must never take a request down with it.
        if let Some(&id) = self.0.get(index) {
            let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    fn request(&self, counter: Counter) {
        match counter {
            Counter::Allowed => self.bump(0),
            Counter::Denied => self.bump(1),
            Counter::BadQuery => self.bump(2),
            Counter::WriteAllowed => self.bump(8),
            Counter::WriteDenied => self.bump(9),
            Counter::WriteBytes(bytes) => self.add(10, bytes),
        }
    }

    fn lookup(&self, metric: flight::Metric) {
        self.bump(match metric {
            flight::Metric::UserinfoCall => 3,
            flight::Metric::CacheHit => 4,
            flight::Metric::CacheMiss => 5,
            flight::Metric::IdpError => 6,
            flight::Metric::RemoteWait => 7,
        });
    }
}

/// Gauges of what the filter holds, summed over Envoy's workers. Envoy reports no
/// memory figure for a Wasm VM, and every worker runs its own VM under the same metric
/// names, so each worker adds the change since its last report: the gauge is the total.
struct Footprint {
    /// Linear memory in bytes (the VM's whole heap), and first-level cache entries.
    ids: [u32; 2],
    reported: Cell<[i64; 2]>,
    reported_at_s: Cell<u64>,
}

impl Footprint {
    fn define() -> Footprint {
        Footprint {
            ids: ["wasm_memory_bytes", "local_cache_entries"]
                .map(|name| define_metric(MetricType::Gauge, name)),
            reported: Cell::new([0, 0]),
            reported_at_s: Cell::new(0),
        }
    }

    /// Reports this worker's figures, at most once a second (the tick can be faster).
    fn report(&self, local_cache_entries: usize, now: u64) {
        if now != self.reported_at_s.replace(now) {
            let entries = i64::try_from(local_cache_entries).unwrap_or(i64::MAX);
            self.set([linear_memory_bytes(), entries]);
        }
    }

    /// Takes this worker's share back out, when its plugin configuration goes away.
    fn withdraw(&self) {
        self.set([0, 0]);
    }

    fn set(&self, values: [i64; 2]) {
        let old = self.reported.replace(values);
        for ((id, new), old) in self.ids.iter().zip(values).zip(old) {
            if new != old {
                let _ = hostcalls::increment_metric(*id, new - old);
            }
        }
    }
}

/// Size of this VM's linear memory, in bytes.
fn linear_memory_bytes() -> i64 {
    #[cfg(target_arch = "wasm32")]
    {
        const WASM_PAGE_BYTES: i64 = 65_536;
        i64::try_from(core::arch::wasm32::memory_size(0)).unwrap_or(0) * WASM_PAGE_BYTES
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// The host's wall clock since the epoch; zero if the host has none.
fn host_time() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn now_s() -> u64 {
    host_time().as_secs()
}

/// The identity cache and its flights count in milliseconds.
fn now_ms() -> u64 {
    millis(host_time())
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// Envoy's shared data, for the flight protocol.
struct HostShared;

impl SharedData for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }
}

/// Where the current host callback runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Callback {
    /// A stream callback of this context: its return value lets the request go on.
    Stream(u32),
    /// Anything else (a callout response, the tick, a queue): a resume does.
    Other(u32),
}

impl Callback {
    fn context(self) -> u32 {
        match self {
            Callback::Stream(id) | Callback::Other(id) => id,
        }
    }
}

type Shared<T> = Rc<RefCell<T>>;

/// Maps keyed by the host's context and callout ids, which Envoy hands out in sequence:
/// no client chooses them, so they need no keyed hash. SipHash, the default, cost about
/// a thousand instructions of every request, for the lookups in `requests` alone.
type ById<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one id: the multiply spreads sequential ids over the high bits
/// hashbrown keeps in its control bytes, and keeps the low bits it indexes by distinct.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Everything one plugin configuration shares between its contexts on one worker.
struct Worker {
    config: Config,
    metrics: Metrics,
    footprint: Footprint,
    /// The `/userinfo` lookups; `None` with the `jwt_payload_header` source.
    flights: Option<RefCell<Flights>>,
    /// Live requests, so that other contexts' callbacks can move them on.
    requests: RefCell<ById<Shared<Request>>>,
    /// Callouts under way: callout id → the context that made it, and the bearer token.
    callouts: RefCell<ById<(u32, String)>>,
    /// This worker's queue, on which requests wait for their turn.
    turn_queue: Option<u32>,
    /// What this worker's requests showed last: Envoy hands body data to a request
    /// whose headers are held, so a new request need not wait a turn to find out
    /// ([`Request::knowing`]).
    held_bodies: Cell<bool>,
}

impl Worker {
    /// Carries out the flight protocol's commands. Returns whether the request of the
    /// stream callback `now_in` may go on, when one of them was about it.
    fn run_flights(&self, now_in: Callback) -> Option<bool> {
        let flights = self.flights.as_ref()?;
        let mut released = None;
        loop {
            let Some(command) = flights.borrow_mut().poll() else {
                return released;
            };
            match command {
                // Always from the callback of the caller it names.
                Command::Dispatch { token, .. } => match self.dispatch(&token) {
                    Ok(id) => {
                        self.callouts
                            .borrow_mut()
                            .insert(id, (now_in.context(), token));
                    }
                    Err(status) => {
                        warn!("identity callout failed to start: {status:?}");
                        flights
                            .borrow_mut()
                            .dispatch_failed(&mut HostShared, &token);
                    }
                },
                Command::Wake { context, identity } => {
                    let now = now_s();
                    let step =
                        self.with_request(context, |r| r.on_identity(identity, &self.config, now));
                    if let Some(step) = step {
                        let go = self.apply(context, step, now_in);
                        if now_in == Callback::Stream(context) {
                            released = Some(go);
                        }
                    }
                }
                Command::SetTick(period) => {
                    let _ = hostcalls::set_tick_period(period);
                }
                Command::Count(metric) => self.metrics.lookup(metric),
            }
        }
    }

    /// Starts the `/userinfo` callout for `token` from the current context.
    fn dispatch(&self, token: &str) -> Result<u32, Status> {
        let IdentitySource::Userinfo(config) = &self.config.identity.source else {
            return Err(Status::BadArgument);
        };
        let authorization = format!("Bearer {token}");
        let headers = vec![
            (":method", "GET"),
            (":path", config.path.as_str()),
            (":authority", config.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(config.timeout_ms);
        hostcalls::dispatch_http_call(&config.cluster, headers, None, vec![], timeout)
    }

    /// Reads a callout response for `token` and hands it to the flights. Must run
    /// before any `set_effective_context`: the response belongs to this callback.
    fn callout_done(&self, callout: u32, body_size: usize, now_in: Callback) -> Option<bool> {
        let (_, token) = self.callouts.borrow_mut().remove(&callout)?;
        let flights = self.flights.as_ref()?;
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = (body_size <= identity::MAX_CLAIMS_BYTES)
            .then(|| hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size))
            .and_then(|body| body.ok().flatten());
        let identity = match body {
            None if body_size > identity::MAX_CLAIMS_BYTES => {
                Identity::Unavailable("identity provider answer too large".into())
            }
            body => identity::classify_userinfo(
                status.as_deref(),
                body.as_deref(),
                &self.config.identity.claim,
            ),
        };
        if let Identity::Unavailable(why) = &identity {
            warn!("identity provider unavailable: {why}");
        }
        flights
            .borrow_mut()
            .callout_done(&mut HostShared, &token, identity, now_ms());
        self.run_flights(now_in)
    }

    fn with_request<R>(&self, context: u32, f: impl FnOnce(&mut Request) -> R) -> Option<R> {
        let request = self.requests.borrow().get(&context).cloned()?;
        let mut request = request.try_borrow_mut().ok()?;
        let result = f(&mut request);
        self.learn_from(&mut request);
        Some(result)
    }

    /// Takes what `request` showed of this Envoy ([`Request::take_lesson`]).
    fn learn_from(&self, request: &mut Request) {
        if let Some(held_bodies) = request.take_lesson() {
            if self.held_bodies.replace(held_bodies) && !held_bodies {
                info!(
                    "promql_tenant_filter: a request got no body while its headers were held; \
                     requests take a turn of the event loop again"
                );
            }
        }
    }

    /// Applies a step to request `context`, from the callback `now_in`: its effects, then
    /// its release, as a resume when `now_in` is not that request's stream callback.
    /// Returns whether the request goes on.
    fn apply(&self, context: u32, step: Step, now_in: Callback) -> bool {
        self.as_context(context, now_in, hostcalls::resume_http_request, || {
            self.apply_here(context, step)
        })
    }

    /// [`Worker::apply`], in the context of the request.
    fn apply_here(&self, context: u32, step: Step) -> bool {
        let mut go = step.release;
        for effect in step.effects {
            if effect == Effect::AwaitTurn {
                if !self.enqueue_turn(context, false) {
                    // No queue: the turn is now, and a body refused later has had its
                    // headers sent on (Envoy resets that request).
                    go |= self.with_request(context, |r| r.on_turn(now_s()).release) == Some(true);
                }
                continue;
            }
            if let Err(refusal) = self.effect(effect) {
                // A rewrite the host did not take would let the original through.
                let step = self
                    .with_request(context, |r| r.fail(refusal))
                    .unwrap_or_default();
                for effect in step.effects {
                    let _ = self.effect(effect);
                }
                go = false;
                break;
            }
        }
        go
    }

    /// Runs `apply` as request `context`, switching to it when `now_in` is another
    /// context's callback, and lets the stream go on with `resume` when `apply` says so
    /// outside the stream's own callback. Returns what `apply` said.
    fn as_context(
        &self,
        context: u32,
        now_in: Callback,
        resume: fn() -> Result<(), Status>,
        apply: impl FnOnce() -> bool,
    ) -> bool {
        let elsewhere = now_in.context() != context;
        if elsewhere && hostcalls::set_effective_context(context).is_err() {
            return false;
        }
        let go = apply();
        if go && now_in != Callback::Stream(context) {
            let _ = resume();
        }
        if elsewhere {
            let _ = hostcalls::set_effective_context(now_in.context());
        }
        go
    }

    fn effect(&self, effect: Effect) -> Result<(), Refusal> {
        let not_rewritten = |_| Refusal::unavailable("the request could not be rewritten");
        match effect {
            Effect::StripHeaders => {
                for name in STRIPPED_HEADERS {
                    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                        .map_err(not_rewritten)?;
                }
            }
            Effect::RemoveHeader(name) => {
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                    .map_err(not_rewritten)?;
            }
            Effect::SetContentLength(len) => {
                hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "content-length",
                    Some(len.to_string().as_bytes()),
                )
                .map_err(not_rewritten)?;
            }
            Effect::SetPath(path) => {
                hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    ":path",
                    Some(path.as_bytes()),
                )
                .map_err(not_rewritten)?;
            }
            Effect::ReplaceBody { len, body } => {
                hostcalls::set_buffer(BufferType::HttpRequestBody, 0, len, &body)
                    .map_err(not_rewritten)?;
            }
            Effect::Respond(reply) => respond(&reply),
            Effect::AwaitTurn | Effect::PassBodyUnread => {}
            Effect::Count(counter) => self.metrics.request(counter),
        }
        Ok(())
    }
}

/// A queue item: the request's context id, and this byte after it for the turn of its
/// response ([`crate::response`]) rather than of its request.
const RESPONSE_TURN: u8 = 1;

impl Worker {
    /// Puts a turn for `context` on this worker's queue; false when there is none.
    fn enqueue_turn(&self, context: u32, response: bool) -> bool {
        let mut item = context.to_le_bytes().to_vec();
        if response {
            item.push(RESPONSE_TURN);
        }
        let queued = self
            .turn_queue
            .map(|queue| hostcalls::enqueue_shared_queue(queue, Some(&item)));
        matches!(queued, Some(Ok(())))
    }

    /// Applies a response step to request `context` from the callback `now_in`, as
    /// [`Worker::apply`] does for the request. An edit the host does not take would let
    /// the engine's answer through as it is: the response is answered with 503 instead
    /// (Envoy resets the stream when its headers already went on). Returns whether the
    /// response goes on.
    fn apply_response(&self, context: u32, step: ResponseStep, now_in: Callback) -> bool {
        self.as_context(context, now_in, hostcalls::resume_http_response, || {
            self.apply_response_here(context, step)
        })
    }

    /// [`Worker::apply_response`], in the context of the request.
    fn apply_response_here(&self, context: u32, step: ResponseStep) -> bool {
        let mut go = step.release;
        for effect in step.effects {
            let written = match effect {
                ResponseEffect::SetHeader(name, value) => hostcalls::set_map_value_bytes(
                    MapType::HttpResponseHeaders,
                    name,
                    Some(value.as_bytes()),
                ),
                ResponseEffect::RemoveHeader(name) => {
                    hostcalls::remove_map_value(MapType::HttpResponseHeaders, name)
                }
                ResponseEffect::ReplaceBody { len, body } => {
                    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, len, &body)
                }
                ResponseEffect::Refuse(refusal) => {
                    respond(&Reply::Refusal(refusal));
                    go = false;
                    break;
                }
                ResponseEffect::AwaitTurn => {
                    if !self.enqueue_turn(context, true) {
                        // No queue: the turn is now.
                        let turn = self
                            .with_request(context, |r| r.answer().map(|a| a.on_turn()))
                            .flatten()
                            .unwrap_or_default();
                        go |= self.apply_response(context, turn, Callback::Stream(context));
                    }
                    Ok(())
                }
            };
            if written.is_err() {
                let refusal =
                    Refusal::unavailable("the rule engine's answer could not be filtered");
                respond(&Reply::Refusal(refusal));
                go = false;
                break;
            }
        }
        go
    }
}

fn respond(reply: &Reply) {
    let (status, headers, body) = match reply {
        Reply::Refusal(refusal) => {
            debug!(
                "promql_tenant_filter: refused {} {}: {}",
                refusal.status,
                refusal.error_type.as_str(),
                refusal.message
            );
            (u32::from(refusal.status), refusal.headers(), refusal.body())
        }
        Reply::Answer(body) => (
            200,
            vec![("content-type", "application/json")],
            body.as_bytes().to_vec(),
        ),
    };
    let _ = hostcalls::send_http_response(status, headers, Some(&body));
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Every request header, read from the host in one call ([`crate::header_map`]).
fn request_headers() -> Option<HeaderMap> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's exported
    // allocator (`proxy_on_memory_allocate`, a `Vec<u8>` with capacity `size`), or
    // null; it is taken back as that `Vec`, as the SDK does with its own answers.
    let serialized = unsafe {
        if proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
            != Status::Ok
        {
            return None;
        }
        if data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        }
    };
    HeaderMap::parse(serialized)
}

/// The root context: parses the configuration, ticks, gives requests their turn, and
/// makes the callouts of flights whose leader went away.
struct FilterRoot {
    context_id: u32,
    worker: Option<Rc<Worker>>,
}

impl Context for FilterRoot {
    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.footprint.withdraw();
        }
        true
    }

    fn on_http_call_response(&mut self, callout: u32, _: usize, body_size: usize, _: usize) {
        if let Some(worker) = &self.worker {
            worker.callout_done(callout, body_size, Callback::Other(self.context_id));
        }
    }
}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log::error!("promql_tenant_filter: {e}");
                return false;
            }
        };
        let owner = random_u64();
        let flights = match &config.identity.source {
            IdentitySource::Userinfo(userinfo) => {
                let flights = Flights::new(userinfo, &config.identity.claim, owner);
                flights.create_keys(&mut HostShared);
                Some(RefCell::new(flights))
            }
            IdentitySource::JwtPayloadHeader { .. } => None,
        };
        // One queue per worker: each worker's VM is a clone, so its random name tells
        // them apart, and a queue only ever calls the root that registered it.
        let turn_queue =
            hostcalls::register_shared_queue(&format!("promql_tenant_filter.turn.{owner:016x}"))
                .ok();
        if let Some(timing) = &config.debug_time_engine {
            time_engine_once(&config, timing);
        }
        if config.debug_trap_marker.is_some() {
            log::error!(
                "promql_tenant_filter: debug_trap_marker is set: a request carrying it in \
                 {DEBUG_TRAP_HEADER} traps this VM; never in production"
            );
        }
        if hostcalls::set_tick_period(flight::TICK).is_err() {
            warn!("promql_tenant_filter: could not set the tick period");
        }
        info!(
            "promql_tenant_filter: configured, tenant label {:?}",
            config.tenant_label
        );
        self.worker = Some(Rc::new(Worker {
            config,
            metrics: Metrics::define(),
            footprint: Footprint::define(),
            flights,
            requests: RefCell::new(ById::default()),
            callouts: RefCell::new(ById::default()),
            turn_queue,
            held_bodies: Cell::new(false),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_s();
        let here = Callback::Other(self.context_id);
        if let Some(flights) = &worker.flights {
            flights.borrow_mut().tick(&mut HostShared, now_ms());
            worker.run_flights(here);
        }
        let live: Vec<u32> = worker.requests.borrow().keys().copied().collect();
        for context in live {
            if let Some(step) = worker.with_request(context, |r| r.on_tick(now)) {
                if step != Step::default() {
                    worker.apply(context, step, here);
                }
            }
        }
        let entries = worker
            .flights
            .as_ref()
            .map_or(0, |f| f.borrow().local_entries());
        worker.footprint.report(entries, now);
    }

    fn on_queue_ready(&mut self, queue: u32) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let here = Callback::Other(self.context_id);
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue) {
            let (id, kind) = item.split_at(item.len().min(4));
            let Ok(context) = <[u8; 4]>::try_from(id).map(u32::from_le_bytes) else {
                continue;
            };
            if kind == [RESPONSE_TURN] {
                let turn = worker.with_request(context, |r| r.answer().map(|a| a.on_turn()));
                if let Some(Some(step)) = turn {
                    worker.apply_response(context, step, here);
                }
                continue;
            }
            let now = now_s();
            if let Some(step) = worker.with_request(context, |r| r.on_turn(now)) {
                worker.apply(context, step, here);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let held_bodies = self.worker.as_ref().is_some_and(|w| w.held_bodies.get());
        let request = Rc::new(RefCell::new(Request::knowing(held_bodies)));
        if let Some(worker) = &self.worker {
            worker
                .requests
                .borrow_mut()
                .insert(context_id, Rc::clone(&request));
        }
        Some(Box::new(FilterHttp {
            context_id,
            worker: self.worker.clone(),
            request,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: its callbacks, handed to its [`Request`].
struct FilterHttp {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    request: Shared<Request>,
}

impl FilterHttp {
    /// Runs one event on the request, applies its step, and says what the callback
    /// returns. With no configuration, the filter answers 503: it never lets a request
    /// through unfiltered.
    fn stream(&self, event: impl FnOnce(&Worker, &mut Request) -> Step) -> Action {
        let Some(worker) = &self.worker else {
            respond(&Reply::Refusal(Refusal::unavailable(
                "filter is not configured",
            )));
            return Action::Pause;
        };
        let Ok(step) = self.request.try_borrow_mut().map(|mut r| {
            let step = event(worker, &mut r);
            worker.learn_from(&mut r);
            step
        }) else {
            return Action::Pause;
        };
        let here = Callback::Stream(self.context_id);
        let mut go = worker.apply(self.context_id, step, here);
        if let Some(woken) = worker.run_flights(here) {
            go = woken;
        }
        if go {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

impl FilterHttp {
    /// Runs one response event on the request's answer stage and applies its step. No
    /// stage (any answer but rules and alerts, the filter's own replies): it passes.
    fn response_event(&self, event: impl FnOnce(&mut Request) -> Option<ResponseStep>) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        let step = match self.request.try_borrow_mut() {
            Ok(mut request) => event(&mut request),
            // Never expected; a held answer is safer than an unfiltered one.
            Err(_) => return Action::Pause,
        };
        let Some(step) = step else {
            return Action::Continue;
        };
        let here = Callback::Stream(self.context_id);
        if worker.apply_response(self.context_id, step, here) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

impl Context for FilterHttp {
    fn on_http_call_response(&mut self, callout: u32, _: usize, body_size: usize, _: usize) {
        if let Some(worker) = &self.worker {
            worker.callout_done(callout, body_size, Callback::Other(self.context_id));
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.requests.borrow_mut().remove(&self.context_id);
            // Its callouts' answers will never come: the SDK drops them.
            let context = self.context_id;
            worker
                .callouts
                .borrow_mut()
                .retain(|_, (from, _)| *from != context);
            if let Some(flights) = &worker.flights {
                flights
                    .borrow_mut()
                    .context_gone(&mut HostShared, self.context_id);
                worker.run_flights(Callback::Other(self.context_id));
            }
        }
        true
    }
}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let context = self.context_id;
        self.stream(|worker, request| {
            let config = &worker.config;
            let Some(headers) = request_headers() else {
                return request.fail(Refusal::unavailable(
                    "the request headers could not be read",
                ));
            };
            if config.is_debug_trap(headers.get(DEBUG_TRAP_HEADER)) {
                // `debug_trap_marker`: trap here, where a stack overflow once did.
                log::error!("promql_tenant_filter: debug_trap_marker received, trapping this VM");
                std::process::abort();
            }
            let head = RequestHead {
                method: headers.get(":method").unwrap_or_default(),
                path: headers.get(":path").unwrap_or_default(),
                content_type: headers.get("content-type"),
                content_encoding: headers.get("content-encoding"),
                content_length: headers.get("content-length"),
                credential: headers.get(decision::credential_header(config)),
                end_of_stream,
            };
            // One read of the clock for both: each is a call into the host.
            let time = host_time();
            let step = request.on_headers(&head, config, time.as_secs(), |token| {
                let flights = worker.flights.as_ref()?;
                flights
                    .borrow_mut()
                    .request(&mut HostShared, context, token, millis(time))
            });
            strip_what_is_there(step, &headers)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream(|worker, request| {
            request.on_body(body_size, end_of_stream, &worker.config, now_s, || {
                hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                    .ok()
                    .map(Option::unwrap_or_default)
            })
        })
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream(|_, request| request.on_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.response_event(|request| {
            if !request.filters_answer() {
                return None;
            }
            let header = |name| {
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                    .ok()
                    .flatten()
            };
            request.on_response_headers(
                header(":status").as_deref(),
                header("content-encoding").as_deref(),
                header("content-length").as_deref(),
                end_of_stream,
            )
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_event(|request| {
            let answer = request.answer()?;
            Some(answer.on_body(body_size, end_of_stream, || {
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .map(Option::unwrap_or_default)
            }))
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response_event(|request| Some(request.answer()?.on_trailers()))
    }
}

/// Narrows [`Effect::StripHeaders`] to the headers the request has: each removal is a
/// call into the host.
fn strip_what_is_there(mut step: Step, headers: &HeaderMap) -> Step {
    // In place: this runs for every request, and the headers are nearly always absent.
    while let Some(at) = step
        .effects
        .iter()
        .position(|effect| matches!(effect, Effect::StripHeaders))
    {
        let present = STRIPPED_HEADERS
            .iter()
            .filter(|name| headers.get(name).is_some())
            .map(|name| Effect::RemoveHeader(name));
        step.effects.splice(at..=at, present);
    }
    step
}

/// Runs the debug-only engine timing (see [`crate::timing`]) in one of the VMs, and
/// logs the result; the bench reads it from Envoy's log.
fn time_engine_once(config: &Config, timing: &EngineTimingConfig) {
    const RAN: &str = "promql_tenant_filter.debug_time_engine.ran";
    if !matches!(hostcalls::get_shared_data(RAN), Ok((None, None))) {
        return;
    }
    let _ = hostcalls::set_shared_data(RAN, Some(b"1"), None);
    let values = vec!["1999".to_string()];
    let Ok(tenant) = TenantMatcher::new(&config.tenant_label, &values) else {
        return;
    };
    let clock_ns = || u64::try_from(host_time().as_nanos()).unwrap_or(u64::MAX);
    warn!("promql_tenant_filter: debug_time_engine is set: timing the engine, not for production");
    let result = crate::timing::time_engine(
        &timing.queries,
        &tenant,
        config.on_conflict,
        config.dialect,
        timing.rounds,
        clock_ns,
    );
    info!(
        "promql_tenant_filter: debug_time_engine {}",
        result.to_json()
    );
}

/// A random number from the host (WASI `random_get`, behind std's hash seeds).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        // The low bits vary most; truncating is what is wanted here.
        host_time().as_nanos() as u64,
    );
    hasher.finish()
}

#[cfg(test)]
#[path = "filter_host_tests.rs"]
mod host_tests;
