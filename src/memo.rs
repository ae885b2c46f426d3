//! A small memo of query rewrites, one per thread (one per Envoy worker's VM).
//!
//! Grafana sends the same queries over and over: every panel of a dashboard on every
//! refresh, with only `start` and `end` moving. Inside Envoy, one cold run of the engine
//! costs several times what it costs in a hot loop (BENCHMARKS.md: about 30 µs of
//! Envoy's CPU per Grafana GET against 4 µs), because the parser's code and data are
//! out of the caches by the time the next request comes. A rewrite is a pure function
//! of the query, the tenant label and values, the conflict policy and the dialect, so a
//! repeated query can take its answer from here instead.
//!
//! The key is compared whole, never by hash alone: an answer rewritten for one tenant
//! is only ever handed to a request for exactly the same tenant values. Refusals are
//! remembered as well, so a client repeating a query the engine refuses costs no more
//! than one repeating a good one. The memo is bounded: [`ENTRIES`] entries, queries of
//! at most [`MAX_QUERY_BYTES`] and answers of at most [`MAX_ANSWER_BYTES`]; anything
//! larger is rewritten every time.
//!
//! A query comes as text either decoded or as the client escaped it in a query string
//! or form body ([`QueryForm`]): a repeated Grafana query is then found without being
//! decoded at all. The two are different key spaces (the raw `a+b` is the query `a b`),
//! and an escaped key is only stored once its text decoded, so a remembered answer
//! proves that its raw text is well formed. The bound on the query is on the text the
//! key holds, escaped or not; an escaped query over it is decoded and looked up as its
//! decoded text.
//!
//! A good answer is kept with its URL encoding too, made once when it is stored, when
//! that encoding is itself within [`MAX_ANSWER_BYTES`]: re-encoding the rewritten
//! `query` was the largest part of a repeated request's cost once the engine was out
//! of it.

use crate::api::{QueryRejection, RewrittenQuery};
use crate::cache::WordHash;
use crate::form::{self, FormError};
use crate::{ConflictPolicy, Dialect};
use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

/// Sets of the memo; each holds [`WAYS`] entries.
const SETS: usize = 32;
/// Entries per set: a query evicts the least recently used entry of its set.
const WAYS: usize = 4;
/// Most entries in one thread's memo.
pub const ENTRIES: usize = SETS * WAYS;
/// Longest query remembered: Grafana's are far shorter, and a bound on the key bounds
/// the memory.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Longest rewritten query or refusal message remembered.
pub const MAX_ANSWER_BYTES: usize = 4096;

/// How a key's query text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryForm {
    /// The query itself.
    #[default]
    Decoded,
    /// The query as a client escaped it in a query string or form body (`+` a space,
    /// `%XX` a byte).
    Escaped,
}

/// Everything a rewrite depends on.
#[derive(Debug, Clone, Copy)]
pub struct MemoKey<'a> {
    pub query: &'a str,
    /// How `query` is written: the same text in the two forms is two different keys.
    pub form: QueryForm,
    pub label: &'a str,
    pub values: &'a [String],
    pub policy: ConflictPolicy,
    pub dialect: Dialect,
}

impl MemoKey<'_> {
    fn hash(&self) -> u64 {
        let mut hash = WordHash::default();
        hash.part(self.query.as_bytes());
        hash.part(self.label.as_bytes());
        for value in self.values {
            hash.part(value.as_bytes());
        }
        hash.part(&[self.policy as u8, self.dialect as u8, self.form as u8]);
        hash.finish()
    }
}

#[derive(Debug)]
struct Entry {
    hash: u64,
    query: String,
    form: QueryForm,
    label: String,
    values: Vec<String>,
    policy: ConflictPolicy,
    dialect: Dialect,
    /// Shared with the requests it is handed to: a hit copies nothing.
    answer: Result<Rc<str>, QueryRejection>,
    /// A good answer as the form codec encodes it, so that a repeated query is not
    /// encoded again either.
    encoded: Option<Rc<str>>,
    /// The memo's clock when this entry was last used.
    used: u64,
}

