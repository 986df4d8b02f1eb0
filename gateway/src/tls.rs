//! TLS at the front door: certificates by hostname from a directory, picked by the
//! ClientHello's SNI, reloaded when the directory changes; and the self-signed development
//! certificate of `outpost dev --https`.
//!
//! A certificate directory holds one `NAME.pem` per certificate: the chain (leaf first) and
//! its private key, or the chain alone with the key beside it in `NAME.key`. The hostnames a
//! certificate serves are its subjectAltName DNS names (`*.example.com` serves one label
//! under `example.com`). Apps bring certificates too (`certificates` in `outpost.toml`),
//! each for hosts the app routes; the directory's win where both name a host. A
//! ClientHello whose name no certificate covers gets the default certificate when there is
//! one (`--default-cert`), else the handshake fails.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocols offered over TLS, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the development certificate: {0}")]
    DevCertificate(String),
    #[error("certificate {path}: {message}")]
    App { path: String, message: String },
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// One certificate and the names it serves.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Certificates by name: exact names, then wildcards (`*.example.com` under key
/// `example.com`), then the default.
#[derive(Default)]
struct Index {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Index {
    fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .cloned()
    }
}

/// The node's certificates, swapped as a whole on reload.
pub struct Certificates {
    dir: Option<PathBuf>,
    default: Option<PathBuf>,
    /// What the directory (and the default file) held at the last reload.
    from_dir: Mutex<(Vec<Certificate>, Option<Certificate>)>,
    /// What each app brought.
    from_apps: Mutex<BTreeMap<String, Vec<Certificate>>>,
    index: ArcSwap<Index>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads every certificate in `dir` (if any), and `default` (a `.pem` file, anywhere)
    /// for ClientHellos no certificate names. Apps add theirs with
    /// [`Certificates::set_app`].
    pub fn load(dir: Option<&Path>, default: Option<&Path>) -> Result<Arc<Certificates>, TlsError> {
        let certificates = Certificates {
            dir: dir.map(Path::to_path_buf),
            default: default.map(Path::to_path_buf),
            from_dir: Mutex::new((Vec::new(), None)),
            from_apps: Mutex::new(BTreeMap::new()),
            index: ArcSwap::from_pointee(Index::default()),
        };
        certificates.reload()?;
        Ok(Arc::new(certificates))
    }

    /// The directory the certificates come from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads the directory again and swaps in what it holds now, returning the names served.
    /// On an error the certificates in use stay as they are.
    pub fn reload(&self) -> Result<Vec<String>, TlsError> {
        let mut loaded = Vec::new();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, e))?;
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect();
            paths.sort();
            for path in &paths {
                loaded.push(load_pem(path)?);
            }
        }
        let default = match &self.default {
            Some(default) => Some(load_pem(default)?),
            None => None,
        };
        *self.from_dir.lock().unwrap_or_else(|e| e.into_inner()) = (loaded, default);
        Ok(self.rebuild())
    }

    /// Serves the certificates of the apps served now (by app name), in place of those
    /// the apps brought before.
    pub fn set_apps(&self, apps: BTreeMap<String, Vec<Certificate>>) {
        *self.from_apps.lock().unwrap_or_else(|e| e.into_inner()) = apps;
        self.rebuild();
    }

    /// Swaps in an index of the directory's and the apps' certificates; the names served.
    fn rebuild(&self) -> Vec<String> {
        let mut index = Index::default();
        let mut names = Vec::new();
        let (from_dir, default) = self
            .from_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let apps = self
            .from_apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Apps first, so that the operator's directory wins where both name a host.
        for certificate in apps.values().flatten().chain(&from_dir) {
            for name in &certificate.names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => index
                        .wildcard
                        .insert(parent.to_string(), certificate.key.clone()),
                    None => index.exact.insert(name.clone(), certificate.key.clone()),
                };
                names.push(name);
            }
        }
        index.default = default.map(|d| d.key);
        self.index.store(Arc::new(index));
        names.sort();
        names.dedup();
        names
    }

    /// Whether a certificate serves `name` (the default aside).
    pub fn covers(&self, name: &str) -> bool {
        self.index.load().lookup(name).is_some()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.index.load();
        hello
            .server_name()
            .and_then(|name| index.lookup(name))
            .or_else(|| index.default.clone())
    }
}

/// A certificate chain and its key from `path` (the key from `path` or the `.key` beside it).
fn load_pem(path: &Path) -> Result<Certificate, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let key = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => key,
        Err(_) => {
            let key_path = path.with_extension("key");
            PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                file_error(
                    path,
                    format!("no private key in it, nor in {}: {e}", key_path.display()),
                )
            })?
        }
    };
    parse_pem(&bytes, Some(key)).map_err(|message| file_error(path, message))
}

