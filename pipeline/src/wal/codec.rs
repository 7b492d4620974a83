//! Binary encoding of records inside a WAL entry.
//!
//! Entry payload: `u32 count`, then per record `u8 dataset`, then per column a
//! tag byte and the value (little-endian). The column count comes from the
//! dataset, so a payload written by this version decodes only against the same
//! column lists; a schema change must bump [`FORMAT_VERSION`].
//!
//! The high bit of the version byte ([`FROM_LOG`]) marks an entry whose
//! records came from a replayable log (a Kafka partition): it is not replayed
//! at start-up, because the log delivers it again from the committed offset.

use crate::dataset::Dataset;
use crate::record::{Record, Value};

pub const FORMAT_VERSION: u8 = 1;
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
    #[error("payload format version {0} is not {FORMAT_VERSION}")]
    Version(u8),
}

pub fn encode_records(records: &[Record], out: &mut Vec<u8>) {
    encode_entry(records, false, out)
}

/// Encodes an entry; `from_log` sets the [`FROM_LOG`] flag.
pub fn encode_entry(records: &[Record], from_log: bool, out: &mut Vec<u8>) {
    out.push(if from_log {
        FORMAT_VERSION | FROM_LOG
    } else {
        FORMAT_VERSION
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

pub fn decode_records(buf: &[u8]) -> Result<Vec<Record>, DecodeError> {
    decode_entry(buf).map(|(_, records)| records)
}

/// Whether an entry carries the [`FROM_LOG`] flag, without decoding it.
pub fn is_from_log(buf: &[u8]) -> bool {
    buf.first().is_some_and(|v| v & FROM_LOG != 0)
}

/// Decodes an entry: `(from_log, records)`.
pub fn decode_entry(buf: &[u8]) -> Result<(bool, Vec<Record>), DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    let from_log = version & FROM_LOG != 0;
    if version & !FROM_LOG != FORMAT_VERSION {
        return Err(DecodeError::Version(version & !FROM_LOG));
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
    Ok((from_log, records))
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

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_records(&sample(), &mut buf);
        assert_eq!(decode_records(&buf).unwrap(), sample());
    }

    #[test]
    fn the_log_flag_round_trips_and_plain_entries_lack_it() {
        let mut flagged = Vec::new();
        encode_entry(&sample(), true, &mut flagged);
        assert!(is_from_log(&flagged));
        assert_eq!(decode_entry(&flagged).unwrap(), (true, sample()));
        let mut plain = Vec::new();
        encode_records(&sample(), &mut plain);
        assert!(!is_from_log(&plain));
        assert!(!decode_entry(&plain).unwrap().0);
        // Only the flag differs.
        assert_eq!(flagged[1..], plain[1..]);
        let mut bad = plain.clone();
        bad[0] = 2;
        assert_eq!(decode_entry(&bad).unwrap_err(), DecodeError::Version(2));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode_records(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_records(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }
}
