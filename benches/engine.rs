//! Engine throughput over the real-world corpus (placeholder until the engine lands).
fn main() {}
