//! Generated gRPC code for `proto/coordinator.proto`. Generated code only: conversions to
//! domain types live in `convert.rs`.
#![allow(clippy::all)]
tonic::include_proto!("snapfleet.coordinator.v1");
