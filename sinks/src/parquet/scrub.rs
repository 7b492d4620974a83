//! The background scrub: every stored file (raw and rollup) is read once
//! per interval, no faster than a set rate, and checked against the
//! checksum its name records. What it finds is handled as a read finds it
//! (see [`FileDoctor`]): quarantined, reported (so `/health` turns
//! `degraded` and names the file), taken out of what queries read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_pipeline::checksum::{self, Verdict};
use tally_pipeline::metrics::Metrics;
use tally_pipeline::quarantine::DamageKind;
use tally_pipeline::store::FileEntry;
use tally_pipeline::Dataset;
use tokio::sync::watch;

use super::destination::Destination;
use super::verify::{verify_file, verify_rollup, FileDoctor, FileProblem};

#[derive(Debug, Clone, Copy)]
pub struct ScrubPolicy {
    /// One pass over every file per interval; zero turns the scrub off.
    pub interval: Duration,
    pub bytes_per_second: f64,
}

/// What one pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    pub files: u64,
    pub bytes: u64,
    pub damaged: u64,
    /// Files without a checksum (an older release wrote them): decoded
    /// whole instead.
    pub unverified: u64,
}

pub struct Scrub {
    doctor: Arc<FileDoctor>,
    metrics: Arc<Metrics>,
    policy: ScrubPolicy,
}

/// Holds a reader to a rate: after each block, sleeps until the bytes read
/// so far could have been read at the rate.
struct Pace {
    started: Instant,
    bytes: u64,
    rate: f64,
}

impl Pace {
    fn take(&mut self, n: usize) {
        self.bytes += n as u64;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

enum Found {
    Good { bytes: u64, unverified: bool },
    Gone,
    Damaged(FileProblem),
}

impl Scrub {
    pub fn new(doctor: Arc<FileDoctor>, metrics: Arc<Metrics>, policy: ScrubPolicy) -> Self {
        Self {
            doctor,
            metrics,
            policy,
        }
    }

    /// Reads one file at the pace.
    fn read(&self, entry: &FileEntry, rollup: bool, pace: &mut Pace) -> Found {
        let dest = &*self.doctor.destination;
        let damaged = |detail: String| {
            Found::Damaged(FileProblem {
                kind: DamageKind::ParquetFile,
                detail,
            })
        };
        let verdict = match dest {
            Destination::Local => match checksum::file_crc(&entry.path, &mut |n| pace.take(n)) {
                Ok((crc, bytes)) => (Verdict::of(checksum::recorded(&entry.path), crc), bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Gone,
                Err(e) => return damaged(format!("reading: {e}")),
            },
            Destination::Object { .. } => match dest.read(entry) {
                Ok(b) => {
                    pace.take(b.len());
                    (checksum::check_bytes(&entry.path, &b), b.len() as u64)
                }
                Err(e) if e.to_string().contains("not found") => return Found::Gone,
                Err(e) => return damaged(e.to_string()),
            },
        };
        match verdict {
            (Verdict::Mismatch { .. }, _) => damaged(verdict.0.to_string()),
            (Verdict::Verified, bytes) => Found::Good {
                bytes,
                unverified: false,
            },
            // No checksum: what can be checked is that it decodes whole.
            (Verdict::Unverified, bytes) => {
                let d = dataset_of(&entry.path);
                let checked = match (rollup, d) {
                    (true, _) => verify_rollup(dest, entry, true).map(|_| ()),
                    (false, Some(d)) => verify_file(dest, entry, d, true).map(|_| ()),
                    (false, None) => Ok(()),
                };
                match checked {
                    Ok(()) => Found::Good {
                        bytes,
                        unverified: true,
                    },
                    Err(p) => Found::Damaged(p),
                }
            }
        }
    }

    /// One pass over every file the store and the rollups list now.
    pub fn pass_blocking(&self) -> ScrubReport {
        let started = Instant::now();
        let mut pace = Pace {
            started,
            bytes: 0,
            rate: self.policy.bytes_per_second,
        };
        let mut report = ScrubReport::default();
        let tally = |found: &Found, report: &mut ScrubReport| match found {
            Found::Good { bytes, unverified } => {
                report.files += 1;
                report.bytes += bytes;
                report.unverified += u64::from(*unverified);
                self.metrics.scrub_files.add(1);
                self.metrics.scrub_bytes.add(*bytes);
            }
            Found::Damaged(_) => {
                report.files += 1;
                report.damaged += 1;
                self.metrics.scrub_files.add(1);
                self.metrics.scrub_damaged.add(1);
            }
            Found::Gone => {}
        };
        for d in Dataset::ALL {
            for f in self.doctor.store.snapshot(d).files {
                let found = self.read(&f, false, &mut pace);
                tally(&found, &mut report);
                if let Found::Damaged(p) = found {
                    self.doctor.raw_damaged(d, &f, p);
                }
            }
            for (hour, rolled) in self.doctor.rollups.range(d, i64::MIN, i64::MAX) {
                for f in rolled.tables.values() {
                    let found = self.read(f, true, &mut pace);
                    tally(&found, &mut report);
                    if let Found::Damaged(p) = found {
                        self.doctor.rollup_damaged(d, hour, f, p);
                        break;
                    }
                }
            }
            for (day, rolled) in self.doctor.rollups.days(d) {
                for f in rolled.tables.values() {
                    let found = self.read(f, true, &mut pace);
                    tally(&found, &mut report);
                    if let Found::Damaged(p) = found {
                        self.doctor.day_damaged(d, day, f, p);
                        break;
                    }
                }
            }
        }
        self.doctor.forget_gone();
        self.metrics.scrub_passes.add(1);
        self.metrics
            .scrub_last_pass_end
            .set(tally_pipeline::clock::now_secs().max(0) as u64);
        self.metrics
            .scrub_last_pass_ms
            .set(started.elapsed().as_millis() as u64);
        tracing::info!(
            files = report.files,
            bytes = report.bytes,
            damaged = report.damaged,
            unverified = report.unverified,
            seconds = started.elapsed().as_secs_f64(),
            "scrub pass"
        );
        report
    }

    /// A pass each interval (the first one interval after start-up, or a
    /// minute when that is sooner), until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.policy.interval;
        if interval.is_zero() {
            return;
        }
        let mut next = Instant::now() + interval.min(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            next = Instant::now() + interval;
            let this = self.clone();
            tally_pipeline::background::run("tally-scrub", move || this.pass_blocking()).await;
        }
    }
}

/// The dataset of a raw file's path.
fn dataset_of(path: &std::path::Path) -> Option<Dataset> {
    let name = super::layout::table_of(path)?;
    Dataset::ALL.iter().copied().find(|d| d.name() == name)
}
