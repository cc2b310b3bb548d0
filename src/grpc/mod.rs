//! The gRPC face of cedar-pdp: generated code, the `Authorizer` service, the
//! proto-to-Cedar conversion and the one mapping from errors to statuses.

mod audit;
pub mod convert;
mod decision_cache;
mod ext_authz;
pub mod limits;
pub mod proto;
mod service;
mod spans;
pub mod status;

pub use ext_authz::ExtAuthzService;
pub use service::{AuthorizerService, ServiceOptions};
