//! Damage found on disk, kept aside and reported until an operator
//! acknowledges it.
//!
//! A damaged WAL segment is copied whole into the quarantine directory (its
//! readable frames are still replayed); a Parquet file that cannot be read,
//! or a foreign file in the data tree, is moved there. Each finding is a
//! [`Damage`] report: logged at `ERROR`, counted in `/metrics`, kept in
//! `damage.json` beside the quarantined files, and shown by `/health` as
//! `degraded` until it is acknowledged.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::metrics::Metrics;

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// WAL frames that could not be read.
    WalSegment,
    /// A Parquet file of tally's that cannot be read.
    ParquetFile,
    /// A file in the data tree that is not one of tally's (wrong schema, not
    /// Parquet at all).
    ForeignFile,
    /// One of tally's own state files (checkpoint, Usage API configuration,
    /// the damage reports themselves) that cannot be read.
    StateFile,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Damage {
    pub kind: DamageKind,
    /// Where it was found.
    pub path: String,
    /// Where it is kept now; `None` if keeping it failed (then it was left
    /// in place and is never deleted).
    pub quarantined: Option<String>,
    /// Byte offset of the first unreadable byte, when known.
    pub offset: Option<u64>,
    /// WAL entries (frames) that could not be read.
    pub unread_entries: u64,
    /// Bytes that could not be read.
    pub unread_bytes: u64,
    pub detail: String,
    /// Unix seconds.
    pub found_at: i64,
    #[serde(default)]
    pub acknowledged: bool,
    /// What a damaged data file held, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<FileHeld>,
}

/// What a data file held: which dataset or rollup table, which hour, how
/// many rows (the rows lost, unless a copy restores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHeld {
    /// `raw` (a flushed or compacted file of a dataset) or `rollup`.
    pub role: String,
    /// The dataset, or the rollup table.
    pub table: String,
    /// RFC 3339 start of the hour.
    pub hour: Option<String>,
    /// Rows, from the footer when it could be read.
    pub rows: Option<u64>,
}

impl Damage {
    fn same_finding(&self, other: &Damage) -> bool {
        self.kind == other.kind && self.path == other.path && self.offset == other.offset
    }
}

/// The quarantine directory and its reports.
#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
    reports: Mutex<Vec<Damage>>,
    metrics: Arc<Metrics>,
}

const REPORTS: &str = "damage.json";

