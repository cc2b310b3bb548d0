//! What the server adds to a request, and what it holds the request to:
//! caller binding, the Cedar query with the server's context keys (from the
//! request's fields and what screening verified), and the verified caller
//! facts. A request's own context may set none of the keys the server
//! vouches for (`[context_keys]` names them, [`Reserved`] says what each is
//! for); `purpose`, which only the caller declares, stays the caller's.

use cedar_policy::EntityUid;
use serde_json::{Map, Value as Json, json};

use super::delegation;
use super::error::{DecisionError, InvalidField};
use super::request::{Context, DecisionRequest, Uid, parse_entities_json};
use super::verified::Verified;
use crate::config::ContextKeysConfig;
use crate::engine::Query;
use crate::identity::PeerFacts;

/// A context key the server sets, and which no request may set itself.
#[derive(Clone, Copy, Debug)]
enum Reserved<'a> {
    /// The key of a request field (config's table): `workload`, ...
    Field(&'a str),
    /// `caller.context_key`: the verified caller facts.
    Caller(&'a str),
    /// `evaluation.server_time_key`: the server's time.
    ServerTime(&'a str),
}

impl Reserved<'_> {
    /// Refuses `context` when it sets the key.
    fn check(self, context: &Map<String, Json>) -> Result<(), InvalidField> {
        let (key, what) = match self {
            Self::Field(key) => (key, format!("the `{key}` field")),
            Self::Caller(key) => (key, "the verified caller (`caller.context_key`)".into()),
            Self::ServerTime(key) => (
                key,
                "the server's time (`evaluation.server_time_key`)".into(),
            ),
        };
        if !context.contains_key(key) {
            return Ok(());
        }
        Err(InvalidField::new(
            format!("context.{key}"),
            format!("is reserved for {what}; rename the context key"),
        ))
    }
}

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
    Reserved::Caller(key)
        .check(context)
        .map_err(DecisionError::invalid)?;
    if let Some(peer) = peer {
        context.insert(key.to_string(), peer.to_context());
    }
    Ok(())
}

/// The `purpose` field under `key`. A context that already says the same
/// purpose is how callers declared it before the field existed; a
/// different one is a contradiction, not something to pick from.
fn declare_purpose(
    context: &mut Map<String, Json>,
    key: &str,
    purpose: String,
) -> Result<(), InvalidField> {
    match context.get(key) {
        None => {
            context.insert(key.to_string(), Json::String(purpose));
            Ok(())
        }
        Some(Json::String(same)) if *same == purpose => Ok(()),
        Some(other) => Err(InvalidField::new(
            format!("context.{key}"),
            format!(
                "is {other}, but the `purpose` field is \"{purpose}\": declare the purpose once"
            ),
        )),
    }
}

fn uid(uid: Option<&Uid>, field: &str) -> Result<EntityUid, InvalidField> {
    uid.ok_or_else(|| InvalidField::new(field, "is required"))?
        .parse(field)
}

impl DecisionRequest {
    /// The Cedar query: uids parsed, context JSON parsed, `context.workload`
    /// set from `workload`, and `shared` (a batch's) entities appended. With
    /// nothing verified: what conversion alone makes of a request.
    pub fn into_query(self, shared: &[Json]) -> Result<Query, InvalidField> {
        let names = ContextKeysConfig::default();
        let keys = ServerKeys {
            names: &names,
            tokens: false,
        };
        query(self, Verified::NONE, shared, keys)
    }
}

/// The context keys the server sets, and whether it vouches for `token`:
/// once tokens are configured, on every front-end, whether or not this
/// request sent one, so no caller can write "verified" claims itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct ServerKeys<'a> {
    pub names: &'a ContextKeysConfig,
    pub tokens: bool,
}

