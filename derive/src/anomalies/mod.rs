//! Anomaly detection: every `--anomaly-interval`, each tenant's hourly LLM
//! `cost_usd` and `total_tokens` (by `microdao_id`) and each customer's
//! hourly `vm_cpu_seconds` (by `customer_id`), for the current and the last
//! closed hour, against a baseline of the same hour of day over the 7 days
//! before (`score.rs` has the method). An hour above `--anomaly-threshold`
//! is an anomaly: a row of the `anomalies` dataset, an `anomaly` alert (to
//! `--alert-webhook`), and an entry of `GET /v1/anomalies`. Each (scope,
//! metric, hour) is an anomaly once.
//!
//! The hourly values come from history's hourly rows (stored rollups for
//! closed hours), never from a scan of raw history.

mod score;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_pipeline::clock::{DAY_NS, HOUR_NS};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::{Dataset, Pipeline, RecordBuilder};
use tally_queries::alerts::Alert;
use tally_queries::anomalies::{AnomalyBoard, Checked, Report};
use tally_queries::budgets::evaluate::{llm_rows, Priced};
use tally_queries::budgets::model::rfc3339;
use tally_queries::history::History;
use tally_queries::prices::PriceCatalogue;
use tally_queries::sql::QueryError;
use tally_queries::vm_billing::{self, Window};
use tokio::sync::watch;

use crate::alerts::Alerts;
use score::{judge, Judgement, BASELINE_DAYS};

pub const ANOMALY_INTERVAL: Duration = Duration::from_secs(60);
pub const ANOMALY_THRESHOLD: f64 = 5.0;

/// `[anomalies]` in `tally.toml`.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Anomalies")]
pub struct AnomalyArgs {
    #[arg(help = tally_pipeline::config::help("Look for anomalous hours this often.", tally_pipeline::config::show_duration(ANOMALY_INTERVAL)),
        value_name = "DURATION", long, env = "TALLY_ANOMALY_INTERVAL", value_parser = tally_pipeline::duration::parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub anomaly_interval: Option<Duration>,
    #[arg(help = tally_pipeline::config::help("An hour whose robust score (distance above the baseline's median in scaled MADs) exceeds this is an anomaly.", ANOMALY_THRESHOLD),
        value_name = "SCORE", long, env = "TALLY_ANOMALY_THRESHOLD")]
    #[serde(default)]
    pub anomaly_threshold: Option<f64>,
}

impl AnomalyArgs {
    pub fn interval(&self) -> Duration {
        self.anomaly_interval
            .unwrap_or(ANOMALY_INTERVAL)
            .max(Duration::from_millis(100))
    }

    pub fn threshold(&self) -> Result<f64, BadThreshold> {
        match self.anomaly_threshold.unwrap_or(ANOMALY_THRESHOLD) {
            t if t.is_finite() && t > 0.0 => Ok(t),
            t => Err(BadThreshold(t)),
        }
    }
}

/// `anomaly_threshold` out of its range.
#[derive(Debug, thiserror::Error)]
#[error("anomaly_threshold must be a number above 0, got {0}")]
pub struct BadThreshold(pub f64);

/// The anomaly scan, every `--anomaly-interval`.
pub struct AnomalyJob {
    pub history: History,
    pub prices: Arc<PriceCatalogue>,
    pub alerts: Alerts,
    pub args: AnomalyArgs,
}

#[async_trait::async_trait]
impl Component for AnomalyJob {
    const NAME: &'static str = "anomaly scan";
    type Running = Anomalies;
    type Error = BadThreshold;

    async fn start(self, ctx: &Context) -> Result<(Handle, Anomalies), BadThreshold> {
        let anomalies = Anomalies::new(
            self.history,
            self.prices,
            ctx.pipeline.clone(),
            self.alerts,
            &self.args,
        )?;
        let task = tokio::spawn(anomalies.clone().run(ctx.stop.clone()));
        Ok((Handle::Background(task), anomalies))
    }
}

#[derive(Clone)]
pub struct Anomalies(Arc<Inner>);

struct Inner {
    history: History,
    prices: Arc<PriceCatalogue>,
    pipeline: Pipeline,
    alerts: Alerts,
    threshold: f64,
    interval: Duration,
    board: AnomalyBoard,
}

/// Hourly values of one series: hour → value.
type Series = BTreeMap<i64, f64>;

impl Anomalies {
    pub fn new(
        history: History,
        prices: Arc<PriceCatalogue>,
        pipeline: Pipeline,
        alerts: Alerts,
        args: &AnomalyArgs,
    ) -> Result<Anomalies, BadThreshold> {
        let threshold = args.threshold()?;
        Ok(Anomalies(Arc::new(Inner {
            board: AnomalyBoard::new(alerts.feed(), threshold),
            history,
            prices,
            pipeline,
            alerts,
            threshold,
            interval: args.interval(),
        })))
    }

