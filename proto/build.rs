//! Generates the larder.v1 messages and tonic services, and the encoded file
//! descriptor set served by reflection. protoc comes from protoc-bin-vendored,
//! so no system protoc is needed.

use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "larder/v1/types.proto",
    "larder/v1/node.proto",
    "larder/v1/control.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded, before any other code reads the environment.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("larder_v1_descriptor.bin"))
        .compile_protos(&PROTOS, &["."])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
