//! The AuthZEN search APIs: subject, resource and action search.
//!
//! A search lists its candidates (the stored entities of the searched type,
//! or the known actions), and decides each one through the pipeline with
//! the request's other inputs, as `/evaluation` would; the results are the
//! candidates it allows, so they are exact by construction. Every candidate
//! is decided on every page, so `total` is exact and a page is a slice of
//! one ordered list. A search is one record, not one per candidate: its
//! query, revision and results, so that searches cannot rotate other
//! decisions out of the log.
//!
//! A page token is the offset of the next result and a digest of the query
//! (every input but the token) and the policy digest: a token is rejected
//! by any other query and after any reload that changes the policies.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};

use super::mapping::{Mapping, Parts};
use super::{Authzen, Http, status};
use crate::pipeline::{BatchStop, DecisionRequest, InvalidField, Reason, Submitted};
use crate::policy_store::Snapshot;

/// The subject search endpoint.
pub(super) const SUBJECT_PATH: &str = "/access/v1/search/subject";
/// The resource search endpoint.
pub(super) const RESOURCE_PATH: &str = "/access/v1/search/resource";
/// The action search endpoint.
pub(super) const ACTION_PATH: &str = "/access/v1/search/action";

/// How many digest bytes a token carries.
const TOKEN_DIGEST_BYTES: usize = 16;

/// What a search looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Subject,
    Resource,
    Action,
}

impl Kind {
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Resource => "resource",
            Self::Action => "action",
        }
    }
}

/// `page.token` and `page.limit`, as sent.
#[derive(Debug, Default)]
struct Page {
    token: Option<String>,
    /// `None` (or 0, which asks for no bound) lists every result.
    limit: Option<usize>,
}

fn page(body: &Map<String, Json>) -> Result<Page, InvalidField> {
    let page = match body.get("page") {
        None | Some(Json::Null) => return Ok(Page::default()),
        Some(Json::Object(p)) => p,
        Some(_) => return Err(InvalidField::new("page", "must be a JSON object")),
    };
    let token = match page.get("token") {
        None | Some(Json::Null) => None,
        Some(Json::String(t)) if t.is_empty() => None,
        Some(Json::String(t)) => Some(t.clone()),
        Some(_) => return Err(InvalidField::new("page.token", "must be a string")),
    };
    let limit = match page.get("limit") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                return Err(InvalidField::new(
                    "page.limit",
                    "must be a non-negative integer",
                ));
            }
        },
        Some(_) => {
            return Err(InvalidField::new(
                "page.limit",
                "must be a non-negative integer",
            ));
        }
    };
    Ok(Page { token, limit })
}

/// `value` with its `id` removed: the searched-for entity, whose id is ignored.
fn without_id(value: Option<&Json>) -> Option<Json> {
    let mut value = value?.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("id");
    }
    Some(value)
}

/// `value` with `key` set to `id` (a probe or a candidate).
fn with(value: Option<&Json>, key: &str, id: &str) -> Json {
    match value {
        // Not an object: left as sent, for the mapping to refuse.
        Some(v) if !v.is_object() => v.clone(),
        _ => {
            let mut object = value.and_then(Json::as_object).cloned().unwrap_or_default();
            object.insert(key.to_string(), json!(id));
            Json::Object(object)
        }
    }
}

