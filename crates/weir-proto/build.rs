//! Compiles `proto/weir/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: checkouts that share one target
    // directory (CI's clean clone and a developer's) share this script's binary.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "weir/v1/job.proto",
        "weir/v1/master.proto",
        "weir/v1/files.proto",
        "weir/v1/datasets.proto",
        "weir/v1/streams.proto",
        "weir/v1/schedules.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("weir_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
