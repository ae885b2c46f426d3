//! The identity cache policy, as plain data structures with the time passed in.
//!
//! Two levels: a per-worker [`LocalCache`] in front, and Envoy's shared data behind,
//! which every worker of the VM sees. Envoy never frees a shared-data key, so the
//! shared level is a fixed set of hash slots (`cache_max_entries` keys per config):
//! a token maps to one slot, and a newer token in the same slot overwrites it.
//! The per-worker level uses the same direct-mapped scheme, which bounds it for free.
//!
//! Every entry stores the full token and a hit compares it: a slot hash is only an
//! address, never a proof of identity, because a collision would hand one caller
//! another caller's tenant.
//!
//! [`Flights`] is the single-flight bookkeeping: concurrent requests on one worker
//! with the same uncached token wait for one `/userinfo` callout (a Grafana dashboard
//! opens twenty panels at once; Auth0 allows about five calls per user per minute).
//! Across workers, a [`FlightClaim`] in shared data says which worker is calling for a
//! token: the others wait for its answer to land in the shared slot instead of calling
//! too. Claims live in a fixed set of [`FLIGHT_SLOTS`] keys that the filter creates at
//! start-up, because proxy-wasm's compare-and-swap only protects a key that exists.

use crate::config::UserinfoConfig;
use crate::identity::UserinfoOutcome;
use std::collections::HashMap;

/// Most slots of the per-worker level: every worker holds its own copy.
pub const MAX_LOCAL_SLOTS: usize = 4096;

/// What the cache remembers about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedIdentity {
    /// The IdP vouched for the token, with these tenants.
    Tenants(Vec<String>),
    /// The IdP vouched for the token, but it carries no usable tenant (403).
    NoTenant(String),
    /// The IdP refused the token (401).
    Rejected,
    /// The lookup failed (IdP down, 5xx, 429, timeout): 503 until a short TTL ends, so
    /// that an IdP in trouble gets one retry per token per TTL, not one per request.
    Failed(String),
}

impl CachedIdentity {
    /// What the cache remembers of a callout outcome.
    pub fn from_outcome(outcome: &UserinfoOutcome) -> CachedIdentity {
        match outcome {
            UserinfoOutcome::Tenants(t) => CachedIdentity::Tenants(t.clone()),
            UserinfoOutcome::NoTenant(why) => CachedIdentity::NoTenant(why.clone()),
            UserinfoOutcome::Rejected => CachedIdentity::Rejected,
            UserinfoOutcome::Unavailable(why) => CachedIdentity::Failed(why.clone()),
        }
    }
}

/// One cached answer: for which token, what, and until when (seconds since epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub token: String,
    pub identity: CachedIdentity,
    pub expires_at: u64,
}

const MAGIC: &[u8; 4] = b"PTF1";
const KIND_TENANTS: u8 = 0;
const KIND_NO_TENANT: u8 = 1;
const KIND_REJECTED: u8 = 2;
const KIND_FAILED: u8 = 3;

impl CacheEntry {
    /// True while `now` is before the expiry.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// True when this entry answers for `token` at `now`: full comparison, not a hash.
    pub fn answers(&self, token: &str, now: u64) -> bool {
        self.is_fresh(now) && self.token == token
    }

