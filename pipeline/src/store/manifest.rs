//! The file manifest: the committed Parquet files of each dataset, and the
//! files a compaction retired (so a listing does not add them back).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::dataset::Dataset;

use super::{Chunk, FileEntry, Store};

impl Store {
    /// Makes files visible and takes out the chunks they hold, in one step.
    ///
    /// The chunks are returned rather than dropped here: freeing a round's
    /// records takes milliseconds, and under this lock the WAL writer (which
    /// buffers every acknowledged entry) would wait for it.
    #[must_use = "drop the chunks off the acknowledgement path"]
    pub fn commit_files(
        &self,
        dataset: Dataset,
        through_seq: u64,
        files: Vec<FileEntry>,
    ) -> Vec<Arc<Chunk>> {
        let mut taken = Vec::new();
        let mut s = self.state(dataset).lock();
        for f in files {
            if s.paths.insert(f.path.clone()) {
                s.files.push(f);
            }
        }
        while s.chunks.front().is_some_and(|c| c.seq <= through_seq) {
            let c = s.chunks.pop_front().expect("front checked");
            s.buffered_rows -= c.rows();
            s.buffered_bytes -= c.bytes;
            s.queued_rows = s.queued_rows.saturating_sub(c.rows());
            taken.push(c);
        }
        s.oldest = if s.chunks.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        taken
    }

    /// Registers files found on disk at start-up.
    pub fn add_existing_files(&self, dataset: Dataset, files: Vec<FileEntry>) {
        self.add_unknown_files(dataset, files);
    }

    /// The listed items whose files are neither registered nor retired.
    pub fn unknown_files<T>(&self, dataset: Dataset, listed: Vec<T>) -> Vec<T>
    where
        T: AsRef<std::path::Path>,
    {
        let s = self.state(dataset).lock();
        listed
            .into_iter()
            .filter(|f| {
                let p = f.as_ref();
                !s.paths.contains(p) && !s.retired.contains_key(p)
            })
            .collect()
    }

    /// Registers the files not registered yet and returns them: what a
    /// listing of the shared prefix found that other nodes wrote.
    pub fn add_unknown_files(&self, dataset: Dataset, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let mut s = self.state(dataset).lock();
        let mut added = Vec::new();
        for f in files {
            if !s.retired.contains_key(&f.path) && s.paths.insert(f.path.clone()) {
                added.push(f.clone());
                s.files.push(f);
            }
        }
        added
    }

    /// Swaps files in one step (a compaction: its inputs out, its output
    /// in), so a snapshot holds either the inputs or the output.
    pub fn replace_files(&self, dataset: Dataset, remove: &[PathBuf], add: Vec<FileEntry>) {
        let mut s = self.state(dataset).lock();
        if !remove.is_empty() {
            let gone: HashSet<&PathBuf> = remove.iter().collect();
            s.files.retain(|f| !gone.contains(&f.path));
        }
        let now = Instant::now();
        s.retired
            .retain(|_, at| now.duration_since(*at) < std::time::Duration::from_secs(600));
        for p in remove {
            s.paths.remove(p);
            s.retired.insert(p.clone(), now);
        }
        for f in add {
            if s.paths.insert(f.path.clone()) {
                s.files.push(f);
            }
        }
    }

    /// Takes files out of the manifest (moved to the quarantine).
    pub fn remove_files(&self, dataset: Dataset, paths: &[PathBuf]) {
        if paths.is_empty() {
            return;
        }
        let mut s = self.state(dataset).lock();
        s.files.retain(|f| !paths.contains(&f.path));
        for p in paths {
            s.paths.remove(p);
        }
    }
}
