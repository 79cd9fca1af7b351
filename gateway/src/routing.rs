//! Path normalization and longest-prefix routing. Pure: no I/O.
//!
//! Paths are normalized before matching so that policy attached to a route cannot be dodged
//! by spelling: unreserved percent-escapes are decoded (`%61` → `a`, `%2e` → `.`), other escapes
//! are upper-cased, repeated slashes merge, and `.`/`..` segments are resolved. Escaped
//! separators (`%2F`, `%5C`), NUL, control bytes, bad escapes and `..` above the root are
//! rejected as ambiguous (400). The normalized path is also what the upstream receives, so the
//! gateway and the backend agree on what was asked for.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    EncodedSeparator,
    ControlCharacter,
    AboveRoot,
    TooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with /",
            PathError::BadEscape => "invalid percent-escape in path",
            PathError::EncodedSeparator => "encoded / or \\ in path is ambiguous",
            PathError::ControlCharacter => "control character in path",
            PathError::AboveRoot => "path climbs above the root with ..",
            PathError::TooLong => "path is too long",
        })
    }
}

impl std::error::Error for PathError {}

/// Longest path accepted (bytes, before normalization).
pub const MAX_PATH: usize = 8192;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes the path component of a request target (no query).
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode or resolve.
    let simple = !bytes.windows(2).any(|w| w == b"//" || w == b"/.")
        && bytes
            .iter()
            .all(|&b| b != b'%' && b != b'\\' && b > 0x20 && b != 0x7f);
    if simple {
        return Ok(raw.to_string());
    }

    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi * 16 + lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    v if is_unreserved(v) => decoded.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend([b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x20 | 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }

    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split(|&b| b == b'/').skip(1) {
        match segment {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // Only ASCII bytes and valid UTF-8 sequences from the input remain.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// One route: an optional host, a path prefix, and what it leads to.
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub host: Option<String>,
    pub prefix: String,
    pub target: T,
}

/// Longest-prefix routing table. Host-specific routes win over host-less ones of equal length.
#[derive(Debug, Clone)]
pub struct Router<T> {
    routes: Vec<Route<T>>,
}

impl<T> Router<T> {
    pub fn new(mut routes: Vec<Route<T>>) -> Self {
        for r in &mut routes {
            r.host = r.host.take().map(|h| h.to_ascii_lowercase());
        }
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Router { routes }
    }

    /// The route for a normalized `path` requested of `host` (port allowed, any case).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route<T>> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && prefix_matches(&r.prefix, path)
        })
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }
}

/// `prefix` matches `path` on a segment boundary, ASCII case-insensitively.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let (p, q) = (prefix.as_bytes(), path.as_bytes());
    if q.len() < p.len() || !q[..p.len()].eq_ignore_ascii_case(p) {
        return false;
    }
    p.last() == Some(&b'/') || q.len() == p.len() || q[p.len()] == b'/'
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/api/v1/admin/users", Ok("/api/v1/admin/users")),
            ("/api/v1/x/../admin/users", Ok("/api/v1/admin/users")),
            ("/api//v1///admin", Ok("/api/v1/admin")),
            ("/api/./v1/./admin", Ok("/api/v1/admin")),
            ("/api/v1/%2e%2e/v1/admin", Ok("/api/v1/admin")),
            ("/api/v1/%2E%2E/v1/admin", Ok("/api/v1/admin")),
            ("/%61pi/v1/%61dmin", Ok("/api/v1/admin")),
            ("/api/v1/admin/", Ok("/api/v1/admin/")),
            ("/api/v1/admin/.", Ok("/api/v1/admin/")),
            ("/api/v1/admin/..", Ok("/api/v1/")),
            ("/a/%7e/b", Ok("/a/~/b")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/caf\u{e9}", Ok("/caf\u{e9}")),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/%2e%2e/etc", Err(PathError::AboveRoot)),
            ("/api%2Fv1/admin", Err(PathError::EncodedSeparator)),
            ("/api%5cv1", Err(PathError::EncodedSeparator)),
            ("/api\\v1", Err(PathError::EncodedSeparator)),
            ("/a%00b", Err(PathError::ControlCharacter)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("/a%2", Err(PathError::BadEscape)),
            ("relative", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
        ];
        for (raw, want) in cases {
            assert_eq!(
                normalize_path(raw).as_deref(),
                want.as_ref().map(|s| *s),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for raw in ["/a//b/../c/./d/", "/%61%2e/x", "/a%c3%a9/../b"] {
            let once = normalize_path(raw).unwrap();
            assert_eq!(normalize_path(&once).unwrap(), once);
        }
    }

    fn router() -> Router<&'static str> {
        Router::new(vec![
            Route {
                host: None,
                prefix: "/".into(),
                target: "customer",
            },
            Route {
                host: None,
                prefix: "/api/v1/admin".into(),
                target: "admin",
            },
            Route {
                host: None,
                prefix: "/static/".into(),
                target: "static",
            },
            Route {
                host: Some("Admin.Example.com".into()),
                prefix: "/".into(),
                target: "admin-host",
            },
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let r = router();
        let cases = [
            (None, "/api/v1/admin", "admin"),
            (None, "/api/v1/admin/users/7", "admin"),
            (None, "/API/V1/Admin/users", "admin"),
            (None, "/api/v1/administrator", "customer"),
            (None, "/api/v1/consultations", "customer"),
            (None, "/static/app.css", "static"),
            (None, "/static", "customer"),
            (Some("admin.example.com:8443"), "/anything", "admin-host"),
            (Some("ADMIN.example.com"), "/api/v1/admin/x", "admin"),
            (Some("other.example.com"), "/x", "customer"),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                r.find(host, path).map(|r| r.target),
                Some(want),
                "{host:?} {path}"
            );
        }
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let r = Router::new(vec![Route {
            host: None,
            prefix: "/api".into(),
            target: 1,
        }]);
        assert!(r.find(None, "/other").is_none());
        assert!(r.find(None, "/api/x").is_some());
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.b:443"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
