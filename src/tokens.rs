//! Verified tokens: JWTs from configured issuers, checked against the keys
//! of each issuer's JWKS file (reloaded when it changes), with
//! jsonwebtoken's RustCrypto backend. Only RS256, ES256 and EdDSA are
//! accepted; `none` and HMAC never are. A key is chosen by `kid`, with no
//! fallback to trying every key. Errors say which check failed and never
//! quote the token.
//!
//! A leaf: the pipeline turns a [`Verified`] token into delegation hops,
//! `context.token` and the record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::config::{IssuerConfig, TokensConfig};

/// The signature algorithms a token may use.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Why a token was refused. The message names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is not a JWT (three base64url parts with a JSON header and payload)")]
    Malformed,
    #[error("uses `{0}`; only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    #[error("has no `kid` in its header; keys are chosen by `kid`")]
    NoKeyId,
    #[error("names issuer `{0}`, which is not configured (`[[tokens.issuers]]`)")]
    UnknownIssuer(String),
    #[error("names key `{kid}`, which the JWKS of `{issuer}` does not hold")]
    UnknownKey { issuer: String, kid: String },
    #[error("uses `{alg}`, but key `{kid}` is for `{key_alg}`")]
    KeyAlgorithm {
        alg: String,
        kid: String,
        key_alg: String,
    },
    #[error("signature does not verify")]
    Signature,
    #[error("has expired (`exp`)")]
    Expired,
    #[error("is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("was issued in the future (`iat`)")]
    IssuedInFuture,
    #[error("is not for this server (`aud`)")]
    Audience,
    #[error("lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("has a claim of the wrong type: `{0}`")]
    ClaimFormat(String),
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub issuer: String,
    pub subject: String,
    /// The issuer's `principal_type`: the entity type of `subject`.
    pub principal_type: String,
    pub jti: Option<String>,
    /// The key that verified it.
    pub kid: String,
    pub expires_at: SystemTime,
    /// RFC 8693 `act`, outermost (the current actor) first.
    pub actors: Vec<String>,
    /// RFC 8693 `may_act.sub`: whom the subject lets act for it.
    pub may_act: Option<String>,
    /// `scope` (space-separated) as a list; `None` when absent.
    pub scopes: Option<Vec<String>>,
    /// The claims `tokens.claims` lets policies see.
    pub claims: Map<String, Json>,
}

/// One key of an issuer's JWKS.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one JWKS file by `kid`, and the file's digest.
struct KeySet {
    keys: HashMap<String, Key>,
    digest: [u8; 32],
}

struct Issuer {
    config: IssuerConfig,
    keys: ArcSwap<KeySet>,
}

/// Why a JWKS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a JWKS (`{{\"keys\": [...]}}`): {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// The configured issuers and their current keys.
pub struct TokenVerifier {
    issuers: Vec<Issuer>,
    skew: Duration,
    claims: Vec<String>,
    /// Serializes reloads.
    reloading: Mutex<()>,
    /// Tokens verified before, by their exact text.
    verified: quick_cache::sync::Cache<String, Arc<Remembered>, TokenBytes>,
}

/// Memory for verified tokens: an agent sends the same token on every call
/// until it expires, and a signature check costs more than the decision.
const VERIFIED_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// A verified token, and what its verification depended on: the time
/// checks are made again on every use, and a change of its issuer's keys
/// (a rotation that drops its key) forgets it.
struct Remembered {
    verified: Verified,
    issuer: usize,
    keys_digest: [u8; 32],
    not_before: Option<u64>,
    issued_at: Option<u64>,
    expires: u64,
}

#[derive(Clone)]
struct TokenBytes;

impl quick_cache::Weighter<String, Arc<Remembered>> for TokenBytes {
    fn weight(&self, token: &String, _: &Arc<Remembered>) -> u64 {
        // The token, and its claims again, decoded.
        (token.len() * 2 + 256) as u64
    }
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| &i.config.issuer)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The algorithm a JWK is for: its `alg` when it names one we accept, else
/// what its key type implies. HMAC (`oct`) keys and other curves are none.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(named) => Algorithm::try_from(named).ok().filter(|a| *a == implied),
    }
}

