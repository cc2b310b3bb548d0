//! The schema: at most one, in Cedar or JSON syntax, and the types read
//! from it for contexts and stored entities.

use cedar_policy::Schema;

use super::{Inputs, SchemaFormat};
use crate::engine::context_types::ContextTypes;
use crate::engine::schema_types::Resolved;
use crate::engine::source::{SourceProblem, problem};
use crate::engine::typed_entity::EntityShapes;

/// Parses the schema, if there is one; more than one is a problem.
pub(super) fn parse(
    inputs: &Inputs<'_>,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) -> Option<Schema> {
    if inputs.schemas.len() > 1 {
        let names: Vec<_> = inputs
            .schemas
            .iter()
            .map(|(_, f)| format!("`{}`", f.name))
            .collect();
        problems.push(SourceProblem {
            file: inputs.schemas[1].1.name.to_string(),
            line: 1,
            column: 1,
            message: format!("more than one schema file: {}", names.join(", ")),
        });
        return None;
    }
    let (format, file) = inputs.schemas.first()?;
    if *format == SchemaFormat::Json {
        return Schema::from_json_str(file.text)
            .map_err(|e| problems.push(problem(file.name, file.text, &e)))
            .ok();
    }
    match Schema::from_cedarschema_str(file.text) {
        Ok((schema, found)) => {
            warnings.extend(found.map(|w| problem(file.name, file.text, &w)));
            Some(schema)
        }
        Err(e) => {
            problems.push(problem(file.name, file.text, &e));
            None
        }
    }
}

/// The schema's types, for reading contexts and stored entities by them;
/// without a parsed schema, none.
pub(super) fn types(inputs: &Inputs<'_>, parsed: Option<&Schema>) -> (ContextTypes, EntityShapes) {
    match parsed.and(inputs.schemas.first()) {
        None => (ContextTypes::schemaless(), EntityShapes::schemaless()),
        Some((format, file)) => {
            let resolved = match format {
                SchemaFormat::Json => Resolved::json_schema(file.text),
                SchemaFormat::Cedar => Resolved::cedarschema(file.text),
            };
            (
                ContextTypes::from_resolved(resolved.as_ref()),
                EntityShapes::from_resolved(resolved.as_ref()),
            )
        }
    }
}
