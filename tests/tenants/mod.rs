//! Generated multi-tenant policy directories and requests, shared by tests
//! and benches (`#[path]`-included). Each tenant has its own few policies
//! over its own users, groups, folders and documents. No schema: the action
//! hierarchy comes from the entities file.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test and bench support"
)]

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value as Json, json};

/// A deterministic xorshift generator: reproducible sets without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A policy directory's contents.
pub struct Generated {
    pub policies: String,
    /// A Cedar JSON entities array.
    pub entities: Json,
    pub policy_count: usize,
}

impl Generated {
    /// Writes `policies.cedar` and `entities.entities.json` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::write(dir.join("policies.cedar"), &self.policies).unwrap();
        std::fs::write(
            dir.join("entities.entities.json"),
            serde_json::to_string(&self.entities).unwrap(),
        )
        .unwrap();
    }
}

pub fn uid(t: &str, id: &str) -> Json {
    json!({"type": t, "id": id})
}

fn action_entities() -> Vec<Json> {
    let action = |id: &str, parents: &[&str]| {
        json!({
            "uid": uid("Action", id),
            "attrs": {},
            "parents": parents.iter().map(|p| uid("Action", p)).collect::<Vec<_>>(),
        })
    };
    vec![
        action("readers", &[]),
        action("writers", &[]),
        action("read", &["readers"]),
        action("list", &["readers"]),
        action("write", &["writers"]),
        action("delete", &["writers"]),
    ]
}

/// Policies per tenant in [`scaling`].
pub const SCALING_POLICIES_PER_TENANT: usize = 5;
/// Users and documents per tenant in [`scaling`].
pub const SCALING_USERS: usize = 2;
pub const SCALING_DOCS: usize = 3;

/// A set of `policies` policies (rounded up to whole tenants): each tenant
/// has [`SCALING_POLICIES_PER_TENANT`] policies over its own resources. The
/// request `User::"t0-u0"` reads `Doc::"t0-d0"` is allowed.
pub fn scaling(policies: usize) -> Generated {
    let tenants = policies.div_ceil(SCALING_POLICIES_PER_TENANT).max(1);
    let mut text = String::new();
    let mut entities = action_entities();
    for t in 0..tenants {
        let tn = format!("t{t}");
        writeln!(
            text,
            r#"@id("{tn}-readers")
permit(principal in Tenant::"{tn}", action in Action::"readers", resource in Tenant::"{tn}")
when {{ resource.level <= principal.level }};
@id("{tn}-owners")
permit(principal is User in Tenant::"{tn}", action in [Action::"write", Action::"delete"], resource is Doc in Tenant::"{tn}")
when {{ resource.owner == principal }};
@id("{tn}-admin")
permit(principal == User::"{tn}-u0", action, resource in Tenant::"{tn}");
@id("{tn}-frozen")
forbid(principal, action in Action::"writers", resource == Doc::"{tn}-d0")
when {{ context has frozen && context.frozen }};
@id("{tn}-public")
permit(principal, action == Action::"read", resource == Doc::"{tn}-public");"#
        )
        .unwrap();
        entities.push(json!({"uid": uid("Tenant", &tn), "attrs": {}, "parents": []}));
        for u in 0..SCALING_USERS {
            entities.push(json!({
                "uid": uid("User", &format!("{tn}-u{u}")),
                "attrs": {"level": 3 - u as i64},
                "parents": [uid("Tenant", &tn)],
            }));
        }
        for d in 0..SCALING_DOCS {
            entities.push(json!({
                "uid": uid("Doc", &format!("{tn}-d{d}")),
                "attrs": {"level": d as i64, "owner": {"__entity": uid("User", &format!("{tn}-u{}", d % SCALING_USERS))}},
                "parents": [uid("Tenant", &tn)],
            }));
        }
    }
    Generated {
        policies: text,
        entities: Json::Array(entities),
        policy_count: tenants * SCALING_POLICIES_PER_TENANT,
    }
}

