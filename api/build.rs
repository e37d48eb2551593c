//! Compiles the agent protocol. Needs `protoc` (Debian: protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_protos(&["proto/agent.proto"], &["proto"])
        .map_err(|e| format!("compiling proto/agent.proto failed (is protoc installed? Debian: apt-get install protobuf-compiler): {e}"))?;
    Ok(())
}
