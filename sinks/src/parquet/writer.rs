//! Writes one partition's records to one Parquet file: sorted by key, ZSTD,
//! dictionary for strings, delta encoding for integers and times, written to
//! a hidden temporary name and fsync'd.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::compute::{concat_batches, interleave_record_batch};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tally_pipeline::batch::keys::KeyColumn;
use tally_pipeline::batch::schema;
use tally_pipeline::checksum::{sealed_name, Crc32Writer};
use tally_pipeline::{ColumnType, Dataset};

use super::layout::{file_name, partition_dir, tmp_name};
use super::{io_err, SinkError};

/// A file written under its temporary name, waiting for its rename.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub dataset: Dataset,
    /// Both relative to the data directory.
    pub tmp: PathBuf,
    pub final_path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

/// The sort order files of `d` are written in (key columns, then time).
pub fn sorting_columns(d: Dataset) -> Vec<parquet::file::metadata::SortingColumn> {
    d.key_columns()
        .iter()
        .chain(std::iter::once(&d.time_column()))
        .map(|&c| parquet::file::metadata::SortingColumn {
            column_idx: c as i32,
            descending: false,
            nulls_first: false,
        })
        .collect()
}

pub fn writer_properties(dataset: Dataset, first_seq: u64, last_seq: u64) -> WriterProperties {
    writer_properties_with(dataset, first_seq, last_seq, Vec::new())
}

/// [`writer_properties`] with more key-value metadata.
pub fn writer_properties_with(
    dataset: Dataset,
    first_seq: u64,
    last_seq: u64,
    extra: Vec<KeyValue>,
) -> WriterProperties {
    let sorting = sorting_columns(dataset);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(
            [
                KeyValue::new("tally.dataset".into(), dataset.name().to_string()),
                KeyValue::new("tally.first_wal_seq".into(), first_seq.to_string()),
                KeyValue::new("tally.last_wal_seq".into(), last_seq.to_string()),
            ]
            .into_iter()
            .chain(extra)
            .collect(),
        ));
    for c in dataset.columns() {
        if matches!(
            c.ty,
            ColumnType::Int32 | ColumnType::Int64 | ColumnType::TimestampNs
        ) {
            // Counters and times grow slowly along the sort order: deltas
            // shrink them to a few bits a row.
            let path = ColumnPath::from(c.name);
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    builder.build()
}

/// A sorted run of a merge in rounds (a temporary file read once more):
/// the encodings of a data file, and the cheapest ZSTD level, since it is
/// written and read on the compactor's one core.
pub fn run_properties(dataset: Dataset) -> WriterProperties {
    writer_properties(dataset, 0, 0)
        .into_builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .build()
}

/// Batches of `dataset` as one batch in the order of the file (key
/// columns, then time; the order of
/// [`tally_pipeline::Record::sort_key_into`]). A flush round's rows come
/// as runs of one series in time order (a request of one VM's samples is
/// one): the runs are found by comparing neighbouring rows' columns, and
/// put in order by the keys of their first rows, which is enough when the
/// runs of a series do not overlap in time; the runs are then copied out
/// slice by slice. Otherwise every row's key is encoded into one buffer,
/// the rows are sorted by key and gathered from the batches in one pass.
/// One batch already in order is returned as it is.
pub fn in_file_order(dataset: Dataset, batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema(dataset)));
    }
    if let Some(runs) = ordered_runs(dataset, batches)? {
        if let ([batch], [run]) = (batches, &runs[..]) {
            if run.1 == 0 && run.2 == batch.num_rows() {
                return Ok(batch.clone());
            }
        }
        let slices: Vec<RecordBatch> = runs
            .iter()
            .map(|&(b, start, end)| batches[b].slice(start, end - start))
            .collect();
        return concat_batches(&schema(dataset), &slices);
    }
    let keys = SortKeys::of(dataset, batches)?;
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_by(|&a, &b| keys.get(a as usize).cmp(keys.get(b as usize)));
    if let [batch] = batches {
        if order.iter().enumerate().all(|(i, &r)| i as u32 == r) {
            return Ok(batch.clone());
        }
    }
    // Row `g` of the whole is row `g - starts[b]` of batch `b`.
    let mut starts = Vec::with_capacity(batches.len());
    let mut n = 0;
    for b in batches {
        starts.push(n);
        n += b.num_rows();
    }
    let indices: Vec<(usize, usize)> = order
        .into_iter()
        .map(|g| {
            let g = g as usize;
            let b = starts.partition_point(|&s| s <= g) - 1;
            (b, g - starts[b])
        })
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    interleave_record_batch(&refs, &indices)
}

