//! The upstream request's head: its target, its headers (hop-by-hop ones out, forwarding
//! ones in), and what the balancer hashes or pins on (pure functions of the client's head).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use super::ClientConn;
use crate::config::HashKey;

/// The Host header, or the h2 `:authority`.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// The origin-form target sent upstream: the normalized path and the query. The request's
/// own target is reused when normalization left the path as it was (the common case).
pub(super) fn upstream_uri(client_uri: &Uri, path: &str) -> Result<Uri, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "invalid request target",
        )
    };
    if client_uri.path() == path {
        if let Some(pq) = client_uri.path_and_query() {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            return Uri::from_parts(parts).map_err(|_| bad());
        }
    }
    let target = match client_uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    target.parse().map_err(|_| bad())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and any header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Turns the client's headers into the ones sent upstream, in place (no second map): minus
/// hop-by-hop ones and any named in `Connection`, Host preserved (from `:authority` for h2
/// clients), forwarding headers set, our request id.
pub(super) fn upstream_headers(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: ClientConn,
    client_ip: IpAddr,
    id: &RequestId,
) {
    strip_hop_by_hop(headers);

    let hop = client.conn_client;
    let xff = match headers.get_all(&X_FORWARDED_FOR).iter().next() {
        None => HeaderValue::from_str(&hop.to_string()).ok(),
        Some(_) => {
            let mut joined = String::new();
            for prev in headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(prev) = prev.to_str() {
                    joined.push_str(prev);
                    joined.push_str(", ");
                }
            }
            joined.push_str(&hop.to_string());
            HeaderValue::from_str(&joined).ok()
        }
    };
    match xff {
        Some(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        None => {
            headers.remove(&X_FORWARDED_FOR);
        }
    }
    match HeaderValue::from_str(&client_ip.to_string()) {
        Ok(v) => {
            headers.insert(X_REAL_IP.clone(), v);
        }
        Err(_) => {
            headers.remove(&X_REAL_IP);
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client.scheme.as_str()),
    );
    let host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            headers.insert(header::HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    headers.insert(request_id::HEADER, id.header_value());
}

/// The bytes the `hash` algorithm hashes for this request; `None` falls back to round robin.
pub(super) fn hash_key(key: &HashKey, headers: &HeaderMap, client_ip: IpAddr) -> Option<Vec<u8>> {
    match key {
        HashKey::ClientIp => Some(client_ip.to_string().into_bytes()),
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie(headers, name).map(|v| v.as_bytes().to_vec()),
    }
}

/// The value of cookie `name` from the request's Cookie headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Scheme;

    fn parts(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn client() -> ClientConn {
        ClientConn {
            peer: "198.51.100.7:5555".parse().unwrap(),
            conn_client: "198.51.100.7".parse().unwrap(),
            scheme: Scheme::Https,
        }
    }

    #[test]
    fn forwarding_headers() {
        let id = RequestId::parse(b"req-1").unwrap();
        let p = parts(
            &[
                ("host", "api.insightserenity.com"),
                ("x-forwarded-for", "203.0.113.1"),
                ("x-real-ip", "6.6.6.6"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("accept", "application/json"),
                ("x-request-id", "client-chosen"),
            ],
            "/api/v1/admin/users",
        );
        let mut h = p.headers;
        upstream_headers(
            &mut h,
            &p.uri,
            client(),
            "198.51.100.7".parse().unwrap(),
            &id,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.7");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.insightserenity.com");
        assert_eq!(h["host"], "api.insightserenity.com");
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["accept"], "application/json");
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
    }

    #[test]
    fn h2_authority_becomes_host() {
        let id = RequestId::generate();
        let p = parts(&[], "https://api.example.com:8443/x?q=1");
        let mut h = p.headers;
        upstream_headers(
            &mut h,
            &p.uri,
            client(),
            "198.51.100.7".parse().unwrap(),
            &id,
        );
        assert_eq!(h["host"], "api.example.com:8443");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        // The upstream target is origin-form whatever form the client used.
        assert_eq!(upstream_uri(&p.uri, "/x").unwrap(), "/x?q=1");
        assert_eq!(upstream_uri(&p.uri, "/y").unwrap(), "/y?q=1");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sid=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sid"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "none"), None);
    }
}
