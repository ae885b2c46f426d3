//! The identity cache policy, as plain data structures with the time passed in.
//!
//! Two levels: a per-worker [`LocalCache`] in front, and Envoy's shared data behind,
//! which every worker of the VM sees. Envoy never frees a shared-data key, so the
//! shared level is a fixed set of keys, `cache_max_entries / WAYS` per config. A token
//! hashes to one key, and each key holds a [`Bucket`] of up to [`WAYS`] entries; a full
//! bucket drops the entry that expires first. The per-worker level has the same shape.
//!
//! Why buckets and not one entry per key: with one entry per key, two of a hundred new
//! tokens share a key about two runs in five (10,000 keys), and then they evict each
//! other for as long as both are in use: every eviction is one more `/userinfo` call,
//! and Auth0 allows about five per user per minute. Four ways make that a
//! one-in-a-million event at the same memory.
//!
//! Every entry stores the full token and a hit compares it: a slot hash is only an
//! address, never a proof of identity, because a collision would hand one caller
//! another caller's tenant.
//!
//! Who asks the IdP, and who waits for whom, is [`crate::flight`]'s business.

use crate::config::UserinfoConfig;
use crate::identity::Identity;

/// Most entries of the per-worker level: every worker holds its own copy.
pub const MAX_LOCAL_SLOTS: usize = 4096;

/// Entries per shared-data key, and per set of the per-worker level.
pub const WAYS: usize = 4;

/// One cached answer: for which token, what, and until when (milliseconds since the
/// epoch: whole seconds would let an entry stored late in a second live for almost
/// nothing of a 1 s TTL).
/// Every [`Identity`] is cached, each kind for its own TTL ([`CachePolicy::entry_for`]):
/// a failed lookup too, briefly, so that an IdP in trouble gets one retry per token per
/// TTL, not one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub token: String,
    pub identity: Identity,
    pub expires_at: u64,
}

// Version 2: a rejection keeps its message (version 1 entries read as misses).
const MAGIC: &[u8; 4] = b"PTF2";
const KIND_TENANTS: u8 = 0;
const KIND_FORBIDDEN: u8 = 1;
const KIND_UNAUTHORIZED: u8 = 2;
const KIND_UNAVAILABLE: u8 = 3;

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
            Identity::Tenants(_) => out.push(KIND_TENANTS),
            Identity::Forbidden(_) => out.push(KIND_FORBIDDEN),
            Identity::Unauthorized(_) => out.push(KIND_UNAUTHORIZED),
            Identity::Unavailable(_) => out.push(KIND_UNAVAILABLE),
        }
        put_str(&mut out, &self.token);
        match &self.identity {
            Identity::Tenants(tenants) => {
                put_len(&mut out, tenants.len());
                for tenant in tenants.iter() {
                    put_str(&mut out, tenant);
                }
            }
            Identity::Forbidden(why) | Identity::Unauthorized(why) | Identity::Unavailable(why) => {
                put_str(&mut out, why)
            }
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
                Identity::Tenants(tenants.into())
            }
            KIND_FORBIDDEN => Identity::Forbidden(r.string()?),
            KIND_UNAUTHORIZED => Identity::Unauthorized(r.string()?),
            KIND_UNAVAILABLE => Identity::Unavailable(r.string()?),
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

const BUCKET_MAGIC: &[u8; 4] = b"PTB1";

/// The entries one shared-data key holds: at most [`WAYS`], each for another token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<CacheEntry>,
}

