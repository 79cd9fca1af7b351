//! Bearer tokens for the backends' API routes (feature `auth`).
//!
//! Tokens are JWTs signed with Ed25519 (`alg: EdDSA`). Services hold only public keys: a JWKS
//! file (`--auth-jwks` / `AUTH_JWKS`) of `OKP`/`Ed25519` keys, each with a `kid`; several keys
//! may be listed so keys rotate without downtime. [`Auth::start`] loads it and polls its mtime
//! every [`RELOAD_POLL`]; a rewrite that does not parse keeps the last good key set.
//!
//! Claims ([`Claims`]): `sub`, `aud` (the service's name, a string or a list), `exp` (required,
//! [`LEEWAY_SECS`] of leeway), and exactly one of `role` (staff: admin, operator, support,
//! viewer) or `client` (a customer token).
//!
//! [`Auth::protect`] wraps a service's API routes: a missing, malformed,
//! expired or otherwise invalid token is 401 with `WWW-Authenticate: Bearer realm=...` (RFC 6750
//! `error="invalid_token"` when a token was presented); the verified [`Claims`] land in the
//! request's extensions, where handlers take them as an extractor. A 403 from a handler gets
//! `WWW-Authenticate: Bearer ..., error="insufficient_scope"`. The token comes from
//! `Authorization: Bearer <JWT>`; WebSocket upgrade requests (browsers cannot set headers on
//! them) may pass it as the `access_token` query parameter instead (RFC 6750 §2.3). Tokens
//! are never logged.
//!
//! For devctl and tests, [`SigningKey`] generates a key pair (PKCS#8 PEM private key, JWKS of
//! its public key with an RFC 7638 thumbprint as `kid`) and [`sign`]s [`Claims`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use service_kit::auth::{jwks_json, sign, Claims, Role, SigningKey};
//! # fn main() -> Result<(), service_kit::auth::AuthError> {
//! let key = SigningKey::generate()?;                 // once; keep key.to_pem() private
//! let jwks = jwks_json(&[&key]);                      // give this file to the services
//! let claims = Claims::staff("dev", Role::Admin, &["admin-server", "customer-services"],
//!                            Duration::from_secs(3600));
//! let token = sign(&claims, &key)?;                  // Authorization: Bearer {token}
//! # let _ = (jwks, token); Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::KeyPair as _;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::settings::AuthSetting;

/// How often the JWKS file's modification time is checked.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 30;
/// The query parameter a WebSocket upgrade may carry its token in.
pub const QUERY_PARAM: &str = "access_token";

/// Staff roles, weakest first: `viewer < support < operator < admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Support,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Support, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Support => "support",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthError::Role(s.to_string()))
    }
}

