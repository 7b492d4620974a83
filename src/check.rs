//! `tally check [--data DIR] [--state-dir DIR] [--repair [--from COPY]]`:
//! verifies offline every WAL frame, every state file (its checksum line)
//! and every Parquet file, raw and rollup (its checksum, footer, schema and
//! rows). `--repair` salvages and quarantines as start-up does, without
//! serving; with `--from`, a damaged file is first replaced by an intact
//! copy (a backup of the data directory, or a cluster's bucket).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use std::path::PathBuf;
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::wal::{self, SegmentDamage};
use tally_pipeline::Dataset;

use tally_pipeline::checksum::{self, Verdict};
use tally_pipeline::quarantine::FileHeld;
use tally_pipeline::state_file::{self, StateFileError};
use tally_pipeline::store::FileEntry;
use tally_sinks::parquet::destination::list_local_table;
use tally_sinks::parquet::layout::{quarantine_dir, wal_dir};
use tally_sinks::parquet::verify::{
    held, quarantine_held, verify_file, verify_rollup, FileProblem,
};
use tally_sinks::{Checkpoint, Destination};

use crate::cli::CheckArgs;

/// What the check found, by severity.
#[derive(Default)]
struct Findings {
    /// Damage: data that cannot be read, or whose checksum does not match.
    damage: Vec<String>,
    /// Files written before checksums: read, but not verifiable.
    unverified: Vec<String>,
    /// What `--repair` put right (copies restored, checksums given).
    repaired: Vec<String>,
    /// Worth knowing, not damage.
    notes: Vec<String>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let data = args.data;
    if !data.is_dir() {
        anyhow::bail!("data directory {} does not exist", data.display());
    }
    let state = args.state_dir.unwrap_or_else(|| data.clone());
    let mut found = Findings::default();
    // State files first: opening the quarantine (--repair) reads its reports.
    let states = check_state_files(&state)?;
    let quarantine = if args.repair {
        let dir = quarantine_dir(&state);
        Some(Arc::new(Quarantine::open(
            &dir,
            Arc::new(Metrics::default()),
        )?))
    } else {
        None
    };
    let copies = match &args.from {
        Some(from) => Some(Copies::parse(from)?),
        None => None,
    };
    for (path, what, verdict) in states {
        let rel = path.strip_prefix(&state).unwrap_or(&path).to_path_buf();
        match verdict {
            Err(e) => {
                if let Some(copies) = copies.as_ref().filter(|_| args.repair) {
                    if copies.restore_state_file(&path, &rel)? {
                        found.repaired.push(format!(
                            "{}: {what}: {e}; restored from {} (its checksum matches)",
                            path.display(),
                            copies.describe(&rel)
                        ));
                        continue;
                    }
                }
                found
                    .damage
                    .push(format!("{}: {what}: {e}", path.display()));
                // The damage reports are set aside by opening the quarantine.
                if let Some(q) = quarantine
                    .as_ref()
                    .filter(|_| !path.ends_with("quarantine/damage.json"))
                {
                    q.set_aside(
                        &path,
                        &format!(
                            "state/{}",
                            path.strip_prefix(tally_sinks::parquet::layout::state_dir(&state))
                                .unwrap_or(&rel)
                                .display()
                        ),
                        format!("{what}: {e}; moved aside by `tally check --repair`"),
                    );
                }
            }
            Ok(Verdict::Unverified) => {
                if args.repair {
                    let body = std::fs::read(&path)?;
                    if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                        state_file::replace(&path, &body)?;
                        found.repaired.push(format!(
                            "{}: {what} written before checksums; its checksum line was added",
                            path.display()
                        ));
                        continue;
                    }
                }
                found.unverified.push(format!(
                    "{}: {what} written before checksums",
                    path.display()
                ));
            }
            Ok(_) => {}
        }
    }

    let checkpoint = match Checkpoint::load(&state) {
        Ok(c) => {
            for p in &c.pending {
                let (tmp, fin) = (data.join(&p.tmp), data.join(&p.final_path));
                if !tmp.exists() && !fin.exists() {
                    found.damage.push(format!(
                        "{}: a pending rename lists {} → {}, and neither file exists. Do: restore the file from a backup; tally refuses to start until then.",
                        Checkpoint::path(&state).display(),
                        tmp.display(),
                        fin.display()
                    ));
                } else if tmp.exists() {
                    found.notes.push(format!(
                        "{}: an interrupted flush; the next start finishes it",
                        tmp.display()
                    ));
                }
            }
            c
        }
        Err(e) => {
            found.damage.push(format!(
                "{e}. Do: start tally (or `tally check --repair`): the checkpoint goes to quarantine and is rebuilt from the Parquet files' metadata"
            ));
            if let Some(q) = &quarantine {
                // What start-up does, without serving.
                let target = tally_sinks::FlushTarget {
                    data: data.clone(),
                    state: state.clone(),
                    destination: Arc::new(Destination::Local),
                    node: args
                        .node_id
                        .clone()
                        .unwrap_or_else(crate::config::default_node_id),
                    quarantine: Some(q.clone()),
                };
                let metrics = Arc::new(Metrics::default());
                let store = tally_pipeline::store::Store::new(usize::MAX);
                let dedup = tally_pipeline::dedup::Dedup::new(0, 1, metrics);
                tally_sinks::recover(&target, &store, &dedup)?;
            }
            Checkpoint::load(&state).unwrap_or_default()
        }
    };

    let wal_report = wal::replay(&wal_dir(&state), 0, |_, _| {})?;
    let quarantined_copy = |d: &SegmentDamage| {
        let name = d.path.file_name().unwrap_or_default();
        let copy = quarantine_dir(&state).join("wal").join(name);
        std::fs::metadata(&copy)
            .ok()
            .zip(std::fs::metadata(&d.path).ok())
            .is_some_and(|(a, b)| a.len() == b.len())
    };
    for d in &wal_report.damage {
        let line = format!(
            "{} offset {}: {} unreadable bytes, {} acknowledged entr{} lost ({})",
            d.path.display(),
            d.offset,
            d.bytes,
            d.lost_entries,
            if d.lost_entries == 1 { "y" } else { "ies" },
            d.detail
        );
        if quarantined_copy(d) {
            found.notes.push(format!(
                "{line}; already copied to quarantine, the readable entries are stored at the next start"
            ));
        } else {
            found.damage.push(format!(
                "{line}. Do: `tally check --repair` or start tally: the readable entries are kept and the segment is copied to {}",
                quarantine_dir(&state).join("wal").display()
            ));
        }
    }
    if let Some(q) = &quarantine {
        wal::quarantine_damage(&wal_report.damage, Some(q));
    }

    let mut files = 0usize;
    let mut rows = 0u64;
    // Files the server (or an earlier check) quarantined: back from a copy.
    if let (Some(q), Some(copies)) = (&quarantine, &copies) {
        for r in q.all() {
            let path = PathBuf::from(&r.path);
            if r.held.is_none() || path.exists() {
                continue;
            }
            let Ok(rel) = path.strip_prefix(&data) else {
                continue;
            };
            match copies.restore_data_file(&data, rel)? {
                true => {
                    q.resolved(&r.path)?;
                    found.repaired.push(format!(
                        "{}: restored from {} (checksum matches)",
                        path.display(),
                        copies.describe(rel)
                    ));
                }
                false => found.notes.push(format!(
                    "{}: in quarantine, and {} has no copy whose checksum matches",
                    path.display(),
                    copies.describe(rel)
                )),
            }
        }
    }
    let mut tables: Vec<(Dataset, &'static str, bool)> = Vec::new();
    for d in Dataset::ALL {
        tables.push((d, d.name(), false));
        for &table in tally_pipeline::rules::tables_of(d) {
            tables.push((d, table, true));
        }
    }
    for (d, table, rollup) in tables {
        let (listed, tmps) = list_local_table(&data, table)?;
        for t in tmps {
            found.notes.push(format!(
                "{}: a temporary file of an unfinished flush; the next start removes it",
                t.display()
            ));
        }
        for f in listed {
            let checked = if rollup {
                verify_rollup(&Destination::Local, &f.entry, true)
            } else {
                verify_file(&Destination::Local, &f.entry, d, true)
            };
            match checked {
                Ok(facts) => {
                    files += 1;
                    if !rollup {
                        rows += facts.rows;
                    }
                    if facts.unverified {
                        if args.repair {
                            let sealed = seal_data_file(&f.entry.path)?;
                            found.repaired.push(format!(
                                "{}: written before checksums; read whole and renamed {} with its checksum",
                                f.entry.path.display(),
                                sealed.display()
                            ));
                        } else {
                            found.unverified.push(format!(
                                "{}: {} file written before checksums (read whole: readable)",
                                f.entry.path.display(),
                                if rollup {
                                    table.to_string()
                                } else {
                                    format!("raw {table}")
                                }
                            ));
                        }
                    }
                }
                Err(problem) => {
                    let held = held(&Destination::Local, &f.entry, table, rollup);
                    let rel = f.entry.path.strip_prefix(&data).unwrap_or(&f.entry.path);
                    if let Some(copies) = copies.as_ref().filter(|_| args.repair) {
                        if copies.restore_data_file(&data, rel)? {
                            found.repaired.push(format!(
                                "{}: {}; restored from {} (checksum matches)",
                                f.entry.path.display(),
                                problem.detail,
                                copies.describe(rel)
                            ));
                            continue;
                        }
                    }
                    found.damage.push(describe(&f.entry.path, &held, &problem));
                    quarantine_held(
                        &Destination::Local,
                        &data,
                        quarantine.as_deref(),
                        &f.entry,
                        problem,
                        Some(held),
                    );
                }
            }
        }
    }

    // Read, not opened: without --repair the check changes nothing.
    let open: Vec<tally_pipeline::quarantine::Damage> =
        state_file::read(&quarantine_dir(&state).join("damage.json"))
            .ok()
            .flatten()
            .and_then(|(b, _)| {
                serde_json::from_slice::<Vec<tally_pipeline::quarantine::Damage>>(&b).ok()
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|d| !d.acknowledged)
            .collect();
    if !open.is_empty() {
        found.notes.push(format!(
            "{} damage report(s) in {} not acknowledged (POST /v1/damage/acknowledge on the server)",
            open.len(),
            quarantine_dir(&state).display()
        ));
    }

    for n in &found.notes {
        println!("note: {n}");
    }
    for u in &found.unverified {
        println!("unverified: {u}");
    }
    for r in &found.repaired {
        println!("repaired: {r}");
    }
    for d in &found.damage {
        println!("DAMAGE: {d}");
    }
    println!(
        "checked {} WAL segment(s) ({} entries readable, {} torn tail(s)), checkpoint at entry {}, {} Parquet file(s) with {} raw rows, {} unverified file(s)",
        wal_report.segments,
        wal_report.entries_replayed + wal_report.entries_left_to_log,
        wal_report.torn_frames,
        checkpoint.flushed_seq,
        files,
        rows,
        found.unverified.len()
    );
    if found.damage.is_empty() {
        println!("ok: no damage");
        Ok(ExitCode::SUCCESS)
    } else if args.repair {
        println!(
            "{} finding(s) repaired: damaged files moved to and WAL segments copied into {}",
            found.damage.len(),
            quarantine_dir(&state).display()
        );
        Ok(ExitCode::from(1))
    } else {
        println!(
            "{} finding(s) of damage; `tally check --repair` (or starting tally) salvages what can be read and quarantines the rest",
            found.damage.len()
        );
        Ok(ExitCode::from(1))
    }
}

fn describe(path: &Path, held: &FileHeld, p: &FileProblem) -> String {
    let what = match p.kind {
        tally_pipeline::quarantine::DamageKind::ForeignFile => {
            format!("not a {} file of tally's", held.table)
        }
        _ => format!(
            "{} {} file of hour {}, {}",
            held.role,
            held.table,
            held.hour.as_deref().unwrap_or("(unknown)"),
            match held.rows {
                Some(n) => format!("{n} rows"),
                None => "rows unknown (footer unreadable)".to_string(),
            }
        ),
    };
    let todo = if held.role == "rollup" {
        "`tally check --repair` (or start tally) moves it to quarantine and the rollup is built again from raw rows"
    } else {
        "`tally check --repair --from BACKUP` restores an intact copy; `tally check --repair` (or start tally) moves it to quarantine"
    };
    format!("{}: {what}: {}. Do: {todo}", path.display(), p.detail)
}

/// What each state file under `_tally/` holds.
fn state_kind(rel: &Path) -> Option<&'static str> {
    let name = rel.file_name()?.to_str()?;
    let parent = rel
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|p| p.to_str())
        .unwrap_or("");
    Some(match (parent, name) {
        ("_tally", "tokens.json") => "API tokens",
        ("_tally", "tokens_used.json") => "token last-use times",
        ("_tally", "usage_config.json") => "Usage API configuration",
        ("quarantine", "damage.json") => "damage reports",
        ("budgets", _) => "a budget",
        ("alerts", _) => "an alert's delivery state",
        _ => "a state file",
    })
}