impl Bucket {
    /// Reads a key's value. Anything malformed reads as an empty bucket: misses, never
    /// a panic, since another plugin version may share the VM's keys.
    pub fn from_bytes(bytes: Option<&[u8]>) -> Bucket {
        Bucket::decode(bytes.unwrap_or_default()).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Bucket> {
        let mut r = Reader { bytes };
        if r.take(4)? != BUCKET_MAGIC {
            return None;
        }
        let count = usize::from(r.take(1)?[0]);
        if count > WAYS {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.len()?;
            entries.push(CacheEntry::from_bytes(r.take(n)?)?);
        }
        r.bytes.is_empty().then_some(Bucket { entries })
    }

    /// Serializes the bucket for its key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = BUCKET_MAGIC.to_vec();
        // `with` keeps at most WAYS entries.
        out.push(u8::try_from(self.entries.len()).unwrap_or(0));
        for entry in &self.entries {
            let bytes = entry.to_bytes();
            put_len(&mut out, bytes.len());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// The fresh entry for exactly `token` at `now`.
    pub fn hit(&self, token: &str, now: u64) -> Option<&CacheEntry> {
        self.entries.iter().find(|e| e.answers(token, now))
    }

    /// This bucket with `entry` in it, at `now`: the token's older entry and stale
    /// entries go, and a full bucket drops the entry that expires first.
    pub fn with(mut self, entry: CacheEntry, now: u64) -> Bucket {
        self.entries
            .retain(|e| e.is_fresh(now) && e.token != entry.token);
        while self.entries.len() >= WAYS {
            let first = (0..self.entries.len()).min_by_key(|&i| self.entries[i].expires_at);
            if let Some(i) = first {
                self.entries.swap_remove(i);
            }
        }
        self.entries.push(entry);
        self
    }
}

/// A multiply-rotate hash eight bytes at a time, for picking a set in a per-worker
/// table whose hits are always checked against the whole key (the rewrite memo, the
/// local identity cache): a collision, chosen by a client or not, costs no more than an
/// eviction. Not stable across builds, unlike [`fnv1a`]; about eight times faster
/// (byte-at-a-time FNV took 1.7k instructions of a repeated Grafana GET in the memo
/// alone, and an Auth0 access token is some 800 bytes).
#[derive(Debug, Default)]
pub struct WordHash(u64);

impl WordHash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(Self::K);
    }

    /// Adds `bytes`, then its length, so that ("ab", "c") and ("a", "bc") differ.
    pub fn part(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(word));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.word(u64::from_le_bytes(tail));
        self.word(bytes.len() as u64);
    }

    pub fn finish(&self) -> u64 {
        self.0
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

/// TTLs, sizes and key names for one plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    ttl_s: u64,
    negative_ttl_s: u64,
    failure_ttl_s: u64,
    /// `cache_max_entries`.
    entries: u64,
    /// Shared-data keys: `entries / WAYS`, rounded up.
    keys: u64,
    key_prefix: String,
}

impl CachePolicy {
    /// The policy for a userinfo config. The key prefix fingerprints everything that
    /// shapes a cached answer (IdP, claim, size), so two plugin configs sharing a VM
    /// never read each other's entries; `v2` is the bucket layout.
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
            entries: config.cache_max_entries.max(1),
            keys: config.cache_max_entries.max(1).div_ceil(WAYS as u64),
            key_prefix: format!("promql_tenant_filter.v2.{:016x}.", fnv1a(&parts)),
        }
    }

    /// Number of shared-data keys.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Number of per-worker entries.
    pub fn local_slots(&self) -> usize {
        usize::try_from(self.entries)
            .unwrap_or(MAX_LOCAL_SLOTS)
            .min(MAX_LOCAL_SLOTS)
    }

    /// The shared-data key of the bucket `token` lives in.
    pub fn slot_key(&self, token: &str) -> String {
        format!(
            "{}{}",
            self.key_prefix,
            fnv1a(&[token.as_bytes()]) % self.keys
        )
    }

    /// The prefix of every shared-data key of this configuration.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The entry to store for a lookup's outcome at `now` (ms), or `None` when its TTL
    /// is 0.
    pub fn entry_for(&self, token: &str, identity: &Identity, now: u64) -> Option<CacheEntry> {
        let ttl = match identity {
            Identity::Tenants(_) | Identity::Forbidden(_) => self.ttl_s,
            Identity::Unauthorized(_) => self.negative_ttl_s,
            Identity::Unavailable(_) => self.failure_ttl_s,
        };
        if ttl == 0 {
            return None;
        }
        Some(CacheEntry {
            token: token.to_string(),
            identity: identity.clone(),
            expires_at: now.saturating_add(ttl.saturating_mul(1000)),
        })
    }

    /// Reads a shared-data key's value for `token`: a hit only if it decodes, is
    /// fresh, and holds exactly this token.
    pub fn shared_hit(
        &self,
        token: &str,
        slot_value: Option<&[u8]>,
        now: u64,
    ) -> Option<CacheEntry> {
        Bucket::from_bytes(slot_value).hit(token, now).cloned()
    }
}

