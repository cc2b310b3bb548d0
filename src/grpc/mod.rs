//! The gRPC face of cedar-pdp: generated code, thin `Authorizer` and
//! ext_authz adapters over the pipeline (with ext_authz's path normalisation),
//! one RPC wrapper, and the one mapping from errors to statuses.

pub mod convert;
mod ext_authz;
mod http_path;
pub mod proto;
mod rpc;
mod service;
pub(crate) mod status;

pub use ext_authz::ExtAuthzService;
pub use service::AuthorizerService;
