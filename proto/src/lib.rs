//! Protocol types shared by every snapfleet process. Generated code only: conversions to
//! domain types live in each crate's `convert.rs`, so prost types stay at the edge.

/// The reference database's wire protocol: master (catalog, snapshots) and tablet servers.
pub mod tabletdb {
    tonic::include_proto!("snapfleet.tabletdb.v1");
}

/// The coordinator's gRPC surface: Raft transport between replicas, the client API (jobs,
/// cluster status) and the agent API (register, heartbeat, leases, progress). Payloads the
/// coordinator does not interpret travel as JSON strings.
#[allow(clippy::all)]
pub mod coordinator {
    tonic::include_proto!("snapfleet.coordinator.v1");
}
