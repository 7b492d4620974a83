//! Checksums of every file tally writes and later trusts.
//!
//! - **Parquet files** (raw, compacted, rollups) carry the CRC-32 of all of
//!   their bytes in their name: `<name>.crc32-1a2b3c4d.parquet`. The name is
//!   recorded outside the file's bytes, it is set by the same rename (or
//!   upload) that commits the file, and it travels with the file to a backup
//!   or a bucket, so a copy can be checked against it.
//! - **State files** (checkpoint, tokens, budgets, alert deliveries, the
//!   Usage API configuration, damage reports) end with a line
//!   `#tally-crc32 1a2b3c4d`: the CRC-32 of the bytes before it.
//!
//! CRC-32 finds every error of up to 32 bits in a row, so every flipped
//! byte. A file written before checksums (no suffix, no trailer) is still
//! read, and reported as *unverified*.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// The CRC-32 (IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

const NAME_MARK: &str = ".crc32-";

/// `x.parquet` → `x.crc32-1a2b3c4d.parquet`.
pub fn sealed_name(name: &str, crc: u32) -> String {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s, format!(".{e}")),
        None => (name, String::new()),
    };
    format!("{stem}{NAME_MARK}{crc:08x}{ext}")
}

/// A file name without its checksum, and the checksum (`None` for a name
/// written before checksums).
pub fn split_name(name: &str) -> (String, Option<u32>) {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s, format!(".{e}")),
        None => (name, String::new()),
    };
    if let Some((base, hex)) = stem.rsplit_once(NAME_MARK) {
        if hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(crc) = u32::from_str_radix(hex, 16) {
                return (format!("{base}{ext}"), Some(crc));
            }
        }
    }
    (name.to_string(), None)
}

/// The checksum a path's name records.
pub fn recorded(path: &Path) -> Option<u32> {
    split_name(&path.file_name()?.to_string_lossy()).1
}

/// What checking a file's bytes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes match the recorded checksum.
    Verified,
    /// Nothing recorded: a file of a release before checksums.
    Unverified,
    /// The bytes do not match.
    Mismatch { recorded: u32, found: u32 },
}

impl Verdict {
    pub fn of(recorded: Option<u32>, found: u32) -> Self {
        match recorded {
            None => Verdict::Unverified,
            Some(r) if r == found => Verdict::Verified,
            Some(r) => Verdict::Mismatch { recorded: r, found },
        }
    }

    pub fn is_damage(&self) -> bool {
        matches!(self, Verdict::Mismatch { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified => f.write_str("checksum verified"),
            Verdict::Unverified => f.write_str("no checksum recorded (unverified)"),
            Verdict::Mismatch { recorded, found } => write!(
                f,
                "checksum mismatch: crc32 {recorded:08x} recorded, {found:08x} read"
            ),
        }
    }
}

/// Checks `bytes` against the checksum in `path`'s name.
pub fn check_bytes(path: &Path, bytes: &[u8]) -> Verdict {
    Verdict::of(recorded(path), crc32(bytes))
}

/// The CRC-32 of a file's bytes, read in blocks; `pace` is called with the
/// bytes of each block (a scrub sleeps in it).
pub fn file_crc(path: &Path, pace: &mut dyn FnMut(usize)) -> io::Result<(u32, u64)> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        pace(n);
    }
    Ok((h.finalize(), total))
}

/// Checks a local file against the checksum in its name.
pub fn check_file(path: &Path) -> io::Result<Verdict> {
    if recorded(path).is_none() {
        return Ok(Verdict::Unverified);
    }
    let (crc, _) = file_crc(path, &mut |_| {})?;
    Ok(Verdict::of(recorded(path), crc))
}

/// A writer that keeps the CRC-32 of what went through it.
pub struct Crc32Writer<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Crc32Writer<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    /// The writer, and the checksum and length of everything written.
    pub fn finish(self) -> (W, u32, u64) {
        (self.inner, self.hasher.finalize(), self.bytes)
    }
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const TRAILER: &[u8] = b"\n#tally-crc32 ";

