//! Writes one partition's records to one Parquet file: sorted by key, ZSTD,
//! dictionary for strings, delta encoding for integers and times, written to
//! a hidden temporary name and fsync'd.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::Array;
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
    let order = file_order(dataset, batches)?;
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
    let readers = sort_key_columns(dataset, batches)?;
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

/// The rows' positions (across `batches`, in turn) in the order of their
/// sort keys, rows of equal keys in arrival order. Rows are sorted by
/// their [`sort_prefixes`], integers, and only the rows of a run of equal
/// prefixes have their whole keys encoded and compared: most rows never
/// have their key built, and no comparison is of two byte strings that
/// share the tenant and often the start of an id.
fn file_order(dataset: Dataset, batches: &[RecordBatch]) -> Result<Vec<u32>, ArrowError> {
    let prefixes = sort_prefixes(dataset, batches)?;
    let mut order: Vec<(u128, u32)> = prefixes.into_iter().zip(0..).collect();
    // (prefix, row) pairs are distinct: equal prefixes stay in row order.
    order.sort_unstable();
    let mut start = 0;
    while start < order.len() {
        let prefix = order[start].0;
        let end = start + order[start..].partition_point(|(p, _)| *p == prefix);
        if end - start > 1 {
            let run = &mut order[start..end];
            let keys = SortKeys::of_rows(dataset, batches, run.iter().map(|(_, r)| *r as usize))?;
            let mut by_key: Vec<usize> = (0..run.len()).collect();
            by_key.sort_by(|&a, &b| keys.get(a).cmp(keys.get(b)));
            let sorted: Vec<(u128, u32)> = by_key.into_iter().map(|i| run[i]).collect();
            run.copy_from_slice(&sorted);
        }
        start = end;
    }
    Ok(order.into_iter().map(|(_, row)| row).collect())
}

/// Each row's sort prefix: up to 128 bits such that, where two rows'
/// prefixes differ, they order the rows as their whole sort keys do
/// ([`SortKeys`]). Parts are taken from the key columns, then the time, in
/// order, each below the last:
/// - a dictionary column: the rank of the row's value among all values of
///   the column in `batches` (32 bits; null last);
/// - a string column: the 8 bytes after the prefix all its values share,
///   zero-padded (null last); it ends the prefix unless every value fits;
///   a column of nulls alone gives no part;
/// - an integer or time column without nulls: the value's 8 key bytes.
///
/// Anything else (a NUL byte in a string, which the key encoding's
/// terminator cannot tell apart; nulls in a number column; other types)
/// ends the prefix before it, as does a part that no longer fits.
fn sort_prefixes(dataset: Dataset, batches: &[RecordBatch]) -> Result<Vec<u128>, ArrowError> {
    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut prefixes = vec![0u128; n];
    let mut used = 0u32;
    let columns = dataset
        .key_columns()
        .iter()
        .copied()
        .chain(std::iter::once(dataset.time_column()));
    for c in columns {
        let readers = batches
            .iter()
            .map(|b| KeyColumn::of(b.column(c)))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(part) = PrefixPart::of(&readers) else {
            break;
        };
        if part.bits == 0 {
            continue;
        }
        if used + part.bits > 128 {
            break;
        }
        used += part.bits;
        let shift = 128 - used;
        for (prefix, value) in prefixes.iter_mut().zip(part.values) {
            *prefix |= u128::from(value) << shift;
        }
        if !part.exact {
            break;
        }
    }
    Ok(prefixes)
}

/// One column's part of [`sort_prefixes`].
struct PrefixPart {
    /// Each row's part, in its low `bits` bits.
    values: Vec<u64>,
    bits: u32,
    /// Equal parts mean equal values (the next column's part may follow).
    exact: bool,
}

impl PrefixPart {
    fn of(readers: &[KeyColumn]) -> Option<PrefixPart> {
        match readers.first()? {
            KeyColumn::Dict(..) => Self::ranks(readers),
            KeyColumn::Str(_) => Self::string_bytes(readers),
            KeyColumn::I32(_) | KeyColumn::I64(_) | KeyColumn::Ts(_) => Self::numbers(readers),
            KeyColumn::F64(_) | KeyColumn::Bool(_) => None,
        }
    }

    fn ranks(readers: &[KeyColumn]) -> Option<PrefixPart> {
        let mut dictionaries = Vec::with_capacity(readers.len());
        for r in readers {
            let KeyColumn::Dict(keys, values) = r else {
                return None;
            };
            if values.value_data().contains(&0) {
                return None;
            }
            dictionaries.push((keys, values));
        }
        let mut all: Vec<&str> = dictionaries
            .iter()
            .flat_map(|(_, values)| values.iter().flatten())
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() >= u32::MAX as usize {
            return None;
        }
        let mut values = Vec::new();
        for (keys, dictionary) in dictionaries {
            let rank: Vec<u64> = dictionary
                .iter()
                .map(|v| {
                    v.map_or(u64::from(u32::MAX), |v| {
                        all.binary_search(&v).expect("every value is ranked") as u64
                    })
                })
                .collect();
            values.extend((0..keys.len()).map(|i| {
                if keys.is_null(i) {
                    u64::from(u32::MAX)
                } else {
                    rank[keys.value(i) as usize]
                }
            }));
        }
        Some(PrefixPart {
            values,
            bits: 32,
            exact: true,
        })
    }

