//! The single-flight protocol: one `/userinfo` call per token, shared by every request
//! on every Envoy worker, as a sans-IO state machine.
//!
//! A Grafana dashboard opens twenty panels at once, each a request with the same new
//! token, spread over Envoy's workers; Auth0 allows about five `/userinfo` calls per user
//! per minute. So a request for an unknown token joins the token's *flight*: the first
//! request on a worker leads it, later ones wait for its answer. Across workers, a
//! [`FlightClaim`] in Envoy's shared data says which worker is calling for the token; the
//! other workers wait for its answer to land in the shared cache slot, polling on their
//! tick, and take over if the claim is freed without an answer or goes stale.
//!
//! Events go in as method calls ([`Flights::request`], [`Flights::callout_done`],
//! [`Flights::dispatch_failed`], [`Flights::tick`], [`Flights::context_gone`]), with the
//! time in milliseconds since the epoch (`now`); what the
//! host must do comes out of [`Flights::poll`] as [`Command`]s: make a callout, wake a
//! request, change the tick, count. Shared data sits behind [`SharedData`], so the
//! protocol runs the same against Envoy and against an in-memory map in tests, where
//! two workers are two `Flights` on one map.
//!
//! Claims live in a fixed set of [`FLIGHT_SLOTS`] keys created at start-up
//! ([`Flights::create_keys`]), because proxy-wasm's compare-and-swap only guards a key
//! that exists: two workers creating the same key at once would both believe they hold it.

use crate::cache::{fnv1a, Bucket, CacheEntry, CachePolicy, LocalCache};
use crate::config::UserinfoConfig;
use crate::identity::Identity;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How often the root context looks for orphaned or stuck lookups.
pub const TICK: Duration = Duration::from_secs(1);
/// The tick while requests wait for an identity another worker is fetching: how long
/// past that worker's answer they may wait before this worker sees it in shared data.
pub const REMOTE_POLL: Duration = Duration::from_millis(10);

/// Number of shared-data keys that hold [`FlightClaim`]s, per plugin configuration.
/// Two tokens in one key take turns (the second waits for the first's callout), so
/// the count only needs to exceed the new tokens a deployment sees at one moment.
pub const FLIGHT_SLOTS: u64 = 1024;

/// The value of a flight key nobody holds.
pub const FREE_FLIGHT: &[u8] = b"free";

/// Envoy's shared data, as the protocol uses it: one key-value store that every
/// worker's VM sees, with a compare-and-swap token per key.
pub trait SharedData {
    /// The value under `key` and its CAS token; `(None, None)` when there is none.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` under `key`: unconditionally when `cas` is `None`, otherwise only
    /// if the key's CAS token is still `cas`. As in Envoy, a key that does not exist
    /// yet is written whatever `cas` says.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// A write refused: another worker wrote the key since it was read (or the host
/// refused the write for another reason, which the protocol treats alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// Who makes a callout. Envoy runs every callout on the root context, but the SDK routes
/// its response to the context that dispatched it and drops it when that context is
/// gone; so a request leads a flight only while it lives, and the root takes over
/// flights whose leader went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The HTTP context with this id, from its own callback.
    Request(u32),
    /// The root context, from its tick.
    Root,
}

/// A counter the host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    CacheHit,
    CacheMiss,
    UserinfoCall,
    IdpError,
    /// A request waits for another worker's callout.
    RemoteWait,
}

/// What the host must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Call the IdP about `token`, from `from`'s callback (the current one); then report
    /// [`Flights::callout_done`], or [`Flights::dispatch_failed`] if it cannot start.
    Dispatch { token: String, from: Caller },
    /// The identity request `context` waited for is known.
    Wake { context: u32, identity: Identity },
    /// Tick at this period from now on.
    SetTick(Duration),
    /// Add one to this counter.
    Count(Metric),
}

/// Who runs a flight's callout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// An HTTP context: its callout dies with it.
    Request(u32),
    /// The root context, which adopted the flight.
    Root,
    /// The leading request went away before its callout returned; nobody calls.
    Orphaned,
    /// Another worker holds the token's claim: this worker polls shared data for its
    /// answer, and takes over if the claim is freed or goes stale.
    Remote,
}

#[derive(Debug, Clone)]
struct Flight {
    leader: Leader,
    /// Requests waiting for the answer, besides a leading request.
    waiters: Vec<u32>,
    started_at: u64,
}

impl Flight {
    fn contexts(&self) -> impl Iterator<Item = u32> + '_ {
        let leader = match self.leader {
            Leader::Request(context) => Some(context),
            _ => None,
        };
        leader.into_iter().chain(self.waiters.iter().copied())
    }
}