/// The digest a token is bound to: the query without its token, and the
/// policy contents.
fn query_digest(
    kind: Kind,
    parts: &Parts<'_>,
    limit: Option<usize>,
    snapshot: &Snapshot,
) -> Vec<u8> {
    let (mut subject, mut action, mut resource) = (
        parts.subject.as_deref().cloned(),
        parts.action.as_deref().cloned(),
        parts.resource.as_deref().cloned(),
    );
    match kind {
        Kind::Subject => subject = without_id(parts.subject.as_deref()),
        Kind::Resource => resource = without_id(parts.resource.as_deref()),
        Kind::Action => action = None,
    }
    // serde_json's maps are sorted, so equal queries serialize equally.
    let canonical = json!({
        "search": kind.key(),
        "subject": subject,
        "action": action,
        "resource": resource,
        "context": parts.context,
        "limit": limit,
    });
    let mut hasher = Sha256::new();
    hasher.update(canonical.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(snapshot.digest.as_bytes());
    hasher.finalize()[..TOKEN_DIGEST_BYTES].to_vec()
}

fn token(offset: usize, digest: &[u8]) -> String {
    let mut bytes = (offset as u64).to_be_bytes().to_vec();
    bytes.extend_from_slice(digest);
    hex::encode(bytes)
}

/// The offset `token` carries, if it was issued for this `digest`.
fn offset(token: &str, digest: &[u8]) -> Result<usize, InvalidField> {
    let stale = || {
        InvalidField::new(
            "page.token",
            "was not issued for this query and policy revision; repeat the query exactly, or start again without a token",
        )
    };
    let bytes = hex::decode(token).map_err(|_| stale())?;
    let (head, tail) = bytes.split_at_checked(8).ok_or_else(stale)?;
    if tail != digest {
        return Err(stale());
    }
    let head: [u8; 8] = head.try_into().map_err(|_| stale())?;
    usize::try_from(u64::from_be_bytes(head)).map_err(|_| stale())
}

/// Entity ids named in a policy's JSON form under `action_type`: the scope's
/// `{type, id}` and the body's `{"__entity": {type, id}}` alike.
fn named_actions(value: &Json, action_type: &str, into: &mut BTreeSet<String>) {
    match value {
        Json::Object(object) => {
            if let (Some(Json::String(t)), Some(Json::String(id))) =
                (object.get("type"), object.get("id"))
                && t == action_type
            {
                into.insert(id.clone());
            }
            for v in object.values() {
                named_actions(v, action_type, into);
            }
        }
        Json::Array(items) => {
            for v in items {
                named_actions(v, action_type, into);
            }
        }
        _ => {}
    }
}

/// The candidate ids, sorted: stored entities of `cedar_type`, or (for
/// actions) the schema's actions, else the actions the policies and the
/// entities files name.
fn candidates(kind: Kind, cedar_type: &str, snapshot: &Snapshot) -> Vec<String> {
    let mut ids: BTreeSet<String> = snapshot
        .engine
        .entities()
        .iter()
        .map(|e| e.uid())
        .filter(|uid| uid.type_name().to_string() == cedar_type)
        .map(|uid| uid.id().unescaped().to_string())
        .collect();
    if kind == Kind::Action {
        match snapshot.engine.schema() {
            Some(schema) => ids.extend(
                schema
                    .actions()
                    .filter(|uid| uid.type_name().to_string() == cedar_type)
                    .map(|uid| uid.id().unescaped().to_string()),
            ),
            None => {
                for policy in snapshot.engine.policies().policies() {
                    // A policy that has no JSON form names nothing we can list.
                    if let Ok(json) = policy.to_json() {
                        named_actions(&json, cedar_type, &mut ids);
                    }
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// The answer's body: one page of `allowed`, from `offset`.
fn listing(
    kind: Kind,
    allowed: &[String],
    authzen_type: &str,
    offset: usize,
    limit: Option<usize>,
    digest: &[u8],
) -> Json {
    let start = offset.min(allowed.len());
    let end = limit.map_or(allowed.len(), |l| {
        start.saturating_add(l).min(allowed.len())
    });
    let results: Vec<Json> = allowed[start..end]
        .iter()
        .map(|id| match kind {
            Kind::Action => json!({"name": id}),
            _ => json!({"type": authzen_type, "id": id}),
        })
        .collect();
    let next_token = if end < allowed.len() {
        token(end, digest)
    } else {
        String::new()
    };
    json!({
        "page": {"next_token": next_token, "count": results.len(), "total": allowed.len()},
        "results": results,
    })
}

/// How many results the record lists by id; past that, their count and
/// digest stand for them.
const RECORDED_IDS: usize = 100;

/// A search's results, for its record: their count, the SHA-256 of their
/// ids (one per line, in order), and the ids themselves when few.
fn summarize(allowed: &[String]) -> Json {
    let mut hasher = Sha256::new();
    for id in allowed {
        hasher.update(id.as_bytes());
        hasher.update(b"\n");
    }
    let mut summary = json!({
        "count": allowed.len(),
        "sha256": hex::encode(hasher.finalize()),
    });
    if allowed.len() <= RECORDED_IDS {
        summary["ids"] = json!(allowed);
    }
    summary
}

/// The query as sent: subject, action and resource (the context goes to
/// the record's `context`, where the log's masking applies).
fn query_of(parts: &Parts<'_>) -> Json {
    json!({
        "subject": parts.subject.as_deref(),
        "action": parts.action.as_deref(),
        "resource": parts.resource.as_deref(),
    })
}

fn empty() -> Json {
    json!({"page": {"next_token": "", "count": 0, "total": 0}, "results": []})
}

/// Whether an entity part names a `type` string that maps to no Cedar type.
fn unknown_type(mapping: &Mapping, value: Option<&Json>, field: &str) -> bool {
    value
        .and_then(|v| v.get("type"))
        .and_then(Json::as_str)
        .is_some_and(|t| !t.is_empty() && mapping.cedar_type(t, field).is_err())
}

/// A stand-in for an unknown type, so the rest of the request is still checked.
const PROBE_TYPE: &str = "Unknown";

impl Authzen {
    /// Answers one search: 200 with a page of results, or the status and
    /// `{error, message}` of a refusal.
    pub(super) async fn search(
        &self,
        http: &Http,
        kind: Kind,
        body: Map<String, Json>,
    ) -> axum::response::Response {
        let page = match page(&body) {
            Ok(p) => p,
            Err(e) => return self.refuse_body(http, (e, Reason::InvalidRequest)).await,
        };
        let snapshot = self.pipeline.store().snapshot();
        let Some(snapshot) = snapshot else {
            let req = Ok(DecisionRequest {
                request_id: http.request_id.clone(),
                ..DecisionRequest::default()
            });
            return self.single(http, None, req, false).await;
        };
        let parts = Parts::of(&body);
        let key = kind.key();

        // The probe is the request with the searched-for entity's id (or
        // action name) filled in and unknown types stood in for: whatever it
        // refuses is a 400; an unknown type is an empty result.
        let mut unknown = false;
        let mut fix = |value: Option<&Json>, field: &str, searched: bool| -> Option<Json> {
            let mut owned = match (value, searched) {
                (_, true) => with(value, "id", ""),
                (Some(v), false) => v.clone(),
                (None, false) => return None,
            };
            if unknown_type(&self.mapping, Some(&owned), field) {
                unknown = true;
                if let Some(o) = owned.as_object_mut() {
                    o.insert("type".into(), json!(PROBE_TYPE));
                }
            }
            Some(owned)
        };
        let probe_subject = fix(
            parts.subject.as_deref(),
            "subject.type",
            kind == Kind::Subject,
        );
        let probe_resource = fix(
            parts.resource.as_deref(),
            "resource.type",
            kind == Kind::Resource,
        );
        let probe_action = match kind {
            Kind::Action => Some(Cow::Owned(json!({"name": ""}))),
            _ => parts.action.clone(),
        };
        let probe = Parts {
            subject: probe_subject.map(Cow::Owned),
            action: probe_action,
            resource: probe_resource.map(Cow::Owned),
            context: parts.context.clone(),
        };
        let probe = match self.mapping.request(probe, &http.request_id, "") {
            Ok(probe) => probe,
            // Refused (and recorded) through the pipeline, as `/evaluation` would be.
            refused => return self.single(http, Some(snapshot), refused, false).await,
        };
        let digest = query_digest(kind, &parts, page.limit, &snapshot);
        let offset = match page.token.as_deref().map(|t| offset(t, &digest)) {
            None => 0,
            Some(Ok(o)) => o,
            Some(Err(e)) => return self.refuse_body(http, (e, Reason::InvalidRequest)).await,
        };
        if unknown {
            http.call.span.record("cedar.search.unknown_type", true);
            http.call
                .span
                .record("cedar.policy_revision", snapshot.revision.as_str());
            return self.found(http, kind, "unknown_type", 0, &empty(), None);
        }

        let searched = match kind {
            Kind::Subject => parts.subject.as_deref(),
            Kind::Resource => parts.resource.as_deref(),
            Kind::Action => None,
        };
        let authzen_type = searched
            .and_then(|v| v.get("type"))
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        let cedar_type = match kind {
            Kind::Action => self.mapping.action_type().to_string(),
            _ => match self
                .mapping
                .cedar_type(&authzen_type, &format!("{key}.type"))
            {
                Ok(t) => t,
                Err(e) => return self.refuse_body(http, (e, Reason::InvalidRequest)).await,
            },
        };
        let ids = candidates(kind, &cedar_type, &snapshot);
        http.call
            .span
            .record("cedar.search.candidates", ids.len() as u64);
        http.call
            .span
            .record("cedar.policy_revision", snapshot.revision.as_str());
        let call = http.call.clone().summarized();
        match self
            .decide_candidates(http, &call, kind, &parts, &snapshot, &ids)
            .await
        {
            Ok((allowed, refused)) => {
                let summary = json!({
                    "kind": key,
                    "query": query_of(&parts),
                    "candidates": ids.len(),
                    "refused": refused,
                    "results": summarize(&allowed),
                    "page": {"offset": offset, "limit": page.limit},
                });
                let decision_id = self
                    .pipeline
                    .record_summary(&probe, &call, &snapshot, !allowed.is_empty(), summary)
                    .await;
                let body = listing(kind, &allowed, &authzen_type, offset, page.limit, &digest);
                let outcome = if allowed.is_empty() {
                    "empty"
                } else {
                    "results"
                };
                self.found(
                    http,
                    kind,
                    outcome,
                    allowed.len(),
                    &body,
                    decision_id.as_deref(),
                )
            }
            Err(error) => http.answer(
                status::http_status(error.reason),
                &status::error_body(&error),
                &[],
            ),
        }
    }

    /// A 200 with `body`, counted under `outcome` and traced with its
    /// number of results (refusals are counted where the search is routed).
    fn found(
        &self,
        http: &Http,
        kind: Kind,
        outcome: &'static str,
        results: usize,
        body: &Json,
        decision_id: Option<&str>,
    ) -> axum::response::Response {
        http.call
            .span
            .record("cedar.search.results", results as u64);
        self.pipeline.metrics().search(kind.key(), outcome);
        let headers: Vec<(&'static str, &str)> = decision_id
            .map(|id| (crate::pipeline::DECISION_ID_HEADER, id))
            .into_iter()
            .collect();
        http.answer(axum::http::StatusCode::OK, body, &headers)
    }

    /// The ids in `ids` whose evaluation allows, in order, and how many
    /// the pipeline refused; each is decided through the pipeline on
    /// `call` (which records them once, as the search), in batches of at
    /// most `limits.max_batch_size` against the one snapshot. A candidate
    /// the pipeline refuses is not a result.
    async fn decide_candidates(
        &self,
        http: &Http,
        call: &crate::pipeline::Call,
        kind: Kind,
        parts: &Parts<'_>,
        snapshot: &Arc<Snapshot>,
        ids: &[String],
    ) -> Result<(Vec<String>, usize), crate::pipeline::DecisionError> {
        let mut allowed = Vec::new();
        let mut refused = 0;
        for chunk in ids.chunks(self.pipeline.max_batch_size().max(1)) {
            let filled: Vec<Json> = chunk
                .iter()
                .map(|id| match kind {
                    Kind::Subject => with(parts.subject.as_deref(), "id", id),
                    Kind::Resource => with(parts.resource.as_deref(), "id", id),
                    Kind::Action => json!({"name": id}),
                })
                .collect();
            let items: Vec<Submitted> = filled
                .iter()
                .map(|candidate| {
                    let mut p = parts.clone();
                    let candidate = Some(Cow::Borrowed(candidate));
                    match kind {
                        Kind::Subject => p.subject = candidate,
                        Kind::Resource => p.resource = candidate,
                        Kind::Action => p.action = candidate,
                    }
                    self.mapping.request(p, &http.request_id, "")
                })
                .collect();
            let answers = self
                .pipeline
                .authorize_batch_on(
                    Some(Arc::clone(snapshot)),
                    items,
                    Ok(Vec::new()),
                    call,
                    http.timeout,
                    BatchStop::Never,
                )
                .await?;
            for (id, answer) in chunk.iter().zip(&answers) {
                match answer {
                    Ok(o) if o.decision.allow => allowed.push(id.clone()),
                    Ok(_) => {}
                    Err(_) => refused += 1,
                }
            }
        }
        Ok((allowed, refused))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_token_round_trips_only_with_its_digest() {
        let digest = [7u8; TOKEN_DIGEST_BYTES];
        let t = token(42, &digest);
        assert_eq!(offset(&t, &digest).unwrap(), 42);
        assert_eq!(
            offset(&t, &[8u8; TOKEN_DIGEST_BYTES]).unwrap_err().field,
            "page.token"
        );
        assert!(offset("zz", &digest).is_err());
        assert!(offset(&t[..10], &digest).is_err());
    }

    #[test]
    fn a_page_is_a_slice_with_a_next_token() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let d = [0u8; TOKEN_DIGEST_BYTES];
        let first = listing(Kind::Resource, &all, "doc", 0, Some(2), &d);
        assert_eq!(
            first["results"],
            json!([{"type": "doc", "id": "a"}, {"type": "doc", "id": "b"}])
        );
        assert_eq!(first["page"]["count"], 2);
        assert_eq!(first["page"]["total"], 3);
        let next = first["page"]["next_token"].as_str().unwrap();
        let second = listing(
            Kind::Resource,
            &all,
            "doc",
            offset(next, &d).unwrap(),
            Some(2),
            &d,
        );
        assert_eq!(second["results"], json!([{"type": "doc", "id": "c"}]));
        assert_eq!(second["page"]["next_token"], "");
        let actions = listing(Kind::Action, &all, "", 0, None, &d);
        assert_eq!(actions["results"][2], json!({"name": "c"}));
    }

    #[test]
    fn policy_json_names_actions_in_scope_and_body() {
        let policy = json!({"action": {"op": "in", "entities": [{"type": "Action", "id": "a"}]},
            "conditions": [{"body": {"==": {"left": {"Var": "action"},
                "right": {"Value": {"__entity": {"type": "Action", "id": "b"}}}}}}],
            "resource": {"op": "==", "entity": {"type": "Doc", "id": "c"}}});
        let mut ids = BTreeSet::new();
        named_actions(&policy, "Action", &mut ids);
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_page_object_is_checked() {
        let body = |v: Json| v.as_object().unwrap().clone();
        assert_eq!(
            page(&body(json!({"page": {"limit": 0}}))).unwrap().limit,
            None
        );
        assert_eq!(
            page(&body(json!({"page": {"limit": 3}}))).unwrap().limit,
            Some(3)
        );
        assert_eq!(
            page(&body(json!({"page": {"limit": -1}})))
                .unwrap_err()
                .field,
            "page.limit"
        );
        assert_eq!(
            page(&body(json!({"page": {"token": 1}})))
                .unwrap_err()
                .field,
            "page.token"
        );
        assert_eq!(page(&body(json!({"page": 1}))).unwrap_err().field, "page");
    }
}