/// The per-worker first level: sets of [`WAYS`] entries, a token hashed to one set.
#[derive(Debug, Clone)]
pub struct LocalCache {
    slots: Vec<Option<CacheEntry>>,
}

impl LocalCache {
    /// A cache of about `slots` entries: whole sets, at least one.
    pub fn new(slots: usize) -> LocalCache {
        LocalCache {
            slots: vec![None; slots.max(1).div_ceil(WAYS) * WAYS],
        }
    }

    /// The set `token` lives in.
    fn set(&mut self, token: &str) -> &mut [Option<CacheEntry>] {
        let sets = (self.slots.len() / WAYS) as u64;
        // The modulo result is below the number of sets, so it fits in usize.
        let mut hash = WordHash::default();
        hash.part(token.as_bytes());
        let start = (hash.finish() % sets) as usize * WAYS;
        self.slots.get_mut(start..start + WAYS).unwrap_or_default()
    }

    /// The fresh entry for exactly this token, if any. Stale entries are dropped.
    pub fn get(&mut self, token: &str, now: u64) -> Option<&Identity> {
        let set = self.set(token);
        for slot in set.iter_mut() {
            if slot.as_ref().is_some_and(|e| !e.is_fresh(now)) {
                *slot = None;
            }
        }
        set.iter()
            .flatten()
            .find(|e| e.token == token)
            .map(|e| &e.identity)
    }

