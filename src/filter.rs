//! The binding to the proxy-wasm host: the only module that imports `proxy_wasm`.
//!
//! It stays thin. Each callback reads what the host has (always through the `*_bytes`
//! getters, since the `String` ones panic on non-UTF-8), hands it to the sans-IO core
//! ([`crate::decision`], [`crate::identity`], [`crate::cache`]), and applies the verdict.
//!
//! Host behaviour this module relies on (Envoy 1.40):
//! - Pausing in `on_http_request_headers` only keeps body callbacks coming when the
//!   plugin config sets `allow_on_headers_stop_iteration: true`; otherwise Envoy turns
//!   the pause into StopAll and a POST body would never reach the filter.
//! - `resume_http_request` and `send_http_response` are deferred by Envoy until the VM
//!   call returns, so calling them for another context (after
//!   `set_effective_context`) cannot re-enter the SDK's dispatcher. But resuming clears
//!   Envoy's header and body pointers at once, so all edits happen before resuming.
//! - Envoy runs every callout on the root context, but the SDK routes its response to
//!   the context that dispatched it, and silently drops it if that context is gone. A
//!   single-flight leader that disappears therefore leaves its waiters orphaned; the
//!   root context adopts them on its next tick and asks again from its own callback.
//! - The SDK's hostcall wrappers panic on unexpected host statuses; the filter only
//!   edits headers and bodies while Envoy still holds them, so none is expected.
//! - Response stage (rules and alerts, [`crate::rules`]): pausing the response headers
//!   holds them, and with `allow_on_headers_stop_iteration` the body callbacks still
//!   come; at the end of the body the held headers and the buffered body can both be
//!   rewritten before returning `Continue`.

use crate::api::{self, Plan, Refusal};
use crate::cache::{
    CacheEntry, CachePolicy, CachedIdentity, FlightClaim, Flights, Joined, LocalCache, FREE_FLIGHT,
};
use crate::config::{
    Config, EngineTimingConfig, IdentitySource, UserinfoConfig, DEBUG_TRAP_HEADER,
};
use crate::decision::{self, Caller, Decision, RequestHead};
use crate::identity::{self, UserinfoOutcome};
use crate::rules::{self, ResponseFilter};
use crate::TenantMatcher;
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    // Envoy filters by its own `wasm` log level; per-request lines are at debug.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(FilterRoot::new(context_id))
    });
}}

/// How often the root context looks for orphaned or stuck identity lookups.
const TICK: Duration = Duration::from_secs(1);
/// The tick while requests wait for an identity another worker is fetching: how long
/// past that worker's answer they may wait before this worker sees it in shared data.
const REMOTE_POLL: Duration = Duration::from_millis(10);
/// How long a held request may wait for its first body callback. Without
/// `allow_on_headers_stop_iteration` Envoy never delivers it; refusing beats hanging.
const BODY_WAIT_S: u64 = 10;

/// The Envoy counters, by id.
struct Metrics {
    requests_allowed: u32,
    requests_denied: u32,
    userinfo_calls: u32,
    cache_hits: u32,
    cache_misses: u32,
    idp_errors: u32,
    bad_queries: u32,
    remote_waits: u32,
    writes_allowed: u32,
    writes_denied: u32,
    write_bytes: u32,
}

