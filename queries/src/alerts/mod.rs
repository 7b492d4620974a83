//! Alerts: a budget threshold crossed, an anomaly found. Each alert has an
//! id that names what it is about (the budget, threshold and period; the
//! scope, metric and hour), and is fired once per id:
//!
//! 1. its row goes into the `alerts` dataset through the pipeline (durable
//!    when this returns; a copy found again after a crash is a duplicate);
//! 2. its delivery state is written to `_tally/alerts/<digest>.json`: from
//!    then on the id is known, across restarts, and is never fired again;
//! 3. it goes to the `/v1/alerts/stream` WebSocket, and to its webhook.
//!
//! Webhooks are POSTed with `X-Tally-Signature: sha256=<hex HMAC-SHA256 of
//! the body>` and retried with backoff (1 s doubling to 5 min, for 24 h) on
//! 5xx, 429 and connection errors until a 2xx; the delivery state survives
//! restarts, so a delivery cut by a crash is made after it (at least once:
//! the `id` lets a receiver drop a repeat).

pub mod api;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::{Dataset, Pipeline, RecordBuilder};
use tokio::sync::{broadcast, Notify};

/// The source name alert rows are stored under.
pub const SOURCE: &str = "alerts";
/// Delivered alerts are forgotten after this long (the longest budget
/// period is a month; its crossings must stay known until it ends).
const KEEP_NS: i64 = 62 * tally_pipeline::clock::DAY_NS;

/// Where alerts without a webhook of their own go (`[alerts]` in
/// `tally.toml`): anomalies, and budgets that name no webhook.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Alerts")]
pub struct AlertArgs {
    /// POST anomaly alerts (and alerts of budgets without a webhook_url) to
    /// this URL. Unset: they are stored and streamed only.
    #[arg(long, env = "TALLY_ALERT_WEBHOOK")]
    #[serde(default)]
    pub alert_webhook: Option<String>,
    /// Sign those POSTs with this secret (`X-Tally-Signature`).
    #[arg(long, env = "TALLY_ALERT_WEBHOOK_SECRET")]
    #[serde(default)]
    pub alert_webhook_secret: Option<String>,
}

impl AlertArgs {
    /// The default webhook, checked.
    pub fn target(&self) -> Result<Option<Target>, String> {
        match &self.alert_webhook {
            None if self.alert_webhook_secret.is_some() => {
                Err("alert_webhook_secret is set without alert_webhook".into())
            }
            None => Ok(None),
            Some(url) => {
                check_url(url).map_err(|e| format!("alert_webhook: {e}"))?;
                Ok(Some(Target {
                    url: url.clone(),
                    secret: self.alert_webhook_secret.clone(),
                }))
            }
        }
    }
}

/// An http(s) URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!("must be an http or https URL, got {url:?}")),
        Err(e) => Err(format!("must be a URL ({e}), got {url:?}")),
    }
}

/// Where an alert is POSTed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub url: String,
    pub secret: Option<String>,
}

/// What a budget alert's row holds besides the common columns.
#[derive(Debug, Clone, Default)]
pub struct BudgetFields {
    pub budget_id: String,
    pub budget_name: String,
    pub threshold: f64,
    pub used: f64,
    pub limit: f64,
    pub period_start: i64,
    pub period_end: i64,
}

/// An alert to fire.
#[derive(Debug, Clone)]
pub struct Alert {
    pub id: String,
    /// `budget.threshold` or `anomaly`.
    pub kind: &'static str,
    /// Nanoseconds since the epoch.
    pub at: i64,
    pub microdao_id: Option<String>,
    pub customer_id: Option<String>,
    pub metric: String,
    /// The whole message: the webhook body and the stream message.
    pub body: Value,
    pub budget: Option<BudgetFields>,
    /// `None`: the default webhook (`--alert-webhook`), if any.
    pub target: Option<Target>,
}

/// An alert fired, and its delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fired {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: i64,
    pub microdao_id: Option<String>,
    pub customer_id: Option<String>,
    /// The exact bytes sent (and signed).
    pub body: String,
    pub target: Option<Target>,
    pub delivered_at: Option<i64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Given up on (a 4xx other than 429, or 24 h of failures).
    pub failed: bool,
}

