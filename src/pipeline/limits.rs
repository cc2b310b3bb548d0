//! Per-request bounds on what a caller may send. Message size is bounded by
//! tonic before decoding; these bound the shape of what was decoded, so that
//! no request can make evaluation cost more than the limits allow.

use serde_json::Value as Json;

use super::error::InvalidField;
use crate::config::LimitsConfig;
use crate::engine::Query;

mod closure;

/// The configured bounds, checked on every request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_entities: usize,
    pub max_depth: usize,
    pub max_context_bytes: usize,
    pub max_string_bytes: usize,
    pub max_parents: usize,
    pub max_entity_bytes: usize,
    pub max_closure: usize,
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Self {
        Self {
            max_entities: c.max_entities_per_request,
            max_depth: c.max_context_depth,
            max_context_bytes: c.max_context_bytes,
            max_string_bytes: c.max_string_bytes,
            max_parents: c.max_parents_per_entity,
            max_entity_bytes: c.max_entity_bytes,
            max_closure: c.max_ancestor_edges,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from(&LimitsConfig::default())
    }
}

/// The string fields of a well-formed Cedar escape, `{"__entity": {"type",
/// "id"}}` or `{"__extn": {"fn", "arg"}}`; `None` for anything else.
fn escape_parts(map: &serde_json::Map<String, Json>) -> Option<Vec<(&str, &str)>> {
    let (key, inner) = map.iter().next().filter(|_| map.len() == 1)?;
    let expected: &[&str] = match key.as_str() {
        "__entity" => &["type", "id"],
        "__extn" => &["fn", "arg"],
        _ => return None,
    };
    let Json::Object(inner) = inner else {
        return None;
    };
    if inner.len() != expected.len() {
        return None;
    }
    expected
        .iter()
        .map(|k| Some((*k, inner.get(*k)?.as_str()?)))
        .collect()
}