/// A token's claims: what [`sign`] writes and what a verified request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a user id, an email, or `devctl`.
    pub sub: String,
    /// The services the token is for (`admin-server`, `customer-services`); serialized as a
    /// string when there is one.
    #[serde(with = "one_or_many")]
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// A staff token's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A customer token's client name (matches a consultation's `client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    Staff(Role),
    Customer(&'a str),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Claims {
    /// A staff token for `audiences`, valid for `ttl` from now.
    pub fn staff(sub: impl Into<String>, role: Role, audiences: &[&str], ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            sub: sub.into(),
            aud: audiences.iter().map(|a| a.to_string()).collect(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            role: Some(role),
            client: None,
        }
    }

    /// A customer token for `client`, valid for `ttl` from now.
    pub fn customer(
        sub: impl Into<String>,
        client: impl Into<String>,
        audiences: &[&str],
        ttl: Duration,
    ) -> Claims {
        Claims {
            role: None,
            client: Some(client.into()),
            ..Claims::staff(sub, Role::Viewer, audiences, ttl)
        }
    }

    /// What a `--no-auth` service treats every request as: an admin named `anonymous`.
    pub fn anonymous(audience: &str) -> Claims {
        Claims {
            sub: "anonymous".to_string(),
            aud: vec![audience.to_string()],
            exp: u64::MAX,
            iat: None,
            role: Some(Role::Admin),
            client: None,
        }
    }

    pub fn principal(&self) -> Principal<'_> {
        match (&self.client, self.role) {
            (Some(client), _) => Principal::Customer(client),
            (None, Some(role)) => Principal::Staff(role),
            // verify() refuses tokens with neither; a hand-built value reads as least privilege.
            (None, None) => Principal::Customer(""),
        }
    }

    /// The staff role, `None` for a customer token.
    pub fn role(&self) -> Option<Role> {
        match self.principal() {
            Principal::Staff(role) => Some(role),
            Principal::Customer(_) => None,
        }
    }

    /// The client a customer token is limited to, `None` for staff.
    pub fn client(&self) -> Option<&str> {
        match self.principal() {
            Principal::Customer(client) => Some(client),
            Principal::Staff(_) => None,
        }
    }

    /// Ok for staff with at least `min`; otherwise a 403 `forbidden` [`ApiError`].
    pub fn require_role(&self, min: Role, action: &str) -> Result<(), ApiError> {
        match self.role() {
            Some(role) if role >= min => Ok(()),
            Some(role) => Err(forbidden(format!(
                "{action} needs role {min} or higher; this token has role {role}"
            ))),
            None => Err(forbidden(format!(
                "{action} needs a staff token (role {min} or higher)"
            ))),
        }
    }

    /// How long until the token expires (`None` when it never does, i.e. `--no-auth`).
    pub fn expires_in(&self) -> Option<Duration> {
        if self.exp == u64::MAX {
            return None;
        }
        Some(Duration::from_secs(
            self.exp
                .saturating_add(LEEWAY_SECS)
                .saturating_sub(unix_now()),
        ))
    }
}

/// The 403 every authorization failure uses.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read JWKS {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
    #[error("cannot write JWKS {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid Ed25519 private key: {0}")]
    Key(String),
    #[error("cannot sign token: {0}")]
    Sign(String),
    #[error("unknown role {0:?}: expected admin, operator, support or viewer")]
    Role(String),
}

// ---------------------------------------------------------------------------------------------
// Signing (devctl and tests)

const PEM_LABEL: &str = "PRIVATE KEY";

/// An Ed25519 private key with its `kid` (the RFC 7638 thumbprint of its public JWK).
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    x: String,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<SigningKey, AuthError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AuthError::Key("key generation failed".to_string()))?;
        SigningKey::from_pkcs8_der(doc.as_ref())
    }

    /// From a PKCS#8 DER Ed25519 private key (v1 or v2).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, AuthError> {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        let x = b64url(pair.public_key().as_ref());
        // RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = b64url(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
        );
        Ok(SigningKey {
            kid,
            pkcs8: der.to_vec(),
            x,
            encoding: EncodingKey::from_ed_der(der),
        })
    }

    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as [`Self::to_pem`] writes and
    /// `openssl genpkey -algorithm ed25519` makes.
    pub fn from_pem(pem: &str) -> Result<SigningKey, AuthError> {
        let begin = format!("-----BEGIN {PEM_LABEL}-----");
        let end = format!("-----END {PEM_LABEL}-----");
        let body = pem
            .split_once(&begin)
            .and_then(|(_, rest)| rest.split_once(&end))
            .map(|(body, _)| body)
            .ok_or_else(|| AuthError::Key(format!("no {begin} block")))?;
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| AuthError::Key(format!("bad base64: {e}")))?;
        SigningKey::from_pkcs8_der(&der)
    }

    /// The private key as PKCS#8 PEM. Keep it private (file mode 0600).
    pub fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
        pem
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK: `{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid","x"}`.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": self.x,
        })
    }

    /// Signs `claims` (header `alg: EdDSA`, `typ: JWT`, `kid`).
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }
}

/// Signs `claims` with `key`: the compact JWT to send as `Authorization: Bearer <JWT>`.
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, AuthError> {
    key.sign(claims)
}

