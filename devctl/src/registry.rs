//! Registries, without I/O: where `devctl images push REGISTRY[/PREFIX]` puts our images, the
//! credentials the user's Docker config holds for a registry, and the pins file (`images.json`
//! in the state dir) that records the digest every pushed image got, so what is rendered for
//! production names exactly the bytes that were tested.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{0:?} is not a registry: write HOST[:PORT][/PREFIX], e.g. registry.example.com/insightserenity or 127.0.0.1:5000")]
    BadTarget(String),
    #[error("Docker config: {0}")]
    Config(String),
}

/// `REGISTRY[/PREFIX]` as given to `images push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]` (what credentials are looked up by).
    pub host: String,
    /// Path under the registry (may be empty).
    pub prefix: String,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Target, RegistryError> {
        let bad = || RegistryError::BadTarget(raw.to_string());
        let raw = raw.trim().trim_end_matches('/');
        if raw.contains("://") || raw.is_empty() {
            return Err(bad());
        }
        let (host, prefix) = raw.split_once('/').unwrap_or((raw, ""));
        // A registry host has a dot, a port or is localhost (Docker's own rule).
        let host_ok = host.contains('.') || host.contains(':') || host == "localhost";
        let chars_ok = |s: &str, extra: &[u8]| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        };
        if !host_ok
            || !chars_ok(host, b".-:")
            || !chars_ok(prefix, b"._-/")
            || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
        {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The repository of one of our images there: `host/prefix/admin-server`.
    pub fn repository(&self, binary: &str) -> String {
        if self.prefix.is_empty() {
            format!("{}/{binary}", self.host)
        } else {
            format!("{}/{}/{binary}", self.host, self.prefix)
        }
    }
}

/// The pins file: each of our images' pushed reference by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// Our local tag (`insightserenity/admin-server:0.1.0`) → `repo@sha256:…`.
    pub images: BTreeMap<String, String>,
}

impl Pins {
    /// The pinned reference of a local tag.
    pub fn get(&self, tag: &str) -> Option<&str> {
        self.images.get(tag).map(String::as_str)
    }
}

/// What the user's Docker config (`~/.docker/config.json`) says about a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// Username and password (decoded from `auths.HOST.auth`).
    Basic {
        username: String,
        password: String,
    },
    /// An identity token (`auths.HOST.identitytoken`).
    Token(String),
    /// Ask this credential helper (`docker-credential-NAME get`).
    Helper(String),
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The host part of a config key (`https://index.docker.io/v1/` → `index.docker.io`).
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// The credentials `config_json` holds for `host` (a per-registry helper first, then a
/// stored `auth` or token, then the default store).
pub fn credentials(config_json: &str, host: &str) -> Result<Credentials, RegistryError> {
    let config: DockerConfig =
        serde_json::from_str(config_json).map_err(|e| RegistryError::Config(e.to_string()))?;
    let wanted = if host == "docker.io" {
        "index.docker.io"
    } else {
        host
    };
    if let Some(helper) = config.cred_helpers.get(wanted) {
        return Ok(Credentials::Helper(helper.clone()));
    }
    if let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == wanted)
        .map(|(_, v)| v)
    {
        if let Some(token) = &entry.identitytoken {
            return Ok(Credentials::Token(token.clone()));
        }
        if let Some(auth) = &entry.auth {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| RegistryError::Config(format!("auths.{host}.auth: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| RegistryError::Config(format!("auths.{host}.auth is not text")))?;
            let (username, password) = text.split_once(':').ok_or_else(|| {
                RegistryError::Config(format!("auths.{host}.auth is not USER:PASSWORD"))
            })?;
            return Ok(Credentials::Basic {
                username: username.into(),
                password: password.into(),
            });
        }
    }
    Ok(match config.creds_store {
        Some(store) => Credentials::Helper(store),
        None => Credentials::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_registry_and_an_optional_prefix() {
        let t = Target::parse("127.0.0.1:5000").unwrap();
        assert_eq!(t.repository("gateway"), "127.0.0.1:5000/gateway");
        let t = Target::parse("registry.example.com/team/insightserenity/").unwrap();
        assert_eq!(
            t.repository("admin-server"),
            "registry.example.com/team/insightserenity/admin-server"
        );
        assert_eq!(
            Target::parse("localhost/x").unwrap().repository("a"),
            "localhost/x/a"
        );
        for bad in [
            "",
            "insightserenity",
            "https://r.example.com",
            "R.example.com",
            "r.io//x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_come_from_helpers_tokens_or_auth() {
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndvcmQ="},
                "registry.example.com": {"identitytoken": "tok"},
                "127.0.0.1:5000": {}
            },
            "credHelpers": {"gcr.io": "gcloud"},
            "credsStore": "desktop"
        }"#;
        assert_eq!(
            credentials(config, "docker.io").unwrap(),
            Credentials::Basic {
                username: "user".into(),
                password: "pass:word".into()
            }
        );
        assert_eq!(
            credentials(config, "registry.example.com").unwrap(),
            Credentials::Token("tok".into())
        );
        assert_eq!(
            credentials(config, "gcr.io").unwrap(),
            Credentials::Helper("gcloud".into())
        );
        assert_eq!(
            credentials(config, "other.example.com").unwrap(),
            Credentials::Helper("desktop".into())
        );
        assert_eq!(
            credentials("{}", "127.0.0.1:5000").unwrap(),
            Credentials::None
        );
        assert!(credentials("not json", "x.io").is_err());
        let broken = r#"{"auths": {"x.io": {"auth": "%%%"}}}"#;
        assert!(credentials(broken, "x.io").is_err());
    }
}
