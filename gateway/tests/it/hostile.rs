//! Hostile clients: TLS garbage, HTTP/2 floods (rapid reset, CONTINUATION, PING, SETTINGS,
//! stream-limit abuse), h2 clients that stop answering pings, slowloris on both protocols,
//! HTTP/1.1 request smuggling shapes and path tricks. Every case asserts that the gateway
//! process is still up, that its RSS grew by less than [`RSS_GROWTH_KIB`], and that a
//! well-behaved client is served during and after the attack. All traffic goes to 127.0.0.1
//! and every loop is bounded (count and time).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::util::{rss_kib, servers, Backend, Fixture, Gateway};

/// Largest RSS growth (KiB) an attack may cause.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

/// Small limits keep the slow cases fast.
const LIMITS: &str = r#"
[limits]
header_read_timeout = "2s"
keepalive_timeout = "3s"
h2_max_concurrent_streams = 8
"#;

/// A gateway with one backend behind `/api`, and the gateway's RSS once warmed up.
struct Target {
    fx: Fixture,
    backend: Backend,
    gw: Gateway,
    baseline_kib: u64,
}

impl Target {
    async fn start() -> Target {
        let fx = Fixture::new();
        let backend = Backend::start("hostile-1", &fx.pki).await;
        let gw = fx.start_gateway(&format!(
            r#"{LIMITS}
[upstreams.pool]
servers = [{}]
[[routes]]
prefix = "/api"
upstream = "pool"
"#,
            servers(&[&backend], "")
        ));
        let target = Target {
            fx,
            backend,
            gw,
            baseline_kib: 0,
        };
        target.served().await;
        let baseline_kib = rss_kib(target.gw.process.pid());
        Target {
            baseline_kib,
            ..target
        }
    }

    /// A well-behaved client on a fresh connection gets its answer from the backend.
    async fn served(&self) {
        let started = Instant::now();
        let mut conn = tokio::time::timeout(Duration::from_secs(5), self.gw.connect())
            .await
            .expect("a good client could not connect within 5 s");
        let response = tokio::time::timeout(Duration::from_secs(5), conn.get("/api/whoami"))
            .await
            .expect("a good client was not answered within 5 s")
            .unwrap();
        assert_eq!(response.status, http::StatusCode::OK);
        assert_eq!(response.text(), "hostile-1");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// After an attack: still running, memory bounded, a good client served. Prints the RSS
    /// figures (`--no-capture` shows them).
    async fn check(&self, case: &str) {
        let pid = self.gw.process.pid();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        assert!(
            matches!(state, Some(s) if s != "Z" && s != "X"),
            "{case}: the gateway died"
        );
        self.served().await;
        let rss = rss_kib(pid);
        eprintln!(
            "hostile {case}: RSS {} KiB -> {rss} KiB (+{} KiB)",
            self.baseline_kib,
            rss.saturating_sub(self.baseline_kib)
        );
        assert!(
            rss.saturating_sub(self.baseline_kib) < RSS_GROWTH_KIB,
            "{case}: RSS grew from {} KiB to {rss} KiB",
            self.baseline_kib
        );
    }

    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.gw.https).await.unwrap()
    }

    /// A TLS connection offering only `alpn`.
    async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let tcp = self.tcp().await;
        tokio_rustls::TlsConnector::from(self.fx.pki.client_with(&[alpn], false))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Writes a raw HTTP/1.1 exchange and reads until the gateway closes (or 5 s pass).
    async fn h1(&self, raw: &[u8]) -> String {
        let mut tls = self.tls(b"http/1.1").await;
        let _ = tls.write_all(raw).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Runs `attack` while a good client asks for a page in the middle of it.
async fn during<T>(t: &Target, attack: impl std::future::Future<Output = T>) -> T {
    let good = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.served().await;
    };
    let (out, ()) = tokio::join!(attack, good);
    out
}

