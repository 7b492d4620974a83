//! Query results as JSON rows, CSV, Arrow IPC or a text table.

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A JSON array of row objects.
    Json,
    Csv,
    /// Arrow IPC stream.
    Arrow,
    /// A text table, for terminals.
    Table,
}

impl OutputFormat {
    /// Picks a format from an HTTP `Accept` header; JSON when nothing matches.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/vnd.apache.arrow.stream") => OutputFormat::Arrow,
            Some(a) if a.contains("text/csv") => OutputFormat::Csv,
            _ => OutputFormat::Json,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
            OutputFormat::Table => "text/plain; charset=utf-8",
        }
    }

    pub fn write(self, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
        let mut out = Vec::new();
        match self {
            OutputFormat::Json => {
                if batches.iter().all(|b| b.num_rows() == 0) {
                    out.extend_from_slice(b"[]");
                } else {
                    // Null columns are written as `null`, not left out.
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::JsonArray>(&mut out);
                    for b in batches {
                        w.write(b)?;
                    }
                    w.finish()?;
                }
            }
            OutputFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            OutputFormat::Arrow => {
                if let Some(first) = batches.first() {
                    let mut w =
                        arrow::ipc::writer::StreamWriter::try_new(&mut out, &first.schema())?;
                    for b in batches {
                        w.write(b)?;
                    }
                    w.finish()?;
                }
            }
            OutputFormat::Table => {
                out = arrow::util::pretty::pretty_format_batches(batches)?
                    .to_string()
                    .into_bytes();
                out.push(b'\n');
            }
        }
        Ok(out)
    }
}

/// Batches as CSV with CRLF line ends (RFC 4180), header first: the VM
/// bill's file, which spreadsheets and billing imports read.
pub fn csv_rfc4180(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .with_line_terminator(arrow::csv::writer::Terminator::CRLF)
        .build(&mut out);
    for b in batches {
        w.write(b)?;
    }
    drop(w);
    Ok(out)
}
