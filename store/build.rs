//! Compiles the served store's protocol (proto/store.proto). Needs `protoc` (Debian:
//! protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/store.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/store.proto"], &["proto"])
        .map_err(|e| {
            format!(
                "compiling proto/store.proto failed (is protoc installed? Debian: apt-get install protobuf-compiler): {e}"
            )
        })?;
    Ok(())
}
