//! The one place where pipeline errors become gRPC statuses. Clients treat
//! any non-OK status as a deny, so every mapping here fails closed.

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::pipeline::{Code, DecisionError};

/// The gRPC code of a pipeline code.
pub(crate) fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::Cancelled => tonic::Code::Cancelled,
        Code::Internal => tonic::Code::Internal,
    }
}

/// The domain of the `ErrorInfo` every error status carries.
pub(crate) const ERROR_DOMAIN: &str = "cedar-pdp";

/// The status of `err`: its message, a `google.rpc.ErrorInfo` with the
/// stable reason (the record's `error.reason`) and [`ERROR_DOMAIN`], and
/// the offending field as a `BadRequest` violation when there is one.
pub(crate) fn status(err: DecisionError) -> Status {
    let code = grpc_code(err.code());
    let mut metadata = std::collections::HashMap::new();
    if let Some(field) = &err.field {
        metadata.insert("field".to_string(), field.clone());
    }
    let mut details = ErrorDetails::with_error_info(err.reason.as_str(), ERROR_DOMAIN, metadata);
    if let Some(field) = err.field {
        details.add_bad_request_violation(field, err.message.clone());
    }
    Status::with_error_details(code, err.message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Reason;

    #[test]
    fn codes_keep_their_names() {
        for reason in Reason::ALL {
            let code = reason.code();
            assert_eq!(format!("{:?}", grpc_code(code)), code.label());
            let upper: String = code
                .label()
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_uppercase()).then_some('_');
                    sep.into_iter().chain(c.to_uppercase())
                })
                .collect();
            assert_eq!(upper, code.name());
        }
    }
}
