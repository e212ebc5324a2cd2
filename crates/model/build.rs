//! Compiles `proto/google/v1/profile.proto` (pprof) into prost messages with
//! proto3 JSON (pbjson) support, without needing `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "google/v1/profile.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true);
    compiler.open_files([file])?;
    let descriptors = compiler.encode_file_descriptor_set();

    // The descriptors themselves, for counting what bytes decode into
    // (`decode_cost`).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("google.v1.descriptors.bin"), &descriptors)?;

    prost_build::Config::new()
        .enable_type_names()
        .compile_fds(compiler.file_descriptor_set())?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .ignore_unknown_fields()
        .build(&[".google.v1"])?;
    Ok(())
}
