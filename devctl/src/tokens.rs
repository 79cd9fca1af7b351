//! `devctl token`: bearer tokens for the running deployment, signed with the state dir's key
//! (the services hold only its public half). Staff tokens carry a role and work on both
//! APIs; customer tokens carry a client and work on the customer API only.

use std::time::Duration;

use service_kit::auth::{sign, Claims, Role};

use crate::state::{StateDir, StateError};

/// Longest a token may live: a forgotten token should not work for ever.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Staff(Role),
    Customer(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Auth(#[from] service_kit::auth::AuthError),
    #[error("--ttl {0:?} is not between 1s and 30 days")]
    Ttl(Duration),
    #[error("--client {0:?}: use 1-64 of letters, digits, '.', '_', '-' and '@'")]
    Client(String),
}

/// The claims of a token for `subject`, valid for `ttl` from now.
pub fn claims(subject: &Subject, ttl: Duration) -> Result<Claims, TokenError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TokenError::Ttl(ttl));
    }
    Ok(match subject {
        Subject::Staff(role) => Claims::staff(
            format!("devctl-{}", role.as_str()),
            *role,
            &["admin-server", "customer-services"],
            ttl,
        ),
        Subject::Customer(client) => {
            let ok = !client.is_empty()
                && client.len() <= 64
                && client
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !ok {
                return Err(TokenError::Client(client.clone()));
            }
            Claims::customer(client.clone(), client.clone(), &["customer-services"], ttl)
        }
    })
}

/// A signed token (made with the deployment's key, which is created on first use).
pub fn issue(state: &StateDir, subject: &Subject, ttl: Duration) -> Result<String, TokenError> {
    let claims = claims(subject, ttl)?;
    Ok(sign(&claims, &state.signing_key()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_bounds() {
        let hour = Duration::from_secs(3600);
        let staff = claims(&Subject::Staff(Role::Operator), hour).unwrap();
        assert_eq!(staff.role(), Some(Role::Operator));
        assert_eq!(staff.aud, vec!["admin-server", "customer-services"]);
        let customer = claims(&Subject::Customer("acme".into()), hour).unwrap();
        assert_eq!(customer.client(), Some("acme"));
        assert_eq!(customer.aud, vec!["customer-services"]);
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
            assert!(claims(&Subject::Staff(Role::Admin), bad).is_err());
        }
        for bad in ["", "a b", "x\"y", &"z".repeat(65)] {
            assert!(
                claims(&Subject::Customer(bad.to_string()), hour).is_err(),
                "{bad}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_path_buf());
        let token = issue(&state, &Subject::Staff(Role::Viewer), hour).unwrap();
        assert_eq!(token.split('.').count(), 3, "a JWS: {token}");
        let again = issue(&state, &Subject::Staff(Role::Viewer), hour).unwrap();
        assert_eq!(
            token.split('.').next(),
            again.split('.').next(),
            "same key, same header"
        );
    }
}
