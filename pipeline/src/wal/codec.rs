//! Binary encoding of a WAL entry, and of records on the Kafka topic.
//!
//! The first byte is the format version; its high bit ([`FROM_LOG`]) marks
//! an entry whose records came from a replayable log (a Kafka partition): it
//! is not replayed at start-up, because the log delivers it again from the
//! committed offset.
//!
//! - **Version 2, columns** (what the WAL writes): `u32` part count, then
//!   per part `u8 dataset`, `u32` length and an Arrow IPC stream (schema,
//!   dictionaries, one record batch) of the dataset's columns. Decoding
//!   checks the columns against the dataset's schema by name.
//! - **Version 1, records** (the Kafka topic `tally.records`, and WALs
//!   of earlier releases, which still replay): `u32 count`, then per
//!   record `u8 dataset`, then per column a tag byte and the value
//!   (little-endian). The column count comes from the dataset, so a payload
//!   decodes only against the same column lists.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow::ipc::{Message, MessageHeader};

use crate::batch::Columns;
use crate::dataset::Dataset;
use crate::record::{Record, Value};

/// The version of entries written now: columns.
pub const FORMAT_VERSION: u8 = 2;
/// The version of record payloads: the Kafka topic, earlier WALs.
pub const RECORDS_VERSION: u8 = 1;
/// The Kafka topic of records in this encoding: edge nodes relay to it,
/// writers consume it (unless another is configured).
pub const RECORDS_TOPIC: &str = "tally.records";
/// Flag bit of the version byte: the records came from a replayable log.
pub const FROM_LOG: u8 = 0x80;

const TAG_NULL: u8 = 0;
const TAG_STR: u8 = 1;
const TAG_I32: u8 = 2;
const TAG_I64: u8 = 3;
const TAG_F64: u8 = 4;
const TAG_BOOL: u8 = 5;
const TAG_TS: u8 = 6;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("payload ends early at byte {0}")]
    Truncated(usize),
    #[error("unknown dataset index {0}")]
    UnknownDataset(u8),
    #[error("unknown value tag {0}")]
    UnknownTag(u8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("payload format version {0} is not {RECORDS_VERSION} or {FORMAT_VERSION}")]
    Version(u8),
    #[error("record payloads are version {RECORDS_VERSION}, this one is {0}")]
    NotRecords(u8),
    #[error("part {part} is not an Arrow IPC stream of one batch: {reason}")]
    Ipc { part: usize, reason: String },
    #[error("part {part} does not fit its dataset: {reason}")]
    Schema { part: usize, reason: String },
    #[error("record {index} does not fit its dataset: {reason}")]
    Record { index: usize, reason: String },
}

