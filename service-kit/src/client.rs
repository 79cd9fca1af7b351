//! A small HTTP/1.1 + h2 client over rustls for probes and tests.
//!
//! One [`Connection`] is one TCP (and TLS) connection; requests on it reuse it (keep-alive, or
//! h2 streams when ALPN picked `h2`). It reports the negotiated TLS version and ALPN protocol so
//! tests can assert on them. Not a general-purpose client: no pooling, redirects or retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A response with its whole body read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct Connection {
    sender: Sender,
    scheme: &'static str,
    authority: String,
    /// ALPN protocol the server picked, if TLS.
    pub alpn: Option<Vec<u8>>,
    /// Negotiated TLS version, if TLS.
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// Sent with every request unless the request names the same header itself.
    default_headers: Vec<(String, String)>,
}

/// Where to connect: an address, the authority for Host, and TLS when it is HTTPS.
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Local address to connect from (tests use 127.0.0.x to play different clients).
    pub bind: Option<std::net::IpAddr>,
}

impl Target {
    /// The same target, connecting from `ip`.
    pub fn from_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }
}

impl Target {
    /// Parses `http://` or `https://host:port` (the path is ignored) and resolves the host.
    pub async fn from_url(url: &str, tls: Option<Arc<ClientConfig>>) -> Result<Self, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ClientError::Url(url.to_string())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(url.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| ClientError::Resolve(host.clone()))?;
        let tls = match (https, tls) {
            (false, _) => None,
            (true, Some(config)) => Some((config, server_name(&host, url)?)),
            (true, None) => return Err(ClientError::Url(format!("{url} (no TLS config)"))),
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or(host);
        Ok(Target {
            addr,
            authority,
            tls,
            bind: None,
        })
    }
}

fn server_name(host: &str, url: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_string()).map_err(|_| ClientError::Url(url.to_string()))
}

/// Opens a connection; h2 is used when TLS ALPN negotiates it.
pub async fn connect(target: &Target) -> Result<Connection, ClientError> {
    let addr = target.addr;
    let tcp = open_tcp(addr, target.bind)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(Connection {
                sender: Sender::H1(sender),
                scheme: "http",
                authority: target.authority.clone(),
                alpn: None,
                tls_version: None,
                default_headers: Vec::new(),
            })
        }
        Some((config, name)) => {
            let tls = TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| ClientError::Tls { addr, source })?;
            let (_, session) = tls.get_ref();
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            let tls_version = session.protocol_version();
            let sender = if alpn.as_deref() == Some(b"h2") {
                let (sender, conn) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            } else {
                let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Sender::H1(sender)
            };
            Ok(Connection {
                sender,
                scheme: "https",
                authority: target.authority.clone(),
                alpn,
                tls_version,
                default_headers: Vec::new(),
            })
        }
    }
}

/// A TCP connection to `addr`, from `bind` when given.
pub async fn open_tcp(
    addr: SocketAddr,
    bind: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    match bind {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

impl Connection {
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends `name: value` with every later request (e.g. `authorization`), unless a request
    /// names that header itself.
    pub fn set_default_header(&mut self, name: &str, value: &str) {
        self.default_headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.default_headers
            .push((name.to_string(), value.to_string()));
    }

    /// The same connection with `name: value` on every request (see [`Self::set_default_header`]).
    pub fn with_default_header(mut self, name: &str, value: &str) -> Self {
        self.set_default_header(name, value);
        self
    }

    /// Sends one request and reads the whole response body.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, ClientError> {
        let mut builder = http::Request::builder().method(method);
        let has_host = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"));
        builder = match self.sender {
            Sender::H1(_) if has_host => builder.uri(path_and_query),
            Sender::H1(_) => builder
                .uri(path_and_query)
                .header(http::header::HOST, self.authority.as_str()),
            Sender::H2(_) => builder.uri(format!(
                "{}://{}{}",
                self.scheme, self.authority, path_and_query
            )),
        };
        for (name, value) in &self.default_headers {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into()))?;
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }
}

/// One GET on a fresh connection, bounded by `timeout`.
pub async fn get(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let work = async {
        let target = Target::from_url(url, tls).await?;
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_string()))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        connect(&target).await?.get(&path).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}
