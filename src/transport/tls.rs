//! TLS for the gRPC listener, with the certificate, key and client trust
//! bundle re-read from disk while serving. SVIDs rotate hourly, so the live
//! material sits behind `ArcSwap`s that new handshakes read; connections
//! already open keep the session they negotiated. A bad file never replaces
//! good material.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, TlsConfig};
use crate::identity::{SpiffeId, SpiffeIdError};
use crate::metrics::Metrics;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("`{}`: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("`{}` does not match certificate `{}`: {source}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid TLS material: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid client trust bundle `{}`: {message}", path.display())]
    TrustBundle { path: PathBuf, message: String },
    #[error(
        "`tls.trust_domains` is empty, and the trust domain cannot be taken from certificate `{}`: it {source}; set `tls.trust_domains`",
        cert.display()
    )]
    NoTrustDomain {
        cert: PathBuf,
        #[source]
        source: SvidError,
    },
}

/// Why a certificate is not an X.509 SVID of an accepted trust domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("does not parse as X.509: {0}")]
    Parse(String),
    #[error("has {0} URI SANs; an SVID has exactly one")]
    UriSans(usize),
    #[error("has URI SAN `{uri}`, which is not a SPIFFE ID: {source}")]
    NotSpiffe {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("is from trust domain `{0}`, which `tls.trust_domains` does not accept")]
    TrustDomain(String),
}

/// The SPIFFE ID of an X.509 SVID: its one URI SAN. A certificate with no
/// URI SAN, or several, names no one (SPIFFE X.509-SVID §2).
pub fn svid_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(SvidError::UriSans(uris.len()));
    };
    SpiffeId::parse(uri).map_err(|source| SvidError::NotSpiffe {
        uri: uri.to_string(),
        source,
    })
}

/// The SPIFFE ID of `cert` when it is an SVID of one of `trust_domains`.
fn accepted(cert: &CertificateDer<'_>, trust_domains: &[String]) -> Result<SpiffeId, SvidError> {
    let id = svid_id(cert)?;
    if !trust_domains.contains(&id.trust_domain) {
        return Err(SvidError::TrustDomain(id.trust_domain));
    }
    Ok(id)
}

/// The server's TLS config, whose certificate and client verifier follow
/// the files on disk.
pub struct ReloadingTls {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    cert: Arc<ArcSwap<CertifiedKey>>,
    verifier: Arc<SwappableVerifier>,
    acceptor: TlsAcceptor,
    /// The same material, offering HTTP/1.1 beside h2 (the AuthZEN listener).
    http_acceptor: TlsAcceptor,
    digest: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the files once; any problem is an error, so the server does not
    /// start without good material.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (material, digest) = Material::read(files, &provider)?;
        let cert = Arc::new(ArcSwap::from(material.cert));
        let verifier = Arc::new(SwappableVerifier {
            current: ArcSwap::from_pointee(material.verifier),
            mandatory: files.client_auth == ClientAuth::Required,
            offered: files.client_auth != ClientAuth::None,
        });
        // Both configs share the live certificate and verifier, so a reload
        // reaches both.
        let config = |alpn: &[&[u8]]| -> Result<TlsAcceptor, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier.clone())
                .with_cert_resolver(Arc::new(Resolver(cert.clone())));
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        let acceptor = config(&[b"h2"])?;
        let http_acceptor = config(&[b"h2", b"http/1.1"])?;
        Ok(Self {
            files: files.clone(),
            provider,
            cert,
            verifier,
            acceptor,
            http_acceptor,
            digest: Mutex::new(digest),
        })
    }

    /// Accepts TLS connections with the live material, offering h2 (gRPC).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Accepts TLS connections with the live material, offering h2 and
    /// HTTP/1.1 (the AuthZEN listener).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        self.http_acceptor.clone()
    }

    /// Re-reads the files. `Ok(true)` when new material went live, `Ok(false)`
    /// when nothing changed; on error the old material stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut last = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if read_digest(&self.files)? == *last {
            return Ok(false);
        }
        let (material, digest) = Material::read(&self.files, &self.provider)?;
        self.cert.store(material.cert);
        self.verifier.current.store(Arc::new(material.verifier));
        *last = digest;
        Ok(true)
    }

    /// Checks the files every `interval` until the returned task is aborted.
    pub fn spawn_watcher(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                let tls = self.clone();
                match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(Ok(true)) => {
                        failing = false;
                        metrics.tls_reload(true);
                        tracing::info!("TLS certificate and trust bundle reloaded");
                    }
                    Ok(Ok(false)) => failing = false,
                    Ok(Err(e)) => {
                        metrics.tls_reload(false);
                        // Rotation may write the files one at a time; say so
                        // once per failure streak, not every interval.
                        if !failing {
                            tracing::warn!("TLS reload failed; keeping the current material: {e}");
                        }
                        failing = true;
                    }
                    Err(e) => tracing::error!("TLS reload task failed: {e}"),
                }
            }
        })
    }
}

impl ReloadingTls {
    /// The SPIFFE ID of a verified peer's certificate. The handshake already
    /// refused any other certificate; this checks again against the live
    /// trust domains, which a rotation may have changed since.
    pub fn peer_spiffe_id(&self, certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
        let leaf = certs?.first()?;
        accepted(leaf, &self.verifier.current.load().trust_domains).ok()
    }
}

