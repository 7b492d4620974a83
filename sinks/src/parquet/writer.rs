//! Writes one partition's records to one Parquet file: sorted by key, ZSTD,
//! dictionary for strings, delta encoding for integers and times, written to
//! a hidden temporary name and fsync'd.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tally_pipeline::batch::records_to_batch;
use tally_pipeline::{ColumnType, Dataset, Record};

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

/// Writes `records` (one dataset, one partition) to a temporary file.
/// `partition` is `(date, hour)`; `seqs` the first and last WAL sequence of
/// the records.
pub fn write_partition(
    data: &Path,
    node: &str,
    dataset: Dataset,
    (date, hour): (&str, u32),
    (first_seq, last_seq): (u64, u64),
    records: &[&Record],
) -> Result<WrittenFile, SinkError> {
    let dir = partition_dir(dataset, date, hour);
    let abs_dir = data.join(&dir);
    fs::create_dir_all(&abs_dir).map_err(io_err(&abs_dir))?;
    let name = file_name(node, first_seq, &uuid::Uuid::new_v4());
    let tmp = dir.join(tmp_name(&name));
    let final_path = dir.join(&name);

    let mut sorted: Vec<(Vec<u8>, &Record)> = records.iter().map(|r| (r.sort_key(), *r)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let batch = records_to_batch(
        dataset,
        sorted
            .iter()
            .map(|(_, r)| *r)
            .collect::<Vec<_>>()
            .into_iter(),
    )?;

    let abs_tmp = data.join(&tmp);
    let parquet_err = |source| SinkError::Parquet {
        path: abs_tmp.clone(),
        source,
    };
    let mut file = File::create(&abs_tmp).map_err(io_err(&abs_tmp))?;
    let props = writer_properties(dataset, first_seq, last_seq);
    let mut writer =
        ArrowWriter::try_new(&mut file, batch.schema(), Some(props)).map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    writer.close().map_err(parquet_err)?;
    file.sync_all().map_err(io_err(&abs_tmp))?;
    let bytes = file.metadata().map_err(io_err(&abs_tmp))?.len();
    Ok(WrittenFile {
        dataset,
        tmp,
        final_path,
        rows: records.len() as u64,
        bytes,
    })
}