/// Rows `start..end` of batch `batch`: `(batch, start, end)`.
type Run = (usize, usize, usize);

/// The rows as runs `(batch, start, end)` in file order, each of one
/// series in time order, when they are few (at most one per 32 rows) and
/// the runs of a series do not overlap; `None` otherwise. Only the first
/// and last row of each run have their keys encoded.
fn ordered_runs(dataset: Dataset, batches: &[RecordBatch]) -> Result<Option<Vec<Run>>, ArrowError> {
    let time = dataset.time_column();
    let keys = dataset.key_columns();
    let series_len = keys.iter().position(|&c| c == time).unwrap_or(keys.len());
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let most = total / 32 + 1;
    let mut runs = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let series = keys[..series_len]
            .iter()
            .map(|&c| KeyColumn::of(batch.column(c)))
            .collect::<Result<Vec<_>, _>>()?;
        // Admitted rows never have a null time (it is required).
        let t = tally_pipeline::batch::times(dataset, batch).values();
        let mut start = 0;
        for i in 1..=batch.num_rows() {
            let same_run =
                i < batch.num_rows() && t[i] >= t[i - 1] && series.iter().all(|c| c.same(i, i - 1));
            if !same_run {
                if runs.len() == most {
                    return Ok(None);
                }
                runs.push((b, start, i));
                start = i;
            }
        }
    }
    // The sort key of a run's first and last rows, from each batch's key
    // columns read once.
    let readers = batches
        .iter()
        .map(|batch| {
            keys.iter()
                .chain(std::iter::once(&time))
                .map(|&c| KeyColumn::of(batch.column(c)))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let encode = |b: usize, row: usize| {
        let mut out = Vec::new();
        for c in &readers[b] {
            c.encode(row, &mut out);
        }
        out
    };
    let bounds: Vec<(Vec<u8>, Vec<u8>)> = runs
        .iter()
        .map(|&(b, start, end)| (encode(b, start), encode(b, end - 1)))
        .collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&x, &y| bounds[x].0.cmp(&bounds[y].0));
    let overlap = order.windows(2).any(|w| bounds[w[0]].1 > bounds[w[1]].0);
    Ok((!overlap).then(|| order.into_iter().map(|i| runs[i]).collect()))
}

/// Every row's sort key in one buffer.
struct SortKeys {
    bytes: Vec<u8>,
    /// Row `i`'s key is `bytes[ends[i]..ends[i + 1]]`.
    ends: Vec<usize>,
}

impl SortKeys {
    /// The key columns, then the time.
    fn of(dataset: Dataset, batches: &[RecordBatch]) -> Result<Self, ArrowError> {
        let time = dataset.time_column();
        let keys = dataset.key_columns();
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut bytes = Vec::with_capacity(n * 48);
        let mut ends = Vec::with_capacity(n + 1);
        ends.push(0);
        for batch in batches {
            let columns = keys
                .iter()
                .chain(std::iter::once(&time))
                .map(|&c| KeyColumn::of(batch.column(c)))
                .collect::<Result<Vec<_>, _>>()?;
            for i in 0..batch.num_rows() {
                for c in &columns {
                    c.encode(i, &mut bytes);
                }
                ends.push(bytes.len());
            }
        }
        Ok(SortKeys { bytes, ends })
    }

