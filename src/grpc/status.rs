//! The one place where errors become gRPC statuses. Clients treat any non-OK
//! status as a deny, so every variant here fails closed.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::InvalidField;
use crate::authorizer::AuthorizeError;

/// Every way a request can fail before a decision is made.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Field(#[from] InvalidField),
    #[error(transparent)]
    Authorize(#[from] AuthorizeError),
    #[error("no policy set is loaded yet")]
    NotReady,
    #[error("batch has {len} requests; the limit is {max} (`limits.max_batch_size`)")]
    BatchTooLarge { len: usize, max: usize },
    #[error(
        "overloaded: {max} calls are already being evaluated (`limits.max_in_flight`); retry with backoff"
    )]
    Overloaded { max: usize },
    #[error(
        "deadline of {timeout:?} exceeded (`limits.request_timeout` or the client's `grpc-timeout`)"
    )]
    DeadlineExceeded { timeout: std::time::Duration },
    /// A workload tried to ask as someone other than the verified caller.
    #[error(
        "`workload.spiffe_id` `{claimed}` is not the verified caller `{verified}`; a workload may only ask for itself (`caller.bind_workload`)"
    )]
    CallerMismatch { claimed: String, verified: String },
}

impl ApiError {
    /// The gRPC code this error maps to; also a stable label for metrics.
    pub fn code(&self) -> Code {
        match self {
            Self::Field(_) | Self::Authorize(_) | Self::BatchTooLarge { .. } => {
                Code::InvalidArgument
            }
            Self::NotReady => Code::Unavailable,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::CallerMismatch { .. } => Code::PermissionDenied,
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            Self::Field(f) => Some(f.field.clone()),
            Self::Authorize(e) => Some(e.field().to_string()),
            Self::BatchTooLarge { .. } => Some("requests".to_string()),
            Self::CallerMismatch { .. } => Some("workload.spiffe_id".to_string()),
            Self::NotReady | Self::Overloaded { .. } | Self::DeadlineExceeded { .. } => None,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let message = err.to_string();
        match err.field() {
            Some(field) => Status::with_error_details(
                err.code(),
                message.clone(),
                ErrorDetails::with_bad_request_violation(field, message),
            ),
            None => Status::new(err.code(), message),
        }
    }
}
