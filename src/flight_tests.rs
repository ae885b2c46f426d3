//! The flight protocol against an in-memory shared data: one worker's flights, two
//! workers racing on one map, lost compare-and-swaps, stale claims, failed callouts and
//! requests that go away.

use super::*;
use std::cell::RefCell;
use std::rc::Rc;

/// Envoy's shared data as proxy-wasm-cpp-host keeps it: every write gets a new CAS
/// token, and a CAS only guards a key that exists.
#[derive(Default)]
struct Memory {
    map: BTreeMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedData for Memory {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if let (Some((_, current)), Some(cas)) = (self.map.get(key), cas) {
            if *current != cas {
                return Err(CasMismatch);
            }
        }
        self.next_cas += 1;
        self.map
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

/// One map that several workers share, as Envoy's shared data is one per VM id.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Memory>>);

impl SharedData for Shared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.borrow().get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        self.0.borrow_mut().set(key, value, cas)
    }
}

/// A shared data on which another worker writes between a read and the next write:
/// `interleave` runs once, just before the first conditional write to a flight key.
struct Racing<F: FnMut(&mut Shared)> {
    shared: Shared,
    interleave: Option<F>,
}

impl<F: FnMut(&mut Shared)> SharedData for Racing<F> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if key.contains(".flight.") && cas.is_some() {
            if let Some(mut other) = self.interleave.take() {
                other(&mut self.shared);
            }
        }
        self.shared.set(key, value, cas)
    }
}

const NOW: u64 = 1_800_000_000_000; // ms
/// One second, in the protocol's milliseconds.
const S: u64 = 1000;

fn config(failure_ttl_s: u64) -> UserinfoConfig {
    UserinfoConfig {
        cluster: "oidc".into(),
        authority: "idp".into(),
        path: "/userinfo".into(),
        timeout_ms: 2000,
        cache_ttl_s: 300,
        negative_cache_ttl_s: 10,
        failure_cache_ttl_s: failure_ttl_s,
        cache_max_entries: 100,
    }
}

/// A worker named `owner`, its flight keys created in `shared`.
fn worker(shared: &mut impl SharedData, owner: u64) -> Flights {
    worker_with(shared, owner, config(2))
}

fn worker_with(shared: &mut impl SharedData, owner: u64, config: UserinfoConfig) -> Flights {
    let flights = Flights::new(&config, &["client_id".to_string()], owner);
    flights.create_keys(shared);
    flights
}

/// Two workers on `config`; worker 1's request 10 calls for "tok", worker 2's request
/// 20 waits for it. Their commands so far are drained.
fn racing_for_tok(shared: &mut Shared, config: UserinfoConfig) -> (Flights, Flights) {
    let mut w1 = worker_with(shared, 1, config.clone());
    let mut w2 = worker_with(shared, 2, config);
    w1.request(shared, 10, "tok", NOW);
    w2.request(shared, 20, "tok", NOW);
    drain(&mut w1);
    drain(&mut w2);
    (w1, w2)
}

/// On its tick at `now`, the worker's root calls for "tok"; the answer wakes `context`.
fn root_calls_on_tick(w: &mut Flights, shared: &mut Shared, now: u64, context: u32) {
    w.tick(shared, now);
    assert_eq!(dispatches(&drain(w)), vec![Caller::Root]);
    w.callout_done(shared, "tok", alice(), now);
    assert_eq!(wakes(&drain(w)), vec![(context, alice())]);
}

/// The worker asks for "tok" and calls the IdP at once: nobody holds its claim.
fn calls_at_once(w: &mut Flights, shared: &mut Shared, context: u32) -> Vec<Command> {
    assert_eq!(w.request(shared, context, "tok", NOW), None);
    let commands = drain(w);
    assert_eq!(dispatches(&commands), vec![Caller::Request(context)]);
    commands
}

