//! Keys read from columns, byte for byte as [`crate::record::encode_key_part`] encodes
//! a record's values: the dedup key of a row and the order of rows in a
//! file come from the columns without building the row.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use arrow::error::ArrowError;

/// One key column, read for [`crate::record::encode_key_part`]'s encoding.
pub enum KeyColumn<'a> {
    Str(&'a StringArray),
    Dict(&'a Int32Array, &'a StringArray),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    Ts(&'a TimestampNanosecondArray),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
}

impl<'a> KeyColumn<'a> {
    pub fn of(array: &'a ArrayRef) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Utf8 => Self::Str(array.as_string::<i32>()),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d = array.as_dictionary::<Int32Type>();
                Self::Dict(d.keys(), d.values().as_string::<i32>())
            }
            DataType::Int32 => Self::I32(array.as_primitive::<Int32Type>()),
            DataType::Int64 => Self::I64(array.as_primitive::<Int64Type>()),
            DataType::Timestamp(_, _) => Self::Ts(array.as_primitive::<TimestampNanosecondType>()),
            DataType::Float64 => Self::F64(array.as_primitive::<Float64Type>()),
            DataType::Boolean => Self::Bool(array.as_boolean()),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "a key column of type {other} cannot be sorted"
                )))
            }
        })
    }

    /// Row `i` as [`crate::record::encode_key_part`] encodes its value.
    pub fn encode(&self, i: usize, out: &mut Vec<u8>) {
        let null = match self {
            Self::Str(a) => a.is_null(i),
            Self::Dict(k, _) => k.is_null(i),
            Self::I32(a) => a.is_null(i),
            Self::I64(a) => a.is_null(i),
            Self::Ts(a) => a.is_null(i),
            Self::F64(a) => a.is_null(i),
            Self::Bool(a) => a.is_null(i),
        };
        if null {
            out.push(0xff);
            return;
        }
        let int = |v: i64, out: &mut Vec<u8>| {
            out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes())
        };
        match self {
            Self::Str(a) => {
                out.extend_from_slice(a.value(i).as_bytes());
                out.push(0);
            }
            Self::Dict(k, v) => {
                out.extend_from_slice(v.value(k.value(i) as usize).as_bytes());
                out.push(0);
            }
            Self::I32(a) => int(a.value(i) as i64, out),
            Self::I64(a) => int(a.value(i), out),
            Self::Ts(a) => int(a.value(i), out),
            Self::F64(a) => out.extend_from_slice(&a.value(i).to_bits().to_be_bytes()),
            Self::Bool(a) => out.push(a.value(i) as u8),
        }
    }
}

impl KeyColumn<'_> {
    /// Whether rows `i` and `j` encode to the same bytes, read without
    /// encoding them (a dictionary's rows of one key compare as integers).
    pub fn same(&self, i: usize, j: usize) -> bool {
        fn eq<A: Array, T: PartialEq>(a: &A, i: usize, j: usize, v: impl Fn(usize) -> T) -> bool {
            match (a.is_null(i), a.is_null(j)) {
                (false, false) => v(i) == v(j),
                (ni, nj) => ni == nj,
            }
        }
        match self {
            Self::Str(a) => eq(*a, i, j, |r| a.value(r)),
            Self::Dict(k, v) => {
                eq(*k, i, j, |r| k.value(r)) || {
                    !k.is_null(i)
                        && !k.is_null(j)
                        && v.value(k.value(i) as usize) == v.value(k.value(j) as usize)
                }
            }
            Self::I32(a) => eq(*a, i, j, |r| a.value(r)),
            Self::I64(a) => eq(*a, i, j, |r| a.value(r)),
            Self::Ts(a) => eq(*a, i, j, |r| a.value(r)),
            Self::F64(a) => eq(*a, i, j, |r| a.value(r).to_bits()),
            Self::Bool(a) => eq(*a, i, j, |r| a.value(r)),
        }
    }
}