struct Material {
    cert: Arc<CertifiedKey>,
    verifier: ClientVerifier,
}

/// The chain verifier of one trust bundle, with the trust domains whose
/// SVIDs it accepts: they swap together.
#[derive(Debug)]
struct ClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn paths(files: &TlsConfig) -> Vec<&Path> {
    let mut paths = vec![files.cert.as_path(), files.key.as_path()];
    if files.client_auth != ClientAuth::None {
        paths.push(files.client_ca.as_path());
    }
    paths
}

fn read_digest(files: &TlsConfig) -> Result<[u8; 32], TlsError> {
    let mut hasher = Sha256::new();
    for path in paths(files) {
        let bytes = read(path)?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

impl Material {
    fn read(
        files: &TlsConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Result<(Self, [u8; 32]), TlsError> {
        // Digest first: if a file changes while we read, the next check sees
        // a different digest and reads again.
        let digest = read_digest(files)?;
        let chain = certificates(&files.cert, &read(&files.cert)?)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| TlsError::Pem {
            path: files.key.clone(),
            message: e.to_string(),
        })?;
        let signing_key = provider.key_provider.load_private_key(key)?;
        let cert = CertifiedKey::new(chain, signing_key);
        cert.keys_match().map_err(|source| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
        let trust_domains = match (files.trust_domains.is_empty(), files.client_auth) {
            (false, _) => files.trust_domains.clone(),
            // No client certificates: no caller to accept.
            (true, ClientAuth::None) => Vec::new(),
            (true, _) => {
                let own = cert
                    .cert
                    .first()
                    .ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
                let id = svid_id(own).map_err(|source| TlsError::NoTrustDomain {
                    cert: files.cert.clone(),
                    source,
                })?;
                vec![id.trust_domain]
            }
        };
        let chain_verifier = match files.client_auth {
            ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
            mode => {
                let mut roots = RootCertStore::empty();
                for ca in certificates(&files.client_ca, &read(&files.client_ca)?)? {
                    roots.add(ca).map_err(|e| TlsError::TrustBundle {
                        path: files.client_ca.clone(),
                        message: e.to_string(),
                    })?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if mode == ClientAuth::Optional {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder.build().map_err(|e| TlsError::TrustBundle {
                    path: files.client_ca.clone(),
                    message: e.to_string(),
                })?
            }
        };
        Ok((
            Self {
                cert: Arc::new(cert),
                verifier: ClientVerifier {
                    chain: chain_verifier,
                    trust_domains,
                },
            },
            digest,
        ))
    }
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Delegates to the verifier built from the current trust bundle, then
/// accepts only an SVID of an accepted trust domain: a certificate that
/// chains but names no one, or someone from elsewhere, fails the handshake.
#[derive(Debug)]
struct SwappableVerifier {
    current: ArcSwap<ClientVerifier>,
    mandatory: bool,
    offered: bool,
}

impl ClientCertVerifier for SwappableVerifier {
    fn offer_client_auth(&self) -> bool {
        self.offered
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    // No CA hints: the bundle can change under a borrowed slice, and clients
    // with one certificate send it regardless.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current.load();
        let verified = current
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        accepted(end_entity, &current.trust_domains).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .chain
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .chain
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn cert(sans: &[SanType]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans.to_vec();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn an_svid_has_exactly_one_uri_san() {
        let dns = SanType::DnsName("web.local".try_into().unwrap());
        let one = cert(&[dns.clone(), uri("spiffe://td/ns/a/sa/b")]);
        assert_eq!(svid_id(&one).unwrap().id, "spiffe://td/ns/a/sa/b");
        let none = cert(&[dns]);
        assert_eq!(svid_id(&none), Err(SvidError::UriSans(0)));
        let no_san = cert(&[]);
        assert_eq!(svid_id(&no_san), Err(SvidError::UriSans(0)));
        let two = cert(&[uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/a/sa/c")]);
        assert_eq!(svid_id(&two), Err(SvidError::UriSans(2)));
        // A second URI that is not SPIFFE still makes the identity ambiguous.
        let mixed = cert(&[uri("spiffe://td/ns/a/sa/b"), uri("https://td/x")]);
        assert_eq!(svid_id(&mixed), Err(SvidError::UriSans(2)));
        let not_spiffe = cert(&[uri("https://td/ns/a/sa/b")]);
        assert!(matches!(
            svid_id(&not_spiffe),
            Err(SvidError::NotSpiffe { .. })
        ));
    }

    #[test]
    fn only_listed_trust_domains_are_accepted() {
        let c = cert(&[uri("spiffe://td/ns/a/sa/b")]);
        let domains = ["other".to_string(), "td".to_string()];
        assert_eq!(accepted(&c, &domains).unwrap().trust_domain, "td");
        assert_eq!(
            accepted(&c, &domains[..1]),
            Err(SvidError::TrustDomain("td".into()))
        );
        assert_eq!(accepted(&c, &[]), Err(SvidError::TrustDomain("td".into())));
    }
}
