//! The Parquet sink.
//!
//! A flush round writes every buffered record up to a WAL sequence `S` into
//! temporary files, records `S` and the pending renames in the checkpoint,
//! renames, and only then drops the records from the live buffer and lets the
//! WAL delete what it holds up to `S`. A crash at any point either replays
//! from the WAL (before the checkpoint) or completes the renames (after it).

pub use tally_pipeline::background;
pub mod checkpoint;
pub mod compact;
pub mod config;
pub mod control;
pub mod destination;
pub mod flusher;
pub mod layout;
pub mod listing;
pub mod merge;
pub mod recovery;
pub mod scrub;
pub mod sink;
pub mod verify;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("Parquet error in {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: ::parquet::errors::ParquetError,
    },
    #[error("Arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("checkpoint {path} is unreadable: {detail}")]
    Checkpoint { path: PathBuf, detail: String },
    #[error("WAL: {0}")]
    Wal(#[from] tally_pipeline::wal::WalError),
    #[error("the Parquet writer stopped after a failed round: {0}")]
    Halted(String),
    #[error("data location: {0}")]
    Location(String),
    #[error("object store: {0}")]
    Object(String),
    #[error("rollup: {0}")]
    Rollup(String),
    #[error("{path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("checkpoint lists {tmp} → {final_path}, but neither file exists")]
    MissingPending { tmp: PathBuf, final_path: PathBuf },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}
