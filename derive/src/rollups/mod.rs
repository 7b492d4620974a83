//! The rollups of a compacted hour: the compactor hands each closed hour's
//! merged file here, and stores what comes back next to it.
//!
//! The rules are `tally_pipeline::rules` (the SQL files and the VM fold),
//! the same the read side applies to hours without a stored rollup. What a
//! VM hour's rollup depends on besides its samples (the reported gaps) is
//! read through `History`, like any other reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tally_pipeline::background;
use tally_pipeline::rollup::{RollupBuilder, RollupError, RollupMemory, RollupOutput};
use tally_pipeline::rules::{self, gap_fingerprint, vm};
use tally_pipeline::Dataset;
use tally_queries::history::History;
use tally_queries::prices::PriceCatalogue;

mod stream;

/// Builds the rollups of closed hours for the compactor.
#[derive(Clone)]
pub struct HourRollups {
    history: History,
    prices: Arc<PriceCatalogue>,
}

impl HourRollups {
    pub fn new(history: History, prices: Arc<PriceCatalogue>) -> Self {
        Self { history, prices }
    }
}

fn query_error(e: impl std::fmt::Display) -> RollupError {
    RollupError::Query(e.to_string())
}

#[async_trait]
impl RollupBuilder for HourRollups {
    fn tables(&self, d: Dataset) -> &'static [&'static str] {
        rules::tables_of(d)
    }

    async fn build(
        &self,
        d: Dataset,
        hour: i64,
        file: &Path,
        memory: RollupMemory,
    ) -> Result<(Vec<RollupOutput>, u64), RollupError> {
        let Some((table, sql)) = rules::rollup_of(d) else {
            return Ok((Vec::new(), 0));
        };
        let path = file.to_path_buf();
        if d == Dataset::VmMetrics {
            let spans = self.history.gap_spans().await.map_err(query_error)?;
            let fingerprint = gap_fingerprint(&spans, hour);
            let limit = self.history.gap_limit_ns;
            let rows = background::run("tally-rollup", move || {
                stream::fold_vm_file(&path, &spans, limit, &memory)
            })
            .await?;
            return Ok((
                vec![RollupOutput {
                    table,
                    batch: vm::to_batch(&rows),
                }],
                fingerprint,
            ));
        }
        let prices = self.prices.clone();
        let batch = background::run("tally-rollup", move || {
            stream::sql_over_file(prices, &path, sql, memory)
        })
        .await?;
        Ok((vec![RollupOutput { table, batch }], 0))
    }

    fn forget(&self, files: &[PathBuf]) {
        self.history.forget(files);
    }

    async fn fingerprints(&self, d: Dataset, hours: &[i64]) -> Result<Vec<u64>, RollupError> {
        if d != Dataset::VmMetrics {
            return Ok(vec![0; hours.len()]);
        }
        let spans = self.history.gap_spans().await.map_err(query_error)?;
        Ok(hours.iter().map(|h| gap_fingerprint(&spans, *h)).collect())
    }
}

#[cfg(test)]
mod sql_tests;