/// Reads a JWKS file: every usable key with a `kid`. A key that is not
/// usable (no `kid`, HMAC, another curve) is skipped with a warning.
fn read_jwks(path: &Path) -> Result<KeySet, JwksError> {
    let bytes = std::fs::read(path).map_err(|source| JwksError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_jwks(path, &bytes)
}

/// [`read_jwks`] on bytes already read from `path`.
fn parse_jwks(path: &Path, bytes: &[u8]) -> Result<KeySet, JwksError> {
    let parse = |reason: String| JwksError::Parse {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Json = serde_json::from_slice(bytes).map_err(|e| parse(e.to_string()))?;
    let entries = doc
        .get("keys")
        .and_then(Json::as_array)
        .ok_or_else(|| parse("no `keys` array".into()))?;
    let mut keys = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let usable = serde_json::from_value::<Jwk>(entry.clone())
            .ok()
            .and_then(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let alg = key_algorithm(&jwk)?;
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some((kid, Key { alg, key }))
            });
        match usable {
            Some((kid, key)) => {
                keys.insert(kid, key);
            }
            None => tracing::warn!(
                "{}: key {i} is skipped: it needs a `kid` and must be RSA, P-256 or Ed25519",
                path.display()
            ),
        }
    }
    Ok(KeySet {
        keys,
        digest: Sha256::digest(bytes).into(),
    })
}

fn seconds(claims: &Map<String, Json>, name: &str) -> Option<u64> {
    claims.get(name).and_then(Json::as_u64)
}

/// The `act` chain, outermost first; each `act` must have a `sub`.
fn actors(claims: &Map<String, Json>) -> Result<Vec<String>, TokenError> {
    let mut out = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        let sub = act
            .get("sub")
            .and_then(Json::as_str)
            .ok_or_else(|| TokenError::ClaimFormat("act.sub".into()))?;
        out.push(sub.to_string());
        // A chain longer than any sane delegation is refused, not walked.
        if out.len() > 64 {
            return Err(TokenError::ClaimFormat(
                "act (nested more than 64 deep)".into(),
            ));
        }
        next = act.get("act");
    }
    Ok(out)
}

/// `may_act.sub`, when the token names whom it lets act for its subject.
fn may_act(claims: &Map<String, Json>) -> Result<Option<String>, TokenError> {
    match claims.get("may_act") {
        None | Some(Json::Null) => Ok(None),
        Some(may) => may
            .get("sub")
            .and_then(Json::as_str)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| TokenError::ClaimFormat("may_act.sub".into())),
    }
}

/// `scope` as a list: a space-separated string, or an array of strings.
fn scopes(claims: &Map<String, Json>) -> Result<Option<Vec<String>>, TokenError> {
    match claims.get("scope") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.split_whitespace().map(str::to_string).collect())),
        Some(Json::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| TokenError::ClaimFormat("scope".into())),
        Some(_) => Err(TokenError::ClaimFormat("scope".into())),
    }
}

/// The token's `iss`, read before the signature is checked only to find
/// the issuer's keys; `decode` then requires that same `iss`.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let claims: Map<String, Json> = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| TokenError::Malformed)?;
    claims
        .get("iss")
        .and_then(Json::as_str)
        .map(str::to_string)
        .ok_or_else(|| TokenError::MissingClaim("iss".into()))
}

impl TokenVerifier {
    /// Loads every issuer's JWKS; `None` when no issuer is configured.
    pub fn load(config: &TokensConfig) -> Result<Option<Self>, JwksError> {
        if config.issuers.is_empty() {
            return Ok(None);
        }
        let issuers = config
            .issuers
            .iter()
            .map(|c| {
                Ok(Issuer {
                    keys: ArcSwap::from_pointee(read_jwks(&c.jwks_file)?),
                    config: c.clone(),
                })
            })
            .collect::<Result<_, JwksError>>()?;
        Ok(Some(Self {
            issuers,
            skew: config.clock_skew,
            claims: config.claims.clone(),
            reloading: Mutex::new(()),
            verified: quick_cache::sync::Cache::with_weighter(
                4096,
                VERIFIED_CACHE_BYTES,
                TokenBytes,
            ),
        }))
    }

