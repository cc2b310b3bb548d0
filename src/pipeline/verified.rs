//! What the server proves about a request while screening it: the verified
//! tokens and the subject token's claims, the delegation chain as the tokens
//! rewrote it, and the server's time. Screening returns them as one value
//! beside the request, which stays what the caller sent.

use std::time::SystemTime;

use serde_json::{Map, Value as Json};

use super::request::{DecisionRequest, DelegationHop};

/// [`TokenFacts::kind`] of the subject token.
pub(super) const SUBJECT: &str = "subject";

/// A verified token, as the record names it (never the token itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// `subject` or `actor`.
    pub kind: &'static str,
    pub issuer: String,
    pub subject: String,
    pub jti: Option<String>,
    /// The key that verified it.
    pub kid: String,
    /// A subject token's `scope`: what it grants (`[]` when it carries none).
    pub scopes: Option<Vec<String>>,
    /// A subject token's binding to the principal.
    pub binding: Option<Binding>,
}

/// How a subject token names the request's principal. A token that does
/// not still verifies, but its chain is not `verified` for policies: a
/// token alice gave one agent must not pass for a grant to any principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The current actor, `act.sub`, is the principal.
    Act,
    /// `may_act.sub` lets the principal act for the subject.
    MayAct,
    /// `sub` is the principal itself.
    Subject,
    /// Nothing in the token names the principal.
    Unbound,
}

impl Binding {
    /// The record's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Act => "act",
            Self::MayAct => "may_act",
            Self::Subject => "subject",
            Self::Unbound => "none",
        }
    }

    pub fn holds(self) -> bool {
        self != Self::Unbound
    }
}

/// The server-proven facts of one request. Screening fills them in as it
/// proves them, so a request refused halfway is recorded with what was
/// proven before the refusal.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Verified {
    /// The verified tokens, as the record names them; set once all verify.
    pub tokens: Vec<TokenFacts>,
    /// The subject token's claims, for `context.token`.
    pub claims: Option<Map<String, Json>>,
    /// The chain the subject token made of the request's own; `None`: the
    /// request's own stands.
    pub chain: Option<Vec<DelegationHop>>,
    /// With `evaluation.server_time_key`: that key and the server's time
    /// (RFC 3339, whole seconds) when it screened the request, so the cache
    /// keys on the same second the policies see.
    pub server_time: Option<(String, String)>,
    /// The instant the request was judged at, if it read the clock:
    /// template links' windows are judged at the same instant as its tokens
    /// and chain.
    pub now: Option<SystemTime>,
}

impl Verified {
    /// Nothing proven: a request not (or not yet) screened.
    pub(super) const NONE: Self = Self {
        tokens: Vec::new(),
        claims: None,
        chain: None,
        server_time: None,
        now: None,
    };

    /// The verified subject token, which made `chain`: what it grants and
    /// whom it binds.
    pub(super) fn subject_token(&self) -> Option<&TokenFacts> {
        self.tokens.iter().find(|t| t.kind == SUBJECT)
    }

    /// The delegation chain the server holds `req` to.
    pub(super) fn chain<'a>(&'a self, req: &'a DecisionRequest) -> &'a [DelegationHop] {
        self.chain.as_deref().unwrap_or(&req.delegation)
    }
}
