//! The gRPC face of cedar-pdp: generated code, the `Authorizer` service, the
//! proto-to-Cedar conversion and the one mapping from errors to statuses.

mod audit;
pub mod convert;
pub mod proto;
mod service;
mod spans;
pub mod status;

pub use service::AuthorizerService;
