//! The plugin configuration: the JSON document Envoy hands to `on_configure`.
//!
//! Parsing is strict, like serde's `deny_unknown_fields`, but done field by field so
//! that every error names the full field path (`identity.timeout_ms`) and says why:
//! serde's own "invalid type" messages do not say which field they are about, and an
//! operator reading Envoy's log needs to know. Semantic checks (non-empty names,
//! positive timeouts, bounded cache) happen here too, so a config that loads is a
//! config the filter can run with.

use crate::{ConflictPolicy, Dialect};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;

/// Largest `cache_max_entries`: each slot is a shared-data key Envoy never frees.
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// Largest `failure_cache_ttl_s`.
pub const MAX_FAILURE_CACHE_TTL_S: u64 = 60;
/// Largest `timeout_ms`, one minute: a caller waiting longer than that is gone anyway.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// A configuration error: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `identity.claim`; empty for the whole document.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid configuration field `{}`: {}",
                self.field, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole plugin configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The label every selector is confined by, e.g. `client_id`.
    pub tenant_label: String,
    /// Where the caller's identity comes from.
    pub identity: IdentityConfig,
    /// What to do with a query's own matchers on the tenant label.
    pub on_conflict: ConflictPolicy,
    /// Which query language the backend speaks.
    pub dialect: Dialect,
    /// Also pass the tenant to VictoriaMetrics as `extra_label` / `extra_filters[]`.
    pub victoriametrics_extra_label: bool,
    /// Largest request body the filter buffers; larger ones get 413.
    pub max_body_bytes: usize,
    /// Debug only: time the engine over these queries at start-up (see
    /// [`crate::timing`]). It delays the plugin's start; never set it in production.
    pub debug_time_engine: Option<EngineTimingConfig>,
    /// Debug only: a request whose [`DEBUG_TRAP_HEADER`] carries exactly this marker
    /// traps the VM (see [`Config::is_debug_trap`]); never set it in production.
    pub debug_trap_marker: Option<String>,
}

/// The `debug_time_engine` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTimingConfig {
    pub queries: Vec<String>,
    pub rounds: u32,
}

/// Most rounds `debug_time_engine` may ask for, so that a typo cannot stall a start.
pub const MAX_TIMING_ROUNDS: u32 = 1000;

/// The request header that carries `debug_trap_marker`.
pub const DEBUG_TRAP_HEADER: &str = "x-promql-tenant-filter-debug-trap";
/// Bounds on the marker's length: long enough not to be guessed (whoever sends it takes
/// a worker's VM down), short enough for any header limit.
pub const DEBUG_TRAP_MARKER_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Identity settings shared by both sources, plus the source itself.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Where the claims come from.
    pub source: IdentitySource,
    /// Path to the tenant claim: one key per nesting level.
    pub claim: Vec<String>,
}

/// Where the caller's claims come from.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentitySource {
    /// The IdP's `/userinfo`, called with the caller's bearer token.
    Userinfo(UserinfoConfig),
    /// A header written by Envoy's `jwt_authn` (`forward_payload_header`).
    JwtPayloadHeader {
        /// Lower-case header name.
        header: String,
    },
}

/// How to call `/userinfo` and how long to remember the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserinfoConfig {
    /// Envoy cluster of the IdP.
    pub cluster: String,
    /// `:authority` of the callout; defaults to `cluster`.
    pub authority: String,
    /// `:path` of the callout.
    pub path: String,
    /// Callout timeout.
    pub timeout_ms: u64,
    /// Lifetime of a successful lookup; 0 disables caching.
    pub cache_ttl_s: u64,
    /// Lifetime of a 401/403 from the IdP; 0 disables negative caching.
    pub negative_cache_ttl_s: u64,
    /// Lifetime of a failed lookup (IdP down, 5xx, 429, timeout): while it lasts the
    /// token's requests get 503 without another call; 0 disables it.
    pub failure_cache_ttl_s: u64,
    /// Number of cache slots (shared-data keys).
    pub cache_max_entries: u64,
}

