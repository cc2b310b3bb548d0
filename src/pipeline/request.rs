//! The typed decision request every front-end converts its wire request
//! into, and what the transport knows about the call it came in on. It holds
//! what the caller sent, and only that: what the server proves about it is
//! `verified`'s.
//!
//! Conversion is split in two on purpose: a front-end only moves strings and
//! turns typed values into Cedar JSON (cheap, and enough for the decision
//! cache's key); parsing uids and JSON text happens in [`DecisionRequest::into_query`],
//! after binding, limits and the cache, so a cache hit never pays for it.

use std::time::{Instant, SystemTime};

use cedar_policy::{EntityId, EntityUid};
use serde_json::{Map, Value as Json, json};

use super::error::{DecisionError, InvalidField, Reason};
use crate::engine::type_name;
use crate::identity::PeerFacts;

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

/// One step of a delegation chain: `delegator` delegated to the next hop
/// (the last one to the principal).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DelegationHop {
    pub delegator: Uid,
    /// What this delegator allows onward; empty: no narrowing at this hop.
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub purpose: String,
    /// Whether the hop came from a verified token rather than the caller.
    pub verified: bool,
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
    /// The caller's own id, echoed back.
    pub request_id: String,
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
    /// The context text, when it is still unparsed JSON.
    pub(crate) fn context_json(&self) -> &str {
        match &self.context {
            Context::Json(text) => text,
            Context::Record(_) => "",
        }
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
    /// What a batch's items are called on this API's wire, for error paths:
    /// gRPC's `requests[i]`, AuthZEN's `evaluations[i]`.
    pub fn items(self) -> &'static str {
        match self {
            Self::Grpc => "requests",
            Self::Authzen => "evaluations",
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
    /// Whether each decision gets its own record. A search decides many
    /// candidates and records them once, as one summary.
    pub records_each: bool,
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
            records_each: true,
        }
    }

    /// The same call, as having come through `api`.
    pub fn through(mut self, api: Api) -> Self {
        self.api = api;
        self
    }

    /// The same call, its decisions recorded by the caller as one summary
    /// ([`crate::pipeline::Pipeline::record_summary`]), not each on its own.
    pub fn summarized(mut self) -> Self {
        self.records_each = false;
        self
    }
}
