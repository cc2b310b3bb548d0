//! Delegation: who the principal acts for, along which chain, why, and for
//! how long. The server holds the chain to its rules before evaluation
//! (depth, expiry by the server's clock, scopes that only narrow) and gives
//! policies one record, `context.delegation`, because Cedar has no ordered
//! list: the ordered chain goes to the decision record.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cedar_policy::EntityUid;
use serde_json::{Map, Value as Json, json};

use super::error::{DecisionError, InvalidField};
use super::request::DelegationHop;
use super::verified::{Binding, TokenFacts};

/// How the server bounds delegation chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelegationRules {
    /// Hops at most.
    pub max_depth: usize,
    /// Scopes one hop may list at most.
    pub max_scopes: usize,
}

fn invalid(field: String, message: impl Into<String>) -> DecisionError {
    DecisionError::delegation(InvalidField::new(field, message))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): later times
/// are written as it, never passed to the formatter, which panics on them.
pub(crate) const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// RFC 3339 in UTC, seconds and (when not whole) milliseconds, as Cedar's
/// `datetime` parses it. A time past the year 9999 is written as its last
/// second.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let since = if since.as_secs() > LAST_RFC3339_SECOND {
        Duration::from_secs(LAST_RFC3339_SECOND)
    } else {
        since
    };
    let stamp =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(since.as_secs()));
    match since.subsec_millis() {
        0 => stamp.to_string(),
        ms => format!("{}.{ms:03}Z", stamp.to_string().trim_end_matches('Z')),
    }
}

/// Holds `hops` to `rules` at `now`: at most `max_depth` hops, none expired,
/// and scopes that only narrow: a hop may list only scopes that every
/// earlier hop that lists any also lists.
pub(super) fn check(
    hops: &[DelegationHop],
    rules: DelegationRules,
    now: SystemTime,
) -> Result<(), DecisionError> {
    if hops.len() > rules.max_depth {
        return Err(invalid(
            "delegation".into(),
            format!(
                "{} hops; the limit is {} (`delegation.max_depth`)",
                hops.len(),
                rules.max_depth
            ),
        ));
    }
    let mut granted: Option<&[String]> = None;
    for (i, hop) in hops.iter().enumerate() {
        let field = |f: &str| format!("delegation[{i}].{f}");
        if hop.delegator.type_name.is_empty() {
            return Err(invalid(field("delegator"), "is required"));
        }
        if let Some(expires) = hop.expires_at
            && expires <= now
        {
            return Err(invalid(
                field("expires_at"),
                format!(
                    "expired at {} (server time {})",
                    rfc3339(expires),
                    rfc3339(now)
                ),
            ));
        }
        if hop.scopes.len() > rules.max_scopes {
            return Err(invalid(
                field("scopes"),
                format!(
                    "{} scopes; the limit is {} (`delegation.max_scopes`)",
                    hop.scopes.len(),
                    rules.max_scopes
                ),
            ));
        }
        if hop.scopes.is_empty() {
            continue;
        }
        if let Some(earlier) = granted
            && let Some(wider) = hop.scopes.iter().find(|s| !earlier.contains(s))
        {
            return Err(invalid(
                field("scopes"),
                format!("widens the chain: `{wider}` was not delegated by an earlier hop"),
            ));
        }
        granted = Some(&hop.scopes);
    }
    Ok(())
}

fn entity(uid: &EntityUid) -> Json {
    json!({"__entity": {"type": uid.type_name().to_string(), "id": uid.id().unescaped()}})
}

