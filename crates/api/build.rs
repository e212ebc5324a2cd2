//! Compiles the wire protos (`types.v1`, `push.v1`, `querier.v1`,
//! `ingester.v1`) into prost messages, tonic clients and proto3 JSON
//! (pbjson) support, without `protoc`. The pprof messages (`google.v1`) are
//! the model crate's.

use std::path::PathBuf;

const FILES: [&str; 4] = [
    "types/v1/types.proto",
    "push/v1/push.proto",
    "querier/v1/querier.proto",
    "ingester/v1/ingester.proto",
];
const PPROF_PACKAGE: &str = ".google.v1";
const PPROF_RUST_PATH: &str = "::flamedb_model::pprof::proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true);
    compiler.open_files(FILES)?;
    let descriptors = compiler.encode_file_descriptor_set();
    let mut file_set = compiler.file_descriptor_set();
    file_set.file.retain(|file| file.package() != &PPROF_PACKAGE[1..]);

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(PPROF_PACKAGE, PPROF_RUST_PATH)
        .compile_fds(file_set)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .extern_path(PPROF_PACKAGE, PPROF_RUST_PATH)
        .ignore_unknown_fields()
        .build(&[".types", ".push", ".querier", ".ingester"])?;
    Ok(())
}
