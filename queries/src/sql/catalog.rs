//! One table per dataset: committed Parquet files ∪ the live buffer.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use tally_pipeline::batch::schema;
use tally_pipeline::rollup::hour_of_path;
use tally_pipeline::store::{FileEntry, Store};
use tally_pipeline::Dataset;

/// A dataset as a table. Each scan takes one snapshot of the store, so a
/// record is read from its file or from the buffer, never both, never neither.
pub struct DatasetTable {
    dataset: Dataset,
    store: Arc<Store>,
    /// Only the files of these hours (the live buffer is always read).
    hours: Option<BTreeSet<i64>>,
}

impl DatasetTable {
    pub fn new(dataset: Dataset, store: Arc<Store>) -> Self {
        Self {
            dataset,
            store,
            hours: None,
        }
    }

    /// A table over the files of some hours only: what a read API needs of
    /// raw records, without opening the files of every other hour.
    pub fn only_hours(mut self, hours: BTreeSet<i64>) -> Self {
        self.hours = Some(hours);
        self
    }
}

impl fmt::Debug for DatasetTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatasetTable")
            .field("dataset", &self.dataset)
            .finish()
    }
}

#[async_trait]
impl TableProvider for DatasetTable {
    fn schema(&self) -> SchemaRef {
        schema(self.dataset)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Parquet prunes row groups with them; the filter still runs above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut snapshot = self.store.snapshot(self.dataset);
        if let Some(hours) = &self.hours {
            snapshot
                .files
                .retain(|f| hour_of_path(&f.path).is_some_and(|h| hours.contains(&h)));
        }
        // Each file's checksum, the first time it is read since start-up.
        snapshot.files = self
            .store
            .checked_files(self.dataset, std::mem::take(&mut snapshot.files))
            .await;
        let table_schema = schema(self.dataset);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !snapshot.files.is_empty() {
            let paths = snapshot.files.iter().map(|f| f.path.clone()).collect();
            inputs.push(
                scan_files(
                    state,
                    paths,
                    table_schema.clone(),
                    projection,
                    filters,
                    limit,
                )
                .await?,
            );
        }

        // The live buffer's batches, read as they are (two partitions, one
        // for each core).
        let live: Vec<_> = snapshot
            .chunks
            .iter()
            .filter(|c| c.rows() > 0)
            .map(|c| c.batch.clone())
            .collect();
        if !live.is_empty() {
            let half = live.len().div_ceil(2);
            let partitions: Vec<Vec<_>> = live.chunks(half).map(<[_]>::to_vec).collect();
            let live = MemTable::try_new(table_schema.clone(), partitions)?;
            inputs.push(live.scan(state, projection, filters, limit).await?);
        }

        if inputs.is_empty() {
            return empty_scan(&table_schema, projection);
        }
        UnionExec::try_new(inputs)
    }
}

/// A stored rollup table: the files of every rolled-up hour, as the
/// manifest has them now (hours not rolled up yet are not in it).
pub struct RollupTable {
    store: Arc<Store>,
    dataset: Dataset,
    table: &'static str,
    schema: SchemaRef,
    rollups: Arc<tally_pipeline::rollup::Rollups>,
}

impl RollupTable {
    pub fn new(
        store: Arc<Store>,
        dataset: Dataset,
        table: &'static str,
        schema: SchemaRef,
        rollups: Arc<tally_pipeline::rollup::Rollups>,
    ) -> Self {
        Self {
            store,
            dataset,
            table,
            schema,
            rollups,
        }
    }
}

impl fmt::Debug for RollupTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollupTable")
            .field("table", &self.table)
            .finish()
    }
}

#[async_trait]
impl TableProvider for RollupTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files: Vec<(i64, FileEntry)> = self
            .rollups
            .range(self.dataset, i64::MIN, i64::MAX)
            .into_iter()
            .filter_map(|(h, r)| r.tables.get(self.table).map(|f| (h, f.clone())))
            .collect();
        // A damaged rollup file is not read: its hour's rollups are dropped
        // and built again (the table lacks the hour until then).
        let paths: Vec<PathBuf> = match self.store.file_check() {
            Some(check) => {
                let d = self.dataset;
                tokio::task::spawn_blocking(move || {
                    files
                        .into_iter()
                        .filter(|(h, f)| check.ensure_rollup(d, *h, f))
                        .map(|(_, f)| f.path)
                        .collect()
                })
                .await
                .expect("a file check does not panic")
            }
            None => files.into_iter().map(|(_, f)| f.path).collect(),
        };
        if paths.is_empty() {
            return empty_scan(&self.schema, projection);
        }
        scan_files(
            state,
            paths,
            self.schema.clone(),
            projection,
            filters,
            limit,
        )
        .await
    }
}

/// A scan of exact Parquet files (local paths or object URLs).
async fn scan_files(
    state: &dyn Session,
    paths: Vec<PathBuf>,
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let urls = paths
        .iter()
        .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
        .collect::<Result<Vec<_>>>()?;
    // No extension filter: the paths are exact files.
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)?
        .scan(state, projection, filters, limit)
        .await
}

/// No rows, with the projected columns.
fn empty_scan(
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let projected = match projection {
        Some(p) => Arc::new(schema.project(p)?),
        None => schema.clone(),
    };
    Ok(Arc::new(EmptyExec::new(projected)))
}