/// `context.delegation` for `principal` and `hops` (checked, and with
/// their delegators parsed into `delegators`): the origin, the depth, every
/// actor, the effective scopes (absent when no hop narrows), the earliest
/// expiry (absent when no hop expires), the purposes given, and whether
/// every hop came from a verified `token` that names the principal.
///
/// With a token, the scopes are at most what it grants: `[]` when it
/// grants none, even with no hop narrowing.
///
/// `actors` are `Type::"id"` strings, not entities: a chain mixes people
/// and agents, and under a schema a Cedar set holds one type.
pub(super) fn context(
    principal: &EntityUid,
    hops: &[DelegationHop],
    delegators: &[EntityUid],
    token: Option<&TokenFacts>,
) -> Json {
    let mut record = Map::new();
    if let Some(origin) = delegators.first() {
        record.insert("origin".into(), entity(origin));
    }
    record.insert("depth".into(), json!(hops.len()));
    let actors: BTreeSet<String> = delegators
        .iter()
        .chain(std::iter::once(principal))
        .map(ToString::to_string)
        .collect();
    record.insert("actors".into(), json!(actors));
    // Checked: each narrowing hop lists a subset of the one before, so the
    // last one is the intersection.
    // Every sent hop is within the token's grant (`token_claims::combine`).
    let narrowest = hops.iter().rev().find(|h| !h.scopes.is_empty());
    let granted = token.and_then(|t| t.scopes.as_ref());
    if let Some(scopes) = narrowest.map(|h| &h.scopes).or(granted) {
        let scopes: BTreeSet<&String> = scopes.iter().collect();
        record.insert("scopes".into(), json!(scopes));
    }
    if let Some(earliest) = hops.iter().filter_map(|h| h.expires_at).min() {
        record.insert(
            "expires_at".into(),
            json!({"__extn": {"fn": "datetime", "arg": rfc3339(earliest)}}),
        );
    }
    let purposes: BTreeSet<&String> = hops
        .iter()
        .map(|h| &h.purpose)
        .filter(|p| !p.is_empty())
        .collect();
    record.insert("purposes".into(), json!(purposes));
    record.insert("verified".into(), json!(verified(hops, token)));
    Json::Object(record)
}

/// Whether every hop of `hops` came from a verified `token` (the subject
/// token that made the chain, if any) that names the principal.
pub(super) fn verified(hops: &[DelegationHop], token: Option<&TokenFacts>) -> bool {
    let bound = token.is_none_or(|t| t.binding.is_none_or(Binding::holds));
    bound && hops.iter().all(|h| h.verified)
}