/// Whether the peer closed `stream` within `within` (everything it sent is discarded).
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// xorshift64*: reproducible garbage without a dependency.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_garbage_and_truncated_handshakes() {
    let t = Target::start().await;

    // Random bytes instead of a ClientHello: closed at once.
    for seed in 0..32u64 {
        let mut tcp = t.tcp().await;
        let _ = tcp.write_all(&garbage(seed + 1, 4096)).await;
        assert!(
            closed_within(&mut tcp, Duration::from_secs(3)).await,
            "garbage {seed}: connection not closed"
        );
    }
    // A plausible TLS record header announcing a huge record, then nothing.
    let mut liar = t.tcp().await;
    liar.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01])
        .await
        .unwrap();

    // Half a real ClientHello, then silence: held only until the handshake timeout (10 s).
    let mut hello = Vec::new();
    let mut client = rustls::ClientConnection::new(
        t.fx.pki.client_with(&[b"h2"], false),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    client.write_tls(&mut hello).unwrap();
    let mut halves = Vec::new();
    for _ in 0..50 {
        let mut tcp = t.tcp().await;
        tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
        halves.push(tcp);
    }
    // Served while 51 handshakes hang.
    t.served().await;
    let started = Instant::now();
    for tcp in halves.iter_mut().chain([&mut liar]) {
        let left = Duration::from_secs(14).saturating_sub(started.elapsed());
        assert!(
            closed_within(tcp, left).await,
            "a truncated handshake was held past the handshake timeout"
        );
    }
    eprintln!(
        "hostile truncated handshakes: closed after {:?}",
        started.elapsed()
    );
    t.check("tls garbage + truncated handshakes").await;
}

// ---- HTTP/2 over raw frames ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA_HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK block of `GET https://localhost{path}` (static-table names, no Huffman).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x04, u8::try_from(path.len()).unwrap()];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 9]);
    b.extend_from_slice(b"localhost");
    b
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, u8, Vec<u8>)> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((h[3], h[4], payload))
}

/// What the gateway sent on a raw h2 connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// GOAWAY error code.
    goaway: Option<u32>,
    /// RST_STREAM error codes.
    resets: Vec<u32>,
    /// HEADERS frames (responses).
    responses: usize,
    ping_acks: usize,
    settings_acks: usize,
    /// The gateway closed the connection.
    closed: bool,
}

