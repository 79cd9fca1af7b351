//! Properties of the parsers that take bytes from the network, one function per fuzz target:
//! each must not panic on any input and must keep its own invariants. The cargo-fuzz targets
//! in `fuzz_targets/` call these; the gateway's integration tests include this file
//! (`it::fuzz_checks`) and run the same functions over [`seeds`] and bounded random inputs, so
//! the properties are checked on every test run, with or without cargo-fuzz.
//!
//! Touches no sockets; `bearer_token` writes one JWKS file to the temp dir, once.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use gateway::ha::advert::{self, Advert, AdvertKey, PeerName, ReplayGuard};
use gateway::policy::proxy_protocol::{self, Header};
use gateway::routing::normalize_path as normalize;
use service_kit::auth::{self, Auth, Claims, Role, SigningKey};

/// `routing::normalize_path`: on success the path is absolute, free of dot segments, empty
/// segments, backslashes, control bytes and encoded separators, no longer than its input,
/// and normalizing it again changes nothing.
pub fn normalize_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for raw in [text.to_string(), format!("/{text}"), format!("/api/{text}")] {
        let Ok(path) = normalize(&raw) else { continue };
        assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
        for bad in ["//", "/./", "/../", "\\", "%2F", "%2f", "%5C", "%5c"] {
            assert!(!path.contains(bad), "{raw:?} -> {path:?} contains {bad}");
        }
        assert!(
            !path.ends_with("/.") && !path.ends_with("/.."),
            "{raw:?} -> {path:?}"
        );
        assert!(
            path.bytes().all(|b| b > 0x20 && b != 0x7f),
            "{raw:?} -> {path:?}"
        );
        assert!(path.len() <= raw.len(), "{raw:?} -> {path:?} grew");
        assert_eq!(
            normalize(&path),
            Ok(path.clone()),
            "not idempotent: {raw:?}"
        );
        assert!(
            path.split('/').all(|s| s != "." && s != ".."),
            "{raw:?} -> {path:?} has a dot segment"
        );
    }
}

/// `policy::proxy_protocol::parse`: a parsed header re-encodes to bytes that parse to the same
/// header, and parsing never reads past the length the header announces.
pub fn proxy_protocol(data: &[u8]) {
    let parsed = proxy_protocol::parse(data);
    if let Ok(header) = parsed {
        let head: &[u8; 16] = data
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .expect("a parsed header has 16 bytes");
        let total = proxy_protocol::total_len(head).expect("a parsed header has a length");
        assert!(total <= data.len());
        assert_eq!(proxy_protocol::parse(&data[..total]), Ok(header));
        if let Header::Proxy {
            source,
            destination,
        } = header
        {
            if source.is_ipv4() == destination.is_ipv4() {
                let again = proxy_protocol::encode(source, destination);
                assert_eq!(proxy_protocol::parse(&again), Ok(header));
            }
        }
    }
    // The same bytes behind a valid signature and length, so the address parsing is reached.
    let mut framed = proxy_protocol::SIGNATURE.to_vec();
    framed.extend_from_slice(data.get(..2).unwrap_or(&[0x21, 0x11]));
    let body = data.get(2..).unwrap_or_default();
    let len = u16::try_from(body.len().min(600)).unwrap_or(600);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&body[..usize::from(len).min(body.len())]);
    if let Ok(Header::Proxy {
        source,
        destination,
    }) = proxy_protocol::parse(&framed)
    {
        assert_eq!(source.is_ipv4(), destination.is_ipv4());
    }
}

const ADVERT_SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef!";

/// `ha::advert::decode`: unsigned bytes never decode; bytes signed with the key either are
/// refused or re-encode to exactly themselves; the replay guard only accepts rising counters
/// and stays within its capacity.
pub fn ha_advert(data: &[u8]) {
    let key = AdvertKey::new(ADVERT_SECRET).expect("a 32-byte secret");
    if let Ok((advert, counter)) = advert::decode(data, &key) {
        assert_eq!(advert::encode(&advert, counter, &key), data);
    }

    // Signed with the right key: the parser after the HMAC check is reached.
    let mut signed = advert::MAGIC.to_vec();
    signed.push(advert::VERSION);
    let room = advert::MAX_LEN - advert::TAG_LEN - signed.len();
    signed.extend_from_slice(&data[..data.len().min(room)]);
    let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, ADVERT_SECRET);
    let tag = aws_lc_rs::hmac::sign(&hmac, &signed);
    signed.extend_from_slice(tag.as_ref());
    match advert::decode(&signed, &key) {
        Ok((advert, counter)) => {
            assert_eq!(advert::encode(&advert, counter, &key), signed);
            assert!(!advert.interval.is_zero());
        }
        Err(_) => {
            // A valid advert under a different key never decodes.
            let other = AdvertKey::new(b"another-secret-0123456789abcdef!").expect("secret");
            assert!(advert::decode(&signed, &other).is_err());
        }
    }

    // Replay guard: 9 bytes per advert (sender, counter).
    let mut guard = ReplayGuard::new(4);
    for chunk in data.chunks_exact(9) {
        let sender = PeerName::new(&format!("peer-{}", chunk[0] % 8)).expect("a valid name");
        let mut be = [0u8; 8];
        be.copy_from_slice(&chunk[1..]);
        let counter = u64::from_be_bytes(be);
        let before = guard.high_water(&sender);
        let accepted = guard.check(&sender, counter).is_ok();
        if let Some(high) = before {
            assert_eq!(accepted, counter > high, "{counter} after {high}");
        }
        if accepted {
            assert_eq!(guard.high_water(&sender), Some(counter));
        }
        assert!(guard.len() <= 4);
    }
}

