//! How far each file was read and sent: a small JSON file, replaced
//! atomically after each acknowledged batch.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Path → its state.
    pub files: BTreeMap<String, FileState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileState {
    /// Bytes read and sent.
    pub offset: u64,
    /// What earlier lines said that later ones need (Codex: the session and
    /// the model).
    #[serde(default)]
    pub context: Value,
}

impl State {
    /// The state at `path`; none yet is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<State> {
        let unreadable = || {
            format!(
                "{} cannot be read; move it away to read every log again (the server drops repeats)",
                path.display()
            )
        };
        match tally_pipeline::state_file::read(path) {
            Ok(Some((bytes, _))) => serde_json::from_slice(&bytes).with_context(unreadable),
            Ok(None) => Ok(State::default()),
            Err(e @ tally_pipeline::state_file::StateFileError::Damaged { .. }) => {
                Err(e).with_context(unreadable)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn store(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(self)?;
        tally_pipeline::state_file::replace(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))
    }
}
