//! Pure evaluation: (snapshot, query) -> decision. Knows nothing of gRPC or
//! files; the schema, when present, shapes how context and entities parse.

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{
    Context, ContextJsonError, Effect, Entities, EntityUid, Request, RequestValidationError,
};

use crate::config::OnForbidError;
use crate::error_chain::chain;
use crate::policy_store::{Clock, Snapshot, Target};

mod entity_cache;
mod outcome;
mod request_entities;

use outcome::Outcome;

pub use entity_cache::{EntityCache, EntityLookups};

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

/// Evaluates `query` against `snapshot`. With [`OnForbidError::Deny`], a
/// `forbid` that errors denies; with `Skip`, Cedar skips it.
///
/// Only the policies whose scope matches the request are evaluated (see
/// [`crate::policy_store::PolicyIndex`]); the answer is the same as the whole
/// set's.
pub fn authorize(
    snapshot: &Snapshot,
    query: Query,
    on_forbid_error: OnForbidError,
) -> Result<Decision, AuthorizeError> {
    authorize_with(snapshot, query, None, on_forbid_error)
}

/// A batch's shared entities, parsed and checked once for all its items.
#[derive(Clone, Debug)]
pub struct SharedEntities(Entities);

impl SharedEntities {
    /// Parses `entities` (Cedar JSON) against `snapshot`'s schema, by the
    /// same rules as a request's own.
    pub fn parse(
        snapshot: &Snapshot,
        entities: Vec<serde_json::Value>,
    ) -> Result<Self, AuthorizeError> {
        parse_entities(snapshot, entities).map(Self)
    }
}

fn parse_entities(
    snapshot: &Snapshot,
    entities: Vec<serde_json::Value>,
) -> Result<Entities, AuthorizeError> {
    let parsed =
        Entities::from_json_value(serde_json::Value::Array(entities), snapshot.schema.as_ref())
            .map_err(|e| AuthorizeError::Entities(Box::new(e)))?;
    request_entities::check_claims(snapshot, &parsed)?;
    Ok(parsed)
}

/// [`authorize`], with a batch's `shared` entities beside the query's own.
pub fn authorize_with(
    snapshot: &Snapshot,
    query: Query,
    shared: Option<&SharedEntities>,
    on_forbid_error: OnForbidError,
) -> Result<Decision, AuthorizeError> {
    authorize_at(snapshot, query, shared, on_forbid_error, &Clock::system())
}

/// [`authorize_with`] at `clock`'s time: what decides which time-bound
/// template links apply. The clock is read only when one's scope matches.
pub fn authorize_at(
    snapshot: &Snapshot,
    query: Query,
    shared: Option<&SharedEntities>,
    on_forbid_error: OnForbidError,
    clock: &Clock,
) -> Result<Decision, AuthorizeError> {
    let mut lookups = EntityLookups::default();
    let parse = Parse {
        cache: None,
        lookups: &mut lookups,
    };
    authorize_cached(snapshot, query, shared, parse, on_forbid_error, clock)
}

/// How [`authorize_cached`] parses a query's entities: through `cache`
/// when there is one (the answer is the same; see [`EntityCache`]),
/// counting its hits and misses in `lookups`.
#[derive(Debug)]
pub struct Parse<'a> {
    pub cache: Option<&'a EntityCache>,
    pub lookups: &'a mut EntityLookups,
}