/// Every state file under `<state>/_tally` (not the WAL, which has a CRC
/// per frame, nor quarantined copies, nor the checkpoint, checked above),
/// with what it holds and its checksum.
type StateFinding = (PathBuf, &'static str, Result<Verdict, String>);

fn check_state_files(state: &Path) -> anyhow::Result<Vec<StateFinding>> {
    let root = tally_sinks::parquet::layout::state_dir(state);
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let rel = path.strip_prefix(state).unwrap_or(&path).to_path_buf();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                let skip = path == wal_dir(state) || path.parent() == Some(&quarantine_dir(state));
                if !skip {
                    stack.push(path);
                }
                continue;
            }
            if name.ends_with(".tmp")
                || name.ends_with(".lock")
                || name.ends_with(".unreadable")
                || path == Checkpoint::path(state)
            {
                continue;
            }
            let Some(what) = state_kind(&rel) else {
                continue;
            };
            let verdict = match state_file::read(&path) {
                Ok(Some((_, v))) => Ok(v),
                Ok(None) => continue,
                Err(e @ StateFileError::Damaged { .. }) => Err(e.to_string()),
                Err(e) => return Err(e.into()),
            };
            out.push((path, what, verdict));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A file written before checksums, renamed to carry the checksum of its
/// bytes (it was read whole first).
fn seal_data_file(path: &Path) -> anyhow::Result<PathBuf> {
    let (crc, _) = checksum::file_crc(path, &mut |_| {})?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let to = path.with_file_name(checksum::sealed_name(name, crc));
    std::fs::rename(path, &to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(to)
}

/// Where intact copies of files are.
enum Copies {
    /// A backup of the data directory (same layout).
    Dir(PathBuf),
    /// A bucket (`s3://bucket/prefix`), laid out as the data directory.
    Object(Destination),
}

impl Copies {
    fn parse(from: &str) -> anyhow::Result<Self> {
        Ok(match Destination::parse(from)? {
            Some(d) => Copies::Object(d),
            None => {
                let dir = PathBuf::from(from);
                if !dir.is_dir() {
                    anyhow::bail!("--from {from}: no such directory");
                }
                Copies::Dir(dir)
            }
        })
    }

    fn describe(&self, rel: &Path) -> String {
        match self {
            Copies::Dir(d) => d.join(rel).display().to_string(),
            Copies::Object(d) => d.location(Path::new(""), rel).display().to_string(),
        }
    }

    fn get(&self, rel: &Path) -> Option<Vec<u8>> {
        match self {
            Copies::Dir(d) => std::fs::read(d.join(rel)).ok(),
            Copies::Object(d) => {
                let entry = FileEntry {
                    path: d.location(Path::new(""), rel),
                    rows: 0,
                    bytes: 0,
                };
                d.read(&entry).ok().map(|b| b.to_vec())
            }
        }
    }

    /// Puts the copy of the data file `rel` in place when its bytes match
    /// the checksum its name records.
    fn restore_data_file(&self, data: &Path, rel: &Path) -> anyhow::Result<bool> {
        let Some(bytes) = self.get(rel) else {
            return Ok(false);
        };
        if checksum::check_bytes(rel, &bytes) != Verdict::Verified {
            return Ok(false);
        }
        state_file::replace_raw(&data.join(rel), &bytes)?;
        Ok(true)
    }

    /// Puts the copy of a state file in place when its own checksum line
    /// matches its bytes.
    fn restore_state_file(&self, path: &Path, rel: &Path) -> anyhow::Result<bool> {
        let Some(bytes) = self.get(rel) else {
            return Ok(false);
        };
        if !matches!(checksum::open(&bytes), Ok((_, Verdict::Verified))) {
            return Ok(false);
        }
        state_file::replace_raw(path, &bytes)?;
        Ok(true)
    }
}