/// The chain as the decision record carries it, in order.
pub(super) fn record(hops: &[DelegationHop]) -> Json {
    Json::Array(
        hops.iter()
            .map(|h| {
                let mut hop = json!({
                    "delegator": {"type": h.delegator.type_name, "id": h.delegator.id},
                    "scopes": h.scopes,
                    "purpose": h.purpose,
                    "verified": h.verified,
                });
                if let Some(t) = h.expires_at {
                    hop["expires_at"] = json!(rfc3339(t));
                }
                hop
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::str::FromStr;

    use super::*;
    use crate::pipeline::{Reason, Uid};

    const RULES: DelegationRules = DelegationRules {
        max_depth: 3,
        max_scopes: 4,
    };

    fn hop(id: &str, scopes: &[&str], expires_in: Option<i64>, now: SystemTime) -> DelegationHop {
        DelegationHop {
            delegator: Uid::new("User", id),
            scopes: scopes.iter().map(ToString::to_string).collect(),
            expires_at: expires_in.map(|s| {
                if s >= 0 {
                    now + Duration::from_secs(s.unsigned_abs())
                } else {
                    now - Duration::from_secs(s.unsigned_abs())
                }
            }),
            purpose: String::new(),
            verified: false,
        }
    }

    fn field(r: Result<(), DecisionError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.reason, Reason::DelegationInvalid);
        e.field.unwrap()
    }

    #[test]
    fn a_time_past_the_year_9999_is_written_as_its_last_second() {
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let ms = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(ms), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn the_rules_hold_depth_expiry_and_narrowing() {
        let now = SystemTime::now();
        let ok = [
            hop("alice", &["read", "write"], Some(60), now),
            hop("agent", &[], None, now),
            hop("tool", &["read"], Some(30), now),
        ];
        check(&ok, RULES, now).unwrap();
        let deep: Vec<_> = (0..4)
            .map(|i| hop(&i.to_string(), &[], None, now))
            .collect();
        assert_eq!(field(check(&deep, RULES, now)), "delegation");
        let expired = [hop("alice", &[], Some(-1), now)];
        assert_eq!(
            field(check(&expired, RULES, now)),
            "delegation[0].expires_at"
        );
        // Expiry is by the server's clock: a hop valid now fails later.
        check(&ok, RULES, now + Duration::from_secs(29)).unwrap();
        assert_eq!(
            field(check(&ok, RULES, now + Duration::from_secs(30))),
            "delegation[2].expires_at"
        );
        // A scope the earlier non-empty hop did not grant widens the chain,
        // even past a hop that does not narrow.
        let widening = [
            hop("alice", &["read"], None, now),
            hop("agent", &[], None, now),
            hop("tool", &["read", "write"], None, now),
        ];
        assert_eq!(field(check(&widening, RULES, now)), "delegation[2].scopes");
        let many = [hop("alice", &["a", "b", "c", "d", "e"], None, now)];
        assert_eq!(field(check(&many, RULES, now)), "delegation[0].scopes");
        let anonymous = [DelegationHop::default()];
        assert_eq!(
            field(check(&anonymous, RULES, now)),
            "delegation[0].delegator"
        );
    }

    #[test]
    fn policies_see_one_record() {
        let now = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let mut hops = vec![
            hop("alice", &["read", "write"], Some(600), now),
            hop("agent", &["read"], Some(60), now),
        ];
        hops[0].purpose = "support".into();
        let uids: Vec<EntityUid> = hops
            .iter()
            .map(|h| h.delegator.parse("d").unwrap())
            .collect();
        let principal = EntityUid::from_str(r#"Agent::"tool""#).unwrap();
        let c = context(&principal, &hops, &uids, None);
        assert_eq!(
            c["origin"],
            json!({"__entity": {"type": "User", "id": "alice"}})
        );
        assert_eq!(c["depth"], 2);
        assert_eq!(
            c["actors"],
            json!([r#"Agent::"tool""#, r#"User::"agent""#, r#"User::"alice""#])
        );
        assert_eq!(c["verified"], false);
        assert_eq!(c["scopes"], json!(["read"]));
        assert_eq!(
            c["expires_at"],
            json!({"__extn": {"fn": "datetime", "arg": rfc3339(now + Duration::from_secs(60))}})
        );
        assert_eq!(c["purposes"], json!(["support"]));
        // No hop narrows or expires: no scopes, no expiry.
        let plain = [hop("alice", &[], None, now)];
        let c = context(&principal, &plain, &uids[..1], None);
        assert!(
            c.get("scopes").is_none() && c.get("expires_at").is_none(),
            "{c}"
        );
        // A token grants what it carries, none when it carries none; one
        // that does not name the principal leaves the chain unverified.
        let mut verified = plain.clone();
        verified[0].verified = true;
        for (binding, holds) in [(Binding::Act, true), (Binding::Unbound, false)] {
            let token = TokenFacts {
                kind: super::super::verified::SUBJECT,
                scopes: Some(Vec::new()),
                binding: Some(binding),
                ..TokenFacts::default()
            };
            let c = context(&principal, &verified, &uids[..1], Some(&token));
            assert_eq!(c["scopes"], json!([]), "{c}");
            assert_eq!(c["verified"], holds, "{binding:?}: {c}");
        }
    }

    #[test]
    fn times_are_what_cedar_parses() {
        let t = UNIX_EPOCH + Duration::from_millis(1_780_000_000_250);
        assert_eq!(rfc3339(t), "2026-05-28T20:26:40.250Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_780_000_000)),
            "2026-05-28T20:26:40Z"
        );
    }
}
