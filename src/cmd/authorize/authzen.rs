//! `authorize --authzen URL`: the same question as a `POST
//! /access/v1/evaluation`, with the server's `[authzen]` mapping inverted to
//! turn Cedar names into AuthZEN ones, and the reasons asked for so the
//! answer prints as the gRPC one does.

use std::str::FromStr;

use cedar_policy::EntityUid;
use serde_json::{Map, Value as Json, json};

use super::{Answer, AuthorizeArgs};
use crate::config::AuthzenConfig;
use crate::pipeline::{DECISION_ID_HEADER, REVISION_HEADER};

/// The AuthZEN `type` of a Cedar entity type: the `[authzen.types]` key that
/// maps to it, else the type without the namespace's prefix.
fn authzen_type(mapping: &AuthzenConfig, flag: &str, cedar: &str) -> Result<String, String> {
    if let Some((authzen, _)) = mapping.types.iter().find(|(_, t)| *t == cedar) {
        return Ok(authzen.clone());
    }
    if mapping.namespace.is_empty() {
        return Ok(cedar.to_string());
    }
    cedar
        .strip_prefix(&format!("{}::", mapping.namespace))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "`{flag}`: the type `{cedar}` is outside `authzen.namespace` `{}`, so AuthZEN cannot name it; map it under `[authzen.types]`",
                mapping.namespace
            )
        })
}

/// The AuthZEN action `name`: the action's id, if its type is the mapped
/// action type.
fn action_name(mapping: &AuthzenConfig, uid: &EntityUid) -> Result<String, String> {
    let want = if mapping.namespace.is_empty() {
        mapping.action_type.clone()
    } else {
        format!("{}::{}", mapping.namespace, mapping.action_type)
    };
    let got = uid.type_name().to_string();
    if got != want {
        return Err(format!(
            "`--action`: the server maps AuthZEN action names to `{want}::\"<name>\"`, not `{got}`; pass the server's config with `--config` (e.g. one with `[authzen] namespace = \"{}\"`)",
            uid.type_name().namespace()
        ));
    }
    Ok(uid.id().unescaped().to_string())
}

fn parse(flag: &str, text: &str) -> Result<EntityUid, String> {
    EntityUid::from_str(text)
        .map_err(|e| format!("`{flag}`: `{text}` is not an entity like `User::\"alice\"`: {e}"))
}

/// The `properties` an entities file gives `uid`: its attributes. AuthZEN
/// carries nothing else, so parents, tags and other entities are refused.
fn properties(
    entities: &[Json],
    subject: &EntityUid,
    resource: &EntityUid,
) -> Result<[Option<Map<String, Json>>; 2], String> {
    let mut found: [Option<Map<String, Json>>; 2] = [None, None];
    for entity in entities {
        let uid = EntityUid::from_json(entity["uid"].clone())
            .map_err(|e| format!("`--entities`: an entity's `uid`: {e}"))?;
        let slot = if uid == *subject {
            0
        } else if uid == *resource {
            1
        } else {
            return Err(format!(
                "`--entities`: AuthZEN carries only the subject's and the resource's properties, not `{uid}`"
            ));
        };
        for key in ["parents", "tags"] {
            if entity.get(key).is_some_and(|v| {
                !v.is_null()
                    && v.as_array().is_none_or(|a| !a.is_empty())
                    && v.as_object().is_none_or(|o| !o.is_empty())
            }) {
                return Err(format!(
                    "`--entities`: AuthZEN cannot carry the {key} of `{uid}`"
                ));
            }
        }
        let attrs = match entity.get("attrs") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(a)) => a.clone(),
            Some(_) => return Err(format!("`--entities`: `{uid}`'s attrs are not an object")),
        };
        found[slot] = Some(attrs);
    }
    Ok(found)
}

