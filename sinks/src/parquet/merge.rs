//! The k-way merge of an hour's sorted files, in bounded memory.
//!
//! Each input is read one batch at a time; the merge holds one batch per
//! input it reads at once, the rows picked for the next output batch, and
//! the output file's open row group. What that costs is planned from the
//! inputs' footers before a byte is decoded ([`MergePlan`]): the batch size
//! and how many inputs one merge reads at once (the fan-in) are chosen to
//! fit the compactor's budget. An hour with more files than the fan-in is
//! merged in rounds: groups of inputs into sorted runs (temporary files in
//! the partition), then the runs, until one merge takes what is left.
//! Every round drops rows whose key was seen; ties are broken by input
//! order, so the first stored copy of a key stays, whatever the rounds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::SchemaRef;
use arrow::row::{OwnedRow, RowConverter, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;
use tally_pipeline::batch::schema;
use tally_pipeline::metrics::{Counter, MemoryUse};
use tally_pipeline::Dataset;

use super::{io_err, SinkError};

/// Rows per output batch handed to the writer.
const OUT_ROWS: usize = 8192;
/// Bytes a reader holds per column besides its batch (a page, decoded).
const PAGE_BYTES: usize = 64 << 10;
/// The most inputs one merge reads at once.
const MAX_FAN_IN: usize = 512;

/// The batches of one input, in key order.
pub(super) type Batches =
    Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send>;

/// How a merge spends its budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergePlan {
    /// Rows per batch read from each input.
    pub batch_rows: usize,
    /// Inputs one merge reads at once.
    pub fan_in: usize,
    /// The output's open row group is closed past this many bytes.
    pub row_group_bytes: usize,
}

impl MergePlan {
    /// A plan for rows of about `row_bytes` decoded bytes in `columns`
    /// columns within `budget` bytes: half for the inputs' batches and
    /// pages, a quarter for the output's open row group, a quarter for the
    /// picked rows and what the estimate misses.
    pub fn new(budget: usize, row_bytes: usize, columns: usize) -> MergePlan {
        let inputs = budget / 2;
        let per_input = |rows: usize| rows * row_bytes.max(1) + columns * PAGE_BYTES;
        let mut batch_rows = 8192;
        while batch_rows > 256 && inputs / per_input(batch_rows) < 16 {
            batch_rows /= 2;
        }
        let fan_in = (inputs / per_input(batch_rows)).clamp(2, MAX_FAN_IN);
        MergePlan {
            batch_rows,
            fan_in,
            row_group_bytes: (budget / 4).max(1 << 20),
        }
    }
}

/// Decoded bytes per row of a file, estimated from its footer: each column
/// costs what its pages hold uncompressed, and at least 8 bytes (a fixed
/// width value, an offset and a null bit).
pub fn row_bytes(meta: &ParquetMetaData) -> usize {
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    if rows <= 0 {
        return 0;
    }
    let columns = meta.file_metadata().schema_descr().num_columns();
    let mut per_column = vec![0i64; columns];
    for g in meta.row_groups() {
        for (i, c) in g.columns().iter().enumerate() {
            per_column[i] += c.uncompressed_size();
        }
    }
    per_column
        .iter()
        .map(|b| ((b / rows) as usize).max(8) + 8)
        .sum()
}

/// One sorted input of a merge.
pub(super) struct Input {
    /// The file it reads, for errors.
    pub path: PathBuf,
    pub batches: Batches,
}

impl Input {
    /// A file known to be in the dataset's key order, read `batch_rows` at
    /// a time.
    pub fn sorted_file(path: &Path, batch_rows: usize) -> Result<Input, SinkError> {
        let file = File::open(path).map_err(io_err(path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(batch_rows).build())
            .map_err(|source| SinkError::Parquet {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Input {
            path: path.to_path_buf(),
            batches: Box::new(reader),
        })
    }
}

/// What the merge reports as it goes.
pub(super) struct Progress<'a> {
    pub memory: &'a MemoryUse,
    /// Rows read, counted as they are merged.
    pub rows: &'a Counter,
    /// Called every few thousand rows: waits while ingest needs the core.
    pub pause: &'a (dyn Fn() + Sync),
    /// Bytes held besides the merge (the rollups of the hour so far).
    pub base: u64,
}

/// Reads a batch as the dataset's full schema (columns by name).
pub(super) fn conform(batch: RecordBatch, d: Dataset) -> Result<RecordBatch, SinkError> {
    let full = schema(d);
    if batch.schema() == full {
        return Ok(batch);
    }
    let columns: Vec<ArrayRef> = full
        .fields()
        .iter()
        .map(|f| {
            batch
                .column_by_name(f.name())
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), batch.num_rows()))
        })
        .collect();
    Ok(RecordBatch::try_new(full, columns)?)
}