impl Metrics {
    fn define() -> Metrics {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("promql_tenant_filter.{name}"))
                .unwrap_or(0)
        };
        Metrics {
            requests_allowed: counter("requests_allowed"),
            requests_denied: counter("requests_denied"),
            userinfo_calls: counter("userinfo_calls"),
            cache_hits: counter("cache_hits"),
            cache_misses: counter("cache_misses"),
            idp_errors: counter("idp_errors"),
            bad_queries: counter("bad_queries"),
            remote_waits: counter("userinfo_remote_waits"),
            writes_allowed: counter("writes_allowed"),
            writes_denied: counter("writes_denied"),
            write_bytes: counter("write_bytes"),
        }
    }

    fn bump(&self, id: u32) {
        self.add(id, 1);
    }

    fn add(&self, id: u32, by: usize) {
        // Counting must never take a request down with it.
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

/// Gauges of what the filter holds, summed over Envoy's workers. Envoy reports no
/// memory figure for a Wasm VM, and every worker runs its own VM under the same metric
/// names, so each worker adds the change since its last report: the gauge is the total.
struct Footprint {
    /// Bytes of linear memory (the VM's whole heap; it grows, never shrinks).
    memory_bytes: u32,
    /// Entries in the workers' first-level identity caches.
    local_cache_entries: u32,
    reported: Cell<(i64, i64)>,
    reported_at_s: Cell<u64>,
}

impl Footprint {
    fn define() -> Footprint {
        let gauge = |name: &str| {
            hostcalls::define_metric(MetricType::Gauge, &format!("promql_tenant_filter.{name}"))
                .unwrap_or(0)
        };
        Footprint {
            memory_bytes: gauge("wasm_memory_bytes"),
            local_cache_entries: gauge("local_cache_entries"),
            reported: Cell::new((0, 0)),
            reported_at_s: Cell::new(0),
        }
    }

    /// Reports this worker's figures, at most once a second (the tick can be faster).
    fn report(&self, local_cache_entries: usize, now: u64) {
        if now == self.reported_at_s.get() {
            return;
        }
        self.reported_at_s.set(now);
        let entries = i64::try_from(local_cache_entries).unwrap_or(i64::MAX);
        self.set((linear_memory_bytes(), entries));
    }

    /// Takes this worker's share back out, when its plugin configuration goes away.
    fn withdraw(&self) {
        self.set((0, 0));
    }

    fn set(&self, (memory, entries): (i64, i64)) {
        let (old_memory, old_entries) = self.reported.get();
        if memory != old_memory {
            let _ = hostcalls::increment_metric(self.memory_bytes, memory - old_memory);
        }
        if entries != old_entries {
            let _ = hostcalls::increment_metric(self.local_cache_entries, entries - old_entries);
        }
        self.reported.set((memory, entries));
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

/// The identity of a request once known: its tenants, or why it is refused.
#[derive(Debug, Clone)]
enum Resolution {
    Tenants(Vec<String>),
    Refuse(Refusal),
}

impl Resolution {
    fn from_cached(identity: &CachedIdentity) -> Resolution {
        match identity {
            CachedIdentity::Tenants(t) => Resolution::Tenants(t.clone()),
            CachedIdentity::NoTenant(why) => Resolution::Refuse(Refusal::forbidden(why.clone())),
            CachedIdentity::Rejected => Resolution::Refuse(Refusal::unauthorized(
                "the identity provider rejected the token",
            )),
            CachedIdentity::Failed(why) => Resolution::Refuse(Refusal::unavailable(why.clone())),
        }
    }

    fn from_outcome(outcome: &UserinfoOutcome) -> Resolution {
        Resolution::from_cached(&CachedIdentity::from_outcome(outcome))
    }
}

/// The `/userinfo` settings and cache of one plugin configuration on one worker.
struct Userinfo {
    config: UserinfoConfig,
    policy: CachePolicy,
    local: RefCell<LocalCache>,
    flights: RefCell<Flights>,
    /// This worker's name in [`FlightClaim`]s: random, since every worker's VM is a
    /// clone of the same module and knows nothing else that tells it apart.
    owner: u64,
    /// True while the root ticks at [`REMOTE_POLL`] rather than [`TICK`].
    polling_fast: Cell<bool>,
}

/// What taking a token's flight claim came to.
enum Claim {
    /// This worker calls the IdP.
    Mine,
    /// Another worker is calling for this token (or for another token in the same
    /// flight key): wait for its answer in shared data.
    Busy,
    /// The answer landed in shared data meanwhile.
    Cached(CacheEntry),
}

/// A request's shared state, as the worker holds it while the request waits.
type SharedRequest = Rc<RefCell<Request>>;

/// Everything one plugin configuration shares between its contexts on one worker.
struct Worker {
    config: Config,
    metrics: Metrics,
    footprint: Footprint,
    userinfo: Option<Userinfo>,
    /// Requests paused while another context's callout runs, by context id.
    parked: RefCell<HashMap<u32, SharedRequest>>,
    /// Requests whose headers are held until their body arrives: id → (since, state).
    awaiting_body: RefCell<HashMap<u32, (u64, SharedRequest)>>,
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

impl Worker {
    /// Looks the token up in the worker's cache, then in shared data.
    fn lookup(&self, userinfo: &Userinfo, token: &str, now: u64) -> Option<Resolution> {
        if let Some(identity) = userinfo.local.borrow_mut().get(token, now) {
            self.metrics.bump(self.metrics.cache_hits);
            return Some(Resolution::from_cached(identity));
        }
        let key = userinfo.policy.slot_key(token);
        let (value, _cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        if let Some(entry) = userinfo.policy.shared_hit(token, value.as_deref(), now) {
            let resolution = Resolution::from_cached(&entry.identity);
            userinfo.local.borrow_mut().insert(entry);
            self.metrics.bump(self.metrics.cache_hits);
            return Some(resolution);
        }
        self.metrics.bump(self.metrics.cache_misses);
        None
    }

    /// Starts the `/userinfo` callout for `token` from the current context.
    fn dispatch(&self, userinfo: &Userinfo, token: &str) -> Result<u32, Refusal> {
        let authorization = format!("Bearer {token}");
        let config = &userinfo.config;
        let headers = vec![
            (":method", "GET"),
            (":path", config.path.as_str()),
            (":authority", config.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        self.metrics.bump(self.metrics.userinfo_calls);
        hostcalls::dispatch_http_call(
            &config.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(config.timeout_ms),
        )
        .map_err(|status| {
            self.metrics.bump(self.metrics.idp_errors);
            warn!(
                "identity callout to cluster {:?} failed to start: {status:?}",
                config.cluster
            );
            Refusal::unavailable("identity provider unavailable")
        })
    }

    /// Records a callout outcome: caches it, ends the flight, returns the waiters.
    fn settle(&self, userinfo: &Userinfo, token: &str, outcome: &UserinfoOutcome) -> Vec<u32> {
        if let UserinfoOutcome::Unavailable(why) = outcome {
            self.metrics.bump(self.metrics.idp_errors);
            warn!("identity provider unavailable: {why}");
        }
        if let Some(entry) = userinfo.policy.entry_for(token, outcome, now_s()) {
            self.store(userinfo, token, &entry);
            userinfo.local.borrow_mut().insert(entry);
        }
        // After the store: a worker that finds the claim released then finds the answer.
        self.release_flight(userinfo, token);
        userinfo.flights.borrow_mut().complete(token)
    }

    /// Takes `token`'s flight claim, unless another worker is already calling.
    fn claim_flight(&self, userinfo: &Userinfo, token: &str, now: u64) -> Claim {
        let key = userinfo.policy.flight_key(token);
        let claim = FlightClaim::new(userinfo.owner, token, now, userinfo.config.timeout_ms);
        // Two tries: a compare-and-swap lost to another worker means it just claimed,
        // and the second read says for which token.
        for _ in 0..2 {
            let (value, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
            let free = match FlightClaim::live(value.as_deref(), now) {
                None => true,
                // Our own claim for this token with no flight left behind it.
                Some(held) => held.owner == userinfo.owner && held.is_for(token),
            };
            if !free {
                return Claim::Busy;
            }
            if hostcalls::set_shared_data(&key, Some(&claim.to_bytes()), cas).is_err() {
                continue;
            }
            // Whoever held the claim before stored its answer before releasing it.
            let slot = userinfo.policy.slot_key(token);
            let (value, _) = hostcalls::get_shared_data(&slot).unwrap_or((None, None));
            if let Some(entry) = userinfo.policy.shared_hit(token, value.as_deref(), now) {
                self.release_flight(userinfo, token);
                return Claim::Cached(entry);
            }
            return Claim::Mine;
        }
        Claim::Busy
    }

    /// Frees `token`'s flight claim if this worker holds it.
    fn release_flight(&self, userinfo: &Userinfo, token: &str) {
        let key = userinfo.policy.flight_key(token);
        let (value, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        // Deadline 0: a claim of ours is released even when already stale.
        let held = FlightClaim::live(value.as_deref(), 0);
        if held.is_some_and(|c| c.owner == userinfo.owner && c.is_for(token)) {
            // A lost compare-and-swap means someone took it over: leave theirs alone.
            let _ = hostcalls::set_shared_data(&key, Some(FREE_FLIGHT), cas);
        }
    }

    /// Ticks fast while requests wait on another worker's callout, slowly otherwise.
    fn set_polling(&self, userinfo: &Userinfo, fast: bool) {
        if userinfo.polling_fast.get() == fast {
            return;
        }
        let period = if fast { REMOTE_POLL } else { TICK };
        if hostcalls::set_tick_period(period).is_ok() {
            userinfo.polling_fast.set(fast);
        }
    }

    /// Answers every request waiting on `token` with `resolution`; ends the flight.
    fn answer_flight(
        &self,
        userinfo: &Userinfo,
        token: &str,
        resolution: &Resolution,
        current_context: u32,
    ) {
        let waiters = userinfo.flights.borrow_mut().complete(token);
        for waiter in waiters {
            self.wake(waiter, resolution, current_context);
        }
    }

    /// Reads the `/userinfo` answer for `token`, records it, and wakes the requests that
    /// waited on it. Returns the resolution for the caller's own request, if it has one.
    fn complete_callout(
        &self,
        userinfo: &Userinfo,
        token: &str,
        body_size: usize,
        current_context: u32,
        own_request: Option<&SharedRequest>,
    ) {
        let outcome = read_userinfo_response(body_size, &self.config.identity.claim);
        let waiters = self.settle(userinfo, token, &outcome);
        let resolution = Resolution::from_outcome(&outcome);
        if let Some(request) = own_request {
            let action = match request.try_borrow_mut() {
                Ok(mut request) => request.finish(self, &resolution),
                Err(_) => Action::Pause,
            };
            if action == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
        for waiter in waiters {
            self.wake(waiter, &resolution, current_context);
        }
    }

    fn store(&self, userinfo: &Userinfo, token: &str, entry: &CacheEntry) {
        let key = userinfo.policy.slot_key(token);
        // No CAS: the newest answer for a slot wins, which is what a cache wants.
        if let Err(status) = hostcalls::set_shared_data(&key, Some(&entry.to_bytes()), None) {
            warn!("could not store identity in shared data: {status:?}");
        }
    }

    /// Answers a parked request with `resolution`, from another context's callback.
    fn wake(&self, context_id: u32, resolution: &Resolution, current_context: u32) {
        let Some(request) = self.parked.borrow_mut().remove(&context_id) else {
            return;
        };
        if hostcalls::set_effective_context(context_id).is_err() {
            return;
        }
        if let Ok(mut request) = request.try_borrow_mut() {
            if request.finish(self, resolution) == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(current_context);
    }
}

/// Reads a callout response: must run before any `set_effective_context`.
fn read_userinfo_response(body_size: usize, claim: &[String]) -> UserinfoOutcome {
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    if body_size > identity::MAX_CLAIMS_BYTES {
        return UserinfoOutcome::Unavailable("identity provider answer too large".into());
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten();
    identity::classify_userinfo(status.as_deref(), body.as_deref(), claim)
}

/// Creates this configuration's flight keys, free, where no worker has yet: a
/// compare-and-swap only guards a key that exists, and two workers creating the same
/// key at once would both believe they hold it.
fn create_flight_keys(policy: &CachePolicy) {
    for key in policy.flight_keys() {
        if let Ok((None, None)) = hostcalls::get_shared_data(&key) {
            let _ = hostcalls::set_shared_data(&key, Some(FREE_FLIGHT), None);
        }
    }
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

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Every request header, read from the host in one call rather than one per name:
/// each call crosses into Envoy and back into the VM to allocate the answer, which
/// was a good part of the filter's fixed cost per request. Names are kept as bytes:
/// the SDK's own `get_map_bytes` panics on a name that is not UTF-8.
struct RequestHeaders {
    serialized: Vec<u8>,
    /// Where each pair's name and value sit in `serialized`.
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl RequestHeaders {
    fn read() -> Option<RequestHeaders> {
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
        let pairs = header_pairs(&serialized)?;
        Some(RequestHeaders { serialized, pairs })
    }

    /// The first value of header `name` (lower case), as Envoy's own lookup answers.
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| self.serialized.get(n.clone()) == Some(name.as_bytes()))
            .and_then(|(_, v)| self.serialized.get(v.clone()))
    }
}

/// Where the pairs of a serialized header map are: a little-endian u32 count, a u32
/// name length and a u32 value length per pair, then each name and each value followed
/// by a NUL. `None` if the sizes do not add up; never reads out of bounds.
fn header_pairs(serialized: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    if serialized.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let bytes = serialized.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(bytes.try_into().ok()?)).ok()
    };
    let count = word(0)?;
    let mut at = count.checked_mul(8)?.checked_add(4)?;
    // Every pair takes at least 10 bytes, so a forged count cannot reserve much.
    let mut pairs = Vec::with_capacity(count.min(serialized.len() / 10));
    for n in 0..count {
        let name_len = word(4 + n * 8)?;
        let value_len = word(8 + n * 8)?;
        let name = at..at.checked_add(name_len)?;
        at = name.end.checked_add(1)?;
        let value = at..at.checked_add(value_len)?;
        at = value.end.checked_add(1)?;
        if at > serialized.len() {
            return None;
        }
        pairs.push((name, value));
    }
    Some(pairs)
}

/// The root context: parses the configuration, creates request contexts, and runs
/// the callouts of flights whose leader went away.
struct FilterRoot {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    /// Root-owned callouts: callout token id → bearer token.
    callouts: HashMap<u32, String>,
}

impl FilterRoot {
    fn new(context_id: u32) -> FilterRoot {
        FilterRoot {
            context_id,
            worker: None,
            callouts: HashMap::new(),
        }
    }
}

impl FilterRoot {
    /// The tick's work on identity lookups: refuses the waiters of callouts that never
    /// came back, calls for flights whose leader went away, and polls other workers'.
    fn tend_flights(&mut self, worker: &Worker, userinfo: &Userinfo, now: u64) {
        let max_age = userinfo.config.timeout_ms / 1000 + 5;
        let stuck = userinfo.flights.borrow_mut().expire(now, max_age);
        let unavailable = Resolution::Refuse(Refusal::unavailable("identity lookup timed out"));
        for (token, waiters) in stuck {
            worker.release_flight(userinfo, &token);
            for waiter in waiters {
                worker.wake(waiter, &unavailable, self.context_id);
            }
        }
        let orphans = userinfo.flights.borrow().orphans();
        for token in orphans {
            if userinfo.flights.borrow_mut().adopt(&token, now) {
                self.call_for_waiters(worker, userinfo, token);
            }
        }
        self.poll_remote_flights(worker, userinfo, now);
    }

    /// Calls the IdP for a flight the root has adopted. Called from the root's own
    /// callback, so the response comes back to the root.
    fn call_for_waiters(&mut self, worker: &Worker, userinfo: &Userinfo, token: String) {
        match worker.dispatch(userinfo, &token) {
            Ok(id) => {
                self.callouts.insert(id, token);
            }
            Err(refusal) => {
                worker.release_flight(userinfo, &token);
                let resolution = Resolution::Refuse(refusal);
                worker.answer_flight(userinfo, &token, &resolution, self.context_id);
            }
        }
    }

    /// Looks in shared data for the answers other workers are fetching for this
    /// worker's waiting requests; takes a flight over when its claim is freed without
    /// an answer (an IdP failure is not cached) or goes stale (its worker is gone).
    fn poll_remote_flights(&mut self, worker: &Worker, userinfo: &Userinfo, now: u64) {
        let remote = userinfo.flights.borrow().remote();
        for token in remote {
            let slot = userinfo.policy.slot_key(&token);
            let (value, _) = hostcalls::get_shared_data(&slot).unwrap_or((None, None));
            let answer = match userinfo.policy.shared_hit(&token, value.as_deref(), now) {
                Some(entry) => Some(entry),
                None => match worker.claim_flight(userinfo, &token, now) {
                    Claim::Cached(entry) => Some(entry),
                    Claim::Busy => None,
                    Claim::Mine => {
                        if userinfo.flights.borrow_mut().adopt(&token, now) {
                            self.call_for_waiters(worker, userinfo, token);
                        } else {
                            worker.release_flight(userinfo, &token);
                        }
                        continue;
                    }
                },
            };
            if let Some(entry) = answer {
                let resolution = Resolution::from_cached(&entry.identity);
                userinfo.local.borrow_mut().insert(entry);
                worker.answer_flight(userinfo, &token, &resolution, self.context_id);
            }
        }
        let waiting = !userinfo.flights.borrow().remote().is_empty();
        worker.set_polling(userinfo, waiting);
    }

    /// Refuses requests whose body never reached the filter (see [`BODY_WAIT_S`]).
    fn refuse_bodiless(&self, worker: &Worker) {
        let now = now_s();
        let stale: Vec<(u32, SharedRequest)> = {
            let mut waiting = worker.awaiting_body.borrow_mut();
            let ids: Vec<u32> = waiting
                .iter()
                .filter(|(_, (since, _))| now.saturating_sub(*since) > BODY_WAIT_S)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| waiting.remove(&id).map(|(_, r)| (id, r)))
                .collect()
        };
        for (id, request) in stale {
            error!(
                "promql_tenant_filter: a request body never reached the filter; set \
                 `allow_on_headers_stop_iteration: true` in the Wasm plugin config"
            );
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            if let Ok(mut request) = request.try_borrow_mut() {
                let refusal = Refusal::unavailable("request body was not received");
                request.refuse(worker, &refusal);
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

impl Context for FilterRoot {
    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.footprint.withdraw();
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(userinfo) = worker.userinfo.as_ref() else {
            return;
        };
        let Some(token) = self.callouts.remove(&token_id) else {
            return;
        };
        worker.complete_callout(userinfo, &token, body_size, self.context_id, None);
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
                error!("promql_tenant_filter: {e}");
                return false;
            }
        };
        let userinfo = match &config.identity.source {
            IdentitySource::Userinfo(u) => {
                let policy = CachePolicy::new(u, &config.identity.claim);
                create_flight_keys(&policy);
                Some(Userinfo {
                    config: u.clone(),
                    local: RefCell::new(LocalCache::new(policy.local_slots())),
                    policy,
                    flights: RefCell::new(Flights::new()),
                    owner: random_u64(),
                    polling_fast: Cell::new(false),
                })
            }
            IdentitySource::JwtPayloadHeader { .. } => None,
        };
        if let Some(timing) = &config.debug_time_engine {
            time_engine_once(&config, timing);
        }
        if config.debug_trap_marker.is_some() {
            error!(
                "promql_tenant_filter: debug_trap_marker is set: a request carrying it in \
                 {DEBUG_TRAP_HEADER} traps this VM; never in production"
            );
        }
        if hostcalls::set_tick_period(TICK).is_err() {
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
            userinfo,
            parked: RefCell::new(HashMap::new()),
            awaiting_body: RefCell::new(HashMap::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        self.refuse_bodiless(&worker);
        let now = now_s();
        if let Some(userinfo) = worker.userinfo.as_ref() {
            self.tend_flights(&worker, userinfo, now);
        }
        let local_entries = worker
            .userinfo
            .as_ref()
            .map_or(0, |u| u.local.borrow().len());
        worker.footprint.report(local_entries, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FilterHttp {
            context_id,
            worker: self.worker.clone(),
            request: Rc::new(RefCell::new(Request::new(context_id))),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the request headers.
    Headers,
    /// Headers held, body being buffered.
    Body,
    /// Headers (and body) in; identity being resolved.
    Identity,
    /// Rewritten and let go.
    Forwarded,
    /// Answered by the filter (refusal or local answer).
    Answered,
}

/// The per-request state, shared with the worker while the request is parked.
struct Request {
    context_id: u32,
    stage: Stage,
    plan: Option<Plan>,
    content_type: Option<Vec<u8>>,
    /// The bearer token (userinfo source).
    token: Option<String>,
    /// The identity, when known without a callout (payload-header source).
    known: Option<Resolution>,
    body: Option<Vec<u8>>,
    /// Size of the body as buffered by the host, i.e. how much a rewrite replaces.
    body_size: usize,
    /// The callout this request leads, if any.
    callout: Option<u32>,
    /// How to filter the backend's answer, for rules and alerts.
    response: Option<ResponseStage>,
    /// The request goes to an ingestion endpoint (allowed or not): counted as a write.
    write: bool,
    /// Bytes of a write's body Envoy holds while its identity is looked up; they go on
    /// unread when it is let go.
    held_write_bytes: usize,
}

/// The answer of a request whose response the filter rewrites.
struct ResponseStage {
    filter: ResponseFilter,
    /// The backend's `:status`.
    status: u16,
    /// Decided before the body was all in: the answer the caller gets instead.
    refusal: Option<Refusal>,
    /// Bytes of the answer Envoy holds so far.
    buffered: usize,
    done: Replaced,
}

/// How far the replacement of the engine's answer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaced {
    /// Not yet: the answer is being buffered.
    No,
    /// Written into the held headers and body: later body data (past the bound) is dropped.
    InPlace,
    /// Answered with a local reply: the callbacks it runs through pass it unchanged.
    Locally,
}

impl Request {
    fn new(context_id: u32) -> Request {
        Request {
            context_id,
            stage: Stage::Headers,
            plan: None,
            content_type: None,
            token: None,
            known: None,
            body: None,
            body_size: 0,
            callout: None,
            response: None,
            write: false,
            held_write_bytes: 0,
        }
    }

    /// Answers with a refusal; the request goes no further.
    fn refuse(&mut self, worker: &Worker, refusal: &Refusal) -> Action {
        worker.metrics.bump(worker.metrics.requests_denied);
        if self.write {
            worker.metrics.bump(worker.metrics.writes_denied);
        }
        let body = refusal.body();
        let status = refusal.status.to_string();
        debug!(
            "promql_tenant_filter: refused {} {}: {}",
            status,
            refusal.error_type.as_str(),
            refusal.message
        );
        let _ = hostcalls::send_http_response(
            u32::from(refusal.status),
            refusal.headers(),
            Some(&body),
        );
        self.stage = Stage::Answered;
        Action::Pause
    }

    fn on_headers(&mut self, worker: &Worker, end_of_stream: bool) -> Action {
        let config = &worker.config;
        let Some(headers) = RequestHeaders::read() else {
            let refusal = Refusal::unavailable("the request headers could not be read");
            return self.refuse(worker, &refusal);
        };
        if config.is_debug_trap(headers.get(DEBUG_TRAP_HEADER)) {
            // `debug_trap_marker`: trap here, where a stack overflow once did.
            error!("promql_tenant_filter: debug_trap_marker received, trapping this VM");
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
        self.write = api::is_write_target(head.path);
        let admitted = match decision::on_headers(&head, config) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.refuse(worker, &refusal),
        };
        for name in api::STRIPPED_HEADERS {
            if headers.get(name).is_some()
                && hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err()
            {
                let refusal = Refusal::unavailable("the request could not be rewritten");
                return self.refuse(worker, &refusal);
            }
        }
        self.content_type = head.content_type.map(<[u8]>::to_vec);
        // A write is decided at its headers, and its body streams through unread.
        let streams_body = admitted.plan.action == api::Action::Write;
        self.plan = Some(admitted.plan);
        match admitted.caller {
            Caller::Token(token) => self.token = Some(token),
            Caller::Tenants(tenants) => self.known = Some(Resolution::Tenants(tenants)),
        }
        if end_of_stream || streams_body {
            self.stage = Stage::Identity;
            Action::Continue
        } else {
            // Hold the headers (the `:path` may still change) while the body arrives.
            self.stage = Stage::Body;
            Action::Pause
        }
    }

    /// Looks up the identity. `Continue`: known and applied. `Pause`: refused, or
    /// waiting for a callout (the caller parks waiters).
    fn resolve(&mut self, worker: &Worker) -> (Action, bool) {
        if let Some(resolution) = self.known.take() {
            return (self.finish(worker, &resolution), false);
        }
        let (Some(userinfo), Some(token)) = (worker.userinfo.as_ref(), self.token.clone()) else {
            let refusal = Refusal::unavailable("no identity source");
            return (self.refuse(worker, &refusal), false);
        };
        let now = now_s();
        if let Some(resolution) = worker.lookup(userinfo, &token, now) {
            return (self.finish(worker, &resolution), false);
        }
        let joined = userinfo
            .flights
            .borrow_mut()
            .join(&token, self.context_id, now);
        if joined == Joined::Waiter {
            return (Action::Pause, true);
        }
        // Nobody else can have joined this worker's flight yet: we are still in this
        // callback. Other workers may be calling for the same token, though.
        match worker.claim_flight(userinfo, &token, now) {
            Claim::Cached(entry) => {
                let resolution = Resolution::from_cached(&entry.identity);
                userinfo.local.borrow_mut().insert(entry);
                userinfo.flights.borrow_mut().complete(&token);
                (self.finish(worker, &resolution), false)
            }
            Claim::Busy => {
                worker.metrics.bump(worker.metrics.remote_waits);
                userinfo
                    .flights
                    .borrow_mut()
                    .wait_remote(&token, self.context_id);
                worker.set_polling(userinfo, true);
                (Action::Pause, true)
            }
            Claim::Mine => match worker.dispatch(userinfo, &token) {
                Ok(id) => {
                    self.callout = Some(id);
                    (Action::Pause, false)
                }
                Err(refusal) => {
                    worker.release_flight(userinfo, &token);
                    userinfo.flights.borrow_mut().complete(&token);
                    (self.refuse(worker, &refusal), false)
                }
            },
        }
    }

    /// Applies a known identity: answer, refuse, or rewrite and let the request go.
    fn finish(&mut self, worker: &Worker, resolution: &Resolution) -> Action {
        let tenants = match resolution {
            Resolution::Refuse(refusal) => return self.refuse(worker, refusal),
            Resolution::Tenants(tenants) => tenants,
        };
        let Some(plan) = self.plan.take() else {
            return self.refuse(worker, &Refusal::bad_request("request was not planned"));
        };
        let decided = decision::finish(
            &plan,
            self.body.as_deref(),
            self.content_type.as_deref(),
            tenants,
            &worker.config,
        );
        let rewritten = match decided {
            Decision::Forward(rewritten) => rewritten,
            Decision::Answer(body) => {
                worker.metrics.bump(worker.metrics.requests_allowed);
                let _ = hostcalls::send_http_response(
                    200,
                    vec![("content-type", "application/json")],
                    Some(body.as_bytes()),
                );
                self.stage = Stage::Answered;
                return Action::Pause;
            }
            Decision::Refuse(refusal) => {
                if refusal.status == 400 {
                    worker.metrics.bump(worker.metrics.bad_queries);
                }
                return self.refuse(worker, &refusal);
            }
        };
        // A rewrite the host did not take would let the original request through: any
        // failed write refuses the request instead.
        let mut written = Ok(());
        if let Some(path) = &rewritten.path {
            written = written.and(hostcalls::set_map_value_bytes(
                MapType::HttpRequestHeaders,
                ":path",
                Some(path.as_bytes()),
            ));
        }
        if let Some(body) = &rewritten.body {
            written = written
                .and(hostcalls::set_buffer(
                    BufferType::HttpRequestBody,
                    0,
                    self.body_size,
                    body,
                ))
                .and(hostcalls::remove_map_value(
                    MapType::HttpRequestHeaders,
                    "content-length",
                ));
        }
        if let Some(filter) = rewritten.response {
            // The engines compress when asked to; the filter reads plain JSON only.
            for name in rules::UPSTREAM_HEADERS_TO_REMOVE {
                written = written.and(hostcalls::remove_map_value(
                    MapType::HttpRequestHeaders,
                    name,
                ));
            }
            self.response = Some(ResponseStage {
                filter,
                status: 0,
                refusal: None,
                buffered: 0,
                done: Replaced::No,
            });
        }
        if written.is_err() {
            return self.refuse(
                worker,
                &Refusal::unavailable("the request could not be rewritten"),
            );
        }
        worker.metrics.bump(worker.metrics.requests_allowed);
        if self.write {
            worker.metrics.bump(worker.metrics.writes_allowed);
            worker
                .metrics
                .add(worker.metrics.write_bytes, self.held_write_bytes);
        }
        self.stage = Stage::Forwarded;
        Action::Continue
    }

    fn on_body(&mut self, worker: &Worker, body_size: usize, end_of_stream: bool) -> Action {
        match self.stage {
            Stage::Body => {}
            Stage::Forwarded => {
                // Each callback after the request went on brings new data only.
                if self.write {
                    worker.metrics.add(worker.metrics.write_bytes, body_size);
                }
                return Action::Continue;
            }
            // Held by Envoy until the identity is known: `body_size` is all of it so far.
            Stage::Identity if self.write => {
                self.held_write_bytes = body_size;
                return Action::Pause;
            }
            // Refused, answered, or still being judged: no data goes through unjudged.
            _ => return Action::Pause,
        }
        if body_size > worker.config.max_body_bytes {
            return self.refuse(worker, &Refusal::too_large(worker.config.max_body_bytes));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_size = body_size;
        // A body we cannot read is a body we cannot rewrite: refuse rather than forward it.
        self.body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(body) => body,
            Err(_) => {
                return self.refuse(
                    worker,
                    &Refusal::unavailable("the request body could not be read"),
                )
            }
        };
        if body_size > 0 && self.body.is_none() {
            return self.refuse(
                worker,
                &Refusal::unavailable("the request body could not be read"),
            );
        }
        self.stage = Stage::Identity;
        Action::Continue
    }
}

impl ResponseStage {
    /// Response headers: hold them until the body is in, unless there is none.
    fn on_headers(&mut self, end_of_stream: bool) -> Action {
        if self.done != Replaced::No {
            return Action::Continue;
        }
        let header = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
        };
        self.status = header(":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        let encoding = header("content-encoding");
        let length = header("content-length");
        if let Err(refusal) = self
            .filter
            .check_headers(encoding.as_deref(), length.as_deref())
        {
            self.refusal = Some(refusal);
        }
        if end_of_stream {
            // Nothing to filter and no body to replace: answer anew.
            let (status, body) = self.replacement(&[]);
            self.done = Replaced::Locally;
            let _ = hostcalls::send_http_response(
                status,
                vec![("content-type", "application/json")],
                Some(&body),
            );
        }
        Action::Pause
    }

    /// Response body: buffer to the end (within the bound), then replace it.
    fn on_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.done {
            Replaced::No => {}
            Replaced::Locally => return Action::Continue,
            Replaced::InPlace => {
                // Past the replacement (an answer over the bound): drop what follows.
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &[]);
                return Action::Continue;
            }
        }
        self.buffered = body_size;
        if body_size > self.filter.max_bytes && self.refusal.is_none() {
            self.refusal = Some(self.filter.too_large());
        }
        if !end_of_stream && self.refusal.is_none() {
            return Action::Pause;
        }
        let body = if self.refusal.is_none() {
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.refusal.is_none() && body.len() != body_size {
            self.refusal = Some(Refusal::unavailable(
                "the rule engine's answer could not be read",
            ));
        }
        let (status, replacement) = self.replacement(&body);
        self.done = Replaced::InPlace;
        let status = status.to_string();
        let written = hostcalls::set_map_value_bytes(
            MapType::HttpResponseHeaders,
            ":status",
            Some(status.as_bytes()),
        )
        .and(hostcalls::set_map_value_bytes(
            MapType::HttpResponseHeaders,
            "content-type",
            Some(b"application/json"),
        ))
        .and(hostcalls::remove_map_value(
            MapType::HttpResponseHeaders,
            "content-length",
        ))
        .and(hostcalls::remove_map_value(
            MapType::HttpResponseHeaders,
            "content-encoding",
        ))
        .and(hostcalls::set_buffer(
            BufferType::HttpResponseBody,
            0,
            body_size,
            &replacement,
        ));
        if written.is_err() {
            // The engine's answer must not pass as it is: reset the stream instead.
            let refusal = Refusal::unavailable("the rule engine's answer could not be filtered");
            self.done = Replaced::Locally;
            let _ = hostcalls::send_http_response(503, refusal.headers(), Some(&refusal.body()));
            return Action::Pause;
        }
        Action::Continue
    }

    /// The status and body the caller gets for the engine's answer `body`.
    fn replacement(&self, body: &[u8]) -> (u32, Vec<u8>) {
        let result = match &self.refusal {
            Some(refusal) => Err(refusal.clone()),
            None => self.filter.filter(self.status, body),
        };
        match result {
            Ok(filtered) => (200, filtered),
            Err(refusal) => {
                debug!(
                    "promql_tenant_filter: rule engine answer refused: {}",
                    refusal.message
                );
                (u32::from(refusal.status), refusal.body())
            }
        }
    }
}

/// One HTTP stream. The state lives behind an `Rc` so that another context's callout
/// response can finish this request while it is parked.
struct FilterHttp {
    context_id: u32,
    worker: Option<Rc<Worker>>,
    request: SharedRequest,
}

impl FilterHttp {
    /// Runs the identity step once headers (and body) are in.
    fn proceed(&mut self, worker: &Worker) -> Action {
        let (action, park) = match self.request.try_borrow_mut() {
            Ok(mut request) => request.resolve(worker),
            Err(_) => return Action::Pause,
        };
        if park {
            worker
                .parked
                .borrow_mut()
                .insert(self.context_id, Rc::clone(&self.request));
        }
        action
    }

    /// Runs `f` on the response stage of a forwarded request that has one; any other
    /// answer (the filter's own replies included) passes unchanged.
    fn with_response_stage(&self, f: impl FnOnce(&mut ResponseStage) -> Action) -> Action {
        let Ok(mut request) = self.request.try_borrow_mut() else {
            return Action::Pause;
        };
        let forwarded = request.stage == Stage::Forwarded;
        match request.response.as_mut() {
            Some(stage) if forwarded => f(stage),
            _ => Action::Continue,
        }
    }

    fn fail_closed(&self) -> Action {
        let refusal = Refusal::unavailable("filter is not configured");
        let _ = hostcalls::send_http_response(503, refusal.headers(), Some(&refusal.body()));
        Action::Pause
    }
}

impl Context for FilterHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Some(userinfo) = worker.userinfo.as_ref() else {
            return;
        };
        let token = {
            let Ok(mut request) = self.request.try_borrow_mut() else {
                return;
            };
            if request.callout != Some(token_id) {
                return;
            }
            request.callout = None;
            // A callout is only made for a request that has a token.
            let Some(token) = request.token.clone() else {
                return;
            };
            token
        };
        worker.complete_callout(
            userinfo,
            &token,
            body_size,
            self.context_id,
            Some(&self.request),
        );
    }

    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.parked.borrow_mut().remove(&self.context_id);
            worker.awaiting_body.borrow_mut().remove(&self.context_id);
            if let Some(userinfo) = &worker.userinfo {
                let ended = userinfo.flights.borrow_mut().leave(self.context_id);
                for token in ended {
                    worker.release_flight(userinfo, &token);
                }
            }
        }
        true
    }
}

impl HttpContext for FilterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return self.fail_closed();
        };
        let action = match self.request.try_borrow_mut() {
            Ok(mut request) => request.on_headers(&worker, end_of_stream),
            Err(_) => return Action::Pause,
        };
        let stage = self.request.try_borrow().map(|r| r.stage).ok();
        if action == Action::Continue && stage == Some(Stage::Identity) {
            return self.proceed(&worker);
        }
        if action == Action::Pause && stage == Some(Stage::Body) {
            worker
                .awaiting_body
                .borrow_mut()
                .insert(self.context_id, (now_s(), Rc::clone(&self.request)));
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Pause;
        };
        worker.awaiting_body.borrow_mut().remove(&self.context_id);
        let action = match self.request.try_borrow_mut() {
            Ok(mut request) => request.on_body(&worker, body_size, end_of_stream),
            Err(_) => return Action::Pause,
        };
        let ready = self
            .request
            .try_borrow()
            .is_ok_and(|r| r.stage == Stage::Identity);
        if action == Action::Continue && ready {
            return self.proceed(&worker);
        }
        action
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Pause;
        };
        let Ok(mut request) = self.request.try_borrow_mut() else {
            return Action::Pause;
        };
        match request.stage {
            Stage::Body => request.refuse(
                &worker,
                &Refusal::bad_request("request trailers are not supported"),
            ),
            Stage::Forwarded => Action::Continue,
            _ => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.with_response_stage(|stage| stage.on_headers(end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.with_response_stage(|stage| stage.on_body(body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the body. The engines send none over HTTP/1.1; an answer with
        // them is refused rather than read in a way it was not sent.
        self.with_response_stage(|stage| {
            if stage.done == Replaced::No {
                stage.refusal.get_or_insert_with(|| {
                    Refusal::upstream(
                        502,
                        crate::api::ErrorType::Internal,
                        "the rule engine's answer had trailers",
                    )
                });
                let _ = stage.on_body(stage.buffered, true);
            }
            Action::Continue
        })
    }
}

#[cfg(test)]
#[path = "filter_host_tests.rs"]
mod host_tests;