    fn string_bytes(readers: &[KeyColumn]) -> Option<PrefixPart> {
        let mut arrays = Vec::with_capacity(readers.len());
        for r in readers {
            let KeyColumn::Str(a) = r else {
                return None;
            };
            if a.value_data().contains(&0) {
                return None;
            }
            arrays.push(*a);
        }
        let mut strings = arrays.iter().flat_map(|a| a.iter().flatten());
        let Some(first) = strings.next() else {
            // Nulls alone: every row's part would be the same.
            return Some(PrefixPart {
                values: Vec::new(),
                bits: 0,
                exact: true,
            });
        };
        let (mut shared, mut longest) = (first.len(), first.len());
        for s in strings {
            shared = first.as_bytes()[..shared]
                .iter()
                .zip(s.as_bytes())
                .take_while(|(a, b)| a == b)
                .count();
            longest = longest.max(s.len());
        }
        let part = |s: Option<&str>| match s {
            None => u64::MAX,
            Some(s) => {
                let rest = &s.as_bytes()[shared..];
                let mut eight = [0u8; 8];
                let take = rest.len().min(8);
                eight[..take].copy_from_slice(&rest[..take]);
                u64::from_be_bytes(eight)
            }
        };
        Some(PrefixPart {
            values: arrays.iter().flat_map(|a| a.iter().map(part)).collect(),
            bits: 64,
            exact: longest - shared <= 8,
        })
    }

    fn numbers(readers: &[KeyColumn]) -> Option<PrefixPart> {
        let mut values = Vec::new();
        for r in readers {
            let (nulls, ints): (usize, Box<dyn Iterator<Item = i64> + '_>) = match r {
                KeyColumn::I32(a) => (
                    a.null_count(),
                    Box::new(a.values().iter().map(|&v| v as i64)),
                ),
                KeyColumn::I64(a) => (a.null_count(), Box::new(a.values().iter().copied())),
                KeyColumn::Ts(a) => (a.null_count(), Box::new(a.values().iter().copied())),
                _ => return None,
            };
            if nulls > 0 {
                return None;
            }
            values.extend(ints.map(|v| (v as u64) ^ (1 << 63)));
        }
        Some(PrefixPart {
            values,
            bits: 64,
            exact: true,
        })
    }
}

/// Each batch's sort key columns: the key columns, then the time.
fn sort_key_columns<'a>(
    dataset: Dataset,
    batches: &'a [RecordBatch],
) -> Result<Vec<Vec<KeyColumn<'a>>>, ArrowError> {
    let columns = dataset.key_columns().iter().copied();
    let columns: Vec<usize> = columns.chain([dataset.time_column()]).collect();
    batches
        .iter()
        .map(|batch| {
            columns
                .iter()
                .map(|&c| KeyColumn::of(batch.column(c)))
                .collect()
        })
        .collect()
}

/// Every row's sort key in one buffer.
struct SortKeys {
    bytes: Vec<u8>,
    /// Row `i`'s key is `bytes[ends[i]..ends[i + 1]]`.
    ends: Vec<usize>,
}

impl SortKeys {
    /// The key columns, then the time, of every row.
    #[cfg(test)]
    fn of(dataset: Dataset, batches: &[RecordBatch]) -> Result<Self, ArrowError> {
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        Self::of_rows(dataset, batches, 0..n)
    }

    /// The keys of `rows` (positions across `batches`, in turn), in the
    /// order given.
    fn of_rows(
        dataset: Dataset,
        batches: &[RecordBatch],
        rows: impl ExactSizeIterator<Item = usize>,
    ) -> Result<Self, ArrowError> {
        let columns = sort_key_columns(dataset, batches)?;
        let mut starts = Vec::with_capacity(batches.len());
        let mut n = 0;
        for b in batches {
            starts.push(n);
            n += b.num_rows();
        }
        let mut bytes = Vec::with_capacity(rows.len() * 48);
        let mut ends = Vec::with_capacity(rows.len() + 1);
        ends.push(0);
        for row in rows {
            // Row `row` of the whole is row `row - starts[b]` of batch `b`.
            let b = starts.partition_point(|&s| s <= row) - 1;
            for c in &columns[b] {
                c.encode(row - starts[b], &mut bytes);
            }
            ends.push(bytes.len());
        }
        Ok(SortKeys { bytes, ends })
    }

    #[cfg(test)]
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
    use tally_pipeline::{ColumnType, Record, Value};

    const D: Dataset = Dataset::VmMetrics;

    use crate::test_rng::xorshift;

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

