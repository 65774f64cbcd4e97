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
        // The two fields that carry a whole result item, or its image, go
        // out as slices of the upstream message they came in: prost's
        // strings are owned `String`s, so they are generated as bytes
        // (the same on the wire as a string; reflection and the .proto
        // still say string).
        .bytes(".runware.v1.ImageResult.image_base64_data")
        .bytes(".runware.v1.RunResult.item_json")
        // A decoded image goes out as the buffer it was decoded into.
        .bytes(".runware.v1.ImageResult.image_data")
        // Each message's buffer sized once: src/pb_codec.rs.
        .codec_path("crate::pb::SizedCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(as_bytes(fds, AS_BYTES))?;
    Ok(())
}

/// The string fields whose Rust type is bytes: (message, field).
const AS_BYTES: &[(&str, &str)] = &[
    ("ImageResult", "image_base64_data"),
    ("RunResult", "item_json"),
];

/// `fds` with each of `fields` typed bytes (it must be a string field).
fn as_bytes(
    mut fds: prost_types::FileDescriptorSet,
    fields: &[(&str, &str)],
) -> prost_types::FileDescriptorSet {
    use prost_types::field_descriptor_proto::Type;
    let mut found = 0;
    for file in fds.file.iter_mut().filter(|f| f.package() == "runware.v1") {
        for message in &mut file.message_type {
            let name = message.name().to_owned();
            for field in &mut message.field {
                if fields.contains(&(name.as_str(), field.name())) {
                    assert_eq!(field.r#type(), Type::String, "{}", field.name());
                    field.set_type(Type::Bytes);
                    found += 1;
                }
            }
        }
    }
    assert_eq!(found, fields.len(), "a field of AS_BYTES is not in proto/");
    fds
}
