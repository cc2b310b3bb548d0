//! The engine: the one owner of Cedar. It compiles a policy set's texts
//! into Cedar values once per load ([`compile()`](compile::compile)), and decides requests
//! against them ([`Engine::decide`]). It knows no file system and no
//! transport, and it is the only module that imports `cedar_policy_core`,
//! so a Cedar upgrade is a one-folder job.
//!
//! # Layout
//! - [`mod@compile`]: texts -> [`Engine`], one file per Cedar artifact.
//! - `source`: problems located at `file:line:column`.
//! - `schema_types`, `type_names`, [`context_types`], `typed_entity`:
//!   the schema's types, and contexts and entities read by them.
//! - `entity_json`, `closure`, `spread`, `entity_refs`: stored entities,
//!   parsed on every core and closed under the hierarchy.
//! - `links`, `index`: template links and their windows; the policies by scope.
//! - `decision`: the query, the decision, and why a query fails.
//! - `request_entities`, `entity_cache`, `slice`: a request's own entities.
//! - `outcome`: Cedar's evaluators over the candidates' conditions.
//! - `decide`: [`Engine::decide`], the one entry point.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use cedar_policy::{Entities, EntityUid, PolicySet, Schema};

mod closure;
pub mod compile;
pub mod context_types;
mod decide;
mod decision;
mod entity_cache;
mod entity_json;
mod entity_refs;
mod index;
mod links;
mod outcome;
mod request_entities;
mod schema_types;
mod slice;
mod source;
mod spread;
mod type_names;
mod typed_entity;

pub use compile::{CompileError, CompileOptions, Compiled, Input, Inputs, SchemaFormat, compile};
pub use decide::Scratch;
pub use decision::{
    AuthorizeError, Decision, DropReason, DroppedProperty, InactiveGrant, PolicyError, Query,
    ShadowDecision,
};
pub use entity_cache::{EntityCache, EntityLookups};
pub use index::{Candidates, PolicyIndex, Target};
pub use links::{Clock, GrantCounts, GrantState, Window};
pub use request_entities::SharedEntities;
pub use source::{Problems, SourceProblem, line_column, problem};
pub(crate) use type_names::type_name;

use context_types::ContextTypes;
use typed_entity::EntityShapes;

/// A compiled policy set: what one request is judged by. Never mutated
/// after [`compile()`] builds it.
#[derive(Debug)]
pub struct Engine {
    /// Unique among every engine this process compiles: what caches of
    /// things parsed against it are keyed by.
    uid: u64,
    policies: PolicySet,
    /// `policies`, sliced by scope for evaluation.
    index: PolicyIndex,
    /// Shadow policies (`@shadow`, or under `shadow/`): evaluated beside
    /// the live set, never part of the answer. `None` when there are none.
    shadow: Option<ShadowSet>,
    schema: Option<Schema>,
    /// The stored entities, plus the schema's action entities.
    entities: Entities,
    /// Uids `entities` name but do not define; no request may define them.
    dangling: HashSet<EntityUid>,
    /// Entity types no request may define (`validation.stored_only_types`).
    stored_only_types: HashSet<String>,
    /// Per entity type, the attributes offered properties may add to a
    /// stored entity; the others are closed.
    open_properties: HashMap<String, HashSet<String>>,
    /// Per action, the context type requests are read by without Cedar's
    /// parse where they can be.
    context_types: ContextTypes,
    /// Each entity type's attributes, for reading entities by them.
    entity_shapes: EntityShapes,
    /// The window of every template link, live or shadow.
    grants: Vec<Window>,
}

/// The shadow policies, indexed like the live ones.
#[derive(Debug)]
struct ShadowSet {
    policies: PolicySet,
    index: PolicyIndex,
}

impl Engine {
    /// The process-wide id of this compilation.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// The live policies and templates (template links included, shadow
    /// policies not).
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// How many live policies, template links included.
    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// The schema, when the set has one.
    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// The stored entities, with the schema's action entities.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// How many stored entities, the schema's actions included.
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// The shadow policies, when the set has any.
    pub fn shadow_policies(&self) -> Option<&PolicySet> {
        self.shadow.as_ref().map(|s| &s.policies)
    }

    /// How many template links are active, pending and expired at `now`:
    /// the states change with time, not with reloads.
    pub fn grant_counts(&self, now: SystemTime) -> GrantCounts {
        GrantCounts::of(&self.grants, now)
    }

    /// The live policies by scope; the differential tests check it
    /// against the whole set.
    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }

    /// Per action, the context types requests are read by.
    pub fn context_types(&self) -> &ContextTypes {
        &self.context_types
    }

    /// Uids the stored entities name without defining.
    pub fn dangling(&self) -> &HashSet<EntityUid> {
        &self.dangling
    }
}

/// Compiles `files`, grouped by their names' kinds as the policy store
/// groups them: the engine's tests need no directory.
#[cfg(test)]
pub(crate) fn test_inputs<'a>(files: &[(&'a str, &'a str)]) -> Inputs<'a> {
    let mut inputs = Inputs::default();
    for &(name, text) in files {
        let input = Input { name, text };
        if name.ends_with(".cedarschema.json") {
            inputs.schemas.push((SchemaFormat::Json, input));
        } else if name.ends_with(".cedarschema") {
            inputs.schemas.push((SchemaFormat::Cedar, input));
        } else if name.ends_with(".links.json") {
            inputs.links.push(input);
        } else if name.ends_with(".entities.json") {
            inputs.entities.push(input);
        } else {
            inputs.policies.push(input);
        }
    }
    inputs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// An engine of `files`, compiled as a directory of them would be.
    pub(super) fn compiled(files: &[(&str, &str)]) -> Engine {
        let options = CompileOptions {
            validate_policies: true,
            ..CompileOptions::default()
        };
        compile(&test_inputs(files), &options).unwrap().engine
    }
}
