//! Sticky-session cookies: the gateway pins a client to a server by naming it in a cookie,
//! signed with HMAC-SHA256 so a client cannot choose a server by editing the cookie.
//!
//! Value: `<server key, hex>.<first 16 bytes of the HMAC, hex>`. A cookie that fails to verify
//! or names a server the pool no longer has is ignored; the client gets a fresh pick and a
//! new cookie.

use aws_lc_rs::hmac;

pub struct StickyCookie {
    pub name: String,
    key: hmac::Key,
    max_age: Option<u64>,
}

const TAG_LEN: usize = 16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 512 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl StickyCookie {
    pub fn new(name: &str, secret: &str, max_age: Option<std::time::Duration>) -> Self {
        StickyCookie {
            name: name.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            max_age: max_age.map(|d| d.as_secs()),
        }
    }

    /// The cookie value pinning `server`.
    pub fn value(&self, server: &str) -> String {
        let tag = hmac::sign(&self.key, server.as_bytes());
        format!(
            "{}.{}",
            hex(server.as_bytes()),
            hex(&tag.as_ref()[..TAG_LEN])
        )
    }

    /// The server a cookie value pins, if its signature holds.
    pub fn verify(&self, value: &str) -> Option<String> {
        let (server_hex, tag_hex) = value.split_once('.')?;
        let server = String::from_utf8(unhex(server_hex)?).ok()?;
        let tag = unhex(tag_hex)?;
        if tag.len() != TAG_LEN {
            return None;
        }
        let expected = hmac::sign(&self.key, server.as_bytes());
        // Constant-time comparison of the truncated tags.
        let same = expected.as_ref()[..TAG_LEN]
            .iter()
            .zip(&tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        same.then_some(server)
    }

    /// The `Set-Cookie` header value pinning `server`.
    pub fn set_cookie(&self, server: &str) -> String {
        let mut cookie = format!(
            "{}={}; Path=/; HttpOnly; Secure; SameSite=Lax",
            self.name,
            self.value(server)
        );
        if let Some(age) = self.max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_verify_and_tampering_fails() {
        let c = StickyCookie::new("is_sticky", "0123456789abcdef-secret", None);
        let v = c.value("10.0.3.12:3001");
        assert_eq!(c.verify(&v).as_deref(), Some("10.0.3.12:3001"));
        // Pointing the cookie at another server without the key fails.
        let forged = format!(
            "{}.{}",
            hex(b"10.0.3.10:3001"),
            v.split_once('.').unwrap().1
        );
        assert_eq!(c.verify(&forged), None);
        let mut flipped = v.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(c.verify(&String::from_utf8(flipped).unwrap()), None);
        for junk in ["", ".", "zz.zz", "abc", "00.", &"a".repeat(2000)] {
            assert_eq!(c.verify(junk), None, "{junk}");
        }
        // Another gateway with another secret does not accept it.
        let other = StickyCookie::new("is_sticky", "another-secret-0123456", None);
        assert_eq!(other.verify(&v), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let c = StickyCookie::new(
            "s",
            "0123456789abcdef",
            Some(std::time::Duration::from_secs(3600)),
        );
        let h = c.set_cookie("a:1");
        assert!(h.starts_with("s="));
        assert!(h.contains("HttpOnly; Secure; SameSite=Lax; Max-Age=3600"));
    }
}
