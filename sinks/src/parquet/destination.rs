//! Where finished Parquet files go: the data directory itself, or an object
//! store (`s3://bucket/prefix`) with the data directory as local staging.
//!
//! A flush round always writes its files to the local data directory first
//! (temporary names, fsync'd). Finishing the round either renames them into
//! place ([`Destination::Local`]) or uploads them under the prefix and removes
//! the local copy ([`Destination::Object`]). Both are idempotent, so the
//! checkpoint's pending list completes the same way after a crash.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tally_pipeline::store::FileEntry;
use tally_pipeline::Dataset;
use url::Url;

use super::{io_err, SinkError};

impl AsRef<Path> for ListedFile {
    fn as_ref(&self) -> &Path {
        &self.entry.path
    }
}

/// A Parquet file found by a listing.
#[derive(Debug, Clone)]
pub struct ListedFile {
    pub entry: FileEntry,
    pub modified: SystemTime,
    /// For a compacted file, the names of the files it replaces (filled in
    /// when the file is admitted: it is in the footer).
    pub compacted_from: Vec<String>,
}

pub enum Destination {
    /// Files live in the data directory.
    Local,
    /// Files are uploaded under `prefix` of `store`; `bucket_url` is the
    /// store's root (`s3://bucket`), which queries register with DataFusion.
    Object {
        store: Arc<dyn ObjectStore>,
        bucket_url: Url,
        prefix: ObjectPath,
    },
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Local => f.write_str("Local"),
            Destination::Object {
                bucket_url, prefix, ..
            } => write!(f, "Object({bucket_url}{prefix})"),
        }
    }
}

