//! Rounds of senders cut by `kill -9`: after each restart, every id a
//! sender saw acknowledged is stored exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Rng, Tally};

/// The ids acknowledged so far, shared by the senders.
pub type Acked = Arc<Mutex<BTreeSet<String>>>;

/// `rounds` rounds: start the binary with `args`, run `senders` senders
/// (`send(base_url, next_id, acked, seed)`, each until the server goes
/// away), `kill -9` it after 0.3–1.5 s, start it again and compare
/// `stored(base_url)` (each stored id and its count) with what was
/// acknowledged: nothing twice, nothing acknowledged missing.
pub async fn acked_once_across_kill_9<S, SF, Q, QF>(
    data: &Path,
    args: &[&str],
    rounds: usize,
    senders: usize,
    send: S,
    stored: Q,
) where
    S: Fn(String, Arc<AtomicU64>, Acked, u64) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    Q: Fn(String) -> QF,
    QF: Future<Output = BTreeMap<String, u64>>,
{
    let next = Arc::new(AtomicU64::new(0));
    let acked: Acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut rng = Rng::from_time();
    for round in 0..rounds {
        let t = Tally::start(data, args).await;
        let tasks: Vec<_> = (0..senders)
            .map(|i| {
                tokio::spawn(send(
                    t.url(""),
                    next.clone(),
                    acked.clone(),
                    rng.next() ^ i as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        t.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        let t = Tally::start(data, args).await;
        let stored = stored(t.url("")).await;
        let acked = acked.lock().unwrap().clone();
        assert_acked_stored_once(&acked, &stored, &format!("round {round}"));
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        t.kill9();
    }
}

/// Every acknowledged id is stored, and no stored id more than once
/// (`stored`: id → rows); `when` says where in the test, in failures.
pub fn assert_acked_stored_once<N: PartialOrd + From<u8> + std::fmt::Debug>(
    acked: &BTreeSet<String>,
    stored: &BTreeMap<String, N>,
    when: &str,
) {
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > N::from(1)).collect();
    assert!(twice.is_empty(), "{when}: stored twice: {twice:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{when}: acknowledged, not stored: {} of {}, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// The ids of a sender's next request: 1 to 50 new ones (`{prefix}{n:08}`)
/// and, one time in three, the last five acknowledged again (a resend).
pub fn next_ids(rng: &mut Rng, next: &AtomicU64, acked: &Acked, prefix: &str) -> Vec<String> {
    let mut ids: Vec<String> = (0..1 + rng.below(50))
        .map(|_| format!("{prefix}{:08}", next.fetch_add(1, Ordering::Relaxed)))
        .collect();
    if rng.below(3) == 0 {
        ids.extend(acked.lock().unwrap().iter().rev().take(5).cloned());
    }
    ids
}

/// The rows `sql` (an id and a count `n`) answers, as the admin `token`.
pub async fn stored_rows(url: &str, token: &str, sql: &str) -> Vec<serde_json::Value> {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/sql"))
        .bearer_auth(token)
        .body(sql.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}
