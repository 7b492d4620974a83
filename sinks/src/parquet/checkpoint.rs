//! The checkpoint: the WAL sequence that Parquet files hold, and the renames
//! of a flush round that must complete after a crash.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_pipeline::state_file::{self, StateFileError};

use super::{io_err, SinkError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PendingRename {
    /// Relative to the data directory.
    pub tmp: PathBuf,
    pub final_path: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every WAL entry up to and including this sequence is in a Parquet file
    /// (or in a pending rename below).
    pub flushed_seq: u64,
    #[serde(default)]
    pub pending: Vec<PendingRename>,
}

impl Checkpoint {
    pub fn path(data: &Path) -> PathBuf {
        super::layout::state_dir(data).join("checkpoint.json")
    }

    pub fn load(data: &Path) -> Result<Checkpoint, SinkError> {
        let path = Self::path(data);
        match state_file::read(&path) {
            Ok(Some((bytes, _))) => {
                serde_json::from_slice(&bytes).map_err(|e| SinkError::Checkpoint {
                    path,
                    detail: e.to_string(),
                })
            }
            Ok(None) => Ok(Checkpoint::default()),
            Err(StateFileError::Damaged { verdict, .. }) => Err(SinkError::Checkpoint {
                path,
                detail: verdict.to_string(),
            }),
            Err(StateFileError::Io { source, .. }) => Err(io_err(&path)(source)),
        }
    }

    /// Atomic replace, with its checksum: temp file, fsync, rename, fsync
    /// of the directory.
    pub fn store(&self, data: &Path) -> Result<(), SinkError> {
        let path = Self::path(data);
        let bytes = serde_json::to_vec_pretty(self).expect("checkpoint serialises");
        state_file::replace(&path, &bytes).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_checkpoint_is_empty_and_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Checkpoint::default());
        let c = Checkpoint {
            flushed_seq: 42,
            pending: vec![PendingRename {
                tmp: "a/.x.tmp".into(),
                final_path: "a/x".into(),
            }],
        };
        c.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), c);
    }
}
