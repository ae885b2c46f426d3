//! Who is calling: bearer-token extraction, claim extraction, and the reading of the
//! identity provider's answers.
//!
//! Everything here is pure: the filter hands in header bytes and callout results, and
//! gets back an [`Identity`]: the caller's tenants or why there are none. Nothing here
//! ever puts a token into a message, so no refusal can leak one into a log.

use base64::Engine as _;
use serde_json::Value;
use std::rc::Rc;

/// A caller's tenants, shared: a worker's cached identity is handed to each of the
/// caller's requests without copying its strings.
pub type Tenants = Rc<[String]>;

/// Longest bearer token accepted: bounds cache memory and the callout's header size.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `/userinfo` or payload-header body read: a sane IdP answers in a few KiB.
pub const MAX_CLAIMS_BYTES: usize = 64 * 1024;

/// Who the caller is, as far as the filter can tell: the one outcome of every identity
/// step (the bearer token, a verified payload, the provider's answer, the cache), and
/// what [`crate::decision`] takes. Messages are safe to send and to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A verified caller with these tenants (never empty).
    Tenants(Tenants),
    /// No credentials, malformed credentials, or the IdP refused them: 401.
    Unauthorized(String),
    /// A verified caller without a usable tenant claim: 403.
    Forbidden(String),
    /// The IdP could not answer (down, slow, rate-limited, nonsense): 503.
    Unavailable(String),
}

/// Takes the token out of an `Authorization: Bearer <token>` header value.
///
/// The scheme is case-insensitive (RFC 7235). The token must be an RFC 6750
/// `b64token`, which also makes it safe to copy into the callout's header.
/// The error is always [`Identity::Unauthorized`].
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, Identity> {
    let unauthorized = |why: &str| Err(Identity::Unauthorized(why.to_string()));
    let Some(value) = header else {
        return unauthorized("missing Authorization header");
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return unauthorized("malformed Authorization header");
    };
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let Some((scheme, rest)) = value.split_once(' ') else {
        return unauthorized("Authorization header is not a Bearer token");
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return unauthorized("Authorization header is not a Bearer token");
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !is_b64token(token) {
        return unauthorized("malformed Bearer token");
    }
    Ok(token)
}

fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // One table load per byte: a provider's JWT is often a kilobyte, read on every
    // request, and a chain of range tests cost about ten instructions a byte.
    // Folded rather than stopped at the first bad byte: a loop without an exit
    // unrolls, and a bad token is rare and no longer than a good one.
    !body.is_empty()
        && body
            .bytes()
            .fold(true, |ok, b| ok & B64TOKEN[usize::from(b)])
}

/// RFC 6750's `b64token` characters, the trailing `=`s aside.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Reads the tenants out of a claims object, following `claim` one key per level.
///
/// A string gives one tenant, an integer its decimal text, an array of strings and
/// integers several (duplicates dropped, order kept). Anything else is
/// [`Identity::Forbidden`].
pub fn tenants_from_claims(claims: &Value, claim: &[String]) -> Identity {
    let forbidden = |why: &str| Identity::Forbidden(why.to_string());
    let mut value = claims;
    for key in claim {
        match value.as_object().and_then(|object| object.get(key)) {
            Some(next) => value = next,
            None => return forbidden("the identity has no tenant claim"),
        }
    }
    let mut tenants = Vec::new();
    match value {
        Value::Array(items) => {
            for item in items {
                match scalar_tenant(item) {
                    Some(tenant) => {
                        if !tenants.contains(&tenant) {
                            tenants.push(tenant);
                        }
                    }
                    None => return forbidden("the tenant claim holds an unusable value"),
                }
            }
        }
        other => match scalar_tenant(other) {
            Some(tenant) => tenants.push(tenant),
            None => return forbidden("the tenant claim holds an unusable value"),
        },
    }
    if tenants.is_empty() {
        return forbidden("the tenant claim is empty");
    }
    Identity::Tenants(tenants.into())
}