/// [`authorize_at`], with the query's entities parsed as `parse` says.
pub fn authorize_cached(
    snapshot: &Snapshot,
    query: Query,
    shared: Option<&SharedEntities>,
    parse: Parse<'_>,
    on_forbid_error: OnForbidError,
    clock: &Clock,
) -> Result<Decision, AuthorizeError> {
    let schema = snapshot.schema.as_ref();
    let mut query = query;
    let offered =
        request_entities::apply_properties(snapshot, std::mem::take(&mut query.properties))?;
    query.entities.extend(offered.unstored);
    let (own, set_key) = match (query.entities.is_empty(), parse.cache) {
        (true, _) => (None, None),
        (false, Some(cache)) => {
            let parsed = cache.parse(snapshot, query.entities, parse.lookups)?;
            (Some(parsed.set), parsed.key)
        }
        (false, None) => (Some(parse_entities(snapshot, query.entities)?), None),
    };
    // A remembered slice stands for the request's own set alone.
    let memo = match (parse.cache, set_key, shared) {
        (Some(cache), Some(key), None) => Some((cache, key, &mut *parse.lookups)),
        _ => None,
    };
    let extra = match (own, shared) {
        (own, None) => own,
        (None, Some(shared)) => Some(shared.0.clone()),
        // Both were checked against the schema when parsed.
        (Some(own), Some(shared)) => Some(
            shared
                .0
                .clone()
                .add_entities(own, None)
                .map_err(|e| AuthorizeError::Entities(Box::new(e)))?,
        ),
    };
    let ancestors = |uid| request_entities::ancestors(&snapshot.entities, extra.as_ref(), uid);
    let (pa, aa, ra) = (
        ancestors(&query.principal),
        ancestors(&query.action),
        ancestors(&query.resource),
    );
    let targets = || {
        (
            Target {
                uid: &query.principal,
                ancestors: &pa,
            },
            Target {
                uid: &query.action,
                ancestors: &aa,
            },
            Target {
                uid: &query.resource,
                ancestors: &ra,
            },
        )
    };
    let (p, a, r) = targets();
    let candidates = snapshot.index.candidates(p, a, r, clock);
    // Only the shadow policies whose scope matches are evaluated; most
    // requests have none, and pay nothing more.
    let shadow_candidates = snapshot.shadow.as_ref().map(|shadow| {
        let (p, a, r) = targets();
        shadow.index.candidates(p, a, r, clock)
    });
    // The shadow answer is part of the decision, so its links count too.
    let changes_at = [
        candidates.changes_at(),
        shadow_candidates.as_ref().and_then(|c| c.changes_at()),
    ]
    .into_iter()
    .flatten()
    .min();
    let sliced;
    let entities = match extra {
        None if offered.overrides.is_empty() => &snapshot.entities,
        extra => {
            let mut roots = vec![
                query.principal.clone(),
                query.action.clone(),
                query.resource.clone(),
            ];
            for v in query.context.values() {
                request_entities::json_refs(v, &mut roots);
            }
            roots.extend(candidates.literals().cloned());
            if let Some(shadow) = &shadow_candidates {
                roots.extend(shadow.literals().cloned());
            }
            sliced = request_entities::slice(
                &snapshot.entities,
                extra.unwrap_or_else(Entities::empty),
                &offered.overrides,
                roots,
                memo,
            )?;
            &sliced
        }
    };
    // A context read by its schema type (an empty one included) and accepted
    // by the schema check is the one Cedar's parse gives, and Cedar's
    // evaluator answers it over the candidates' prebuilt conditions. Anything
    // else takes Cedar's parse and its public `Authorizer`, for Cedar's own
    // answer or message.
    let typed = snapshot.context_types.build(&query.action, &query.context);
    let core = typed.and_then(|context| {
        let request = outcome::core_request(
            &query.principal,
            &query.action,
            &query.resource,
            context,
            schema,
        )?;
        let eval = outcome::evaluator(request, entities);
        let live = outcome::with_core(&eval, candidates.conditions())?;
        let shadow = match &shadow_candidates {
            Some(shadow) => Some(outcome::with_core(&eval, shadow.conditions())?),
            None => None,
        };
        Some((live, shadow))
    });
    let (live, shadow_outcome) = match core {
        Some(answers) => answers,
        None => {
            let context = Context::from_json_value(
                serde_json::Value::Object(query.context),
                schema.map(|s| (s, &query.action)),
            )
            .map_err(|e| AuthorizeError::Context(Box::new(e)))?;
            let request = Request::new(
                query.principal,
                query.action,
                query.resource,
                context,
                schema,
            )
            .map_err(|e| AuthorizeError::Schema(Box::new(e)))?;
            // A set of every policy needs no copy.
            let owned;
            let policies = if candidates.len() == snapshot.index.len() {
                &snapshot.policies
            } else {
                owned = candidates.policy_set();
                owned.as_ref()
            };
            let live = outcome::with_public(&request, policies, entities);
            let shadow = shadow_candidates.as_ref().map(|shadow| {
                if shadow.is_empty() {
                    Outcome::default()
                } else {
                    outcome::with_public(&request, &shadow.policy_set(), entities)
                }
            });
            (live, shadow)
        }
    };
    let mut determining_policies: Vec<String> =
        live.determining.into_iter().map(|(id, _)| id).collect();
    determining_policies.sort_unstable();
    let mut errors = live.errors;
    errors.sort_by(|a, b| a.0.policy_id.cmp(&b.0.policy_id));
    let mut allow = live.allow;
    if allow && on_forbid_error == OnForbidError::Deny {
        // An erroring policy was evaluated, so its scope matched.
        let forbids: Vec<String> = errors
            .iter()
            .filter(|(_, effect)| *effect == Effect::Forbid)
            .map(|(e, _)| e.policy_id.clone())
            .collect();
        if !forbids.is_empty() {
            allow = false;
            determining_policies = forbids;
        }
    }
    let errors: Vec<PolicyError> = errors.into_iter().map(|(e, _)| e).collect();
    let shadow = shadow_outcome.map(|shadow| {
        let live = ShadowDecision {
            allow,
            determining_policies: determining_policies.clone(),
        };
        with_shadow(live, shadow, on_forbid_error)
    });
    Ok(Decision {
        allow,
        determining_policies,
        errors,
        dropped_properties: offered.dropped,
        shadow,
        changes_at,
    })
}

