//! API tokens on disk: `_tally/tokens.json` under the state directory holds
//! each token's name, role, tenants, creation time and the SHA-256 of its
//! secret (never the secret: `tally token create` prints that once).
//! `_tally/tokens_used.json` holds when each was last used; the server
//! writes it, so the two never race.
//!
//! Both are replaced atomically (a temporary file, fsync, rename). `create`
//! and `revoke` hold `_tally/tokens.lock` so two commands never lose each
//! other's change.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_pipeline::access::Role;

/// Every secret starts with this.
pub const PREFIX: &str = "tally_";
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} cannot be read: {detail}; fix it or move it aside (every token in it stops working)")]
    Unreadable { path: PathBuf, detail: String },
    #[error("a token named {0:?} exists; revoke it or choose another name")]
    Exists(String),
    #[error("no token is named {0:?} (`tally token list` shows them)")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    pub name: String,
    pub role: Role,
    /// Empty: every tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// `sha256:` and the hex digest of the secret.
    pub hash: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339, once revoked. Revoked tokens stay listed: that a token
    /// ever existed keeps authentication required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl StoredToken {
    /// The digest of the secret, when the stored hash is well formed.
    pub fn digest(&self) -> Option<[u8; 32]> {
        let hex = self.hash.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

/// `_tally/tokens.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub version: u32,
    pub tokens: Vec<StoredToken>,
}

pub fn tokens_path(state: &Path) -> PathBuf {
    tally_sinks::parquet::layout::state_dir(state).join("tokens.json")
}

pub fn used_path(state: &Path) -> PathBuf {
    tally_sinks::parquet::layout::state_dir(state).join("tokens_used.json")
}

impl TokenFile {
    /// The file's tokens; none when it does not exist.
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        match fs::read(path) {
            Ok(bytes) => TokenFile::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(e) => Err(io(path)(e)),
        }
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<TokenFile, TokenError> {
        // A damaged file is never half-trusted: start-up refuses it.
        let (bytes, _) =
            tally_pipeline::state_file::open_bytes(path, bytes.to_vec()).map_err(|e| {
                TokenError::Unreadable {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        let file: TokenFile =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Unreadable {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if let Some(t) = file.tokens.iter().find(|t| t.digest().is_none()) {
            return Err(TokenError::Unreadable {
                path: path.to_path_buf(),
                detail: format!("token {:?} has no valid sha256 hash", t.name),
            });
        }
        Ok(file)
    }
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    tally_pipeline::state_file::replace(path, bytes).map_err(io(path))
}

/// The SHA-256 of a secret. Secrets carry 256 random bits, so a fast hash
/// is enough: there is nothing to guess.
pub fn digest(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(secret.as_bytes()));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_secret() -> Result<String, TokenError> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| TokenError::Invalid(format!("no randomness from the system: {e}")))?;
    Ok(format!("{PREFIX}{}", hex(&bytes)))
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "--name must be 1 to 64 letters, digits, '.', '_' or '-', got {name:?}"
        )))
    }
}

fn check_tenant(t: &str) -> Result<(), TokenError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "--tenant must be 1 to 128 characters without spaces or commas, got {t:?}"
        )))
    }
}

/// Holds `_tally/tokens.lock` while it lives (closing the file unlocks).
struct Lock {
    _file: File,
}

impl Lock {
    fn take(state: &Path) -> Result<Lock, TokenError> {
        let path = tally_sinks::parquet::layout::state_dir(state).join("tokens.lock");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let f = File::create(&path).map_err(io(&path))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: f })
    }
}

/// Creates a token; returns its secret (shown once, stored nowhere).
pub fn create(
    state: &Path,
    name: &str,
    role: Role,
    tenants: &[String],
) -> Result<String, TokenError> {
    check_name(name)?;
    for t in tenants {
        check_tenant(t)?;
    }
    if role == Role::Admin && !tenants.is_empty() {
        return Err(TokenError::Invalid(
            "an admin token covers every tenant: give --tenant to ingest or read tokens".into(),
        ));
    }
    let _lock = Lock::take(state)?;
    let path = tokens_path(state);
    let mut file = TokenFile::load(&path)?;
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists(name.to_string()));
    }
    let secret = new_secret()?;
    let mut tenants = tenants.to_vec();
    tenants.sort();
    tenants.dedup();
    file.version = 1;
    file.tokens.push(StoredToken {
        name: name.to_string(),
        role,
        tenants,
        hash: format!("sha256:{}", hex(&digest(&secret))),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        revoked: None,
    });
    let bytes = serde_json::to_vec_pretty(&file).expect("tokens serialise");
    write_atomically(&path, &bytes)?;
    Ok(secret)
}

/// Revokes a token: a running server refuses it within two seconds.
pub fn revoke(state: &Path, name: &str) -> Result<(), TokenError> {
    let _lock = Lock::take(state)?;
    let path = tokens_path(state);
    let mut file = TokenFile::load(&path)?;
    let Some(t) = file
        .tokens
        .iter_mut()
        .find(|t| t.name == name && t.revoked.is_none())
    else {
        return Err(TokenError::NotFound(name.to_string()));
    };
    t.revoked = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let bytes = serde_json::to_vec_pretty(&file).expect("tokens serialise");
    write_atomically(&path, &bytes)
}

/// When each token was last used (Unix seconds), as the server last wrote.
pub fn last_used(state: &Path) -> BTreeMap<String, u64> {
    read_used(&used_path(state))
}

/// The last-use times in `path` (none when it cannot be read).
pub fn read_used(path: &Path) -> BTreeMap<String, u64> {
    tally_pipeline::state_file::read(path)
        .ok()
        .flatten()
        .and_then(|(b, _)| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_as_a_hash_and_revoked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let secret = create(s, "fleet", Role::Ingest, &["c2".into(), "c1".into()]).unwrap();
        assert!(secret.starts_with(PREFIX));
        assert_eq!(secret.len(), PREFIX.len() + 64);
        let text = fs::read_to_string(tokens_path(s)).unwrap();
        assert!(!text.contains(&secret[PREFIX.len()..]), "{text}");
        let file = TokenFile::load(&tokens_path(s)).unwrap();
        assert_eq!(file.tokens[0].tenants, ["c1", "c2"]);
        assert_eq!(file.tokens[0].digest(), Some(digest(&secret)));
        assert!(matches!(
            create(s, "fleet", Role::Read, &[]),
            Err(TokenError::Exists(_))
        ));
        let other = create(s, "ops", Role::Admin, &[]).unwrap();
        assert_ne!(other, secret);
        revoke(s, "fleet").unwrap();
        assert!(matches!(revoke(s, "fleet"), Err(TokenError::NotFound(_))));
        let file = TokenFile::load(&tokens_path(s)).unwrap();
        assert!(file.tokens[0].revoked.is_some());
        assert!(file.tokens[1].revoked.is_none());
    }

    #[test]
    fn bad_names_tenants_and_scoped_admins_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        let e = create(s, "a b", Role::Read, &[]).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        let e = create(s, "x", Role::Read, &["a,b".into()]).unwrap_err();
        assert!(e.to_string().contains("--tenant"), "{e}");
        let e = create(s, "x", Role::Admin, &["a".into()]).unwrap_err();
        assert!(e.to_string().contains("every tenant"), "{e}");
        fs::create_dir_all(tokens_path(s).parent().unwrap()).unwrap();
        fs::write(tokens_path(s), b"{not json").unwrap();
        let e = create(s, "x", Role::Read, &[]).unwrap_err();
        assert!(matches!(e, TokenError::Unreadable { .. }), "{e}");
    }
}
