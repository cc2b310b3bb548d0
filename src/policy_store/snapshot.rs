//! One loaded policy directory: its provenance and its compiled engine.

use std::time::SystemTime;

use super::reader::GitCommit;
use crate::engine::{Engine, SourceProblem};

/// One loaded policy directory: what one request is judged by. Never
/// mutated after it is built; a reload builds a new one and swaps it in.
#[derive(Debug)]
pub struct Snapshot {
    /// Short content digest shown to clients, e.g. `sha256:0123abcd…`.
    pub revision: String,
    /// Full SHA-256 of the contents, used to skip reloads that change nothing.
    pub digest: String,
    /// The git commit the files came from, when they are in a checkout.
    pub git_commit: Option<GitCommit>,
    /// How many successful loads, this one included.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// `sha256:<hex>` of the schema file's text, when there is one.
    pub schema_digest: Option<String>,
    /// Problems that do not stop the load: policies without `@id`, policies
    /// that can never apply under the schema, schema warnings, expired links.
    pub warnings: Vec<SourceProblem>,
    /// The compiled set.
    pub engine: Engine,
}
