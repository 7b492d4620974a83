//! Webhook delivery: every fired alert with a target is POSTed until a 2xx.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::time::Instant;

use tally_queries::alerts::Fired;

use super::Alerts;

/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Tally-Signature";
/// Deliveries given up after failing this long.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// POSTs in flight at once.
const PARALLEL: usize = 16;

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    /// 5xx, 429, a connection error or a timeout: try again later.
    Retry(String),
    /// Another answer: trying again would get the same.
    Refused(String),
}

/// The wait before attempt `n + 1` after `n` failures: 1 s doubling, at
/// most five minutes.
fn backoff(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

impl Alerts {
    /// Delivers pending alerts until `stop`.
    pub async fn deliver(self, mut stop: watch::Receiver<bool>) {
        let mut next_try: HashMap<String, Instant> = HashMap::new();
        loop {
            let now = Instant::now();
            let due = self
                .0
                .feed
                .pending(|f| next_try.get(&f.id).is_none_or(|t| *t <= now));
            let results: Vec<(Fired, Outcome)> = futures::stream::iter(due)
                .map(|f| async {
                    let outcome = self.post(&f).await;
                    (f, outcome)
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for (mut f, outcome) in results {
                f.attempts += 1;
                match outcome {
                    Outcome::Delivered => {
                        f.delivered_at = Some(tally_pipeline::now_ns());
                        f.last_error = None;
                        next_try.remove(&f.id);
                        tracing::info!(id = %f.id, attempts = f.attempts, "alert delivered");
                    }
                    Outcome::Retry(e) => {
                        let age = tally_pipeline::now_ns().saturating_sub(f.at);
                        if age > GIVE_UP.as_nanos() as i64 {
                            tracing::error!(id = %f.id, error = %e, attempts = f.attempts, "alert webhook failed for 24 h; given up");
                            f.failed = true;
                        } else {
                            tracing::warn!(id = %f.id, error = %e, attempts = f.attempts, "alert webhook failed; retrying");
                            next_try.insert(f.id.clone(), Instant::now() + backoff(f.attempts));
                        }
                        f.last_error = Some(e);
                    }
                    Outcome::Refused(e) => {
                        tracing::error!(id = %f.id, error = %e, "alert webhook refused the alert; not retried");
                        f.failed = true;
                        f.last_error = Some(e);
                    }
                }
                if let Err(e) = self.persist(&f).await {
                    tracing::error!(id = %f.id, error = %e, "cannot write the alert's delivery state");
                }
                self.0.feed.update(f);
            }
            let wait = next_try
                .values()
                .min()
                .map_or(Duration::from_secs(3600), |t| {
                    t.saturating_duration_since(Instant::now())
                });
            tokio::select! {
                _ = self.0.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn post(&self, f: &Fired) -> Outcome {
        let Some(target) = &f.target else {
            return Outcome::Delivered;
        };
        let mut req = self
            .0
            .client
            .post(&target.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("tally/", env!("CARGO_PKG_VERSION")))
            .header("X-Tally-Alert-Id", &f.id)
            .body(f.body.clone());
        if let Some(secret) = &target.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, f.body.as_bytes()));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                Outcome::Retry(format!("{} answered {}", target.url, r.status()))
            }
            Ok(r) => Outcome::Refused(format!("{} answered {}", target.url, r.status())),
            Err(e) => Outcome::Retry(format!("POST {}: {e}", target.url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let got: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    }
}
