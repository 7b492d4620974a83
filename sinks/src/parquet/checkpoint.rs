//! The checkpoint: the WAL sequence that Parquet files hold, and the renames
//! of a flush round that must complete after a crash.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| SinkError::Checkpoint { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Atomic replace: temp file, fsync, rename, fsync of the directory.
    pub fn store(&self, data: &Path) -> Result<(), SinkError> {
        let path = Self::path(data);
        let dir = path.parent().expect("checkpoint has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = dir.join(".checkpoint.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("checkpoint serialises");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
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