/// One worker and its shared data, on the default configuration.
fn one_worker() -> (Shared, Flights) {
    let mut shared = Shared::default();
    let w = worker(&mut shared, 1);
    (shared, w)
}

/// Two workers on one shared data, on the default configuration.
fn two_workers() -> (Shared, Flights, Flights) {
    let mut shared = Shared::default();
    let (w1, w2) = (worker(&mut shared, 1), worker(&mut shared, 2));
    (shared, w1, w2)
}

fn drain(flights: &mut Flights) -> Vec<Command> {
    std::iter::from_fn(|| flights.poll()).collect()
}

fn dispatches(commands: &[Command]) -> Vec<Caller> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Dispatch { from, .. } => Some(*from),
            _ => None,
        })
        .collect()
}

fn wakes(commands: &[Command]) -> Vec<(u32, Identity)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Wake { context, identity } => Some((*context, identity.clone())),
            _ => None,
        })
        .collect()
}

fn counted(commands: &[Command], metric: Metric) -> usize {
    commands
        .iter()
        .filter(|c| **c == Command::Count(metric))
        .count()
}

fn alice() -> Identity {
    Identity::Tenants(vec!["1999".into()].into())
}

fn down() -> Identity {
    Identity::Unavailable("identity provider answered HTTP 502".into())
}

#[test]
fn one_worker_one_callout_for_twenty_requests() {
    let (mut shared, mut w) = one_worker();
    for context in 2..22 {
        assert_eq!(w.request(&mut shared, context, "tok", NOW), None);
    }
    let commands = drain(&mut w);
    assert_eq!(dispatches(&commands), vec![Caller::Request(2)]);
    assert_eq!(counted(&commands, Metric::UserinfoCall), 1);
    assert_eq!(counted(&commands, Metric::CacheMiss), 20);
    w.callout_done(&mut shared, "tok", alice(), NOW);
    let woken = wakes(&drain(&mut w));
    assert_eq!(woken, (2..22).map(|c| (c, alice())).collect::<Vec<_>>());
    // Answered from the first level from now on.
    assert_eq!(w.request(&mut shared, 30, "tok", NOW + S), Some(alice()));
    assert_eq!(drain(&mut w), vec![Command::Count(Metric::CacheHit)]);
    assert_eq!(w.local_entries(), 1);
    // Each hit shares the cached tenants rather than copying them.
    let hits: Vec<_> = (31..33)
        .map(
            |context| match w.request(&mut shared, context, "tok", NOW + S) {
                Some(Identity::Tenants(tenants)) => tenants,
                other => panic!("a hit with tenants, not {other:?}"),
            },
        )
        .collect();
    assert!(std::rc::Rc::ptr_eq(&hits[0], &hits[1]));
}

#[test]
fn a_request_joining_twice_is_woken_once() {
    let (mut shared, mut w) = one_worker();
    w.request(&mut shared, 2, "tok", NOW);
    w.request(&mut shared, 2, "tok", NOW);
    w.request(&mut shared, 3, "tok", NOW);
    w.request(&mut shared, 3, "tok", NOW);
    drain(&mut w);
    w.callout_done(&mut shared, "tok", alice(), NOW);
    assert_eq!(wakes(&drain(&mut w)), vec![(2, alice()), (3, alice())]);
}

#[test]
fn answers_expire_with_their_ttl() {
    let (mut shared, mut w) = one_worker();
    let rejected = Identity::Unauthorized("the identity provider rejected the token".into());
    w.request(&mut shared, 2, "tok", NOW);
    w.callout_done(&mut shared, "tok", rejected.clone(), NOW);
    drain(&mut w);
    assert_eq!(
        w.request(&mut shared, 3, "tok", NOW + 10 * S - 1),
        Some(rejected)
    );
    assert_eq!(w.request(&mut shared, 4, "tok", NOW + 10 * S), None);
    assert_eq!(dispatches(&drain(&mut w)), vec![Caller::Request(4)]);
}