/// `extra` more users for the store, in tenant 0, none of them reachable
/// from a tenant-0 request except through the tenant: an entity store that
/// grows without growing what one request touches.
pub fn padding_users(start: usize, count: usize) -> Vec<Json> {
    (start..start + count)
        .map(|i| {
            json!({
                "uid": uid("User", &format!("pad-{i}")),
                "attrs": {"level": 1},
                "parents": [uid("Tenant", &format!("pad-{}", i % 100))],
            })
        })
        .collect()
}

/// One generated request, in Cedar JSON forms.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub principal: (String, String),
    pub action: (String, String),
    pub resource: (String, String),
    pub context: serde_json::Map<String, Json>,
    pub entities: Vec<Json>,
}

/// A varied multi-tenant set for differential tests: `in` hierarchies,
/// action groups, `is` scopes, unconstrained scopes, forbids, policies that
/// name entities in their conditions, and policies that error on some
/// requests (missing attributes).
pub fn varied(rng: &mut Rng, tenants: usize) -> (Generated, Vec<Json>) {
    let mut text = String::new();
    let mut entities = action_entities();
    let mut count = 0;
    let mut add = |text: &mut String, s: String| {
        text.push_str(&s);
        text.push('\n');
        count += 1;
    };
    // Set-wide policies, unconstrained in some part.
    add(
        &mut text,
        r#"permit(principal, action, resource) when { principal has level && principal.level > 8 };"#
            .to_string(),
    );
    add(
        &mut text,
        r#"forbid(principal, action == Action::"delete", resource) when { resource.locked };"#
            .to_string(),
    );
    add(
        &mut text,
        r#"permit(principal, action in Action::"readers", resource) when { resource.owner == principal };"#
            .to_string(),
    );
    for t in 0..tenants {
        let tn = format!("t{t}");
        let groups = 1 + rng.below(3);
        let folders = 1 + rng.below(3);
        let users = 2 + rng.below(4);
        let docs = 2 + rng.below(5);
        entities.push(json!({"uid": uid("Tenant", &tn), "attrs": {}, "parents": []}));
        for g in 0..groups {
            // Nested groups: g1 in g0, g2 in g1.
            let parent = if g == 0 {
                uid("Tenant", &tn)
            } else {
                uid("Group", &format!("{tn}-g{}", g - 1))
            };
            entities.push(json!({"uid": uid("Group", &format!("{tn}-g{g}")), "attrs": {}, "parents": [parent]}));
        }
        for f in 0..folders {
            entities.push(json!({"uid": uid("Folder", &format!("{tn}-f{f}")), "attrs": {}, "parents": [uid("Tenant", &tn)]}));
        }
        for u in 0..users {
            let mut attrs = serde_json::Map::new();
            if !rng.chance(20) {
                attrs.insert("level".into(), json!(rng.below(10)));
            }
            let parent = if rng.chance(70) {
                uid("Group", &format!("{tn}-g{}", rng.below(groups)))
            } else {
                uid("Tenant", &tn)
            };
            entities.push(json!({"uid": uid("User", &format!("{tn}-u{u}")), "attrs": attrs, "parents": [parent]}));
        }
        for d in 0..docs {
            let mut attrs = serde_json::Map::new();
            attrs.insert(
                "owner".into(),
                json!({"__entity": uid("User", &format!("{tn}-u{}", rng.below(users)))}),
            );
            if !rng.chance(25) {
                attrs.insert("locked".into(), json!(rng.chance(30)));
            }
            attrs.insert("tags".into(), json!([format!("{tn}"), "shared"]));
            entities.push(json!({
                "uid": uid("Doc", &format!("{tn}-d{d}")),
                "attrs": attrs,
                "parents": [uid("Folder", &format!("{tn}-f{}", rng.below(folders)))],
            }));
        }
        let g = rng.below(groups);
        let f = rng.below(folders);
        let u = rng.below(users);
        let d = rng.below(docs);
        let u2 = rng.below(users);
        let policies = [
            format!(
                r#"permit(principal in Tenant::"{tn}", action in Action::"readers", resource in Tenant::"{tn}");"#
            ),
            format!(
                r#"permit(principal in Group::"{tn}-g{g}", action in [Action::"write", Action::"list"], resource in Folder::"{tn}-f{f}") when {{ principal.level >= 2 }};"#
            ),
            format!(
                r#"permit(principal is User in Tenant::"{tn}", action == Action::"write", resource is Doc in Tenant::"{tn}") when {{ resource.owner == principal }};"#
            ),
            format!(
                r#"forbid(principal == User::"{tn}-u{u}", action, resource in Tenant::"{tn}") unless {{ context.token == "{tn}" }};"#
            ),
            format!(
                r#"permit(principal is User, action == Action::"delete", resource == Doc::"{tn}-d{d}") when {{ principal.level > User::"{tn}-u{u2}".level }};"#
            ),
            format!(
                r#"permit(principal, action, resource is Doc) when {{ resource.owner.level > 6 && resource in Tenant::"{tn}" }};"#
            ),
            format!(
                r#"forbid(principal in Group::"{tn}-g0", action == Action::"delete", resource is Folder);"#
            ),
            format!(
                r#"permit(principal, action == Action::"list", resource) when {{ principal in Group::"{tn}-g{g}" && resource.tags.contains("{tn}") }};"#
            ),
        ];
        for p in policies {
            if rng.chance(75) {
                add(&mut text, p);
            }
        }
    }
    let generated = Generated {
        policies: text,
        entities: Json::Array(entities.clone()),
        policy_count: count,
    };
    (generated, entities)
}