/// A certificate chain from PEM `bytes`, with `key` (else the private key in `bytes`).
fn parse_pem(bytes: &[u8], key: Option<PrivateKeyDer<'static>>) -> Result<Certificate, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    let key = match key {
        Some(key) => key,
        None => PrivateKeyDer::from_pem_slice(bytes)
            .map_err(|e| format!("no private key in it: {e}"))?,
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(certs.clone(), key, &provider)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    let names = names_of(&certs[0])?;
    if names.is_empty() {
        return Err("the certificate names no DNS host".into());
    }
    Ok(Certificate {
        key: Arc::new(key),
        names,
    })
}

/// The certificates an app brings (`certificates` in its manifest), each checked: a chain
/// and a key that fit, naming only hosts the app answers on (its routes, and
/// `NAME.localhost`).
pub fn app_certificates(bundle: &outpost_bundle::Bundle) -> Result<Vec<Certificate>, TlsError> {
    let manifest = &bundle.manifest;
    let routes: Vec<outpost_bundle::Route> = manifest
        .routes
        .iter()
        .filter_map(|pattern| outpost_bundle::Route::parse(pattern).ok())
        .collect();
    let own = format!("{}.localhost", manifest.name);
    let mut certificates = Vec::new();
    for (path, bytes) in bundle.certificates() {
        let fail = |message: String| TlsError::App {
            path: path.to_string(),
            message,
        };
        let certificate = parse_pem(bytes, None).map_err(fail)?;
        for name in &certificate.names {
            let covered = name.eq_ignore_ascii_case(&own)
                || routes.iter().any(|r| r.covers_certificate_name(name));
            if !covered {
                return Err(fail(format!(
                    "it names {name}, which none of the app's routes serves; an app brings \
                     certificates only for its own hosts"
                )));
            }
        }
        certificates.push(certificate);
    }
    Ok(certificates)
}

/// The DNS names of a certificate's subjectAltName (else its subject's common name).
fn names_of(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_string());
        }
    }
    Ok(names)
}

/// The certificates of the apps in `apps` (name and bundle), for
/// [`Certificates::set_apps`]. An app whose certificates do not check out (its version
/// should not have been activated) brings none; the reason is logged.
pub fn certificates_of<'a>(
    apps: impl IntoIterator<Item = (&'a str, &'a outpost_bundle::Bundle)>,
) -> BTreeMap<String, Vec<Certificate>> {
    let mut all = BTreeMap::new();
    for (name, bundle) in apps {
        match app_certificates(bundle) {
            Ok(certificates) if certificates.is_empty() => {}
            Ok(certificates) => {
                all.insert(name.to_string(), certificates);
            }
            Err(e) => tracing::warn!(app = name, "certificates not served: {e}"),
        }
    }
    all
}

/// A rustls server configuration that picks certificates from `certificates` and offers
/// HTTP/2 and HTTP/1.1.
pub fn server_config(certificates: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    let alpn = ALPN.iter().map(|p| p.to_vec()).collect();
    config_for(certificates, rustls::DEFAULT_VERSIONS, alpn)
}

/// The rustls configuration of the HTTP/3 listener: the same certificates, TLS 1.3 only (as
/// QUIC requires), ALPN `h3`.
pub fn quic_server_config(certificates: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    config_for(
        certificates,
        &[&rustls::version::TLS13],
        vec![b"h3".to_vec()],
    )
}

fn config_for(
    certificates: Arc<Certificates>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// The files of the development certificate authority and the certificate it signs.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    /// What clients trust: `curl --cacert CA https://hello.localhost:8443/`.
    pub ca: PathBuf,
    /// The directory to serve from (`localhost.pem`: chain and key).
    pub dir: PathBuf,
}

