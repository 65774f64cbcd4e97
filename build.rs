//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["runware/v1/runware.proto"], ["proto"])?;
    // Kept for gRPC server reflection.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("runware_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // A decoded image goes out as the buffer it was decoded into.
        .bytes(".runware.v1.ImageResult.image_data")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
