//! The tenants that verified JWT payloads give, remembered per thread by the payload
//! header's exact bytes.
//!
//! With `"source": "jwt_payload_header"`, Envoy's `jwt_authn` checks the token and every
//! request then carries its caller's claims, base64url-encoded JSON. Decoding and reading
//! them cost more than the rest of a repeated query's rewrite (docs/profiling.md). One
//! token sends the same bytes on every request, and what the bytes give depends only on
//! them and on the claim's path, so the tenants of the last [`REMEMBERED`] payloads are
//! kept. Nothing else is: a payload that gives no tenants is read again each time, and
//! never pushes out a caller's.
//!
//! The memory is one thread's, shared by every plugin configuration the thread runs, so
//! an entry is reused only under the very claim path it was read with.

use crate::identity::{self, Identity, Tenants};
use std::cell::RefCell;

/// Payloads remembered per thread: the callers taking turns on one worker.
pub const REMEMBERED: usize = 32;
/// The longest payload remembered. A provider's claims are a few hundred bytes; a larger
/// payload is read every time, so that the memory stays within
/// `REMEMBERED * MAX_REMEMBERED_BYTES` per thread.
pub const MAX_REMEMBERED_BYTES: usize = 8 * 1024;

struct Entry {
    payload: Box<[u8]>,
    claim: Box<[String]>,
    tenants: Tenants,
}