impl Config {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        let top = Fields::new("", &doc)?;
        top.deny_unknown(&[
            "tenant_label",
            "identity",
            "on_conflict",
            "dialect",
            "victoriametrics_extra_label",
            "max_body_bytes",
            "debug_time_engine",
            "debug_trap_marker",
        ])?;
        let tenant_label: String = top.required("tenant_label")?;
        let on_conflict: ConflictPolicy = top.optional("on_conflict")?.unwrap_or_default();
        let dialect: Dialect = top.optional("dialect")?.unwrap_or_default();
        let victoriametrics_extra_label =
            top.optional("victoriametrics_extra_label")?.unwrap_or(true);
        let max_body_bytes: u64 = top.optional("max_body_bytes")?.unwrap_or(1_048_576);
        let identity_value = top
            .get("identity")
            .ok_or_else(|| ConfigError::new("identity", "missing required field"))?;
        let identity = parse_identity(identity_value)?;
        let debug_time_engine = top
            .get("debug_time_engine")
            .map(parse_time_engine)
            .transpose()?;
        let debug_trap_marker: Option<String> = top.optional("debug_trap_marker")?;
        if let Some(marker) = &debug_trap_marker {
            check_trap_marker(marker)?;
        }

        check_tenant_label(&tenant_label, victoriametrics_extra_label)?;
        if max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be greater than 0"));
        }
        let max_body_bytes = usize::try_from(max_body_bytes)
            .map_err(|_| ConfigError::new("max_body_bytes", "too large for this platform"))?;
        Ok(Config {
            tenant_label,
            identity,
            on_conflict,
            dialect,
            victoriametrics_extra_label,
            max_body_bytes,
            debug_time_engine,
            debug_trap_marker,
        })
    }

    /// Whether a request with this [`DEBUG_TRAP_HEADER`] value must trap the VM: only
    /// with `debug_trap_marker` set, and only for exactly that marker. The trap stands in
    /// for a bug that traps in `proxy_on_request_headers` (a stack overflow did), so that
    /// Envoy's `failure_policy` can be shown at work.
    pub fn is_debug_trap(&self, header: Option<&[u8]>) -> bool {
        let (Some(marker), Some(header)) = (&self.debug_trap_marker, header) else {
            return false;
        };
        // Compared without an early exit, so that timing tells nothing about the marker.
        marker.len() == header.len()
            && marker
                .bytes()
                .zip(header)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

fn check_trap_marker(marker: &str) -> Result<(), ConfigError> {
    let (min, max) = (DEBUG_TRAP_MARKER_LEN.start(), DEBUG_TRAP_MARKER_LEN.end());
    // Visible ASCII only: Envoy trims and may reject other bytes in a header value, and
    // a marker that cannot arrive intact could never be tested.
    if !DEBUG_TRAP_MARKER_LEN.contains(&marker.len())
        || !marker.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ConfigError::new(
            "debug_trap_marker",
            format!("must be {min} to {max} visible ASCII characters (no spaces)"),
        ));
    }
    Ok(())
}

fn parse_time_engine(value: &Value) -> Result<EngineTimingConfig, ConfigError> {
    let fields = Fields::new("debug_time_engine", value)?;
    fields.deny_unknown(&["queries", "rounds"])?;
    let queries: Vec<String> = fields.required("queries")?;
    let rounds: u32 = fields.optional("rounds")?.unwrap_or(1);
    if rounds == 0 || rounds > MAX_TIMING_ROUNDS {
        return Err(ConfigError::new(
            "debug_time_engine.rounds",
            format!("must be between 1 and {MAX_TIMING_ROUNDS}"),
        ));
    }
    Ok(EngineTimingConfig { queries, rounds })
}

