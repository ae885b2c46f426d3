//! The Rust side of the Go form oracle (`main.go` beside this file): [`client`] runs it,
//! [`compare`] holds the filter's reading of a form up against Go's.
//!
//! Shared by the integration test `tests/go_form_rules.rs` and the fuzz targets
//! (`fuzz/src/lib.rs` includes this module by path), so that both judge the filter by
//! the same reading.

#![allow(dead_code, unused_imports)] // each user takes a different subset

pub mod client;
pub mod compare;

pub use client::{forwarded_request, GoOracle, GoString, HandlerView};
