//! Generates a gRPC *client* stub from `proto/` with a vendored protoc: the
//! tools publish to `UpdateIngest` like any backend, without the server's
//! generated code (or the server crate) in their build.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure().build_server(false).compile_with_config(
        config,
        &[PathBuf::from("../../proto/venta/gateway/v1/ingest.proto")],
        &[PathBuf::from("../../proto"), include],
    )?;
    Ok(())
}
