//! Firing alerts: a budget threshold crossed, an anomaly found. Each alert has an
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

pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::{Dataset, Pipeline, RecordBuilder};
use tally_queries::alerts::{check_url, Alert, AlertFeed, Fired, Target};
use tokio::sync::Notify;

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
    pub fn target(&self) -> Result<Option<Target>, AlertSettingsError> {
        match &self.alert_webhook {
            None if self.alert_webhook_secret.is_some() => Err(AlertSettingsError::SecretAlone),
            None => Ok(None),
            Some(url) => {
                check_url(url)?;
                Ok(Some(Target {
                    url: url.clone(),
                    secret: self.alert_webhook_secret.clone(),
                }))
            }
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
    feed: AlertFeed,
    /// One firing at a time: the check for a known id and the write of its
    /// state are one step.
    firing: tokio::sync::Mutex<()>,
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
        Ok(Alerts(Arc::new(Inner {
            dir,
            pipeline,
            feed: AlertFeed::new(fired),
            firing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            default_target,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
        })))
    }

    /// What readers see: the alerts fired and their delivery.
    pub fn feed(&self) -> AlertFeed {
        self.0.feed.clone()
    }

    /// Fires `alert` unless its id was fired before: `Ok(true)` when it was
    /// fired now. On an error nothing is known of it, and the next
    /// evaluation fires it again.
    pub async fn fire(&self, alert: Alert) -> Result<bool, AlertError> {
        let _one = self.0.firing.lock().await;
        if self.0.feed.known(&alert.id) {
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
        self.0.feed.publish(fired);
        self.0.wake.notify_one();
        Ok(true)
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

/// `[alerts]` settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AlertSettingsError {
    #[error("alert_webhook_secret is set without alert_webhook")]
    SecretAlone,
    #[error("alert_webhook: {0}")]
    Url(#[from] tally_queries::alerts::BadUrl),
}

/// The alert job: fires alerts once and delivers them to their webhooks.
pub struct AlertJob {
    /// Where the delivery states are kept.
    pub dir: PathBuf,
    /// Where alerts without a webhook of their own go.
    pub target: Option<Target>,
    pub quarantine: Arc<Quarantine>,
}

#[async_trait::async_trait]
impl Component for AlertJob {
    const NAME: &'static str = "alerts";
    type Running = Alerts;
    type Error = std::io::Error;

    async fn start(self, ctx: &Context) -> Result<(Handle, Alerts), std::io::Error> {
        let alerts = Alerts::open(
            self.dir,
            ctx.pipeline.clone(),
            self.target,
            &self.quarantine,
        )?;
        let task = tokio::spawn(alerts.clone().deliver(ctx.stop.clone()));
        Ok((Handle::Background(task), alerts))
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