/// A JWKS document (`{"keys":[...]}`) of the public halves of `keys`.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    let keys: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
    let doc = serde_json::json!({ "keys": keys });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
}

/// Writes [`jwks_json`] of `keys` to `path` atomically (temporary file + rename), so a
/// service polling it never reads half a file. To rotate: write the old and the new key,
/// switch signing to the new one, and drop the old one once its tokens have expired.
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) -> Result<(), AuthError> {
    let err = |source| AuthError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, jwks_json(keys)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

// ---------------------------------------------------------------------------------------------
// Verification

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS into decoding keys by `kid`. Keys other than OKP/Ed25519 are refused, so a
/// wrong file is noticed rather than half-used.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let doc: JwksDoc = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in doc.keys.iter().enumerate() {
        let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
        if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
            return Err(format!(
                "key {i}: only kty OKP with crv Ed25519 is supported"
            ));
        }
        if let Some(alg) = field("alg") {
            if alg != "EdDSA" {
                return Err(format!("key {i}: alg must be EdDSA, not {alg}"));
            }
        }
        let kid = field("kid")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| format!("key {i}: missing kid"))?;
        let x = field("x").ok_or_else(|| format!("key {i}: missing x"))?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| format!("key {kid}: x is not base64url"))?;
        if raw.len() != 32 {
            return Err(format!("key {kid}: x must be a 32-byte Ed25519 public key"));
        }
        let key = DecodingKey::from_ed_components(x).map_err(|e| format!("key {kid}: {e}"))?;
        if keys.insert(kid.to_string(), key).is_some() {
            return Err(format!("duplicate kid {kid}"));
        }
    }
    if keys.is_empty() {
        return Err("no keys".to_string());
    }
    Ok(keys)
}

/// Why a token was refused (the text goes to the client as `error_description`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadRequest(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

struct Jwks {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// The stamp of the file last tried (good or bad), so a bad rewrite is logged once.
    seen: std::sync::Mutex<Option<FileStamp>>,
}

struct Inner {
    audience: String,
    realm: HeaderValue,
    jwks: Option<Jwks>,
    validation: Validation,
}

/// The token verifier of one service. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("audience", &self.inner.audience)
            .field("jwks", &self.inner.jwks.as_ref().map(|j| &j.path))
            .finish()
    }
}

fn load_keys(path: &Path) -> Result<HashMap<String, DecodingKey>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_jwks(&text).map_err(|reason| AuthError::Jwks {
        path: path.to_owned(),
        reason,
    })
}

