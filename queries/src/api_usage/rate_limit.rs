//! Per-client-IP request limits: a fixed one-minute window per address.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

pub struct RateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when `ip` used up this minute.
    pub fn check(&self, ip: IpAddr, now_ms: i64) -> Result<(), u64> {
        let minute = now_ms.div_euclid(60_000);
        let mut w = self.windows.lock();
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let e = w.entry(ip).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        if e.1 >= self.per_minute {
            let wait_ms = (minute + 1) * 60_000 - now_ms;
            return Err(((wait_ms + 999) / 1000).max(1) as u64);
        }
        e.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_ip_per_minute() {
        let r = RateLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.check(a, 60_000).is_ok());
        assert!(r.check(a, 60_500).is_ok());
        assert_eq!(r.check(a, 61_000), Err(59));
        assert!(r.check(b, 61_000).is_ok());
        assert!(r.check(a, 120_000).is_ok());
    }
}