/// Encodes an entry of columns (version 2); `from_log` sets the
/// [`FROM_LOG`] flag.
pub fn encode_entry(
    parts: &[Columns],
    from_log: bool,
    out: &mut Vec<u8>,
) -> Result<(), arrow::error::ArrowError> {
    out.push(if from_log {
        FORMAT_VERSION | FROM_LOG
    } else {
        FORMAT_VERSION
    });
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        out.push(part.dataset() as u8);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut w = StreamWriter::try_new(&mut *out, part.batch().schema_ref())?;
        w.write(part.batch())?;
        w.finish()?;
        let len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// Decodes an entry of either version: `(from_log, columns)`. Records of a
/// version 1 entry are checked against their schema and split by dataset.
pub fn decode_entry(buf: &[u8]) -> Result<(bool, Vec<Columns>), DecodeError> {
    let version = *buf.first().ok_or(DecodeError::Truncated(0))?;
    let from_log = version & FROM_LOG != 0;
    match version & !FROM_LOG {
        RECORDS_VERSION => {
            let records = decode_records(buf)?;
            if let Some((index, e)) = records
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.check().err().map(|e| (i, e)))
            {
                return Err(DecodeError::Record {
                    index,
                    reason: e.to_string(),
                });
            }
            Ok((from_log, Columns::of_records(records)))
        }
        FORMAT_VERSION => {
            let mut r = Reader { buf, pos: 1 };
            let count = u32::from_le_bytes(r.arr()?) as usize;
            let mut parts = Vec::with_capacity(count.min(Dataset::COUNT));
            for part in 0..count {
                let d = r.u8()?;
                let dataset = Dataset::from_index(d).ok_or(DecodeError::UnknownDataset(d))?;
                let len = u32::from_le_bytes(r.arr()?) as usize;
                let bytes = r.take(len)?;
                // The part is checked before Arrow reads it (see
                // `decode_part`); a panic inside Arrow's reader that the
                // checks miss is still an undecodable entry, reported as
                // damage, never a crash of replay.
                let batch = std::panic::catch_unwind(|| decode_part(part, dataset, bytes))
                    .unwrap_or_else(|_| {
                        Err(DecodeError::Ipc {
                            part,
                            reason: "the Arrow IPC reader could not read it".into(),
                        })
                    })?;
                let columns =
                    Columns::of_batch(dataset, batch).map_err(|e| DecodeError::Schema {
                        part,
                        reason: e.to_string(),
                    })?;
                parts.push(columns);
            }
            if r.pos != buf.len() {
                return Err(DecodeError::Ipc {
                    part: count,
                    reason: format!("{} bytes after the last part", buf.len() - r.pos),
                });
            }
            Ok((from_log, parts))
        }
        v => Err(DecodeError::Version(v)),
    }
}

/// The messages of an IPC stream, each as its header and its body, up to
/// the end-of-stream marker (which must end the bytes). Every declared
/// length (metadata, body) is checked against the bytes present before
/// anything is read or allocated, and every buffer of a batch (or of a
/// dictionary's batch) must lie in its body.
fn ipc_messages(mut bytes: &[u8]) -> Result<Vec<(Message<'_>, &[u8])>, String> {
    let word = |b: &[u8]| i32::from_le_bytes(b[..4].try_into().expect("four bytes"));
    let mut messages = Vec::new();
    loop {
        if bytes.len() < 4 {
            return Err("the stream ends inside a message length".into());
        }
        let mut len = word(bytes);
        bytes = &bytes[4..];
        if len == -1 {
            // The continuation marker, then the length.
            if bytes.len() < 4 {
                return Err("the stream ends inside a message length".into());
            }
            len = word(bytes);
            bytes = &bytes[4..];
        }
        if len == 0 {
            if !bytes.is_empty() {
                return Err(format!("{} bytes after the end of the stream", bytes.len()));
            }
            return Ok(messages);
        }
        let meta = usize::try_from(len)
            .ok()
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| format!("a message declares {len} bytes of metadata"))?;
        let message = arrow::ipc::root_as_message(&bytes[..meta])
            .map_err(|e| format!("a message header is not readable: {e}"))?;
        bytes = &bytes[meta..];
        let body = message.bodyLength();
        let body = usize::try_from(body)
            .ok()
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| format!("a message declares a body of {body} bytes"))?;
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(buffers) = batch.and_then(|b| b.buffers()) {
            for b in buffers {
                let end = u64::try_from(b.offset())
                    .ok()
                    .zip(u64::try_from(b.length()).ok())
                    .and_then(|(o, l)| o.checked_add(l));
                if end.is_none_or(|end| end > body as u64) {
                    return Err(format!(
                        "a buffer at {} of {} bytes lies outside the message body of {body} bytes",
                        b.offset(),
                        b.length()
                    ));
                }
            }
        }
        messages.push((message, &bytes[..body]));
        bytes = &bytes[body..];
    }
}

/// A batch message tally writes: uncompressed, no variadic buffers (the
/// datasets have no view columns), a non-negative length. Arrow's reader
/// asserts rather than errs on some of these.
fn plain_batch(batch: &arrow::ipc::RecordBatch<'_>) -> Result<(), String> {
    if batch.compression().is_some() {
        return Err("a batch is compressed".into());
    }
    if batch.variadicBufferCounts().is_some_and(|c| !c.is_empty()) {
        return Err("a batch declares variadic buffers".into());
    }
    if batch.length() < 0 {
        return Err(format!("a batch declares {} rows", batch.length()));
    }
    Ok(())
}

