//! Soak and chaos run (issue #7). Placeholder until written.
fn main() {}