fn scalar_tenant(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() && !s.chars().any(char::is_control) => Some(s.clone()),
        // `is_i64`/`is_u64` are false for floats, so 1.5 and 1e3 are refused.
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the claims `jwt_authn` forwarded in `forward_payload_header`: the JWT
/// payload, base64url-encoded (padded or not), holding a JSON object.
///
/// A missing or malformed header means the token was not verified: the error is always
/// [`Identity::Unauthorized`].
pub fn claims_from_payload_header(header: Option<&[u8]>) -> Result<Value, Identity> {
    let unauthorized = |why: &str| Err(Identity::Unauthorized(why.to_string()));
    let Some(raw) = header else {
        return unauthorized("missing verified token");
    };
    if raw.len() > MAX_CLAIMS_BYTES * 4 / 3 + 4 {
        return unauthorized("verified token payload too large");
    }
    let trimmed = raw
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(&raw[..0], |end| &raw[..=end]);
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed) else {
        return unauthorized("malformed verified token payload");
    };
    match serde_json::from_slice::<Value>(&json) {
        Ok(claims @ Value::Object(_)) => Ok(claims),
        _ => unauthorized("malformed verified token payload"),
    }
}

/// Classifies a `/userinfo` callout result.
///
/// `status` is the `:status` pseudo-header, absent when Envoy reports a timeout or a
/// reset; `body` is the response body. Only a 200 with a JSON object counts as an
/// answer; 400/401/403 reject the token; everything else means the IdP is unavailable.
pub fn classify_userinfo(status: Option<&[u8]>, body: Option<&[u8]>, claim: &[String]) -> Identity {
    let status = status
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.trim().parse::<u16>().ok());
    let unavailable = |why: &str| Identity::Unavailable(why.to_string());
    match status {
        None => unavailable("identity provider timed out or reset"),
        Some(200) => {
            let body = body.unwrap_or_default();
            if body.len() > MAX_CLAIMS_BYTES {
                return unavailable("identity provider answer too large");
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(claims @ Value::Object(_)) => tenants_from_claims(&claims, claim),
                _ => unavailable("identity provider answered with invalid JSON"),
            }
        }
        // 400 too: a userinfo GET carries nothing but the token, so a "bad request" is a
        // bad token (some providers, the mock among them, answer 400 for a revoked one).
        // Treating it as an outage would turn every dead token into a 503 and a retry.
        Some(400 | 401 | 403) => {
            Identity::Unauthorized("the identity provider rejected the token".into())
        }
        Some(429) => unavailable("identity provider rate limit reached"),
        // Envoy answers a callout it could not deliver (connection refused, no healthy
        // host, overflow) with a 503 of its own, indistinguishable here from the IdP's.
        Some(503) => unavailable(
            "identity provider unavailable (HTTP 503 from it, or from Envoy failing to reach it)",
        ),
        Some(code) => Identity::Unavailable(format!("identity provider answered HTTP {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_request_from_the_idp_is_a_bad_token() {
        for status in [&b"400"[..], b"401", b"403"] {
            let outcome = classify_userinfo(Some(status), Some(b"{}"), &path(&["client_id"]));
            assert!(matches!(outcome, Identity::Unauthorized(_)), "{status:?}");
        }
        let outcome = classify_userinfo(Some(b"500"), None, &path(&["client_id"]));
        assert!(matches!(outcome, Identity::Unavailable(_)));
    }

    fn path(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    fn is_unauthorized<T: std::fmt::Debug>(r: Result<T, Identity>) -> bool {
        matches!(r, Err(Identity::Unauthorized(_)))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for header in [
            "Bearer abc.DEF-_~+/=",
            "bearer abc.DEF-_~+/=",
            "BEARER  abc.DEF-_~+/=",
        ] {
            assert_eq!(
                bearer_token(Some(header.as_bytes())),
                Ok("abc.DEF-_~+/="),
                "{header}"
            );
        }
    }

    #[test]
    fn bad_authorization_headers_are_unauthorized() {
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"Bearer",
            b"Bearer ",
            b"Basic dXNlcjpwYXNz",
            b"Bearerabc",
            b"Bearer a b",
            b"Bearer a\"b",
            b"Bearer ===",
            b"Bearer a=b",
            b"Bearer \xff\xfe",
            long.as_bytes(),
        ];
        assert!(is_unauthorized(bearer_token(None)));
        for case in cases {
            assert!(is_unauthorized(bearer_token(Some(case))), "{case:?}");
        }
    }

    #[test]
    fn error_messages_never_contain_the_token() {
        let Err(Identity::Unauthorized(msg)) = bearer_token(Some(b"Bearer secret\"token")) else {
            panic!("expected unauthorized")
        };
        assert!(!msg.contains("secret"));
    }

    #[test]
    fn string_claim_gives_one_tenant() {
        let claims = json!({"https://example.com/client_id": "1999"});
        assert_eq!(
            tenants_from_claims(&claims, &path(&["https://example.com/client_id"])),
            Identity::Tenants(vec!["1999".to_string()].into())
        );
    }

    #[test]
    fn integer_claim_gives_decimal_text() {
        assert_eq!(
            tenants_from_claims(&json!({"t": 1999}), &path(&["t"])),
            Identity::Tenants(vec!["1999".into()].into())
        );
        assert_eq!(
            tenants_from_claims(&json!({"t": -7}), &path(&["t"])),
            Identity::Tenants(vec!["-7".into()].into())
        );
        assert_eq!(
            tenants_from_claims(&json!({"t": u64::MAX}), &path(&["t"])),
            Identity::Tenants(vec![u64::MAX.to_string()].into())
        );
    }

    #[test]
    fn array_claim_gives_several_tenants_deduplicated_in_order() {
        assert_eq!(
            tenants_from_claims(&json!({"t": ["b", 2, "a", "b", 2]}), &path(&["t"])),
            Identity::Tenants(vec!["b".into(), "2".into(), "a".into()].into())
        );
    }

    #[test]
    fn nested_path() {
        let claims = json!({"app_metadata": {"tenant": "acme"}});
        assert_eq!(
            tenants_from_claims(&claims, &path(&["app_metadata", "tenant"])),
            Identity::Tenants(vec!["acme".into()].into())
        );
        // A URL-like key is one key, not a path.
        let claims = json!({"a": {"b": "x"}, "a.b": "y"});
        assert_eq!(
            tenants_from_claims(&claims, &path(&["a.b"])),
            Identity::Tenants(vec!["y".into()].into())
        );
    }

    #[test]
    fn unusable_claims_are_forbidden() {
        let cases = [
            json!({}),
            json!({"t": null}),
            json!({"t": ""}),
            json!({"t": []}),
            json!({"t": [""]}),
            json!({"t": true}),
            json!({"t": 1.5}),
            json!({"t": 1e3}),
            json!({"t": {"x": "1"}}),
            json!({"t": ["a", ["b"]]}),
            json!({"t": ["a", null]}),
            json!({"t": ["a", 1.5]}),
            json!({"t": "a\nb"}),
            json!({"other": "1999"}),
        ];
        for claims in cases {
            assert!(
                matches!(
                    tenants_from_claims(&claims, &path(&["t"])),
                    Identity::Forbidden(_)
                ),
                "{claims}"
            );
        }
        // The path goes through a non-object.
        assert!(matches!(
            tenants_from_claims(&json!({"a": "x"}), &path(&["a", "b"])),
            Identity::Forbidden(_)
        ));
    }

    #[test]
    fn payload_header_padded_and_unpadded() {
        let payload = br#"{"sub":"alice","client_id":"1999"}"#;
        let unpadded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        let padded = base64::engine::general_purpose::URL_SAFE.encode(payload);
        for header in [unpadded, padded] {
            let claims = claims_from_payload_header(Some(header.as_bytes())).unwrap();
            assert_eq!(
                tenants_from_claims(&claims, &path(&["client_id"])),
                Identity::Tenants(vec!["1999".into()].into())
            );
        }
    }

    #[test]
    fn payload_header_url_safe_alphabet() {
        // `?>` encodes to `Pz4` in standard base64 and `Pz4` too; use bytes that hit `-`/`_`.
        let payload = "{\"t\":\"\u{fbff}\u{ffff}\"}";
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        assert!(header.contains('-') || header.contains('_'), "{header}");
        assert!(claims_from_payload_header(Some(header.as_bytes())).is_ok());
    }

    #[test]
    fn bad_payload_headers_are_unauthorized() {
        let not_object = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]");
        let not_json = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{nope");
        let standard_alphabet = "eyJ0Ijoi+/8ifQ";
        let cases: Vec<&[u8]> = vec![
            b"",
            b"!!!",
            b"\xff",
            not_object.as_bytes(),
            not_json.as_bytes(),
            standard_alphabet.as_bytes(),
        ];
        assert!(is_unauthorized(claims_from_payload_header(None)));
        for case in cases {
            assert!(
                is_unauthorized(claims_from_payload_header(Some(case))),
                "{case:?}"
            );
        }
    }

    #[test]
    fn userinfo_200_with_claims() {
        let claim = path(&["client_id"]);
        assert_eq!(
            classify_userinfo(
                Some(b"200"),
                Some(br#"{"sub":"a","client_id":1999}"#),
                &claim
            ),
            Identity::Tenants(vec!["1999".into()].into())
        );
        assert!(matches!(
            classify_userinfo(Some(b"200"), Some(br#"{"sub":"a"}"#), &claim),
            Identity::Forbidden(_)
        ));
    }

    #[test]
    fn userinfo_refusals_and_failures() {
        let claim = path(&["client_id"]);
        let unavailable = |status: Option<&[u8]>, body: Option<&[u8]>| {
            matches!(
                classify_userinfo(status, body, &claim),
                Identity::Unavailable(_)
            )
        };
        let rejected = Identity::Unauthorized("the identity provider rejected the token".into());
        assert_eq!(classify_userinfo(Some(b"401"), None, &claim), rejected);
        assert_eq!(
            classify_userinfo(Some(b"403"), Some(b"{}"), &claim),
            rejected
        );
        assert!(unavailable(None, None));
        assert!(unavailable(Some(b"429"), None));
        assert!(unavailable(Some(b"500"), Some(b"{}")));
        assert!(unavailable(Some(b"503"), None));
        assert!(unavailable(Some(b"404"), None));
        assert!(unavailable(Some(b"302"), None));
        assert!(unavailable(Some(b"abc"), None));
        assert!(unavailable(Some(b"\xff"), None));
        assert!(unavailable(Some(b"200"), None));
        assert!(unavailable(Some(b"200"), Some(b"<html>")));
        assert!(unavailable(Some(b"200"), Some(b"[]")));
        let huge = format!(
            r#"{{"client_id":"1","pad":"{}"}}"#,
            "x".repeat(MAX_CLAIMS_BYTES)
        );
        assert!(unavailable(Some(b"200"), Some(huge.as_bytes())));
    }

    /// RFC 6750's grammar, written out apart from the table:
    /// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
    fn b64token_by_grammar(token: &str) -> bool {
        let body = token.trim_end_matches('=');
        !body.is_empty()
            && body.chars().all(|c| {
                c.is_ascii_uppercase()
                    || c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || "-._~+/".contains(c)
            })
    }

    #[test]
    fn every_byte_is_a_b64token_character_exactly_when_the_grammar_says() {
        for b in 0..=255u8 {
            let one = [b];
            let Ok(text) = std::str::from_utf8(&one) else {
                assert!(!B64TOKEN[usize::from(b)], "{b:#04x}");
                continue;
            };
            // Before and after other characters too: the fold must not stop early.
            for token in [
                text.to_string(),
                format!("a{text}b"),
                format!("{}{text}", "a".repeat(40)),
            ] {
                assert_eq!(
                    is_b64token(&token),
                    b64token_by_grammar(&token),
                    "{token:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn b64token_agrees_with_the_grammar(token in "[a-zA-Z0-9._~+/= \"-]{0,80}|.{0,40}") {
            proptest::prop_assert_eq!(is_b64token(&token), b64token_by_grammar(&token));
        }

        #[test]
        fn header_parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let _ = bearer_token(Some(&bytes));
            let _ = claims_from_payload_header(Some(&bytes));
            let _ = classify_userinfo(Some(&bytes), Some(&bytes), &path(&["t"]));
        }
    }
}
