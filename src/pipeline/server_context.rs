//! What the server adds to a request, and what it holds the request to:
//! caller binding, and the verified caller facts under their reserved key.

use serde_json::{Map, Value as Json};

use super::error::{DecisionError, InvalidField};
use super::request::DecisionRequest;
use crate::identity::PeerFacts;

/// Caller binding: a workload may only speak for itself. A claimed
/// `namespace` or `service_account` must agree with the verified SPIFFE ID,
/// and is filled in from it when left empty; labels stay unverified.
pub(super) fn check_binding(
    bind: bool,
    req: &mut DecisionRequest,
    peer: &PeerFacts,
) -> Result<(), DecisionError> {
    if !bind {
        return Ok(());
    }
    let Some(claimed) = req.workload.as_mut() else {
        return Ok(());
    };
    let verified_id = peer.spiffe.as_ref().map(|s| s.id.as_str()).unwrap_or("");
    if claimed.spiffe_id.is_empty() {
        return Err(DecisionError::binding(
            "workload.spiffe_id",
            format!("is empty, but caller binding is on: name the verified caller `{verified_id}`"),
        ));
    }
    let Some(verified) = peer.spiffe.as_ref().filter(|v| v.id == claimed.spiffe_id) else {
        return Err(DecisionError::binding(
            "workload.spiffe_id",
            format!(
                "`{}` is not the verified caller `{verified_id}`",
                claimed.spiffe_id
            ),
        ));
    };
    agree(
        &mut claimed.namespace,
        &verified.namespace,
        "workload.namespace",
    )?;
    agree(
        &mut claimed.service_account,
        &verified.service_account,
        "workload.service_account",
    )
}

/// `claimed` must be `verified`; empty takes it.
fn agree(claimed: &mut String, verified: &str, field: &str) -> Result<(), DecisionError> {
    if claimed.is_empty() {
        verified.clone_into(claimed);
        return Ok(());
    }
    if claimed == verified {
        return Ok(());
    }
    Err(DecisionError::binding(
        field,
        format!("`{claimed}` is not `{verified}`, from the verified SPIFFE ID"),
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
