//! [`Engine::decide`]: one query against one compiled set. Only the
//! policies whose scope matches the request are evaluated (see
//! [`PolicyIndex`](super::PolicyIndex)); the answer is the same as the
//! whole set's.

use cedar_policy::{Context, Effect, Entities, Request};

use super::Engine;
use super::decision::{AuthorizeError, Decision, PolicyError, Query, ShadowDecision};
use super::entity_cache::{EntityCache, EntityLookups};
use super::index::Target;
use super::links::Clock;
use super::outcome::{self, Outcome};
use super::request_entities::{self, SharedEntities};
use super::slice;
use crate::config::OnForbidError;

/// What one call carries into [`Engine::decide`] beside the query: the
/// forbid-error rule, the clock, the entity cache and a batch's shared
/// entities; and what the call counts, the entity cache's lookups.
#[derive(Debug)]
pub struct Scratch<'a> {
    on_forbid_error: OnForbidError,
    clock: Clock,
    cache: Option<&'a EntityCache>,
    shared: Option<&'a SharedEntities>,
    lookups: EntityLookups,
}

impl<'a> Scratch<'a> {
    /// With [`OnForbidError::Deny`], a `forbid` that errors denies; with
    /// `Skip`, Cedar skips it. The clock is the system's, read only when a
    /// time-bound link's scope matches.
    pub fn new(on_forbid_error: OnForbidError) -> Self {
        Self {
            on_forbid_error,
            clock: Clock::system(),
            cache: None,
            shared: None,
            lookups: EntityLookups::default(),
        }
    }

    /// Judges time-bound template links at `clock`'s time.
    pub fn at(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Parses request entities through `cache` when there is one; the
    /// answer is the same (see [`EntityCache`]).
    pub fn cached(mut self, cache: Option<&'a EntityCache>) -> Self {
        self.cache = cache;
        self
    }

    /// A batch's `shared` entities, beside each query's own.
    pub fn shared(mut self, shared: Option<&'a SharedEntities>) -> Self {
        self.shared = shared;
        self
    }

    /// The entity cache's hits and misses so far.
    pub fn lookups(&self) -> &EntityLookups {
        &self.lookups
    }

    /// The instant time-bound links were judged at, if any was: what a
    /// record of the decision is stamped with, so `replay` judges them at
    /// the same instant.
    pub fn judged_at(&self) -> Option<std::time::SystemTime> {
        self.clock.was_read().then(|| self.clock.now())
    }
}

impl Engine {
    /// Evaluates `query`. A deny is an answer; an error is a query that
    /// could not be evaluated, and the caller's fault.
    pub fn decide(
        &self,
        query: Query,
        scratch: &mut Scratch<'_>,
    ) -> Result<Decision, AuthorizeError> {
        let Scratch {
            on_forbid_error,
            clock,
            cache,
            shared,
            lookups,
        } = scratch;
        let (on_forbid_error, cache, shared) = (*on_forbid_error, *cache, *shared);
        let clock = &*clock;
        let schema = self.schema.as_ref();
        let mut query = query;
        let offered =
            request_entities::apply_properties(self, std::mem::take(&mut query.properties))?;
        query.entities.extend(offered.unstored);
        let (own, set_key) = match (query.entities.is_empty(), cache) {
            (true, _) => (None, None),
            (false, Some(cache)) => {
                let parsed = cache.parse(self, query.entities, lookups)?;
                (Some(parsed.set), parsed.key)
            }
            (false, None) => (Some(request_entities::parse(self, query.entities)?), None),
        };
        // A remembered slice stands for the request's own set alone.
        let memo = match (cache, set_key, shared) {
            (Some(cache), Some(key), None) => Some((cache, key, &mut *lookups)),
            _ => None,
        };
        let extra = match (own, shared) {
            (own, None) => own,
            (None, Some(shared)) => Some(shared.entities().clone()),
            // Both were checked against the schema when parsed.
            (Some(own), Some(shared)) => Some(
                shared
                    .entities()
                    .clone()
                    .add_entities(own, None)
                    .map_err(|e| AuthorizeError::Entities(Box::new(e)))?,
            ),
        };
        let ancestors = |uid| request_entities::ancestors(&self.entities, extra.as_ref(), uid);
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
        let candidates = self.index.candidates(p, a, r, clock);
        // Only the shadow policies whose scope matches are evaluated; most
        // requests have none, and pay nothing more.
        let shadow_candidates = self.shadow.as_ref().map(|shadow| {
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
            None if offered.overrides.is_empty() => &self.entities,
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
                sliced = slice::slice(
                    &self.entities,
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
        let typed = self.context_types.build(&query.action, &query.context);
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
                let policies = if candidates.len() == self.index.len() {
                    &self.policies
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

    use cedar_policy::EntityUid;

    use super::*;
    use crate::engine::tests::compiled as snapshot;

    fn ask(s: &Engine, who: &str, context: serde_json::Value, on: OnForbidError) -> Decision {
        let uid = |t: &str| EntityUid::from_str(t).unwrap();
        let query = Query {
            principal: uid(&format!("User::\"{who}\"")),
            action: uid("Action::\"read\""),
            resource: uid("Doc::\"d\""),
            context: context.as_object().cloned().unwrap_or_default(),
            entities: Vec::new(),
            properties: Vec::new(),
        };
        s.decide(query, &mut Scratch::new(on)).unwrap()
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
        assert_eq!(s.policy_count(), 2, "shadow policies are not live");
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
