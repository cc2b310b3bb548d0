//! The one place where pipeline reasons become HTTP statuses and AuthZEN
//! error bodies. A PEP treats any status but 200 as a deny, so every
//! mapping here fails closed; a deny itself is a 200 with
//! `{"decision": false}` and never passes through here.

use axum::http::StatusCode;
use serde_json::{Value as Json, json};

use crate::pipeline::{DecisionError, Reason};

/// What a client in a hurry closed before it was answered (nginx's code);
/// nobody reads it, but the access log and the record agree.
const CLIENT_CLOSED: u16 = 499;

/// The HTTP status of a request refused for `reason`.
pub(super) fn http_status(reason: Reason) -> StatusCode {
    match reason {
        Reason::InvalidRequest
        | Reason::InvalidPath
        | Reason::LimitExceeded
        | Reason::InvalidEntities
        | Reason::EntityConflict
        | Reason::InvalidContext
        | Reason::SchemaMismatch
        | Reason::DelegationInvalid => StatusCode::BAD_REQUEST,
        Reason::TokenInvalid => StatusCode::UNAUTHORIZED,
        Reason::BindingMismatch => StatusCode::FORBIDDEN,
        Reason::NotReady | Reason::StreamMaxAge | Reason::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Reason::Overloaded | Reason::TooManyStreams | Reason::BufferBudget => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Reason::Deadline | Reason::StreamIdle => StatusCode::GATEWAY_TIMEOUT,
        Reason::Cancelled => {
            StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The message a client may see: an internal error's details stay in the
/// decision record and the logs.
pub(super) fn message(error: &DecisionError) -> String {
    match error.reason {
        Reason::Internal => "internal error; the decision record has the details".to_string(),
        _ => error.message.clone(),
    }
}

/// `{"error": "<stable reason>", "message": "..."}`, the body of every
/// non-200 answer to an evaluation.
pub(super) fn error_body(error: &DecisionError) -> Json {
    json!({"error": error.reason.as_str(), "message": message(error)})
}

/// `{"status": <HTTP status>, "message": "..."}`: a batch item's
/// `context.error`, as the spec's example has it.
pub(super) fn item_error(error: &DecisionError) -> Json {
    json!({"status": http_status(error.reason).as_u16(), "message": message(error)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_an_error_status() {
        for reason in Reason::ALL {
            let status = http_status(reason);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{reason:?} -> {status}"
            );
        }
        assert_eq!(http_status(Reason::InvalidRequest), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Reason::NotReady),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Reason::Cancelled).as_u16(), 499);
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = DecisionError::internal("thread `eval-3` panicked at src/x.rs:10");
        let body = error_body(&e).to_string();
        assert!(
            !body.contains("eval-3") && !body.contains("src/x.rs"),
            "{body}"
        );
        assert_eq!(item_error(&e)["status"], 500);
    }
}
