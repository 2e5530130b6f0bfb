//! Rust client (placeholder while it is written).
