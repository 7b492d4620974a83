//! JSON in SQL: the fields of a JSON text column (the `data` of `events`),
//! read by the JSONPaths meters use (`$.tokens`, `$.a.b`, `$['a b']`,
//! `$.list[0]`).
//!
//! - `json_text(json, path)`: the value found, as text (a string without
//!   its quotes, any other value as JSON); NULL when the path finds nothing
//!   (or JSON `null`) or the text is not JSON.
//! - `json_number(json, path)`: the value as a number (a JSON number, or a
//!   string that holds one, as meters read values); NULL otherwise.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde_json::Value;
use tally_pipeline::rules::json_path::{self, JsonPath};

/// `json_text` and `json_number`.
pub fn json_udfs() -> [ScalarUDF; 2] {
    [
        ScalarUDF::new_from_impl(JsonField::new("json_text", DataType::Utf8)),
        ScalarUDF::new_from_impl(JsonField::new("json_number", DataType::Float64)),
    ]
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonField {
    name: &'static str,
    out: DataType,
    signature: Signature,
}

impl JsonField {
    fn new(name: &'static str, out: DataType) -> Self {
        Self {
            name,
            out,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonField {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.out.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let text = |v: &ColumnarValue| -> Result<ArrayRef> {
            let a = v.to_array(rows)?;
            Ok(arrow::compute::cast(&a, &DataType::Utf8)?)
        };
        let (json, paths) = (text(&args.args[0])?, text(&args.args[1])?);
        let (json, paths) = (json.as_string::<i32>(), paths.as_string::<i32>());
        let mut parsed: Option<(String, JsonPath)> = None;
        let mut strings = StringBuilder::new();
        let mut numbers = Float64Builder::new();
        for r in 0..rows {
            let found = if json.is_null(r) || paths.is_null(r) {
                None
            } else {
                let p = paths.value(r);
                if parsed.as_ref().is_none_or(|(text, _)| text != p) {
                    match JsonPath::parse(p) {
                        Ok(path) => parsed = Some((p.to_string(), path)),
                        Err(e) => return exec_err!("{}: {e}", self.name),
                    }
                }
                let path = &parsed.as_ref().expect("parsed above").1;
                serde_json::from_str::<Value>(json.value(r))
                    .ok()
                    .and_then(|v| path.get(&v).cloned())
            };
            if self.out == DataType::Utf8 {
                strings.append_option(found.as_ref().map(json_path::text));
            } else {
                numbers.append_option(found.as_ref().and_then(json_path::number));
            }
        }
        let out: ArrayRef = if self.out == DataType::Utf8 {
            Arc::new(strings.finish())
        } else {
            Arc::new(numbers.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}
