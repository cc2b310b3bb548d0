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

/// The status of `err`, with the offending field as a `BadRequest`
/// violation when there is one.
pub(crate) fn status(err: DecisionError) -> Status {
    let code = grpc_code(err.code());
    match err.field {
        Some(field) => Status::with_error_details(
            code,
            err.message.clone(),
            ErrorDetails::with_bad_request_violation(field, err.message),
        ),
        None => Status::new(code, err.message),
    }
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