/// The evaluation body for `args`.
fn body(mapping: &AuthzenConfig, args: &AuthorizeArgs) -> Result<Json, String> {
    let principal = parse("--principal", &args.principal)?;
    let action = parse("--action", &args.action)?;
    let resource = parse("--resource", &args.resource)?;
    let entities: Vec<Json> = match &args.entities {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("`{}` is not a JSON array: {e}", path.display()))?
        }
    };
    let [subject_props, resource_props] = properties(&entities, &principal, &resource)?;
    let entity = |flag: &str, uid: &EntityUid, props: Option<Map<String, Json>>| {
        let mut e = json!({
            "type": authzen_type(mapping, flag, &uid.type_name().to_string())?,
            "id": uid.id().unescaped(),
        });
        if let Some(p) = props {
            e["properties"] = Json::Object(p);
        }
        Ok::<_, String>(e)
    };
    let mut body = json!({
        "subject": entity("--principal", &principal, subject_props)?,
        "action": {"name": action_name(mapping, &action)?},
        "resource": entity("--resource", &resource, resource_props)?,
        "options": {"include_reasons": true},
    });
    if let Some(context) = &args.context {
        let context: Json =
            serde_json::from_str(context).map_err(|e| format!("`--context` is not JSON: {e}"))?;
        body["context"] = context;
    }
    Ok(body)
}

/// POSTs the evaluation and reads the answer; a status other than 200 is
/// the server's `{error, message}`.
pub(super) async fn call(
    base: &str,
    mapping: &AuthzenConfig,
    args: AuthorizeArgs,
) -> Result<Answer, String> {
    let body = body(mapping, &args)?;
    let url = format!("{}/access/v1/evaluation", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut request = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if !args.request_id.is_empty() {
        request = request.header("x-request-id", &args.request_id);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach `{url}`: {e}"))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (decision_id, policy_revision) = (header(DECISION_ID_HEADER), header(REVISION_HEADER));
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read the answer from `{url}`: {e}"))?;
    let answer: Json = serde_json::from_str(&text)
        .map_err(|_| format!("`{url}` answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        return Err(format!(
            "request failed: {status}: {}: {}",
            answer["error"].as_str().unwrap_or("?"),
            answer["message"].as_str().unwrap_or_default()
        ));
    }
    let allow = answer["decision"]
        .as_bool()
        .ok_or_else(|| format!("`{url}` answered without a boolean `decision`: {text}"))?;
    let reasons = &answer["context"]["reason_admin"];
    let determining_policies = reasons["determining_policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let errors = reasons["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (field("policy_id"), field("message"))
        })
        .collect();
    Ok(Answer {
        allow,
        determining_policies,
        errors,
        decision_id,
        policy_revision,
        why: reasons["why"].as_str().unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn mapping(namespace: &str) -> AuthzenConfig {
        let mut c = AuthzenConfig {
            namespace: namespace.into(),
            ..AuthzenConfig::default()
        };
        c.types.insert("todo-list".into(), "Todo::List".into());
        c
    }

    #[test]
    fn cedar_names_invert_the_server_mapping() {
        let m = mapping("Mesh");
        assert_eq!(authzen_type(&m, "f", "Mesh::Workload").unwrap(), "Workload");
        assert_eq!(authzen_type(&m, "f", "Todo::List").unwrap(), "todo-list");
        let e = authzen_type(&m, "--resource", "Other::Doc").unwrap_err();
        assert!(
            e.contains("`--resource`") && e.contains("[authzen.types]"),
            "{e}"
        );
        assert_eq!(authzen_type(&mapping(""), "f", "A::B").unwrap(), "A::B");

        let call = EntityUid::from_str(r#"Mesh::Action::"call""#).unwrap();
        assert_eq!(action_name(&m, &call).unwrap(), "call");
        let e = action_name(&mapping(""), &call).unwrap_err();
        assert!(e.contains("namespace = \"Mesh\""), "{e}");
    }

    #[test]
    fn only_the_subject_and_resource_attributes_can_be_sent() {
        let (s, r) = (
            EntityUid::from_str(r#"User::"a""#).unwrap(),
            EntityUid::from_str(r#"Doc::"d""#).unwrap(),
        );
        let file = json!([
            {"uid": {"type": "User", "id": "a"}, "attrs": {"level": 3}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {}},
        ]);
        let [sp, rp] = properties(file.as_array().unwrap(), &s, &r).unwrap();
        assert_eq!(sp.unwrap()["level"], 3);
        assert!(rp.unwrap().is_empty());
        let other = json!([{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]);
        assert!(
            properties(other.as_array().unwrap(), &s, &r)
                .unwrap_err()
                .contains("Team")
        );
        let parents = json!([{"uid": {"type": "User", "id": "a"}, "attrs": {},
                              "parents": [{"type": "Team", "id": "t"}]}]);
        assert!(
            properties(parents.as_array().unwrap(), &s, &r)
                .unwrap_err()
                .contains("parents")
        );
    }
}
