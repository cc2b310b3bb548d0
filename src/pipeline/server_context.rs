//! What the server adds to a request, and what it holds the request to:
//! caller binding, and the verified caller facts under their reserved key.

use serde_json::{Map, Value as Json};

use super::error::{DecisionError, InvalidField};
use super::request::DecisionRequest;
use crate::identity::PeerFacts;

/// Caller binding: a workload may only speak for itself.
pub(super) fn check_binding(
    bind: bool,
    req: &DecisionRequest,
    peer: &PeerFacts,
) -> Result<(), DecisionError> {
    if !bind {
        return Ok(());
    }
    let Some(claimed) = req.workload.as_ref().map(|w| w.spiffe_id.as_str()) else {
        return Ok(());
    };
    if claimed.is_empty() {
        return Ok(());
    }
    let verified = peer.spiffe.as_ref().map(|s| s.id.as_str());
    if verified == Some(claimed) {
        return Ok(());
    }
    Err(DecisionError::binding(
        claimed,
        verified.unwrap_or_default(),
    ))
}

/// Adds the verified caller facts under `key`, which the request itself may
/// not use.
pub(super) fn add_caller(
    key: Option<&str>,
    context: &mut Map<String, Json>,
    peer: Option<&PeerFacts>,
) -> Result<(), DecisionError> {
    let Some(key) = key else {
        return Ok(());
    };
    if context.contains_key(key) {
        return Err(DecisionError::invalid(InvalidField::new(
            format!("context.{key}"),
            "is reserved for the verified caller (`caller.context_key`); rename the context key",
        )));
    }
    if let Some(peer) = peer {
        context.insert(key.to_string(), peer.to_context());
    }
    Ok(())
}