/// The live answer with the shadow policies' own added, by Cedar's rule: a
/// satisfied forbid denies (with `Deny`, an erroring forbid counts as one);
/// otherwise any satisfied permit allows.
fn with_shadow(
    live: ShadowDecision,
    shadow: Outcome,
    on_forbid_error: OnForbidError,
) -> ShadowDecision {
    let mut forbids: Vec<String> = Vec::new();
    let mut permits: Vec<String> = Vec::new();
    for (id, effect) in shadow.determining {
        match effect {
            Effect::Forbid => forbids.push(id),
            Effect::Permit => permits.push(id),
        }
    }
    if on_forbid_error == OnForbidError::Deny {
        forbids.extend(
            shadow
                .errors
                .into_iter()
                .filter(|(_, effect)| *effect == Effect::Forbid)
                .map(|(e, _)| e.policy_id),
        );
    }
    let mut out = if !forbids.is_empty() {
        // The live forbids that denied, if any, still determine it.
        let mut determining = if live.allow {
            Vec::new()
        } else {
            live.determining_policies
        };
        determining.extend(forbids);
        ShadowDecision {
            allow: false,
            determining_policies: determining,
        }
    } else if live.allow || live.determining_policies.is_empty() {
        // Allowed by live permits, or denied for want of one: shadow
        // permits join in.
        let mut determining = if live.allow {
            live.determining_policies
        } else {
            Vec::new()
        };
        determining.extend(permits);
        ShadowDecision {
            allow: !determining.is_empty(),
            determining_policies: determining,
        }
    } else {
        // Denied by live forbids: shadow permits cannot lift them.
        live
    };
    out.determining_policies.sort_unstable();
    out.determining_policies.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::str::FromStr;

    use super::*;
    use crate::policy_store::{LoadOptions, build, read_dir};

    /// A snapshot of `files`, written to a fresh directory.
    pub(super) fn snapshot(files: &[(&str, &str)]) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1).unwrap()
    }

    fn ask(s: &Snapshot, who: &str, context: serde_json::Value, on: OnForbidError) -> Decision {
        let uid = |t: &str| EntityUid::from_str(t).unwrap();
        let query = Query {
            principal: uid(&format!("User::\"{who}\"")),
            action: uid("Action::\"read\""),
            resource: uid("Doc::\"d\""),
            context: context.as_object().cloned().unwrap_or_default(),
            entities: Vec::new(),
            properties: Vec::new(),
        };
        authorize(s, query, on).unwrap()
    }

    #[test]
    fn the_shadow_answer_is_the_live_set_plus_the_shadow_policies() {
        let s = snapshot(&[
            (
                "live.cedar",
                r#"@id("alice") permit (principal == User::"alice", action, resource);
                   @id("no-mallory") forbid (principal == User::"mallory", action, resource);"#,
            ),
            (
                "new.cedar",
                r#"@id("deny-late") @shadow forbid (principal, action, resource) when { context.late };"#,
            ),
            (
                "shadow/bob.cedar",
                r#"@id("bob") permit (principal, action, resource) when { [User::"bob", User::"mallory"].contains(principal) };"#,
            ),
        ]);
        assert_eq!(s.policy_count, 2, "shadow policies are not live");
        let late = serde_json::json!({"late": true});
        let early = serde_json::json!({"late": false});
        let shadow = |d: &Decision| {
            let s = d.shadow.clone().unwrap();
            (s.allow, s.determining_policies)
        };

        // A shadow forbid denies what the live set allows.
        let d = ask(&s, "alice", late.clone(), OnForbidError::Deny);
        assert!(d.allow);
        assert_eq!(d.determining_policies, ["alice"]);
        assert_eq!(shadow(&d), (false, vec!["deny-late".to_string()]));
        // Agreement: the shadow permit joins the live one.
        let d = ask(&s, "alice", early.clone(), OnForbidError::Deny);
        assert_eq!(shadow(&d), (true, vec!["alice".to_string()]));
        // A shadow permit allows what no live permit did.
        let d = ask(&s, "bob", early.clone(), OnForbidError::Deny);
        assert!(!d.allow);
        assert_eq!(shadow(&d), (true, vec!["bob".to_string()]));
        // It cannot lift a live forbid.
        let d = ask(&s, "mallory", early, OnForbidError::Deny);
        assert_eq!(shadow(&d), (false, vec!["no-mallory".to_string()]));
        // An erroring shadow forbid denies under `deny`, is skipped under `skip`.
        let d = ask(&s, "alice", serde_json::json!({}), OnForbidError::Deny);
        assert_eq!(shadow(&d), (false, vec!["deny-late".to_string()]));
        let d = ask(&s, "alice", serde_json::json!({}), OnForbidError::Skip);
        assert_eq!(shadow(&d), (true, vec!["alice".to_string()]));
        // A set without shadow policies has no shadow answer.
        let plain = snapshot(&[(
            "p.cedar",
            r#"@id("a") permit (principal, action, resource);"#,
        )]);
        assert_eq!(ask(&plain, "x", late, OnForbidError::Deny).shadow, None);
    }
}
