//! Tenant injection: add the tenant matcher to every series selector of a query.

use super::{Dialect, ParseError};
use std::fmt;

/// What to do with a selector that already has matchers on the tenant label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Keep the user's matchers and add ours (matchers AND, so this is always safe).
    #[default]
    And,
    /// Drop the user's matchers on the tenant label, then add ours.
    Replace,
    /// Refuse the query when a user matcher on the tenant label differs from ours.
    Reject,
}

impl std::str::FromStr for ConflictPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "and" => Ok(ConflictPolicy::And),
            "replace" => Ok(ConflictPolicy::Replace),
            "reject" => Ok(ConflictPolicy::Reject),
            other => Err(format!(
                "unknown conflict policy {other:?}, expected \"and\", \"replace\" or \"reject\""
            )),
        }
    }
}

/// A tenant label and its values, with the matcher text rendered once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMatcher {
    label: String,
    values: Vec<String>,
    text: String,
}

/// A tenant that cannot be expressed as a matcher (no values, empty label...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenant(pub String);

impl fmt::Display for InvalidTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidTenant {}

impl TenantMatcher {
    /// Builds the matcher: `label="v"` for one value, `label=~"v1|v2"` for several.
    pub fn new<S: AsRef<str>>(label: &str, values: &[S]) -> Result<Self, InvalidTenant> {
        let _ = (label, values);
        Err(InvalidTenant("not implemented yet".into()))
    }
    /// The tenant label name.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The tenant values, in the order given.
    pub fn values(&self) -> &[String] {
        &self.values
    }
    /// The matcher as PromQL text, e.g. `client_id="1999"` or `"tenant.id"=~"a|b"`.
    pub fn matcher_text(&self) -> &str {
        &self.text
    }
}

/// Why a query was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// The query does not parse (or fails the type checks).
    Parse(ParseError),
    /// Policy `reject`: the query has its own matcher on the tenant label.
    Conflict(String),
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::Parse(e) => e.fmt(f),
            RewriteError::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RewriteError {}

/// Rewrites `query` so that every series selector carries the tenant matcher.
///
/// The output equals the input byte for byte except for the inserted matcher text
/// (and, with [`ConflictPolicy::Replace`], the removed user matchers).
pub fn rewrite(
    query: &str,
    tenant: &TenantMatcher,
    policy: ConflictPolicy,
    dialect: Dialect,
) -> Result<String, RewriteError> {
    let _ = (query, tenant, policy, dialect);
    Err(RewriteError::Conflict("not implemented yet".into()))
}