impl Entry {
    fn is_for(&self, hash: u64, key: &MemoKey<'_>) -> bool {
        self.hash == hash
            && self.query == key.query
            && self.form == key.form
            && self.label == key.label
            && self.values == key.values
            && self.policy == key.policy
            && self.dialect == key.dialect
    }
}

/// The memo itself; [`memoized`] uses the current thread's.
#[derive(Debug)]
pub struct RewriteMemo {
    slots: Vec<Option<Entry>>,
    clock: u64,
}

impl Default for RewriteMemo {
    fn default() -> Self {
        RewriteMemo::new()
    }
}

impl RewriteMemo {
    pub fn new() -> RewriteMemo {
        RewriteMemo {
            slots: std::iter::repeat_with(|| None).take(ENTRIES).collect(),
            clock: 0,
        }
    }

    /// The answer for `key`: remembered, or `compute`d and remembered. A good answer
    /// comes with its encoding when it is remembered.
    pub fn rewrite(
        &mut self,
        key: &MemoKey<'_>,
        compute: impl FnOnce() -> Result<String, QueryRejection>,
    ) -> Result<RewrittenQuery, QueryRejection> {
        match self.try_rewrite(key, || Ok::<_, Infallible>(compute())) {
            Ok(answer) => answer,
            Err(never) => match never {},
        }
    }

    /// [`RewriteMemo::rewrite`] with a `compute` that may fail before it has an answer
    /// (an escaped query that does not decode): its error is passed on and nothing is
    /// remembered.
    pub fn try_rewrite<E>(
        &mut self,
        key: &MemoKey<'_>,
        compute: impl FnOnce() -> Result<Result<String, QueryRejection>, E>,
    ) -> Result<Result<RewrittenQuery, QueryRejection>, E> {
        // Not even hashed: a long query would only cost the hash and never be kept.
        if key.query.len() > MAX_QUERY_BYTES {
            return compute().map(unremembered);
        }
        let hash = key.hash();
        if let Some(answer) = self.get(hash, key) {
            return Ok(answer);
        }
        Ok(self.put(hash, key, compute()?))
    }

    fn set(&mut self, hash: u64) -> &mut [Option<Entry>] {
        // The modulo result is below SETS, so it fits in usize.
        let start = (hash % SETS as u64) as usize * WAYS;
        &mut self.slots[start..start + WAYS]
    }

    fn get(
        &mut self,
        hash: u64,
        key: &MemoKey<'_>,
    ) -> Option<Result<RewrittenQuery, QueryRejection>> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self
            .set(hash)
            .iter_mut()
            .flatten()
            .find(|e| e.is_for(hash, key))?;
        entry.used = clock;
        Some(match &entry.answer {
            Ok(text) => Ok(RewrittenQuery {
                text: Rc::clone(text),
                encoded: entry.encoded.clone(),
            }),
            Err(rejection) => Err(rejection.clone()),
        })
    }

    /// Remembers `answer` if it is small enough, and hands it on, with its encoding
    /// when a good answer was remembered.
    fn put(
        &mut self,
        hash: u64,
        key: &MemoKey<'_>,
        answer: Result<String, QueryRejection>,
    ) -> Result<RewrittenQuery, QueryRejection> {
        let answer_len = match &answer {
            Ok(text) => text.len(),
            Err(QueryRejection::BadQuery(why) | QueryRejection::Forbidden(why)) => why.len(),
        };
        if answer_len > MAX_ANSWER_BYTES {
            return unremembered(answer);
        }
        let answer = answer.map(Rc::<str>::from);
        // Bounded like the answer, so an entry holds at most twice MAX_ANSWER_BYTES.
        let encoded = answer
            .as_ref()
            .ok()
            .map(|text| form::encode(text))
            .filter(|encoded| encoded.len() <= MAX_ANSWER_BYTES)
            .map(Rc::<str>::from);
        let entry = Entry {
            hash,
            query: key.query.to_string(),
            form: key.form,
            label: key.label.to_string(),
            values: key.values.to_vec(),
            policy: key.policy,
            dialect: key.dialect,
            answer: answer.clone(),
            encoded: encoded.clone(),
            used: self.clock,
        };
        let set = self.set(hash);
        let free = set.iter().position(Option::is_none);
        let oldest = || (0..set.len()).min_by_key(|&i| set[i].as_ref().map_or(0, |e| e.used));
        if let Some(i) = free.or_else(oldest) {
            set[i] = Some(entry);
        }
        answer.map(|text| RewrittenQuery { text, encoded })
    }

    /// Number of entries (for tests).
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    // Envoy runs each worker's VM on one thread, so this is one memo per VM; natively,
    // each test thread has its own.
    static MEMO: RefCell<RewriteMemo> = RefCell::new(RewriteMemo::new());
}

