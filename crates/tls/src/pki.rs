//! A small CA for tests and first clusters (`ax tls-certs`): `ca.pem`/`ca.key`, and for
//! each name a certificate (DNS subject alternative name = the name; for servers and
//! clients alike) with its key. An existing CA in the folder is reused, so certificates
//! for nodes added later come from the same CA.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ClientConfig, RootCertStore};

use crate::{now_secs, pem_error, read_certs, Files, TlsError};

/// Why the certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("cannot read the CA in {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("'{0}' cannot be a certificate name (a DNS name: letters, digits, '-' and '.')")]
    Name(String),
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A node's: it serves and dials (serverAuth and clientAuth), and may gossip.
    Node,
    /// A client's, such as an admin's for REST (clientAuth only): never a node.
    Client,
}

/// The CA of a folder, able to issue more certificates.
pub struct TestPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

const DAY: u64 = 86_400;

impl TestPki {
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The files of `name`'s certificate (issued before).
    pub fn files(&self, name: &str) -> Files {
        Files {
            ca: self.ca_file(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// Issues a node's `name.pem`/`name.key`, valid for `days` from now (a negative
    /// number makes one that has already expired, for tests).
    pub fn issue(&self, name: &str, days: i64) -> Result<Files, PkiError> {
        self.issue_as(name, days, Usage::Node)
    }

    /// Issues `name.pem`/`name.key` for `usage`.
    pub fn issue_as(&self, name: &str, days: i64, usage: Usage) -> Result<Files, PkiError> {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid {
            return Err(PkiError::Name(name.to_string()));
        }
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = match usage {
            Usage::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (from, to) = if days < 0 {
            (now_secs() - 2 * DAY * days.unsigned_abs(), now_secs() - DAY * days.unsigned_abs())
        } else {
            (now_secs() - DAY, now_secs() + DAY * days as u64)
        };
        validity(&mut params, from, to);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = self.files(name);
        write(&files.cert, cert.pem().as_bytes(), 0o644)?;
        write(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        Ok(files)
    }
}

/// A client for tests, built without [`crate::Tls::load`]'s checks: it presents the
/// certificate in `cert` as it is (expired, or from another CA: what a careless or
/// hostile client shows; None: no certificate), and trusts the CA in `ca`, checking
/// the server's name as any HTTPS client does. TLS 1.3 and HTTP/1.1 as ax's own.
pub fn test_client(ca: &Path, cert: Option<&Files>) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in read_certs("CA certificate", ca)? {
        roots.add(c).map_err(|e| TlsError::Rejected { cert: ca.to_path_buf(), reason: e.to_string() })?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(f) => {
            let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| pem_error("key", &f.key, e))?;
            builder
                .with_client_auth_cert(read_certs("certificate", &f.cert)?, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes (or reuses) the CA in `dir`, and issues a certificate valid for a year for each
/// of `names`.
pub fn write_test_pki(dir: &Path, names: &[String]) -> Result<TestPki, PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::Write { path: dir.to_path_buf(), reason: e.to_string() })?;
    ours(dir)?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let issuer = if ca_pem.exists() && ca_key.exists() {
        crate::private(&ca_key).map_err(|e| PkiError::Ca { path: ca_key.clone(), reason: e.to_string() })?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| PkiError::Ca { path: p.to_path_buf(), reason: e.to_string() })
        };
        let key = KeyPair::from_pem(&read(&ca_key)?)
            .map_err(|e| PkiError::Ca { path: ca_key.clone(), reason: e.to_string() })?;
        // What a certificate names as its issuer is the CA's subject, and its signature
        // is the key's: the same parameters and key issue for the CA on disk.
        Issuer::new(ca_params()?, key)
    } else {
        let mut params = ca_params()?;
        validity(&mut params, now_secs() - DAY, now_secs() + 10 * 365 * DAY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        write(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
        Issuer::new(params, key)
    };
    let pki = TestPki { dir: dir.to_path_buf(), issuer };
    for name in names {
        pki.issue(name, 365)?;
    }
    Ok(pki)
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "ax cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Valid from `from` to `to` (seconds since the epoch; whole days are enough here, and
/// rcgen takes calendar dates).
fn validity(params: &mut CertificateParams, from: u64, to: u64) {
    let (y, m, d) = civil_from_days((from / DAY) as i64);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days((to / DAY) as i64);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The calendar date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

/// The folder must be ours alone: someone else able to write there could have left a
/// CA of theirs to be reused (then they issue node certificates), or swap files.
fn ours(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |reason: String| PkiError::Write { path: dir.to_path_buf(), reason };
    let meta = std::fs::metadata(dir).map_err(|e| refuse(e.to_string()))?;
    let me = std::fs::metadata("/proc/self").map_err(|e| refuse(format!("cannot tell who runs this: {e}")))?.uid();
    if meta.uid() != me {
        return Err(refuse(format!("the folder belongs to uid {}, not to this user (uid {me})", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!("others can write in the folder (mode {:o}): chmod go-w it", meta.mode() & 0o777)));
    }
    Ok(())
}

/// Writes a new file and renames it over `path` (an old file keeps no mode of its own,
/// and a link at `path` is replaced, never followed).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |e: std::io::Error| PkiError::Write { path: path.to_path_buf(), reason: e.to_string() };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{names, Tls, TlsError};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ax-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_calendar_agrees_with_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_node_certificate_loads_and_names_its_node_only() {
        let d = dir("names");
        let pki = write_test_pki(&d, &["n1".into(), "n2".into()]).unwrap();
        let tls = Tls::load(&pki.files("n1"), Some("n1")).unwrap();
        let n1 = &tls.certified.cert[0];
        assert!(names(n1, "n1"));
        assert!(!names(n1, "n2"));
        assert!(!names(n1, "10.0.0.1"), "an address is not a node name");
        match Tls::load(&pki.files("n1"), Some("n2")) {
            Err(TlsError::NotNamed { name, .. }) => assert_eq!(name, "n2"),
            other => panic!("{other:?}"),
        }
        let m = Tls::load(&pki.files("n1"), Some("N1")).unwrap_err().to_string();
        assert!(m.contains("'N1' has capitals") && m.contains("lower case"), "{m}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_folder_others_can_write_in_is_refused_and_old_files_keep_no_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("folder");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let m = write_test_pki(&d, &["n1".into()]).err().unwrap().to_string();
        assert!(m.contains("others can write in the folder (mode 777)"), "{m}");
        assert!(!d.join("ca.key").exists());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A key file left readable, and a link where a key goes: replaced, 0600.
        std::fs::write(d.join("n1.key"), "old").unwrap();
        std::fs::set_permissions(d.join("n1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("ca.key")).unwrap();
        write_test_pki(&d, &["n1".into()]).unwrap();
        for key in ["n1.key", "ca.key"] {
            let meta = std::fs::symlink_metadata(d.join(key)).unwrap();
            assert!(meta.is_file(), "{key}");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{key}");
        }
        assert!(!d.join("elsewhere").exists(), "the link was not followed");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A node name is proven only by a certificate naming it exactly: not by a
    /// wildcard, and never with capitals (DNS matching would take `N1` for `n1`).
    #[test]
    fn a_name_is_proven_by_its_exact_dns_name_only() {
        let d = dir("exact");
        let pki = write_test_pki(&d, &["n1".into(), "a.corp".into()]).unwrap();
        let leaf = |name: &str| Tls::load(&pki.files(name), None).unwrap().chain()[0].clone();
        let n1 = leaf("n1");
        assert!(names(&n1, "n1"));
        assert!(!names(&n1, "N1") && !names(&n1, "n1.") && !names(&n1, "n2") && !names(&n1, ""));
        let dotted = leaf("a.corp");
        assert!(names(&dotted, "a.corp") && !names(&dotted, "b.corp"));
        let key = KeyPair::generate().unwrap();
        let wildcard =
            CertificateParams::new(vec!["*.ax.test".to_string()]).unwrap().signed_by(&key, &pki.issuer).unwrap();
        let wildcard = rustls::pki_types::CertificateDer::from(wildcard.der().to_vec());
        assert!(!names(&wildcard, "a.ax.test"), "a wildcard names no node");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_bad_file_is_refused_with_its_name() {
        let d = dir("bad");
        let pki = write_test_pki(&d, &["n1".into(), "n2".into()]).unwrap();
        let other = write_test_pki(&d.join("other"), &["n1".into()]).unwrap();
        let expired = pki.issue("old", -1).unwrap();
        let good = pki.files("n1");
        let msg = |f: &Files| Tls::load(f, Some("n1")).unwrap_err().to_string();

        let m = msg(&Files { cert: d.join("missing.pem"), ..good.clone() });
        assert!(m.contains("missing.pem") && m.contains("No such file"), "{m}");
        let m = msg(&Files { key: pki.files("n2").key, ..good.clone() });
        assert!(m.contains("n2.key") && m.contains("does not belong"), "{m}");
        let m = msg(&Files { ca: other.ca_file(), ..good.clone() });
        assert!(m.contains("n1.pem") && m.contains("not signed by the CA"), "{m}");
        let m = Tls::load(&expired, Some("old")).unwrap_err().to_string();
        assert!(m.contains("old.pem") && m.contains("expired"), "{m}");
        std::fs::write(d.join("junk.pem"), "hello").unwrap();
        let m = msg(&Files { ca: d.join("junk.pem"), ..good.clone() });
        assert!(m.contains("junk.pem"), "{m}");
        let m = msg(&Files { key: good.cert.clone(), ..good.clone() });
        assert!(m.contains("n1.pem"), "a certificate is not a key: {m}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let m = msg(&good);
        assert!(m.contains("n1.key can be read by others (mode 644)"), "{m}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_ca_is_reused_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("reuse");
        write_test_pki(&d, &["n1".into()]).unwrap();
        let ca = std::fs::read(d.join("ca.pem")).unwrap();
        let pki = write_test_pki(&d, &["n2".into()]).unwrap();
        assert_eq!(std::fs::read(d.join("ca.pem")).unwrap(), ca);
        Tls::load(&pki.files("n2"), Some("n2")).unwrap();
        Tls::load(&pki.files("n1"), Some("n1")).unwrap();
        let mode = std::fs::metadata(d.join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(pki.issue("bad name", 1), Err(PkiError::Name(_))));
        let _ = std::fs::remove_dir_all(&d);
    }
}