    /// Stores an entry: over the token's older entry, else in a free place, else over
    /// the entry of its set that expires first.
    pub fn insert(&mut self, entry: CacheEntry) {
        let set = self.set(&entry.token);
        let same = set
            .iter()
            .position(|s| s.as_ref().is_some_and(|e| e.token == entry.token));
        let free = || set.iter().position(Option::is_none);
        let first_out =
            || (0..set.len()).min_by_key(|&i| set[i].as_ref().map_or(0, |e| e.expires_at));
        if let Some(i) = same.or_else(free).or_else(first_out) {
            set[i] = Some(entry);
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

    fn tenants(t: &[&str]) -> Identity {
        Identity::Tenants(t.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn entry_round_trips_through_bytes() {
        for identity in [
            Identity::Tenants(vec!["1999".into(), "é|x".into()].into()),
            Identity::Forbidden("no claim".into()),
            Identity::Unauthorized("rejected".into()),
            Identity::Unavailable("down".into()),
        ] {
            let entry = CacheEntry {
                token: "tok.en".into(),
                identity,
                expires_at: 1_700_000_000,
            };
            assert_eq!(CacheEntry::from_bytes(&entry.to_bytes()), Some(entry));
        }
    }

    /// `good` reads, and none of its prefixes nor `good` with a byte more does.
    fn only_whole_values_read(good: &[u8], reads: impl Fn(&[u8]) -> bool) {
        assert!(reads(good));
        for cut in 0..good.len() {
            assert!(!reads(&good[..cut]), "cut at {cut}");
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(!reads(&trailing));
    }

    #[test]
    fn malformed_slot_values_are_misses() {
        let good = CacheEntry {
            token: "t".into(),
            identity: Identity::Tenants(vec!["1".into()].into()),
            expires_at: 10,
        }
        .to_bytes();
        only_whole_values_read(&good, |b| CacheEntry::from_bytes(b).is_some());
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
        assert_eq!(ok.expires_at, 301_000);
        let no_tenant = p
            .entry_for("a", &Identity::Forbidden("x".into()), 1000)
            .unwrap();
        assert_eq!(no_tenant.expires_at, 301_000);
        let rejected = Identity::Unauthorized("rejected".into());
        let rejected = p.entry_for("a", &rejected, 1000).unwrap();
        assert_eq!(rejected.expires_at, 11_000);
        assert!(rejected.answers("a", 10_999));
        assert!(!rejected.answers("a", 11_000));
    }

    #[test]
    fn failures_are_cached_briefly_and_zero_ttls_not_at_all() {
        let p = policy(100);
        let failed = p
            .entry_for("a", &Identity::Unavailable("down".into()), 10)
            .unwrap();
        assert_eq!(failed.identity, Identity::Unavailable("down".into()));
        assert_eq!(failed.expires_at, 2010);
        assert_eq!(CacheEntry::from_bytes(&failed.to_bytes()), Some(failed));
        let mut config = userinfo(100, 0, 0);
        config.failure_cache_ttl_s = 0;
        let p = CachePolicy::new(&config, &["c".into()]);
        assert_eq!(p.entry_for("a", &tenants(&["1"]), 0), None);
        let rejected = Identity::Unauthorized("rejected".into());
        assert_eq!(p.entry_for("a", &rejected, 0), None);
        let down = Identity::Unavailable("down".into());
        assert_eq!(p.entry_for("a", &down, 0), None);
    }

    #[test]
    fn shared_hit_compares_the_full_token() {
        // One key: every token collides.
        let p = policy(1);
        assert_eq!(p.slot_key("alice-token"), p.slot_key("bob-token"));
        let alice = p
            .entry_for("alice-token", &tenants(&["1999"]), 100)
            .unwrap();
        let stored = Bucket::default().with(alice.clone(), 100).to_bytes();
        assert_eq!(p.shared_hit("alice-token", Some(&stored), 101), Some(alice));
        assert_eq!(p.shared_hit("bob-token", Some(&stored), 101), None);
        assert_eq!(p.shared_hit("alice-token", Some(&stored), 300_100), None);
        assert_eq!(p.shared_hit("alice-token", None, 101), None);
    }

    fn entry(token: &str, expires_at: u64) -> CacheEntry {
        CacheEntry {
            token: token.into(),
            identity: tenants(&[token]),
            expires_at,
        }
    }

    #[test]
    fn a_bucket_keeps_four_tokens_and_drops_the_one_expiring_first() {
        let mut bucket = Bucket::default();
        for (i, token) in ["a", "b", "c", "d"].into_iter().enumerate() {
            bucket = bucket.with(entry(token, 1000 + i as u64), 0);
        }
        let bucket = Bucket::from_bytes(Some(&bucket.to_bytes()));
        for token in ["a", "b", "c", "d"] {
            assert_eq!(
                bucket.hit(token, 10).map(|e| &e.identity),
                Some(&tenants(&[token]))
            );
        }
        // A fifth token: "a" expires first and goes.
        let bucket = bucket.with(entry("e", 900), 10);
        assert_eq!(bucket.hit("a", 10), None);
        for token in ["b", "c", "d", "e"] {
            assert!(bucket.hit(token, 10).is_some(), "{token}");
        }
        // A token stored again replaces its own entry; stale entries make room.
        let bucket = bucket
            .with(entry("b", 5000), 10)
            .with(entry("f", 5000), 950);
        assert_eq!(bucket.hit("b", 950).map(|e| e.expires_at), Some(5000));
        assert_eq!(bucket.hit("e", 950), None);
        assert!(bucket.hit("f", 950).is_some());
        assert!(Bucket::decode(&bucket.to_bytes()).is_some_and(|b| b.entries.len() <= WAYS));
    }

    #[test]
    fn malformed_buckets_are_empty() {
        let good = Bucket::default()
            .with(entry("a", 10), 0)
            .with(entry("b", 10), 0)
            .to_bytes();
        only_whole_values_read(&good, |b| Bucket::decode(b).is_some());
        let mut too_many = good.clone();
        too_many[4] = WAYS as u8 + 1;
        assert_eq!(Bucket::decode(&too_many), None);
        // A single entry in the layout before buckets reads as a miss.
        assert_eq!(
            Bucket::from_bytes(Some(&entry("a", 10).to_bytes())),
            Bucket::default()
        );
    }

    #[test]
    fn slot_keys_are_bounded_and_namespaced() {
        let p = policy(32);
        assert_eq!(p.keys(), 8);
        assert_eq!(policy(33).keys(), 9);
        assert_eq!(policy(1).keys(), 1);
        let keys: std::collections::HashSet<String> = (0..1000)
            .map(|i| p.slot_key(&format!("token-{i}")))
            .collect();
        assert!(keys.len() <= 8);
        assert!(keys.len() > 1);
        let other_claim = CachePolicy::new(&userinfo(32, 300, 10), &["tenant".into()]);
        assert_ne!(p.slot_key("x"), other_claim.slot_key("x"));
        assert!(p.slot_key("x").starts_with("promql_tenant_filter.v2."));
        assert!(!p.slot_key("secret").contains("secret"));
    }

    #[test]
    fn local_cache_hit_expiry_and_collision() {
        let p = policy(1);
        let mut local = LocalCache::new(p.local_slots());
        // One set of four.
        assert_eq!(local.capacity(), WAYS);
        local.insert(p.entry_for("alice", &tenants(&["1999"]), 0).unwrap());
        assert_eq!(
            local.get("alice", 10),
            Some(&Identity::Tenants(vec!["1999".into()].into()))
        );
        // Same set, other token: never answered with alice's tenants.
        assert_eq!(local.get("bob", 10), None);
        local.insert(p.entry_for("bob", &tenants(&["2000"]), 0).unwrap());
        assert_eq!(
            local.get("alice", 10),
            Some(&Identity::Tenants(vec!["1999".into()].into()))
        );
        assert_eq!(
            local.get("bob", 10),
            Some(&Identity::Tenants(vec!["2000".into()].into()))
        );
        // A full set drops the entry that expires first.
        local.insert(entry("c", 400_000));
        local.insert(entry("d", 400_000));
        local.insert(entry("e", 400_000));
        assert_eq!(local.len(), WAYS);
        assert_eq!(local.get("e", 10), Some(&tenants(&["e"])));
        assert_eq!(
            [
                local.get("alice", 10).is_some(),
                local.get("bob", 10).is_some()
            ],
            [false, true]
        );
        // Expired entries are gone.
        assert_eq!(local.get("bob", 300_000), None);
        assert_eq!(local.len(), 3);
        assert_eq!(local.get("c", 400_000), None);
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
                identity: Identity::Unauthorized("r".into()),
                expires_at: 100,
            });
        }
        assert!(local.len() <= 16);
        assert_eq!(local.capacity(), 16);
        assert_eq!(LocalCache::new(0).capacity(), WAYS);
        assert_eq!(LocalCache::new(5).capacity(), 2 * WAYS);
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }

    #[test]
    fn the_word_hash_separates_parts_and_every_byte_counts() {
        let hash = |parts: &[&[u8]]| {
            let mut hash = WordHash::default();
            parts.iter().for_each(|p| hash.part(p));
            hash.finish()
        };
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        assert_ne!(hash(&[b"abcdefgh"]), hash(&[b"abcdefgh", b""]));
        assert_eq!(hash(&[b"x"]), hash(&[b"x"]));
        // A token that differs in one byte, wherever it is, hashes elsewhere.
        let token = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".to_vec();
        for i in 0..token.len() {
            let mut other = token.clone();
            other[i] ^= 1;
            assert_ne!(hash(&[&token]), hash(&[&other]), "byte {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_slot_values_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = CacheEntry::from_bytes(&bytes);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = CacheEntry::from_bytes(&prefixed);
            let _ = Bucket::from_bytes(Some(&bytes));
            let mut bucket = BUCKET_MAGIC.to_vec();
            bucket.extend_from_slice(&bytes);
            let _ = Bucket::from_bytes(Some(&bucket));
        }
    }
}