thread_local! {
    /// The most recent first.
    static REMEMBERED_PAYLOADS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// What `header`, a verified payload, says of the caller for a read: its tenants under
/// `claim`, or why there are none. The same as reading it with
/// [`identity::claims_from_payload_header`] and [`identity::tenants_from_claims`], and
/// for a payload seen recently with the same `claim`, the very tenant list given then.
pub fn read_tenants(header: Option<&[u8]>, claim: &[String]) -> Identity {
    let Some(payload) = header else {
        return read(header, claim);
    };
    if let Some(tenants) = recall(payload, claim) {
        return Identity::Tenants(tenants);
    }
    let identity = read(header, claim);
    if let Identity::Tenants(tenants) = &identity {
        if payload.len() <= MAX_REMEMBERED_BYTES {
            remember(payload, claim, tenants);
        }
    }
    identity
}

fn read(header: Option<&[u8]>, claim: &[String]) -> Identity {
    match identity::claims_from_payload_header(header) {
        Ok(claims) => identity::tenants_from_claims(&claims, claim),
        Err(identity) => identity,
    }
}

fn recall(payload: &[u8], claim: &[String]) -> Option<Tenants> {
    REMEMBERED_PAYLOADS.with(|entries| {
        let mut entries = entries.try_borrow_mut().ok()?;
        let at = entries
            .iter()
            .position(|e| *e.payload == *payload && *e.claim == *claim)?;
        // Most recent first: the caller on this thread now is found at once next time.
        let entry = entries.remove(at);
        let tenants = Tenants::clone(&entry.tenants);
        entries.insert(0, entry);
        Some(tenants)
    })
}

fn remember(payload: &[u8], claim: &[String], tenants: &Tenants) {
    REMEMBERED_PAYLOADS.with(|entries| {
        if let Ok(mut entries) = entries.try_borrow_mut() {
            entries.truncate(REMEMBERED - 1);
            entries.insert(
                0,
                Entry {
                    payload: payload.into(),
                    claim: claim.into(),
                    tenants: Tenants::clone(tenants),
                },
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::rc::Rc;

    fn payload(claims: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
    }

    fn claim(path: &str) -> Vec<String> {
        path.split('.').map(String::from).collect()
    }

    fn tenants(identity: Identity) -> Tenants {
        match identity {
            Identity::Tenants(tenants) => tenants,
            other => panic!("expected tenants, got {other:?}"),
        }
    }

    fn remembered() -> usize {
        REMEMBERED_PAYLOADS.with(|e| e.borrow().len())
    }

    fn forget() {
        REMEMBERED_PAYLOADS.with(|e| e.borrow_mut().clear());
    }

    #[test]
    fn a_payload_read_again_gives_the_same_tenant_list() {
        forget();
        let header = payload(r#"{"sub":"alice","client_id":"1999"}"#);
        let first = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        let second = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        assert_eq!(&*first, ["1999".to_string()]);
        assert!(Rc::ptr_eq(&first, &second));
    }

    #[test]
    fn another_claim_path_reads_the_payload_again() {
        forget();
        let header = payload(r#"{"client_id":"1999","org":{"tenant":"2000"}}"#);
        let by_client = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        let by_org = tenants(read_tenants(Some(header.as_bytes()), &claim("org.tenant")));
        assert_eq!(&*by_client, ["1999".to_string()]);
        assert_eq!(&*by_org, ["2000".to_string()]);
        // And each path keeps its own answer.
        let again = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        assert!(Rc::ptr_eq(&by_client, &again));
    }

    #[test]
    fn payloads_that_give_no_tenants_are_not_remembered() {
        forget();
        let no_claim = payload(r#"{"sub":"alice"}"#);
        for header in [
            Some(no_claim.as_bytes()),
            Some(b"%%%".as_slice()),
            Some(b""),
            None,
        ] {
            for _ in 0..2 {
                assert!(!matches!(
                    read_tenants(header, &claim("client_id")),
                    Identity::Tenants(_)
                ));
            }
        }
        assert_eq!(remembered(), 0);
    }

    #[test]
    fn the_least_recent_payload_goes_first() {
        forget();
        let headers: Vec<String> = (0..=REMEMBERED)
            .map(|n| payload(&format!(r#"{{"client_id":"{n}"}}"#)))
            .collect();
        let first = tenants(read_tenants(
            Some(headers[0].as_bytes()),
            &claim("client_id"),
        ));
        let second = tenants(read_tenants(
            Some(headers[1].as_bytes()),
            &claim("client_id"),
        ));
        // The first is used again, so the second is now the least recent.
        read_tenants(Some(headers[0].as_bytes()), &claim("client_id"));
        for header in &headers[2..] {
            read_tenants(Some(header.as_bytes()), &claim("client_id"));
        }
        assert_eq!(remembered(), REMEMBERED);
        let first_again = tenants(read_tenants(
            Some(headers[0].as_bytes()),
            &claim("client_id"),
        ));
        let second_again = tenants(read_tenants(
            Some(headers[1].as_bytes()),
            &claim("client_id"),
        ));
        assert!(Rc::ptr_eq(&first, &first_again));
        assert!(!Rc::ptr_eq(&second, &second_again));
        assert_eq!(second, second_again);
    }

    #[test]
    fn a_payload_past_the_limit_is_read_every_time() {
        forget();
        let pad = "x".repeat(MAX_REMEMBERED_BYTES);
        let header = payload(&format!(r#"{{"client_id":"1999","pad":"{pad}"}}"#));
        assert!(header.len() > MAX_REMEMBERED_BYTES);
        let first = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        let second = tenants(read_tenants(Some(header.as_bytes()), &claim("client_id")));
        assert_eq!(first, second);
        assert!(!Rc::ptr_eq(&first, &second));
        assert_eq!(remembered(), 0);
    }

    proptest::proptest! {
        /// Remembering never changes an answer: each call, first or repeated, in any
        /// order, gives what reading the payload afresh gives.
        #[test]
        fn remembering_is_invisible(
            calls in proptest::collection::vec(
                (0usize..4, proptest::bool::ANY, "[a-z0-9\"]{0,6}"),
                1..40,
            )
        ) {
            forget();
            let claims = ["client_id", "org.tenant"];
            for (shape, nested, value) in calls {
                let json = match shape {
                    0 => format!(r#"{{"client_id":"{value}"}}"#),
                    1 => format!(r#"{{"org":{{"tenant":["{value}","7"]}}}}"#),
                    2 => format!(r#"{{"client_id":{value}}}"#),
                    _ => value.clone(),
                };
                let header = payload(&json);
                let path = claim(claims[usize::from(nested)]);
                let got = read_tenants(Some(header.as_bytes()), &path);
                let fresh = read(Some(header.as_bytes()), &path);
                proptest::prop_assert_eq!(got, fresh);
            }
        }
    }
}
