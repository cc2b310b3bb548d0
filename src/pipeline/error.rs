//! Why a request got no decision: a stable reason, the status code it maps
//! to, and a message for the caller. Reasons are metric labels and appear in
//! decision records, so their names never change.

use std::time::Duration;

use crate::engine::AuthorizeError;

/// A request field that cannot be converted or breaks a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `context.addr`.
    pub field: String,
    pub message: String,
}

impl InvalidField {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, e.g. with `requests[3]`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// The canonical status codes a failure maps to. Named as gRPC names them,
/// the taxonomy every front-end maps from (gRPC directly, HTTP by table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    ResourceExhausted,
    DeadlineExceeded,
    Cancelled,
    Internal,
}

impl Code {
    /// The gRPC name, as records carry it: `INVALID_ARGUMENT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::Unavailable => "UNAVAILABLE",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Cancelled => "CANCELLED",
            Self::Internal => "INTERNAL",
        }
    }

    /// The `code` metric label, spelled as it always was: `InvalidArgument`.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidArgument => "InvalidArgument",
            Self::Unauthenticated => "Unauthenticated",
            Self::PermissionDenied => "PermissionDenied",
            Self::Unavailable => "Unavailable",
            Self::ResourceExhausted => "ResourceExhausted",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Cancelled => "Cancelled",
            Self::Internal => "Internal",
        }
    }
}

/// The stable reason a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidRequest,
    InvalidPath,
    LimitExceeded,
    InvalidEntities,
    EntityConflict,
    InvalidContext,
    SchemaMismatch,
    DelegationInvalid,
    TokenInvalid,
    BindingMismatch,
    NotReady,
    Overloaded,
    TooManyStreams,
    BufferBudget,
    StreamIdle,
    StreamMaxAge,
    ShuttingDown,
    Deadline,
    Cancelled,
    Internal,
}

impl Reason {
    /// Every reason, in documentation order.
    pub const ALL: [Reason; 20] = [
        Self::InvalidRequest,
        Self::InvalidPath,
        Self::LimitExceeded,
        Self::InvalidEntities,
        Self::EntityConflict,
        Self::InvalidContext,
        Self::SchemaMismatch,
        Self::DelegationInvalid,
        Self::TokenInvalid,
        Self::BindingMismatch,
        Self::NotReady,
        Self::Overloaded,
        Self::TooManyStreams,
        Self::BufferBudget,
        Self::StreamIdle,
        Self::StreamMaxAge,
        Self::ShuttingDown,
        Self::Deadline,
        Self::Cancelled,
        Self::Internal,
    ];

    /// The reason's stable name: a metric label and a record field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidPath => "invalid_path",
            Self::LimitExceeded => "limit_exceeded",
            Self::InvalidEntities => "invalid_entities",
            Self::EntityConflict => "entity_conflict",
            Self::InvalidContext => "invalid_context",
            Self::SchemaMismatch => "schema_mismatch",
            Self::DelegationInvalid => "delegation_invalid",
            Self::TokenInvalid => "token_invalid",
            Self::BindingMismatch => "binding_mismatch",
            Self::NotReady => "not_ready",
            Self::Overloaded => "overloaded",
            Self::TooManyStreams => "too_many_streams",
            Self::BufferBudget => "buffer_budget",
            Self::StreamIdle => "stream_idle",
            Self::StreamMaxAge => "stream_max_age",
            Self::ShuttingDown => "shutting_down",
            Self::Deadline => "deadline",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }

    /// The status code this reason maps to, for every front-end.
    pub fn code(self) -> Code {
        match self {
            Self::InvalidRequest
            | Self::InvalidPath
            | Self::LimitExceeded
            | Self::InvalidEntities
            | Self::EntityConflict
            | Self::InvalidContext
            | Self::SchemaMismatch
            | Self::DelegationInvalid => Code::InvalidArgument,
            Self::TokenInvalid => Code::Unauthenticated,
            Self::BindingMismatch => Code::PermissionDenied,
            Self::NotReady | Self::StreamMaxAge | Self::ShuttingDown => Code::Unavailable,
            Self::Overloaded | Self::TooManyStreams | Self::BufferBudget => Code::ResourceExhausted,
            Self::Deadline | Self::StreamIdle => Code::DeadlineExceeded,
            Self::Cancelled => Code::Cancelled,
            Self::Internal => Code::Internal,
        }
    }
}

/// A request that got no decision. The caller must treat it as a deny.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecisionError {
    pub reason: Reason,
    /// The request field at fault, for structured error details.
    pub field: Option<String>,
    pub message: String,
}

impl DecisionError {
    fn new(reason: Reason, field: Option<String>, message: String) -> Self {
        Self {
            reason,
            field,
            message,
        }
    }

    /// A malformed field.
    pub fn invalid(f: InvalidField) -> Self {
        Self::of_field(Reason::InvalidRequest, f)
    }

    /// A field refused for `reason`.
    pub fn of_field(reason: Reason, f: InvalidField) -> Self {
        let message = f.to_string();
        Self::new(reason, Some(f.field), message)
    }

    /// A field over one of the `limits.*`.
    pub fn limit(f: InvalidField) -> Self {
        let message = f.to_string();
        Self::new(Reason::LimitExceeded, Some(f.field), message)
    }

    /// A batch with more items than `limits.max_batch_size`.
    pub fn batch_too_large(len: usize, max: usize) -> Self {
        Self::new(
            Reason::LimitExceeded,
            Some("requests".into()),
            format!("batch has {len} requests; the limit is {max} (`limits.max_batch_size`)"),
        )
    }

    /// No policy set has loaded yet.
    pub fn not_ready() -> Self {
        Self::new(Reason::NotReady, None, "no policy set is loaded yet".into())
    }

