//! What the meter routes share: a meter as kept, the [`MeterBook`] the
//! derive side implements, and the answers every route gives alike.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tally_pipeline::clock::rfc3339;
use tally_pipeline::rules::meter::Meter;

use crate::history::History;
use crate::sql::SqlEngine;

/// A meter as kept: its definition, id and times.
#[derive(Debug, Clone)]
pub struct StoredMeter {
    /// A ULID, as OpenMeter's ids.
    pub id: String,
    pub meter: Meter,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// Defined in the config file (`[[meters]]`): in every tenant, and not
    /// changed through the API.
    pub from_config: bool,
}

impl StoredMeter {
    /// OpenMeter's `Meter` object.
    pub fn json(&self) -> Value {
        let d = &self.meter.def;
        let mut v = json!({
            "id": self.id,
            "slug": d.slug,
            "name": d.name.clone().unwrap_or_else(|| d.slug.clone()),
            "aggregation": d.aggregation,
            "eventType": d.event_type,
            "groupBy": d.group_by,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
        });
        for (k, val) in [
            ("description", &d.description),
            ("valueProperty", &d.value_property),
            ("eventFrom", &d.event_from),
        ] {
            if let Some(val) = val {
                v[k] = json!(val);
            }
        }
        v
    }
}

/// What `PUT` may change.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeterUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub group_by: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("a meter with slug {0:?} exists")]
    Exists(String),
    #[error("{0} is defined in the config file and cannot be changed through the API")]
    FromConfig(String),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("storing the meter: {0}")]
    State(#[from] std::io::Error),
}

/// The meters as the routes see them. A meter is defined for every tenant
/// (by the config file, or by an admin token through the API); each
/// tenant's queries read its own events.
#[async_trait]
pub trait MeterBook: Send + Sync {
    /// Every meter, by slug.
    fn list(&self) -> Vec<Arc<StoredMeter>>;

    fn get(&self, id_or_slug: &str) -> Option<Arc<StoredMeter>>;

    /// Stores a new meter durably.
    async fn create(&self, meter: Meter) -> Result<Arc<StoredMeter>, MeterError>;

    async fn update(
        &self,
        id_or_slug: &str,
        update: MeterUpdate,
    ) -> Result<Option<Arc<StoredMeter>>, MeterError>;

    /// `false` when there is none.
    async fn delete(&self, id_or_slug: &str) -> Result<bool, MeterError>;
}

/// The state of the meter routes.
#[derive(Clone)]
pub struct Meters {
    pub book: Arc<dyn MeterBook>,
    pub engine: SqlEngine,
    /// The stored hourly rollups (`meter_hourly`) and raw events.
    pub history: History,
    pub metrics: Arc<tally_pipeline::metrics::Metrics>,
    /// Days merged from stored hours.
    pub days: Arc<super::days::DayCache>,
}

impl Meters {
    pub fn new(
        book: Arc<dyn MeterBook>,
        engine: SqlEngine,
        history: History,
        metrics: Arc<tally_pipeline::metrics::Metrics>,
    ) -> Self {
        Self {
            book,
            engine,
            history,
            metrics,
            days: Arc::default(),
        }
    }
}
