//! Concurrent client connections, in total and per client IP (NGINX's limit_conn).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held for the life of a connection; gives its slots back when dropped.
pub struct Permit {
    limiter: Arc<ConnLimiter>,
    ip: Option<IpAddr>,
}

impl ConnLimiter {
    /// Takes a slot; limits of 0 mean "no limit". `ip` is counted only if a per-IP limit is set.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if max_total != 0 && before >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        if max_per_ip == 0 {
            return Ok(Permit {
                limiter: self.clone(),
                ip: None,
            });
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(Permit {
            limiter: self.clone(),
            ip: Some(ip),
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .limiter
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip() {
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.acquire(a, 3, 2).unwrap();
        let _p2 = l.acquire(a, 3, 2).unwrap();
        assert_eq!(l.acquire(a, 3, 2).err(), Some(Refusal::PerIp));
        let _p3 = l.acquire(b, 3, 2).unwrap();
        assert_eq!(l.acquire(b, 3, 2).err(), Some(Refusal::Total));
        drop(p1);
        let _p4 = l.acquire(a, 3, 2).unwrap();
        assert_eq!(l.open(), 3);
        assert!(l.acquire(a, 0, 0).is_ok(), "0 = unlimited");
    }
}
