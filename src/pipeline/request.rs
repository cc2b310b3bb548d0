//! The typed decision request every front-end converts its wire request
//! into, and what the transport knows about the call it came in on.
//!
//! Conversion is split in two on purpose: a front-end only moves strings and
//! turns typed values into Cedar JSON (cheap, and enough for the decision
//! cache's key); parsing uids and JSON text happens in [`DecisionRequest::into_query`],
//! after binding, limits and the cache, so a cache hit never pays for it.

use std::time::Instant;

use cedar_policy::{EntityId, EntityUid};
use serde_json::{Map, Value as Json, json};

use super::delegation::{self, DELEGATION_KEY, DelegationHop, PURPOSE_KEY};
use super::error::{DecisionError, InvalidField, Reason};
use super::token_claims::TOKEN_KEY;
use crate::engine::Query;
use crate::engine::type_name;
use crate::identity::PeerFacts;

/// The context key the `workload` field reaches policies under; no request
/// may set it itself.
pub(crate) const WORKLOAD_KEY: &str = "workload";

/// An entity uid as the caller sent it; parsed by the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Uid {
    pub type_name: String,
    pub id: String,
}

impl Uid {
    /// A uid of `type_name` and `id`.
    pub fn new(type_name: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            type_name: type_name.into(),
            id: id.into(),
        }
    }

    /// The Cedar uid; `field` names it in the error.
    pub fn parse(&self, field: &str) -> Result<EntityUid, InvalidField> {
        if self.type_name.is_empty() {
            return Err(InvalidField::new(
                format!("{field}.type"),
                "is required, e.g. `User` or `Mesh::Workload`",
            ));
        }
        let type_name = type_name(&self.type_name).map_err(|e| {
            InvalidField::new(
                format!("{field}.type"),
                format!("`{}` is not a valid Cedar entity type: {e}", self.type_name),
            )
        })?;
        // INVARIANT: any string is a valid entity id.
        Ok(EntityUid::from_type_name_and_id(
            type_name,
            EntityId::new(&self.id),
        ))
    }

    /// `{"type": .., "id": ..}`, checking the type parses.
    pub fn to_json(&self, field: &str) -> Result<Json, InvalidField> {
        self.parse(field)?;
        Ok(json!({"type": self.type_name, "id": self.id}))
    }

    /// `Type::"id"`, for spans and logs.
    pub fn display(&self) -> String {
        format!("{}::{:?}", self.type_name, self.id)
    }
}

/// The request's context, before the server adds its own keys.
#[derive(Clone, Debug, PartialEq)]
pub enum Context {
    /// Cedar JSON text (`__entity` / `__extn` escapes allowed), not yet parsed.
    Json(String),
    /// Already Cedar JSON, e.g. converted from typed values.
    Record(Map<String, Json>),
}

impl Default for Context {
    fn default() -> Self {
        Self::Record(Map::new())
    }
}

/// What a calling workload says about itself. Unverified unless caller
/// binding ties `spiffe_id` to the verified peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub spiffe_id: String,
    pub namespace: String,
    pub service_account: String,
    /// `key=value`, sorted.
    pub labels: Vec<String>,
}

impl Workload {
    /// `context.workload`: labels are a set of `key=value` strings, because
    /// Cedar records have fixed keys and a schema could not declare
    /// arbitrary pod labels.
    pub fn to_json(&self) -> Json {
        json!({
            "spiffe_id": self.spiffe_id,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "labels": self.labels,
        })
    }
}

/// One authorization question, as every front-end hands it to the pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecisionRequest {
    /// `None` when the caller left it out; refused as `is required`.
    pub principal: Option<Uid>,
    pub action: Option<Uid>,
    pub resource: Option<Uid>,
    pub context: Context,
    /// Cedar JSON entity objects.
    pub entities: Vec<Json>,
    /// A Cedar JSON entity array, not yet parsed; added to `entities`.
    pub entities_json: String,
    /// Attributes (Cedar JSON) offered for the principal or resource, which
    /// the policy directory may store: see [`Query::properties`].
    pub properties: Vec<(Uid, Map<String, Json>)>,
    pub workload: Option<Workload>,
    /// Who the principal acts for: `delegation[0]` is the origin, and the
    /// last hop delegated to the principal. Reaches policies as
    /// `context.delegation`.
    pub delegation: Vec<DelegationHop>,
    /// The declared purpose; `context.purpose` when not empty.
    pub purpose: String,
    /// Tokens for the server to verify (RFC 8693 subject and actor).
    pub subject_token: String,
    pub actor_token: String,
    /// Set by the pipeline once the tokens verify: what the record names.
    pub tokens: Vec<TokenFacts>,
    /// Set by the pipeline: the subject token's claims for `context.token`.
    pub token_claims: Option<Map<String, Json>>,
    /// Set by the pipeline with `evaluation.server_time_key`: that key and
    /// the server's time (RFC 3339, whole seconds) when it screened the
    /// request, so the cache keys on the same second the policies see.
    pub server_time: Option<(String, String)>,
    /// The caller's own id, echoed back.
    pub request_id: String,
}

