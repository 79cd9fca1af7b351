use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> AdvertKey {
    AdvertKey::new(SECRET).expect("valid secret")
}

fn name(s: &str) -> PeerName {
    PeerName::new(s).expect("valid name")
}

fn v4_advert() -> Advert {
    Advert {
        from_addr: "10.0.0.1".parse().expect("addr"),
        from_name: name("gw-a"),
        priority: 100,
        interval: Duration::from_millis(100),
    }
}

fn v6_advert() -> Advert {
    Advert {
        from_addr: "2001:db8::2".parse().expect("addr"),
        from_name: name(&"b".repeat(MAX_NAME_LEN)),
        priority: 0,
        interval: Duration::from_millis(u64::from(u16::MAX)),
    }
}

/// Signs an arbitrary body, to reach the parser with authenticated garbage.
fn signed(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(hmac::sign(&key().0, body).as_ref());
    out
}

/// Deterministic xorshift so fuzz-style tests need no extra crates and are reproducible.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn round_trips_ipv4_and_ipv6_at_both_size_limits() {
    for (advert, counter, len) in [
        (v4_advert(), 1_700_000_000_000_000, MIN_LEN + 3),
        (v6_advert(), u64::MAX, MAX_LEN),
    ] {
        let bytes = encode(&advert, counter, &key());
        assert_eq!(bytes.len(), len);
        assert_eq!(decode(&bytes, &key()), Ok((advert, counter)));
    }
}

#[test]
fn encode_carries_whole_milliseconds_clamped_to_u16() {
    for (interval, wire) in [
        (Duration::from_micros(100_999), 100),
        (Duration::ZERO, 1),
        (Duration::from_micros(10), 1),
        (Duration::from_secs(3600), u64::from(u16::MAX)),
    ] {
        let advert = Advert {
            interval,
            ..v4_advert()
        };
        let (decoded, _) = decode(&encode(&advert, 7, &key()), &key()).expect("decodes");
        assert_eq!(
            decoded.interval,
            Duration::from_millis(wire),
            "{interval:?}"
        );
    }
}

#[test]
fn any_flipped_bit_is_rejected() {
    for advert in [v4_advert(), v6_advert()] {
        let bytes = encode(&advert, 42, &key());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let err = decode(&bad, &key()).expect_err("flipped bit accepted");
                let expected = match i {
                    0..4 => AdvertError::BadMagic,
                    4 => AdvertError::UnsupportedVersion(VERSION ^ (1 << bit)),
                    _ => AdvertError::BadTag,
                };
                assert_eq!(err, expected, "byte {i} bit {bit}");
            }
        }
    }
}

#[test]
fn wrong_secret_is_rejected() {
    let bytes = encode(&v4_advert(), 1, &key());
    let other = AdvertKey::new(b"fedcba9876543210fedcba9876543210").expect("valid");
    assert_eq!(decode(&bytes, &other), Err(AdvertError::BadTag));
}

#[test]
fn short_secrets_are_refused() {
    assert_eq!(
        AdvertKey::new(b"short").map(|_| ()),
        Err(AdvertError::WeakSecret { len: 5 })
    );
    assert!(AdvertKey::new(&[0; MIN_SECRET_LEN]).is_ok());
    assert_eq!(format!("{:?}", key()), "AdvertKey(..)");
}

#[test]
fn truncated_and_extended_inputs_are_rejected() {
    let bytes = encode(&v6_advert(), 9, &key());
    for cut in 0..bytes.len() {
        assert!(
            decode(&bytes[..cut], &key()).is_err(),
            "prefix of {cut} bytes"
        );
    }
    let mut longer = encode(&v4_advert(), 9, &key());
    longer.push(0);
    assert_eq!(decode(&longer, &key()), Err(AdvertError::BadTag));
    assert_eq!(decode(&[], &key()), Err(AdvertError::TooShort { len: 0 }));
    let huge = vec![0xAA; 1 << 20];
    assert_eq!(
        decode(&huge, &key()),
        Err(AdvertError::TooLong { len: 1 << 20 })
    );
}

#[test]
fn random_garbage_never_panics_and_is_rejected() {
    let mut state = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20_000 {
        let len = usize::try_from(xorshift(&mut state) % (MAX_LEN as u64 + 16)).expect("len");
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
        // Half the rounds get a valid header so the tag check, not the magic, rejects them.
        if round % 2 == 0 && len > MAGIC.len() {
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4] = VERSION;
        }
        assert!(decode(&bytes, &key()).is_err());
    }
}

