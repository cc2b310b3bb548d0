//! The gRPC face of cedar-pdp: generated code, thin `Authorizer` and
//! ext_authz adapters over the pipeline (with ext_authz's path normalisation),
//! one RPC wrapper, the one mapping from errors to statuses, and the buffer
//! budget on request bodies below tonic.

mod budget;
pub mod convert;
mod ext_authz;
mod http_path;
pub mod proto;
mod rpc;
mod service;
pub(crate) mod status;

pub(crate) use budget::BudgetLayer;
pub use ext_authz::ExtAuthzService;
pub use service::AuthorizerService;
