//! The Cedar integration corpus's file format, shared by the tests that
//! read it. See the corpus README.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

use std::path::Path;

use cedar_pdp::grpc::proto;
use serde::Deserialize;
use serde_json::Value as Json;

/// One corpus test file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorpusTest {
    pub policies: String,
    pub entities: String,
    pub schema: Option<String>,
    pub should_validate: bool,
    pub requests: Vec<CorpusRequest>,
}

/// One request and its reference answer.
#[derive(Debug, Deserialize)]
pub struct CorpusRequest {
    pub description: String,
    pub principal: Json,
    pub action: Json,
    pub resource: Json,
    pub context: serde_json::Map<String, Json>,
    /// Absent means `true`, as in the reference harness. Our server always
    /// validates requests against the schema, so `false` cannot apply.
    #[serde(rename = "validateRequest", default = "yes")]
    pub validate_request: bool,
    pub decision: String,
    pub reason: Vec<String>,
    pub errors: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Test JSON files under `dir`, recursively, relative to the corpus root
/// (the parent of `dir`), sorted. Entity files are not tests.
pub fn json_files_under(dir: &Path) -> Vec<String> {
    let base = dir.parent().unwrap();
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if name.ends_with(".json") && !name.ends_with(".entities.json") {
                let rel = path.strip_prefix(base).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// `{"type", "id"}` or `{"__entity": {"type", "id"}}`.
pub fn entity_ref(json: &Json, rel: &str) -> proto::EntityUid {
    let inner = json.get("__entity").unwrap_or(json);
    let field = |name: &str| {
        inner
            .get(name)
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("{rel}: entity reference without `{name}`: {json}"))
            .to_string()
    };
    proto::EntityUid {
        r#type: field("type"),
        id: field("id"),
    }
}
