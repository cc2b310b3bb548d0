//! What verified tokens make of a request: the subject token's `sub` is the
//! delegation origin and its nested `act` claims the earlier actors (the
//! outermost `act`, the current actor, must be the principal); the actor
//! token's `sub` must be the principal; the subject token's visible claims
//! become `context.token`; the record names each token, never quotes it.

use std::time::SystemTime;

use super::error::{DecisionError, InvalidField};
use super::request::{DecisionRequest, DelegationHop, Uid};
use super::verified::{Binding, SUBJECT, TokenFacts, Verified};
use crate::tokens::{self, TokenVerifier};

fn verify_one(
    verifier: &TokenVerifier,
    field: &'static str,
    token: &str,
    now: SystemTime,
) -> Result<tokens::Verified, DecisionError> {
    verifier
        .verify(token, now)
        .map_err(|e| DecisionError::token(field, e.to_string()))
}

fn facts(kind: &'static str, v: &tokens::Verified) -> TokenFacts {
    TokenFacts {
        kind,
        issuer: v.issuer.clone(),
        subject: v.subject.clone(),
        jti: v.jti.clone(),
        kid: v.kid.clone(),
        scopes: None,
        binding: None,
    }
}

/// How the subject token names `principal`. A token that names someone
/// else (`act.sub`, or `may_act.sub` without `act`) is refused; one that
/// names no one is [`Binding::Unbound`], which policies see as an
/// unverified chain.
fn bind(
    subject: &tokens::Verified,
    actor_type: &str,
    principal: &Uid,
) -> Result<Binding, DecisionError> {
    let (named, claim, binding) = if let Some(current) = subject.actors.first() {
        (
            Uid::new(actor_type, current),
            "the current actor (`act.sub`)",
            Binding::Act,
        )
    } else if let Some(may) = &subject.may_act {
        (
            Uid::new(actor_type, may),
            "who may act for it (`may_act.sub`)",
            Binding::MayAct,
        )
    } else if Uid::new(&subject.principal_type, &subject.subject) == *principal {
        return Ok(Binding::Subject);
    } else {
        return Ok(Binding::Unbound);
    };
    if named != *principal {
        return Err(DecisionError::binding(
            "subject_token",
            format!(
                "names {claim} `{}`, not the principal `{}`",
                named.display(),
                principal.display()
            ),
        ));
    }
    Ok(binding)
}

/// Verifies the request's tokens into `verified`: the tokens, the subject
/// token's claims, and the chain it makes of the request's own. Without a
/// verifier any token is refused: nothing meant to be checked goes
/// unchecked.
pub(super) fn verify(
    verifier: Option<&TokenVerifier>,
    req: &DecisionRequest,
    now: SystemTime,
    verified: &mut Verified,
) -> Result<(), DecisionError> {
    if req.subject_token.is_empty() && req.actor_token.is_empty() {
        return Ok(());
    }
    let Some(verifier) = verifier else {
        let field = if req.subject_token.is_empty() {
            "actor_token"
        } else {
            "subject_token"
        };
        return Err(DecisionError::token(
            field,
            "no token issuer is configured (`[[tokens.issuers]]`), so it cannot be verified",
        ));
    };
    let principal = req
        .principal
        .clone()
        .ok_or_else(|| DecisionError::invalid(InvalidField::new("principal", "is required")))?;
    let mut tokens = Vec::new();
    if !req.actor_token.is_empty() {
        let actor = verify_one(verifier, "actor_token", &req.actor_token, now)?;
        let named = Uid::new(&actor.principal_type, &actor.subject);
        if named != principal {
            return Err(DecisionError::binding(
                "actor_token",
                format!(
                    "names `{}`, not the principal `{}`",
                    named.display(),
                    principal.display()
                ),
            ));
        }
        tokens.push(facts("actor", &actor));
    }
    if !req.subject_token.is_empty() {
        let subject = verify_one(verifier, "subject_token", &req.subject_token, now)?;
        let actor_type = verifier
            .actor_type(&subject.issuer)
            .unwrap_or(&principal.type_name)
            .to_string();
        let binding = bind(&subject, &actor_type, &principal)?;
        let hop = |delegator: Uid, scopes: Vec<String>| DelegationHop {
            delegator,
            scopes,
            expires_at: Some(subject.expires_at),
            purpose: String::new(),
            verified: true,
        };
        // The origin, then the earlier actors, earliest first; the current
        // actor is the principal, which the chain delegates to.
        // A token grants the scopes it carries: none, when it carries none.
        let granted = subject.scopes.clone().unwrap_or_default();
        let mut chain = vec![hop(
            Uid::new(&subject.principal_type, &subject.subject),
            granted.clone(),
        )];
        for earlier in subject.actors.iter().skip(1).rev() {
            chain.push(hop(Uid::new(&actor_type, earlier), Vec::new()));
        }
        match combine(chain, &granted, req.delegation.clone()) {
            Ok(chain) => verified.chain = Some(chain),
            Err(e) => {
                // The sent chain contradicts the token's: the record names
                // neither.
                verified.chain = Some(Vec::new());
                return Err(e);
            }
        }
        verified.claims = Some(subject.claims.clone());
        let mut named = facts(SUBJECT, &subject);
        named.scopes = Some(granted);
        named.binding = Some(binding);
        tokens.push(named);
    }
    verified.tokens = tokens;
    Ok(())
}