/// The sort columns (key, then time) and key columns of `d`, with the
/// converters that order them as the writer sorts: nulls last.
pub(super) struct KeyOrder {
    pub sort_cols: Vec<usize>,
    pub key_cols: Vec<usize>,
    pub sort_conv: RowConverter,
    pub key_conv: RowConverter,
}

impl KeyOrder {
    pub fn of(d: Dataset) -> Result<KeyOrder, SinkError> {
        let full = schema(d);
        let sort_cols: Vec<usize> = d
            .key_columns()
            .iter()
            .copied()
            .chain(std::iter::once(d.time_column()))
            .collect();
        let key_cols: Vec<usize> = d.key_columns().to_vec();
        let fields = |cols: &[usize]| -> Vec<SortField> {
            cols.iter()
                .map(|&c| {
                    SortField::new_with_options(
                        full.field(c).data_type().clone(),
                        arrow::compute::SortOptions {
                            descending: false,
                            nulls_first: false,
                        },
                    )
                })
                .collect()
        };
        Ok(KeyOrder {
            sort_conv: RowConverter::new(fields(&sort_cols))?,
            key_conv: RowConverter::new(fields(&key_cols))?,
            sort_cols,
            key_cols,
        })
    }

    /// The rows of `b`'s sort columns, comparable as the files are sorted.
    pub fn sort_rows(&self, b: &RecordBatch) -> Result<arrow::row::Rows, SinkError> {
        let s: Vec<ArrayRef> = self
            .sort_cols
            .iter()
            .map(|&c| b.column(c).clone())
            .collect();
        Ok(self.sort_conv.convert_columns(&s)?)
    }

    fn encode(
        &self,
        b: &RecordBatch,
    ) -> Result<(arrow::row::Rows, Option<arrow::row::Rows>), SinkError> {
        let sort = self.sort_rows(b)?;
        let key = if self.key_cols.is_empty() {
            None
        } else {
            let k: Vec<ArrayRef> = self.key_cols.iter().map(|&c| b.column(c).clone()).collect();
            Some(self.key_conv.convert_columns(&k)?)
        };
        Ok((sort, key))
    }
}

/// One input of the merge: its batches and the current row.
struct Cursor {
    input: Input,
    /// Slot of the current batch in the arena.
    slot: usize,
    row: usize,
    len: usize,
    sort: arrow::row::Rows,
    key: Option<arrow::row::Rows>,
}

fn next_batch(d: Dataset, input: &mut Input) -> Result<Option<RecordBatch>, SinkError> {
    loop {
        match input.batches.next() {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(SinkError::Object(format!(
                    "reading {} for compaction: {e}",
                    input.path.display()
                )))
            }
            Some(Ok(b)) if b.num_rows() == 0 => continue,
            Some(Ok(b)) => return Ok(Some(conform(b, d)?)),
        }
    }
}