    /// Rows ordered by prefix, then whole key, come in the order of a sort
    /// by whole keys alone, for datasets whose prefixes end in a string
    /// (`usage_llm`: tenant, chat, id) or in the time (`vm_metrics`; and
    /// `vm_events`, whose id is followed by the time), with
    /// values that share long heads, fit the eight bytes or not, hold NUL
    /// bytes or non-ASCII text, or are null; across batches whose
    /// dictionaries differ.
    #[test]
    fn prefixes_order_rows_as_whole_keys_do() {
        let mut rand = xorshift(0x2545_f491_4f6c_dd1d);
        let words = [
            "",
            "a",
            "b",
            "ab",
            "a\0",
            "é",
            "ü",
            "tenant-1",
            "tenant-10",
            "tenant-2",
        ];
        for round in 0..300 {
            // vm_events: an id, then the time (after a string that fits).
            let dataset = [Dataset::VmMetrics, Dataset::UsageLlm, Dataset::VmEvents][round % 3];
            // Per round: whether the string keys share a long head, and
            // whether their tails fit in eight bytes.
            let head = ["", "bench-0000000", "x"][rand(3) as usize];
            let tail_len = [3u64, 8, 9, 20][rand(4) as usize];
            let with_nul = rand(10) == 0;
            let string = |rand: &mut dyn FnMut(u64) -> u64, nullable: bool| {
                if nullable && rand(4) == 0 {
                    return Value::Null;
                }
                if rand(3) == 0 {
                    let mut w = words[rand(words.len() as u64) as usize].to_string();
                    if !with_nul {
                        w = w.replace('\0', "");
                    }
                    return Value::Str(w);
                }
                let len = rand(tail_len + 1) as usize;
                let tail: String = (0..len).map(|_| (b'0' + rand(3) as u8) as char).collect();
                Value::Str(format!("{head}{tail}"))
            };
            let mut batches = Vec::new();
            for _ in 0..1 + rand(4) {
                let mut records = Vec::new();
                for _ in 0..rand(40) {
                    let mut values: Vec<Value> = dataset
                        .columns()
                        .iter()
                        .map(|c| match c.ty {
                            ColumnType::Utf8 | ColumnType::Dict => Value::Str("x".into()),
                            ColumnType::Int32 => Value::I32(1),
                            ColumnType::Int64 => Value::I64(1),
                            ColumnType::Float64 => Value::F64(1.0),
                            ColumnType::Bool => Value::Bool(true),
                            ColumnType::TimestampNs => Value::Ts(0),
                        })
                        .collect();
                    for &k in dataset.key_columns() {
                        let nullable = dataset.columns()[k].nullable;
                        values[k] = match dataset.columns()[k].ty {
                            ColumnType::TimestampNs => Value::Ts(rand(5) as i64 - 2),
                            _ => string(&mut rand, nullable),
                        };
                    }
                    values[dataset.time_column()] = Value::Ts(rand(7) as i64 - 3);
                    records.push(Record::from_columns(dataset, values));
                }
                batches.push(records_to_batch(dataset, records.iter()).unwrap());
            }
            let keys = SortKeys::of(dataset, &batches).unwrap();
            let mut want: Vec<u32> = (0..keys.len() as u32).collect();
            want.sort_by(|&a, &b| keys.get(a as usize).cmp(keys.get(b as usize)));
            assert_eq!(
                file_order(dataset, &batches).unwrap(),
                want,
                "round {round}"
            );
        }
    }

    /// The prefix decides alone where it can: a tenant's rank and an id's
    /// bytes after the head all ids share.
    #[test]
    fn prefixes_skip_the_shared_head_of_ids() {
        let d = Dataset::UsageLlm;
        let record = |tenant: &str, id: &str| {
            let mut values: Vec<Value> = d.columns().iter().map(|_| Value::Null).collect();
            for (name, v) in [
                ("microdao_id", Value::Str(tenant.into())),
                ("event_id", Value::Str(id.into())),
                ("timestamp", Value::Ts(0)),
                ("prompt_tokens", Value::I32(0)),
                ("completion_tokens", Value::I32(0)),
                ("total_tokens", Value::I32(0)),
                ("success", Value::Bool(true)),
                ("source", Value::Str("usage.llm".into())),
            ] {
                values[d.column_index(name).unwrap()] = v;
            }
            Record::from_columns(d, values)
        };
        let records = [
            record("t2", "bench-000000000123"),
            record("t1", "bench-000000000124"),
            record("t1", "bench-000000000099"),
        ];
        let batch = records_to_batch(d, records.iter()).unwrap();
        let prefixes = sort_prefixes(d, &[batch]).unwrap();
        let id = |tail: &[u8]| {
            let mut eight = [0u8; 8];
            eight[..tail.len()].copy_from_slice(tail);
            u128::from(u64::from_be_bytes(eight)) << 32
        };
        // Ranks t1 = 0, t2 = 1 in the top 32 bits; chat_id (all null) gives
        // no part; the ids share "bench-000000000".
        assert_eq!(
            prefixes,
            vec![(1u128 << 96) | id(b"123"), id(b"124"), id(b"099")]
        );
    }

    #[test]
    fn file_order_is_customer_vm_time() {
        let mut rand = xorshift(0x9e37_79b9_7f4a_7c15);
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
