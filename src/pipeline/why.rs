//! Why a deny is one, in words, for every front-end's answer: which
//! forbid won, or that no permit matched, and what else stood in the way:
//! a grant outside its window, a delegation chain that is not verified.

use super::delegation::rfc3339;
use crate::engine::{Decision, GrantState};

/// The reasons for `decision`, `; `-separated; empty for an allow.
pub(crate) fn why(decision: &Decision, unverified_chain: bool) -> String {
    if decision.allow {
        return String::new();
    }
    let mut parts = vec![if decision.determining_policies.is_empty() {
        "no permit matched".to_string()
    } else {
        let ids: Vec<String> = decision
            .determining_policies
            .iter()
            .map(|id| format!("`{id}`"))
            .collect();
        format!("forbidden by {}", ids.join(", "))
    }];
    for grant in &decision.inactive_grants {
        let at = grant.at.map(rfc3339).unwrap_or_default();
        parts.push(match grant.state {
            GrantState::Pending => format!("grant `{}` is pending until {at}", grant.policy_id),
            _ => format!("grant `{}` expired at {at}", grant.policy_id),
        });
    }
    if unverified_chain {
        parts.push("the delegation chain is not verified".to_string());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::engine::InactiveGrant;

    fn deny(policies: &[&str]) -> Decision {
        Decision {
            allow: false,
            determining_policies: policies.iter().map(ToString::to_string).collect(),
            errors: Vec::new(),
            dropped_properties: Vec::new(),
            shadow: None,
            changes_at: None,
            inactive_grants: Vec::new(),
        }
    }

    #[test]
    fn a_deny_says_why() {
        assert_eq!(why(&deny(&[]), false), "no permit matched");
        assert_eq!(why(&deny(&["f", "g"]), false), "forbidden by `f`, `g`");
        let mut pending = deny(&[]);
        pending.inactive_grants.push(InactiveGrant {
            policy_id: "grant-1".into(),
            state: GrantState::Pending,
            at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)),
        });
        assert_eq!(
            why(&pending, true),
            "no permit matched; grant `grant-1` is pending until 2026-05-28T20:26:40Z; the delegation chain is not verified"
        );
        let mut allow = deny(&[]);
        allow.allow = true;
        assert_eq!(why(&allow, true), "");
    }
}
