//! Who is calling: SPIFFE IDs, and the facts a connection proves about its
//! peer (a verified client certificate, or a Unix socket's peer credentials).

use std::net::SocketAddr;

use serde::Serialize;
use serde_json::{Value as Json, json};

/// A parsed `spiffe://<trust-domain>/<path>` ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpiffeId {
    /// The whole ID, as presented.
    pub id: String,
    pub trust_domain: String,
    /// From a `/ns/<namespace>/sa/<service account>` path; empty otherwise.
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("must start with `spiffe://`")]
    Scheme,
    #[error("the trust domain is empty or has characters other than a-z 0-9 . - _")]
    TrustDomain,
    #[error("the path has an empty, `.` or `..` segment, a query or a fragment")]
    Path,
}

impl SpiffeId {
    /// Parses `id` by the SPIFFE ID rules (lower-case trust domain, clean path).
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        let rest = id.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !trust_domain.is_empty()
            && trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return Err(SpiffeIdError::TrustDomain);
        }
        let segments: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        let path_ok = segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
        if !path_ok {
            return Err(SpiffeIdError::Path);
        }
        let (namespace, service_account) = match segments.as_slice() {
            ["ns", ns, "sa", sa] => (ns.to_string(), sa.to_string()),
            _ => (String::new(), String::new()),
        };
        Ok(Self {
            id: id.to_string(),
            trust_domain: trust_domain.to_string(),
            namespace,
            service_account,
        })
    }
}

/// A Unix socket peer's credentials, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UnixPeer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// What the transport proved about one connection's peer. Cheap to clone;
/// it rides in every request's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFacts {
    /// The TCP peer address.
    pub addr: Option<SocketAddr>,
    /// From a client certificate that chained to the trust bundle.
    pub spiffe: Option<SpiffeId>,
    pub unix: Option<UnixPeer>,
}

impl PeerFacts {
    /// Whether anything beyond the address is known.
    pub fn is_verified(&self) -> bool {
        self.spiffe.is_some() || self.unix.is_some()
    }

    /// The record policies see under `context.<caller key>`. Only the facts
    /// this transport proved are present, so `has` tells them apart.
    pub fn to_context(&self) -> Json {
        let mut record = serde_json::Map::new();
        if let Some(s) = &self.spiffe {
            record.insert("spiffe_id".into(), json!(s.id));
            record.insert("trust_domain".into(), json!(s.trust_domain));
            record.insert("namespace".into(), json!(s.namespace));
            record.insert("service_account".into(), json!(s.service_account));
        }
        if let Some(u) = &self.unix {
            record.insert("uid".into(), json!(u.uid));
            record.insert("gid".into(), json!(u.gid));
            if let Some(pid) = u.pid {
                record.insert("pid".into(), json!(pid));
            }
        }
        Json::Object(record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn parses_kubernetes_style_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/frontend").unwrap();
        assert_eq!(id.trust_domain, "example.org");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.service_account, "frontend");
        let other = SpiffeId::parse("spiffe://example.org/db/primary").unwrap();
        assert_eq!(other.namespace, "");
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
    }

    #[test]
    fn rejects_malformed_ids() {
        for (id, err) in [
            ("https://example.org/x", SpiffeIdError::Scheme),
            ("spiffe:///ns/a/sa/b", SpiffeIdError::TrustDomain),
            ("spiffe://Example.org/a", SpiffeIdError::TrustDomain),
            ("spiffe://example.org/ns//sa/b", SpiffeIdError::Path),
            ("spiffe://example.org/ns/../sa/b", SpiffeIdError::Path),
            ("spiffe://example.org/a?b=c", SpiffeIdError::Path),
            ("spiffe://example.org/", SpiffeIdError::Path),
        ] {
            assert_eq!(SpiffeId::parse(id), Err(err), "{id}");
        }
    }

    #[test]
    fn context_holds_only_proved_facts() {
        let facts = PeerFacts {
            unix: Some(UnixPeer {
                uid: 1000,
                gid: 1000,
                pid: Some(42),
            }),
            ..PeerFacts::default()
        };
        assert_eq!(
            facts.to_context(),
            json!({"uid": 1000, "gid": 1000, "pid": 42})
        );
    }
}
