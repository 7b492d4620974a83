//! What the Usage API keeps, as it reaches it: [`PlanState`].

use super::config::UsageConfig;
use super::model::Block;
use async_trait::async_trait;

/// A snapshot of the stats of an active block, for one session and scope.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The session and scope: at most one snapshot per `refresh_rate_ms`.
    pub key: String,
    pub actor_id: Option<String>,
    pub microdao_id: Option<String>,
    pub plan: String,
    pub refresh_rate_ms: i64,
    pub block: Block,
    pub stats: serde_json::Value,
    /// Milliseconds since the epoch.
    pub now: i64,
}

/// What the Usage API keeps: its settings file and its snapshots (the
/// derive side's `plan_usage` writes both).
#[async_trait]
pub trait PlanState: Send + Sync {
    /// The stored settings, or the defaults (stored) on first use.
    fn load_or_init(&self, now_secs: i64) -> std::io::Result<UsageConfig>;

    /// Stores the settings durably.
    fn store(&self, config: &UsageConfig) -> std::io::Result<()>;

    /// Stores `snapshot` unless one of its key was stored less than its
    /// refresh rate ago.
    async fn snapshot(&self, snapshot: Snapshot);
}
