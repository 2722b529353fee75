//! Compiles `proto/*.proto` into tonic/prost code (needs `protoc`; `scripts/setup.sh`
//! installs it): the reference database's protocol and the coordinator's.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // Catalog and snapshot metadata are also stored as JSON (master state, the
        // catalog beside each tablet snapshot), so every message is serde-able.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .compile_protos(&["proto/tabletdb.proto"], &["proto"])
        .expect("compiling proto/tabletdb.proto (is protoc installed? run scripts/setup.sh)");
    tonic_prost_build::configure()
        .compile_protos(&["proto/coordinator.proto"], &["proto"])
        .expect("compiling proto/coordinator.proto (is protoc installed? run scripts/setup.sh)");
}
