//! `promql-tenant`: preview what the filter does to a query.
fn main() {}
