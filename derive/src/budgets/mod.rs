//! Budgets kept and watched: their files, their evaluation every
//! `--budget-interval`, and their threshold alerts. The routes
//! (`tally_queries::budgets`) reach them through `BudgetBook`.
//!
//! Each budget is one file, `_tally/budgets/<id>.json`, written durably
//! before the POST answers. Every `--budget-interval` (and at once after a
//! change, and before a GET) the budgets are evaluated; crossing a
//! threshold fires one alert per budget, threshold and period (its id names
//! all three, so it is never fired twice, across restarts too).
//! `GET /v1/budgets/check` answers from the last evaluation, in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::quarantine::Quarantine;
use tokio::sync::{watch, Notify};

use async_trait::async_trait;
use tally_queries::alerts::{Alert, BudgetFields, Target};
use tally_queries::budgets::evaluate::{self, BudgetState};
use tally_queries::budgets::model::{rfc3339, Budget};
use tally_queries::budgets::{BudgetBook, BudgetError, Evaluated};
use tally_queries::history::History;
use tally_queries::prices::PriceCatalogue;

use crate::alerts::Alerts;

/// How often budgets are evaluated when nothing asks.
pub const BUDGET_INTERVAL: Duration = Duration::from_secs(5);

/// `[budgets]` in `tally.toml`.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Budgets")]
pub struct BudgetArgs {
    #[arg(help = tally_pipeline::config::help("Evaluate every budget this often (GET /v1/budgets evaluates first too; /v1/budgets/check answers from the last evaluation).", tally_pipeline::config::show_duration(BUDGET_INTERVAL)),
        value_name = "DURATION", long, env = "TALLY_BUDGET_INTERVAL", value_parser = tally_pipeline::duration::parse_duration)]
    #[serde(default, with = "tally_pipeline::duration::opt")]
    pub budget_interval: Option<Duration>,
}

impl BudgetArgs {
    pub fn interval(&self) -> Duration {
        self.budget_interval
            .unwrap_or(BUDGET_INTERVAL)
            .max(Duration::from_millis(100))
    }
}

#[derive(Clone)]
pub struct Budgets(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    history: History,
    prices: Arc<PriceCatalogue>,
    alerts: Alerts,
    defs: Mutex<BTreeMap<String, Arc<Budget>>>,
    last: RwLock<Arc<Evaluated>>,
    /// Held while evaluating; holds when the last evaluation started.
    evaluating: tokio::sync::Mutex<i64>,
    changed: Notify,
    interval: Duration,
}

impl Budgets {
    /// Loads the budgets under `dir`; a file that cannot be read goes to
    /// the quarantine, reported.
    pub fn open(
        dir: PathBuf,
        history: History,
        prices: Arc<PriceCatalogue>,
        alerts: Alerts,
        args: &BudgetArgs,
        quarantine: &Quarantine,
    ) -> std::io::Result<Budgets> {
        let mut defs = BTreeMap::new();
        for (path, read) in tally_pipeline::state_file::load_all::<Budget>(&dir)? {
            match read {
                Ok(b) => {
                    defs.insert(b.id.clone(), Arc::new(b));
                }
                Err(e) => quarantine.set_aside(
                    &path,
                    &format!("state/budgets/{}", tally_pipeline::rollup::file_name(&path)),
                    format!(
                        "a budget cannot be read ({e}); it is not evaluated until posted again"
                    ),
                ),
            }
        }
        tracing::info!(budgets = defs.len(), "budgets loaded");
        Ok(Budgets(Arc::new(Inner {
            dir,
            history,
            prices,
            alerts,
            defs: Mutex::new(defs),
            last: RwLock::new(Arc::new(Evaluated::default())),
            evaluating: tokio::sync::Mutex::new(i64::MIN),
            changed: Notify::new(),
            interval: args.interval(),
        })))
    }

    /// Fires the alert of every threshold crossed and not yet alerted.
    async fn alert(&self, evaluated: &Evaluated) {
        for s in &evaluated.states {
            let b = &s.budget;
            for &t in &b.thresholds {
                if s.used < t * b.limit {
                    break;
                }
                let id = format!(
                    "budget:{}:{}:{}",
                    b.id,
                    rfc3339(s.period_start),
                    threshold_text(t)
                );
                if self.0.alerts.feed().known(&id) {
                    continue;
                }
                if let Err(e) = self.0.alerts.fire(threshold_alert(id, s, t)).await {
                    tracing::error!(budget = %b.id, threshold = t, error = %e, "budget alert not fired; tried again at the next evaluation");
                }
            }
        }
    }