impl Destination {
    /// `s3://bucket/prefix` → an S3-compatible store configured from the
    /// usual `AWS_*` variables (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for a
    /// non-AWS server); anything else is a local path.
    pub fn parse(location: &str) -> Result<Option<Self>, SinkError> {
        let Some(rest) = location.strip_prefix("s3://") else {
            return Ok(None);
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SinkError::Location(format!(
                "{location:?} names no bucket: expected s3://bucket/prefix"
            )));
        }
        // Each upload carries the SHA-256 of its bytes (`x-amz-checksum-sha256`),
        // which S3 verifies before it stores the object and keeps with it.
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .build()
            .map_err(|e| SinkError::Location(format!("{location}: {e}")))?;
        Ok(Some(Self::object(
            Arc::new(store),
            Url::parse(&format!("s3://{bucket}"))
                .map_err(|e| SinkError::Location(format!("{location}: {e}")))?,
            prefix.trim_matches('/'),
        )))
    }

    /// An object-store destination over any `ObjectStore`.
    pub fn object(store: Arc<dyn ObjectStore>, bucket_url: Url, prefix: &str) -> Self {
        Destination::Object {
            store,
            bucket_url,
            prefix: ObjectPath::from(prefix),
        }
    }

    /// The store and its root URL, for DataFusion; `None` when local.
    pub fn object_store(&self) -> Option<(Url, Arc<dyn ObjectStore>)> {
        match self {
            Destination::Local => None,
            Destination::Object {
                store, bucket_url, ..
            } => Some((bucket_url.clone(), store.clone())),
        }
    }

    fn key(prefix: &ObjectPath, rel: &Path) -> ObjectPath {
        let mut key = prefix.clone();
        for part in rel.iter() {
            key = key.join(part.to_string_lossy().as_ref());
        }
        key
    }

    /// Where a committed file is read from: a path, or an object URL.
    pub fn location(&self, data: &Path, rel: &Path) -> PathBuf {
        match self {
            Destination::Local => data.join(rel),
            Destination::Object {
                bucket_url, prefix, ..
            } => PathBuf::from(format!(
                "{}/{}",
                bucket_url.as_str().trim_end_matches('/'),
                Self::key(prefix, rel)
            )),
        }
    }

    /// Moves a finished temporary file (relative to `data`) to its final
    /// place: a rename (the caller fsyncs the directories), or an upload
    /// followed by removing the local copy. Runs on a blocking thread.
    pub fn finish(&self, data: &Path, tmp: &Path, rel: &Path) -> Result<(), SinkError> {
        let from = data.join(tmp);
        match self {
            Destination::Local => {
                let to = data.join(rel);
                fs::rename(&from, &to).map_err(io_err(&to))
            }
            Destination::Object { store, prefix, .. } => {
                let bytes = fs::read(&from).map_err(io_err(&from))?;
                let key = Self::key(prefix, rel);
                block_on(store.put(&key, PutPayload::from(bytes)))
                    .map_err(|e| SinkError::Object(format!("uploading {key}: {e}")))?;
                fs::remove_file(&from).map_err(io_err(&from))
            }
        }
    }

    /// Completes a pending move after a crash: `true` if it did something.
    pub fn complete(&self, data: &Path, tmp: &Path, rel: &Path) -> Result<bool, SinkError> {
        let from = data.join(tmp);
        if from.exists() {
            self.finish(data, tmp, rel)?;
            if let (Destination::Local, Some(dir)) = (self, data.join(rel).parent()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err(dir))?;
            }
            return Ok(true);
        }
        match self {
            Destination::Local if !data.join(rel).exists() => Err(SinkError::MissingPending {
                tmp: from,
                final_path: data.join(rel),
            }),
            // The upload finished before the local copy was removed.
            _ => Ok(false),
        }
    }

    /// The committed Parquet files of `dataset`, in path order.
    pub fn list(&self, data: &Path, dataset: Dataset) -> Result<Vec<ListedFile>, SinkError> {
        self.list_table(data, dataset.name())
    }

    /// The committed Parquet files under the top-level directory `table`
    /// (a dataset or a rollup table), in path order.
    pub fn list_table(&self, data: &Path, table: &str) -> Result<Vec<ListedFile>, SinkError> {
        match self {
            Destination::Local => {
                let (files, _) = list_local_table(data, table)?;
                Ok(files)
            }
            Destination::Object {
                store,
                bucket_url,
                prefix,
            } => {
                let root = prefix.clone().join(table);
                let metas: Vec<_> = block_on(store.list(Some(&root)).try_collect::<Vec<_>>())
                    .map_err(|e| SinkError::Object(format!("listing {root}: {e}")))?;
                let base = bucket_url.as_str().trim_end_matches('/').to_string();
                let mut files: Vec<ListedFile> = metas
                    .into_iter()
                    .filter(|m| {
                        m.location
                            .filename()
                            .is_some_and(|n| n.ends_with(".parquet") && !n.starts_with('.'))
                    })
                    .map(|m| ListedFile {
                        entry: FileEntry {
                            path: PathBuf::from(format!("{base}/{}", m.location)),
                            rows: 0,
                            bytes: m.size,
                        },
                        compacted_from: Vec::new(),
                        modified: SystemTime::UNIX_EPOCH
                            + Duration::from_millis(
                                m.last_modified.timestamp_millis().max(0) as u64
                            ),
                    })
                    .collect();
                files.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
                Ok(files)
            }
        }
    }

    /// Moves a committed file (a path or an object URL, as listed) into the
    /// quarantine: `<quarantine>/files/<relative path>` for a local file,
    /// `<prefix>/_tally/quarantine/<relative key>` on object storage.
    /// Returns where it is now.
    pub fn quarantine(
        &self,
        data: &Path,
        path: &Path,
        quarantine: &tally_pipeline::quarantine::Quarantine,
    ) -> Result<String, SinkError> {
        match self {
            Destination::Local => {
                let rel = path.strip_prefix(data).unwrap_or(path);
                let rel = Path::new("files").join(rel.strip_prefix("/").unwrap_or(rel));
                quarantine
                    .move_in(path, &rel)
                    .map(|p| p.display().to_string())
                    .map_err(io_err(path))
            }
            Destination::Object {
                store,
                bucket_url,
                prefix,
            } => {
                let url = path.to_string_lossy();
                let base = bucket_url.as_str().trim_end_matches('/');
                let key = ObjectPath::from(
                    url.strip_prefix(base)
                        .unwrap_or(&url)
                        .trim_start_matches('/'),
                );
                let rel: Vec<_> = key
                    .prefix_match(prefix)
                    .map(|parts| parts.collect())
                    .unwrap_or_default();
                let mut to = prefix.clone().join("_tally").join("quarantine");
                for part in rel {
                    to = to.join(part.as_ref());
                }
                block_on(store.rename(&key, &to))
                    .map_err(|e| SinkError::Object(format!("moving {key} to {to}: {e}")))?;
                Ok(format!("{base}/{to}"))
            }
        }
    }

    /// Deletes a committed file (a path or an object URL). A file that is
    /// already gone is not an error: deletes are repeated after a crash.
    pub fn delete(&self, path: &Path) -> Result<(), SinkError> {
        match self {
            Destination::Local => match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
                _ => Ok(()),
            },
            Destination::Object {
                store, bucket_url, ..
            } => {
                let key = object_key(bucket_url, path);
                match block_on(store.delete(&key)) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(SinkError::Object(format!("deleting {key}: {e}"))),
                }
            }
        }
    }

    /// The bytes of a listed file.
    pub fn read(&self, entry: &FileEntry) -> Result<Bytes, SinkError> {
        match self {
            Destination::Local => fs::read(&entry.path)
                .map(Bytes::from)
                .map_err(io_err(&entry.path)),
            Destination::Object {
                store, bucket_url, ..
            } => {
                let key = object_key(bucket_url, &entry.path);
                block_on(async { store.get(&key).await?.bytes().await })
                    .map_err(|e| SinkError::Object(format!("reading {key}: {e}")))
            }
        }
    }
}

