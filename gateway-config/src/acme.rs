//! `[https.acme]`: certificates from an ACME CA (Let's Encrypt, or a test CA), ordered and
//! renewed by the gateway itself, shared by an HA pair through `storage`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Dur;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (https).
    pub directory: String,
    /// Account contacts, each `mailto:...`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// Names the certificate covers (DNS names; validated with HTTP-01 on the `[http]`
    /// listeners, so each must resolve to this gateway or its VIP).
    pub domains: Vec<String>,
    /// Account, certificate, pending order, challenge files and the order lease. Both gateways
    /// of a pair name the same (shared) directory: one orders, both serve the result.
    pub storage: PathBuf,
    /// PEM bundle trusted for the directory's own TLS certificate (test CAs only; public CAs
    /// are checked against the built-in web roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// First wait after a failed order; doubles per failure up to `retry_max`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial: Dur,
    #[serde(default = "default_retry_max")]
    pub retry_max: Dur,
}

fn default_retry_initial() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(3600))
}

/// Whether `name` is a DNS name a CA can issue for (no wildcards: HTTP-01 cannot prove them).
fn dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        // An all-digit top label is an IP address, not a name.
        && !name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl AcmeConfig {
    /// A config with the default retry settings and no extra CA.
    pub fn new(
        directory: String,
        contact: Vec<String>,
        domains: Vec<String>,
        storage: PathBuf,
    ) -> AcmeConfig {
        AcmeConfig {
            directory,
            contact,
            domains,
            storage,
            ca: None,
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
        }
    }

    /// Why it is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if !self.directory.starts_with("https://") {
            return Err(format!(
                "acme directory {:?} must be an https:// URL",
                self.directory
            ));
        }
        if let Some(bad) = self.contact.iter().find(|c| {
            c.strip_prefix("mailto:")
                .is_none_or(|addr| !addr.contains('@') || addr.contains(char::is_whitespace))
        }) {
            return Err(format!("acme contact {bad:?} must be mailto:user@host"));
        }
        if self.domains.is_empty() {
            return Err("acme domains must name at least one DNS name".into());
        }
        if let Some(bad) = self.domains.iter().find(|d| !dns_name(d)) {
            return Err(format!(
                "acme domain {bad:?} is not a DNS name HTTP-01 can prove (no wildcards, no IPs)"
            ));
        }
        if self.storage.as_os_str().is_empty() {
            return Err("acme storage must name a directory".into());
        }
        if self.retry_initial.0 < Duration::from_millis(100)
            || self.retry_max.0 < self.retry_initial.0
        {
            return Err(
                "acme retry_initial must be at least 100ms and retry_max at least retry_initial"
                    .into(),
            );
        }
        Ok(())
    }

    /// Where HTTP-01 key authorizations are written (and served from, on every node).
    pub fn challenge_dir(&self) -> PathBuf {
        self.storage.join("challenges")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AcmeConfig {
        AcmeConfig::new(
            LETS_ENCRYPT.into(),
            vec!["mailto:ops@insightserenity.com".into()],
            vec!["api.insightserenity.com".into()],
            "/var/lib/gateway/acme".into(),
        )
    }

    #[test]
    fn a_production_setup_passes() {
        assert_eq!(config().check(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        type Edit = fn(&mut AcmeConfig);
        let cases: [(&str, Edit); 6] = [
            ("https:// URL", |c| c.directory = "http://ca/dir".into()),
            ("mailto:", |c| c.contact = vec!["ops@x.com".into()]),
            ("at least one", |c| c.domains.clear()),
            ("no wildcards", |c| c.domains = vec!["*.x.com".into()]),
            ("no wildcards", |c| c.domains = vec!["127.0.0.1".into()]),
            ("retry_max", |c| c.retry_max = Dur(Duration::from_secs(1))),
        ];
        for (needle, edit) in cases {
            let mut c = config();
            edit(&mut c);
            let err = c.check().expect_err(needle);
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }
}