/// Whether a field of a stream's schema message declares the type of a
/// dataset column (of a dictionary column: its values' type).
fn declares(field: &arrow::ipc::Field<'_>, ours: &DataType) -> bool {
    use arrow::ipc::Type;
    match ours {
        DataType::Dictionary(_, values) => declares(field, values),
        DataType::Utf8 => field.type_type() == Type::Utf8,
        DataType::Boolean => field.type_type() == Type::Bool,
        DataType::Float64 => field.type_type() == Type::FloatingPoint,
        DataType::Timestamp(..) => field.type_type() == Type::Timestamp,
        DataType::Int32 | DataType::Int64 => field.type_as_int().is_some_and(|i| {
            i.is_signed() && i.bitWidth() as usize == ours.primitive_width().unwrap_or(0) * 8
        }),
        _ => false,
    }
}

/// Decodes one part, an IPC stream of the dataset's columns: a schema
/// message, a dictionary batch per dictionary column, one record batch.
///
/// The columns are read against the dataset's own schema: the stream's
/// schema message is only checked to name the dataset's columns in order
/// and to give each dictionary column its id. It is never converted by
/// Arrow, whose conversion panics on malformed schema messages.
fn decode_part(part: usize, dataset: Dataset, bytes: &[u8]) -> Result<RecordBatch, DecodeError> {
    let ipc = |reason: String| DecodeError::Ipc { part, reason };
    let unfit = |reason: String| DecodeError::Schema { part, reason };
    let messages = ipc_messages(bytes).map_err(ipc)?;
    let mut messages = messages.into_iter();
    let (first, _) = messages
        .next()
        .ok_or_else(|| ipc("the stream holds no message".into()))?;
    let version = first.version();
    let declared = first
        .header_as_schema()
        .ok_or_else(|| ipc("the stream does not start with a schema".into()))?
        .fields()
        .ok_or_else(|| ipc("the schema message has no field list".into()))?;
    let ours = crate::batch::schema(dataset);
    if declared.len() != ours.fields().len() {
        return Err(unfit(format!(
            "the schema holds {} columns, {} has {}",
            declared.len(),
            dataset.name(),
            ours.fields().len()
        )));
    }
    let mut fields = Vec::with_capacity(declared.len());
    for (theirs, field) in declared.iter().zip(ours.fields()) {
        if theirs.name() != Some(field.name().as_str()) {
            return Err(unfit(format!(
                "column {} of the schema is {:?}, {} expects {}",
                fields.len(),
                theirs.name().unwrap_or_default(),
                dataset.name(),
                field.name()
            )));
        }
        if !declares(&theirs, field.data_type()) {
            return Err(unfit(format!(
                "{}.{} is declared as {:?} in the stream, the dataset's column is {}",
                dataset.name(),
                field.name(),
                theirs.type_type(),
                field.data_type()
            )));
        }
        let field = match (field.data_type(), theirs.dictionary()) {
            (DataType::Dictionary(..), Some(dict)) =>
            {
                #[allow(deprecated)]
                Arc::new(Field::new_dict(
                    field.name(),
                    field.data_type().clone(),
                    field.is_nullable(),
                    dict.id(),
                    false,
                ))
            }
            (DataType::Dictionary(..), None) | (_, Some(_)) => {
                return Err(unfit(format!(
                    "{}.{} is {}dictionary encoded in the stream",
                    dataset.name(),
                    field.name(),
                    if theirs.dictionary().is_some() {
                        ""
                    } else {
                        "not "
                    }
                )));
            }
            (_, None) => Arc::clone(field),
        };
        fields.push(field);
    }
    let schema = Arc::new(Schema::new(fields));
    let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
    let read = |e: arrow::error::ArrowError| ipc(e.to_string());
    let mut batch = None;
    for (message, body) in messages {
        if batch.is_some() {
            return Err(ipc("a message follows the record batch".into()));
        }
        let body = Buffer::from(body);
        match message.header_type() {
            MessageHeader::DictionaryBatch => {
                let dict = message
                    .header_as_dictionary_batch()
                    .ok_or_else(|| ipc("a dictionary message has no header".into()))?;
                plain_batch(
                    &dict
                        .data()
                        .ok_or_else(|| ipc("a dictionary batch has no data".into()))?,
                )
                .map_err(ipc)?;
                if dict.isDelta() {
                    return Err(ipc("a dictionary batch is a delta".into()));
                }
                arrow::ipc::reader::read_dictionary(
                    &body,
                    dict,
                    &schema,
                    &mut dictionaries,
                    &message.version(),
                )
                .map_err(read)?;
            }
            MessageHeader::RecordBatch => {
                let header = message
                    .header_as_record_batch()
                    .ok_or_else(|| ipc("a batch message has no header".into()))?;
                plain_batch(&header).map_err(ipc)?;
                batch = Some(
                    arrow::ipc::reader::read_record_batch(
                        &body,
                        header,
                        Arc::clone(&schema),
                        &dictionaries,
                        None,
                        &version,
                    )
                    .map_err(read)?,
                );
            }
            other => return Err(ipc(format!("an unexpected {other:?} message"))),
        }
    }
    batch.ok_or_else(|| ipc("the stream holds no record batch".into()))
}
/// Encodes records (version 1), as the Kafka relay sends them.
pub fn encode_records(records: &[Record], out: &mut Vec<u8>) {
    encode_records_entry(records, false, out)
}

