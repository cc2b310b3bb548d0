//! A directory's [`Sources`] handed to the engine's compiler, and the
//! result wrapped with its provenance as a [`Snapshot`]. Loading is all or
//! nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::reader::{FileKind, ReadError, Sources, read_dir};
use super::snapshot::Snapshot;
use crate::config::{Config, SchemaRequirement};
use crate::engine::{
    self, CompileError, CompileOptions, Input, Inputs, SchemaFormat, SourceProblem,
};

/// Options that change how a directory is turned into a snapshot.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// How the texts compile: strict validation, the types only the
    /// directory may define, the attributes open to offered properties.
    pub compile: CompileOptions,
    /// Refuse a reload that drops the live set's schema.
    pub keep_schema: bool,
}

impl LoadOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            compile: CompileOptions {
                validate_policies: config.validation.policies,
                stored_only_types: config
                    .validation
                    .stored_only_types
                    .iter()
                    .cloned()
                    .collect(),
                open_properties: config
                    .authzen
                    .open_properties
                    .iter()
                    .map(|(ty, attrs)| (ty.clone(), attrs.iter().cloned().collect()))
                    .collect(),
            },
            keep_schema: config.validation.schema == SchemaRequirement::RequiredOnceLoaded,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Why a policy directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory, or a file in it, could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no `.cedar` file; serving an empty set would deny
    /// everything, which is never what a half-synced volume means.
    #[error("no `.cedar` policy files under `{}`", .0.display())]
    NoPolicies(PathBuf),
    /// Files were read but do not form a valid policy set.
    #[error("{}", engine::Problems(.0))]
    Invalid(Vec<SourceProblem>),
    /// The new set has no schema but the live one has: requests would parse
    /// untyped, so an `ipaddr` stays a string and network `forbid`s stop
    /// matching.
    #[error(
        "the new set has no schema, but the live set (revision {live_revision}) has one; restore the `.cedarschema` file, or set `[validation] schema = \"optional\"` to allow dropping it"
    )]
    SchemaRemoved { live_revision: String },
}

impl From<ReadError> for LoadError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io { path, source } => Self::Io { path, source },
        }
    }
}

impl From<CompileError> for LoadError {
    fn from(e: CompileError) -> Self {
        Self::Invalid(e.0)
    }
}

/// Compiles `sources` into a snapshot. Reports every problem found, not
/// just the first.
pub fn build(
    sources: Sources,
    options: &LoadOptions,
    generation: u64,
) -> Result<Snapshot, LoadError> {
    if !sources.files.iter().any(|f| f.kind == FileKind::Policies) {
        return Err(LoadError::NoPolicies(sources.root));
    }
    let mut inputs = Inputs::default();
    for f in &sources.files {
        let input = Input {
            name: &f.rel,
            text: &f.text,
        };
        match f.kind {
            FileKind::Policies => inputs.policies.push(input),
            FileKind::CedarSchema => inputs.schemas.push((SchemaFormat::Cedar, input)),
            FileKind::JsonSchema => inputs.schemas.push((SchemaFormat::Json, input)),
            FileKind::Entities => inputs.entities.push(input),
            FileKind::Links => inputs.links.push(input),
            FileKind::Tests => {}
        }
    }
    let compiled = engine::compile(&inputs, &options.compile)?;
    let schema_digest = compiled
        .engine
        .schema()
        .and(inputs.schemas.first())
        .map(|(_, file)| {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(file.text.as_bytes());
            format!("sha256:{}", hex::encode(digest))
        });
    Ok(Snapshot {
        revision: sources.revision(),
        git_commit: sources.git.clone(),
        digest: sources.digest.clone(),
        generation,
        loaded_at: SystemTime::now(),
        schema_digest,
        warnings: compiled.warnings,
        engine: compiled.engine,
    })
}

/// Reads `dir` once and compiles it, as generation 1: what `validate`,
/// `replay` and `authorize --policies` do. The store reads through
/// [`read_settled`](super::read_settled) instead.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Snapshot, LoadError> {
    build(read_dir(dir)?, options, 1)
}