/// A random request against a [`varied`] set whose entities are `stored`.
/// Some requests carry entities: new ones, identical copies of stored ones,
/// and conflicting ones.
pub fn varied_request(rng: &mut Rng, tenants: usize, stored: &[Json]) -> GenRequest {
    let t = rng.below(tenants + 1); // one past the last: an unknown tenant
    let pick = |rng: &mut Rng, kind: &str| {
        (
            kind.to_string(),
            format!("t{t}-{}{}", &kind[..1].to_lowercase(), rng.below(6)),
        )
    };
    let mut principal = if rng.chance(10) {
        ("Group".to_string(), format!("t{t}-g0"))
    } else {
        pick(rng, "User")
    };
    let actions = ["read", "list", "write", "delete", "readers", "other"];
    let action = (
        "Action".to_string(),
        actions[rng.below(actions.len())].to_string(),
    );
    let mut resource = match rng.below(10) {
        0 => ("Folder".to_string(), format!("t{t}-f{}", rng.below(3))),
        1 => ("Tenant".to_string(), format!("t{t}")),
        _ => pick(rng, "Doc"),
    };
    let mut context = serde_json::Map::new();
    if rng.chance(80) {
        context.insert("token".into(), json!(format!("t{}", rng.below(tenants))));
    }
    if rng.chance(10) {
        context.insert(
            "who".into(),
            json!({"__entity": uid("User", &format!("t{t}-u0"))}),
        );
    }
    let mut entities = Vec::new();
    match rng.below(6) {
        // A principal the store does not know, in a stored group.
        0 => {
            principal.1.push_str("-new");
            entities.push(json!({
                "uid": uid(&principal.0, &principal.1),
                "attrs": {"level": rng.below(10)},
                "parents": [uid("Group", &format!("t{t}-g0"))],
            }));
        }
        // A resource that names a stored owner.
        1 => {
            resource = ("Doc".to_string(), format!("t{t}-new"));
            entities.push(json!({
                "uid": uid("Doc", &resource.1),
                "attrs": {"owner": {"__entity": uid("User", &format!("t{t}-u1"))}, "locked": false, "tags": []},
                "parents": [uid("Folder", &format!("t{t}-f0"))],
            }));
        }
        // A copy of a stored entity: identical, or altered (a conflict).
        2 => {
            let mut copy = stored[rng.below(stored.len())].clone();
            if rng.chance(50) {
                copy["attrs"]["level"] = json!(42);
            }
            entities.push(copy);
        }
        _ => {}
    }
    GenRequest {
        principal,
        action,
        resource,
        context,
        entities,
    }
}
