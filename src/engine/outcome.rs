//! One evaluation's answer, whichever evaluator gave it, and the two
//! evaluators.
//!
//! The public `Authorizer` rebuilds every policy's condition on each call,
//! copies the request and builds maps for its response: more than half of
//! an uncached call that has no entities to parse. [`with_core`] runs
//! Cedar's own evaluator (cedar-policy-core, the crate under cedar-policy)
//! over the candidates' conditions, built once when the index is built, and
//! combines the results by the same rule as Cedar's `Authorizer`. Anything
//! that rule handles specially (a residual, a condition that is not a bool)
//! returns `None`, and [`with_public`] answers instead.

use cedar_policy::{Effect, Entities, EntityUid, Policy, PolicySet, Schema};
use cedar_policy_core::ast::{self, Expr, Literal, Value, ValueKind};
use cedar_policy_core::evaluator::{EvaluationError, Evaluator};
use cedar_policy_core::extensions::Extensions;

use super::decision::PolicyError;

/// Cedar's answer for one set of policies.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Cedar's decision, before `on_forbid_error`.
    pub(super) allow: bool,
    /// Cedar's determining policies: the satisfied forbids if any,
    /// otherwise the satisfied permits.
    pub(super) determining: Vec<(String, Effect)>,
    /// The policies that raised an error, with their effect.
    pub(super) errors: Vec<(PolicyError, Effect)>,
}

/// A request for Cedar's evaluator, checked against the schema as
/// `cedar_policy::Request::new` checks it; `None` if the check fails, for
/// the public constructor to report.
pub(super) fn core_request(
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    context: ast::Context,
    schema: Option<&Schema>,
) -> Option<ast::Request> {
    ast::Request::new(
        (principal.clone().into(), None),
        (action.clone().into(), None),
        (resource.clone().into(), None),
        context,
        schema.map(AsRef::as_ref),
        Extensions::all_available(),
    )
    .ok()
}

/// An evaluator of `request` over `entities`.
pub(super) fn evaluator(request: ast::Request, entities: &Entities) -> Evaluator<'_> {
    Evaluator::new(request, entities.as_ref(), Extensions::all_available())
}

/// Each policy's condition evaluated by `eval`, and the answers combined as
/// Cedar's `Authorizer` combines them.
pub(super) fn with_core<'a>(
    eval: &Evaluator<'_>,
    policies: impl Iterator<Item = (&'a Policy, &'a Expr)>,
) -> Option<Outcome> {
    let (mut permits, mut forbids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (policy, condition) in policies {
        let effect = policy.effect();
        match eval.interpret(condition, policy.as_ref().env()) {
            Ok(Value {
                value: ValueKind::Lit(Literal::Bool(satisfied)),
                ..
            }) => {
                if satisfied {
                    match effect {
                        Effect::Permit => permits.push((policy.id().to_string(), effect)),
                        Effect::Forbid => forbids.push((policy.id().to_string(), effect)),
                    }
                }
            }
            // Cedar reports these with errors this crate cannot build, and
            // a residual forbid changes which policies determine.
            Ok(_) | Err(EvaluationError::NonValue(_)) => return None,
            Err(e) => errors.push((
                PolicyError {
                    policy_id: policy.id().to_string(),
                    message: e.to_string(),
                },
                effect,
            )),
        }
    }
    let allow = !permits.is_empty() && forbids.is_empty();
    Some(Outcome {
        allow,
        determining: if forbids.is_empty() { permits } else { forbids },
        errors,
    })
}

/// The public `Authorizer`'s answer for `set`.
pub(super) fn with_public(
    request: &cedar_policy::Request,
    set: &PolicySet,
    entities: &Entities,
) -> Outcome {
    let response = cedar_policy::Authorizer::new().is_authorized(request, set, entities);
    // Every id Cedar reports is in `set`; were one not, it counts as a forbid.
    let effect = |id| set.policy(id).map_or(Effect::Forbid, Policy::effect);
    let diagnostics = response.diagnostics();
    Outcome {
        allow: response.decision() == cedar_policy::Decision::Allow,
        determining: diagnostics
            .reason()
            .map(|id| (id.to_string(), effect(id)))
            .collect(),
        errors: diagnostics
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => (
                    PolicyError {
                        policy_id: e.policy_id().to_string(),
                        message: e.inner().to_string(),
                    },
                    effect(e.policy_id()),
                ),
            })
            .collect(),
    }
}