impl Auth {
    /// Loads the keys for `setting` (an unreadable or invalid JWKS is an error: the caller
    /// refuses to start) and, inside a tokio runtime, starts polling the file for changes.
    /// `audience` is the service's name, which tokens must name in `aud`.
    pub fn start(setting: &AuthSetting, audience: &str) -> Result<Auth, AuthError> {
        let auth = match setting {
            AuthSetting::Disabled => Auth::build(audience, None),
            AuthSetting::Jwks(path) => {
                let seen = stamp(path);
                let keys = load_keys(path)?;
                tracing::info!(path = %path.display(), keys = keys.len(), "token keys loaded");
                Auth::build(
                    audience,
                    Some(Jwks {
                        path: path.clone(),
                        current: RwLock::new(Arc::new(KeySet { keys })),
                        seen: std::sync::Mutex::new(seen),
                    }),
                )
            }
        };
        if auth.inner.jwks.is_some() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(&auth.inner);
                handle.spawn(poll_jwks(weak));
            }
        }
        Ok(auth)
    }

    fn build(audience: &str, jwks: Option<Jwks>) -> Auth {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let realm = HeaderValue::from_str(&format!("Bearer realm=\"{audience}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        Auth {
            inner: Arc::new(Inner {
                audience: audience.to_string(),
                realm,
                jwks,
                validation,
            }),
        }
    }

    /// True under `--no-auth`.
    pub fn is_disabled(&self) -> bool {
        self.inner.jwks.is_none()
    }

    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// Re-reads the JWKS if its mtime or size changed; returns whether a new key set is in
    /// use. The poll task calls this every [`RELOAD_POLL`].
    pub fn reload_if_changed(&self) -> bool {
        reload_if_changed(&self.inner)
    }

    /// Verifies a compact JWT and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let Some(jwks) = &self.inner.jwks else {
            return Ok(Claims::anonymous(&self.inner.audience));
        };
        let invalid = |m: &str| TokenError::Invalid(m.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed token (or an algorithm other than EdDSA)"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("token algorithm must be EdDSA"));
        }
        let kid = header.kid.ok_or_else(|| invalid("token has no kid"))?;
        let keys = jwks
            .current
            .read()
            .map(|k| k.clone())
            .map_err(|_| invalid("key set unavailable"))?;
        let key = keys
            .keys
            .get(&kid)
            .ok_or_else(|| invalid("token signed by an unknown key"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.inner.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => invalid("token expired"),
                    K::InvalidAudience => invalid("token is not for this service (aud)"),
                    K::InvalidSignature => invalid("bad token signature"),
                    K::MissingRequiredClaim(c) => {
                        TokenError::Invalid(format!("token lacks the {c} claim"))
                    }
                    K::ImmatureSignature => invalid("token not yet valid"),
                    K::Json(_) | K::InvalidClaimFormat(_) => invalid("invalid token claims"),
                    _ => invalid("invalid token"),
                }
            })?;
        let claims = data.claims;
        match (&claims.role, &claims.client) {
            (Some(_), Some(_)) => Err(invalid("token has both role and client")),
            (None, None) => Err(invalid("token has neither role nor client")),
            (None, Some(c)) if c.is_empty() => Err(invalid("token has an empty client")),
            _ => Ok(claims),
        }
    }

    /// The token of a request: `Authorization: Bearer <JWT>`, or for a WebSocket upgrade the
    /// `access_token` query parameter (never both).
    pub fn token_from(parts: &Parts) -> Result<String, TokenError> {
        let header = match parts.headers.get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| TokenError::Invalid("malformed Authorization header".into()))?;
                let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
                if !scheme.eq_ignore_ascii_case("bearer") {
                    // Another scheme presents no bearer credentials at all.
                    return Err(TokenError::Missing);
                }
                let token = rest.trim();
                if token.is_empty() {
                    return Err(TokenError::Invalid("empty bearer token".into()));
                }
                Some(token.to_string())
            }
        };
        let is_upgrade = parts
            .headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let query = parts.uri.query().and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == QUERY_PARAM).then(|| v.to_string())
            })
        });
        match (header, query) {
            (Some(_), Some(_)) => Err(TokenError::BadRequest(
                "send the token in one place: Authorization header or access_token".into(),
            )),
            (Some(token), None) => Ok(token),
            (None, Some(token)) if is_upgrade => Ok(token),
            (None, Some(_)) => Err(TokenError::BadRequest(
                "access_token in the query is accepted on WebSocket upgrades only; use Authorization: Bearer".into(),
            )),
            (None, None) => Err(TokenError::Missing),
        }
    }

    /// The 401/400 answer for `err`, with its `WWW-Authenticate` challenge.
    pub fn reject(&self, err: &TokenError) -> Response {
        let (status, code, challenge) = match err {
            TokenError::Missing => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                self.inner.realm.clone(),
            ),
            TokenError::Invalid(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                self.challenge("invalid_token", why),
            ),
            TokenError::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                self.challenge("invalid_request", why),
            ),
        };
        let message = match err {
            TokenError::Missing => {
                "this endpoint needs a bearer token (Authorization: Bearer <JWT>)".to_string()
            }
            other => other.to_string(),
        };
        let mut response = ApiError::new(status, code, message).into_response();
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, challenge);
        response
    }

    fn challenge(&self, error: &str, description: &str) -> HeaderValue {
        // error_description is limited to printable ASCII without `"` and `\`.
        let description: String = description
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
            .collect();
        HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{description}\"",
            self.inner.audience
        ))
        .unwrap_or_else(|_| self.inner.realm.clone())
    }

    /// Wraps a service's API routes (`route_layer`, so unknown paths still get the JSON 404):
    /// verifies the token, puts [`Claims`] in the request's extensions, answers 401 otherwise,
    /// and adds the `insufficient_scope` challenge to a handler's 403.
    pub fn protect<S>(&self, routes: axum::Router<S>) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        routes.route_layer(axum::middleware::from_fn_with_state(
            self.clone(),
            authenticate,
        ))
    }
}