/// A state file's bytes with their checksum line appended.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + TRAILER.len() + 9);
    out.extend_from_slice(body);
    out.extend_from_slice(TRAILER);
    out.extend_from_slice(format!("{:08x}\n", crc32(body)).as_bytes());
    out
}

/// A state file whose checksum line does not match its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{verdict}")]
pub struct Damaged {
    pub verdict: Verdict,
}

/// A state file's body, checked: `Ok((body, Verified))`, `Ok((bytes,
/// Unverified))` for a file without a checksum line, or the mismatch.
pub fn open(bytes: &[u8]) -> Result<(&[u8], Verdict), Damaged> {
    let tail = TRAILER.len() + 9;
    if bytes.len() >= tail && bytes.ends_with(b"\n") {
        let (body, trailer) = bytes.split_at(bytes.len() - tail);
        if let Some(hex) = trailer.strip_prefix(TRAILER) {
            let hex = &hex[..8];
            let recorded = std::str::from_utf8(hex)
                .ok()
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u32::from_str_radix(h, 16).ok());
            let found = crc32(body);
            return match recorded {
                Some(r) if r == found => Ok((body, Verdict::Verified)),
                Some(r) => Err(Damaged {
                    verdict: Verdict::Mismatch { recorded: r, found },
                }),
                // The checksum line itself is damaged.
                None => Err(Damaged {
                    verdict: Verdict::Mismatch { recorded: 0, found },
                }),
            };
        }
    }
    // A checksum line with one byte of its mark damaged (a file of an
    // older release does not end in 13 of these 14 bytes by chance).
    if bytes.len() >= tail {
        let cand = &bytes[bytes.len() - tail..];
        let off = cand[..TRAILER.len()]
            .iter()
            .zip(TRAILER)
            .filter(|(a, b)| a != b)
            .count()
            + usize::from(cand[tail - 1] != b'\n');
        if off <= 1 {
            return Err(Damaged {
                verdict: Verdict::Mismatch {
                    recorded: 0,
                    found: crc32(&bytes[..bytes.len() - tail]),
                },
            });
        }
    }
    Ok((bytes, Verdict::Unverified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_checksum_and_older_names_none() {
        let n = sealed_name("w-00000000000000000007-abc.parquet", 0x1a2b_3c4d);
        assert_eq!(n, "w-00000000000000000007-abc.crc32-1a2b3c4d.parquet");
        assert_eq!(
            split_name(&n),
            (
                "w-00000000000000000007-abc.parquet".to_string(),
                Some(0x1a2b_3c4d)
            )
        );
        assert_eq!(split_name("x.parquet"), ("x.parquet".to_string(), None));
        assert_eq!(split_name("x.crc32-zz.parquet").1, None);
        let p = Path::new("/d/x.crc32-00000001.parquet");
        assert_eq!(recorded(p), Some(1));
    }

    #[test]
    fn every_flipped_byte_of_a_sealed_state_file_is_found() {
        let body = br#"{"tokens":[{"name":"a","hash":"0123"}]}"#;
        let sealed = seal(body);
        assert_eq!(open(&sealed).unwrap(), (&body[..], Verdict::Verified));
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                match open(&bad) {
                    Err(_) => {}
                    // Only a file that no longer has a checksum line at all
                    // may come back unverified, and then it is not the body.
                    Ok((got, v)) => panic!("flip at {i} ({bit:#x}) read as {v:?}: {got:?}"),
                }
            }
        }
        // A file of a release before checksums is read, unverified.
        assert_eq!(open(body).unwrap(), (&body[..], Verdict::Unverified));
    }

    #[test]
    fn a_writer_keeps_the_crc_of_what_it_wrote() {
        let mut w = Crc32Writer::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (buf, crc, n) = w.finish();
        assert_eq!(buf, b"hello world");
        assert_eq!(n, 11);
        // An independent CRC-32 (bitwise, polynomial 0xEDB88320).
        let mut c = !0u32;
        for &b in b"hello world" {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        assert_eq!(crc, !c);
    }
}
