//! The HTTPS listeners' certificate: one swappable slot every handshake reads
//! ([`ServerCerts`], a rustls `ResolvesServerCert`), filled from the `[https]` files, by the
//! ACME manager (`acme`), or with a self-signed stand-in until ACME's first certificate
//! exists; OCSP responses are stapled onto whatever is installed (`ocsp`).
//!
//! Swapping changes what the next handshake gets; open connections keep theirs, so renewals
//! and reloads never drop a connection.

pub mod acme;
pub mod ocsp;
pub mod renewal;
pub mod storage;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// Unix time in seconds (0 if the clock is before 1970).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where the installed certificate came from (`/-/ready`, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `[https] cert` / `key`.
    Files,
    /// Issued by the ACME CA.
    Acme,
    /// A stand-in while no ACME certificate exists yet; no client trusts it.
    SelfSigned,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Files => "files",
            CertSource::Acme => "acme",
            CertSource::SelfSigned => "self-signed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what}: {detail}")]
    Pem { what: String, detail: String },
    #[error("{0}: the private key does not match the certificate")]
    Mismatch(String),
    #[error("unusable private key: {0}")]
    Key(rustls::Error),
    #[error("self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// One certificate chain with its key, parsed.
#[derive(Clone)]
pub struct Installed {
    pub key: Arc<CertifiedKey>,
    pub source: CertSource,
    /// The leaf's not-after and not-before (unix seconds), and the DNS names it covers.
    pub not_before: i64,
    pub not_after: i64,
    pub names: Vec<String>,
}

impl Installed {
    /// Parses a chain and its key, checking that they belong together.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        source: CertSource,
        what: &str,
    ) -> Result<Installed, CertError> {
        let leaf = chain.first().ok_or_else(|| CertError::Pem {
            what: what.to_owned(),
            detail: "no certificate".into(),
        })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| CertError::Pem {
                what: what.to_owned(),
                detail: e.to_string(),
            })?;
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let names = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let signer =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(CertError::Key)?;
        let key = CertifiedKey::new(chain, signer);
        if key.keys_match().is_err() {
            return Err(CertError::Mismatch(what.to_owned()));
        }
        Ok(Installed {
            key: Arc::new(key),
            source,
            not_before,
            not_after,
            names,
        })
    }

    /// A key and chain from PEM text (one file may hold both).
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        source: CertSource,
        what: &str,
    ) -> Result<Installed, CertError> {
        let pem_err = |detail: String| CertError::Pem {
            what: what.to_owned(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err(e.to_string()))?;
        Installed::new(chain, key, source, what)
    }

    /// A certificate for `names` signed by its own key: what the HTTPS listener serves until
    /// ACME has issued the real one.
    pub fn self_signed(names: &[String]) -> Result<Installed, CertError> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(names.to_vec())?;
        let cert = params.self_signed(&key)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| CertError::Pem {
            what: "self-signed key".into(),
            detail: e.to_string(),
        })?;
        Installed::new(
            vec![cert.der().clone()],
            key_der,
            CertSource::SelfSigned,
            "self-signed certificate",
        )
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `Installed::new` refuses an empty chain.
        &self.key.cert[0]
    }

    /// Whether `other` is the same chain (a reload of unchanged files keeps the staple).
    pub fn same_chain(&self, other: &Installed) -> bool {
        self.key.cert == other.key.cert
    }

    /// Whether it covers exactly `domains` (order ignored).
    pub fn covers(&self, domains: &[String]) -> bool {
        let mut have: Vec<String> = self.names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let mut want: Vec<String> = domains.iter().map(|n| n.to_ascii_lowercase()).collect();
        have.sort();
        have.dedup();
        want.sort();
        want.dedup();
        have == want
    }
}

/// The certificate slot of the HTTPS listeners, shared by every snapshot.
pub struct ServerCerts {
    current: ArcSwap<Option<Installed>>,
    /// Bumped on every install (not on staples): the OCSP task restarts on it.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for ServerCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCerts").finish_non_exhaustive()
    }
}

impl Default for ServerCerts {
    fn default() -> Self {
        ServerCerts {
            current: ArcSwap::from_pointee(None),
            changed: watch::channel(0).0,
        }
    }
}

impl ServerCerts {
    pub fn current(&self) -> Option<Installed> {
        (**self.current.load()).clone()
    }

    /// Serves `installed` from the next handshake on. Installing the chain already served
    /// changes nothing (its staple stays).
    pub fn install(&self, installed: Installed) {
        if let Some(now) = self.current() {
            if now.same_chain(&installed) && now.source == installed.source {
                return;
            }
        }
        service_kit::tls::record_not_after("server", &installed.key.cert);
        tracing::info!(
            source = installed.source.as_str(),
            names = ?installed.names,
            not_after = installed.not_after,
            "serving certificate"
        );
        self.current.store(Arc::new(Some(installed)));
        self.changed.send_modify(|n| *n += 1);
    }

    /// Attaches (or with `None` removes) an OCSP staple, if `leaf` is still the certificate
    /// served.
    pub fn staple(&self, leaf: &CertificateDer<'_>, response: Option<Vec<u8>>) {
        let Some(mut now) = self.current() else {
            return;
        };
        if now.leaf() != leaf || now.key.ocsp == response {
            return;
        }
        let mut key = (*now.key).clone();
        tracing::info!(
            bytes = response.as_ref().map_or(0, Vec::len),
            "OCSP staple {}",
            if response.is_some() {
                "attached"
            } else {
                "removed"
            }
        );
        key.ocsp = response;
        now.key = Arc::new(key);
        self.current.store(Arc::new(Some(now)));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().as_ref().map(|i| i.key.clone())
    }
}
