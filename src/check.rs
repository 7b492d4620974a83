//! `tally check [--data DIR] [--state-dir DIR] [--repair]`: verifies every WAL
//! frame, the checkpoint and every Parquet file of a data directory offline;
//! `--repair` salvages and quarantines as start-up does, without serving.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::wal::{self, SegmentDamage};
use tally_pipeline::Dataset;
use tally_sinks::parquet::destination::list_local;
use tally_sinks::parquet::layout::{quarantine_dir, wal_dir};
use tally_sinks::parquet::verify::{quarantine_file, verify_file, FileProblem};
use tally_sinks::{Checkpoint, Destination};

use crate::cli::CheckArgs;

/// What the check found, by severity.
#[derive(Default)]
struct Findings {
    /// Damage: data that cannot be read.
    damage: Vec<String>,
    /// Worth knowing, not damage.
    notes: Vec<String>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let data = args.data;
    if !data.is_dir() {
        anyhow::bail!("data directory {} does not exist", data.display());
    }
    let state = args.state_dir.unwrap_or_else(|| data.clone());
    let quarantine = if args.repair {
        let dir = quarantine_dir(&state);
        Some(Arc::new(Quarantine::open(
            &dir,
            Arc::new(Metrics::default()),
        )?))
    } else {
        None
    };
    let mut found = Findings::default();

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
    for d in Dataset::ALL {
        let (listed, tmps) = list_local(&data, d)?;
        for t in tmps {
            found.notes.push(format!(
                "{}: a temporary file of an unfinished flush; the next start removes it",
                t.display()
            ));
        }
        for f in listed {
            match verify_file(&Destination::Local, &f.entry, d, true) {
                Ok(facts) => {
                    files += 1;
                    rows += facts.rows;
                }
                Err(problem) => {
                    found.damage.push(describe(&f.entry.path, d, &problem));
                    quarantine_file(
                        &Destination::Local,
                        &data,
                        quarantine.as_deref(),
                        &f.entry,
                        problem,
                    );
                }
            }
        }
    }

    // Read, not opened: without --repair the check changes nothing.
    let open: Vec<tally_pipeline::quarantine::Damage> =
        std::fs::read(quarantine_dir(&state).join("damage.json"))
            .ok()
            .and_then(|b| {
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
    for d in &found.damage {
        println!("DAMAGE: {d}");
    }
    println!(
        "checked {} WAL segment(s) ({} entries readable, {} torn tail(s)), checkpoint at entry {}, {} Parquet file(s) with {} rows",
        wal_report.segments,
        wal_report.entries_replayed + wal_report.entries_left_to_log,
        wal_report.torn_frames,
        checkpoint.flushed_seq,
        files,
        rows
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

fn describe(path: &Path, d: Dataset, p: &FileProblem) -> String {
    let what = match p.kind {
        tally_pipeline::quarantine::DamageKind::ForeignFile => {
            format!("not a {d} file of tally's")
        }
        _ => format!("an unreadable {d} file"),
    };
    format!(
        "{}: {what}: {}. Do: `tally check --repair` (or start tally) moves it to quarantine; restore it from a backup if you have one",
        path.display(),
        p.detail
    )
}
