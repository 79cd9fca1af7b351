//! Request ids: accept a well-formed incoming `X-Request-ID`, otherwise mint one.
//!
//! The id of the request being handled is also kept in a task-local so that code without
//! access to the request (error rendering, logs) can name it.

use std::fmt;

use http::HeaderValue;

pub const HEADER: &str = "x-request-id";

/// Longest id we accept from a client; longer ones are replaced, not truncated.
pub const MAX_LEN: usize = 128;

/// A validated request id: 1..=128 characters of `[A-Za-z0-9._:-]`, safe for headers and logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The value is marked sensitive: HTTP/2 (HPACK) sends it as a literal never indexed.
    /// Every request has its own id, so indexing it in a connection's header table would only
    /// evict the fields that do repeat, and make the encoder compare each new id with every
    /// one still in the table (`bench/PROFILE.md`, "HPACK and the request id"). HTTP/1.1
    /// ignores the mark.
    fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        RequestId(value)
    }

    /// Accepts a client-supplied id only if it is well formed.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_LEN
            && raw
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return None;
        }
        HeaderValue::from_bytes(raw).ok().map(RequestId::new)
    }

    /// A fresh random id (UUID v4, hyphenated).
    pub fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId::new(
            HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        )
    }

    /// The incoming header's id when well formed, else a new one.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| Self::parse(v.as_bytes()))
            .unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored (see `parse` and `generate`).
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value, never indexed by HPACK (see `new`).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }

    /// The id of the request this task is serving, if any.
    pub fn current() -> Option<RequestId> {
        CURRENT.try_with(|id| id.clone()).ok()
    }

    /// Runs `fut` with `self` as the current request id.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        for ok in ["abc", "A-b_c.d:e", "0123456789", &"x".repeat(MAX_LEN)] {
            assert_eq!(
                RequestId::parse(ok.as_bytes()).map(|r| r.to_string()),
                Some(ok.to_string()),
                "{ok}"
            );
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "".to_string(),
            "has space".into(),
            "semi;colon".into(),
            "new\nline".into(),
            "ünïcode".into(),
            "x".repeat(MAX_LEN + 1),
        ] {
            assert!(RequestId::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(RequestId::parse(a.as_str().as_bytes()).is_some());
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn the_header_value_is_never_indexed_and_equal_to_the_id() {
        let id = RequestId::generate();
        let value = id.header_value();
        assert!(value.is_sensitive());
        assert_eq!(value, id.as_str());
        assert_eq!(RequestId::parse(value.as_bytes()), Some(id));
    }
}
