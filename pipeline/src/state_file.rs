//! Small state files under `_tally/` (budgets, alert deliveries, tokens,
//! the checkpoint): each is replaced whole, durably, so a crash leaves the
//! old bytes or the new, and each ends with its checksum
//! ([`crate::checksum::seal`]), so a damaged one is never half-trusted.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::checksum::{self, Verdict};

/// A state file that cannot be trusted, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is damaged ({verdict}). Do: restore it from a backup (`tally check --repair --from BACKUP_DIR` copies an intact one), or run `tally check --repair` to move it to the quarantine; tally then starts without it")]
    Damaged { path: PathBuf, verdict: Verdict },
}

impl From<StateFileError> for io::Error {
    fn from(e: StateFileError) -> Self {
        match e {
            StateFileError::Io { source, .. } => source,
            e @ StateFileError::Damaged { .. } => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// A state file's body, its checksum checked: `None` when it does not
/// exist; the body of a file written before checksums comes back as
/// [`Verdict::Unverified`].
pub fn read(path: &Path) -> Result<Option<(Vec<u8>, Verdict)>, StateFileError> {
    match fs::read(path) {
        Ok(bytes) => open_bytes(path, bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// [`read`] of bytes already read.
pub fn open_bytes(path: &Path, mut bytes: Vec<u8>) -> Result<(Vec<u8>, Verdict), StateFileError> {
    match checksum::open(&bytes) {
        Ok((body, verdict)) => {
            let n = body.len();
            bytes.truncate(n);
            Ok((bytes, verdict))
        }
        Err(d) => Err(StateFileError::Damaged {
            path: path.to_path_buf(),
            verdict: d.verdict,
        }),
    }
}

/// Replaces `path` with `bytes` and their checksum line: a temporary file
/// beside it, fsync, rename, fsync of the directory.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_raw(path, &checksum::seal(bytes))
}

/// [`replace`] without a checksum line (files other tools read as they are).
pub fn replace_raw(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Removes `path` (absent is fine) and makes the removal durable.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Every `*.json` file of `dir` (made when missing), each read as a `T`
/// or the reason it cannot be. A file whose checksum does not match is an
/// error: the caller refuses to start rather than trust or drop it.
pub fn load_all<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> io::Result<Vec<(std::path::PathBuf, Result<T, String>)>> {
    fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let read = match read(&path)? {
            Some((body, _)) => serde_json::from_slice::<T>(&body).map_err(|e| e.to_string()),
            None => continue,
        };
        out.push((path, read));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(
            read(&p).unwrap(),
            Some((b"two".to_vec(), Verdict::Verified))
        );
        let mut bytes = fs::read(&p).unwrap();
        bytes[1] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(
            err.contains("b.json is damaged") && err.contains("tally check --repair"),
            "{err}"
        );
        replace(&p, b"two").unwrap();
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
