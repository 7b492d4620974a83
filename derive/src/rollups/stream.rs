//! The rollups of a compacted hour, read from its merged file as a stream.
//!
//! The merged file of an hour at the design rate holds 180 M rows: nothing
//! here holds more than one batch of them. VM usage is folded in key and
//! time order (the file's order) by [`HourFold`]; the other datasets' SQL
//! files aggregate a stream of the file's batches under a memory pool of the
//! compactor's budget. Both run on a background thread at a lower priority
//! with a runtime of their own, so a large hour takes no worker of the
//! runtime that acknowledges requests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use tally_pipeline::rollup::{RollupError, RollupMemory};

use tally_pipeline::rules::meter::Meter;
use tally_pipeline::rules::meter_hourly::MeterHourFold;
use tally_pipeline::rules::vm::{self as hours, GapSpans, HourFold, VmHour};
use tally_queries::prices::{cost_udfs, PriceCatalogue};

/// Rows per batch read from a merged file.
const BATCH_ROWS: usize = 8192;

fn read_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> RollupError + '_ {
    move |e| RollupError::Read {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn open(path: &Path) -> Result<ParquetRecordBatchReader, RollupError> {
    let err = read_err(path);
    let file = File::open(path).map_err(|e| err(&e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
        .map_err(|e| err(&e))
}

/// Reports what a fold holds; past its limit the fold fails, it does not
/// grow.
pub fn within(
    memory: &RollupMemory,
    held: usize,
    what: &str,
    path: &Path,
) -> Result<(), RollupError> {
    (memory.report)(held as u64);
    if held > memory.limit {
        return Err(RollupError::Query(format!(
            "the {what} of {} needs more than its memory limit of {} bytes ({held} held)",
            path.display(),
            memory.limit
        )));
    }
    Ok(())
}

/// VM usage per VM and hour of a merged `vm_metrics` file (sorted by
/// customer, VM and time), one batch at a time.
pub fn fold_vm_file(
    path: &Path,
    spans: &GapSpans,
    limit_ns: i64,
    memory: &RollupMemory,
) -> Result<Vec<VmHour>, RollupError> {
    let err = read_err(path);
    let mut fold = HourFold::new(spans, limit_ns);
    for batch in open(path)? {
        let batch = batch.map_err(|e| err(&e))?;
        let samples = hours::samples_of(&batch).map_err(|e| err(&e))?;
        fold.push(&samples);
        let held = fold.memory() + batch.get_array_memory_size() + samples.get_array_memory_size();
        within(memory, held, "VM rollup", path)?;
    }
    Ok(fold.finish())
}

/// Every meter's rows of a merged `events` hour, one batch at a time.
pub fn fold_meter_file(
    path: &Path,
    meters: &[Meter],
    hour: i64,
    memory: &RollupMemory,
) -> Result<RecordBatch, RollupError> {
    let err = read_err(path);
    let mut fold = MeterHourFold::new(meters, hour);
    for batch in open(path)? {
        let batch = batch.map_err(|e| err(&e))?;
        fold.push(&batch).map_err(|e| err(&e))?;
        let held = fold.memory() + batch.get_array_memory_size();
        within(memory, held, "meters' rollup", path)?;
    }
    Ok(fold.finish())
}

/// A merged file as one stream of batches for DataFusion.
#[derive(Debug)]
struct FileStream {
    path: PathBuf,
    schema: SchemaRef,
    memory: RollupMemory,
    pool: Arc<GreedyMemoryPool>,
}

impl PartitionStream for FileStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let path = self.path.clone();
        let (report, pool) = (self.memory.report.clone(), self.pool.clone());
        let batches: Box<dyn Iterator<Item = datafusion::error::Result<RecordBatch>> + Send> =
            match open(&path) {
                Ok(reader) => Box::new(reader.map(move |b| {
                    let b = b?;
                    // What the aggregation holds, and the batch read.
                    report((pool.reserved() + b.get_array_memory_size()) as u64);
                    Ok(b)
                })),
                Err(e) => Box::new(std::iter::once(Err(
                    datafusion::error::DataFusionError::External(Box::new(e)),
                ))),
            };
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

/// Runs a rollup SQL file over a merged file as `source`, streamed, with
/// at most `memory.limit` bytes of aggregation state. Blocks: call it on a
/// background thread.
pub fn sql_over_file(
    prices: Arc<PriceCatalogue>,
    path: &Path,
    sql: &str,
    memory: RollupMemory,
) -> Result<RecordBatch, RollupError> {
    let q = |e: &dyn std::fmt::Display| RollupError::Query(e.to_string());
    let schema = {
        let file = File::open(path).map_err(|e| read_err(path)(&e))?;
        ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| read_err(path)(&e))?
            .schema()
            .clone()
    };
    let pool = Arc::new(GreedyMemoryPool::new(memory.limit));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone())
        .build_arc()
        .map_err(|e| q(&e))?;
    let mut config = SessionConfig::new().with_target_partitions(1);
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for udf in cost_udfs(prices) {
        ctx.register_udf(udf);
    }
    let stream = FileStream {
        path: path.to_path_buf(),
        schema: schema.clone(),
        memory,
        pool,
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(stream)]).map_err(|e| q(&e))?;
    ctx.register_table("source", Arc::new(table))
        .map_err(|e| q(&e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| q(&e))?;
    rt.block_on(async {
        let df = ctx.sql(sql).await.map_err(|e| q(&e))?;
        let out_schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| q(&e))?;
        concat_batches(&out_schema, &batches).map_err(|e| q(&e))
    })
}
