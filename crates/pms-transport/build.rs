//! Generates the protobuf messages and tonic stubs for `proto/*.proto` into `OUT_DIR`.
//! Invariant: the generated code is included only by `src/proto.rs` and never re-exported, so no
//! crate but this one sees a protobuf type.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: the compiled script is reused by
    // checkouts at other paths that share a target dir.
    let proto_dir =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        proto_dir.join("pms_admin.proto"),
        proto_dir.join("pms_internal.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&protos, &[proto_dir])?;
    Ok(())
}