fn code(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A raw h2 connection: handshake done (settings exchanged), a task recording what comes back.
struct H2 {
    write: WriteHalf<TlsStream<TcpStream>>,
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn open(t: &Target) -> H2 {
        let mut s = t.tls(b"h2").await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await
            .unwrap();
        loop {
            let (kind, flags, _) = read_frame(&mut s).await.unwrap();
            if kind == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        let (mut read, write) = tokio::io::split(s);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((kind, flags, payload)) = read_frame(&mut read).await {
                    let mut s = seen.lock().unwrap();
                    match kind {
                        DATA_HEADERS => s.responses += 1,
                        RST_STREAM => s.resets.push(code(&payload, 0)),
                        PING if flags & ACK != 0 => s.ping_acks += 1,
                        SETTINGS if flags & ACK != 0 => s.settings_acks += 1,
                        GOAWAY => s.goaway = Some(code(&payload, 4)),
                        _ => {}
                    }
                }
                seen.lock().unwrap().closed = true;
            }
        });
        H2 {
            write,
            seen,
            reader,
        }
    }

    /// Writes `bytes`; false once the gateway closed the connection or stopped reading it
    /// (nothing accepted for 2 s).
    async fn send(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.write.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `within` for the gateway to close the connection.
    async fn closed_within(&self, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.seen().closed {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.seen().closed
    }

    /// Sends `batch()` up to `rounds` times or for 5 s, while the gateway keeps reading.
    /// Returns how many rounds went out.
    async fn flood(&mut self, rounds: usize, mut batch: impl FnMut(usize) -> Vec<u8>) -> usize {
        let started = Instant::now();
        for round in 0..rounds {
            if started.elapsed() > Duration::from_secs(5) || !self.send(&batch(round)).await {
                return round;
            }
        }
        rounds
    }
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// HEADERS then RST_STREAM(CANCEL), stream after stream (CVE-2023-44487).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset() {
    let t = Target::start().await;
    let hits = t.backend.hits();
    let block = get_block("/api/whoami");
    let (rounds, seen) = during(&t, async {
        let mut h2 = H2::open(&t).await;
        let rounds = h2
            .flood(200, |round| {
                let mut batch = Vec::new();
                for i in 0..100 {
                    let id = u32::try_from(1 + 2 * (round * 100 + i)).unwrap();
                    batch.extend(frame(DATA_HEADERS, END_STREAM | END_HEADERS, id, &block));
                    batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
                }
                batch
            })
            .await;
        h2.closed_within(Duration::from_secs(3)).await;
        (rounds, h2.seen())
    })
    .await;
    let streams = rounds * 100;
    let upstream = t.backend.hits() - hits;
    eprintln!(
        "hostile rapid reset: {streams} streams sent, {upstream} reached the backend, {seen:?}"
    );
    assert!(
        seen.goaway.is_some() || seen.closed,
        "rapid reset: the connection survived {streams} reset streams: {seen:?}"
    );
    t.check("h2 rapid reset").await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood() {
    let t = Target::start().await;
    // Valid HPACK: literal headers without indexing, new names (`x-flood: aaaa...`).
    let mut field = vec![0x00, 7];
    field.extend_from_slice(b"x-flood");
    field.extend_from_slice(&[0x7f, 0xfe, 0x01]); // value length 127 + 254 = 381
    field.extend(std::iter::repeat_n(b'a', 381));
    let chunk: Vec<u8> = field
        .iter()
        .copied()
        .cycle()
        .take(field.len() * 40)
        .collect();
    let (rounds, seen) = during(&t, async {
        let mut h2 = H2::open(&t).await;
        let mut first = true;
        let rounds = h2
            .flood(4096, |_| {
                let kind = if std::mem::take(&mut first) {
                    DATA_HEADERS
                } else {
                    CONTINUATION
                };
                frame(kind, 0, 1, &chunk)
            })
            .await;
        h2.closed_within(Duration::from_secs(3)).await;
        (rounds, h2.seen())
    })
    .await;
    eprintln!(
        "hostile CONTINUATION flood: {rounds} frames ({} KiB) sent, {seen:?}",
        rounds * chunk.len() / 1024
    );
    assert!(
        seen.goaway.is_some() || seen.closed,
        "CONTINUATION flood: the connection survived: {seen:?}"
    );
    assert!(rounds < 4096, "the gateway read 60 MiB of one header block");
    t.check("h2 CONTINUATION flood").await;
}

/// PINGs as fast as the gateway reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_flood() {
    let t = Target::start().await;
    let (rounds, seen) = during(&t, async {
        let mut h2 = H2::open(&t).await;
        let rounds = h2
            .flood(500, |_| frame(PING, 0, 0, &[7; 8]).repeat(1000))
            .await;
        // The connection is still usable (or was closed with GOAWAY).
        let alive = h2
            .send(&frame(
                DATA_HEADERS,
                END_STREAM | END_HEADERS,
                1,
                &get_block("/api/whoami"),
            ))
            .await;
        // Answered once the PINGs still queued in the socket are worked through.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let seen = h2.seen();
            if seen.responses > 0 || seen.closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = h2.seen();
        assert!(
            seen.goaway.is_some() || seen.closed || (alive && seen.responses == 1),
            "PING flood: neither closed nor answering: {seen:?}"
        );
        (rounds, seen)
    })
    .await;
    eprintln!(
        "hostile PING flood: {} PINGs sent, {} ACKs read, {seen:?}",
        rounds * 1000,
        seen.ping_acks
    );
    t.check("h2 PING flood").await;
}

/// SETTINGS frames as fast as the gateway reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_flood() {
    let t = Target::start().await;
    // SETTINGS_HEADER_TABLE_SIZE = 4096 and SETTINGS_INITIAL_WINDOW_SIZE = 65535: no-ops.
    let settings = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 16, 0, 0, 4, 0, 0, 0xff, 0xff]);
    let (rounds, seen) = during(&t, async {
        let mut h2 = H2::open(&t).await;
        let rounds = h2.flood(500, |_| settings.repeat(1000)).await;
        h2.closed_within(Duration::from_secs(1)).await;
        (rounds, h2.seen())
    })
    .await;
    eprintln!(
        "hostile SETTINGS flood: {} SETTINGS sent, {seen:?}",
        rounds * 1000
    );
    // h2 acknowledges each SETTINGS and reads the next only once the ACK is written, so a
    // flood costs the gateway nothing it keeps: the connection may stay open.
    assert!(
        seen.goaway.is_some() || seen.closed || seen.settings_acks > 0,
        "SETTINGS flood: {seen:?}"
    );
    t.check("h2 SETTINGS flood").await;
}

