//! Memory and speed of the per-client rate limiter with a million distinct clients.
//!
//!     cargo run --release -p gateway --example limiter_memory
//!
//! One `RateLimiter` with the seed's admin limit (50 per minute, burst 50). Records VmRSS
//! (from /proc/self/status) at a baseline, after 1,000,000 distinct IPv4 clients made one
//! request each, and after their buckets refilled and `forget_idle()` ran (what the gateway
//! does every 10 s). With 50/min one request's capacity returns in 1.2 s, and governor drops a
//! bucket once it is indistinguishable from a fresh one (theoretical arrival time older than
//! now - 1.2 s), i.e. 2.4 s after a client's single request: the example waits 2.5 s after
//! the last one. Then the time per `check()` for new clients (bucket inserted), known clients
//! (a million tracked) and one client repeated, all on one thread, and the time `forget_idle()`
//! takes over a million buckets.
//!
//! The example uses the gateway binary's global allocator (mimalloc), so RSS is what the
//! gateway would show. Set CLIENTS to change the number of clients (default 1000000).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use gateway::config::{Dur, RateLimitConfig};
use gateway::policy::rate_limit::{Decision, RateLimiter};

/// VmRSS of this process in kB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The i-th client: distinct IPv4 addresses from 11.0.0.0 upward.
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0B00_0000u32.wrapping_add(i)))
}

/// The allocator of the gateway binary (see gateway/src/main.rs), so that the figures are the
/// gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Asks mimalloc to return the memory it keeps for reuse (it otherwise does so lazily, after
/// its purge delay); what the gateway would hold at most without this is the row before.
fn allocator_collect() {
    extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect only walks mimalloc's own heaps; it takes no pointers from us.
    unsafe { mi_collect(true) };
}

/// Runs one check per client in `range`, returns ns per check; panics on a refusal.
fn check_all(rl: &RateLimiter, range: std::ops::Range<u32>) -> f64 {
    let n = range.len() as f64;
    let start = Instant::now();
    for i in range {
        if let Decision::Limited { .. } = black_box(rl.check(client(i))) {
            panic!("client {} was limited", client(i));
        }
    }
    start.elapsed().as_nanos() as f64 / n
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let clients: u32 = std::env::var("CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1_000_000);
    let config = RateLimitConfig {
        rate: 50,
        per: Dur(Duration::from_secs(60)),
        burst: Some(50),
    };
    // The buckets of a client that made one request are forgettable after 2 x 1.2 s.
    let refill = Duration::from_millis(2500);

    let mut rows: Vec<(String, usize, u64)> = Vec::new();
    let rl = RateLimiter::new(config);
    let base = rss_kb();
    rows.push(("baseline (limiter created)".into(), rl.tracked(), base));

    let insert_ns = check_all(&rl, 0..clients);
    let last_request = Instant::now();
    let full = rss_kb();
    rows.push((
        format!("after {clients} clients, 1 request each"),
        rl.tracked(),
        full,
    ));

    // Nothing has refilled yet: forget_idle keeps every bucket (its cost at this size).
    let t = Instant::now();
    rl.forget_idle();
    let forget_keep_ms = t.elapsed().as_secs_f64() * 1e3;
    let kept = rl.tracked();

    std::thread::sleep(refill.saturating_sub(last_request.elapsed()));
    let t = Instant::now();
    rl.forget_idle();
    let forget_drop_ms = t.elapsed().as_secs_f64() * 1e3;
    rows.push((
        "after 2.5 s refill + forget_idle()".into(),
        rl.tracked(),
        rss_kb(),
    ));
    std::thread::sleep(Duration::from_millis(500));
    rows.push(("0.5 s later".into(), rl.tracked(), rss_kb()));
    allocator_collect();
    rows.push(("then mi_collect(true)".into(), rl.tracked(), rss_kb()));

    // Timings: new clients again (the map grows from empty again), then the same clients
    // known (second request each), then one client over and over (the benchmark's case).
    let reinsert_ns = check_all(&rl, 0..clients);
    let refilled = rss_kb();
    let known_ns = check_all(&rl, 0..clients);
    let single = RateLimiter::new(RateLimitConfig {
        rate: 100_000_000,
        per: Dur(Duration::from_secs(1)),
        burst: Some(100_000_000),
    });
    let repeat = 10_000_000u32;
    let t = Instant::now();
    for _ in 0..repeat {
        black_box(single.check(black_box(client(0))));
    }
    let single_ns = t.elapsed().as_nanos() as f64 / f64::from(repeat);

    println!(
        "rate limiter: rate = 50 per 1m, burst 50 (the seed's /api/v1/admin limit), \
         {clients} distinct IPv4 clients"
    );
    println!();
    println!(
        "{:<40} {:>9} {:>10} {:>13}",
        "memory", "tracked", "VmRSS MB", "vs baseline"
    );
    for (what, tracked, kb) in &rows {
        println!(
            "{:<40} {:>9} {:>10.1} {:>+12.1}M",
            what,
            tracked,
            mb(*kb),
            mb(*kb) - mb(base)
        );
    }
    println!(
        "{:<40} {:>9} {:>10.1} {:>+12.1}M",
        "refilled again with the same clients",
        rl.tracked(),
        mb(refilled),
        mb(refilled) - mb(base)
    );
    println!(
        "per tracked client: {:.0} bytes of RSS",
        full.saturating_sub(base) as f64 * 1024.0 / f64::from(clients)
    );
    println!();
    println!("{:<40} {:>12}", "time (one thread)", "ns/check");
    println!(
        "{:<40} {:>12.0}",
        "check, new client (bucket inserted)", insert_ns
    );
    println!(
        "{:<40} {:>12.0}",
        "check, new client into a used map", reinsert_ns
    );
    println!(
        "{:<40} {:>12.0}",
        format!("check, known client ({clients} tracked)"),
        known_ns
    );
    println!(
        "{:<40} {:>12.0}",
        format!("check, one client x {repeat}"),
        single_ns
    );
    println!(
        "forget_idle() over {clients} buckets: {forget_keep_ms:.1} ms keeping all ({kept} kept), \
         {forget_drop_ms:.1} ms dropping all"
    );
}