    /// Evaluates every `--budget-interval`, and soon after a change.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.fresh().await {
                tracing::warn!(error = %e, "budget evaluation failed; trying again");
            }
            let changed = tokio::select! {
                _ = tokio::time::sleep(self.0.interval) => false,
                _ = self.0.changed.notified() => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            if changed {
                // Let a burst of changes settle into one evaluation.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The budget job: the budgets' files and their evaluation every interval.
pub struct BudgetJob {
    /// Where the budgets' files are kept.
    pub dir: PathBuf,
    pub history: History,
    pub prices: Arc<PriceCatalogue>,
    pub alerts: Alerts,
    pub args: BudgetArgs,
    pub quarantine: Arc<Quarantine>,
}

#[async_trait]
impl Component for BudgetJob {
    const NAME: &'static str = "budgets";
    type Running = Budgets;
    type Error = std::io::Error;

    async fn start(self, ctx: &Context) -> Result<(Handle, Budgets), std::io::Error> {
        let budgets = Budgets::open(
            self.dir,
            self.history,
            self.prices,
            self.alerts,
            &self.args,
            &self.quarantine,
        )?;
        let task = tokio::spawn(budgets.clone().run(ctx.stop.clone()));
        Ok((Handle::Background(task), budgets))
    }
}

/// `0.8`, `1`: a threshold as ids and messages show it.
fn threshold_text(t: f64) -> String {
    format!("{t}")
}

fn threshold_alert(id: String, s: &BudgetState, threshold: f64) -> Alert {
    let b = &s.budget;
    let at = tally_pipeline::now_ns();
    let body = json!({
        "id": id,
        "type": "budget.threshold",
        "budget_id": b.id,
        "budget_name": b.name,
        "scope": b.scope,
        "threshold": threshold,
        "used": s.used,
        "limit": b.limit,
        "metric": b.metric.name(),
        "period": b.period.name(),
        "period_start": rfc3339(s.period_start),
        "period_end": rfc3339(s.period_end),
        "at": rfc3339(at),
    });
    Alert {
        id,
        kind: "budget.threshold",
        at,
        microdao_id: b.scope.get("microdao_id").cloned(),
        customer_id: b.scope.get("customer_id").cloned(),
        metric: b.metric.name().to_string(),
        body,
        budget: Some(BudgetFields {
            budget_id: b.id.clone(),
            budget_name: b.name.clone(),
            threshold,
            used: s.used,
            limit: b.limit,
            period_start: s.period_start,
            period_end: s.period_end,
        }),
        target: b.webhook_url.clone().map(|url| Target {
            url,
            secret: b.webhook_secret.clone(),
        }),
    }
}

#[async_trait]
impl BudgetBook for Budgets {
    /// The last evaluation.
    fn last(&self) -> Arc<Evaluated> {
        self.0.last.read().clone()
    }

    fn get(&self, id: &str) -> Option<Arc<Budget>> {
        self.0.defs.lock().get(id).cloned()
    }

    /// Stores a new budget (durably) and evaluates it from the rows of the
    /// last evaluation (read anew when it had no budget of this source and
    /// period); returns its state and when its rows were read.
    async fn create(&self, budget: Budget) -> Result<(BudgetState, i64), BudgetError> {
        let path = self.0.dir.join(format!("{}.json", budget.id));
        let bytes = serde_json::to_vec_pretty(&budget).expect("a budget serialises");
        let p = path.clone();
        tokio::task::spawn_blocking(move || tally_pipeline::state_file::replace(&p, &bytes))
            .await
            .map_err(|e| BudgetError::State(path.clone(), std::io::Error::other(e)))?
            .map_err(|e| BudgetError::State(path, e))?;
        let budget = Arc::new(budget);
        self.0.defs.lock().insert(budget.id.clone(), budget.clone());
        self.0.changed.notify_one();
        let last = self.last();
        let now = tally_pipeline::now_ns();
        let (mut states, rows) = evaluate::evaluate(
            &self.0.history,
            &self.0.prices,
            std::slice::from_ref(&budget),
            now,
            Some(&last.rows),
        )
        .await?;
        let cached = rows.keys().all(|k| last.rows.contains_key(k));
        Ok((states.remove(0), if cached { last.at } else { now }))
    }

    /// Deletes a budget; `false` when there is none of that id.
    async fn delete(&self, id: &str) -> Result<bool, BudgetError> {
        let path = self.0.dir.join(format!("{id}.json"));
        if self.0.defs.lock().remove(id).is_none() {
            return Ok(false);
        }
        let p = path.clone();
        tokio::task::spawn_blocking(move || tally_pipeline::state_file::remove(&p))
            .await
            .map_err(|e| BudgetError::State(path.clone(), std::io::Error::other(e)))?
            .map_err(|e| BudgetError::State(path, e))?;
        let last = self.last();
        let kept: Vec<BudgetState> = last
            .states
            .iter()
            .filter(|s| s.budget.id != id)
            .cloned()
            .collect();
        *self.0.last.write() = Arc::new(Evaluated::new(kept, last.rows.clone(), last.at));
        Ok(true)
    }

    /// An evaluation that holds every record acknowledged before this call:
    /// one already made since, or a new one.
    async fn fresh(&self) -> Result<Arc<Evaluated>, BudgetError> {
        let asked = tally_pipeline::now_ns();
        let mut started = self.0.evaluating.lock().await;
        if *started >= asked {
            return Ok(self.last());
        }
        let at = tally_pipeline::now_ns();
        let budgets: Vec<Arc<Budget>> = self.0.defs.lock().values().cloned().collect();
        let (states, rows) =
            evaluate::evaluate(&self.0.history, &self.0.prices, &budgets, at, None).await?;
        let evaluated = Arc::new(Evaluated::new(states, rows, at));
        *self.0.last.write() = evaluated.clone();
        *started = at;
        drop(started);
        self.alert(&evaluated).await;
        Ok(evaluated)
    }
}
