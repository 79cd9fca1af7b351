//! PROXY protocol v2 (the binary header HAProxy defined), read before TLS on a connection.
//!
//! Parsing is pure ([`parse`]); [`read_header`] peeks at a stream's first bytes and hands back
//! a stream that replays whatever it read that was not a PROXY header.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const HEADER_LEN: usize = 16;
/// Largest address block we accept (TLVs included).
const MAX_PAYLOAD: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (health check): use the socket addresses.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY v2 header")]
    BadSignature,
    #[error("unsupported PROXY version or command")]
    BadVersion,
    #[error("unsupported PROXY address family")]
    BadFamily,
    #[error("PROXY header too short for its address family")]
    Truncated,
    #[error("PROXY header too long")]
    TooLong,
}

/// Length of the whole header given its first 16 bytes.
pub fn total_len(head: &[u8; HEADER_LEN]) -> Result<usize, ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::BadSignature);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    Ok(HEADER_LEN + len)
}

/// Parses a complete header (signature through address block and TLVs).
pub fn parse(bytes: &[u8]) -> Result<Header, ProxyError> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProxyError::Truncated)?;
    let total = total_len(head)?;
    let payload = bytes.get(HEADER_LEN..total).ok_or(ProxyError::Truncated)?;
    let version = head[12] >> 4;
    let command = head[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::BadVersion);
    }
    match command {
        0x0 => return Ok(Header::Local),
        0x1 => {}
        _ => return Err(ProxyError::BadVersion),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] {
        // TCP over IPv4
        0x11 => {
            let a = payload.get(..12).ok_or(ProxyError::Truncated)?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            Ok(Header::Proxy {
                source: SocketAddr::new(IpAddr::V4(src), port(&a[8..10])),
                destination: SocketAddr::new(IpAddr::V4(dst), port(&a[10..12])),
            })
        }
        // TCP over IPv6
        0x21 => {
            let a = payload.get(..36).ok_or(ProxyError::Truncated)?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&a[..16]);
            dst.copy_from_slice(&a[16..32]);
            Ok(Header::Proxy {
                source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), port(&a[32..34])),
                destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), port(&a[34..36])),
            })
        }
        // UNSPEC: treat like LOCAL (RFC text: "the receiver must use the real addresses")
        0x00 => Ok(Header::Local),
        _ => Err(ProxyError::BadFamily),
    }
}

/// Encodes a PROXY v2 header for a TCP connection (what the edge forwarder sends).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend(12u16.to_be_bytes());
            out.extend(s.ip().octets());
            out.extend(d.ip().octets());
            out.extend(s.port().to_be_bytes());
            out.extend(d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend(36u16.to_be_bytes());
            out.extend(v6(s).octets());
            out.extend(v6(d).octets());
            out.extend(s.port().to_be_bytes());
            out.extend(d.port().to_be_bytes());
        }
    }
    out
}

/// What the first bytes of a connection turned out to be.
pub enum Start<S> {
    /// A PROXY header, then the stream positioned after it.
    Proxied(Header, PrefixedIo<S>),
    /// No PROXY header: the stream replays the bytes that were looked at.
    Plain(PrefixedIo<S>),
}

/// Reads as much of the stream as it takes to tell whether it starts with a PROXY v2 header.
/// The caller bounds the time this may take.
pub async fn read_header<S: AsyncRead + Unpin>(
    mut stream: S,
) -> io::Result<Result<Start<S>, ProxyError>> {
    let mut buf = Vec::with_capacity(64);
    // Read until the bytes diverge from the signature or a full fixed header is in.
    while buf.len() < HEADER_LEN {
        let mut chunk = [0u8; HEADER_LEN];
        let want = HEADER_LEN - buf.len();
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Ok(Start::Plain(PrefixedIo::new(buf, stream))));
        }
        buf.extend_from_slice(&chunk[..n]);
        let seen = buf.len().min(SIGNATURE.len());
        if buf[..seen] != SIGNATURE[..seen] {
            return Ok(Ok(Start::Plain(PrefixedIo::new(buf, stream))));
        }
    }
    let head: [u8; HEADER_LEN] = match buf[..HEADER_LEN].try_into() {
        Ok(h) => h,
        Err(_) => return Ok(Err(ProxyError::Truncated)),
    };
    let total = match total_len(&head) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    buf.resize(total, 0);
    stream.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(parse(&buf).map(|h| Start::Proxied(h, PrefixedIo::new(Vec::new(), stream))))
}

/// A stream that first yields `prefix`, then reads from `inner`.
pub struct PrefixedIo<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> PrefixedIo<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        PrefixedIo {
            prefix,
            offset: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for (s, d) in [
            ("198.51.100.7:51234", "172.28.1.100:443"),
            ("[2001:db8::7]:51234", "[2001:db8::1]:443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            assert_eq!(
                parse(&encode(s, d)),
                Ok(Header::Proxy {
                    source: s,
                    destination: d
                })
            );
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        let good = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        let mut bad_version = good.clone();
        bad_version[12] = 0x11;
        let mut bad_family = good.clone();
        bad_family[13] = 0x31;
        let mut too_long = good.clone();
        too_long[14] = 0xff;
        let cases = [
            (good[..10].to_vec(), ProxyError::Truncated),
            (good[..20].to_vec(), ProxyError::Truncated),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                ProxyError::BadSignature,
            ),
            (bad_version, ProxyError::BadVersion),
            (bad_family, ProxyError::BadFamily),
            (too_long, ProxyError::TooLong),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(&bytes), Err(want));
        }
        let mut local = good.clone();
        local[12] = 0x20;
        assert_eq!(parse(&local), Ok(Header::Local));
    }

    #[tokio::test]
    async fn plain_streams_are_replayed_intact() {
        for input in [
            &b"\x16\x03\x01\x00\xa5hello tls"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n",
            b"",
        ] {
            let Ok(Ok(Start::Plain(mut io))) = read_header(input).await else {
                panic!("{input:?} was taken for PROXY");
            };
            let mut out = Vec::new();
            io.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, input);
        }
    }

    #[tokio::test]
    async fn proxied_streams_continue_after_the_header() {
        let mut bytes = encode(
            "9.9.9.9:1000".parse().unwrap(),
            "1.1.1.1:443".parse().unwrap(),
        );
        bytes.extend_from_slice(b"payload");
        let Ok(Ok(Start::Proxied(Header::Proxy { source, .. }, mut io))) =
            read_header(&bytes[..]).await
        else {
            panic!("not parsed");
        };
        assert_eq!(source, "9.9.9.9:1000".parse().unwrap());
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"payload");
    }
}
