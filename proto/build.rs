//! Compiles the internal `.proto` files with the vendored `protoc`, so that
//! nobody has to install protoc by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        // Payloads and ids stay `bytes::Bytes`, so the hot path never copies them.
        .bytes(".")
        .compile_protos(
            &[
                "proto/metadata.proto",
                "proto/bookie.proto",
                "proto/raft.proto",
            ],
            &["proto"],
        )?;
    // Generated apart: protoc sees metadata.proto again through the import, and
    // its output must not replace the metadata module generated above.
    let admin_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("admin");
    std::fs::create_dir_all(&admin_out)?;
    tonic_prost_build::configure()
        .out_dir(admin_out)
        .bytes(".")
        // The admin API reuses metadata types from the module generated above.
        .extern_path(".strata.metadata.v1", "crate::metadata")
        .compile_protos(&["proto/admin.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