/// The Cedar query of `req`: uids parsed, context JSON parsed, the server's
/// keys set from the request's fields and from what screening `verified`,
/// and `shared` (a batch's) entities appended.
pub(super) fn query(
    req: DecisionRequest,
    verified: Verified,
    shared: &[Json],
    keys: ServerKeys<'_>,
) -> Result<Query, InvalidField> {
    let names = keys.names;
    let principal = uid(req.principal.as_ref(), "principal")?;
    let action = uid(req.action.as_ref(), "action")?;
    let resource = uid(req.resource.as_ref(), "resource")?;
    let mut context = match req.context {
        Context::Record(map) => map,
        Context::Json(text) if text.trim().is_empty() => Map::new(),
        Context::Json(text) => match serde_json::from_str::<Json>(&text) {
            Ok(Json::Object(map)) => map,
            Ok(_) => return Err(InvalidField::new("context_json", "must be a JSON object")),
            Err(e) => {
                return Err(InvalidField::new(
                    "context_json",
                    format!("invalid JSON: {e}"),
                ));
            }
        },
    };
    // Reserved even without their fields: a `workload` record a caller
    // forged in its context would otherwise pass for one binding had
    // checked.
    Reserved::Field(&names.workload).check(&context)?;
    Reserved::Field(&names.delegation).check(&context)?;
    // Claims are only ever verified with issuers configured.
    if keys.tokens {
        Reserved::Field(&names.token).check(&context)?;
    }
    if let Some(workload) = &req.workload {
        context.insert(names.workload.clone(), workload.to_json());
    }
    let subject_token = verified.subject_token();
    let chain = verified.chain.as_deref().unwrap_or(&req.delegation);
    if !chain.is_empty() {
        let delegators = chain
            .iter()
            .enumerate()
            .map(|(i, h)| h.delegator.parse(&format!("delegation[{i}].delegator")))
            .collect::<Result<Vec<_>, _>>()?;
        context.insert(
            names.delegation.clone(),
            delegation::context(&principal, chain, &delegators, subject_token),
        );
    }
    if !req.purpose.is_empty() {
        declare_purpose(&mut context, &names.purpose, req.purpose)?;
    }
    if let Some(claims) = verified.claims {
        context.insert(names.token.clone(), Json::Object(claims));
    }
    if let Some((key, now)) = verified.server_time {
        Reserved::ServerTime(&key).check(&context)?;
        context.insert(key, json!({"__extn": {"fn": "datetime", "arg": now}}));
    }
    let mut entities = req.entities;
    entities.extend(parse_entities_json(&req.entities_json, "entities_json")?);
    entities.extend_from_slice(shared);
    let properties = req
        .properties
        .into_iter()
        .map(|(uid, attrs)| Ok((uid.parse("properties")?, attrs)))
        .collect::<Result<_, InvalidField>>()?;
    Ok(Query {
        principal,
        action,
        resource,
        context,
        entities,
        properties,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::pipeline::Workload;

    fn request() -> DecisionRequest {
        DecisionRequest {
            principal: Some(Uid::new("User", "alice")),
            action: Some(Uid::new("Action", "read")),
            resource: Some(Uid::new("Doc", "d")),
            ..Default::default()
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut req = request();
        req.principal = Some(Uid::new("not a type", "x"));
        assert_eq!(req.into_query(&[]).unwrap_err().field, "principal.type");
        let mut req = request();
        req.resource = None;
        assert_eq!(req.into_query(&[]).unwrap_err().field, "resource");
        let mut req = request();
        req.context = Context::Json("[1]".into());
        assert_eq!(req.into_query(&[]).unwrap_err().field, "context_json");
        let mut req = request();
        req.entities_json = "{}".into();
        assert_eq!(req.into_query(&[]).unwrap_err().field, "entities_json");
    }

    #[test]
    fn workload_reaches_context_and_reserves_its_key() {
        let mut req = request();
        req.workload = Some(Workload {
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            labels: vec!["app=web".into()],
            ..Workload::default()
        });
        let q = req.clone().into_query(&[]).unwrap();
        assert_eq!(q.context["workload"]["labels"], json!(["app=web"]));
        req.context = Context::Json(r#"{"workload": 1}"#.into());
        assert_eq!(
            req.clone().into_query(&[]).unwrap_err().field,
            "context.workload"
        );
        // Without the field, a forged record is refused all the same.
        req.workload = None;
        req.context = Context::Json(r#"{"workload": {"spiffe_id": "spiffe://td/x"}}"#.into());
        assert_eq!(
            req.clone().into_query(&[]).unwrap_err().field,
            "context.workload"
        );
        let mut forged = Map::new();
        forged.insert("workload".into(), json!({"spiffe_id": "spiffe://td/x"}));
        req.context = Context::Record(forged);
        assert_eq!(req.into_query(&[]).unwrap_err().field, "context.workload");
    }
}
