//! The stored entities: every entities file parsed against the schema
//! and merged, with the schema's action entities.

use cedar_policy::{Entities, Schema};

use super::Inputs;
use crate::engine::entity_json::{self, EntityFileError};
use crate::engine::source::{SourceProblem, render_diagnostic};
use crate::engine::typed_entity::EntityShapes;

/// The stored entities and the schema's actions, as one set.
pub(super) fn parse(
    inputs: &Inputs<'_>,
    schema: Option<&Schema>,
    shapes: &EntityShapes,
    problems: &mut Vec<SourceProblem>,
) -> Entities {
    let actions = match schema.map(Schema::action_entities) {
        Some(Ok(actions)) => actions,
        Some(Err(e)) => {
            problems.push(SourceProblem {
                file: "<schema>".to_string(),
                line: 1,
                column: 1,
                message: format!("cannot build action entities: {e}"),
            });
            Entities::empty()
        }
        None => Entities::empty(),
    };
    // A parsed file already holds the schema's actions (Cedar's parse adds
    // them), so the first one is the set as it is.
    let mut merged: Option<Entities> = None;
    for file in &inputs.entities {
        // The parse has already checked the entities against the schema, so
        // the merge does not check them again (a merge re-walks the whole
        // hierarchy, so the first file is not merged into the actions).
        let added = match entity_json::parse(file.text, schema, shapes) {
            Ok(parsed) => match &merged {
                None => Ok(parsed),
                Some(so_far) => so_far.clone().add_entities(parsed, None),
            },
            Err(EntityFileError::Json(e)) => {
                problems.push(SourceProblem {
                    file: file.name.to_string(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("invalid JSON: {e}"),
                });
                continue;
            }
            Err(EntityFileError::Cedar(e)) => Err(*e),
        };
        match added {
            Ok(all) => merged = Some(all),
            Err(e) => problems.push(SourceProblem {
                file: file.name.to_string(),
                line: 1,
                column: 1,
                message: render_diagnostic(&e),
            }),
        }
    }
    merged.unwrap_or(actions)
}