    /// Every in-flight slot is taken.
    pub fn overloaded(max: usize) -> Self {
        Self::new(
            Reason::Overloaded,
            None,
            format!(
                "overloaded: {max} calls are already being evaluated (`limits.max_in_flight`); retry with backoff"
            ),
        )
    }

    /// Every stream slot is taken.
    pub fn too_many_streams(max: usize) -> Self {
        Self::new(
            Reason::TooManyStreams,
            None,
            format!(
                "{max} streams are already open (`limits.max_streams`); use unary calls, or retry with backoff"
            ),
        )
    }

    /// A stream sent nothing, or took no answer, for `idle`.
    pub fn stream_idle(idle: Duration) -> Self {
        Self::new(
            Reason::StreamIdle,
            None,
            format!(
                "stream closed after {idle:?} without progress (`limits.stream_idle_timeout`); open a new one when there is work"
            ),
        )
    }

    /// A stream reached its maximum age.
    pub fn stream_max_age(age: Duration) -> Self {
        Self::new(
            Reason::StreamMaxAge,
            None,
            format!(
                "stream closed at its maximum age of {age:?} (`limits.stream_max_age`); open a new one"
            ),
        )
    }

    /// The server is stopping: an open stream is closed so that its
    /// records are written before the decision log drains.
    pub fn shutting_down() -> Self {
        Self::new(
            Reason::ShuttingDown,
            None,
            "the server is shutting down; reconnect to another instance".into(),
        )
    }

    /// The call's deadline passed before it was decided.
    pub fn deadline(timeout: Duration) -> Self {
        Self::new(
            Reason::Deadline,
            None,
            format!(
                "deadline of {timeout:?} exceeded (`limits.request_timeout` or the client's `grpc-timeout`)"
            ),
        )
    }

    /// The client went away before the decision was made.
    pub fn cancelled() -> Self {
        Self::new(
            Reason::Cancelled,
            None,
            "the client cancelled the call before it was decided".into(),
        )
    }

    /// A delegation chain that breaks the server's rules.
    pub fn delegation(f: InvalidField) -> Self {
        Self::of_field(Reason::DelegationInvalid, f)
    }

    /// A token that did not verify; `message` says which check failed and
    /// never quotes the token.
    pub fn token(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            Reason::TokenInvalid,
            Some(field.into()),
            format!("`{field}`: {}", message.into()),
        )
    }

    /// A workload asked as someone other than the verified caller.
    pub fn binding(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            Reason::BindingMismatch,
            Some(field.into()),
            format!(
                "`{field}` {}; a workload may only ask for itself (`caller.bind_workload`)",
                message.into()
            ),
        )
    }

    /// Evaluation could not complete: a bug, never an allow.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::Internal, None, message.into())
    }

    /// The status code of this error.
    pub fn code(&self) -> Code {
        self.reason.code()
    }

    /// The same error about batch item `i`: its field path gains `requests[i]`.
    pub fn in_item(mut self, i: usize, items: &str) -> Self {
        let prefix = format!("{items}[{i}]");
        match self.field.take() {
            // The item itself: the path is the prefix.
            Some(field) if field.is_empty() => {
                let rest = self.message.strip_prefix("``").unwrap_or(&self.message);
                self.message = format!("`{prefix}`{rest}");
                self.field = Some(prefix);
            }
            // A field error reads `field`: message; its path gains the prefix.
            Some(field)
                if matches!(self.reason, Reason::InvalidRequest | Reason::LimitExceeded)
                    && self.message.starts_with(&format!("`{field}`: ")) =>
            {
                let rest = &self.message[field.len() + 2..];
                self.message = format!("`{prefix}.{field}`{rest}");
                self.field = Some(format!("{prefix}.{field}"));
            }
            field => {
                self.message = format!("`{prefix}`: {}", self.message);
                self.field = field.map(|f| format!("{prefix}.{f}")).or(Some(prefix));
            }
        }
        self
    }
}

impl From<AuthorizeError> for DecisionError {
    fn from(e: AuthorizeError) -> Self {
        let reason = match e {
            AuthorizeError::Entities(_) => Reason::InvalidEntities,
            AuthorizeError::EntityConflict(_)
            | AuthorizeError::StoredReference(_)
            | AuthorizeError::StoredOnly(_)
            | AuthorizeError::ActionEntity(_) => Reason::EntityConflict,
            AuthorizeError::Context(_) => Reason::InvalidContext,
            AuthorizeError::Schema(_) => Reason::SchemaMismatch,
        };
        Self::new(reason, Some(e.field().to_string()), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_errors_name_their_item() {
        let e = DecisionError::invalid(InvalidField::new("principal", "is required"))
            .in_item(2, "requests");
        assert_eq!(e.message, "`requests[2].principal`: is required");
        assert_eq!(e.field.as_deref(), Some("requests[2].principal"));
        let e = DecisionError::not_ready().in_item(0, "requests");
        assert_eq!(e.message, "`requests[0]`: no policy set is loaded yet");
    }

    #[test]
    fn reasons_have_distinct_names() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    /// docs/api.md's error table is the code's mapping, row for row.
    #[test]
    fn the_documented_error_table_is_the_mapping() {
        let doc = include_str!("../../docs/api.md");
        let rows: Vec<(String, String)> = doc
            .lines()
            .skip_while(|l| !l.starts_with("| reason | gRPC code | when |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    cells[1].trim_matches('`').to_string(),
                    cells[2].trim_matches('`').to_string(),
                )
            })
            .collect();
        let code: Vec<(String, String)> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), r.code().name().to_string()))
            .collect();
        assert_eq!(rows, code);
    }
}