    /// Re-reads the JWKS files that changed; `Ok(n)`: how many took new
    /// keys. A file that cannot be used keeps its issuer's old keys.
    pub fn reload(&self) -> Result<usize, JwksError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0;
        let mut first_error = None;
        for issuer in &self.issuers {
            let bytes = match std::fs::read(&issuer.config.jwks_file) {
                Ok(b) => b,
                Err(source) => {
                    first_error.get_or_insert(JwksError::Read {
                        path: issuer.config.jwks_file.clone(),
                        source,
                    });
                    continue;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if digest == issuer.keys.load().digest {
                continue;
            }
            match parse_jwks(&issuer.config.jwks_file, &bytes) {
                Ok(keys) => {
                    issuer.keys.store(Arc::new(keys));
                    changed += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Checks the JWKS files every `interval` until the task is aborted.
    pub fn spawn_watcher(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                let verifier = self.clone();
                match tokio::task::spawn_blocking(move || verifier.reload()).await {
                    Ok(Ok(0)) => failing = false,
                    Ok(Ok(n)) => {
                        failing = false;
                        tracing::info!("token keys reloaded from {n} JWKS file(s)");
                    }
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!("JWKS reload failed; keeping the current keys: {e}");
                        }
                        failing = true;
                    }
                    Err(e) => tracing::error!("JWKS reload task failed: {e}"),
                }
            }
        })
    }

    /// The `actor_type` configured for `issuer`, when one is.
    pub fn actor_type(&self, issuer: &str) -> Option<&str> {
        self.issuers
            .iter()
            .find(|i| i.config.issuer == issuer)
            .map(|i| i.config.actor_type.as_str())
            .filter(|t| !t.is_empty())
    }

    /// Verifies `token` at `now`: header, issuer, key by `kid`, signature,
    /// then `exp`, `nbf`, `iat` and `aud` within `tokens.clock_skew`.
    ///
    /// A token verified before is not checked again while its issuer's keys
    /// are the ones that verified it; its times are, at `now`, exactly as
    /// a first check makes them. Only successes are remembered.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Verified, TokenError> {
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if let Some(seen) = self.verified.get(token)
            && self.still_valid(&seen, now_s)
        {
            return Ok(seen.verified.clone());
        }
        let (verified, remembered) = self.verify_uncached(token, now)?;
        self.verified
            .insert(token.to_string(), Arc::new(remembered));
        Ok(verified)
    }

    /// Whether a remembered token verifies at `now_s` as it did: the same
    /// keys, and the time checks of [`TokenVerifier::verify_uncached`].
    fn still_valid(&self, seen: &Remembered, now_s: u64) -> bool {
        let skew = self.skew.as_secs();
        let keys = self
            .issuers
            .get(seen.issuer)
            .is_some_and(|i| i.keys.load().digest == seen.keys_digest);
        keys && seen.expires.saturating_add(skew) >= now_s
            && seen
                .not_before
                .is_none_or(|nbf| nbf <= now_s.saturating_add(skew))
            && seen
                .issued_at
                .is_none_or(|iat| iat <= now_s.saturating_add(skew))
    }

    fn verify_uncached(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Verified, Remembered), TokenError> {
        // An `alg` the library has no name for (`none`) fails to parse.
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| match algorithm_name(token) {
                Some(alg) if !ALGORITHMS.iter().any(|a| format!("{a:?}") == alg) => {
                    TokenError::Algorithm(alg)
                }
                _ => TokenError::Malformed,
            })?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.clone().ok_or(TokenError::NoKeyId)?;
        let iss = unverified_issuer(token)?;
        let (issuer_index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.clone()))?;
        let keys = issuer.keys.load();
        let key = keys.keys.get(&kid).ok_or_else(|| TokenError::UnknownKey {
            issuer: iss.clone(),
            kid: kid.clone(),
        })?;
        if key.alg != header.alg {
            return Err(TokenError::KeyAlgorithm {
                alg: format!("{:?}", header.alg),
                kid,
                key_alg: format!("{:?}", key.alg),
            });
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&iss]);
        validation.set_audience(&issuer.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.skew.as_secs();
        let data = jsonwebtoken::decode::<Map<String, Json>>(token, &key.key, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidIssuer => TokenError::UnknownIssuer(iss.clone()),
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
                ErrorKind::InvalidClaimFormat(c) => TokenError::ClaimFormat(c),
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm(format!("{:?}", header.alg)),
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if let Some(iat) = seconds(&claims, "iat")
            && iat > now_s.saturating_add(self.skew.as_secs())
        {
            return Err(TokenError::IssuedInFuture);
        }
        let exp = seconds(&claims, "exp").ok_or_else(|| TokenError::ClaimFormat("exp".into()))?;
        let subject = claims
            .get("sub")
            .and_then(Json::as_str)
            .ok_or_else(|| TokenError::ClaimFormat("sub".into()))?
            .to_string();
        let scopes = scopes(&claims)?;
        let mut visible = Map::new();
        for name in &self.claims {
            match (name.as_str(), claims.get(name)) {
                (_, None) => {}
                ("scope", Some(_)) => {
                    visible.insert(name.clone(), Json::from(scopes.clone().unwrap_or_default()));
                }
                (_, Some(v)) => {
                    visible.insert(name.clone(), v.clone());
                }
            }
        }
        let verified = Verified {
            issuer: iss,
            subject,
            principal_type: issuer.config.principal_type.clone(),
            jti: claims.get("jti").and_then(Json::as_str).map(str::to_string),
            kid,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            actors: actors(&claims)?,
            may_act: may_act(&claims)?,
            scopes,
            claims: visible,
        };
        let remembered = Remembered {
            verified: verified.clone(),
            issuer: issuer_index,
            keys_digest: keys.digest,
            not_before: seconds(&claims, "nbf"),
            issued_at: seconds(&claims, "iat"),
            expires: exp,
        };
        Ok((verified, remembered))
    }
}