impl Quarantine {
    /// Opens (or creates) the quarantine at `dir`, with the reports kept there.
    /// Unreadable reports are kept aside as `damage.json.unreadable` and
    /// reported afresh.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(REPORTS);
        let mut unreadable = None;
        let reports = match crate::state_file::read(&path) {
            Ok(Some((bytes, _))) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    let aside = dir.join(format!("{REPORTS}.unreadable"));
                    fs::rename(&path, &aside)?;
                    unreadable = Some((aside, e.to_string()));
                    Vec::new()
                }
            },
            Ok(None) => Vec::new(),
            Err(crate::state_file::StateFileError::Damaged { verdict, .. }) => {
                let aside = dir.join(format!("{REPORTS}.unreadable"));
                fs::rename(&path, &aside)?;
                unreadable = Some((aside, verdict.to_string()));
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let q = Self {
            dir: dir.to_path_buf(),
            reports: Mutex::new(reports),
            metrics,
        };
        if let Some((aside, error)) = unreadable {
            q.report(Damage {
                kind: DamageKind::StateFile,
                path: path.display().to_string(),
                quarantined: Some(aside.display().to_string()),
                offset: None,
                unread_entries: 0,
                unread_bytes: fs::metadata(&aside).map(|m| m.len()).unwrap_or(0),
                detail: format!("the damage reports cannot be read ({error}); earlier reports are in the file kept aside"),
                found_at: now_secs(),
                acknowledged: false,
                held: None,
            });
        }
        Ok(q)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a file kept under the relative name `rel` goes.
    pub fn path_for(&self, rel: &Path) -> PathBuf {
        self.dir.join(rel)
    }

    /// Copies `src` whole to `rel` inside the quarantine (fsync'd). An
    /// existing copy of the same length is kept as it is.
    pub fn keep_copy(&self, src: &Path, rel: &Path) -> io::Result<PathBuf> {
        let dest = self.path_for(rel);
        let parent = dest.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent)?;
        let len = fs::metadata(src)?.len();
        if fs::metadata(&dest).is_ok_and(|m| m.len() == len) {
            return Ok(dest);
        }
        let tmp = parent.join(format!(
            ".{}.tmp",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &dest)?;
        File::open(&parent)?.sync_all()?;
        Ok(dest)
    }

    /// Moves `src` to `rel` inside the quarantine: a rename, or a copy and
    /// a delete across file systems. A name already taken gets a suffix.
    pub fn move_in(&self, src: &Path, rel: &Path) -> io::Result<PathBuf> {
        let mut dest = self.path_for(rel);
        let parent = dest.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent)?;
        let mut n = 1;
        while dest.exists() {
            dest = self
                .path_for(rel)
                .with_extension(format!("{n}.quarantined"));
            n += 1;
        }
        if fs::rename(src, &dest).is_err() {
            fs::copy(src, &dest)?;
            File::open(&dest)?.sync_all()?;
            fs::remove_file(src)?;
        }
        File::open(&parent)?.sync_all()?;
        if let Some(from) = src.parent() {
            File::open(from)?.sync_all()?;
        }
        Ok(dest)
    }

    /// Records a finding: `ERROR` log, metrics, `damage.json`. The same
    /// finding (kind, path, offset) already reported and not acknowledged is
    /// logged again but not counted twice.
    pub fn report(&self, damage: Damage) {
        tracing::error!(
            kind = ?damage.kind,
            path = %damage.path,
            offset = ?damage.offset,
            unread_entries = damage.unread_entries,
            unread_bytes = damage.unread_bytes,
            quarantined = damage.quarantined.as_deref().unwrap_or("(left in place)"),
            detail = %damage.detail,
            "DAMAGE: data could not be read; what could be read was kept, the rest is in quarantine"
        );
        let mut reports = self.reports.lock();
        if reports
            .iter()
            .any(|r| !r.acknowledged && r.same_finding(&damage))
        {
            return;
        }
        self.metrics.damage_reports.add(1);
        self.metrics
            .damage_unread_entries
            .add(damage.unread_entries);
        reports.push(damage);
        if let Err(e) = self.persist(&reports) {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the damage reports");
        }
    }

    /// Findings not acknowledged yet.
    pub fn unacknowledged(&self) -> Vec<Damage> {
        self.reports
            .lock()
            .iter()
            .filter(|r| !r.acknowledged)
            .cloned()
            .collect()
    }

    /// Every finding, acknowledged or not.
    pub fn all(&self) -> Vec<Damage> {
        self.reports.lock().clone()
    }

    /// Marks every finding acknowledged; returns how many were not.
    pub fn acknowledge(&self) -> io::Result<usize> {
        let mut reports = self.reports.lock();
        let mut n = 0;
        for r in reports.iter_mut().filter(|r| !r.acknowledged) {
            r.acknowledged = true;
            n += 1;
        }
        self.persist(&reports)?;
        Ok(n)
    }

    fn persist(&self, reports: &[Damage]) -> io::Result<()> {
        crate::state_file::replace(
            &self.dir.join(REPORTS),
            &serde_json::to_vec_pretty(reports).expect("reports serialise"),
        )
    }

    /// Moves a state file that cannot be read to the quarantine (as `rel`
    /// there) and reports it: the component starts without it, loudly.
    pub fn set_aside(&self, path: &Path, rel: &str, detail: String) {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let kept = self
            .move_in(path, Path::new(rel))
            .map(|p| p.display().to_string());
        if let Err(err) = &kept {
            tracing::error!(path = %path.display(), error = %err, "cannot move an unreadable state file aside");
        }
        self.report(Damage {
            kind: DamageKind::StateFile,
            path: path.display().to_string(),
            quarantined: kept.ok(),
            offset: None,
            unread_entries: 0,
            unread_bytes: size,
            detail,
            found_at: now_secs(),
            acknowledged: false,
            held: None,
        });
    }

    /// Drops the reports of `path` (a file restored from a copy).
    pub fn resolved(&self, path: &str) -> io::Result<usize> {
        let mut reports = self.reports.lock();
        let before = reports.len();
        reports.retain(|r| r.path != path);
        let n = before - reports.len();
        if n > 0 {
            self.persist(&reports)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage(path: &str) -> Damage {
        Damage {
            kind: DamageKind::ParquetFile,
            path: path.into(),
            quarantined: None,
            offset: Some(4),
            unread_entries: 2,
            unread_bytes: 10,
            detail: "bad".into(),
            found_at: 1,
            acknowledged: false,
            held: None,
        }
    }

    #[test]
    fn reports_persist_count_once_and_clear_on_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let q = Quarantine::open(dir.path(), metrics.clone()).unwrap();
        q.report(damage("a"));
        q.report(damage("a"));
        q.report(damage("b"));
        assert_eq!(q.unacknowledged().len(), 2);
        assert_eq!(metrics.damage_reports.get(), 2);
        assert_eq!(metrics.damage_unread_entries.get(), 4);

        let again = Quarantine::open(dir.path(), metrics.clone()).unwrap();
        assert_eq!(again.unacknowledged().len(), 2);
        assert_eq!(again.acknowledge().unwrap(), 2);
        assert!(again.unacknowledged().is_empty());
        let third = Quarantine::open(dir.path(), metrics).unwrap();
        assert!(third.unacknowledged().is_empty());
        assert_eq!(third.all().len(), 2);
    }

    #[test]
    fn unreadable_reports_are_kept_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(REPORTS), b"[{\"kind\": tru").unwrap();
        let q = Quarantine::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        let open = q.unacknowledged();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].kind, DamageKind::StateFile);
        assert_eq!(
            fs::read(dir.path().join("damage.json.unreadable")).unwrap(),
            b"[{\"kind\": tru"
        );
        // The new reports are readable again.
        assert_eq!(
            Quarantine::open(dir.path(), Arc::new(Metrics::default()))
                .unwrap()
                .unacknowledged()
                .len(),
            1
        );
    }

    #[test]
    fn files_are_copied_or_moved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(&dir.path().join("q"), Arc::new(Metrics::default())).unwrap();
        let src = dir.path().join("seg.wal");
        fs::write(&src, b"0123456789").unwrap();
        let copy = q.keep_copy(&src, Path::new("wal/seg.wal")).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"0123456789");
        assert!(src.exists());
        let moved = q.move_in(&src, Path::new("d/x.parquet")).unwrap();
        assert!(!src.exists());
        assert_eq!(fs::read(&moved).unwrap(), b"0123456789");
        fs::write(&src, b"again").unwrap();
        let second = q.move_in(&src, Path::new("d/x.parquet")).unwrap();
        assert_ne!(second, moved);
        assert_eq!(fs::read(&second).unwrap(), b"again");
    }
}
