//! rustls configuration from PEM files.
//!
//! Policy that every server shares: TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, and
//! optional client-certificate verification (mTLS) against a CA bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Protocol versions we accept: nothing older than TLS 1.2.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {path} is not valid PEM: {detail}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("invalid TLS setup: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    Verifier(String),
    #[error("cannot parse certificate: {0}")]
    Certificate(String),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file (a leaf followed by its chain, or a CA bundle).
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "TLS key";
    let pem = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "private key",
        },
        other => TlsError::Pem {
            what,
            path: path.to_owned(),
            detail: other.to_string(),
        },
    })
}

/// Files that make up a server identity, and the optional CA that client certificates must chain to.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Builds the server configuration. Called at start and on every reload, so renewed
/// certificates are picked up without a restart.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert, "TLS certificate")?;
    let key = load_key(&files.key)?;
    record_not_after("server", &certs);
    let builder = ServerConfig::builder_with_protocol_versions(PROTOCOL_VERSIONS);
    let builder = match &files.client_ca {
        Some(ca_path) => {
            let roots = root_store(ca_path, "client CA")?;
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Unix time (seconds) of a certificate's not-after.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Publishes the leaf's (first certificate's) not-after as
/// `tls_certificate_not_after_seconds{certificate}`; a certificate it cannot parse is logged and
/// leaves the gauge as it was (rustls, not this parser, decides whether it is usable).
pub fn record_not_after(certificate: &'static str, chain: &[CertificateDer<'_>]) {
    let Some(leaf) = chain.first() else { return };
    match not_after(leaf) {
        Ok(at) => crate::metrics::set_certificate_not_after(certificate, at),
        Err(e) => tracing::warn!(certificate, error = %e, "no expiry metric for the certificate"),
    }
}

/// A root store holding every certificate of a CA bundle.
pub fn root_store(path: &Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, what)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Client configuration that trusts `roots`, optionally presenting a client certificate.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_protocol_versions(PROTOCOL_VERSIONS)
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Client configuration that accepts any server certificate (signatures are still checked).
///
/// Only for a process probing itself over loopback (`<binary> healthcheck`): there the question
/// is "does my listener answer", not "is this peer who it claims to be".
pub fn insecure_client_config(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsError> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }));
    let mut config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Installs the process-wide default crypto provider once; harmless when already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(all(test, feature = "pki"))]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, LeafSpec};

    #[test]
    fn not_after_reads_the_leaf_validity() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let mut spec = LeafSpec::new("svc", &["localhost"]);
        spec.validity_days = 30;
        let leaf = ca.issue(&spec).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let at = not_after(&der).unwrap();
        let expected = now + 30 * 86_400;
        assert!((at - expected).abs() < 120, "{at} vs {expected}");
        assert!(not_after(&CertificateDer::from(vec![0u8; 8])).is_err());
    }

    #[test]
    fn server_config_publishes_the_server_certificate_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let mut spec = LeafSpec::new("svc", &["localhost"]);
        spec.validity_days = 10;
        let leaf = ca.issue(&spec).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        install_default_provider();
        server_config(&ServerTlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .unwrap();
        let registry = crate::metrics::base_registry("t", "0").unwrap();
        let text = crate::metrics::render(&registry);
        let line = text
            .lines()
            .find(|l| l.starts_with(r#"tls_certificate_not_after_seconds{certificate="server"}"#))
            .unwrap_or_else(|| panic!("{text}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(value as i64, not_after(&der).unwrap());
    }
}