fn parse_identity(value: &Value) -> Result<IdentityConfig, ConfigError> {
    let fields = Fields::new("identity", value)?;
    let source: String = fields.required("source")?;
    let claim = parse_claim(fields.get("claim"))?;
    let source = match source.as_str() {
        "userinfo" => {
            fields.deny_unknown_for_source(
                &[
                    "source",
                    "claim",
                    "cluster",
                    "authority",
                    "path",
                    "timeout_ms",
                    "cache_ttl_s",
                    "negative_cache_ttl_s",
                    "failure_cache_ttl_s",
                    "cache_max_entries",
                ],
                "userinfo",
            )?;
            IdentitySource::Userinfo(parse_userinfo(&fields)?)
        }
        "jwt_payload_header" => {
            fields.deny_unknown_for_source(&["source", "claim", "header"], "jwt_payload_header")?;
            let header: String = fields
                .optional("header")?
                .unwrap_or_else(|| "x-jwt-payload".to_string());
            if header.is_empty() || !header.bytes().all(is_header_name_byte) {
                return Err(ConfigError::new(
                    "identity.header",
                    "must be a non-empty HTTP header name (letters, digits, `-`, `_`...)",
                ));
            }
            IdentitySource::JwtPayloadHeader {
                header: header.to_ascii_lowercase(),
            }
        }
        other => {
            return Err(ConfigError::new(
                "identity.source",
                format!(
                    "unknown source {other:?}, expected \"userinfo\" or \"jwt_payload_header\""
                ),
            ))
        }
    };
    Ok(IdentityConfig { source, claim })
}

fn parse_userinfo(fields: &Fields<'_>) -> Result<UserinfoConfig, ConfigError> {
    let cluster: String = fields.required("cluster")?;
    if cluster.is_empty() {
        return Err(ConfigError::new("identity.cluster", "must not be empty"));
    }
    let authority: String = fields
        .optional("authority")?
        .unwrap_or_else(|| cluster.clone());
    if authority.is_empty() || authority.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ConfigError::new(
            "identity.authority",
            "must be a non-empty host name without spaces or control characters",
        ));
    }
    let path: String = fields
        .optional("path")?
        .unwrap_or_else(|| "/userinfo".to_string());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(ConfigError::new(
            "identity.path",
            "must start with `/` and contain no spaces, control characters or `#`",
        ));
    }
    let timeout_ms: u64 = fields.optional("timeout_ms")?.unwrap_or(2000);
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(ConfigError::new(
            "identity.timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    let cache_ttl_s: u64 = fields.optional("cache_ttl_s")?.unwrap_or(300);
    let negative_cache_ttl_s: u64 = fields.optional("negative_cache_ttl_s")?.unwrap_or(10);
    let failure_cache_ttl_s: u64 = fields.optional("failure_cache_ttl_s")?.unwrap_or(2);
    // A minute at most: a failure is remembered to spare a struggling IdP a retry per
    // request, not to keep its users out once it is back.
    if failure_cache_ttl_s > MAX_FAILURE_CACHE_TTL_S {
        return Err(ConfigError::new(
            "identity.failure_cache_ttl_s",
            format!("must be at most {MAX_FAILURE_CACHE_TTL_S}"),
        ));
    }
    // A day at most: a token's claims may change, and revocation must bite eventually.
    for (name, ttl) in [
        ("identity.cache_ttl_s", cache_ttl_s),
        ("identity.negative_cache_ttl_s", negative_cache_ttl_s),
    ] {
        if ttl > 86_400 {
            return Err(ConfigError::new(name, "must be at most 86400 (one day)"));
        }
    }
    let cache_max_entries: u64 = fields.optional("cache_max_entries")?.unwrap_or(10_000);
    if cache_max_entries == 0 || cache_max_entries > MAX_CACHE_ENTRIES {
        return Err(ConfigError::new(
            "identity.cache_max_entries",
            format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
        ));
    }
    Ok(UserinfoConfig {
        cluster,
        authority,
        path,
        timeout_ms,
        cache_ttl_s,
        negative_cache_ttl_s,
        failure_cache_ttl_s,
        cache_max_entries,
    })
}

fn parse_claim(value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
    const FIELD: &str = "identity.claim";
    let path = match value {
        None => return Err(ConfigError::new(FIELD, "missing required field")),
        Some(Value::String(key)) => vec![key.clone()],
        Some(Value::Array(items)) => {
            let mut path = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(key) => path.push(key.clone()),
                    other => {
                        return Err(ConfigError::new(
                            &format!("{FIELD}[{i}]"),
                            format!("expected a string, found {}", kind(other)),
                        ))
                    }
                }
            }
            if path.is_empty() {
                return Err(ConfigError::new(FIELD, "the claim path must not be empty"));
            }
            path
        }
        Some(other) => {
            return Err(ConfigError::new(
                FIELD,
                format!(
                    "expected a string or an array of strings, found {}",
                    kind(other)
                ),
            ))
        }
    };
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::new(FIELD, "claim keys must not be empty"));
    }
    Ok(path)
}

