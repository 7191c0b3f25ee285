//! Trust between daemons (`--tls`): the cluster's CA, this node's certificate and key,
//! and the rustls configurations every channel uses (gossip over QUIC, the tunnel between
//! daemons, REST over HTTPS, the CLI's client).
//!
//! - TLS 1.3 only, on rustls with ring; both sides present a certificate from the CA.
//! - A node's identity is a DNS name in its certificate's subject alternative names:
//!   the node name (`--node-name`). A handshake proves only that the peer holds *some*
//!   certificate from the CA; who it is is checked by the caller against what the peer
//!   claims ([`names`]), since a node dials its neighbours by address before it
//!   knows their names.
//! - Files are read once at start (every error names the file) and again on
//!   [`Reloadable::reload`] (SIGHUP); a reload that fails keeps the files in use.

mod pki;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

pub use pki::{test_client, write_test_pki, PkiError, TestPki, Usage};

/// Where the three PEM files are (`--tls-ca-cert`, `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the TLS files cannot be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {reason}", path.display())]
    Unreadable { what: &'static str, path: PathBuf, reason: String },
    #[error("{what} {} holds no PEM {kind}", path.display())]
    Empty { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("the key {} can be read by others (mode {mode:o}): make it private with chmod 600", key.display())]
    KeyExposed { key: PathBuf, mode: u32 },
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("the certificate in {} cannot be used: {reason}", cert.display())]
    Rejected { cert: PathBuf, reason: String },
    #[error("the certificate in {} does not name this node '{name}': give it a DNS subject alternative name '{name}', or pick the name with --node-name", cert.display())]
    NotNamed { cert: PathBuf, name: String },
    #[error("the node name '{0}' has capitals: with --tls a node's name is a DNS name of its certificate, in lower case (pick one with --node-name)")]
    CapitalName(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// The loaded files: the CA's roots, and this node's certificate with its key.
#[derive(Debug)]
pub struct Tls {
    files: Files,
    roots: Arc<RootCertStore>,
    certified: Arc<CertifiedKey>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl Tls {
    /// Reads and checks the files: the key matches the certificate, the certificate is
    /// signed by the CA and valid now, and (for a node) names `node`.
    pub fn load(files: &Files, node: Option<&str>) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let ca = read_certs("CA certificate", &files.ca)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| TlsError::Rejected { cert: files.ca.clone(), reason: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let chain = read_certs("certificate", &files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error("key", &files.key, e))?;
        private(&files.key)?;
        let signing = provider.key_provider.load_private_key(key).map_err(|e| TlsError::Unreadable {
            what: "key",
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|_| TlsError::KeyMismatch { key: files.key.clone(), cert: files.cert.clone() })?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let tls = Tls { files: files.clone(), roots, certified: Arc::new(certified), client_verifier, provider };
        let rejected = |reason| TlsError::Rejected { cert: files.cert.clone(), reason };
        // Every certificate dials (clientAuth); a node's also serves (serverAuth).
        tls.check_client(&tls.certified.cert).map_err(rejected)?;
        if let Some(name) = node {
            tls.check(&tls.certified.cert).map_err(rejected)?;
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(TlsError::CapitalName(name.to_string()));
            }
            if !names(&tls.certified.cert[0], name) {
                return Err(TlsError::NotNamed { cert: files.cert.clone(), name: name.to_string() });
            }
        }
        Ok(tls)
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Whether `chain` (leaf first) is a node's: signed by the CA, valid now, for
    /// servers (serverAuth); the reason otherwise.
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
        self.verify_node(leaf, rest, UnixTime::now()).map_err(describe)
    }

    /// Whether `leaf` (with `intermediates`) is a node's at `now`: from the CA, for
    /// servers (serverAuth).
    fn verify_node(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
        let algs = self.provider.signature_verification_algorithms.all;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, algs)
    }

    /// Whether `chain` (leaf first) is signed by the CA, valid now, for clients
    /// (clientAuth); the reason otherwise.
    fn check_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
        self.client_verifier.verify_client_cert(leaf, rest, UnixTime::now()).map(|_| ()).map_err(describe)
    }
}

impl Tls {
    /// This node's certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// Signs `message` with this node's key, in the first of [`SIGNING`] the key can use.
    pub fn sign(&self, message: &[u8]) -> Result<Signature, SignatureError> {
        let signer = self.certified.key.choose_scheme(&SIGNING).ok_or(SignatureError::NoScheme)?;
        let bytes = signer.sign(message).map_err(|e| SignatureError::Sign(e.to_string()))?;
        Ok(Signature { scheme: u16::from_be_bytes(signer.scheme().to_array()), bytes })
    }

    /// Whether `signature` over `message` was made by the key of the certificate `leaf`
    /// (which the caller has checked, e.g. with [`Tls::check`]), in one of [`SIGNING`].
    pub fn verify_signature(
        &self,
        leaf: &CertificateDer<'_>,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let scheme = SignatureScheme::from(signature.scheme);
        if !SIGNING.contains(&scheme) {
            return Err(SignatureError::Scheme(signature.scheme));
        }
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| SignatureError::Certificate)?;
        let mapping = self.provider.signature_verification_algorithms.mapping;
        let algs = mapping.iter().find(|(s, _)| *s == scheme).map_or(&[][..], |(_, algs)| *algs);
        if algs.iter().any(|alg| cert.verify_signature(*alg, message, &signature.bytes).is_ok()) {
            Ok(())
        } else {
            Err(SignatureError::Invalid)
        }
    }
}