/// What taking a token's claim came to.
enum Claim {
    /// This worker calls the IdP.
    Mine,
    /// Another worker is calling for this token (or for another token in the same
    /// flight key): wait for its answer in shared data.
    Busy,
    /// The answer landed in shared data meanwhile.
    Cached(CacheEntry),
}

/// The identity lookups of one plugin configuration on one worker: its first-level
/// cache, its flights, and its part in the cross-worker protocol.
#[derive(Debug)]
pub struct Flights {
    policy: CachePolicy,
    timeout_ms: u64,
    /// This worker's name in [`FlightClaim`]s: random, since every worker's VM is a
    /// clone of the same module and knows nothing else that tells it apart.
    owner: u64,
    local: LocalCache,
    flights: BTreeMap<String, Flight>,
    /// True while the host ticks at [`REMOTE_POLL`] rather than [`TICK`].
    polling_fast: bool,
    commands: VecDeque<Command>,
}

impl Flights {
    /// The protocol for a userinfo configuration, on the worker named `owner`. The host
    /// starts with a tick of [`TICK`].
    pub fn new(config: &UserinfoConfig, claim: &[String], owner: u64) -> Flights {
        let policy = CachePolicy::new(config, claim);
        Flights {
            local: LocalCache::new(policy.local_slots()),
            policy,
            timeout_ms: config.timeout_ms,
            owner,
            flights: BTreeMap::new(),
            polling_fast: false,
            commands: VecDeque::new(),
        }
    }

    /// Creates this configuration's flight keys, free, where no worker has yet.
    pub fn create_keys(&self, shared: &mut impl SharedData) {
        for slot in 0..FLIGHT_SLOTS {
            let key = flight_key_at(&self.policy, slot);
            if shared.get(&key) == (None, None) {
                let _ = shared.set(&key, FREE_FLIGHT, None);
            }
        }
    }