fn check_tenant_label(label: &str, vm_extra_label: bool) -> Result<(), ConfigError> {
    const FIELD: &str = "tenant_label";
    if label.is_empty() {
        return Err(ConfigError::new(FIELD, "must not be empty"));
    }
    // Any UTF-8 name can be quoted in PromQL 3, but control characters have no
    // business in a label name and would make the log and the matcher unreadable.
    if label.chars().any(char::is_control) {
        return Err(ConfigError::new(
            FIELD,
            "must not contain control characters",
        ));
    }
    if label == "__name__" {
        return Err(ConfigError::new(
            FIELD,
            "must not be the metric name label `__name__`",
        ));
    }
    // VictoriaMetrics splits `extra_label=name=value` at the first `=`.
    if vm_extra_label && label.contains('=') {
        return Err(ConfigError::new(
            FIELD,
            "must not contain `=` when `victoriametrics_extra_label` is set",
        ));
    }
    Ok(())
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read field by field, remembering its path for errors.
struct Fields<'a> {
    path: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(path: &'a str, value: &'a Value) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Fields { path, map }),
            other => Err(ConfigError::new(
                path,
                format!("expected an object, found {}", kind(other)),
            )),
        }
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    fn deny_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ConfigError::new(
                &self.field(unknown),
                format!("unknown field, expected one of {}", quoted_list(known)),
            )),
            None => Ok(()),
        }
    }

    fn deny_unknown_for_source(&self, known: &[&str], source: &str) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ConfigError::new(
                &self.field(unknown),
                format!(
                    "unknown field for source {source:?}, expected one of {}",
                    quoted_list(known)
                ),
            )),
            None => Ok(()),
        }
    }

    fn optional<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ConfigError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| ConfigError::new(&self.field(name), e.to_string())),
        }
    }

    fn required<T: DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        self.optional(name)?
            .ok_or_else(|| ConfigError::new(&self.field(name), "missing required field"))
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "tenant_label": "client_id",
      "identity": {
        "source": "userinfo",
        "cluster": "oidc",
        "authority": "example.eu.auth0.com",
        "path": "/userinfo",
        "timeout_ms": 2000,
        "claim": "https://example.com/client_id",
        "cache_ttl_s": 300,
        "negative_cache_ttl_s": 10,
        "cache_max_entries": 10000
      },
      "on_conflict": "and",
      "dialect": "promql",
      "victoriametrics_extra_label": true,
      "max_body_bytes": 1048576
    }"#;

    fn err(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).expect_err("config should be refused")
    }

    fn minimal_with_identity(identity: &str) -> String {
        format!(r#"{{"tenant_label": "client_id", "identity": {identity}}}"#)
    }

    #[test]
    fn full_example_from_the_issue_parses() {
        let c = Config::parse(FULL.as_bytes()).unwrap();
        assert_eq!(c.tenant_label, "client_id");
        assert_eq!(c.identity.claim, vec!["https://example.com/client_id"]);
        assert_eq!(c.on_conflict, ConflictPolicy::And);
        assert_eq!(c.dialect, Dialect::Promql);
        assert!(c.victoriametrics_extra_label);
        assert_eq!(c.max_body_bytes, 1_048_576);
        let IdentitySource::Userinfo(u) = c.identity.source else {
            panic!("expected userinfo")
        };
        assert_eq!(u.authority, "example.eu.auth0.com");
    }

    #[test]
    fn minimal_userinfo_config_takes_the_defaults() {
        let c = Config::parse(
            minimal_with_identity(r#"{"source":"userinfo","cluster":"oidc","claim":"tid"}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.on_conflict, ConflictPolicy::And);
        assert_eq!(c.dialect, Dialect::Promql);
        assert!(c.victoriametrics_extra_label);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(
            c.identity.source,
            IdentitySource::Userinfo(UserinfoConfig {
                cluster: "oidc".into(),
                authority: "oidc".into(),
                path: "/userinfo".into(),
                timeout_ms: 2000,
                cache_ttl_s: 300,
                negative_cache_ttl_s: 10,
                failure_cache_ttl_s: 2,
                cache_max_entries: 10_000,
            })
        );
    }

    #[test]
    fn other_enum_values_parse() {
        let c = Config::parse(
            br#"{"tenant_label":"t","on_conflict":"reject","dialect":"metricsql",
                "victoriametrics_extra_label":false,
                "identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
        )
        .unwrap();
        assert_eq!(c.on_conflict, ConflictPolicy::Reject);
        assert_eq!(c.dialect, Dialect::Metricsql);
        assert!(!c.victoriametrics_extra_label);
    }

    #[test]
    fn claim_array_is_a_path() {
        let c = Config::parse(
            minimal_with_identity(
                r#"{"source":"userinfo","cluster":"oidc","claim":["app_metadata","tenant"]}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.identity.claim, vec!["app_metadata", "tenant"]);
    }

    #[test]
    fn jwt_payload_header_source() {
        let c = Config::parse(
            minimal_with_identity(r#"{"source":"jwt_payload_header","claim":"client_id"}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.identity.source,
            IdentitySource::JwtPayloadHeader {
                header: "x-jwt-payload".into()
            }
        );
        let c = Config::parse(
            minimal_with_identity(
                r#"{"source":"jwt_payload_header","header":"X-Claims","claim":"client_id"}"#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.identity.source,
            IdentitySource::JwtPayloadHeader {
                header: "x-claims".into()
            }
        );
    }

    fn assert_field(e: &ConfigError, field: &str, reason_part: &str) {
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(reason_part), "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }

    #[test]
    fn not_json_or_not_an_object() {
        assert_field(&err("{"), "", "not valid JSON");
        assert_field(&err("[]"), "", "expected an object");
        assert_field(&err(""), "", "not valid JSON");
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_field(
            &err(r#"{"identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#),
            "tenant_label",
            "missing",
        );
        assert_field(&err(r#"{"tenant_label":"t"}"#), "identity", "missing");
        assert_field(
            &err(&minimal_with_identity(r#"{"cluster":"c","claim":"t"}"#)),
            "identity.source",
            "missing",
        );
        assert_field(
            &err(&minimal_with_identity(
                r#"{"source":"userinfo","cluster":"c"}"#,
            )),
            "identity.claim",
            "missing",
        );
        assert_field(
            &err(&minimal_with_identity(
                r#"{"source":"userinfo","claim":"t"}"#,
            )),
            "identity.cluster",
            "missing",
        );
    }

    #[test]
    fn debug_time_engine_is_optional_and_checked() {
        let base = minimal_with_identity(r#"{"source":"userinfo","cluster":"c","claim":"t"}"#);
        assert_eq!(
            Config::parse(base.as_bytes()).unwrap().debug_time_engine,
            None
        );
        let with =
            |timing: &str| base.replacen('{', &format!(r#"{{"debug_time_engine":{timing},"#), 1);
        let config =
            Config::parse(with(r#"{"queries":["up","rate(x[5m])"],"rounds":3}"#).as_bytes())
                .unwrap();
        assert_eq!(
            config.debug_time_engine,
            Some(EngineTimingConfig {
                queries: vec!["up".into(), "rate(x[5m])".into()],
                rounds: 3
            })
        );
        let e = Config::parse(with(r#"{"queries":["up"],"rounds":0}"#).as_bytes()).unwrap_err();
        assert_field(&e, "debug_time_engine.rounds", "between 1 and");
        let e = Config::parse(with(r#"{"rounds":2}"#).as_bytes()).unwrap_err();
        assert_field(&e, "debug_time_engine.queries", "missing");
        let e = Config::parse(with(r#"{"queries":["up"],"loops":2}"#).as_bytes()).unwrap_err();
        assert_field(&e, "debug_time_engine.loops", "unknown field");
    }

    #[test]
    fn debug_trap_marker_is_optional_and_checked() {
        let base = minimal_with_identity(r#"{"source":"userinfo","cluster":"c","claim":"t"}"#);
        let with =
            |marker: &str| base.replacen('{', &format!(r#"{{"debug_trap_marker":{marker},"#), 1);
        let unset = Config::parse(base.as_bytes()).unwrap();
        assert_eq!(unset.debug_trap_marker, None);
        let marker = "trap-8f1c2d9e4b7a";
        let set = Config::parse(with(&format!("{marker:?}")).as_bytes()).unwrap();
        assert_eq!(set.debug_trap_marker.as_deref(), Some(marker));
        let longest = "x".repeat(128);
        Config::parse(with(&format!("{longest:?}")).as_bytes()).unwrap();
        for bad in [
            r#""short""#,
            &format!("{:?}", "x".repeat(129)),
            r#""a marker with spaces""#,
            r#""tab\tseparated-marker""#,
            r#""non-ascii-marker-é-1234""#,
            r#""""#,
        ] {
            let e = Config::parse(with(bad).as_bytes()).unwrap_err();
            assert_field(&e, "debug_trap_marker", "16 to 128 visible ASCII");
        }
        for wrong_type in ["null", "7", r#"["trap-8f1c2d9e4b7a"]"#] {
            let e = Config::parse(with(wrong_type).as_bytes()).unwrap_err();
            assert_eq!(e.field, "debug_trap_marker", "{wrong_type}: {e}");
        }
    }

    #[test]
    fn only_the_exact_marker_traps() {
        let marker = "trap-8f1c2d9e4b7a";
        let config = Config::parse(
            format!(
                r#"{{"tenant_label":"t","debug_trap_marker":"{marker}",
                    "identity":{{"source":"userinfo","cluster":"c","claim":"t"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(config.is_debug_trap(Some(marker.as_bytes())));
        for other in [
            "",
            "trap-8f1c2d9e4b7",
            "trap-8f1c2d9e4b7a ",
            "trap-8f1c2d9e4b7b",
            "TRAP-8F1C2D9E4B7A",
            "trap-8f1c2d9e4b7atrap",
        ] {
            assert!(!config.is_debug_trap(Some(other.as_bytes())), "{other:?}");
        }
        assert!(!config.is_debug_trap(None));
        // Without the setting, no header value traps, whatever it is.
        let unset = Config::parse(
            br#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
        )
        .unwrap();
        assert!(!unset.is_debug_trap(Some(marker.as_bytes())));
        assert!(!unset.is_debug_trap(Some(b"")));
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_field(
            &err(
                r#"{"tenant_label":"t","tenant":"x","identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
            ),
            "tenant",
            "unknown field",
        );
        assert_field(
            &err(&minimal_with_identity(
                r#"{"source":"userinfo","cluster":"c","claim":"t","timeout":5}"#,
            )),
            "identity.timeout",
            "unknown field",
        );
        assert_field(
            &err(&minimal_with_identity(
                r#"{"source":"userinfo","cluster":"c","claim":"t","header":"x"}"#,
            )),
            "identity.header",
            "source \"userinfo\"",
        );
        assert_field(
            &err(&minimal_with_identity(
                r#"{"source":"jwt_payload_header","claim":"t","cluster":"c"}"#,
            )),
            "identity.cluster",
            "source \"jwt_payload_header\"",
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (
                r#"{"tenant_label":5,"identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "tenant_label",
            ),
            (r#"{"tenant_label":"t","identity":[]}"#, "identity"),
            (
                r#"{"tenant_label":"t","on_conflict":"merge","identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "on_conflict",
            ),
            (
                r#"{"tenant_label":"t","dialect":"sql","identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "dialect",
            ),
            (
                r#"{"tenant_label":"t","victoriametrics_extra_label":"yes","identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "victoriametrics_extra_label",
            ),
            (
                r#"{"tenant_label":"t","max_body_bytes":-1,"identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "max_body_bytes",
            ),
            (
                r#"{"tenant_label":"t","max_body_bytes":1.5,"identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
                "max_body_bytes",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":1,"cluster":"c","claim":"t"}}"#,
                "identity.source",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":["c"],"claim":"t"}}"#,
                "identity.cluster",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","timeout_ms":"2000"}}"#,
                "identity.timeout_ms",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","cache_ttl_s":null}}"#,
                "identity.cache_ttl_s",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","negative_cache_ttl_s":true}}"#,
                "identity.negative_cache_ttl_s",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","cache_max_entries":{}}}"#,
                "identity.cache_max_entries",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","authority":1}}"#,
                "identity.authority",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":"t","path":false}}"#,
                "identity.path",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":5}}"#,
                "identity.claim",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":["a",1]}}"#,
                "identity.claim[1]",
            ),
            (
                r#"{"tenant_label":"t","identity":{"source":"jwt_payload_header","claim":"t","header":7}}"#,
                "identity.header",
            ),
        ];
        for (json, field) in cases {
            let e = err(json);
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn semantic_checks() {
        let userinfo = |extra: &str| {
            format!(
                r#"{{"tenant_label":"t","identity":{{"source":"userinfo","cluster":"c","claim":"t"{extra}}}}}"#
            )
        };
        assert_field(
            &err(&userinfo(r#","timeout_ms":0"#)),
            "identity.timeout_ms",
            "between",
        );
        assert_field(
            &err(&userinfo(r#","timeout_ms":60001"#)),
            "identity.timeout_ms",
            "between",
        );
        assert_field(
            &err(&userinfo(r#","cache_max_entries":0"#)),
            "identity.cache_max_entries",
            "between",
        );
        assert_field(
            &err(&userinfo(r#","cache_max_entries":1000001"#)),
            "identity.cache_max_entries",
            "between",
        );
        assert_field(
            &err(&userinfo(r#","cache_ttl_s":86401"#)),
            "identity.cache_ttl_s",
            "at most",
        );
        assert_field(
            &err(&userinfo(r#","negative_cache_ttl_s":86401"#)),
            "identity.negative_cache_ttl_s",
            "at most",
        );
        assert_field(
            &err(&userinfo(r#","failure_cache_ttl_s":61"#)),
            "identity.failure_cache_ttl_s",
            "at most 60",
        );
        assert_field(
            &err(&userinfo(r#","path":"userinfo""#)),
            "identity.path",
            "start with",
        );
        assert_field(
            &err(&userinfo(r#","authority":"""#)),
            "identity.authority",
            "non-empty",
        );
        assert_field(
            &err(
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"","claim":"t"}}"#,
            ),
            "identity.cluster",
            "empty",
        );
        assert_field(
            &err(
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":""}}"#,
            ),
            "identity.claim",
            "empty",
        );
        assert_field(
            &err(
                r#"{"tenant_label":"t","identity":{"source":"userinfo","cluster":"c","claim":[]}}"#,
            ),
            "identity.claim",
            "empty",
        );
        assert_field(
            &err(r#"{"tenant_label":"t","identity":{"source":"ldap","claim":"t"}}"#),
            "identity.source",
            "unknown source",
        );
        assert_field(
            &err(
                r#"{"tenant_label":"t","identity":{"source":"jwt_payload_header","claim":"t","header":"x y"}}"#,
            ),
            "identity.header",
            "header name",
        );
        // Zero TTLs are allowed: they switch caching off.
        Config::parse(userinfo(r#","cache_ttl_s":0,"negative_cache_ttl_s":0"#).as_bytes()).unwrap();
    }

    #[test]
    fn tenant_label_checks() {
        let with_label = |label: &str, vm: bool| {
            format!(
                r#"{{"tenant_label":{label},"victoriametrics_extra_label":{vm},"identity":{{"source":"userinfo","cluster":"c","claim":"t"}}}}"#
            )
        };
        assert_field(&err(&with_label(r#""""#, true)), "tenant_label", "empty");
        assert_field(
            &err(&with_label(r#""a\nb""#, true)),
            "tenant_label",
            "control",
        );
        assert_field(
            &err(&with_label(r#""__name__""#, true)),
            "tenant_label",
            "__name__",
        );
        assert_field(&err(&with_label(r#""a=b""#, true)), "tenant_label", "`=`");
        // A quotable UTF-8 name is fine, and `=` is fine without the VM extra label.
        Config::parse(with_label(r#""tenant.id""#, true).as_bytes()).unwrap();
        Config::parse(with_label(r#""a=b""#, false).as_bytes()).unwrap();
    }

    #[test]
    fn max_body_bytes_must_be_positive() {
        assert_field(
            &err(
                r#"{"tenant_label":"t","max_body_bytes":0,"identity":{"source":"userinfo","cluster":"c","claim":"t"}}"#,
            ),
            "max_body_bytes",
            "greater than 0",
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let _ = Config::parse(&bytes);
        }
    }
}