/// The schemes a node signs with outside handshakes (its gossip state): TLS 1.3's, so
/// any key a handshake accepts can sign, and no legacy one (RSA PKCS#1 v1.5) is taken.
pub const SIGNING: [SignatureScheme; 6] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

/// A signature by a node's key: the TLS signature scheme (its IANA number) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub scheme: u16,
    pub bytes: Vec<u8>,
}

/// Why a signature could not be made or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the key signs with no TLS 1.3 signature scheme")]
    NoScheme,
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("signature scheme {0:#06x} is not one nodes sign with")]
    Scheme(u16),
    #[error("the certificate cannot be read")]
    Certificate,
    #[error("the signature is not the certificate's key's")]
    Invalid,
}

/// Whether the certificate `cert` (verified by a handshake or [`Tls::check`]) names node
/// `name`, and it alone: a DNS subject alternative name equal to it. DNS matching
/// ignores case and honours wildcards, but a node's name is its identity: a name with
/// capitals or a trailing dot is never proven (`N1` or `n1.` would be a second node for
/// the holder of `n1`), nor one a wildcard covers (`*.corp` would name every node of
/// `corp`).
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let dns = |name: &str| {
        let Ok(server) = ServerName::try_from(name) else { return false };
        matches!(server, ServerName::DnsName(_))
            && rustls::server::ParsedCertificate::try_from(cert)
                .is_ok_and(|p| rustls::client::verify_server_name(&p, &server).is_ok())
    };
    // A wildcard replaces the leftmost label: it shows as naming a sibling too.
    let sibling = name.split_once('.').map(|(_, domain)| format!("ax-wildcard-probe.{domain}"));
    // An empty label (`n1.`, a trailing dot) is the same DNS name again.
    let exact = !name.bytes().any(|b| b.is_ascii_uppercase()) && !name.split('.').any(str::is_empty);
    exact && dns(name) && sibling.is_none_or(|s| !dns(&s))
}

/// The current [`Tls`], replaced whole on reload. The configurations it builds read the
/// current files at every handshake, so a reload reaches every channel without
/// rebuilding them, and connections already made stay up.
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Arc<Tls>>,
    node: Option<String>,
}

impl Reloadable {
    /// `node`: the name the certificate must carry (None for a client such as the CLI).
    pub fn new(tls: Tls, node: Option<String>) -> Arc<Reloadable> {
        Arc::new(Reloadable { current: RwLock::new(Arc::new(tls)), node })
    }

    pub fn current(&self) -> Arc<Tls> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again; on error the files in use stay.
    pub fn reload(&self) -> Result<Arc<Tls>, TlsError> {
        let files = self.current().files.clone();
        let next = Arc::new(Tls::load(&files, self.node.as_deref())?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        Ok(next)
    }

    fn current_files(self: &Arc<Self>) -> Current {
        Current { tls: self.clone(), nodes_only: false }
    }

    /// A server that requires a client certificate from the CA, speaking `alpn`: for
    /// clients such as an admin's (REST).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ServerConfig {
        self.server_config_for(alpn, false)
    }

    /// A server for other nodes only (gossip, the tunnel): the client's certificate must
    /// be a node's, for servers too (serverAuth), not only a client's.
    pub fn node_server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ServerConfig {
        self.server_config_for(alpn, true)
    }

    fn server_config_for(self: &Arc<Self>, alpn: &[&[u8]], nodes_only: bool) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(self.current().provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring offers TLS 1.3")
            .with_client_cert_verifier(Arc::new(Current { tls: self.clone(), nodes_only }))
            .with_cert_resolver(Arc::new(self.current_files()));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Nothing resumes: every connection shows its certificate.
        config.send_tls13_tickets = 0;
        config
    }

    /// A client presenting our certificate, accepting a server whose certificate is
    /// from the CA whatever name it carries (the caller checks the name it expects).
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(self.current().provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring offers TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self.current_files()))
            .with_client_cert_resolver(Arc::new(self.current_files()));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        config
    }
}

/// The files in use at each handshake: this node's certificate, and the CA to check
/// the peer's against (for any name: see [`names`]); with `nodes_only`, a client's
/// certificate must be a node's (serverAuth too).
#[derive(Debug)]
struct Current {
    tls: Arc<Reloadable>,
    nodes_only: bool,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().certified.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Current {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a peer has one certificate to show.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let tls = self.tls.current();
        let verified = tls.client_verifier.verify_client_cert(end_entity, intermediates, now)?;
        if self.nodes_only {
            tls.verify_node(end_entity, intermediates, now)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = self.tls.current().provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.current().provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.tls.current().verify_node(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(self)
    }
}

/// A key others can read is anybody's: refused (as ssh does), saying how to mend it.
fn private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsError::Unreadable { what: "key", path: path.to_path_buf(), reason: e.to_string() })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyExposed { key: path.to_path_buf(), mode: mode & 0o777 });
    }
    Ok(())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), kind: "CERTIFICATE" });
    }
    Ok(certs)
}

fn pem_error(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => TlsError::Empty { what, path: path.to_path_buf(), kind: "item" },
        E::Io(io) => TlsError::Unreadable { what, path: path.to_path_buf(), reason: io.to_string() },
        other => TlsError::Unreadable { what, path: path.to_path_buf(), reason: format!("not PEM ({other:?})") },
    }
}

/// A certificate error as a person reads it.
fn describe(e: rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "it has expired".into(),
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "it is not valid yet (is the clock right?)".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "it is not signed by the CA given with --tls-ca-cert".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "it is not for TLS servers and clients (extended key usage serverAuth and clientAuth)".into()
        }
        other => other.to_string(),
    }
}

/// Seconds since the epoch, for the test CA's validity.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
