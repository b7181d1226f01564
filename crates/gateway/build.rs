//! Generates the gRPC code from `proto/` with a vendored protoc, so a fresh
//! machine needs nothing but `cargo build`; rebuilds when `migrations/`
//! (embedded by `sqlx::migrate!`) changes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../../proto");
    // `sqlx::migrate!` embeds migrations/ at compile time.
    println!("cargo:rerun-if-changed=../../migrations");
    // Undecodable requests are INVALID_ARGUMENT, not tonic-prost's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::ingest::codec::IngestCodec")
        .file_descriptor_set_path(out.join("venta_gateway_v1.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("../../proto/venta/gateway/v1/ingest.proto")],
            &[PathBuf::from("../../proto"), include],
        )?;
    Ok(())
}
