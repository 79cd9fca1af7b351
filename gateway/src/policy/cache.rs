//! The in-memory cache for static assets: GET responses of cache-enabled routes, bounded by
//! bytes (moka with a size weigher), each entry living for its own TTL.
//!
//! What may be cached is decided by [`ttl_for`] (pure): a 200 that the upstream marks
//! `public, max-age=N` (or `s-maxage`), or any 200 when the route sets a TTL, and never one
//! with `no-store`, `private`, `no-cache`, `Set-Cookie`, or a `Vary` beyond Accept-Encoding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::StatusCode;

#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored: Instant,
    pub ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Arc<CachedResponse>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct ResponseCache {
    cache: moka::sync::Cache<String, Arc<CachedResponse>>,
}

impl ResponseCache {
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| {
                let headers: usize = value
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 32)
                    .sum();
                u32::try_from(key.len() + value.body.len() + headers + 128).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        ResponseCache { cache }
    }

    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: String, value: CachedResponse) {
        self.cache.insert(key, Arc::new(value));
    }

    /// Bytes currently held (as weighed).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// The cache key of a request, or `None` when the request must not be served from cache.
pub fn request_key(
    method: &http::Method,
    headers: &HeaderMap,
    host: &str,
    path_and_query: &str,
) -> Option<String> {
    if method != http::Method::GET || headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let encoding = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Some(format!(
        "{}|{path_and_query}|{encoding}",
        host.to_ascii_lowercase()
    ))
}

/// How long a response may be cached, or `None` if it must not be.
pub fn ttl_for(
    status: StatusCode,
    headers: &HeaderMap,
    route_ttl: Option<Duration>,
) -> Option<Duration> {
    if status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    for vary in headers.get_all(header::VARY) {
        let vary = vary.to_str().ok()?;
        if vary
            .split(',')
            .map(str::trim)
            .any(|v| !v.eq_ignore_ascii_case("accept-encoding"))
        {
            return None;
        }
    }
    let mut public = false;
    let mut max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let value = value.to_str().ok()?;
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (
                    n.trim().to_string(),
                    Some(a.trim().trim_matches('"').to_string()),
                ),
                None => (directive.clone(), None),
            };
            match name.as_str() {
                "no-store" | "private" | "no-cache" => return None,
                "public" => public = true,
                "s-maxage" => max_age = arg.and_then(|a| a.parse::<u64>().ok()).or(max_age),
                "max-age" if max_age.is_none() => max_age = arg.and_then(|a| a.parse::<u64>().ok()),
                _ => {}
            }
        }
    }
    match (public, max_age) {
        (true, Some(secs)) if secs > 0 => Some(Duration::from_secs(secs)),
        _ => route_ttl.filter(|t| !t.is_zero()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn cacheability_table() {
        let s = Duration::from_secs;
        let ok = StatusCode::OK;
        type Case<'a> = (
            StatusCode,
            Vec<(&'a str, &'a str)>,
            Option<Duration>,
            Option<Duration>,
        );
        let cases: Vec<Case> = vec![
            (
                ok,
                vec![("cache-control", "public, max-age=300")],
                None,
                Some(s(300)),
            ),
            (
                ok,
                vec![("cache-control", "public, max-age=300, s-maxage=60")],
                None,
                Some(s(60)),
            ),
            (ok, vec![("cache-control", "max-age=300")], None, None),
            (
                ok,
                vec![("cache-control", "max-age=300")],
                Some(s(10)),
                Some(s(10)),
            ),
            (ok, vec![], Some(s(10)), Some(s(10))),
            (ok, vec![], None, None),
            (ok, vec![("cache-control", "public, max-age=0")], None, None),
            (
                ok,
                vec![("cache-control", "private, max-age=300")],
                Some(s(10)),
                None,
            ),
            (ok, vec![("cache-control", "no-store")], Some(s(10)), None),
            (
                ok,
                vec![
                    ("cache-control", "public, max-age=300"),
                    ("set-cookie", "a=b"),
                ],
                None,
                None,
            ),
            (
                ok,
                vec![("cache-control", "public, max-age=300"), ("vary", "*")],
                None,
                None,
            ),
            (
                ok,
                vec![("cache-control", "public, max-age=300"), ("vary", "Cookie")],
                None,
                None,
            ),
            (
                ok,
                vec![
                    ("cache-control", "public, max-age=300"),
                    ("vary", "Accept-Encoding"),
                ],
                None,
                Some(s(300)),
            ),
            (
                StatusCode::NOT_FOUND,
                vec![("cache-control", "public, max-age=300")],
                Some(s(10)),
                None,
            ),
        ];
        for (status, h, route, want) in cases {
            assert_eq!(
                ttl_for(status, &headers(&h), route),
                want,
                "{status} {h:?} {route:?}"
            );
        }
    }

    #[test]
    fn only_plain_gets_are_keyed() {
        let h = headers(&[("accept-encoding", "gzip")]);
        assert_eq!(
            request_key(&http::Method::GET, &h, "Example.com", "/static/a.css?v=1").as_deref(),
            Some("example.com|/static/a.css?v=1|gzip")
        );
        assert!(request_key(&http::Method::POST, &h, "x", "/").is_none());
        let auth = headers(&[("authorization", "Bearer t")]);
        assert!(request_key(&http::Method::GET, &auth, "x", "/").is_none());
    }

    #[test]
    fn memory_bound_is_respected() {
        let cache = ResponseCache::new(1 << 20);
        for i in 0..64 {
            cache.insert(
                format!("k{i}"),
                CachedResponse {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: Bytes::from(vec![0u8; 64 << 10]),
                    stored: Instant::now(),
                    ttl: Duration::from_secs(60),
                },
            );
        }
        assert!(
            cache.weighted_size() <= 1 << 20,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entries() < 64);
    }
}