#[test]
fn two_workers_racing_make_one_callout() {
    let (mut shared, mut w1, mut w2) = two_workers();
    assert_eq!(w1.request(&mut shared, 10, "tok", NOW), None);
    assert_eq!(w2.request(&mut shared, 20, "tok", NOW), None);
    assert_eq!(w2.request(&mut shared, 21, "tok", NOW), None);
    assert_eq!(dispatches(&drain(&mut w1)), vec![Caller::Request(10)]);
    let waiting = drain(&mut w2);
    assert!(dispatches(&waiting).is_empty(), "{waiting:?}");
    assert_eq!(counted(&waiting, Metric::RemoteWait), 1);
    assert!(
        waiting.contains(&Command::SetTick(REMOTE_POLL)),
        "it polls fast"
    );
    // Nothing to read yet.
    w2.tick(&mut shared, NOW);
    assert!(drain(&mut w2).is_empty());
    w1.callout_done(&mut shared, "tok", alice(), NOW);
    assert_eq!(wakes(&drain(&mut w1)), vec![(10, alice())]);
    w2.tick(&mut shared, NOW);
    let answered = drain(&mut w2);
    assert_eq!(wakes(&answered), vec![(20, alice()), (21, alice())]);
    assert!(
        answered.contains(&Command::SetTick(TICK)),
        "and slows down again"
    );
    // Both workers answer from their own first level now.
    assert_eq!(w2.request(&mut shared, 22, "tok", NOW), Some(alice()));
    assert_eq!(w1.request(&mut shared, 11, "tok", NOW), Some(alice()));
}

#[test]
fn a_third_worker_finds_the_answer_without_waiting() {
    let (mut shared, mut w1, mut w2) = two_workers();
    w1.request(&mut shared, 10, "tok", NOW);
    w1.callout_done(&mut shared, "tok", alice(), NOW);
    assert_eq!(w2.request(&mut shared, 20, "tok", NOW), Some(alice()));
    assert_eq!(drain(&mut w2), vec![Command::Count(Metric::CacheHit)]);
}

#[test]
fn a_lost_compare_and_swap_means_waiting_for_the_winner() {
    let (mut shared, mut w1, mut w2) = two_workers();
    // Worker 1 reads the key free; before its write, worker 2 claims the same key.
    let mut racing = Racing {
        shared: shared.clone(),
        interleave: Some(|s: &mut Shared| {
            assert_eq!(w2.request(s, 20, "tok", NOW), None);
        }),
    };
    assert_eq!(w1.request(&mut racing, 10, "tok", NOW), None);
    drop(racing);
    let loser = drain(&mut w1);
    assert!(dispatches(&loser).is_empty(), "{loser:?}");
    assert_eq!(counted(&loser, Metric::RemoteWait), 1);
    assert_eq!(dispatches(&drain(&mut w2)), vec![Caller::Request(20)]);
    w2.callout_done(&mut shared, "tok", alice(), NOW);
    w1.tick(&mut shared, NOW);
    assert_eq!(wakes(&drain(&mut w1)), vec![(10, alice())]);
}

#[test]
fn a_claim_lost_to_another_token_of_the_same_key_waits_its_turn() {
    // Every token shares one flight key through a compare-and-swap lost to a writer
    // that claims for another token: the second read shows it busy.
    let mut shared = Shared::default();
    let mut w1 = worker(&mut shared, 1);
    let mut racing = Racing {
        shared: shared.clone(),
        interleave: Some(|s: &mut Shared| {
            let key = flight_key(&w1_policy(), "tok");
            let (_, cas) = s.get(&key);
            let other = FlightClaim::new(9, "another token", NOW, 2000);
            s.set(&key, &other.to_bytes(), cas).unwrap();
        }),
    };
    assert_eq!(w1.request(&mut racing, 10, "tok", NOW), None);
    let commands = drain(&mut w1);
    assert!(dispatches(&commands).is_empty());
    assert_eq!(counted(&commands, Metric::RemoteWait), 1);
}