/// The header's `alg` as sent (at most 16 characters), for the message
/// when it is not one the library knows (`none`, say).
fn algorithm_name(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: Json = serde_json::from_slice(&header).ok()?;
    Some(header.get("alg")?.as_str()?.chars().take(16).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::path::Path;

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const IDP: &str = "https://idp.example.org";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A verifier of the fixture RSA key, and a token it signed.
    fn setup(dir: &Path) -> (TokenVerifier, String, Json) {
        let jwk: Json = serde_json::from_str(
            &std::fs::read_to_string(fixture("rsa-test-key.jwk.json")).unwrap(),
        )
        .unwrap();
        let jwks_file = dir.join("idp.jwks.json");
        std::fs::write(&jwks_file, json!({"keys": [jwk.clone()]}).to_string()).unwrap();
        let config = TokensConfig {
            clock_skew: Duration::from_secs(30),
            issuers: vec![IssuerConfig {
                issuer: IDP.into(),
                jwks_file,
                audiences: vec!["cedar-pdp".into()],
                principal_type: "User".into(),
                actor_type: "Agent".into(),
            }],
            ..TokensConfig::default()
        };
        let verifier = TokenVerifier::load(&config).unwrap().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = jwk["kid"].as_str().map(String::from);
        let key =
            EncodingKey::from_rsa_der(&std::fs::read(fixture("rsa-test-key.pkcs1.der")).unwrap());
        let claims = json!({"iss": IDP, "sub": "alice", "aud": "cedar-pdp", "exp": now + 600,
                            "nbf": now - 5, "iat": now - 5, "act": {"sub": "agent"}});
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        (verifier, token, jwk)
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_times_or_keys_say_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (verifier, token, jwk) = setup(dir.path());
        let now = SystemTime::now();
        let first = verifier.verify(&token, now).unwrap();
        assert_eq!(verifier.verified.len(), 1);
        // Remembered: the same answer.
        assert_eq!(verifier.verify(&token, now).unwrap(), first);
        assert_eq!(first.actors, ["agent"]);

        // Its times are checked on every use, with the skew, as a first
        // check makes them.
        let seen = verifier.verified.get(token.as_str()).unwrap();
        let at = |s: u64| verifier.still_valid(&seen, s);
        let exp = seen.expires;
        let nbf = seen.not_before.unwrap();
        assert!(at(exp + 30), "within the skew past exp");
        assert!(!at(exp + 31), "expired");
        assert!(at(nbf - 30), "within the skew before nbf");
        assert!(!at(nbf - 31), "not yet valid");

        // A change of the issuer's keys forgets it: with its key gone, the
        // token no longer verifies.
        let mut other = jwk.clone();
        other["kid"] = json!("another-kid");
        std::fs::write(
            dir.path().join("idp.jwks.json"),
            json!({"keys": [other]}).to_string(),
        )
        .unwrap();
        assert_eq!(verifier.reload().unwrap(), 1);
        assert!(!verifier.still_valid(&seen, exp - 60));
        let err = verifier.verify(&token, now).unwrap_err();
        assert!(matches!(err, TokenError::UnknownKey { .. }), "{err:?}");

        // A failure is never remembered.
        let at = token.rfind('.').unwrap() + 10;
        let flip = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{flip}{}", &token[..at], &token[at + 1..]);
        assert!(verifier.verify(&forged, now).is_err());
        assert!(verifier.verified.get(forged.as_str()).is_none());
    }
}
