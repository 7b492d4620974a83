//! Meters kept: those of the config file (`[[meters]]`, unchanged by the
//! API) and those an admin token creates through the API, one state file
//! each under `_tally/meters/`, written durably before the API answers.
//! Every meter is defined for every tenant. The routes
//! (`tally_queries::api_v1::meters`) reach them through `MeterBook`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_pipeline::component::{Component, Context, Handle};
use tally_pipeline::quarantine::Quarantine;
use tally_pipeline::rules::meter::{Meter, MeterDef};
use tally_queries::api_v1::meters::{MeterBook, MeterError, MeterUpdate, StoredMeter};

/// A meter's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeterFile {
    id: String,
    created_at: i64,
    updated_at: i64,
    meter: MeterDef,
}

/// The meters of every tenant.
pub struct Meters {
    dir: PathBuf,
    /// From the config file, by slug.
    configured: BTreeMap<String, Arc<StoredMeter>>,
    /// From the API, by slug.
    created: RwLock<BTreeMap<String, Arc<StoredMeter>>>,
    /// One change at a time: the check for a slug and the write are one step.
    changing: tokio::sync::Mutex<()>,
}

/// The meters component: loads the config file's meters and the stored
/// ones. It runs nothing of its own.
pub struct MeterJob {
    pub dir: PathBuf,
    pub configured: Vec<MeterDef>,
    pub quarantine: Arc<Quarantine>,
}

/// A meter of the config file that does not hold.
#[derive(Debug, thiserror::Error)]
pub enum MeterConfigError {
    #[error("[[meters]] {slug:?}: {}", errors.join("; "))]
    Invalid { slug: String, errors: Vec<String> },
    #[error("[[meters]]: the slug {0:?} is defined twice")]
    Twice(String),
    #[error("loading the meters: {0}")]
    State(#[from] std::io::Error),
}

#[async_trait]
impl Component for MeterJob {
    const NAME: &'static str = "meters";
    type Running = Arc<Meters>;
    type Error = MeterConfigError;

