//! An immutable, fully validated policy set: what one request is judged by.

use std::collections::HashSet;
use std::time::SystemTime;

use cedar_policy::{Entities, EntityUid, PolicySet, Schema};

use super::index::PolicyIndex;
use super::links::{GrantCounts, Window};

/// The shadow policies of a snapshot, indexed like the live ones.
#[derive(Debug)]
pub struct ShadowSet {
    pub policies: PolicySet,
    pub index: PolicyIndex,
}

/// One loaded policy directory. Never mutated after it is built; a reload
/// builds a new one and swaps it in.
#[derive(Debug)]
pub struct Snapshot {
    /// Short content digest shown to clients, e.g. `sha256:0123abcd…`.
    pub revision: String,
    /// Full SHA-256 of the contents, used to skip reloads that change nothing.
    pub digest: String,
    /// The git commit the files came from, when they are in a checkout.
    pub git_commit: Option<super::GitCommit>,
    /// How many successful loads, this one included.
    pub generation: u64,
    /// Unique among every snapshot this process builds, whatever its
    /// store: what caches of things parsed against it are keyed by.
    pub uid: u64,
    pub loaded_at: SystemTime,
    pub policy_count: usize,
    pub entity_count: usize,
    pub policies: PolicySet,
    /// `policies`, sliced by scope for evaluation.
    pub index: PolicyIndex,
    /// Shadow policies (`@shadow`, or under `shadow/`): evaluated beside
    /// the live set, never part of the answer. `None` when there are none.
    pub shadow: Option<ShadowSet>,
    pub schema: Option<Schema>,
    /// `sha256:<hex>` of the schema file's text, when there is one.
    pub schema_digest: Option<String>,
    /// Entities from `*.entities.json`, plus the schema's action entities.
    pub entities: Entities,
    /// Uids `entities` name but do not define; no request may define them.
    pub dangling: HashSet<EntityUid>,
    /// Entity types no request may define (`validation.stored_only_types`).
    pub stored_only_types: HashSet<String>,
    /// Per action, the context type requests are read by without Cedar's
    /// parse where they can be.
    pub context_types: crate::context_types::ContextTypes,
    /// Each entity type's attributes, for reading entities by them.
    pub entity_shapes: super::EntityShapes,
    /// The window of every template link (`*.links.json`), live or shadow.
    pub grants: Vec<Window>,
    /// Problems that do not stop the load: policies without `@id`, policies
    /// that can never apply under the schema, schema warnings.
    pub warnings: Vec<super::SourceProblem>,
}

impl Snapshot {
    /// How many template links are active, pending and expired at `now`:
    /// the states change with time, not with reloads.
    pub fn grant_counts(&self, now: SystemTime) -> GrantCounts {
        GrantCounts::of(&self.grants, now)
    }
}