    /// Serializes the entry for a shared-data slot.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.token.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        match &self.identity {
            CachedIdentity::Tenants(_) => out.push(KIND_TENANTS),
            CachedIdentity::NoTenant(_) => out.push(KIND_NO_TENANT),
            CachedIdentity::Rejected => out.push(KIND_REJECTED),
            CachedIdentity::Failed(_) => out.push(KIND_FAILED),
        }
        put_str(&mut out, &self.token);
        match &self.identity {
            CachedIdentity::Tenants(tenants) => {
                put_len(&mut out, tenants.len());
                for tenant in tenants {
                    put_str(&mut out, tenant);
                }
            }
            CachedIdentity::NoTenant(why) | CachedIdentity::Failed(why) => put_str(&mut out, why),
            CachedIdentity::Rejected => {}
        }
        out
    }

    /// Reads a slot value back. Anything malformed is `None`: a cache miss, never a
    /// panic, since another plugin version may share the VM's keys.
    pub fn from_bytes(bytes: &[u8]) -> Option<CacheEntry> {
        let mut r = Reader { bytes };
        if r.take(4)? != MAGIC {
            return None;
        }
        let expires_at = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let kind = r.take(1)?[0];
        let token = r.string()?;
        let identity = match kind {
            KIND_TENANTS => {
                let count = r.len()?;
                // Every tenant takes at least 4 bytes, so a huge count fails fast.
                if count > r.bytes.len() / 4 {
                    return None;
                }
                let mut tenants = Vec::with_capacity(count);
                for _ in 0..count {
                    tenants.push(r.string()?);
                }
                if tenants.is_empty() {
                    return None;
                }
                CachedIdentity::Tenants(tenants)
            }
            KIND_NO_TENANT => CachedIdentity::NoTenant(r.string()?),
            KIND_REJECTED => CachedIdentity::Rejected,
            KIND_FAILED => CachedIdentity::Failed(r.string()?),
            _ => return None,
        };
        if !r.bytes.is_empty() {
            return None;
        }
        Some(CacheEntry {
            token,
            identity,
            expires_at,
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Tokens and tenants are bounded far below 4 GiB by the identity module.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn len(&mut self) -> Option<usize> {
        let raw = self.take(4)?;
        usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// FNV-1a, 64 bits: stable across workers and builds, which slot keys must be.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// TTLs, slot count and key names for one plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    ttl_s: u64,
    negative_ttl_s: u64,
    failure_ttl_s: u64,
    slots: u64,
    key_prefix: String,
}

impl CachePolicy {
    /// The policy for a userinfo config. The key prefix fingerprints everything that
    /// shapes a cached answer (IdP, claim, slot count), so two plugin configs sharing a
    /// VM never read each other's entries.
    pub fn new(config: &UserinfoConfig, claim: &[String]) -> CachePolicy {
        let mut parts: Vec<&[u8]> = vec![
            config.cluster.as_bytes(),
            config.authority.as_bytes(),
            config.path.as_bytes(),
        ];
        parts.extend(claim.iter().map(|c| c.as_bytes()));
        let slots_text = config.cache_max_entries.to_string();
        parts.push(slots_text.as_bytes());
        CachePolicy {
            ttl_s: config.cache_ttl_s,
            negative_ttl_s: config.negative_cache_ttl_s,
            failure_ttl_s: config.failure_cache_ttl_s,
            slots: config.cache_max_entries.max(1),
            key_prefix: format!("promql_tenant_filter.v1.{:016x}.", fnv1a(&parts)),
        }
    }

    /// Number of shared-data slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Number of per-worker slots.
    pub fn local_slots(&self) -> usize {
        usize::try_from(self.slots)
            .unwrap_or(MAX_LOCAL_SLOTS)
            .min(MAX_LOCAL_SLOTS)
    }

    /// The shared-data key of the slot `token` lives in.
    pub fn slot_key(&self, token: &str) -> String {
        format!(
            "{}{}",
            self.key_prefix,
            fnv1a(&[token.as_bytes()]) % self.slots
        )
    }

    /// The shared-data key holding the [`FlightClaim`] for `token`'s callout.
    pub fn flight_key(&self, token: &str) -> String {
        self.flight_key_at(token_hash(token) % FLIGHT_SLOTS)
    }

    /// Every flight key of this configuration, to create them before they are used.
    pub fn flight_keys(&self) -> impl Iterator<Item = String> + '_ {
        (0..FLIGHT_SLOTS).map(|slot| self.flight_key_at(slot))
    }

    fn flight_key_at(&self, slot: u64) -> String {
        format!("{}flight.{slot}", self.key_prefix)
    }

    /// The entry to store for a callout outcome, or `None` when its TTL is 0.
    pub fn entry_for(
        &self,
        token: &str,
        outcome: &UserinfoOutcome,
        now: u64,
    ) -> Option<CacheEntry> {
        let identity = CachedIdentity::from_outcome(outcome);
        let ttl = match identity {
            CachedIdentity::Rejected => self.negative_ttl_s,
            CachedIdentity::Failed(_) => self.failure_ttl_s,
            _ => self.ttl_s,
        };
        if ttl == 0 {
            return None;
        }
        Some(CacheEntry {
            token: token.to_string(),
            identity,
            expires_at: now.saturating_add(ttl),
        })
    }

    /// Reads a shared-data slot value for `token`: a hit only if it decodes, is fresh,
    /// and holds exactly this token.
    pub fn shared_hit(
        &self,
        token: &str,
        slot_value: Option<&[u8]>,
        now: u64,
    ) -> Option<CacheEntry> {
        let entry = CacheEntry::from_bytes(slot_value?)?;
        entry.answers(token, now).then_some(entry)
    }
}

/// Number of shared-data keys that hold [`FlightClaim`]s, per plugin configuration.
/// Two tokens in one key take turns (the second waits for the first's callout), so
/// the count only needs to exceed the new tokens a deployment sees at one moment.
pub const FLIGHT_SLOTS: u64 = 1024;

/// The value of a flight key nobody holds.
pub const FREE_FLIGHT: &[u8] = b"free";

const CLAIM_MAGIC: &[u8; 4] = b"PTFC";

/// "Worker `owner` is asking the IdP about the token hashed to `token_hash`, until
/// `deadline`." Only a hash of the token is kept: a claim decides who waits, never who
/// is who, so a collision costs a wait and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlightClaim {
    pub owner: u64,
    pub token_hash: u64,
    /// Seconds since the epoch after which the claim is void (its worker is gone or
    /// its callout lost), so that another worker takes over.
    pub deadline: u64,
}

impl FlightClaim {
    /// The claim `owner` makes for `token` at `now`, valid for one callout timeout.
    pub fn new(owner: u64, token: &str, now: u64, timeout_ms: u64) -> FlightClaim {
        FlightClaim {
            owner,
            token_hash: token_hash(token),
            // Whole seconds, rounded up, and one more: `now` is coarse.
            deadline: now.saturating_add(timeout_ms.div_ceil(1000) + 1),
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
        let mut r = Reader { bytes: bytes? };
        if r.take(4)? != CLAIM_MAGIC {
            return None;
        }
        let mut word = || Some(u64::from_le_bytes(r.take(8)?.try_into().ok()?));
        let claim = FlightClaim {
            owner: word()?,
            token_hash: word()?,
            deadline: word()?,
        };
        (r.bytes.is_empty() && now < claim.deadline).then_some(claim)
    }
}

fn token_hash(token: &str) -> u64 {
    fnv1a(&[b"flight", token.as_bytes()])
}

/// The per-worker first level: direct-mapped slots, each holding one entry.
#[derive(Debug, Clone)]
pub struct LocalCache {
    slots: Vec<Option<CacheEntry>>,
}

impl LocalCache {
    /// A cache of `slots` slots (at least one).
    pub fn new(slots: usize) -> LocalCache {
        LocalCache {
            slots: vec![None; slots.max(1)],
        }
    }

    fn index(&self, token: &str) -> usize {
        // The modulo result is below `slots.len()`, so it fits in usize.
        (fnv1a(&[token.as_bytes()]) % self.slots.len() as u64) as usize
    }

    /// The fresh entry for exactly this token, if any. Stale entries are dropped.
    pub fn get(&mut self, token: &str, now: u64) -> Option<&CachedIdentity> {
        let index = self.index(token);
        let slot = self.slots.get_mut(index)?;
        if slot.as_ref().is_some_and(|e| !e.is_fresh(now)) {
            *slot = None;
        }
        match slot {
            Some(entry) if entry.token == token => Some(&entry.identity),
            _ => None,
        }
    }

    /// Stores an entry, replacing whatever shared its slot.
    pub fn insert(&mut self, entry: CacheEntry) {
        let index = self.index(&entry.token);
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(entry);
        }
    }

    /// Number of occupied slots (for tests and sanity checks).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// Who is running the callout of a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    /// An HTTP context: its callout dies with it.
    Request(u32),
    /// The root context, which adopted an orphaned flight.
    Root,
    /// The leading request went away before its callout returned; nobody calls.
    Orphaned,
    /// Another worker holds the token's [`FlightClaim`]: this worker polls shared data
    /// for its answer, and takes over if the claim is released or goes stale.
    Remote,
}

#[derive(Debug, Clone)]
struct Flight {
    leader: Leader,
    waiters: Vec<u32>,
    started_at: u64,
}

/// How a request joined a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// No callout was running for the token: this request must make it.
    Leader,
    /// A callout is running: this request waits for it.
    Waiter,
}