/// Makes (once; later calls reuse it) a local certificate authority under `home`
/// (`ca.pem`, `ca.key`) and a certificate it signs for `localhost`, `*.localhost`,
/// `127.0.0.1`, `::1` and every name in `hosts` (`certs/localhost.pem`); the certificate is
/// made again when it is missing, expires within a week, or lacks one of `hosts`. Trusting
/// the authority once makes every later certificate trusted. (`*.localhost` alone is not
/// enough: OpenSSL and browsers refuse a wildcard directly under a top-level name, so each
/// app's `NAME.localhost` is named too.)
pub fn dev_certificate(home: &Path, hosts: &[String]) -> Result<DevCertificate, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let fail = |e: &dyn std::fmt::Display| TlsError::DevCertificate(e.to_string());
    let certs = home.join("certs");
    std::fs::create_dir_all(&certs).map_err(|e| fail(&e))?;
    let ca_path = home.join("ca.pem");
    let ca_key_path = home.join("ca.key");
    let leaf_path = certs.join("localhost.pem");
    let now = time::OffsetDateTime::now_utc();

    let (ca_pem, ca_key) = match (
        std::fs::read_to_string(&ca_path),
        std::fs::read_to_string(&ca_key_path),
    ) {
        (Ok(pem), Ok(key)) => (pem, KeyPair::from_pem(&key).map_err(|e| fail(&e))?),
        _ => {
            let key = KeyPair::generate().map_err(|e| fail(&e))?;
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "Outpost development CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
            let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
            let pem = cert.pem();
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(|e| fail(&e))?;
            write_file(&ca_path, pem.as_bytes(), 0o644).map_err(|e| fail(&e))?;
            (pem, key)
        }
    };
    let mut names = vec!["localhost".to_string(), "*.localhost".to_string()];
    for host in hosts {
        let host = host.to_ascii_lowercase();
        if !names.contains(&host) {
            names.push(host);
        }
    }
    let fresh = std::fs::read(&leaf_path).ok().is_some_and(|pem| {
        let Some(der) = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
        else {
            return false;
        };
        let lasts = x509_parser::parse_x509_certificate(der.as_ref())
            .ok()
            .is_some_and(|(_, c)| {
                c.validity().not_after.to_datetime() > now + time::Duration::days(7)
            });
        let covered = names_of(&der).unwrap_or_default();
        lasts && names.iter().all(|n| covered.contains(n))
    });
    if !fresh {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| fail(&e))?;
        let key = KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.subject_alt_names = vec![
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        for name in &names {
            let name = name.clone().try_into().map_err(|e| fail(&e))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(90);
        let cert = params.signed_by(&key, &issuer).map_err(|e| fail(&e))?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        write_file(&leaf_path, pem.as_bytes(), 0o600).map_err(|e| fail(&e))?;
    }
    Ok(DevCertificate {
        ca: ca_path,
        dir: certs,
    })
}

/// Writes a file with permissions `mode` (0o600 for what holds a private key), atomically.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_cover_localhost_names_and_are_reused() {
        let home = tempfile::tempdir().unwrap();
        let first = dev_certificate(home.path(), &[]).unwrap();
        let ca = std::fs::read(&first.ca).unwrap();
        let leaf = std::fs::read(first.dir.join("localhost.pem")).unwrap();
        let again = dev_certificate(home.path(), &[]).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca, "the CA is kept");
        assert_eq!(
            std::fs::read(again.dir.join("localhost.pem")).unwrap(),
            leaf,
            "a fresh certificate is kept"
        );
        // A new app's host makes a new certificate, from the same authority.
        let third = dev_certificate(home.path(), &["shop.localhost".to_string()]).unwrap();
        assert_eq!(std::fs::read(&third.ca).unwrap(), ca);
        assert_ne!(
            std::fs::read(third.dir.join("localhost.pem")).unwrap(),
            leaf
        );
        let certificates = Certificates::load(Some(&first.dir), None).unwrap();
        assert!(certificates.covers("shop.localhost"));
        assert!(certificates.covers("localhost"));
        assert!(certificates.covers("hello.localhost"));
        assert!(certificates.covers("HELLO.localhost."));
        assert!(
            !certificates.covers("a.b.localhost"),
            "one label per wildcard"
        );
        assert!(!certificates.covers("example.com"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = Certificates::load(Some(dir.path()), None).unwrap();
        assert!(!empty.covers("localhost"));
        std::fs::write(dir.path().join("broken.pem"), "not a certificate").unwrap();
        let err = Certificates::load(Some(dir.path()), None).unwrap_err();
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }

    #[test]
    fn apps_bring_certificates_for_their_own_hosts_only() {
        let home = tempfile::tempdir().unwrap();
        let dev = dev_certificate(home.path(), &["shop.example".to_string()]).unwrap();
        let pem = std::fs::read(dev.dir.join("localhost.pem")).unwrap();
        let bundle = |routes: &[&str]| {
            let mut manifest = outpost_bundle::Manifest::for_single_file("shop", "index.js");
            manifest.routes = routes.iter().map(|r| r.to_string()).collect();
            manifest.certificates = vec!["certs/shop.pem".to_string()];
            let files = std::collections::BTreeMap::from([
                ("index.js".to_string(), b"export default {}".to_vec()),
                ("certs/shop.pem".to_string(), pem.clone()),
            ]);
            outpost_bundle::Bundle::new(manifest, files).unwrap()
        };
        // The certificate names localhost, *.localhost and shop.example: an app routing
        // only shop.example may not bring it.
        let err = app_certificates(&bundle(&["shop.example/*"]))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("none of the app's routes"),
            "{err}"
        );
        let all = ["shop.example/*", "localhost/*", "*.localhost/*"];
        let certificates = app_certificates(&bundle(&all)).unwrap();
        let node = Certificates::load(None, None).unwrap();
        assert!(!node.covers("shop.example"));
        node.set_apps(BTreeMap::from([("shop".to_string(), certificates)]));
        assert!(node.covers("shop.example"));
        node.set_apps(BTreeMap::new());
        assert!(!node.covers("shop.example"));
    }
}