fn w1_policy() -> CachePolicy {
    CachePolicy::new(&config(2), &["client_id".to_string()])
}

#[test]
fn a_stale_claim_is_taken_over() {
    let mut shared = Shared::default();
    let (_w1, mut w2) = racing_for_tok(&mut shared, config(2));
    // Worker 1's callout never answers (its worker died, say): before the claim's
    // deadline worker 2 keeps waiting, after it worker 2 calls from its root.
    w2.tick(&mut shared, NOW + 2 * S);
    assert!(dispatches(&drain(&mut w2)).is_empty());
    root_calls_on_tick(&mut w2, &mut shared, NOW + 3 * S, 20);
}

#[test]
fn a_failed_callout_answers_both_workers_and_is_remembered_briefly() {
    let mut shared = Shared::default();
    let (mut w1, mut w2) = racing_for_tok(&mut shared, config(2));
    w1.callout_done(&mut shared, "tok", down(), NOW);
    let commands = drain(&mut w1);
    assert_eq!(counted(&commands, Metric::IdpError), 1);
    assert_eq!(wakes(&commands), vec![(10, down())]);
    w2.tick(&mut shared, NOW);
    let commands = drain(&mut w2);
    assert_eq!(wakes(&commands), vec![(20, down())]);
    assert!(
        dispatches(&commands).is_empty(),
        "one call for both workers"
    );
    // Within `failure_cache_ttl_s` the token gets 503 at once; after it, a new call.
    assert_eq!(w2.request(&mut shared, 21, "tok", NOW + S), Some(down()));
    assert_eq!(w2.request(&mut shared, 22, "tok", NOW + 2 * S), None);
    assert_eq!(dispatches(&drain(&mut w2)), vec![Caller::Request(22)]);
}

#[test]
fn a_claim_freed_without_an_answer_is_taken_over_by_the_waiting_worker() {
    let mut shared = Shared::default();
    let (mut w1, mut w2) = racing_for_tok(&mut shared, config(0));
    // No failure cache: the claim is freed with nothing behind it.
    w1.callout_done(&mut shared, "tok", down(), NOW);
    root_calls_on_tick(&mut w2, &mut shared, NOW, 20);
}

#[test]
fn a_callout_that_cannot_start_refuses_its_requests_and_frees_the_claim() {
    let (mut shared, mut w1, mut w2) = two_workers();
    calls_at_once(&mut w1, &mut shared, 10);
    w1.request(&mut shared, 11, "tok", NOW);
    w1.dispatch_failed(&mut shared, "tok");
    let commands = drain(&mut w1);
    assert_eq!(counted(&commands, Metric::IdpError), 1);
    let unavailable = Identity::Unavailable("identity provider unavailable".into());
    assert_eq!(
        wakes(&commands),
        vec![(10, unavailable.clone()), (11, unavailable)]
    );
    // Nothing remembered, claim free: the other worker calls at once.
    calls_at_once(&mut w2, &mut shared, 20);
}

#[test]
fn waiters_outlive_their_leader_and_the_root_calls_for_them() {
    let (mut shared, mut w) = one_worker();
    for context in [2, 3, 4] {
        w.request(&mut shared, context, "tok", NOW);
    }
    drain(&mut w);
    // The leader's client hangs up (the SDK will drop its callout's answer), and so
    // does one waiter.
    w.context_gone(&mut shared, 2);
    w.context_gone(&mut shared, 4);
    assert!(drain(&mut w).is_empty());
    root_calls_on_tick(&mut w, &mut shared, NOW, 3);
}