/// A verified token, as the record names it (never the token itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// `subject` or `actor`.
    pub kind: &'static str,
    pub issuer: String,
    pub subject: String,
    pub jti: Option<String>,
    /// The key that verified it.
    pub kid: String,
}

/// A wire request that could not even be converted: what is known of it, for
/// its record, and why.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub request: DecisionRequest,
    pub error: InvalidField,
    /// `invalid_request`, or a more precise reason such as `invalid_path`.
    pub reason: Reason,
}

impl Rejected {
    /// `request` refused as `invalid_request` for `error`.
    pub fn new(request: DecisionRequest, error: InvalidField) -> Self {
        Self {
            request,
            error,
            reason: Reason::InvalidRequest,
        }
    }

    /// What is known of the request, and the error it is refused with.
    pub(crate) fn into_parts(self) -> (DecisionRequest, DecisionError) {
        (
            self.request,
            DecisionError::of_field(self.reason, self.error),
        )
    }
}

/// What a front-end submits: a converted request, or the reason it is not one.
pub type Submitted = Result<DecisionRequest, Box<Rejected>>;

fn uid(uid: Option<&Uid>, field: &str) -> Result<EntityUid, InvalidField> {
    uid.ok_or_else(|| InvalidField::new(field, "is required"))?
        .parse(field)
}

/// Parses a JSON entity array; `field` names it in errors.
pub(crate) fn parse_entities_json(text: &str, field: &str) -> Result<Vec<Json>, InvalidField> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Array(items)) => Ok(items),
        Ok(_) => Err(InvalidField::new(
            field,
            "must be a JSON array of Cedar entities",
        )),
        Err(e) => Err(InvalidField::new(field, format!("invalid JSON: {e}"))),
    }
}