/// Encodes records as a version 1 entry; `from_log` sets the
/// [`FROM_LOG`] flag. The WAL of earlier releases holds such entries.
pub fn encode_records_entry(records: &[Record], from_log: bool, out: &mut Vec<u8>) {
    out.push(if from_log {
        RECORDS_VERSION | FROM_LOG
    } else {
        RECORDS_VERSION
    });
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.push(r.dataset as u8);
        for v in &r.values {
            match v {
                Value::Null => out.push(TAG_NULL),
                Value::Str(s) => {
                    out.push(TAG_STR);
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Value::I32(x) => {
                    out.push(TAG_I32);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::I64(x) => {
                    out.push(TAG_I64);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::F64(x) => {
                    out.push(TAG_F64);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Bool(x) => {
                    out.push(TAG_BOOL);
                    out.push(*x as u8);
                }
                Value::Ts(x) => {
                    out.push(TAG_TS);
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
}

/// Whether an entry carries the [`FROM_LOG`] flag, without decoding it.
pub fn is_from_log(buf: &[u8]) -> bool {
    buf.first().is_some_and(|v| v & FROM_LOG != 0)
}

/// Decodes a version 1 payload (records) with or without the
/// [`FROM_LOG`] flag; records are not checked against their schema here.
pub fn decode_records(buf: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version & !FROM_LOG != RECORDS_VERSION {
        return Err(DecodeError::NotRecords(version & !FROM_LOG));
    }
    let count = u32::from_le_bytes(r.arr()?) as usize;
    let mut records = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let d = r.u8()?;
        let dataset = Dataset::from_index(d).ok_or(DecodeError::UnknownDataset(d))?;
        let ncols = dataset.columns().len();
        let mut values = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            let v = match r.u8()? {
                TAG_NULL => Value::Null,
                TAG_STR => {
                    let len = u32::from_le_bytes(r.arr()?) as usize;
                    let bytes = r.take(len)?;
                    Value::Str(
                        std::str::from_utf8(bytes)
                            .map_err(|_| DecodeError::Utf8)?
                            .to_owned(),
                    )
                }
                TAG_I32 => Value::I32(i32::from_le_bytes(r.arr()?)),
                TAG_I64 => Value::I64(i64::from_le_bytes(r.arr()?)),
                TAG_F64 => Value::F64(f64::from_le_bytes(r.arr()?)),
                TAG_BOOL => Value::Bool(r.u8()? != 0),
                TAG_TS => Value::Ts(i64::from_le_bytes(r.arr()?)),
                t => return Err(DecodeError::UnknownTag(t)),
            };
            values.push(v);
        }
        records.push(Record { dataset, values });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::from_columns(
                Dataset::Rejected,
                vec![
                    Value::Ts(-5),
                    Value::Str("http".into()),
                    Value::Null,
                    Value::Str("usage_llm".into()),
                    Value::I32(3),
                    Value::Str("prompt_tokens must be >= 0".into()),
                    Value::Str("{\"a\":\"é\"}".into()),
                ],
            ),
            Record::from_columns(
                Dataset::HostUsage,
                vec![
                    Value::Str("h".into()),
                    Value::Ts(i64::MAX),
                    Value::F64(12.5),
                    Value::F64(0.0),
                    Value::I64(1),
                    Value::I64(i64::MIN),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                ],
            ),
        ]
    }

    /// What an entry holds, as records per dataset, for comparisons.
    fn rows(parts: &[Columns]) -> Vec<(Dataset, Vec<Record>)> {
        parts
            .iter()
            .map(|c| (c.dataset(), c.to_records()))
            .collect()
    }

    fn by_dataset(records: Vec<Record>) -> Vec<(Dataset, Vec<Record>)> {
        let mut out: Vec<(Dataset, Vec<Record>)> = Vec::new();
        for d in Dataset::ALL {
            let rs: Vec<Record> = records.iter().filter(|r| r.dataset == d).cloned().collect();
            if !rs.is_empty() {
                out.push((d, rs));
            }
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode_records(&sample(), &mut buf);
        assert_eq!(decode_records(&buf).unwrap(), sample());
    }

    #[test]
    fn columns_round_trip_and_records_entries_still_decode() {
        let parts = Columns::of_records(sample());
        let mut buf = Vec::new();
        encode_entry(&parts, false, &mut buf).unwrap();
        assert_eq!(buf[0], FORMAT_VERSION);
        let (from_log, back) = decode_entry(&buf).unwrap();
        assert!(!from_log);
        assert_eq!(rows(&back), by_dataset(sample()));
        for (a, b) in parts.iter().zip(&back) {
            assert_eq!(a.batch(), b.batch());
        }
        // An entry of the earlier release: the same rows, as columns.
        let mut v1 = Vec::new();
        encode_records_entry(&sample(), false, &mut v1);
        assert_eq!(rows(&decode_entry(&v1).unwrap().1), by_dataset(sample()));
        // A record payload is not taken for columns, nor columns for records.
        assert_eq!(
            decode_records(&buf).unwrap_err(),
            DecodeError::NotRecords(FORMAT_VERSION)
        );
    }

    #[test]
    fn the_log_flag_round_trips_and_plain_entries_lack_it() {
        let parts = Columns::of_records(sample());
        let mut flagged = Vec::new();
        encode_entry(&parts, true, &mut flagged).unwrap();
        assert!(is_from_log(&flagged));
        let (flag, back) = decode_entry(&flagged).unwrap();
        assert!(flag);
        assert_eq!(rows(&back), by_dataset(sample()));
        let mut plain = Vec::new();
        encode_entry(&parts, false, &mut plain).unwrap();
        assert!(!is_from_log(&plain));
        assert!(!decode_entry(&plain).unwrap().0);
        // Only the flag differs.
        assert_eq!(flagged[1..], plain[1..]);
        let mut v1 = Vec::new();
        encode_records_entry(&sample(), true, &mut v1);
        assert!(is_from_log(&v1) && decode_entry(&v1).unwrap().0);
        let mut bad = plain.clone();
        bad[0] = 3;
        assert_eq!(decode_entry(&bad).unwrap_err(), DecodeError::Version(3));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode_records(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_records(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut cols = Vec::new();
        encode_entry(&Columns::of_records(sample()), false, &mut cols).unwrap();
        for cut in 0..cols.len() {
            assert!(decode_entry(&cols[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A part whose IPC stream holds columns of another dataset is refused
    /// with the column and the rule, not taken as rows of the named one.
    #[test]
    fn a_part_of_another_schema_is_refused() {
        let parts = Columns::of_records(sample());
        let mut buf = Vec::new();
        encode_entry(&parts[..1], false, &mut buf).unwrap();
        // Relabel the first part (host_usage) as rejected.
        buf[5] = Dataset::Rejected as u8;
        let err = decode_entry(&buf).unwrap_err();
        assert!(matches!(err, DecodeError::Schema { part: 0, .. }), "{err}");
    }

    /// A part whose IPC stream declares more bytes than it holds is refused
    /// before anything of that size is allocated.
    #[test]
    fn a_part_declaring_more_than_it_holds_is_refused() {
        let parts = Columns::of_records(sample());
        let mut buf = Vec::new();
        encode_entry(&parts[..1], false, &mut buf).unwrap();
        // After the version, the count, the dataset and the part length:
        // the continuation marker, then the schema message's length.
        let at = 1 + 4 + 1 + 4 + 4;
        buf[at..at + 4].copy_from_slice(&0x4fd6_caa2u32.to_le_bytes());
        let err = decode_entry(&buf).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Ipc { part: 0, reason } if reason.contains("1339476642 bytes of metadata")),
            "{err}"
        );
    }

    /// A record of an entry of the earlier format that does not fit its
    /// schema makes the entry undecodable (reported as damage by replay),
    /// rather than a column of nulls.
    #[test]
    fn a_record_entry_that_breaks_its_schema_is_refused() {
        let mut records = sample();
        records[1].values[2] = Value::Str("12.5".into());
        let mut v1 = Vec::new();
        encode_records_entry(&records, false, &mut v1);
        assert_eq!(
            decode_entry(&v1).unwrap_err().to_string(),
            "record 1 does not fit its dataset: host_usage.cpu_percent must be a float, got a string"
        );
    }

    /// A part whose batch names a buffer outside its message body (found
    /// by fuzzing; the reader would panic slicing the body) is refused.
    #[test]
    fn a_part_with_a_buffer_outside_its_body_is_refused() {
        let input = include_bytes!("../../../fuzz/corpus/wal_codec/ipc-buffer-outside-body");
        assert_refused_as_ipc(input, "outside the message body");
    }

    /// An input the codec refuses as an unreadable IPC part, for a reason
    /// that contains `why`.
    fn assert_refused_as_ipc(input: &[u8], why: &str) {
        let err = decode_entry(input).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Ipc { reason, .. } if reason.contains(why)),
            "{err}"
        );
    }

    /// A part whose schema message has no field list (found by fuzzing:
    /// Arrow's own schema conversion panics on it) is an undecodable
    /// entry: the stream's schema is never handed to Arrow.
    #[test]
    fn a_schema_message_without_fields_is_refused() {
        let input = include_bytes!("../../../fuzz/corpus/wal_codec/ipc-schema-without-fields");
        assert_refused_as_ipc(input, "no field list");
    }

    /// Each column of the stream's schema message must be the dataset's,
    /// in its order, of its type and its encoding; the error names it.
    #[test]
    fn a_schema_message_unlike_the_dataset_is_refused() {
        let parts = Columns::of_records(sample());
        let mut good = Vec::new();
        encode_entry(&parts[..1], false, &mut good).unwrap();
        let find = |buf: &[u8], what: &[u8]| {
            buf.windows(what.len())
                .position(|w| w == what)
                .expect("the name is in the schema message")
        };
        // A column renamed (same length): host_usage.hostname is the first.
        let mut renamed = good.clone();
        let at = find(&renamed, b"hostname");
        renamed[at..at + 8].copy_from_slice(b"hostnamX");
        let err = decode_entry(&renamed).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Schema {
                part: 0,
                reason: "column 0 of the schema is \"hostnamX\", host_usage expects hostname"
                    .into()
            }
        );
    }
}