/// Where a value sits, e.g. `context.a.b[2]`: built on the stack as the walk
/// descends, and only turned into a string for an error.
enum Path<'a> {
    Root(&'static str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root(name) => f.write_str(name),
            Self::Key(parent, key) => write!(f, "{parent}.{key}"),
            Self::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

impl Limits {
    /// Checks raw JSON text before it is parsed.
    pub fn check_context_json(&self, text: &str) -> Result<(), InvalidField> {
        if text.len() > self.max_context_bytes {
            return Err(self.too_big("context_json", text.len()));
        }
        Ok(())
    }

    /// Checks the caller's own request id.
    pub fn check_request_id(&self, id: &str) -> Result<(), InvalidField> {
        self.check_string("request_id", id)
    }

    /// Checks entity JSON text before it is parsed.
    pub fn check_entities_json(&self, text: &str) -> Result<(), InvalidField> {
        if text.len() > self.max_entity_bytes {
            return Err(self.too_many_entity_bytes("entities_json", text.len()));
        }
        Ok(())
    }

    /// Checks a batch's shared entities, before any item is decided.
    pub fn check_shared_entities(&self, shared: &[Json]) -> Result<(), InvalidField> {
        if shared.len() > self.max_entities {
            return Err(InvalidField::new(
                "entities",
                format!(
                    "{} shared entities; the limit is {} (`limits.max_entities_per_request`)",
                    shared.len(),
                    self.max_entities
                ),
            ));
        }
        self.check_entities(shared, &[])
    }

    /// Checks `entities` (beside a batch's `shared` ones, already checked):
    /// their count together, and each one's shape, parents and size, and
    /// the ancestor edges they make together.
    fn check_entities(&self, entities: &[Json], shared: &[Json]) -> Result<(), InvalidField> {
        let count = entities.len() + shared.len();
        if count > self.max_entities {
            return Err(InvalidField::new(
                "entities",
                format!(
                    "{count} entities; the limit is {} (`limits.max_entities_per_request`)",
                    self.max_entities
                ),
            ));
        }
        let mut bytes = 0;
        for (i, e) in entities.iter().enumerate() {
            let field = Path::Index(&Path::Root("entities"), i);
            bytes += self.walk_entity(e, &field)?;
            if bytes > self.max_entity_bytes {
                return Err(self.too_many_entity_bytes("entities", bytes));
            }
        }
        closure::check(entities, shared, self.max_closure)
    }

    /// Checks a converted query: entity count (with a batch's `shared`
    /// entities), and the depth, string lengths and size of its context
    /// and entities.
    pub fn check_query(&self, q: &Query, shared: &[Json]) -> Result<(), InvalidField> {
        for (field, uid) in [
            ("principal", &q.principal),
            ("action", &q.action),
            ("resource", &q.resource),
        ] {
            let id: &str = uid.id().unescaped();
            let type_len = uid.type_name().to_string().len();
            if id.len() > self.max_string_bytes || type_len > self.max_string_bytes {
                return Err(self.long_string(field, id.len().max(type_len)));
            }
        }
        let mut size = 0;
        for (k, v) in &q.context {
            let field = Path::Key(&Path::Root("context"), k);
            self.check_string(&field, k)?;
            size += k.len() + self.walk(v, &field, 0)?;
            if size > self.max_context_bytes {
                return Err(self.too_big("context", size));
            }
        }
        if q.properties.is_empty() {
            return self.check_entities(&q.entities, shared);
        }
        // Offered properties may become entities: they count as entities.
        let mut all = q.entities.clone();
        all.extend(
            q.properties
                .iter()
                .map(|(_, attrs)| serde_json::json!({"attrs": attrs})),
        );
        self.check_entities(&all, shared)
    }

    /// Walks `v`, which sits inside `depth` records and sets; returns its
    /// approximate JSON size.
    fn walk(&self, v: &Json, field: &Path<'_>, depth: usize) -> Result<usize, InvalidField> {
        // A Cedar `__entity` / `__extn` escape is a JSON object but not a
        // record: it does not count as a level, and holds only short strings.
        // Anything else under those keys is an ordinary record.
        if let Json::Object(map) = v
            && let Some(parts) = escape_parts(map)
        {
            let mut size = 16;
            for (k, s) in parts {
                self.check_string(Path::Key(field, k), s)?;
                size += s.len();
            }
            return Ok(size);
        }
        let inner_depth = match v {
            Json::Array(_) | Json::Object(_) => depth + 1,
            _ => depth,
        };
        if inner_depth > self.max_depth {
            return Err(InvalidField {
                field: field.to_string(),
                message: format!(
                    "nested deeper than {} records and sets (`limits.max_context_depth`)",
                    self.max_depth
                ),
            });
        }
        Ok(match v {
            Json::Null | Json::Bool(_) | Json::Number(_) => 8,
            Json::String(s) => {
                self.check_string(field, s)?;
                s.len() + 2
            }
            Json::Array(items) => {
                let mut size = 2;
                for (i, item) in items.iter().enumerate() {
                    size += self.walk(item, &Path::Index(field, i), inner_depth)? + 1;
                }
                size
            }
            Json::Object(map) => {
                let mut size = 2;
                for (k, item) in map {
                    let inner = Path::Key(field, k);
                    self.check_string(&inner, k)?;
                    size += k.len() + 4 + self.walk(item, &inner, inner_depth)?;
                }
                size
            }
        })
    }

    /// An entity's attrs and tags are records whose values start at depth
    /// 0; its parents are bounded in number. Returns its approximate size.
    fn walk_entity(&self, e: &Json, field: &Path<'_>) -> Result<usize, InvalidField> {
        let Json::Object(map) = e else {
            return self.walk(e, field, 0);
        };
        let mut size = 2;
        for (k, v) in map {
            let inner = Path::Key(field, k);
            size += k.len() + 4;
            match (k.as_str(), v) {
                ("attrs" | "tags", Json::Object(record)) => {
                    for (name, value) in record {
                        let at = Path::Key(&inner, name);
                        self.check_string(&at, name)?;
                        size += name.len() + 4 + self.walk(value, &at, 0)?;
                    }
                }
                ("parents", Json::Array(parents)) if parents.len() > self.max_parents => {
                    return Err(InvalidField::new(
                        inner.to_string(),
                        format!(
                            "{} parents; the limit is {} (`limits.max_parents_per_entity`)",
                            parents.len(),
                            self.max_parents
                        ),
                    ));
                }
                _ => size += self.walk(v, &inner, 0)?,
            }
        }
        Ok(size)
    }

    fn too_many_entity_bytes(&self, field: &str, size: usize) -> InvalidField {
        InvalidField::new(
            field,
            format!(
                "{size} bytes of entities; the limit is {} (`limits.max_entity_bytes`)",
                self.max_entity_bytes
            ),
        )
    }

    /// `field` is formatted only for an error: the walk runs on every request.
    fn check_string(&self, field: impl std::fmt::Display, s: &str) -> Result<(), InvalidField> {
        if s.len() > self.max_string_bytes {
            return Err(self.long_string(field, s.len()));
        }
        Ok(())
    }

    fn long_string(&self, field: impl std::fmt::Display, len: usize) -> InvalidField {
        InvalidField {
            field: field.to_string(),
            message: format!(
                "a string of {len} bytes; the limit is {} (`limits.max_string_bytes`)",
                self.max_string_bytes
            ),
        }
    }

    fn too_big(&self, field: &str, size: usize) -> InvalidField {
        InvalidField {
            field: field.into(),
            message: format!(
                "{size} bytes; the limit is {} (`limits.max_context_bytes`)",
                self.max_context_bytes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::str::FromStr;

    use cedar_policy::EntityUid;
    use serde_json::json;

    use super::*;

    fn query(context: Json) -> Query {
        let uid = |s| EntityUid::from_str(s).unwrap();
        Query {
            principal: uid(r#"User::"a""#),
            action: uid(r#"Action::"b""#),
            resource: uid(r#"Doc::"c""#),
            context: context.as_object().cloned().unwrap(),
            entities: Vec::new(),
            properties: Vec::new(),
        }
    }

    fn nested(depth: usize) -> Json {
        (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn depth_is_bounded_at_the_edge() {
        let limits = Limits {
            max_depth: 4,
            ..Limits::default()
        };
        assert!(
            limits
                .check_query(&query(json!({ "x": nested(4) })), &[])
                .is_ok()
        );
        let err = limits
            .check_query(&query(json!({ "x": nested(5) })), &[])
            .unwrap_err();
        assert!(err.field.starts_with("context.x.a"), "{err}");
    }

    #[test]
    fn strings_and_size_are_bounded() {
        let limits = Limits {
            max_string_bytes: 10,
            max_context_bytes: 100,
            ..Limits::default()
        };
        assert!(
            limits
                .check_query(&query(json!({ "s": "0123456789" })), &[])
                .is_ok()
        );
        let err = limits
            .check_query(&query(json!({ "s": "0123456789x" })), &[])
            .unwrap_err();
        assert_eq!(err.field, "context.s");
        let many: serde_json::Map<String, Json> =
            (0..20).map(|i| (format!("k{i}"), json!("v"))).collect();
        let err = limits
            .check_query(&query(Json::Object(many)), &[])
            .unwrap_err();
        assert_eq!(err.field, "context");
    }
}
