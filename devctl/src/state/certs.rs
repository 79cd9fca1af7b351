//! The deployment's PKI: the CA (made once, kept) and the leaves the plan names, reissued
//! only when their names change (or on `devctl certs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{write_atomic, StateDir, StateError};
use crate::plan::{CertSpec, Plan};

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// Issued certificate material, by `CertSpec::name`.
#[derive(Debug, Clone, Default)]
pub struct Certs {
    pub ca: String,
    pub leaves: BTreeMap<String, Leaf>,
}

/// Whether `issue` keeps leaves whose names did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reissue {
    /// Only missing leaves and leaves whose names changed.
    Changed,
    /// Every leaf (the CA stays).
    All,
}

struct LeafPaths {
    cert: PathBuf,
    key: PathBuf,
    names: PathBuf,
}

fn leaf_paths(dir: &Path, spec: &CertSpec) -> LeafPaths {
    LeafPaths {
        cert: dir.join(format!("{}.crt", spec.name)),
        key: dir.join(format!("{}.key", spec.name)),
        names: dir.join(format!("{}.names", spec.name)),
    }
}

impl StateDir {
    /// Loads the CA (or makes it), and issues every leaf the plan names that is missing or
    /// whose names changed (`Reissue::All`: every leaf).
    pub fn issue(&self, plan: &Plan, ca_name: &str, reissue: Reissue) -> Result<Certs, StateError> {
        use service_kit::pki::{CertificateAuthority, LeafSpec};
        let dir = self.certs_dir();
        let ca_crt = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let ca = match (
            std::fs::read_to_string(&ca_crt),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(c), Ok(k)) => CertificateAuthority::from_pem(&c, &k)?,
            _ => {
                let ca = CertificateAuthority::generate(ca_name)?;
                write_atomic(&ca_key, ca.key_pem.as_bytes(), true)?;
                write_atomic(&ca_crt, ca.cert_pem.as_bytes(), false)?;
                ca
            }
        };
        let mut certs = Certs {
            ca: ca.cert_pem.clone(),
            leaves: BTreeMap::new(),
        };
        for spec in &plan.certificates {
            let paths = leaf_paths(&dir, spec);
            let wanted = spec.sans.join("\n");
            let current = (
                std::fs::read_to_string(&paths.cert),
                std::fs::read_to_string(&paths.key),
                std::fs::read_to_string(&paths.names),
            );
            let leaf = match current {
                (Ok(cert), Ok(key), Ok(names))
                    if reissue == Reissue::Changed && names == wanted =>
                {
                    Leaf { cert, key }
                }
                _ => {
                    let sans: Vec<&str> = spec.sans.iter().map(String::as_str).collect();
                    let issued = ca.issue(&LeafSpec::new(&spec.common_name, &sans))?;
                    write_atomic(&paths.key, issued.key_pem.as_bytes(), true)?;
                    write_atomic(&paths.cert, issued.cert_pem.as_bytes(), false)?;
                    write_atomic(&paths.names, wanted.as_bytes(), false)?;
                    Leaf {
                        cert: issued.cert_pem,
                        key: issued.key_pem,
                    }
                }
            };
            certs.leaves.insert(spec.name.clone(), leaf);
        }
        Ok(certs)
    }
}