#[test]
fn a_leader_hanging_up_alone_frees_its_claim_for_other_workers() {
    let (mut shared, mut w1, mut w2) = two_workers();
    calls_at_once(&mut w1, &mut shared, 10);
    w1.context_gone(&mut shared, 10);
    let commands = calls_at_once(&mut w2, &mut shared, 20);
    assert_eq!(counted(&commands, Metric::RemoteWait), 0);
}

#[test]
fn a_remote_flight_ends_when_its_last_waiter_leaves() {
    let mut shared = Shared::default();
    let (_w1, mut w2) = racing_for_tok(&mut shared, config(2));
    w2.context_gone(&mut shared, 20);
    assert_eq!(drain(&mut w2), vec![Command::SetTick(TICK)]);
    // Worker 1's claim is untouched: it is not worker 2's to free.
    assert_eq!(w2.request(&mut shared, 21, "tok", NOW), None);
    assert!(dispatches(&drain(&mut w2)).is_empty());
}

#[test]
fn stuck_lookups_are_refused_on_the_tick() {
    let (mut shared, mut w) = one_worker();
    w.request(&mut shared, 2, "old", NOW);
    w.request(&mut shared, 3, "old", NOW);
    w.request(&mut shared, 4, "new", NOW + 6 * S);
    drain(&mut w);
    w.tick(&mut shared, NOW + 8 * S);
    let timed_out = Identity::Unavailable("identity lookup timed out".into());
    assert_eq!(
        wakes(&drain(&mut w)),
        vec![(2, timed_out.clone()), (3, timed_out)]
    );
    // Its claim is freed: the next request for it calls again.
    w.request(&mut shared, 5, "old", NOW + 8 * S);
    assert_eq!(dispatches(&drain(&mut w)), vec![Caller::Request(5)]);
}

#[test]
fn flight_keys_are_created_once_and_bounded() {
    let mut shared = Shared::default();
    let w1 = worker(&mut shared, 1);
    let keys = shared.0.borrow().map.len();
    assert_eq!(keys as u64, FLIGHT_SLOTS);
    // A second worker does not overwrite a key another worker may already hold.
    let key = flight_key(&w1_policy(), "tok");
    let held = FlightClaim::new(1, "tok", NOW, 2000).to_bytes();
    shared.set(&key, &held, None).unwrap();
    worker(&mut shared, 2);
    assert_eq!(shared.get(&key).0, Some(held));
    drop(w1);
    for i in 0..2000 {
        let key = flight_key(&w1_policy(), &format!("token-{i}"));
        assert!(shared.0.borrow().map.contains_key(&key), "{key}");
        assert_ne!(key, w1_policy().slot_key(&format!("token-{i}")));
    }
    let other = CachePolicy::new(&config(2), &["tenant".to_string()]);
    assert_ne!(flight_key(&other, "t"), flight_key(&w1_policy(), "t"));
}