async fn authenticate(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let claims = if auth.is_disabled() {
        Claims::anonymous(auth.audience())
    } else {
        let verified = Auth::token_from(&parts).and_then(|token| auth.verify(&token));
        match verified {
            Ok(claims) => claims,
            Err(err) => {
                tracing::info!(reason = %err, "request refused: no valid token");
                return auth.reject(&err);
            }
        }
    };
    parts.extensions.insert(claims);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if response.status() == StatusCode::FORBIDDEN
        && !response
            .headers()
            .contains_key(http::header::WWW_AUTHENTICATE)
    {
        let challenge = HeaderValue::from_str(&format!(
            "Bearer realm=\"{}\", error=\"insufficient_scope\"",
            auth.audience()
        ))
        .unwrap_or_else(|_| auth.inner.realm.clone());
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, challenge);
    }
    response
}

fn reload_if_changed(inner: &Inner) -> bool {
    let Some(jwks) = &inner.jwks else {
        return false;
    };
    let now = stamp(&jwks.path);
    {
        let Ok(mut seen) = jwks.seen.lock() else {
            return false;
        };
        if *seen == now {
            return false;
        }
        *seen = now;
    }
    match load_keys(&jwks.path) {
        Ok(keys) => {
            let count = keys.len();
            if let Ok(mut current) = jwks.current.write() {
                *current = Arc::new(KeySet { keys });
            }
            tracing::info!(path = %jwks.path.display(), keys = count, "token keys reloaded");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "token keys not reloaded; keeping the previous key set");
            false
        }
    }
}

