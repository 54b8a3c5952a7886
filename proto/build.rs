//! Compiles proto/esf/v1/*.proto with protox (pure Rust, no protoc) and
//! writes the descriptor set for gRPC reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/esf/v1/config.proto",
        "proto/esf/v1/cluster.proto",
        "proto/esf/v1/raft.proto",
        "proto/esf/v1/registry.proto",
        "proto/esf/v1/events.proto",
        "proto/esf/v1/auth.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("esf_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
