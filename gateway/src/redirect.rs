//! The plain-HTTP listener's answers: 301 to the same host, path and query over HTTPS, except
//! ACME HTTP-01 challenges, served from a directory when one is configured.

use std::path::Path;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use crate::config::HttpConfig;
use crate::proxy::{error_response, request_host, ResponseBody};
use crate::routing::strip_port;

pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The HTTPS URL for a request to `host` (its port dropped) with `path_and_query`.
pub fn https_location(host: &str, https_port: u16, path_and_query: &str) -> Option<String> {
    let host = strip_port(host);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    if !valid {
        return None;
    }
    Some(if https_port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{https_port}{path_and_query}")
    })
}

/// An ACME token is base64url: anything else cannot name a challenge file.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub async fn handle<B>(config: &HttpConfig, req: Request<B>) -> Response<ResponseBody> {
    let id = RequestId::from_headers(req.headers());
    let path = req.uri().path();
    if let (Some(dir), Some(token)) = (&config.acme_challenge_dir, path.strip_prefix(ACME_PREFIX)) {
        return acme(dir, token, &id).await;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let Some(location) = request_host(&req)
        .and_then(|host| https_location(host, config.https_port, &path_and_query))
    else {
        return error_response(
            &ApiError::bad_request("a valid Host header is required"),
            &id,
        );
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(&ApiError::bad_request("invalid request target"), &id);
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(request_id::HEADER, id.header_value());
    response
}

async fn acme(dir: &Path, token: &str, id: &RequestId) -> Response<ResponseBody> {
    if !valid_token(token) {
        return error_response(&ApiError::not_found("no such challenge"), id);
    }
    match tokio::fs::read(dir.join(token)).await {
        Ok(content) => {
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(content))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
                .headers_mut()
                .insert(request_id::HEADER, id.header_value());
            response
        }
        Err(_) => error_response(&ApiError::not_found("no such challenge"), id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let cases = [
            (
                "api.example.com",
                443,
                "/a?b=1",
                Some("https://api.example.com/a?b=1"),
            ),
            (
                "api.example.com:8080",
                8443,
                "/",
                Some("https://api.example.com:8443/"),
            ),
            ("[::1]:8080", 443, "/x", Some("https://[::1]/x")),
            ("evil.com/path", 443, "/", None),
            ("", 443, "/", None),
            ("a b", 443, "/", None),
        ];
        for (host, port, pq, want) in cases {
            assert_eq!(https_location(host, port, pq).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn tokens() {
        assert!(valid_token("abc-DEF_123"));
        for bad in ["", "../etc/passwd", "a/b", "a.b", "%2e"] {
            assert!(!valid_token(bad), "{bad}");
        }
    }
}