impl Fired {
    /// `none` (no webhook), `delivered`, `failed` or `pending`.
    pub fn delivery(&self) -> &'static str {
        match (&self.target, self.delivered_at, self.failed) {
            (None, _, _) => "none",
            (_, Some(_), _) => "delivered",
            (_, None, true) => "failed",
            _ => "pending",
        }
    }

    fn tenant(&self) -> Option<&str> {
        self.microdao_id.as_deref().or(self.customer_id.as_deref())
    }

    /// Whether a token may see it: a tenant's alerts for tokens covering
    /// it, alerts about no tenant for tokens covering every tenant.
    pub fn visible_to(&self, access: &tally_pipeline::access::Access) -> bool {
        match self.tenant() {
            Some(t) => access.covers(Some(t)),
            None => access.tenants.is_none(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("storing the alert row: {0}")]
    Store(String),
    #[error("writing the alert state {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The alerts of this node.
#[derive(Clone)]
pub struct Alerts(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    pipeline: Pipeline,
    fired: Mutex<BTreeMap<String, Fired>>,
    /// One firing at a time: the check for a known id and the write of its
    /// state are one step.
    firing: tokio::sync::Mutex<()>,
    stream: broadcast::Sender<Arc<Fired>>,
    wake: Notify,
    default_target: Option<Target>,
    client: reqwest::Client,
}

impl Alerts {
    /// Loads the delivery states under `dir`; a file that cannot be read
    /// goes to the quarantine, reported.
    pub fn open(
        dir: PathBuf,
        pipeline: Pipeline,
        default_target: Option<Target>,
        quarantine: &Quarantine,
    ) -> std::io::Result<Alerts> {
        let mut fired = BTreeMap::new();
        let now = tally_pipeline::now_ns();
        for (path, read) in tally_pipeline::state_file::load_all::<Fired>(&dir)? {
            match read {
                Ok(f) if now - f.at > KEEP_NS && f.delivery() != "pending" => {
                    tally_pipeline::state_file::remove(&path)?;
                }
                Ok(f) => {
                    fired.insert(f.id.clone(), f);
                }
                Err(e) => quarantine.set_aside(
                    &path,
                    &format!("state/alerts/{}", tally_pipeline::rollup::file_name(&path)),
                    format!("an alert's delivery state cannot be read ({e}); if it was not delivered yet, it will not be"),
                ),
            }
        }
        let (stream, _) = broadcast::channel(1024);
        Ok(Alerts(Arc::new(Inner {
            dir,
            pipeline,
            fired: Mutex::new(fired),
            firing: tokio::sync::Mutex::new(()),
            stream,
            wake: Notify::new(),
            default_target,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
        })))
    }

    /// Whether an alert of this id was fired already.
    pub fn known(&self, id: &str) -> bool {
        self.0.fired.lock().contains_key(id)
    }

    /// Fires `alert` unless its id was fired before: `Ok(true)` when it was
    /// fired now. On an error nothing is known of it, and the next
    /// evaluation fires it again.
    pub async fn fire(&self, alert: Alert) -> Result<bool, AlertError> {
        let _one = self.0.firing.lock().await;
        if self.known(&alert.id) {
            return Ok(false);
        }
        let body = alert.body.to_string();
        let target = alert
            .target
            .clone()
            .or_else(|| self.0.default_target.clone());
        let record = row(&alert, &body, target.as_ref())?;
        self.0
            .pipeline
            .ingest(SOURCE, vec![record], Vec::new())
            .await
            .map_err(|e| AlertError::Store(e.to_string()))?;
        let fired = Fired {
            id: alert.id.clone(),
            kind: alert.kind.to_string(),
            at: alert.at,
            microdao_id: alert.microdao_id,
            customer_id: alert.customer_id,
            body,
            target,
            delivered_at: None,
            attempts: 0,
            last_error: None,
            failed: false,
        };
        self.persist(&fired).await?;
        tracing::info!(id = %fired.id, kind = %fired.kind, webhook = fired.target.is_some(), "alert fired");
        self.0.fired.lock().insert(fired.id.clone(), fired.clone());
        let _ = self.0.stream.send(Arc::new(fired));
        self.0.wake.notify_one();
        Ok(true)
    }

    /// The alerts fired at or after `since` (nanoseconds), oldest first.
    pub fn since(&self, since: i64) -> Vec<Fired> {
        let mut out: Vec<Fired> = self
            .0
            .fired
            .lock()
            .values()
            .filter(|f| f.at >= since)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        out
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Fired>> {
        self.0.stream.subscribe()
    }

    fn path_of(&self, id: &str) -> PathBuf {
        state_path(&self.0.dir, id)
    }

    async fn persist(&self, fired: &Fired) -> Result<(), AlertError> {
        let path = self.path_of(&fired.id);
        let bytes = serde_json::to_vec_pretty(fired).expect("an alert serialises");
        let p = path.clone();
        tokio::task::spawn_blocking(move || tally_pipeline::state_file::replace(&p, &bytes))
            .await
            .map_err(|e| AlertError::State {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| AlertError::State { path, source })
    }
}

/// The file of an alert's delivery state: named by a digest of its id (ids
/// hold characters file names should not).
fn state_path(dir: &Path, id: &str) -> PathBuf {
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.json"))
}

/// The `alerts` row of an alert.
fn row(
    alert: &Alert,
    body: &str,
    target: Option<&Target>,
) -> Result<tally_pipeline::Record, AlertError> {
    use tally_pipeline::Value as V;
    let mut b = RecordBuilder::new(Dataset::Alerts);
    let budget = alert.budget.clone();
    b.set("id", alert.id.as_str())
        .set("timestamp", V::Ts(alert.at))
        .set("type", alert.kind)
        .set("microdao_id", alert.microdao_id.clone())
        .set("customer_id", alert.customer_id.clone())
        .set("budget_id", budget.as_ref().map(|b| b.budget_id.clone()))
        .set(
            "budget_name",
            budget.as_ref().map(|b| b.budget_name.clone()),
        )
        .set("metric", alert.metric.as_str())
        .set("threshold", budget.as_ref().map(|b| b.threshold))
        .set("used", budget.as_ref().map(|b| b.used))
        .set("limit", budget.as_ref().map(|b| b.limit))
        .set(
            "period_start",
            budget.as_ref().map_or(V::Null, |b| V::Ts(b.period_start)),
        )
        .set(
            "period_end",
            budget.as_ref().map_or(V::Null, |b| V::Ts(b.period_end)),
        )
        .set("webhook_url", target.map(|t| t.url.clone()))
        .set("payload", body);
    b.build().map_err(|e| AlertError::Store(e.to_string()))
}
