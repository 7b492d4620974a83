//! What the Usage API keeps (README "Usage API"): its settings file and
//! the snapshots of active blocks in the `usage_snapshots` dataset. The
//! routes (`tally_queries::api_usage`) reach them through `PlanState`.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use parking_lot::Mutex;
use tally_pipeline::clock::NS_PER_SEC;
use tally_pipeline::{Dataset, Pipeline, RecordBuilder};
use tally_queries::api_usage::config::UsageConfig;
use tally_queries::api_usage::state::{PlanState, Snapshot};

/// The source name snapshots are stored under.
pub const SOURCE: &str = "usage_api";

pub struct PlanUsage {
    file: SettingsFile,
    pipeline: Pipeline,
    /// Last snapshot time (ms) per session and scope.
    last: Mutex<HashMap<String, i64>>,
}

impl PlanUsage {
    /// `path`: the settings file.
    pub fn new(path: PathBuf, pipeline: Pipeline) -> Self {
        Self {
            file: SettingsFile { path },
            pipeline,
            last: Mutex::new(HashMap::new()),
        }
    }
}

/// The settings, one state file.
struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    fn load_or_init(&self, now_secs: i64) -> std::io::Result<UsageConfig> {
        match tally_pipeline::state_file::read(&self.path)? {
            Some((bytes, _)) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            None => {
                let c = UsageConfig::defaults(now_secs);
                self.store(&c)?;
                Ok(c)
            }
        }
    }

    fn store(&self, c: &UsageConfig) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
        tally_pipeline::state_file::replace(&self.path, &bytes)
    }
}

#[async_trait]
impl PlanState for PlanUsage {
    fn load_or_init(&self, now_secs: i64) -> std::io::Result<UsageConfig> {
        self.file.load_or_init(now_secs)
    }

    fn store(&self, c: &UsageConfig) -> std::io::Result<()> {
        self.file.store(c)
    }

    async fn snapshot(&self, s: Snapshot) {
        {
            let mut last = self.last.lock();
            if last
                .get(&s.key)
                .is_some_and(|t| s.now - t < s.refresh_rate_ms)
            {
                return;
            }
            last.insert(s.key.clone(), s.now);
        }
        use tally_pipeline::Value as V;
        let (block, t) = (&s.block, s.block.token_counts);
        let mut b = RecordBuilder::new(Dataset::UsageSnapshots);
        b.set("id", format!("{}|{}", s.key, s.now))
            .set("timestamp", V::Ts(s.now * (NS_PER_SEC / 1000)))
            .set("session_id", block.id.as_str())
            .set("actor_id", s.actor_id.clone())
            .set("microdao_id", s.microdao_id.clone())
            .set("plan", s.plan.as_str())
            .set("input_tokens", t.input_tokens)
            .set("output_tokens", t.output_tokens)
            .set("cache_creation_tokens", t.cache_creation_tokens)
            .set("cache_read_tokens", t.cache_read_tokens)
            .set("total_tokens", t.total_tokens)
            .set("cost_usd", block.cost_usd)
            .set("messages", block.sent_messages_count)
            .set("stats", s.stats.to_string());
        let record = match b.build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "usage snapshot does not fit usage_snapshots; not stored");
                return;
            }
        };
        if let Err(e) = self.pipeline.ingest(SOURCE, vec![record], Vec::new()).await {
            tracing::warn!(error = %e, "usage snapshot not stored");
            self.last.lock().remove(&s.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_survives_and_starts_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = SettingsFile {
            path: dir.path().join("usage_config.json"),
        };
        let mut c = f.load_or_init(7).unwrap();
        assert_eq!(c, UsageConfig::defaults(7));
        c.plan = "pro".into();
        f.store(&c).unwrap();
        assert_eq!(f.load_or_init(9).unwrap().plan, "pro");
    }
}
