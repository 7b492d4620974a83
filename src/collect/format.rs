//! What a log format is to the collector: a line in, a call or a reason
//! out, and who and where every event is from.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One log line's outcome.
pub enum Line {
    /// A model call. `id` groups the copies of a streamed message.
    Usage {
        id: String,
        event: Value,
    },
    Skip(&'static str),
}

/// Who and where, put into every event.
#[derive(Debug, Clone)]
pub struct Origin {
    pub user: String,
    pub machine: String,
    pub tenant: String,
}

/// A log format.
pub trait Format {
    fn name(&self) -> &'static str;
    fn default_dirs(&self) -> Vec<PathBuf>;
    /// Parses one line of `file`; `ctx` carries what earlier lines of the
    /// file said (Codex's session and model), kept in the state.
    fn parse(&self, line: &str, origin: &Origin, file: &Path, ctx: &mut Value) -> Line;
}

/// The user's home directory.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
