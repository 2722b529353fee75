//! Compiles `proto/coordinator.proto` (the coordinator's client, agent and Raft transport
//! services) into tonic/prost code. Never generates anything other crates depend on.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/coordinator.proto"], &["proto"])
        .expect("compiling coordinator/proto/coordinator.proto (is protoc installed?)");
}
