//! Security headers on every response (errors and redirects included), HSTS only over HTTPS,
//! and upstream `Server` / `X-Powered-By` removed or replaced.

use std::collections::HashSet;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::SecurityHeadersConfig;

/// The seed's headers, used where neither `[defaults]` nor the route says otherwise.
pub fn builtin() -> SecurityHeadersConfig {
    SecurityHeadersConfig {
        hsts: Some(crate::config::HstsConfig {
            max_age: 31_536_000,
            include_subdomains: true,
            preload: false,
        }),
        content_security_policy: Some("default-src 'self'; frame-ancestors 'none'".into()),
        x_frame_options: Some("DENY".into()),
        x_content_type_options: Some("nosniff".into()),
        x_xss_protection: Some("1; mode=block".into()),
        referrer_policy: Some("strict-origin-when-cross-origin".into()),
        permissions_policy: Some("geolocation=(), microphone=(), camera=()".into()),
        server: Some(String::new()),
    }
}

/// Headers ready to stamp on responses, computed once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct SecurityHeaders {
    always: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    server: Option<HeaderValue>,
}

static X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// A header value that lives as long as the process. Cloning a `from_static` value copies a
/// pointer; cloning a `from_str` one updates a reference count on a buffer every worker
/// thread shares, once per header per response. Each distinct string is leaked once, so
/// reloads with the same values leak nothing more.
fn static_value(value: &str) -> Option<HeaderValue> {
    // `from_static` accepts visible ASCII and tab only (it panics on anything else); values
    // with other bytes that `from_str` accepts keep an ordinary, refcounted value.
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return HeaderValue::from_str(value).ok();
    }
    static INTERNED: std::sync::LazyLock<std::sync::Mutex<HashSet<&'static str>>> =
        std::sync::LazyLock::new(Default::default);
    let mut interned = INTERNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let value: &'static str = match interned.get(value) {
        Some(&known) => known,
        None => {
            let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
            interned.insert(leaked);
            leaked
        }
    };
    Some(HeaderValue::from_static(value))
}

impl SecurityHeaders {
    pub fn new(config: &SecurityHeadersConfig) -> Self {
        let mut always = Vec::new();
        let mut push = |name: &'static str, value: &Option<String>| {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                if let Some(v) = static_value(v) {
                    always.push((HeaderName::from_static(name), v));
                }
            }
        };
        push("content-security-policy", &config.content_security_policy);
        push("x-frame-options", &config.x_frame_options);
        push("x-content-type-options", &config.x_content_type_options);
        push("x-xss-protection", &config.x_xss_protection);
        push("referrer-policy", &config.referrer_policy);
        push("permissions-policy", &config.permissions_policy);
        let hsts = config.hsts.as_ref().and_then(|h| {
            let mut v = format!("max-age={}", h.max_age);
            if h.include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if h.preload {
                v.push_str("; preload");
            }
            static_value(&v)
        });
        let server = config
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(static_value);
        SecurityHeaders {
            always,
            hsts,
            server,
        }
    }

    /// Stamps the headers on a response; `https` decides HSTS.
    pub fn apply(&self, headers: &mut HeaderMap, https: bool) {
        for (name, value) in &self.always {
            headers.insert(name.clone(), value.clone());
        }
        if https {
            if let Some(hsts) = &self.hsts {
                headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        headers.remove(&X_POWERED_BY);
        match &self.server {
            Some(server) => {
                headers.insert(http::header::SERVER, server.clone());
            }
            None => {
                headers.remove(http::header::SERVER);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_headers_and_scrubs_upstream_identity() {
        let h = SecurityHeaders::new(&builtin());
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("Express"));
        headers.insert("x-powered-by", HeaderValue::from_static("PHP"));
        h.apply(&mut headers, true);
        assert_eq!(
            headers["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(headers.contains_key("content-security-policy"));
        assert!(headers.contains_key("permissions-policy"));
        assert!(headers.contains_key("referrer-policy"));
        assert!(headers.contains_key("x-xss-protection"));
        assert!(!headers.contains_key("server"));
        assert!(!headers.contains_key("x-powered-by"));

        let mut plain = HeaderMap::new();
        h.apply(&mut plain, false);
        assert!(!plain.contains_key("strict-transport-security"));
    }

    #[test]
    fn values_are_interned_and_odd_bytes_do_not_panic() {
        let a = static_value("DENY").unwrap();
        let b = static_value(&String::from("DENY")).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            static_value("caf\u{e9}").unwrap().as_bytes(),
            "caf\u{e9}".as_bytes()
        );
        assert!(static_value("bad\nvalue").is_none());
    }

    #[test]
    fn route_overrides_win_and_empty_removes() {
        let route = SecurityHeadersConfig {
            x_frame_options: Some("SAMEORIGIN".into()),
            content_security_policy: Some(String::new()),
            server: Some("insightserenity".into()),
            ..Default::default()
        };
        let h = SecurityHeaders::new(&route.over(&builtin()));
        let mut headers = HeaderMap::new();
        h.apply(&mut headers, true);
        assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
        assert!(!headers.contains_key("content-security-policy"));
        assert_eq!(headers["server"], "insightserenity");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
}
