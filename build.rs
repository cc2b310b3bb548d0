//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes a
//! descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cedar_pdp/v1/authorizer.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cedar_pdp_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Envoy's ext_authz service, for reflection only: its Rust types come
    // from envoy-types, whose proto files are vendored in proto/vendor.
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/vendor"],
    )?;
    std::fs::write(
        out.join("envoy_ext_authz_descriptor.bin"),
        prost::Message::encode_to_vec(&envoy),
    )?;
    tonic_prost_build::configure()
        // Ordered maps convert to the same JSON every time, so equal
        // requests get equal decision-cache keys.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