/// Merges `inputs` (each sorted by key and time) into `out`, written with
/// `props`: every distinct key once, the first copy in input order.
/// `each` sees every output batch. Returns the rows written and the file's
/// size; the file is fsync'd.
pub(super) fn merge_into(
    d: Dataset,
    inputs: Vec<Input>,
    out: &Path,
    props: WriterProperties,
    plan: &MergePlan,
    progress: &Progress<'_>,
    each: &mut dyn FnMut(&RecordBatch) -> Result<(), SinkError>,
) -> Result<(u64, u64), SinkError> {
    let full: SchemaRef = schema(d);
    let order = KeyOrder::of(d)?;
    let parquet_err = |source| SinkError::Parquet {
        path: out.to_path_buf(),
        source,
    };
    let mut arena: Vec<RecordBatch> = Vec::with_capacity(inputs.len());
    let mut cursors: Vec<Option<Cursor>> = Vec::with_capacity(inputs.len());
    for mut input in inputs {
        match next_batch(d, &mut input)? {
            None => cursors.push(None),
            Some(b) => {
                let (sort, key) = order.encode(&b)?;
                cursors.push(Some(Cursor {
                    len: b.num_rows(),
                    input,
                    slot: arena.len(),
                    row: 0,
                    sort,
                    key,
                }));
                arena.push(b);
            }
        }
    }
    let mut file = File::create(out).map_err(io_err(out))?;
    let mut writer =
        ArrowWriter::try_new(&mut file, full.clone(), Some(props)).map_err(parquet_err)?;
    let mut heap: BinaryHeap<Reverse<(OwnedRow, usize)>> = BinaryHeap::new();
    for (i, c) in cursors.iter().enumerate() {
        if let Some(c) = c {
            heap.push(Reverse((c.sort.row(c.row).owned(), i)));
        }
    }
    let arena_bytes = |arena: &[RecordBatch], cursors: &[Option<Cursor>]| -> u64 {
        let batches: usize = arena.iter().map(|b| b.get_array_memory_size()).sum();
        let rows: usize = cursors
            .iter()
            .flatten()
            .map(|c| c.sort.size() + c.key.as_ref().map_or(0, |k| k.size()))
            .sum();
        (batches + rows) as u64
    };
    let mut held = arena_bytes(&arena, &cursors);
    let mut picked: Vec<(usize, usize)> = Vec::with_capacity(OUT_ROWS);
    let mut last_key: Option<OwnedRow> = None;
    let mut rows_out = 0u64;
    let mut since_pause = 0usize;
    let mut flush = |picked: &mut Vec<(usize, usize)>,
                     arena: &[RecordBatch],
                     writer: &mut ArrowWriter<&mut File>,
                     held: u64|
     -> Result<(), SinkError> {
        if picked.is_empty() {
            return Ok(());
        }
        let mut columns = Vec::with_capacity(full.fields().len());
        for c in 0..full.fields().len() {
            let arrays: Vec<&dyn Array> = arena.iter().map(|b| b.column(c).as_ref()).collect();
            columns.push(interleave(&arrays, picked)?);
        }
        let batch = RecordBatch::try_new(full.clone(), columns)?;
        each(&batch)?;
        writer.write(&batch).map_err(parquet_err)?;
        progress.memory.set(
            progress.base
                + held
                + batch.get_array_memory_size() as u64
                + writer.memory_size() as u64,
        );
        if writer.in_progress_size() > plan.row_group_bytes {
            writer.flush().map_err(parquet_err)?;
        }
        picked.clear();
        Ok(())
    };
    while let Some(Reverse((_, i))) = heap.pop() {
        let c = cursors[i].as_mut().expect("a cursor in the heap is live");
        let duplicate = match (&c.key, &last_key) {
            (Some(keys), Some(last)) => keys.row(c.row) == last.row(),
            _ => false,
        };
        if !duplicate {
            if let Some(keys) = &c.key {
                last_key = Some(keys.row(c.row).owned());
            }
            picked.push((c.slot, c.row));
            rows_out += 1;
        }
        c.row += 1;
        since_pause += 1;
        if c.row == c.len {
            // The batch is done: write what points into the arena first,
            // then keep only the live batches in it.
            flush(&mut picked, &arena, &mut writer, held)?;
            progress.rows.add(since_pause as u64);
            since_pause = 0;
            (progress.pause)();
            let c = cursors[i].as_mut().expect("live");
            match next_batch(d, &mut c.input)? {
                None => cursors[i] = None,
                Some(b) => {
                    let (sort, key) = order.encode(&b)?;
                    c.len = b.num_rows();
                    c.row = 0;
                    c.sort = sort;
                    c.key = key;
                    arena.push(b);
                    c.slot = arena.len() - 1;
                }
            }
            let mut fresh = Vec::with_capacity(arena.len());
            for c in cursors.iter_mut().flatten() {
                fresh.push(arena[c.slot].clone());
                c.slot = fresh.len() - 1;
            }
            arena = fresh;
            held = arena_bytes(&arena, &cursors);
        } else if picked.len() >= OUT_ROWS {
            flush(&mut picked, &arena, &mut writer, held)?;
        }
        if let Some(c) = cursors[i].as_ref() {
            heap.push(Reverse((c.sort.row(c.row).owned(), i)));
        }
    }
    flush(&mut picked, &arena, &mut writer, held)?;
    progress.rows.add(since_pause as u64);
    drop(arena);
    writer.close().map_err(parquet_err)?;
    file.sync_all().map_err(io_err(out))?;
    let bytes = file.metadata().map_err(io_err(out))?.len();
    Ok((rows_out, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_fits_its_budget() {
        for budget in [16usize << 20, 64 << 20, 512 << 20, 4 << 30] {
            for (row, cols) in [(40usize, 9usize), (100, 9), (400, 25), (4000, 25)] {
                let p = MergePlan::new(budget, row, cols);
                let inputs = p.fan_in * (p.batch_rows * row + cols * PAGE_BYTES);
                assert!(
                    inputs <= budget / 2 || p.fan_in == 2,
                    "{budget} {row} {cols}: {p:?} holds {inputs}"
                );
                assert!(p.fan_in >= 2 && p.fan_in <= MAX_FAN_IN, "{p:?}");
                assert!(p.row_group_bytes <= budget / 4 || budget / 4 < 1 << 20);
            }
        }
        // A larger budget never reads fewer inputs at once.
        let small = MergePlan::new(64 << 20, 100, 9);
        let large = MergePlan::new(512 << 20, 100, 9);
        assert!(large.fan_in >= small.fan_in, "{small:?} {large:?}");
    }
}
