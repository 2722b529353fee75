//! The coordinator's generated gRPC code, from `proto/proto/coordinator.proto` (built by the
//! `snapfleet-proto` crate, which both ends of the wire share). Conversions to domain types
//! live in `convert.rs`.
pub use snapfleet_proto::coordinator::*;