fn unremembered(answer: Result<String, QueryRejection>) -> Result<RewrittenQuery, QueryRejection> {
    answer.map(|text| RewrittenQuery {
        text: text.into(),
        encoded: None,
    })
}

/// The answer for `key` from this thread's memo, or `compute`d and remembered.
pub fn memoized(
    key: &MemoKey<'_>,
    compute: impl FnOnce() -> Result<String, QueryRejection>,
) -> Result<RewrittenQuery, QueryRejection> {
    // `compute` is the engine, which never comes back here, so the borrow is free; if
    // it ever were not, the rewrite would simply run unremembered.
    MEMO.with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => memo.rewrite(key, compute),
        Err(_) => unremembered(compute()),
    })
}

/// The answer for the escaped query `key.query` (its form is taken as
/// [`QueryForm::Escaped`]), which starts at byte `offset` of its query string or form
/// body: from this thread's memo without decoding it, or decoded and `compute`d from
/// the decoded query and remembered. A query that does not decode is the error, and is
/// not remembered.
pub fn memoized_escaped(
    key: &MemoKey<'_>,
    offset: usize,
    compute: impl FnOnce(&str) -> Result<String, QueryRejection>,
) -> Result<Result<RewrittenQuery, QueryRejection>, FormError> {
    let raw = key.query;
    if raw.len() > MAX_QUERY_BYTES {
        // Its decoded text may still be short enough to be kept.
        let query = form::decode(raw, offset)?;
        let key = MemoKey {
            query: &query,
            form: QueryForm::Decoded,
            ..*key
        };
        return Ok(memoized(&key, || compute(&query)));
    }
    let key = MemoKey {
        form: QueryForm::Escaped,
        ..*key
    };
    let decode_then_compute = || form::decode(raw, offset).map(|query| compute(&query));
    MEMO.with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => memo.try_rewrite(&key, decode_then_compute),
        Err(_) => decode_then_compute().map(unremembered),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{rewrite, RewriteError, TenantMatcher};
    use std::cell::Cell;

    fn key<'a>(query: &'a str, values: &'a [String]) -> MemoKey<'a> {
        MemoKey {
            query,
            form: QueryForm::Decoded,
            label: "client_id",
            values,
            policy: ConflictPolicy::default(),
            dialect: Dialect::default(),
        }
    }

    /// The answer's text; its encoding, when it has one, must be the codec's.
    fn text(answer: Result<RewrittenQuery, QueryRejection>) -> Result<String, QueryRejection> {
        answer.map(|answer| {
            if let Some(encoded) = &answer.encoded {
                assert_eq!(**encoded, form::encode(&answer.text));
            }
            answer.text.to_string()
        })
    }

    fn engine(query: &str, values: &[String]) -> Result<String, QueryRejection> {
        let matcher = TenantMatcher::new("client_id", values).unwrap();
        rewrite(
            query,
            &matcher,
            ConflictPolicy::default(),
            Dialect::default(),
        )
        .map_err(|e| match e {
            RewriteError::Parse(p) => QueryRejection::BadQuery(p.to_string()),
            RewriteError::Conflict(m) => QueryRejection::Forbidden(m),
        })
    }

    #[test]
    fn a_repeated_query_is_rewritten_once_and_answered_the_same() {
        let mut memo = RewriteMemo::new();
        let calls = Cell::new(0);
        let alice = vec!["1999".to_string()];
        for query in ["up", "rate(x[5m]", "sum(rate(http_requests_total[5m]))"] {
            let first = text(memo.rewrite(&key(query, &alice), || {
                calls.set(calls.get() + 1);
                engine(query, &alice)
            }));
            let second = text(memo.rewrite(&key(query, &alice), || {
                calls.set(calls.get() + 1);
                engine(query, &alice)
            }));
            assert_eq!(first, engine(query, &alice));
            assert_eq!(second, first);
        }
        // Refusals are remembered too.
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn an_answer_is_never_handed_to_another_tenant() {
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let bob = vec!["2000".to_string()];
        let both = vec!["1999".to_string(), "2000".to_string()];
        for _ in 0..3 {
            for values in [&alice, &bob, &both] {
                let answer = text(memo.rewrite(&key("up", values), || engine("up", values)));
                assert_eq!(answer, engine("up", values));
            }
        }
        assert_eq!(memo.len(), 3);
        // Nor across labels, policies or dialects.
        let mut other = key("up", &alice);
        other.label = "tenant";
        assert!(memo.get(other.hash(), &other).is_none());
        let mut other = key("up", &alice);
        other.policy = ConflictPolicy::Reject;
        assert!(memo.get(other.hash(), &other).is_none());
        let mut other = key("up", &alice);
        other.dialect = Dialect::Metricsql;
        assert!(memo.get(other.hash(), &other).is_none());
    }

    #[test]
    fn the_memo_is_bounded_and_keeps_what_is_used() {
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let hot = "sum(rate(http_requests_total[5m]))";
        for i in 0..2000 {
            let query = format!("up{{job=\"{i}\"}}");
            memo.rewrite(&key(&query, &alice), || Ok(query.clone()))
                .unwrap();
            memo.rewrite(&key(hot, &alice), || engine(hot, &alice))
                .unwrap();
        }
        assert_eq!(memo.len(), ENTRIES);
        assert!(
            memo.get(key(hot, &alice).hash(), &key(hot, &alice))
                .is_some(),
            "used every time, kept"
        );
        // Too long to remember: rewritten every time.
        let long = format!("up{{job=\"{}\"}}", "x".repeat(MAX_QUERY_BYTES));
        let mut memo = RewriteMemo::new();
        memo.rewrite(&key(&long, &alice), || engine(&long, &alice))
            .unwrap();
        assert!(memo.is_empty());
    }

    #[test]
    fn the_threads_memo_answers_as_the_engine_does() {
        let alice = vec!["1999".to_string()];
        let bob = vec!["2000".to_string()];
        let calls = Cell::new(0);
        for round in 0..3 {
            for values in [&alice, &bob] {
                for query in ["up", "up{client_id=\"2000\"}", "x +", "sum by (a) (b)"] {
                    let answer = text(memoized(&key(query, values), || {
                        calls.set(calls.get() + 1);
                        engine(query, values)
                    }));
                    assert_eq!(answer, engine(query, values), "round {round}");
                }
            }
        }
        assert_eq!(calls.get(), 8);
    }

    #[test]
    fn a_remembered_answer_comes_encoded_and_a_long_one_does_not() {
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let query = "sum(rate(x{a=\"+ &=%;#\u{20ac}\"}[5m]))";
        for _ in 0..2 {
            let answer = memo
                .rewrite(&key(query, &alice), || engine(query, &alice))
                .unwrap();
            assert_eq!(answer.encoded, Some(form::encode(&answer.text).into()));
        }
        let long = format!("up{{job=\"{}\"}}", "x".repeat(MAX_QUERY_BYTES));
        let answer = memo
            .rewrite(&key(&long, &alice), || engine(&long, &alice))
            .unwrap();
        assert_eq!(answer.encoded, None);
        let huge = "x".repeat(MAX_ANSWER_BYTES + 1);
        let answer = memo
            .rewrite(&key("up", &alice), || Ok(huge.clone()))
            .unwrap();
        assert_eq!((answer.text, answer.encoded), (huge.into(), None));
    }

    #[test]
    fn a_remembered_answer_is_handed_out_shared_not_copied() {
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let query = "sum(rate(x[5m]))";
        let answers: Vec<_> = (0..3)
            .map(|_| {
                memo.rewrite(&key(query, &alice), || engine(query, &alice))
                    .unwrap()
            })
            .collect();
        for answer in &answers[1..] {
            assert!(Rc::ptr_eq(&answer.text, &answers[0].text));
            let (Some(first), Some(this)) = (&answers[0].encoded, &answer.encoded) else {
                panic!("a remembered answer comes encoded");
            };
            assert!(Rc::ptr_eq(this, first));
        }
    }

    #[test]
    fn an_answer_whose_encoding_is_over_the_bound_is_kept_unencoded() {
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        // Every byte of `{` encodes to three: well within the answer's bound, over it
        // encoded.
        let answer = "{".repeat(MAX_ANSWER_BYTES / 2);
        for _ in 0..2 {
            let got = memo
                .rewrite(&key("up", &alice), || Ok(answer.clone()))
                .unwrap();
            assert_eq!((&*got.text, got.encoded), (answer.as_str(), None));
        }
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn the_whole_key_is_compared_even_when_the_hash_collides() {
        // The hash covers every part of the key, so only a forced collision shows that
        // the comparison does too.
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let bob = vec!["2000".to_string()];
        let hash = key("up", &alice).hash();
        let _ = memo.put(hash, &key("up", &alice), engine("up", &alice));
        assert!(memo.get(hash, &key("up", &alice)).is_some());
        let others = [
            key("up", &bob),
            key("down", &alice),
            MemoKey {
                label: "tenant",
                ..key("up", &alice)
            },
            MemoKey {
                dialect: Dialect::Metricsql,
                ..key("up", &alice)
            },
            MemoKey {
                policy: ConflictPolicy::Replace,
                ..key("up", &alice)
            },
            MemoKey {
                form: QueryForm::Escaped,
                ..key("up", &alice)
            },
        ];
        for other in &others {
            assert!(memo.get(hash, other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn an_escaped_text_and_the_same_decoded_text_are_different_queries() {
        // The raw `a+b` is the query `a b`; the decoded `a+b` came from the raw `a%2Bb`.
        // The two keys hash apart, so only a forced collision shows that they also
        // compare apart.
        let mut memo = RewriteMemo::new();
        let alice = vec!["1999".to_string()];
        let decoded = key("a+b", &alice);
        let escaped = MemoKey {
            form: QueryForm::Escaped,
            ..decoded
        };
        assert_ne!(decoded.hash(), escaped.hash());
        let hash = decoded.hash();
        let good = engine("a+b", &alice);
        assert!(good.is_ok());
        let _ = memo.put(hash, &decoded, good);
        assert!(memo.get(hash, &escaped).is_none());
        let mut memo = RewriteMemo::new();
        let refused = engine("a b", &alice);
        assert!(matches!(refused, Err(QueryRejection::BadQuery(_))));
        let _ = memo.put(hash, &escaped, refused.clone());
        assert!(memo.get(hash, &decoded).is_none());
        assert_eq!(text(memo.get(hash, &escaped).unwrap()), refused);
    }

    /// [`memoized_escaped`] on this thread's memo, counting the engine's runs.
    fn escaped(
        raw: &str,
        offset: usize,
        runs: &Cell<usize>,
    ) -> Result<Result<String, QueryRejection>, FormError> {
        let alice = vec!["1999".to_string()];
        let key = MemoKey {
            form: QueryForm::Escaped,
            ..key(raw, &alice)
        };
        memoized_escaped(&key, offset, |query| {
            runs.set(runs.get() + 1);
            engine(query, &alice)
        })
        .map(text)
    }

    fn thread_memo_len() -> usize {
        MEMO.with(|memo| memo.borrow().len())
    }

    #[test]
    fn an_escaped_query_is_decoded_once_and_then_found_by_its_text() {
        let alice = vec!["1999".to_string()];
        let runs = Cell::new(0);
        for (raw, query) in [
            ("sum(rate(x%5B5m%5D))", "sum(rate(x[5m]))"),
            ("a+b", "a b"),
            ("a%2Bb", "a+b"),
        ] {
            for _ in 0..3 {
                assert_eq!(escaped(raw, 6, &runs), Ok(engine(query, &alice)), "{raw}");
            }
        }
        assert_eq!(runs.get(), 3);
        assert_eq!(thread_memo_len(), 3);
    }

    #[test]
    fn an_escaped_query_that_does_not_decode_is_refused_and_never_remembered() {
        let runs = Cell::new(0);
        for _ in 0..2 {
            assert_eq!(
                escaped("up%zz", 10, &runs),
                Err(FormError::BadEscape { offset: 12 })
            );
            assert_eq!(
                escaped("up%ff", 10, &runs),
                Err(FormError::NotUtf8 { offset: 10 })
            );
        }
        assert_eq!((runs.get(), thread_memo_len()), (0, 0));
    }

    #[test]
    fn a_long_escaped_query_is_remembered_by_its_decoded_text() {
        let alice = vec!["1999".to_string()];
        let runs = Cell::new(0);
        let raw = format!("up{}", "%20".repeat(MAX_QUERY_BYTES / 2));
        let query = format!("up{}", " ".repeat(MAX_QUERY_BYTES / 2));
        for _ in 0..2 {
            assert_eq!(escaped(&raw, 0, &runs), Ok(engine(&query, &alice)));
        }
        assert_eq!(runs.get(), 1);
        let decoded = key(&query, &alice);
        let found = MEMO.with(|memo| memo.borrow_mut().get(decoded.hash(), &decoded).is_some());
        assert!(found);
        // Too long either way: rewritten every time, and still refused when it does
        // not decode.
        let raw = format!("up{}", "%20".repeat(MAX_QUERY_BYTES));
        escaped(&raw, 0, &runs).unwrap().unwrap();
        escaped(&raw, 0, &runs).unwrap().unwrap();
        assert_eq!(runs.get(), 3);
        let bad = format!("{raw}%");
        assert_eq!(
            escaped(&bad, 0, &runs),
            Err(FormError::BadEscape { offset: raw.len() })
        );
    }

    #[test]
    fn similar_queries_spread_over_the_sets() {
        // Grafana's queries differ in a few bytes; a hash that put them in a few sets
        // would evict what the memo is for.
        let alice = vec!["1999".to_string()];
        let mut per_set = [0usize; SETS];
        let queries = 100 * SETS;
        for i in 0..queries {
            let query = format!("sum(rate(http_requests_total{{job=\"api-{i}\"}}[5m]))");
            per_set[(key(&query, &alice).hash() % SETS as u64) as usize] += 1;
        }
        let (least, most) = (per_set.iter().min(), per_set.iter().max());
        assert!(least >= Some(&60) && most <= Some(&140), "{per_set:?}");
    }
}