impl DecisionRequest {
    /// The Cedar query: uids parsed, context JSON parsed, `context.workload`
    /// set from `workload`, and `shared` (a batch's) entities appended.
    pub fn into_query(self, shared: &[Json]) -> Result<Query, InvalidField> {
        let principal = uid(self.principal.as_ref(), "principal")?;
        let action = uid(self.action.as_ref(), "action")?;
        let resource = uid(self.resource.as_ref(), "resource")?;
        let mut context = match self.context {
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
        // Reserved even without a `workload` field: a record a caller forged
        // in its context would otherwise pass for one binding had checked.
        if context.contains_key(WORKLOAD_KEY) {
            return Err(InvalidField::new(
                "context.workload",
                "is reserved for the `workload` field; rename the context key",
            ));
        }
        if let Some(workload) = &self.workload {
            context.insert(WORKLOAD_KEY.to_string(), workload.to_json());
        }
        // `token` is the server's only with a subject token: before tokens
        // existed, callers could name a context key `token`.
        let token_key = self.token_claims.is_some().then_some(TOKEN_KEY);
        for key in [Some(DELEGATION_KEY), Some(PURPOSE_KEY), token_key]
            .into_iter()
            .flatten()
        {
            if context.contains_key(key) {
                return Err(InvalidField::new(
                    format!("context.{key}"),
                    format!("is reserved for the `{key}` field; rename the context key"),
                ));
            }
        }
        if !self.delegation.is_empty() {
            let delegators = self
                .delegation
                .iter()
                .enumerate()
                .map(|(i, h)| h.delegator.parse(&format!("delegation[{i}].delegator")))
                .collect::<Result<Vec<_>, _>>()?;
            context.insert(
                DELEGATION_KEY.to_string(),
                delegation::context(&principal, &self.delegation, &delegators),
            );
        }
        if !self.purpose.is_empty() {
            context.insert(PURPOSE_KEY.to_string(), Json::String(self.purpose));
        }
        if let Some(claims) = self.token_claims {
            context.insert(TOKEN_KEY.to_string(), Json::Object(claims));
        }
        if let Some((key, now)) = self.server_time {
            if context.contains_key(&key) {
                return Err(InvalidField::new(
                    format!("context.{key}"),
                    "is reserved for the server's time (`evaluation.server_time_key`); rename the context key",
                ));
            }
            context.insert(key, json!({"__extn": {"fn": "datetime", "arg": now}}));
        }
        let mut entities = self.entities;
        entities.extend(parse_entities_json(&self.entities_json, "entities_json")?);
        entities.extend_from_slice(shared);
        let properties = self
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

    /// The context text, when it is still unparsed JSON.
    pub(crate) fn context_json(&self) -> &str {
        match &self.context {
            Context::Json(text) => text,
            Context::Record(_) => "",
        }
    }

    /// Whether what the caller sent comes to at most `max` bytes, counted
    /// roughly as JSON. Counting stops once past `max`, so a large request
    /// costs no more to judge than a small one.
    pub(crate) fn is_within(&self, max: usize) -> bool {
        let mut left = max;
        let mut spend = |n: usize| match left.checked_sub(n) {
            Some(rest) => {
                left = rest;
                true
            }
            None => false,
        };
        let uids = [&self.principal, &self.action, &self.resource];
        let uid_bytes: usize = uids
            .iter()
            .flat_map(|u| u.iter())
            .map(|u| u.type_name.len() + u.id.len())
            .sum();
        let strings = uid_bytes
            + self.context_json().len()
            + self.entities_json.len()
            + self.purpose.len()
            + self.subject_token.len()
            + self.actor_token.len()
            + self.request_id.len();
        if !spend(strings) {
            return false;
        }
        if let Some(w) = &self.workload {
            let labels: usize = w.labels.iter().map(String::len).sum();
            if !spend(w.spiffe_id.len() + w.namespace.len() + w.service_account.len() + labels) {
                return false;
            }
        }
        for hop in &self.delegation {
            let scopes: usize = hop.scopes.iter().map(String::len).sum();
            let ids = hop.delegator.type_name.len() + hop.delegator.id.len();
            if !spend(ids + scopes + hop.purpose.len() + 32) {
                return false;
            }
        }
        if !spend(self.entities.len() * 2) {
            return false;
        }
        let mut values: Vec<&Json> = self.entities.iter().collect();
        if let Context::Record(map) = &self.context {
            values.extend(map.values());
            if !spend(map.keys().map(String::len).sum()) {
                return false;
            }
        }
        for (uid, attrs) in &self.properties {
            values.extend(attrs.values());
            let keys: usize = attrs.keys().map(String::len).sum();
            if !spend(uid.type_name.len() + uid.id.len() + keys) {
                return false;
            }
        }
        if let Some(claims) = &self.token_claims {
            values.extend(claims.values());
        }
        // Depth-first with a stack of our own: no recursion on caller input,
        // and a value is paid for before its children are stacked.
        while let Some(v) = values.pop() {
            let n = match v {
                Json::String(s) => s.len() + 2,
                Json::Array(items) => items.len() + 2,
                Json::Object(map) => map.keys().map(|k| k.len() + 4).sum::<usize>() + 2,
                Json::Number(_) => 8,
                Json::Bool(_) | Json::Null => 5,
            };
            if !spend(n) {
                return false;
            }
            match v {
                Json::Array(items) => values.extend(items),
                Json::Object(map) => values.extend(map.values()),
                _ => {}
            }
        }
        true
    }
}

/// The API a call came through: a metric label and a record field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Api {
    /// `cedar_pdp.v1.Authorizer` and Envoy's ext_authz, on the gRPC listener.
    #[default]
    Grpc,
    /// The OpenID AuthZEN Authorization API, on its HTTP listener.
    Authzen,
}

impl Api {
    /// The stable name: `grpc` or `authzen`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Authzen => "authzen",
        }
    }
}

/// What the transport knows about one call, shared by its decisions.
#[derive(Clone, Debug)]
pub struct Call {
    /// The API the call came through.
    pub api: Api,
    /// The facts the connection proved; default when it proved none.
    pub peer: PeerFacts,
    /// The caller's W3C `traceparent`, when it sent one.
    pub traceparent: Option<String>,
    /// The span the call's decisions are recorded on.
    pub span: tracing::Span,
    pub started: Instant,
}

impl Call {
    /// A call from `peer`, recorded on `span`.
    pub fn new(peer: PeerFacts, traceparent: Option<String>, span: tracing::Span) -> Self {
        Self {
            api: Api::Grpc,
            peer,
            traceparent,
            span,
            started: Instant::now(),
        }
    }

    /// The same call, as having come through `api`.
    pub fn through(mut self, api: Api) -> Self {
        self.api = api;
        self
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

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