/// Single-flight bookkeeping for one worker: token → who calls and who waits.
#[derive(Debug, Default)]
pub struct Flights {
    flights: HashMap<String, Flight>,
}

impl Flights {
    /// An empty registry.
    pub fn new() -> Flights {
        Flights::default()
    }

    /// Registers `context_id` as interested in `token`'s identity.
    pub fn join(&mut self, token: &str, context_id: u32, now: u64) -> Joined {
        match self.flights.get_mut(token) {
            Some(flight) => {
                if flight.leader != Leader::Request(context_id)
                    && !flight.waiters.contains(&context_id)
                {
                    flight.waiters.push(context_id);
                }
                Joined::Waiter
            }
            None => {
                self.flights.insert(
                    token.to_string(),
                    Flight {
                        leader: Leader::Request(context_id),
                        waiters: Vec::new(),
                        started_at: now,
                    },
                );
                Joined::Leader
            }
        }
    }

    /// The callout for `token` finished (or could not start): ends the flight and
    /// returns the waiting contexts, which must now be answered.
    pub fn complete(&mut self, token: &str) -> Vec<u32> {
        self.flights
            .remove(token)
            .map(|f| f.waiters)
            .unwrap_or_default()
    }

    /// `context_id` went away. A waiter is forgotten; a leader with waiters leaves an
    /// orphaned flight for the root context to adopt; a leader alone ends the flight,
    /// and so does a remote flight nobody waits for any more. Returns the tokens whose
    /// flight ended while this worker was the caller: their claims must be released.
    pub fn leave(&mut self, context_id: u32) -> Vec<String> {
        let mut ended_own = Vec::new();
        let mut ended_remote = Vec::new();
        for (token, flight) in self.flights.iter_mut() {
            flight.waiters.retain(|&w| w != context_id);
            if flight.leader == Leader::Request(context_id) {
                if flight.waiters.is_empty() {
                    ended_own.push(token.clone());
                } else {
                    flight.leader = Leader::Orphaned;
                }
            } else if flight.leader == Leader::Remote && flight.waiters.is_empty() {
                ended_remote.push(token.clone());
            }
        }
        for token in ended_own.iter().chain(&ended_remote) {
            self.flights.remove(token);
        }
        ended_own
    }

