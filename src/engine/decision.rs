//! What the engine is asked and what it answers: the query, the decision,
//! and why a query could not be evaluated.

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{ContextJsonError, EntityUid, RequestValidationError};

use crate::error_chain::chain;

/// One authorization question, in Cedar's JSON forms.
#[derive(Clone, Debug)]
pub struct Query {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    /// A JSON object in Cedar's context format.
    pub context: serde_json::Map<String, serde_json::Value>,
    /// Cedar JSON entity objects, merged with the snapshot's entities.
    pub entities: Vec<serde_json::Value>,
    /// Attributes (Cedar JSON) offered for entities that may be stored:
    /// added where the stored entity lacks them (with a schema, only
    /// declared ones), or the entity itself when nothing stores it. What is
    /// not applied is reported in [`Decision::dropped_properties`], never an
    /// error.
    pub properties: Vec<(EntityUid, serde_json::Map<String, serde_json::Value>)>,
}

/// An offered property that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedProperty {
    /// `Type::"id"`.
    pub entity: String,
    pub property: String,
    pub why: DropReason,
}

/// Why an offered property was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The stored entity has this attribute; the directory's value stands.
    StoredAttribute,
    /// The stored entity lacks it, and its type's attributes are closed
    /// to offered properties (`authzen.open_properties`).
    StoredEntity,
    /// The schema does not declare it for the entity's type, or declares
    /// another type for it.
    NotInSchema,
    /// A stored entity names this entity without defining it, so a request
    /// cannot give it attributes either.
    NamedByStore,
}

impl DropReason {
    /// The stable name, as in the decision record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StoredAttribute => "stored_attribute",
            Self::StoredEntity => "stored_entity",
            Self::NotInSchema => "not_in_schema",
            Self::NamedByStore => "named_by_store",
        }
    }
}

/// An error Cedar raised while evaluating one policy; that policy is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub policy_id: String,
    pub message: String,
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Sorted, so equal decisions compare equal.
    pub determining_policies: Vec<String>,
    /// Sorted by policy id.
    pub errors: Vec<PolicyError>,
    /// Offered properties that were not applied (see [`Query::properties`]).
    pub dropped_properties: Vec<DroppedProperty>,
    /// What the live set with the shadow policies added would answer; `None`
    /// when the snapshot has no shadow policies. Never part of the answer.
    pub shadow: Option<ShadowDecision>,
    /// When a time-bound link whose scope matched next enters or leaves its
    /// window: from then on the same request may be answered differently,
    /// so nothing may reuse this answer past it. `None` when no such link
    /// can change.
    pub changes_at: Option<std::time::SystemTime>,
    /// Time-bound grants whose scope matched outside their window: why a
    /// deny may be one. Sorted by policy id.
    pub inactive_grants: Vec<InactiveGrant>,
}

/// A time-bound grant whose scope matched a request outside its window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InactiveGrant {
    pub policy_id: String,
    /// `Pending` or `Expired`.
    pub state: super::links::GrantState,
    /// When it starts (pending) or ended (expired).
    pub at: Option<std::time::SystemTime>,
}

/// The answer of the live set plus the shadow policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowDecision {
    pub allow: bool,
    /// Sorted.
    pub determining_policies: Vec<String>,
}

/// Why a query could not be evaluated. Each is the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("invalid entities: {}", chain(.0.as_ref()))]
    Entities(#[source] Box<EntitiesError>),
    /// A request entity has the uid of a different entity loaded from disk.
    #[error(
        "invalid entities: {} (entities loaded from the policy directory cannot be redefined by a request)",
        chain(.0.as_ref())
    )]
    EntityConflict(#[source] Box<EntitiesError>),
    /// A request entity a stored entity names (as a parent or in a value)
    /// without defining it: defining it would change the stored hierarchy.
    #[error(
        "invalid entities: `{0}` is named by an entity loaded from the policy directory, which does not define it; a request cannot define it either"
    )]
    StoredReference(String),
    /// An entity of a type only the policy directory may define.
    #[error(
        "invalid entities: `{0}` is of a type only the policy directory may define (`validation.stored_only_types`)"
    )]
    StoredOnly(String),
    /// Without a schema, a request could reshape the action hierarchy.
    #[error(
        "invalid entities: `{0}` is an action; without a schema, a request cannot define action entities"
    )]
    ActionEntity(String),
    #[error("invalid context: {}", chain(.0.as_ref()))]
    Context(#[source] Box<ContextJsonError>),
    #[error("request does not match the schema: {}", chain(.0.as_ref()))]
    Schema(#[source] Box<RequestValidationError>),
}

impl AuthorizeError {
    /// The request field the error is about, for structured error details.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Entities(_)
            | Self::EntityConflict(_)
            | Self::StoredReference(_)
            | Self::StoredOnly(_)
            | Self::ActionEntity(_) => "entities",
            Self::Context(_) => "context",
            Self::Schema(_) => "request",
        }
    }
}
