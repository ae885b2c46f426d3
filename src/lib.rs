//! `promql-tenant-filter`: confine PromQL queries to one tenant.
//!
//! The crate is a sans-IO core (everything that decides) plus one thin module,
//! [`filter`], that binds the core to the proxy-wasm host inside Envoy.
//!
//! - [`promql`]: lexer, chumsky parser, AST with spans, type checks, tenant injection.

pub mod promql;

pub use promql::inject::{rewrite, ConflictPolicy, InvalidTenant, RewriteError, TenantMatcher};
pub use promql::{parse, Dialect, ParseError};
pub mod api;
pub mod cache;
pub mod config;
pub mod decision;
pub mod filter;
pub mod flight;
pub mod form;
pub mod header_map;
pub mod identity;
pub mod lifecycle;
pub mod mediatype;
pub mod memo;
pub mod response;
pub mod rules;
pub mod timing;
pub mod verified;
pub mod writes;
