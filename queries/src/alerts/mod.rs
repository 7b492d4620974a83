//! Alerts as readers see them: `/v1/alerts` and its stream read the
//! [`AlertFeed`], which the derive side's alert job (`tally_derive::alerts`:
//! firing once per id, the `alerts` dataset, webhooks) keeps up to date.

pub mod api;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

/// An http(s) URL with a host.
pub fn check_url(url: &str) -> Result<(), BadUrl> {
    match url::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(BadUrl::NotHttp(url.to_string())),
        Err(e) => Err(BadUrl::Unparsable(url.to_string(), e)),
    }
}

/// A webhook URL tally will not POST to.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    #[error("must be an http or https URL, got {0:?}")]
    NotHttp(String),
    #[error("must be a URL ({1}), got {0:?}")]
    Unparsable(String, url::ParseError),
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

/// The alerts fired and their delivery, in memory, and the stream of new
/// ones. Written by the alert job only; read by the routes.
#[derive(Clone)]
pub struct AlertFeed(Arc<Feed>);

struct Feed {
    fired: Mutex<BTreeMap<String, Fired>>,
    stream: broadcast::Sender<Arc<Fired>>,
}

impl AlertFeed {
    /// A feed that starts with `fired` (the states loaded at start-up).
    pub fn new(fired: BTreeMap<String, Fired>) -> Self {
        let (stream, _) = broadcast::channel(1024);
        AlertFeed(Arc::new(Feed {
            fired: Mutex::new(fired),
            stream,
        }))
    }

    /// Whether an alert of this id was fired already.
    pub fn known(&self, id: &str) -> bool {
        self.0.fired.lock().contains_key(id)
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

    /// The alerts whose delivery is pending and `due` says may be tried.
    pub fn pending(&self, due: impl Fn(&Fired) -> bool) -> Vec<Fired> {
        self.0
            .fired
            .lock()
            .values()
            .filter(|f| f.delivery() == "pending" && due(f))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Fired>> {
        self.0.stream.subscribe()
    }

    /// A new alert, fired and stored: kept and sent to the stream.
    pub fn publish(&self, fired: Fired) {
        self.0.fired.lock().insert(fired.id.clone(), fired.clone());
        let _ = self.0.stream.send(Arc::new(fired));
    }

    /// A known alert's new delivery state.
    pub fn update(&self, fired: Fired) {
        self.0.fired.lock().insert(fired.id.clone(), fired);
    }
}