#[test]
fn flight_claims_round_trip_and_go_stale() {
    let claim = FlightClaim::new(7, "tok", 100_000, 2000);
    assert_eq!(claim.deadline, 103_000);
    assert!(claim.is_for("tok"));
    assert!(!claim.is_for("tok2"));
    let bytes = claim.to_bytes();
    assert_eq!(FlightClaim::live(Some(&bytes), 102_999), Some(claim));
    assert_eq!(FlightClaim::live(Some(&bytes), 103_000), None);
    assert_eq!(FlightClaim::live(Some(FREE_FLIGHT), 0), None);
    assert_eq!(FlightClaim::live(None, 0), None);
    for cut in 0..bytes.len() {
        assert_eq!(
            FlightClaim::live(Some(&bytes[..cut]), 0),
            None,
            "cut at {cut}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(FlightClaim::live(Some(&trailing), 0), None);
    // A short timeout still leaves a second for the answer to be stored.
    assert_eq!(FlightClaim::new(7, "tok", 100_000, 1).deadline, 101_001);
}

proptest::proptest! {
    /// Whatever the order of requests, answers, ticks and departures over two workers,
    /// a request is woken only while it waits, and never after it is gone.
    #[test]
    fn requests_are_woken_only_while_they_wait(
        steps in proptest::collection::vec((0u8..6, 0u32..8, 0usize..3), 0..80)
    ) {
        let mut shared = Shared::default();
        let mut workers = [worker(&mut shared, 1), worker(&mut shared, 2)];
        let tokens = ["a", "b", "c"];
        let mut now = NOW;
        let mut waiting = std::collections::HashSet::<u32>::new();
        let mut gone = std::collections::HashSet::<u32>::new();
        let mut calling = Vec::<(usize, &str)>::new();
        for (kind, context, token) in steps {
            let w = (context % 2) as usize;
            let token = tokens[token];
            match kind {
                // A request waits for one token at a time, as a stream does.
                0 | 1 if !gone.contains(&context) && !waiting.contains(&context) => {
                    if workers[w].request(&mut shared, context, token, now).is_none() {
                        waiting.insert(context);
                    }
                }
                2 => {
                    if let Some(at) = calling.iter().position(|c| *c == (w, token)) {
                        calling.remove(at);
                        workers[w].callout_done(&mut shared, token, alice(), now);
                    }
                }
                3 => workers[w].tick(&mut shared, now),
                4 => {
                    workers[w].context_gone(&mut shared, context);
                    gone.insert(context);
                    waiting.remove(&context);
                }
                _ => now += S,
            }
            for (i, w) in workers.iter_mut().enumerate() {
                for command in drain(w) {
                    match command {
                        Command::Wake { context, .. } => {
                            proptest::prop_assert!(!gone.contains(&context), "woke gone {context}");
                            proptest::prop_assert!(waiting.remove(&context), "woke idle {context}");
                        }
                        Command::Dispatch { token, .. } => {
                            let token = tokens.iter().find(|t| **t == token).unwrap();
                            calling.push((i, token));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A deterministic xorshift, so that the simulation below is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bench's spread phase as discrete events: `tokens` new tokens, ten requests each,
/// shuffled, ten clients at a time, each request on a random one of two workers; a
/// callout answers 2-20 ms later; each worker ticks at the period its flights ask for.
/// Returns the callouts made.
fn spread(seed: u64, tokens: usize, config: UserinfoConfig) -> usize {
    #[derive(Debug)]
    enum Ev {
        Arrive { client: usize },
        Answer { worker: usize, token: String },
        Tick { worker: usize },
    }
    let mut rng = Rng(seed | 1);
    let names: Vec<String> = (0..tokens)
        .map(|i| format!("eyJ{:016x}.{i}", rng.next()))
        .collect();
    let mut work: Vec<String> = names.iter().flat_map(|t| vec![t.clone(); 10]).collect();
    for i in (1..work.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        work.swap(i, j);
    }
    let mut shared = Shared::default();
    let mut workers = [
        worker_with(&mut shared, 1, config.clone()),
        worker_with(&mut shared, 2, config),
    ];
    let mut period = [S, S];
    let mut events: BTreeMap<(u64, u64), Ev> = BTreeMap::new();
    let mut seq = 0u64;
    let mut at = |events: &mut BTreeMap<(u64, u64), Ev>, t: u64, ev: Ev| {
        seq += 1;
        events.insert((t, seq), ev);
    };
    for client in 0..10 {
        at(&mut events, NOW, Ev::Arrive { client });
    }
    for worker in 0..2 {
        at(&mut events, NOW + S, Ev::Tick { worker });
    }
    let mut next_work = 0;
    let mut next_context = 100u32;
    // context -> (worker, client)
    let mut waiting: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    let mut calls = 0;
    while let Some(((now, _), ev)) = events.pop_first() {
        if next_work == work.len() && waiting.is_empty() {
            break;
        }
        let w = match &ev {
            Ev::Arrive { client } => {
                if next_work == work.len() {
                    continue;
                }
                let token = work[next_work].clone();
                next_work += 1;
                let w = rng.below(2) as usize;
                next_context += 1;
                let context = next_context;
                match workers[w].request(&mut shared, context, &token, now) {
                    Some(_) => at(&mut events, now + 1, Ev::Arrive { client: *client }),
                    None => {
                        waiting.insert(context, (w, *client));
                    }
                }
                w
            }
            Ev::Answer { worker, token } => {
                workers[*worker].callout_done(&mut shared, token, alice(), now);
                *worker
            }
            Ev::Tick { worker } => {
                workers[*worker].tick(&mut shared, now);
                *worker
            }
        };
        let mut done = Vec::new();
        while let Some(command) = workers[w].poll() {
            match command {
                Command::Dispatch { token, .. } => {
                    calls += 1;
                    let delay = 2 + rng.below(19);
                    at(&mut events, now + delay, Ev::Answer { worker: w, token });
                }
                Command::Wake { context, .. } => done.push(context),
                Command::SetTick(p) => period[w] = p.as_millis() as u64,
                Command::Count(_) => {}
            }
        }
        if let Ev::Tick { worker } = ev {
            at(&mut events, now + period[worker], Ev::Tick { worker });
        }
        for context in done {
            if let Some((w, client)) = waiting.remove(&context) {
                workers[w].context_gone(&mut shared, context);
                while workers[w].poll().is_some() {}
                at(&mut events, now + 1, Ev::Arrive { client });
            }
        }
    }
    assert_eq!(next_work, work.len());
    calls
}

/// The bench's "1,000 requests over 100 new tokens" makes exactly 100 calls, on the
/// default cache size. With one entry per shared key it made 101 to 104 in 76 of these
/// 200 runs: two tokens in one key evicted each other.
#[test]
fn a_hundred_new_tokens_on_two_workers_make_a_hundred_calls() {
    let mut config = config(2);
    config.cache_max_entries = 10_000;
    let extra: Vec<(u64, usize)> = (0..200)
        .map(|seed| (seed, spread(seed * 2 + 1, 100, config.clone())))
        .filter(|&(_, calls)| calls != 100)
        .collect();
    assert!(extra.is_empty(), "{} of 200 runs: {extra:?}", extra.len());
}

/// Two workers storing answers for two tokens of one shared key at the same moment:
/// the compare-and-swap keeps both.
#[test]
fn answers_stored_at_once_in_one_key_are_both_kept() {
    let mut shared = Shared::default();
    let mut config = config(2);
    // One key: every token shares it.
    config.cache_max_entries = 4;
    let mut w1 = worker_with(&mut shared, 1, config.clone());
    let mut w2 = worker_with(&mut shared, 2, config);
    w1.callout_done(&mut shared, "tok-0", alice(), NOW);
    let key = w1.policy.slot_key("tok-a");
    assert_eq!(key, w1.policy.slot_key("tok-b"));
    let other = shared.clone();
    let mut racing = Interleaved {
        shared: shared.clone(),
        key: key.clone(),
        other: Some(move || {
            let mut other = other.clone();
            w2.callout_done(&mut other, "tok-b", alice(), NOW);
        }),
    };
    w1.callout_done(&mut racing, "tok-a", alice(), NOW);
    assert!(racing.other.is_none());
    let (value, _) = shared.get(&key);
    let bucket = Bucket::from_bytes(value.as_deref());
    for token in ["tok-0", "tok-a", "tok-b"] {
        assert!(bucket.hit(token, NOW).is_some(), "{token}");
    }
}

/// A shared data on which `other` runs once, just before the first write to `key`.
struct Interleaved<F: FnOnce()> {
    shared: Shared,
    key: String,
    other: Option<F>,
}

impl<F: FnOnce()> SharedData for Interleaved<F> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if key == self.key {
            if let Some(other) = self.other.take() {
                other();
            }
        }
        self.shared.set(key, value, cas)
    }
}