/// The key of an object URL under the bucket's root.
fn object_key(bucket_url: &Url, path: &Path) -> ObjectPath {
    let url = path.to_string_lossy();
    let base = bucket_url.as_str().trim_end_matches('/');
    ObjectPath::from(
        url.strip_prefix(base)
            .unwrap_or(&url)
            .trim_start_matches('/'),
    )
}

/// Runs a future from synchronous code (flush rounds and start-up run on
/// `spawn_blocking`): on a helper thread of the current runtime, which is
/// allowed whatever thread the caller is on, or on a runtime of its own.
fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => std::thread::scope(|s| {
            s.spawn(|| handle.block_on(f))
                .join()
                .expect("object store call does not panic")
        }),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(f),
    }
}

/// Committed Parquet files of a dataset in the local data directory, in
/// path order, and hidden temporary files.
pub fn list_local(data: &Path, d: Dataset) -> Result<(Vec<ListedFile>, Vec<PathBuf>), SinkError> {
    list_local_table(data, d.name())
}

/// [`list_local`] for any top-level directory (a dataset or a rollup table).
pub fn list_local_table(
    data: &Path,
    table: &str,
) -> Result<(Vec<ListedFile>, Vec<PathBuf>), SinkError> {
    let mut files = Vec::new();
    let mut tmps = Vec::new();
    let root = data.join(table);
    if !root.exists() {
        return Ok((files, tmps));
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                stack.push(path);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                tmps.push(path);
            } else if name.ends_with(".parquet") {
                let meta = fs::metadata(&path).map_err(io_err(&path))?;
                files.push(ListedFile {
                    modified: meta.modified().map_err(io_err(&path))?,
                    entry: FileEntry {
                        path,
                        rows: 0,
                        bytes: meta.len(),
                    },
                    compacted_from: Vec::new(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    Ok((files, tmps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_local_move_completes_once_and_a_lost_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        std::fs::create_dir_all(data.join("d")).unwrap();
        std::fs::write(data.join("d/.f.parquet.tmp"), b"x").unwrap();
        let (tmp, fin) = (Path::new("d/.f.parquet.tmp"), Path::new("d/f.parquet"));
        let local = Destination::Local;
        assert!(local.complete(data, tmp, fin).unwrap());
        assert_eq!(std::fs::read(data.join(fin)).unwrap(), b"x");
        // Already done: nothing to do.
        assert!(!local.complete(data, tmp, fin).unwrap());
        let err = local
            .complete(data, Path::new("d/.g.tmp"), Path::new("d/g.parquet"))
            .unwrap_err();
        assert!(matches!(err, SinkError::MissingPending { .. }), "{err}");
    }

    #[test]
    fn object_locations_are_urls_under_the_prefix() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dest = Destination::object(store, Url::parse("s3://bkt").unwrap(), "tally/prod");
        assert_eq!(
            dest.location(
                Path::new("/ignored"),
                Path::new("usage_llm/date=2026-11-20/hour=10/a.parquet")
            ),
            PathBuf::from("s3://bkt/tally/prod/usage_llm/date=2026-11-20/hour=10/a.parquet")
        );
        assert!(matches!(
            Destination::parse("s3:///x"),
            Err(SinkError::Location(m)) if m.contains("names no bucket")
        ));
        assert!(Destination::parse("/var/lib/tally").unwrap().is_none());
    }

    #[test]
    fn uploads_list_and_read_back_through_the_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let dest = Destination::object(store, Url::parse("s3://bkt").unwrap(), "p");
        std::fs::create_dir_all(data.join("usage_llm/h")).unwrap();
        std::fs::write(data.join("usage_llm/h/.a.parquet.tmp"), b"abc").unwrap();
        dest.finish(
            data,
            Path::new("usage_llm/h/.a.parquet.tmp"),
            Path::new("usage_llm/h/a.parquet"),
        )
        .unwrap();
        assert!(!data.join("usage_llm/h/.a.parquet.tmp").exists());
        let listed = dest.list(data, Dataset::UsageLlm).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].entry.path,
            PathBuf::from("s3://bkt/p/usage_llm/h/a.parquet")
        );
        assert_eq!(
            dest.read(&listed[0].entry).unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(dest.list(data, Dataset::UsageTool).unwrap().is_empty());
    }
}