    /// What readers see of the scans.
    pub fn board(&self) -> AnomalyBoard {
        self.0.board.clone()
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.scan(tally_pipeline::now_ns()).await {
                tracing::warn!(error = %e, "anomaly scan failed; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.0.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The hourly series of every watched (scope, metric) over `[from, to)`.
    async fn series(
        &self,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<(&'static str, String, &'static str), Series>, QueryError> {
        let mut out: BTreeMap<(&'static str, String, &'static str), Series> = BTreeMap::new();
        let mut priced = Priced::new();
        for b in self.0.history.hourly(Dataset::UsageLlm, from, to).await? {
            llm_rows(&b, &self.0.prices, &mut priced, |row| {
                let Some(t) = row.microdao_id else { return };
                for (metric, v) in [
                    ("cost_usd", row.cost.unwrap_or(0.0)),
                    ("total_tokens", row.total_tokens as f64),
                ] {
                    *out.entry(("microdao_id", t.to_string(), metric))
                        .or_default()
                        .entry(row.hour)
                        .or_default() += v;
                }
            })?;
        }
        for w in vm_billing::bill(&self.0.history, Window::Hour, from, to, &|_, _| true).await? {
            *out.entry(("customer_id", w.customer_id.clone(), "vm_cpu_seconds"))
                .or_default()
                .entry(w.start)
                .or_default() += w.usage.cpu_seconds();
        }
        Ok(out)
    }

    /// Judges the current and the last closed hour of every series; stores
    /// and alerts each new anomaly.
    pub async fn scan(&self, now: i64) -> Result<(), QueryError> {
        let current = now.div_euclid(HOUR_NS) * HOUR_NS;
        let targets = [current - HOUR_NS, current];
        let from = targets[0] - BASELINE_DAYS * DAY_NS;
        let all = self.series(from, current + HOUR_NS).await?;
        let mut checked = Vec::new();
        for ((scope, scope_id, metric), series) in &all {
            let Some(first) = series.keys().next().copied() else {
                continue;
            };
            for t in targets {
                let value = series.get(&t).copied().unwrap_or(0.0);
                let days: Vec<i64> = (1..=BASELINE_DAYS)
                    .map(|k| t - k * DAY_NS)
                    .filter(|h| *h >= first)
                    .collect();
                let baseline: Vec<f64> = days
                    .iter()
                    .map(|h| series.get(h).copied().unwrap_or(0.0))
                    .collect();
                let since = days.last().map_or(t, |d| (*d).max(first));
                let hours = ((t - since) / HOUR_NS).max(1) as f64;
                let level = series.range(since..t).map(|(_, v)| v).sum::<f64>() / hours;
                let mut c = Checked {
                    scope,
                    scope_id: scope_id.clone(),
                    metric,
                    hour: rfc3339(t),
                    value,
                    status: "ok",
                    baseline_days: days.len(),
                    baseline: None,
                    spread: None,
                    score: None,
                };
                match judge(value, &baseline, level) {
                    Judgement::NotEnoughHistory { .. } => c.status = "not enough history",
                    Judgement::Scored {
                        median,
                        spread,
                        score,
                        ..
                    } => {
                        c.baseline = Some(median);
                        c.spread = Some(spread);
                        c.score = Some(score);
                        if score > self.0.threshold {
                            c.status = "anomaly";
                            self.found(&c, t).await;
                        }
                    }
                }
                checked.push(c);
            }
        }
        self.0.board.report(Report {
            at: Some(now),
            checked,
        });
        Ok(())
    }

    /// Stores and alerts an anomaly, once per (scope, metric, hour).
    async fn found(&self, c: &Checked, hour: i64) {
        let id = format!("anomaly:{}:{}:{}:{}", c.scope, c.scope_id, c.metric, c.hour);
        if self.0.alerts.feed().known(&id) {
            return;
        }
        let at = tally_pipeline::now_ns();
        use tally_pipeline::Value as V;
        let mut b = RecordBuilder::new(Dataset::Anomalies);
        b.set("id", id.as_str())
            .set("timestamp", V::Ts(at))
            .set("scope", c.scope)
            .set("scope_id", c.scope_id.as_str())
            .set("metric", c.metric)
            .set("hour", V::Ts(hour))
            .set("value", c.value)
            .set("baseline", c.baseline.unwrap_or(0.0))
            .set("spread", c.spread.unwrap_or(0.0))
            .set("score", c.score.unwrap_or(0.0))
            .set("baseline_days", c.baseline_days as i32);
        let stored = match b.build() {
            Ok(r) => self
                .0
                .pipeline
                .ingest(crate::alerts::SOURCE, vec![r], Vec::new())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::error!(id = %id, error = %e, "anomaly not stored; tried again at the next scan");
            return;
        }
        let body = json!({
            "id": id,
            "type": "anomaly",
            "scope": {c.scope: c.scope_id},
            "metric": c.metric,
            "hour": c.hour,
            "value": c.value,
            "baseline": c.baseline,
            "spread": c.spread,
            "score": c.score,
            "threshold": self.0.threshold,
            "baseline_days": c.baseline_days,
            "at": rfc3339(at),
        });
        let (microdao_id, customer_id) = match c.scope {
            "customer_id" => (None, Some(c.scope_id.clone())),
            _ => (Some(c.scope_id.clone()), None),
        };
        let alert = Alert {
            id: id.clone(),
            kind: "anomaly",
            at,
            microdao_id,
            customer_id,
            metric: c.metric.to_string(),
            body,
            budget: None,
            target: None,
        };
        if let Err(e) = self.0.alerts.fire(alert).await {
            tracing::error!(id = %id, error = %e, "anomaly alert not fired; tried again at the next scan");
        }
    }
}
