//! Protocol types shared by every snapfleet process. Generated code only: conversions to
//! domain types live in each crate's `convert.rs`, so prost types stay at the edge.

/// The reference database's wire protocol: master (catalog, snapshots) and tablet servers.
pub mod tabletdb {
    tonic::include_proto!("snapfleet.tabletdb.v1");
}