    fn len(&self) -> usize {
        self.ends.len() - 1
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.ends[i]..self.ends[i + 1]]
    }
}

/// Writes `batches` (one dataset, one partition) to a temporary file, in
/// the file's order. `partition` is `(date, hour)`; `seqs` the first and
/// last WAL sequence of the rows.
pub fn write_partition(
    data: &Path,
    node: &str,
    dataset: Dataset,
    (date, hour): (&str, u32),
    (first_seq, last_seq): (u64, u64),
    batches: &[RecordBatch],
) -> Result<WrittenFile, SinkError> {
    let dir = partition_dir(dataset, date, hour);
    let abs_dir = data.join(&dir);
    fs::create_dir_all(&abs_dir).map_err(io_err(&abs_dir))?;
    let name = file_name(node, first_seq, &uuid::Uuid::new_v4());
    let tmp = dir.join(tmp_name(&name));

    let batch = in_file_order(dataset, batches)?;

    let abs_tmp = data.join(&tmp);
    let parquet_err = |source| SinkError::Parquet {
        path: abs_tmp.clone(),
        source,
    };
    let file = File::create(&abs_tmp).map_err(io_err(&abs_tmp))?;
    let props = writer_properties(dataset, first_seq, last_seq);
    let mut writer = ArrowWriter::try_new(
        Crc32Writer::new(std::io::BufWriter::with_capacity(1 << 16, file)),
        batch.schema(),
        Some(props),
    )
    .map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    let (out, crc, bytes) = writer.into_inner().map_err(parquet_err)?.finish();
    let file = out
        .into_inner()
        .map_err(|e| io_err(&abs_tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&abs_tmp))?;
    // The name records the checksum of every byte (see `checksum`).
    let final_path = dir.join(sealed_name(&name, crc));
    Ok(WrittenFile {
        dataset,
        tmp,
        final_path,
        rows: batch.num_rows() as u64,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_pipeline::batch::{batch_to_records, records_to_batch};
    use tally_pipeline::{Record, Value};

    const D: Dataset = Dataset::VmMetrics;

    fn batch(records: &[Record]) -> RecordBatch {
        records_to_batch(D, records.iter()).unwrap()
    }

    /// The records in the file's order, through the columns, given as
    /// batches of 1 to 60 rows (the chunks of a flush round).
    fn in_order(records: &[Record]) -> Vec<Record> {
        let mut batches = Vec::new();
        let mut rest = records;
        let mut size = 1;
        while !rest.is_empty() {
            let (head, tail) = rest.split_at(size.min(rest.len()));
            batches.push(batch(head));
            rest = tail;
            size = size * 7 % 61 + 1;
        }
        batch_to_records(D, &in_file_order(D, &batches).unwrap())
    }

    /// The file order against a sort of the values themselves (customer,
    /// VM, time as a tuple), on runs of one VM's samples in time order
    /// interleaved with other VMs, late samples and negative times.
    fn vm_record(customer: u64, vm: u64, ts: i64, id: usize) -> Record {
        let mut values = vec![Value::I64(0); Dataset::VmMetrics.columns().len()];
        values[0] = Value::Str(format!("c{customer}"));
        values[1] = Value::Str(format!("vm-{vm}"));
        values[2] = Value::Ts(ts);
        values[3] = Value::I64(id as i64);
        Record::from_columns(Dataset::VmMetrics, values)
    }

    fn tuple(r: &Record) -> (String, String, i64) {
        (
            r.values[0].as_str().unwrap().to_string(),
            r.values[1].as_str().unwrap().to_string(),
            r.values[2].as_i64().unwrap(),
        )
    }

    /// Requests of one VM's samples in time order, VMs interleaved, each
    /// VM's requests in turn: the runs are put in order without a sort of
    /// the rows, and the order is the tuples' order.
    #[test]
    fn runs_in_order_are_ordered_by_their_first_keys() {
        let mut records = Vec::new();
        for round in 0..4i64 {
            for vm in [3, 1, 2, 0] {
                for i in 0..50 {
                    let id = records.len();
                    records.push(vm_record(vm % 2, vm, round * 50 + i, id));
                }
            }
        }
        assert_eq!(
            ordered_runs(D, &[batch(&records)])
                .unwrap()
                .map(|r| r.len()),
            Some(16)
        );
        let got: Vec<_> = in_order(&records).iter().map(tuple).collect();
        let mut want: Vec<_> = records.iter().map(tuple).collect();
        want.sort();
        assert_eq!(got, want);
        // One late sample makes two runs overlap: the rows are sorted.
        let late = records.len();
        records.push(vm_record(1, 1, 3, late));
        assert!(ordered_runs(D, &[batch(&records)]).unwrap().is_none());
        let got: Vec<_> = in_order(&records).iter().map(tuple).collect();
        let mut want: Vec<_> = records.iter().map(tuple).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn file_order_is_customer_vm_time() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut records = Vec::new();
        for _batch in 0..40 {
            let (customer, vm) = (rand(3), rand(7));
            let start = rand(1_000) as i64 - 500;
            for i in 0..(1 + rand(30) as i64) {
                let ts = if rand(8) == 0 { start - i } else { start + i };
                let id = records.len();
                records.push(vm_record(customer, vm, ts, id));
            }
        }
        // The keys from the columns are the records' own.
        let keys = SortKeys::of(D, &[batch(&records)]).unwrap();
        for (i, r) in records.iter().enumerate() {
            let mut own = Vec::new();
            r.sort_key_into(&mut own);
            assert_eq!(keys.get(i), own.as_slice());
        }
        let got = in_order(&records);
        let mut want: Vec<&Record> = records.iter().collect();
        want.sort_by_key(|r| tuple(r));
        assert_eq!(got.len(), want.len());
        // Rows with the same customer, VM and time may come in either
        // order; their tuples may not.
        let got_tuples: Vec<_> = got.iter().map(tuple).collect();
        let want_tuples: Vec<_> = want.iter().map(|r| tuple(r)).collect();
        assert_eq!(got_tuples, want_tuples);
        let mut ids: Vec<i64> = got.iter().map(|r| r.values[3].as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..records.len() as i64).collect::<Vec<_>>());
    }

    /// Two rows are the same to `KeyColumn::same` exactly when their
    /// encodings are equal: every column type, nulls, and dictionaries
    /// whose keys differ but whose values are equal.
    #[test]
    fn same_agrees_with_the_encoding() {
        use std::sync::Arc;

        use arrow::array::{
            ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array,
            StringArray,
        };
        use arrow::datatypes::Int32Type;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("a"),
                None,
                None,
                Some(""),
            ])),
            Arc::new(DictionaryArray::<Int32Type>::new(
                Int32Array::from(vec![Some(0), Some(1), Some(2), None, None]),
                Arc::new(StringArray::from(vec!["x", "x", "y"])),
            )),
            Arc::new(Int32Array::from(vec![
                Some(1),
                Some(1),
                None,
                Some(2),
                None,
            ])),
            Arc::new(Int64Array::from(vec![
                Some(-1),
                Some(-1),
                Some(0),
                None,
                None,
            ])),
            Arc::new(Float64Array::from(vec![
                Some(0.0),
                Some(-0.0),
                Some(f64::NAN),
                Some(f64::NAN),
                None,
            ])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(true),
                Some(false),
                None,
                None,
            ])),
        ];
        for array in &columns {
            let c = KeyColumn::of(array).unwrap();
            for i in 0..5 {
                for j in 0..5 {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    c.encode(i, &mut a);
                    c.encode(j, &mut b);
                    assert_eq!(c.same(i, j), a == b, "{:?} rows {i} {j}", array.data_type());
                }
            }
        }
    }
}