/// The token's chain, with what the request's own `delegation` adds: it
/// must name the same delegators in the same order, and may only narrow
/// (scopes within what the token `granted`, an earlier expiry) and give
/// purposes.
fn combine(
    token: Vec<DelegationHop>,
    granted: &[String],
    sent: Vec<DelegationHop>,
) -> Result<Vec<DelegationHop>, DecisionError> {
    if sent.is_empty() {
        return Ok(token);
    }
    let contradicts = |i: usize, what: String| {
        DecisionError::delegation(InvalidField::new(
            format!("delegation[{i}]"),
            format!("contradicts the subject token's chain: {what}"),
        ))
    };
    if sent.len() != token.len() {
        return Err(contradicts(
            0,
            format!(
                "{} hops were sent, the token has {}",
                sent.len(),
                token.len()
            ),
        ));
    }
    token
        .into_iter()
        .zip(sent)
        .enumerate()
        .map(|(i, (mut t, s))| {
            if s.delegator != t.delegator {
                return Err(contradicts(
                    i,
                    format!(
                        "`{}` was sent, the token says `{}`",
                        s.delegator.display(),
                        t.delegator.display()
                    ),
                ));
            }
            if !s.scopes.is_empty() {
                if let Some(wider) = s.scopes.iter().find(|x| !granted.contains(x)) {
                    return Err(contradicts(
                        i,
                        format!("scope `{wider}` is not in the token's `scope`"),
                    ));
                }
                t.scopes = s.scopes;
            }
            t.expires_at = match (t.expires_at, s.expires_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            t.purpose = s.purpose;
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::time::Duration;

    use super::*;
    use crate::pipeline::Reason;

    fn hop(id: &str, scopes: &[&str]) -> DelegationHop {
        DelegationHop {
            delegator: Uid::new("User", id),
            scopes: scopes.iter().map(ToString::to_string).collect(),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            purpose: String::new(),
            verified: true,
        }
    }

    #[test]
    fn a_sent_chain_may_narrow_the_token_but_not_contradict_it() {
        let token = vec![hop("alice", &["read", "write"])];
        let mut narrower = hop("alice", &["read"]);
        narrower.verified = false;
        narrower.purpose = "summarize".into();
        narrower.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(50));
        let granted = ["read".to_string(), "write".to_string()];
        let got = combine(token.clone(), &granted, vec![narrower.clone()]).unwrap();
        assert_eq!(got[0].scopes, ["read"]);
        assert_eq!(got[0].purpose, "summarize");
        assert!(got[0].verified);
        assert_eq!(
            got[0].expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(50))
        );
        for sent in [
            vec![hop("bob", &[])],
            vec![hop("alice", &["admin"])],
            vec![hop("alice", &[]), hop("agent", &[])],
        ] {
            let e = combine(token.clone(), &granted, sent).unwrap_err();
            assert_eq!(e.reason, Reason::DelegationInvalid, "{e}");
            assert!(e.message.contains("contradicts"), "{e}");
        }
        // A token without `scope` grants none: a sent hop cannot add any.
        let e = combine(vec![hop("alice", &[])], &[], vec![narrower]).unwrap_err();
        assert!(e.message.contains("not in the token's `scope`"), "{e}");
    }
}
