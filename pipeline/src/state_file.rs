//! Small state files under `_tally/` (budgets, alert deliveries): each is
//! replaced whole, durably, so a crash leaves the old bytes or the new.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::quarantine::{Damage, DamageKind, Quarantine};

/// Replaces `path` with `bytes`: a temporary file beside it, fsync, rename,
/// fsync of the directory.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
/// or the reason it cannot be.
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
        let read = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()));
        out.push((path, read));
    }
    Ok(out)
}

/// Moves a state file that cannot be read to the quarantine (as `rel`
/// there) and reports it: the component starts without it, loudly.
pub fn set_aside(quarantine: &Quarantine, path: &Path, rel: &str, detail: String) {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let kept = quarantine
        .move_in(path, Path::new(rel))
        .map(|p| p.display().to_string());
    if let Err(err) = &kept {
        tracing::error!(path = %path.display(), error = %err, "cannot move an unreadable state file aside");
    }
    quarantine.report(Damage {
        kind: DamageKind::StateFile,
        path: path.display().to_string(),
        quarantined: kept.ok(),
        offset: None,
        unread_entries: 0,
        unread_bytes: size,
        detail,
        found_at: crate::quarantine::now_secs(),
        acknowledged: false,
    });
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
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