#[test]
fn authenticated_but_malformed_bodies_are_rejected() {
    let header = [&MAGIC[..], &[VERSION]].concat();
    let v4_tail = |prio: u8, interval: u16| {
        [
            &[FAMILY_V4, 10, 0, 0, 1, prio][..],
            &interval.to_be_bytes(),
            &5u64.to_be_bytes(),
        ]
        .concat()
    };
    let with_name = |name: &[u8], tail: &[u8]| {
        let len = u8::try_from(name.len()).expect("short");
        signed(&[&header[..], &[len], name, tail].concat())
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("valid control", with_name(b"gw-a", &v4_tail(1, 100))),
        (
            "zero-length name",
            with_name(b"", &[&[0u8; 4][..], &v4_tail(1, 100)].concat()),
        ),
        ("space in name", with_name(b"gw a", &v4_tail(1, 100))),
        (
            "control char in name",
            with_name(b"gw\na", &v4_tail(1, 100)),
        ),
        (
            "non-ascii name",
            with_name("gw-é".as_bytes(), &v4_tail(1, 100)),
        ),
        ("zero interval", with_name(b"gw-a", &v4_tail(1, 0))),
        (
            "bad family",
            with_name(
                b"gw-a",
                &[&[5u8, 10, 0, 0, 1, 1, 0, 100][..], &5u64.to_be_bytes()].concat(),
            ),
        ),
        (
            "v6 family with v4-sized body",
            with_name(
                b"gw-a",
                &[
                    &[FAMILY_V6, 10, 0, 0, 1, 1, 0, 100][..],
                    &5u64.to_be_bytes(),
                ]
                .concat(),
            ),
        ),
        (
            "name length past the end",
            signed(&[&header[..], &[64], &v4_tail(1, 100), &[0, 0]].concat()),
        ),
        (
            "trailing bytes",
            with_name(b"gw-a", &[&v4_tail(1, 100)[..], &[0, 0]].concat()),
        ),
    ];
    for (what, bytes) in cases {
        let result = decode(&bytes, &key());
        if what == "valid control" {
            assert!(result.is_ok(), "{what}: {result:?}");
        } else {
            assert!(
                matches!(result, Err(AdvertError::Malformed(_))),
                "{what}: {result:?}"
            );
        }
    }
}

#[test]
fn peer_names_are_validated() {
    assert_eq!(PeerName::new(""), Err(PeerNameError::Empty));
    assert_eq!(
        PeerName::new(&"x".repeat(MAX_NAME_LEN + 1)),
        Err(PeerNameError::TooLong(MAX_NAME_LEN + 1))
    );
    for bad in ["a b", "a\tb", "a\u{7f}", "é"] {
        assert_eq!(PeerName::new(bad), Err(PeerNameError::BadChar), "{bad:?}");
    }
    assert_eq!(name("gw-a.example_1").to_string(), "gw-a.example_1");
}

#[test]
fn replay_guard_accepts_only_increasing_counters_per_sender() {
    let (a, b) = (name("gw-a"), name("gw-b"));
    let mut guard = ReplayGuard::default();
    assert!(guard.is_empty());
    // (sender, counter, accepted)
    let table = [
        (&a, 100, true),
        (&a, 100, false), // exact replay
        (&a, 99, false),  // older
        (&a, 101, true),
        (&b, 5, true), // other senders are independent
        (&b, 5, false),
        (&a, 102, true),
        (&a, 2_000_000, true), // peer restarted: unix-time counter jumped ahead
        (&a, 103, false),      // pre-restart adverts stay dead
    ];
    for (i, (sender, counter, accepted)) in table.into_iter().enumerate() {
        let result = guard.check(sender, counter);
        assert_eq!(result.is_ok(), accepted, "row {i}: {result:?}");
    }
    assert_eq!(
        guard.check(&a, 7),
        Err(AdvertError::Replayed {
            counter: 7,
            high_water: 2_000_000
        })
    );
    assert_eq!(guard.high_water(&b), Some(5));
    assert_eq!(guard.len(), 2);
}

#[test]
fn replay_guard_memory_is_bounded_and_evicts_least_recently_accepted() {
    let mut guard = ReplayGuard::new(4);
    for i in 0..4 {
        guard
            .check(&name(&format!("n{i}")), 10)
            .expect("new sender");
    }
    guard.check(&name("n0"), 11).expect("n0 refreshed");
    guard.check(&name("n4"), 1).expect("new sender evicts n1");
    assert_eq!(guard.len(), 4);
    assert_eq!(guard.high_water(&name("n1")), None);
    assert_eq!(guard.high_water(&name("n0")), Some(11));

    let mut big = ReplayGuard::default();
    for i in 0..1000 {
        big.check(&name(&format!("s{i}")), 1).expect("new sender");
    }
    assert_eq!(big.len(), DEFAULT_REPLAY_SENDERS);
    assert_eq!(ReplayGuard::new(0).capacity, 1);
}
