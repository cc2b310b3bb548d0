//! Code generated from `proto/cedar_pdp/v1/authorizer.proto`.
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "generated code"
)]

tonic::include_proto!("cedar_pdp.v1");

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cedar_pdp_descriptor.bin"));

/// The encoded `FileDescriptorSet` of `google.rpc`'s error details, so
/// reflecting clients (grpcurl) can decode the `ErrorInfo` and
/// `BadRequest` an error status carries.
pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));

/// The encoded `FileDescriptorSet` of Envoy's `envoy.service.auth.v3`
/// ext_authz service, so reflection lists and describes `Check` too.
pub const ENVOY_EXT_AUTHZ_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));