struct TokenFixture {
    auth: Auth,
    token: String,
    claims: Claims,
}

fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SigningKey::generate().expect("an Ed25519 key");
        let path = std::env::temp_dir().join(format!(
            "gateway-fuzz-jwks-{}-{:?}.json",
            std::process::id(),
            std::thread::current().id()
        ));
        auth::write_jwks(&path, &[&key]).expect("JWKS written");
        let auth = Auth::start(
            &service_kit::settings::AuthSetting::Jwks(path.clone()),
            "admin-server",
        )
        .expect("JWKS loaded");
        let _ = std::fs::remove_file(&path);
        let claims = Claims::staff(
            "fuzz",
            Role::Admin,
            &["admin-server"],
            Duration::from_secs(3600),
        );
        let token = auth::sign(&claims, &key).expect("signed");
        assert_eq!(auth.verify(&token).as_ref(), Ok(&claims));
        TokenFixture {
            auth,
            token,
            claims,
        }
    })
}

/// `service_kit::auth`: `parse_jwks` on any text, `token_from` on any Authorization header,
/// `verify` on any string and on the genuine token with bytes overwritten: a token that
/// verifies carries exactly the signed claims (no edit forges different ones).
pub fn bearer_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(keys) = auth::parse_jwks(&text) {
        assert!(!keys.is_empty());
    }

    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.headers.insert(http::header::AUTHORIZATION, value);
        if let Ok(token) = Auth::token_from(&parts) {
            assert!(!token.is_empty() && token.trim() == token, "{token:?}");
        }
    }

    let fx = token_fixture();
    if let Ok(claims) = fx.auth.verify(&text) {
        assert_eq!(claims, fx.claims, "{text:?}");
    }
    // The genuine token with (position, byte) edits from the input.
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let mut token = fx.token.clone().into_bytes();
    for pair in data.chunks_exact(2).take(8) {
        let at = usize::from(pair[0]) * token.len() / 256;
        token[at] = ALPHABET[usize::from(pair[1]) % ALPHABET.len()];
    }
    let token = String::from_utf8(token).expect("ASCII");
    if let Ok(claims) = fx.auth.verify(&token) {
        assert_eq!(claims, fx.claims, "{token:?}");
    }
}

/// Seed inputs for each target (the cargo-fuzz corpus starts empty; these are the shapes the
/// in-suite run mutates).
pub mod seeds {
    use super::*;

    pub fn normalize_path() -> Vec<Vec<u8>> {
        [
            "/",
            "/api/users",
            "/api/../x",
            "/..%2f",
            "/%2e%2e/",
            "/%252e%252e/",
            "/a/%00/b",
            "/a\\b",
            "/%c0%ae%c0%ae/",
            "//a//b/",
            "/a/./b/.",
            "/%7euser",
            "/%zz",
            "/%4",
            "/a/..",
            "/./../",
            "/%2E%2e%2f",
            "/api/%2e%2E/admin",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    pub fn proxy_protocol() -> Vec<Vec<u8>> {
        let v4: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let v4d: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().expect("addr");
        let v6d: SocketAddr = "[2001:db8::2]:443".parse().expect("addr");
        let mut local = proxy_protocol::SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        vec![
            proxy_protocol::encode(v4, v4d),
            proxy_protocol::encode(v6, v6d),
            local,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ]
    }

    pub fn ha_advert() -> Vec<Vec<u8>> {
        let key = AdvertKey::new(ADVERT_SECRET).expect("secret");
        let advert = Advert {
            from_addr: "192.0.2.10".parse().expect("addr"),
            from_name: PeerName::new("gw-a").expect("name"),
            priority: 150,
            interval: Duration::from_millis(100),
        };
        let v6 = Advert {
            from_addr: "2001:db8::10".parse().expect("addr"),
            ..advert.clone()
        };
        vec![
            advert::encode(&advert, 1, &key),
            advert::encode(&v6, u64::MAX, &key),
        ]
    }

    pub fn bearer_token() -> Vec<Vec<u8>> {
        let fx = super::token_fixture();
        let key = SigningKey::generate().expect("key");
        vec![
            fx.token.clone().into_bytes(),
            format!("Bearer {}", fx.token).into_bytes(),
            auth::jwks_json(&[&key]).into_bytes(),
            b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".to_vec(),
            b"Bearer  ".to_vec(),
        ]
    }
}

/// Runs `check` over `seeds`, random mutations of them and random bytes: `rounds` inputs from
/// a fixed seed, so a failure reproduces.
pub fn run_bounded(check: fn(&[u8]), seeds: &[Vec<u8>], rounds: usize, seed: u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for s in seeds {
        check(s);
    }
    for round in 0..rounds {
        let mut input = if seeds.is_empty() || round % 4 == 0 {
            let len = (next() % 256) as usize;
            (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            seeds[(next() as usize) % seeds.len()].clone()
        };
        for _ in 0..(next() % 4) {
            let r = next();
            let at = if input.is_empty() {
                0
            } else {
                (r as usize >> 8) % input.len()
            };
            match r % 5 {
                0 if !input.is_empty() => input[at] = (r >> 32) as u8,
                1 => input.insert(at.min(input.len()), (r >> 32) as u8),
                2 if !input.is_empty() => {
                    input.remove(at);
                }
                3 => input.truncate(at),
                _ => {
                    let from = (r >> 40) as usize % input.len().max(1);
                    let piece: Vec<u8> = input.iter().skip(from).take(8).copied().collect();
                    input.splice(at.min(input.len())..at.min(input.len()), piece);
                }
            }
        }
        check(&input);
    }
}