/// Five times SETTINGS_MAX_CONCURRENT_STREAMS slow requests on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_limit_abuse() {
    let t = Target::start().await;
    let hits = t.backend.hits();
    let block = get_block("/api/slow/1500");
    let seen = during(&t, async {
        let mut h2 = H2::open(&t).await;
        let mut batch = Vec::new();
        for i in 0..40u32 {
            batch.extend(frame(
                DATA_HEADERS,
                END_STREAM | END_HEADERS,
                1 + 2 * i,
                &block,
            ));
        }
        assert!(h2.send(&batch).await);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        h2.seen()
    })
    .await;
    let upstream = t.backend.hits() - hits - 1; // the good client's request
    eprintln!(
        "hostile stream limit: 40 streams opened, limit 8, {upstream} reached the backend, {seen:?}"
    );
    let refused = seen.resets.iter().filter(|&&c| c == 0x7).count();
    assert!(
        seen.goaway.is_some() || refused >= 32,
        "streams over the limit were not refused: {seen:?}"
    );
    assert!(
        upstream <= 8,
        "{upstream} streams reached the backend at once"
    );
    t.check("h2 stream-limit abuse").await;
}

// ---- slowloris ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_http1_and_h2() {
    let t = Target::start().await;
    let started = Instant::now();

    // HTTP/1.1: a head trickled a byte a second.
    let trickle = |mut tls: TlsStream<TcpStream>| async move {
        let head =
            b"GET /api/whoami HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
        let opened = Instant::now();
        for &b in head.iter() {
            if tls.write_all(&[b]).await.is_err() || tls.flush().await.is_err() {
                break;
            }
            if closed_within(&mut tls, Duration::from_secs(1)).await {
                return opened.elapsed();
            }
        }
        Duration::MAX
    };
    // h2 and HTTP/1.1 connections that never send anything after the handshake, one with half
    // an h2 preface, and one h2 connection whose first header block never ends.
    let silent = |mut tls: TlsStream<TcpStream>, first: &'static [u8]| async move {
        let opened = Instant::now();
        tls.write_all(first).await.unwrap();
        if closed_within(&mut tls, Duration::from_secs(8)).await {
            opened.elapsed()
        } else {
            Duration::MAX
        }
    };
    let unfinished = async {
        let mut h2 = H2::open(&t).await;
        let opened = Instant::now();
        let block = get_block("/api/whoami");
        assert!(
            h2.send(&frame(DATA_HEADERS, END_STREAM, 1, &block[..4]))
                .await
        );
        if h2.closed_within(Duration::from_secs(8)).await {
            opened.elapsed()
        } else {
            Duration::MAX
        }
    };
    let h1 = futures_util::future::join_all(
        futures_util::future::join_all((0..10).map(|_| t.tls(b"http/1.1")))
            .await
            .into_iter()
            .map(trickle),
    );
    let (h1, silent_h2, silent_h1, half_preface, unfinished) = during(&t, async {
        tokio::join!(
            h1,
            silent(t.tls(b"h2").await, b""),
            silent(t.tls(b"http/1.1").await, b""),
            silent(t.tls(b"h2").await, &PREFACE[..10]),
            unfinished,
        )
    })
    .await;
    eprintln!(
        "hostile slowloris: HTTP/1.1 trickle closed after {:?}; silent h2 {silent_h2:?}, \
         silent HTTP/1.1 {silent_h1:?}, half preface {half_preface:?}, unfinished h2 headers \
         {unfinished:?} (header_read_timeout 2 s, keepalive_timeout 3 s)",
        h1.iter().max()
    );
    for (case, took) in [
        ("HTTP/1.1 trickle", h1.iter().copied().max().unwrap()),
        ("silent h2", silent_h2),
        ("silent HTTP/1.1", silent_h1),
        ("half an h2 preface", half_preface),
        ("unfinished h2 header block", unfinished),
    ] {
        assert!(
            took < Duration::from_secs(5),
            "slowloris {case}: held for {took:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    t.check("slowloris").await;
}

// ---- HTTP/1.1 request smuggling ----

/// A request that would be served if the gateway read past the first one's body.
const SMUGGLED: &str = "GET /api/headers?smuggled=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_smuggling_shapes() {
    let t = Target::start().await;
    let post = "POST /api/upload HTTP/1.1\r\nHost: localhost\r\n";
    let cases: [(&str, String); 8] = [
        (
            "Content-Length + Transfer-Encoding",
            format!("{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding + Content-Length",
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "duplicate differing Content-Length",
            format!("{post}Content-Length: 4\r\nContent-Length: 61\r\n\r\nabcd{SMUGGLED}"),
        ),
        (
            "obs-fold continuation line",
            format!("{post}Content-Length: 4\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "non-hex chunk size",
            format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "overflowing chunk size",
            format!("{post}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabcd\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding: identity with Content-Length",
            format!("{post}Transfer-Encoding: identity\r\nContent-Length: 4\r\n\r\nabcd{SMUGGLED}"),
        ),
    ];
    for (case, raw) in cases {
        let hits = t.backend.hits();
        let reply = t.h1(raw.as_bytes()).await;
        let upstream = t.backend.hits() - hits;
        let status = reply.get(..12).unwrap_or(&reply).to_string();
        let responses = reply.matches("HTTP/1.1 ").count();
        eprintln!("hostile smuggling {case}: {status:?}, {responses} response(s), {upstream} request(s) upstream");
        assert!(
            upstream <= 1,
            "{case}: {upstream} requests reached the backend"
        );
        assert!(responses <= 1, "{case}: {responses} responses: {reply}");
        assert!(
            !reply.contains("smuggled"),
            "{case}: smuggled request served: {reply}"
        );
        assert!(
            reply.is_empty() || status == "HTTP/1.1 400" || status == "HTTP/1.1 200",
            "{case}: {reply}"
        );
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if status == "HTTP/1.1 400" && !body.is_empty() {
            // The gateway's own answer (hyper's parse errors have no body): JSON.
            assert!(body.contains("\"code\":\"bad_request\""), "{case}: {reply}");
        }
        if status == "HTTP/1.1 200" {
            // Served once, as one request: then the connection is closed (read_to_end ended).
            assert_eq!(upstream, 1, "{case}: {reply}");
        }
    }
    t.check("HTTP/1.1 smuggling shapes").await;
}

// ---- path tricks ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks() {
    let t = Target::start().await;
    let cases = [
        "/api/..%2fheaders",
        "/api/..%2Fheaders",
        "/api/%2e%2e/headers",
        "/api/%2E%2E/%2e%2e/headers",
        "/api/x/%2e%2e/headers",
        "/api/%252e%252e/headers",
        "/api/%252e%252e%252fheaders",
        "/api/%00/headers",
        "/api/\0/headers",
        "/api\\..\\headers",
        "/api/%5c../headers",
        "/api/%c0%ae%c0%ae/headers",
        "/api/%c0%af../headers",
        "/api/%e0%80%ae%e0%80%ae/headers",
        "/api/.%2e/headers",
        "/api//..//headers",
        "/api/./headers",
        "/api%2fheaders",
        "/%2e%2e/api/headers",
    ];
    for path in cases {
        let hits = t.backend.hits();
        let reply = t
            .h1(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        let upstream = t.backend.hits() - hits;
        let status = reply.get(9..12).unwrap_or("---");
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let outcome = match status {
            "200" if body == "hostile-1" => {
                // The backend's catch-all answer: routed by its normalized path, under `/api`.
                assert_eq!(upstream, 1, "{path:?}");
                "200 from the backend's catch-all".to_string()
            }
            "200" => {
                // Normalized, and still under the route's prefix.
                let json: serde_json::Value = serde_json::from_str(body).unwrap();
                let uri = json["uri"].as_str().unwrap().to_string();
                assert!(uri.starts_with("/api/"), "{path:?} reached {uri}");
                assert!(
                    !uri.contains("/../") && !uri.contains("/./") && !uri.contains("//"),
                    "{path:?} reached {uri}"
                );
                assert_eq!(
                    gateway::routing::normalize_path(&uri).as_deref(),
                    Ok(uri.as_str())
                );
                format!("200, backend saw {uri}")
            }
            "400" => {
                assert_eq!(upstream, 0, "{path:?}");
                if body.is_empty() {
                    "400 (hyper, before the gateway)".to_string()
                } else {
                    assert!(body.contains("\"code\":\"bad_path\""), "{path:?}: {reply}");
                    "400 bad_path".to_string()
                }
            }
            "404" => {
                assert_eq!(upstream, 0, "{path:?}");
                assert!(body.contains("\"code\":\"no_route\""), "{path:?}: {reply}");
                "404 no_route".to_string()
            }
            _ => panic!("{path:?}: {reply}"),
        };
        eprintln!("hostile path {path:?}: {outcome}");
    }
    t.check("path tricks").await;
}

/// Reads frames from a raw h2 connection for `within`, answering PINGs when `answer`, and
/// returns the PINGs it received and whether the gateway sent GOAWAY and closed.
async fn pinged(
    mut s: TlsStream<TcpStream>,
    answer: bool,
    within: Duration,
) -> (usize, bool, bool) {
    let (mut pings, mut goaway) = (0, false);
    let closed = tokio::time::timeout(within, async {
        loop {
            match read_frame(&mut s).await {
                Err(_) => return,
                Ok((PING, flags, payload)) if flags & ACK == 0 => {
                    pings += 1;
                    if answer {
                        let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
                    }
                }
                Ok((GOAWAY, _, _)) => goaway = true,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    (pings, goaway, closed)
}

/// An h2 client that stops answering (a dead peer, or one hoarding a connection) is pinged
/// every third of `keepalive_timeout` (3 s here) and closed, with GOAWAY, once a ping goes
/// unanswered for as long; a client that answers its pings keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_keepalive_pings_close_a_silent_client() {
    let t = Target::start().await;
    let (mut silent, mut answering) = (t.tls(b"h2").await, t.tls(b"h2").await);
    for s in [&mut silent, &mut answering] {
        s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await
            .unwrap();
    }
    let started = Instant::now();
    let ((pings, goaway, closed), (answered, answering_goaway, answering_closed)) = tokio::join!(
        pinged(silent, false, Duration::from_secs(6)),
        pinged(answering, true, Duration::from_secs(5)),
    );
    assert!(pings >= 1, "the silent client was never pinged");
    assert!(
        closed && goaway,
        "the silent client was not closed with GOAWAY"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(
        answered >= 3,
        "the answering client saw {answered} pings in 5 s"
    );
    assert!(
        !answering_goaway && !answering_closed,
        "the answering client lost its connection"
    );
    t.check("h2 keep-alive").await;
}
