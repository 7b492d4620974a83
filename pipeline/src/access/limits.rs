//! Per-tenant rate limits: `--customer-rate` (VM samples per second per
//! `customer_id`) and `--tenant-rate` (events per second per tenant on the
//! event routes). Each tenant has its own bucket holding two seconds of its
//! rate, so one tenant over its rate never slows another.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Seconds of rate a bucket holds (the burst).
pub const BURST_SECS: f64 = 2.0;
/// Buckets kept before full ones are dropped (they hold nothing to forget).
const PRUNE_AT: usize = 10_000;

/// The rate limits of the write paths (`[limits]` in `tally.toml`).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Rate limits")]
pub struct LimitsArgs {
    /// VM samples per second per customer_id (billing.v1), with a burst of
    /// two seconds; past it, that customer gets resource_exhausted (429)
    /// with Retry-After. Unset: no limit.
    #[arg(long, env = "TALLY_CUSTOMER_RATE")]
    #[serde(default)]
    pub customer_rate: Option<u64>,
    /// Events per second per tenant on the event routes (microdao_id, or
    /// app_id for chat events), with a burst of two seconds; past it, that
    /// tenant's events get 429 with Retry-After. Unset: no limit.
    #[arg(long, env = "TALLY_TENANT_RATE")]
    #[serde(default)]
    pub tenant_rate: Option<u64>,
}

impl LimitsArgs {
    pub fn customers(&self) -> Option<RateLimiter> {
        self.customer_rate.map(RateLimiter::new)
    }

    pub fn tenants(&self) -> Option<RateLimiter> {
        self.tenant_rate.map(RateLimiter::new)
    }
}

/// A tenant over its rate: when to try again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tenant {tenant:?} is over its rate of {rate} per second; retry after {} s", retry_after.as_secs())]
pub struct OverRate {
    pub tenant: String,
    pub rate: u64,
    pub retry_after: Duration,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per tenant.
pub struct RateLimiter {
    rate: u64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_second: u64) -> RateLimiter {
        RateLimiter {
            rate: per_second.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` from `tenant`'s bucket. A bucket that is not empty takes a
    /// whole request even past its level (so a batch larger than the burst
    /// still passes once), and the debt is paid before the next one.
    pub fn take(&self, tenant: &str, n: u64) -> Result<(), OverRate> {
        self.take_at(tenant, n, Instant::now())
    }

    fn take_at(&self, tenant: &str, n: u64, now: Instant) -> Result<(), OverRate> {
        let rate = self.rate as f64;
        let burst = rate * BURST_SECS;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens <= 0.0 {
            let wait = (-b.tokens / rate).max(0.0) + 1.0 / rate;
            return Err(OverRate {
                tenant: tenant.to_string(),
                rate: self.rate,
                retry_after: Duration::from_secs(wait.ceil().max(1.0) as u64),
            });
        }
        b.tokens -= n as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_bucket_of_two_seconds() {
        let l = RateLimiter::new(100);
        let t0 = Instant::now();
        // Two seconds of burst, then refused.
        assert!(l.take_at("a", 150, t0).is_ok());
        assert!(l.take_at("a", 50, t0).is_ok());
        let e = l.take_at("a", 1, t0).unwrap_err();
        assert_eq!(e.tenant, "a");
        assert!(e.retry_after >= Duration::from_secs(1));
        // Another tenant is not slowed.
        assert!(l.take_at("b", 200, t0).is_ok());
        // Half a second refills fifty.
        assert!(l.take_at("a", 50, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.take_at("a", 1, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_once_then_waits_for_its_debt() {
        let l = RateLimiter::new(10);
        let t0 = Instant::now();
        assert!(l.take_at("a", 100, t0).is_ok());
        let e = l.take_at("a", 1, t0 + Duration::from_secs(1)).unwrap_err();
        // 80 owed at 10/s: about eight more seconds.
        assert!(e.retry_after >= Duration::from_secs(8), "{e}");
        assert!(l.take_at("a", 1, t0 + Duration::from_secs(10)).is_ok());
    }
}