    /// The flight `context_id` leads turns out to be another worker's: the leader
    /// becomes a waiter, and the flight waits on that worker's answer.
    pub fn wait_remote(&mut self, token: &str, context_id: u32) {
        if let Some(flight) = self.flights.get_mut(token) {
            flight.leader = Leader::Remote;
            if !flight.waiters.contains(&context_id) {
                flight.waiters.push(context_id);
            }
        }
    }

    /// Tokens whose answer another worker is fetching.
    pub fn remote(&self) -> Vec<String> {
        self.flights
            .iter()
            .filter(|(_, f)| f.leader == Leader::Remote)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Tokens whose flight has waiters but nobody calling.
    pub fn orphans(&self) -> Vec<String> {
        self.flights
            .iter()
            .filter(|(_, f)| f.leader == Leader::Orphaned)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Makes the root context the caller of an orphaned or remote flight; false if the
    /// flight is neither.
    pub fn adopt(&mut self, token: &str, now: u64) -> bool {
        match self.flights.get_mut(token) {
            Some(flight) if matches!(flight.leader, Leader::Orphaned | Leader::Remote) => {
                flight.leader = Leader::Root;
                flight.started_at = now;
                true
            }
            _ => false,
        }
    }

    /// Ends flights older than `max_age_s` (a callout that never came back) and
    /// returns their tokens and waiters, which must be refused rather than left hanging.
    pub fn expire(&mut self, now: u64, max_age_s: u64) -> Vec<(String, Vec<u32>)> {
        let stale: Vec<String> = self
            .flights
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.started_at) > max_age_s)
            .map(|(t, _)| t.clone())
            .collect();
        stale
            .into_iter()
            .map(|t| {
                let waiters = self.complete(&t);
                (t, waiters)
            })
            .collect()
    }