    /// The next thing the host must do, in order.
    pub fn poll(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Entries in this worker's first-level cache.
    pub fn local_entries(&self) -> usize {
        self.local.len()
    }

    /// Request `context` needs `token`'s identity at `now` (ms): known now (`Some`), or
    /// later through a [`Command::Wake`] for `context`.
    pub fn request(
        &mut self,
        shared: &mut impl SharedData,
        context: u32,
        token: &str,
        now: u64,
    ) -> Option<Identity> {
        if let Some(identity) = self.local.get(token, now) {
            let identity = identity.clone();
            self.count(Metric::CacheHit);
            return Some(identity);
        }
        if let Some(entry) = self.shared_hit(shared, token, now) {
            self.count(Metric::CacheHit);
            return Some(self.remember(entry));
        }
        self.count(Metric::CacheMiss);
        if let Some(flight) = self.flights.get_mut(token) {
            if flight.leader != Leader::Request(context) && !flight.waiters.contains(&context) {
                flight.waiters.push(context);
            }
            return None;
        }
        let (leader, waiters) = match self.claim(shared, token, now) {
            Claim::Cached(entry) => return Some(self.remember(entry)),
            Claim::Busy => {
                self.count(Metric::RemoteWait);
                (Leader::Remote, vec![context])
            }
            Claim::Mine => {
                self.dispatch(token, Caller::Request(context));
                (Leader::Request(context), Vec::new())
            }
        };
        let flight = Flight {
            leader,
            waiters,
            started_at: now,
        };
        self.flights.insert(token.to_string(), flight);
        self.update_polling();
        None
    }

    /// The IdP answered about `token` (or its callout timed out or failed: then
    /// `identity` is [`Identity::Unavailable`]): remember it, free the claim, wake the
    /// flight's requests.
    pub fn callout_done(
        &mut self,
        shared: &mut impl SharedData,
        token: &str,
        identity: Identity,
        now: u64,
    ) {
        if matches!(identity, Identity::Unavailable(_)) {
            self.count(Metric::IdpError);
        }
        if let Some(entry) = self.policy.entry_for(token, &identity, now) {
            self.store(shared, &entry, now);
            self.local.insert(entry);
        }
        // After the store: a worker that finds the claim freed then finds the answer.
        self.release(shared, token);
        self.finish(token, identity);
    }

    /// The callout for `token` could not even start (an unknown cluster, say): its
    /// requests get 503 and nothing is remembered.
    pub fn dispatch_failed(&mut self, shared: &mut impl SharedData, token: &str) {
        self.count(Metric::IdpError);
        self.release(shared, token);
        self.finish(
            token,
            Identity::Unavailable("identity provider unavailable".into()),
        );
    }

    /// Request `context` is gone. A waiter is forgotten; a leader with waiters leaves
    /// its flight to the root's next tick; a flight nobody waits for any more ends, and
    /// this worker's claim for it is freed so that another worker need not wait.
    pub fn context_gone(&mut self, shared: &mut impl SharedData, context: u32) {
        let mut ended = Vec::new();
        for (token, flight) in self.flights.iter_mut() {
            flight.waiters.retain(|&w| w != context);
            if flight.leader == Leader::Request(context) {
                flight.leader = Leader::Orphaned;
            }
            let nobody_waits = flight.waiters.is_empty();
            match flight.leader {
                Leader::Orphaned | Leader::Remote if nobody_waits => {
                    ended.push((token.clone(), flight.leader == Leader::Orphaned));
                }
                _ => {}
            }
        }
        for (token, ours) in ended {
            self.flights.remove(&token);
            if ours {
                self.release(shared, &token);
            }
        }
        self.update_polling();
    }

    /// The root's tick: refuses the requests of lookups that never came back, calls
    /// for flights whose leader went away, and looks in shared data for the answers
    /// other workers are fetching.
    pub fn tick(&mut self, shared: &mut impl SharedData, now: u64) {
        let max_age = self.timeout_ms.saturating_add(5000);
        let stuck: Vec<String> = self
            .flights
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.started_at) > max_age)
            .map(|(t, _)| t.clone())
            .collect();
        for token in stuck {
            self.release(shared, &token);
            self.finish(
                &token,
                Identity::Unavailable("identity lookup timed out".into()),
            );
        }
        let pending: Vec<(String, Leader)> = self
            .flights
            .iter()
            .filter(|(_, f)| matches!(f.leader, Leader::Orphaned | Leader::Remote))
            .map(|(t, f)| (t.clone(), f.leader))
            .collect();
        for (token, leader) in pending {
            if leader == Leader::Remote {
                if let Some(entry) = self.shared_hit(shared, &token, now) {
                    let identity = self.remember(entry);
                    self.finish(&token, identity);
                    continue;
                }
            }
            // Our own claim is free to us: an orphan's claim is renewed here.
            match self.claim(shared, &token, now) {
                Claim::Cached(entry) => {
                    let identity = self.remember(entry);
                    self.finish(&token, identity);
                }
                Claim::Busy => {
                    if let Some(flight) = self.flights.get_mut(&token) {
                        flight.leader = Leader::Remote;
                    }
                }
                Claim::Mine => {
                    if let Some(flight) = self.flights.get_mut(&token) {
                        flight.leader = Leader::Root;
                        flight.started_at = now;
                    }
                    self.dispatch(&token, Caller::Root);
                }
            }
        }
        self.update_polling();
    }

    fn count(&mut self, metric: Metric) {
        self.commands.push_back(Command::Count(metric));
    }

    fn dispatch(&mut self, token: &str, from: Caller) {
        self.count(Metric::UserinfoCall);
        self.commands.push_back(Command::Dispatch {
            token: token.to_string(),
            from,
        });
    }

    /// Ends `token`'s flight and wakes its requests with `identity`.
    fn finish(&mut self, token: &str, identity: Identity) {
        if let Some(flight) = self.flights.remove(token) {
            for context in flight.contexts() {
                self.commands.push_back(Command::Wake {
                    context,
                    identity: identity.clone(),
                });
            }
        }
        self.update_polling();
    }

    /// Keeps a shared-data answer in the first level; returns its identity.
    fn remember(&mut self, entry: CacheEntry) -> Identity {
        let identity = entry.identity.clone();
        self.local.insert(entry);
        identity
    }

    /// Adds `entry` to its shared bucket, beside the other tokens' entries there.
    fn store(&self, shared: &mut impl SharedData, entry: &CacheEntry, now: u64) {
        let key = self.policy.slot_key(&entry.token);
        // A lost compare-and-swap means another worker stored meanwhile: merge again.
        // Losing every try costs a cache miss, never a wrong answer. A key nobody wrote
        // yet takes any write (Envoy's CAS only guards a key that exists), so two first
        // writes at the same moment can keep only the later one: once per key's life,
        // one extra call at worst, where creating every key up front would cost
        // `cache_max_entries / WAYS` keys of memory from the start.
        for _ in 0..4 {
            let (value, cas) = shared.get(&key);
            let bucket = Bucket::from_bytes(value.as_deref()).with(entry.clone(), now);
            if shared.set(&key, &bucket.to_bytes(), cas).is_ok() {
                return;
            }
        }
    }

    fn shared_hit(&self, shared: &impl SharedData, token: &str, now: u64) -> Option<CacheEntry> {
        let (value, _) = shared.get(&self.policy.slot_key(token));
        self.policy.shared_hit(token, value.as_deref(), now)
    }

    /// Takes `token`'s claim, unless another worker holds it.
    fn claim(&mut self, shared: &mut impl SharedData, token: &str, now: u64) -> Claim {
        let key = flight_key(&self.policy, token);
        let claim = FlightClaim::new(self.owner, token, now, self.timeout_ms);
        // Two tries: a compare-and-swap lost to another worker means it just claimed,
        // and the second read says for which token.
        for _ in 0..2 {
            let (value, cas) = shared.get(&key);
            let free = match FlightClaim::live(value.as_deref(), now) {
                None => true,
                // Our own claim for this token, with no flight left behind it or one
                // this worker takes over.
                Some(held) => held.owner == self.owner && held.is_for(token),
            };
            if !free {
                return Claim::Busy;
            }
            if shared.set(&key, &claim.to_bytes(), cas).is_err() {
                continue;
            }
            // Whoever held the claim before stored its answer before releasing it.
            if let Some(entry) = self.shared_hit(shared, token, now) {
                self.release(shared, token);
                return Claim::Cached(entry);
            }
            return Claim::Mine;
        }
        Claim::Busy
    }

    /// Frees `token`'s claim if this worker holds it.
    fn release(&self, shared: &mut impl SharedData, token: &str) {
        let key = flight_key(&self.policy, token);
        let (value, cas) = shared.get(&key);
        // Deadline 0: a claim of ours is released even when already stale.
        let held = FlightClaim::live(value.as_deref(), 0);
        if held.is_some_and(|c| c.owner == self.owner && c.is_for(token)) {
            // A lost compare-and-swap means someone took it over: leave theirs alone.
            let _ = shared.set(&key, FREE_FLIGHT, cas);
        }
    }

    /// Ticks fast while requests wait on another worker's callout, slowly otherwise.
    fn update_polling(&mut self) {
        let fast = self.flights.values().any(|f| f.leader == Leader::Remote);
        if fast != self.polling_fast {
            self.polling_fast = fast;
            let period = if fast { REMOTE_POLL } else { TICK };
            self.commands.push_back(Command::SetTick(period));
        }
    }
}