    async fn start(self, _ctx: &Context) -> Result<(Handle, Arc<Meters>), MeterConfigError> {
        let meters = Meters::open(self.dir, self.configured, &self.quarantine)?;
        Ok((Handle::Idle, Arc::new(meters)))
    }
}

/// A ULID (48 bits of milliseconds, 80 random bits), as OpenMeter's ids.
fn ulid(now_ns: i64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = (now_ns / 1_000_000).max(0) as u128 & ((1 << 48) - 1);
    let random = uuid::Uuid::new_v4().as_u128() & ((1 << 80) - 1);
    let mut n = (ms << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A slug is a file name as it is (lowercase letters, digits, underscores).
fn file_of(dir: &Path, slug: &str) -> PathBuf {
    dir.join(format!("{slug}.json"))
}

impl Meters {
    pub fn open(
        dir: PathBuf,
        configured: Vec<MeterDef>,
        quarantine: &Quarantine,
    ) -> Result<Meters, MeterConfigError> {
        let now = tally_pipeline::now_ns();
        let mut by_slug = BTreeMap::new();
        for def in configured {
            let slug = def.slug.clone();
            let meter = Meter::check(def).map_err(|errors| MeterConfigError::Invalid {
                slug: slug.clone(),
                errors,
            })?;
            // A configured meter's id is its slug's: stable across restarts.
            let digest = Sha256::digest(slug.as_bytes());
            let seed = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
            let id = ulid_from(seed);
            let stored = StoredMeter {
                id,
                meter,
                created_at: now,
                updated_at: now,
                from_config: true,
            };
            if by_slug.insert(slug.clone(), Arc::new(stored)).is_some() {
                return Err(MeterConfigError::Twice(slug));
            }
        }
        let mut created = BTreeMap::new();
        for (path, read) in tally_pipeline::state_file::load_all::<MeterFile>(&dir)? {
            let checked = read.map_err(|e| e.to_string()).and_then(|f| {
                Meter::check(f.meter.clone())
                    .map(|m| (f, m))
                    .map_err(|e| e.join("; "))
            });
            match checked {
                Ok((f, meter)) => {
                    created.insert(
                        meter.def.slug.clone(),
                        Arc::new(StoredMeter {
                            id: f.id,
                            meter,
                            created_at: f.created_at,
                            updated_at: f.updated_at,
                            from_config: false,
                        }),
                    );
                }
                Err(e) => quarantine.set_aside(
                    &path,
                    &format!("state/meters/{}", tally_pipeline::rollup::file_name(&path)),
                    format!("a meter cannot be read ({e}); it is not served until created again"),
                ),
            }
        }
        tracing::info!(
            configured = by_slug.len(),
            created = created.len(),
            "meters loaded"
        );
        Ok(Meters {
            dir,
            configured: by_slug,
            created: RwLock::new(created),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    fn find(&self, id_or_slug: &str) -> Option<Arc<StoredMeter>> {
        let created = self.created.read();
        let by_slug = self
            .configured
            .get(id_or_slug)
            .or_else(|| created.get(id_or_slug));
        by_slug
            .or_else(|| self.configured.values().find(|m| m.id == id_or_slug))
            .or_else(|| created.values().find(|m| m.id == id_or_slug))
            .cloned()
    }

    async fn write(&self, s: &StoredMeter) -> Result<(), MeterError> {
        let file = MeterFile {
            id: s.id.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
            meter: s.meter.def.clone(),
        };
        let path = file_of(&self.dir, &s.meter.def.slug);
        let bytes = serde_json::to_vec_pretty(&file).expect("a meter serialises");
        tokio::task::spawn_blocking(move || tally_pipeline::state_file::replace(&path, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        Ok(())
    }
}

/// The meters created through the API, as stored under `dir`, read only
/// (for `tally sql` beside a server): those that cannot be read are left
/// out, and named in the second list.
pub fn stored_meters(dir: &Path) -> std::io::Result<(Vec<Meter>, Vec<String>)> {
    let mut meters = Vec::new();
    let mut unreadable = Vec::new();
    if !dir.is_dir() {
        return Ok((meters, unreadable));
    }
    for (path, read) in tally_pipeline::state_file::load_all::<MeterFile>(dir)? {
        match read
            .map_err(|e| e.to_string())
            .and_then(|f| Meter::check(f.meter).map_err(|e| e.join("; ")))
        {
            Ok(m) => meters.push(m),
            Err(e) => unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((meters, unreadable))
}

fn ulid_from(bits: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut n = bits;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl MeterBook for Meters {
    fn list(&self) -> Vec<Arc<StoredMeter>> {
        let mut all: Vec<Arc<StoredMeter>> = self.configured.values().cloned().collect();
        all.extend(self.created.read().values().cloned());
        all.sort_by(|a, b| a.meter.def.slug.cmp(&b.meter.def.slug));
        all
    }

    fn get(&self, id_or_slug: &str) -> Option<Arc<StoredMeter>> {
        self.find(id_or_slug)
    }

    async fn create(&self, meter: Meter) -> Result<Arc<StoredMeter>, MeterError> {
        let _one = self.changing.lock().await;
        let slug = meter.def.slug.clone();
        if self.find(&slug).is_some() {
            return Err(MeterError::Exists(slug));
        }
        let now = tally_pipeline::now_ns();
        let stored = StoredMeter {
            id: ulid(now),
            meter,
            created_at: now,
            updated_at: now,
            from_config: false,
        };
        self.write(&stored).await?;
        let stored = Arc::new(stored);
        self.created.write().insert(slug, stored.clone());
        Ok(stored)
    }

    async fn update(
        &self,
        id_or_slug: &str,
        update: MeterUpdate,
    ) -> Result<Option<Arc<StoredMeter>>, MeterError> {
        let _one = self.changing.lock().await;
        let Some(old) = self.find(id_or_slug) else {
            return Ok(None);
        };
        if old.from_config {
            return Err(MeterError::FromConfig(old.meter.def.slug.clone()));
        }
        let mut def = old.meter.def.clone();
        if update.name.is_some() {
            def.name = update.name;
        }
        if update.description.is_some() {
            def.description = update.description;
        }
        if let Some(g) = update.group_by {
            def.group_by = g;
        }
        let meter = Meter::check(def).map_err(MeterError::Invalid)?;
        let stored = StoredMeter {
            id: old.id.clone(),
            meter,
            created_at: old.created_at,
            updated_at: tally_pipeline::now_ns(),
            from_config: false,
        };
        self.write(&stored).await?;
        let stored = Arc::new(stored);
        self.created
            .write()
            .insert(stored.meter.def.slug.clone(), stored.clone());
        Ok(Some(stored))
    }

    async fn delete(&self, id_or_slug: &str) -> Result<bool, MeterError> {
        let _one = self.changing.lock().await;
        let Some(old) = self.find(id_or_slug) else {
            return Ok(false);
        };
        if old.from_config {
            return Err(MeterError::FromConfig(old.meter.def.slug.clone()));
        }
        let slug = old.meter.def.slug.clone();
        let path = file_of(&self.dir, &slug);
        tokio::task::spawn_blocking(move || tally_pipeline::state_file::remove(&path))
            .await
            .map_err(std::io::Error::other)??;
        self.created.write().remove(&slug);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ulids() {
        let id = ulid(1_765_000_000_000_000_000);
        assert_eq!(id.len(), 26);
        assert!(id.chars().next().unwrap() <= '7');
        assert!(id
            .chars()
            .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
        assert_ne!(ulid(0), ulid(0));
        let fixed = ulid_from(u128::MAX);
        assert_eq!(fixed.len(), 26);
        assert!(fixed.starts_with('7'));
    }
}