    /// The leader of `token`'s flight, if there is one.
    pub fn leader(&self, token: &str) -> Option<Leader> {
        self.flights.get(token).map(|f| f.leader)
    }

    /// Number of flights in progress.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// True when no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userinfo(slots: u64, ttl: u64, negative_ttl: u64) -> UserinfoConfig {
        UserinfoConfig {
            cluster: "oidc".into(),
            authority: "oidc".into(),
            path: "/userinfo".into(),
            timeout_ms: 2000,
            cache_ttl_s: ttl,
            negative_cache_ttl_s: negative_ttl,
            failure_cache_ttl_s: 2,
            cache_max_entries: slots,
        }
    }

    fn policy(slots: u64) -> CachePolicy {
        CachePolicy::new(&userinfo(slots, 300, 10), &["client_id".to_string()])
    }

    fn tenants(t: &[&str]) -> UserinfoOutcome {
        UserinfoOutcome::Tenants(t.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn entry_round_trips_through_bytes() {
        for identity in [
            CachedIdentity::Tenants(vec!["1999".into(), "é|x".into()]),
            CachedIdentity::NoTenant("no claim".into()),
            CachedIdentity::Rejected,
        ] {
            let entry = CacheEntry {
                token: "tok.en".into(),
                identity,
                expires_at: 1_700_000_000,
            };
            assert_eq!(CacheEntry::from_bytes(&entry.to_bytes()), Some(entry));
        }
    }

    #[test]
    fn malformed_slot_values_are_misses() {
        let good = CacheEntry {
            token: "t".into(),
            identity: CachedIdentity::Tenants(vec!["1".into()]),
            expires_at: 10,
        }
        .to_bytes();
        for cut in 0..good.len() {
            assert_eq!(CacheEntry::from_bytes(&good[..cut]), None, "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(CacheEntry::from_bytes(&trailing), None);
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(CacheEntry::from_bytes(&bad_magic), None);
        let mut bad_kind = good.clone();
        bad_kind[12] = 9;
        assert_eq!(CacheEntry::from_bytes(&bad_kind), None);
        // A tenant count claiming billions of entries.
        let mut huge = good[..17 + 1].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(CacheEntry::from_bytes(&huge), None);
        assert_eq!(CacheEntry::from_bytes(b""), None);
    }

    #[test]
    fn positive_and_negative_ttls() {
        let p = CachePolicy::new(&userinfo(100, 300, 10), &["c".into()]);
        let ok = p.entry_for("a", &tenants(&["1"]), 1000).unwrap();
        assert_eq!(ok.expires_at, 1300);
        let no_tenant = p
            .entry_for("a", &UserinfoOutcome::NoTenant("x".into()), 1000)
            .unwrap();
        assert_eq!(no_tenant.expires_at, 1300);
        let rejected = p.entry_for("a", &UserinfoOutcome::Rejected, 1000).unwrap();
        assert_eq!(rejected.expires_at, 1010);
        assert_eq!(rejected.identity, CachedIdentity::Rejected);
        assert!(rejected.answers("a", 1009));
        assert!(!rejected.answers("a", 1010));
    }

    #[test]
    fn failures_are_cached_briefly_and_zero_ttls_not_at_all() {
        let p = policy(100);
        let failed = p
            .entry_for("a", &UserinfoOutcome::Unavailable("down".into()), 10)
            .unwrap();
        assert_eq!(failed.identity, CachedIdentity::Failed("down".into()));
        assert_eq!(failed.expires_at, 12);
        assert_eq!(CacheEntry::from_bytes(&failed.to_bytes()), Some(failed));
        let mut config = userinfo(100, 0, 0);
        config.failure_cache_ttl_s = 0;
        let p = CachePolicy::new(&config, &["c".into()]);
        assert_eq!(p.entry_for("a", &tenants(&["1"]), 0), None);
        assert_eq!(p.entry_for("a", &UserinfoOutcome::Rejected, 0), None);
        let down = UserinfoOutcome::Unavailable("down".into());
        assert_eq!(p.entry_for("a", &down, 0), None);
    }

    #[test]
    fn shared_hit_compares_the_full_token() {
        // One slot: every token collides.
        let p = policy(1);
        assert_eq!(p.slot_key("alice-token"), p.slot_key("bob-token"));
        let alice = p
            .entry_for("alice-token", &tenants(&["1999"]), 100)
            .unwrap();
        let stored = alice.to_bytes();
        assert_eq!(p.shared_hit("alice-token", Some(&stored), 101), Some(alice));
        assert_eq!(p.shared_hit("bob-token", Some(&stored), 101), None);
        assert_eq!(p.shared_hit("alice-token", Some(&stored), 400), None);
        assert_eq!(p.shared_hit("alice-token", None, 101), None);
    }

    #[test]
    fn slot_keys_are_bounded_and_namespaced() {
        let p = policy(8);
        let keys: std::collections::HashSet<String> = (0..1000)
            .map(|i| p.slot_key(&format!("token-{i}")))
            .collect();
        assert!(keys.len() <= 8);
        assert!(keys.len() > 1);
        let other_claim = CachePolicy::new(&userinfo(8, 300, 10), &["tenant".into()]);
        assert_ne!(p.slot_key("x"), other_claim.slot_key("x"));
        assert!(p.slot_key("x").starts_with("promql_tenant_filter.v1."));
        assert!(!p.slot_key("secret").contains("secret"));
    }

    #[test]
    fn local_cache_hit_expiry_and_collision() {
        let p = policy(1);
        let mut local = LocalCache::new(p.local_slots());
        assert_eq!(local.capacity(), 1);
        local.insert(p.entry_for("alice", &tenants(&["1999"]), 0).unwrap());
        assert_eq!(
            local.get("alice", 10),
            Some(&CachedIdentity::Tenants(vec!["1999".into()]))
        );
        // Same slot, other token: never answered with alice's tenants.
        assert_eq!(local.get("bob", 10), None);
        local.insert(p.entry_for("bob", &tenants(&["2000"]), 0).unwrap());
        assert_eq!(local.get("alice", 10), None);
        assert_eq!(
            local.get("bob", 10),
            Some(&CachedIdentity::Tenants(vec!["2000".into()]))
        );
        // Expired entries are gone.
        assert_eq!(local.get("bob", 300), None);
        assert!(local.is_empty());
    }

    #[test]
    fn local_cache_bound_holds() {
        let p = policy(1_000_000);
        assert_eq!(p.local_slots(), MAX_LOCAL_SLOTS);
        let mut local = LocalCache::new(16);
        for i in 0..10_000 {
            local.insert(CacheEntry {
                token: format!("t{i}"),
                identity: CachedIdentity::Rejected,
                expires_at: 100,
            });
        }
        assert!(local.len() <= 16);
        assert_eq!(local.capacity(), 16);
        assert_eq!(LocalCache::new(0).capacity(), 1);
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }

    #[test]
    fn single_flight_one_leader_many_waiters() {
        let mut f = Flights::new();
        assert_eq!(f.join("tok", 1, 0), Joined::Leader);
        assert_eq!(f.join("tok", 2, 0), Joined::Waiter);
        assert_eq!(f.join("tok", 3, 0), Joined::Waiter);
        assert_eq!(f.join("tok", 3, 0), Joined::Waiter);
        assert_eq!(f.join("other", 4, 0), Joined::Leader);
        assert_eq!(f.len(), 2);
        assert_eq!(f.complete("tok"), vec![2, 3]);
        assert_eq!(f.complete("tok"), Vec::<u32>::new());
        assert_eq!(f.join("tok", 5, 0), Joined::Leader);
    }

    #[test]
    fn waiter_leaving_is_forgotten() {
        let mut f = Flights::new();
        f.join("tok", 1, 0);
        f.join("tok", 2, 0);
        f.join("tok", 3, 0);
        f.leave(2);
        assert_eq!(f.complete("tok"), vec![3]);
    }

    #[test]
    fn leader_leaving_orphans_the_flight_for_the_root() {
        let mut f = Flights::new();
        f.join("tok", 1, 0);
        f.join("tok", 2, 0);
        f.leave(1);
        assert_eq!(f.leader("tok"), Some(Leader::Orphaned));
        assert_eq!(f.orphans(), vec!["tok".to_string()]);
        assert!(f.adopt("tok", 5));
        assert!(!f.adopt("tok", 5));
        assert_eq!(f.leader("tok"), Some(Leader::Root));
        assert!(f.orphans().is_empty());
        // New requests keep waiting on the root's callout.
        assert_eq!(f.join("tok", 3, 6), Joined::Waiter);
        assert_eq!(f.complete("tok"), vec![2, 3]);
    }

    #[test]
    fn lone_leader_leaving_ends_the_flight() {
        let mut f = Flights::new();
        f.join("tok", 1, 0);
        assert_eq!(f.leave(1), vec!["tok".to_string()]);
        assert!(f.is_empty());
    }

    #[test]
    fn remote_flight_waits_then_is_adopted_or_answered() {
        let mut f = Flights::new();
        assert_eq!(f.join("tok", 1, 0), Joined::Leader);
        f.wait_remote("tok", 1);
        assert_eq!(f.leader("tok"), Some(Leader::Remote));
        assert_eq!(f.join("tok", 2, 0), Joined::Waiter);
        assert_eq!(f.remote(), vec!["tok".to_string()]);
        // Not this worker's callout: leaving releases no claim.
        assert!(f.leave(1).is_empty());
        assert!(f.adopt("tok", 3));
        assert_eq!(f.leader("tok"), Some(Leader::Root));
        assert!(f.remote().is_empty());
        assert_eq!(f.complete("tok"), vec![2]);
    }

    #[test]
    fn remote_flight_ends_when_its_last_waiter_leaves() {
        let mut f = Flights::new();
        f.join("tok", 1, 0);
        f.wait_remote("tok", 1);
        assert!(f.leave(1).is_empty());
        assert!(f.is_empty());
    }

    #[test]
    fn flight_claims_round_trip_and_go_stale() {
        let claim = FlightClaim::new(7, "tok", 100, 2000);
        assert_eq!(claim.deadline, 103);
        assert!(claim.is_for("tok"));
        assert!(!claim.is_for("tok2"));
        let bytes = claim.to_bytes();
        assert_eq!(FlightClaim::live(Some(&bytes), 102), Some(claim));
        assert_eq!(FlightClaim::live(Some(&bytes), 103), None);
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
        // A sub-second timeout still lasts past the coarse clock's next second.
        assert_eq!(FlightClaim::new(7, "tok", 100, 1).deadline, 102);
    }

    #[test]
    fn flight_keys_are_bounded_namespaced_and_cover_every_token() {
        let p = policy(10);
        let keys: std::collections::HashSet<String> = p.flight_keys().collect();
        assert_eq!(keys.len() as u64, FLIGHT_SLOTS);
        for i in 0..2000 {
            let key = p.flight_key(&format!("token-{i}"));
            assert!(keys.contains(&key), "{key}");
            assert_ne!(key, p.slot_key(&format!("token-{i}")));
        }
        let other = CachePolicy::new(&userinfo(10, 300, 10), &["tenant".to_string()]);
        assert_ne!(other.flight_key("t"), p.flight_key("t"));
    }

    #[test]
    fn stuck_flights_expire_and_return_their_waiters() {
        let mut f = Flights::new();
        f.join("old", 1, 0);
        f.join("old", 2, 0);
        f.join("new", 3, 9);
        f.join("new", 4, 9);
        assert_eq!(f.expire(10, 5), vec![("old".to_string(), vec![2])]);
        assert_eq!(f.leader("old"), None);
        assert_eq!(f.leader("new"), Some(Leader::Request(3)));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_slot_values_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = CacheEntry::from_bytes(&bytes);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = CacheEntry::from_bytes(&prefixed);
        }
    }
}