async fn poll_jwks(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(RELOAD_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // File I/O off the async threads; the JWKS is small.
        let _ = tokio::task::spawn_blocking(move || reload_if_changed(&inner)).await;
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Claims>().cloned().ok_or_else(|| {
            ApiError::internal(&"route without the auth layer asked for the token's claims")
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn auth_with(dir: &Path, keys: &[&SigningKey]) -> (Auth, PathBuf) {
        let path = dir.join("jwks.json");
        write_jwks(&path, keys).unwrap();
        let auth = Auth::start(&AuthSetting::Jwks(path.clone()), "admin-server").unwrap();
        (auth, path)
    }

    #[test]
    fn signs_and_verifies_and_round_trips_pem() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.kid(), key.kid());
        let (auth, _) = auth_with(dir.path(), &[&key]);
        let claims = Claims::staff(
            "ada",
            Role::Operator,
            &["admin-server"],
            Duration::from_secs(60),
        );
        let verified = auth.verify(&sign(&claims, &again).unwrap()).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.role(), Some(Role::Operator));
        assert!(verified.require_role(Role::Operator, "x").is_ok());
        assert_eq!(
            verified.require_role(Role::Admin, "x").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        // Several audiences: valid for each named service.
        let both = Claims::customer(
            "c",
            "Acme",
            &["customer-services", "admin-server"],
            Duration::from_secs(60),
        );
        assert_eq!(
            auth.verify(&sign(&both, &key).unwrap()).unwrap().client(),
            Some("Acme")
        );
    }

    #[test]
    fn refuses_bad_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let (auth, _) = auth_with(dir.path(), &[&key]);
        let ttl = Duration::from_secs(60);
        let ok = Claims::staff("a", Role::Admin, &["admin-server"], ttl);
        let expired = Claims {
            exp: unix_now() - 2 * LEEWAY_SECS - 60,
            ..ok.clone()
        };
        let wrong_aud = Claims::staff("a", Role::Admin, &["customer-services"], ttl);
        let neither = Claims {
            role: None,
            ..ok.clone()
        };
        let b64 = |v: serde_json::Value| b64url(v.to_string().as_bytes());
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg":"none","typ":"JWT","kid":key.kid()})),
            b64(serde_json::to_value(&ok).unwrap())
        );
        // A forged kid: another key's signature claiming our kid.
        let forged = {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(key.kid().to_string());
            jsonwebtoken::encode(&header, &ok, &other.encoding).unwrap()
        };
        let cases = [
            (sign(&expired, &key).unwrap(), "expired"),
            (sign(&wrong_aud, &key).unwrap(), "aud"),
            (sign(&ok, &other).unwrap(), "unknown key"),
            (forged, "signature"),
            (none, "malformed"),
            ("not.a.jwt".to_string(), "malformed"),
            ("garbage".to_string(), "malformed"),
            (sign(&neither, &key).unwrap(), "neither"),
        ];
        for (token, why) in cases {
            match auth.verify(&token) {
                Err(TokenError::Invalid(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn reloads_a_rewritten_jwks_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let (auth, path) = auth_with(dir.path(), &[&old]);
        let token = |k: &SigningKey| {
            sign(
                &Claims::staff(
                    "a",
                    Role::Viewer,
                    &["admin-server"],
                    Duration::from_secs(60),
                ),
                k,
            )
            .unwrap()
        };
        assert!(auth.verify(&token(&new)).is_err());
        write_jwks(&path, &[&old, &new]).unwrap();
        assert!(auth.reload_if_changed());
        assert!(auth.verify(&token(&new)).is_ok());
        assert!(auth.verify(&token(&old)).is_ok());
        std::fs::write(&path, "{\"keys\": [").unwrap();
        assert!(!auth.reload_if_changed());
        assert!(auth.verify(&token(&new)).is_ok(), "last good set kept");
    }

    #[test]
    fn jwks_validation() {
        assert!(parse_jwks(r#"{"keys":[]}"#)
            .unwrap_err()
            .contains("no keys"));
        assert!(parse_jwks(r#"{"keys":[{"kty":"RSA","kid":"a","n":"x","e":"AQAB"}]}"#).is_err());
        assert!(
            parse_jwks(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#)
                .unwrap_err()
                .contains("kid")
        );
        let key = SigningKey::generate().unwrap();
        assert_eq!(parse_jwks(&jwks_json(&[&key])).unwrap().len(), 1);
        assert!(parse_jwks(&jwks_json(&[&key, &key]))
            .unwrap_err()
            .contains("duplicate"));
    }

    #[test]
    fn token_sources() {
        let parts = |uri: &str, headers: &[(&str, &str)]| {
            let mut b = http::Request::builder().uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            Auth::token_from(&parts("/x", &[])),
            Err(TokenError::Missing)
        );
        assert_eq!(
            Auth::token_from(&parts("/x", &[("authorization", "Basic abc")])),
            Err(TokenError::Missing)
        );
        assert_eq!(
            Auth::token_from(&parts("/x", &[("authorization", "bearer t.o.k")])).unwrap(),
            "t.o.k"
        );
        let ws = [("upgrade", "websocket")];
        assert_eq!(
            Auth::token_from(&parts("/n?a=1&access_token=t.o.k", &ws)).unwrap(),
            "t.o.k"
        );
        assert!(matches!(
            Auth::token_from(&parts("/n?access_token=t.o.k", &[])),
            Err(TokenError::BadRequest(_))
        ));
        assert!(matches!(
            Auth::token_from(&parts(
                "/n?access_token=t",
                &[("upgrade", "websocket"), ("authorization", "Bearer t")]
            )),
            Err(TokenError::BadRequest(_))
        ));
    }
}