/// The shared-data key holding the [`FlightClaim`] for `token`'s callout.
fn flight_key(policy: &CachePolicy, token: &str) -> String {
    flight_key_at(policy, token_hash(token) % FLIGHT_SLOTS)
}

fn flight_key_at(policy: &CachePolicy, slot: u64) -> String {
    format!("{}flight.{slot}", policy.key_prefix())
}

const CLAIM_MAGIC: &[u8; 4] = b"PTFC";

/// "Worker `owner` is asking the IdP about the token hashed to `token_hash`, until
/// `deadline`." Only a hash of the token is kept: a claim decides who waits, never who
/// is who, so a collision costs a wait and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightClaim {
    pub owner: u64,
    pub token_hash: u64,
    /// Milliseconds since the epoch after which the claim is void (its worker is gone
    /// or its callout lost), so that another worker takes over.
    pub deadline: u64,
}

impl FlightClaim {
    /// The claim `owner` makes for `token` at `now` (ms): valid for one callout timeout,
    /// and a second more for the answer to be stored.
    pub fn new(owner: u64, token: &str, now: u64, timeout_ms: u64) -> FlightClaim {
        FlightClaim {
            owner,
            token_hash: token_hash(token),
            deadline: now.saturating_add(timeout_ms).saturating_add(1000),
        }
    }

    /// True when this claim is for `token`.
    pub fn is_for(&self, token: &str) -> bool {
        self.token_hash == token_hash(token)
    }

    /// Serializes the claim for a flight key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28);
        out.extend_from_slice(CLAIM_MAGIC);
        out.extend_from_slice(&self.owner.to_le_bytes());
        out.extend_from_slice(&self.token_hash.to_le_bytes());
        out.extend_from_slice(&self.deadline.to_le_bytes());
        out
    }

    /// The claim a flight key holds at `now`: `None` when it is free, malformed or
    /// past its deadline, which all mean "nobody is calling".
    pub fn live(bytes: Option<&[u8]>, now: u64) -> Option<FlightClaim> {
        let rest = bytes?.strip_prefix(CLAIM_MAGIC)?;
        if rest.len() != 24 {
            return None;
        }
        let word = |at: usize| Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?));
        let claim = FlightClaim {
            owner: word(0)?,
            token_hash: word(8)?,
            deadline: word(16)?,
        };
        (now < claim.deadline).then_some(claim)
    }
}

fn token_hash(token: &str) -> u64 {
    fnv1a(&[b"flight", token.as_bytes()])
}

#[cfg(test)]
#[path = "flight_tests.rs"]
mod tests;
