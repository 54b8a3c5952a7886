//! Compiles the etcd v3 KV subset (proto/etcd/rpc.proto) with protox.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/etcd/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
