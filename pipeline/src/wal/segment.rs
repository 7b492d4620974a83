//! WAL segment files: `<first-seq>.wal`, a sequence of framed entries.
//!
//! Frame: `u32 payload length`, `u32 crc32 of (seq ‖ payload)`, `u64 seq`,
//! payload (see `codec`). A torn or corrupt frame ends the segment: it was
//! never acknowledged, because acknowledgement waits for the fsync that
//! follows a whole frame.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const HEADER_LEN: usize = 16;
/// A frame larger than this is corruption, not data.
const MAX_PAYLOAD: u32 = 1 << 30;

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// Segments in the directory, by first sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(seq) = stem.parse::<u64>() {
                out.push((seq, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The whole frames of a segment, and whether it ended in a torn frame.
pub struct SegmentContents {
    pub frames: Vec<(u64, Vec<u8>)>,
    pub torn_at: Option<u64>,
}

pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let mut frames = Vec::new();
    let mut pos = 0usize;
    let mut torn_at = None;
    while pos < buf.len() {
        let Some(header) = buf.get(pos..pos + HEADER_LEN) else {
            torn_at = Some(pos as u64);
            break;
        };
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let start = pos + HEADER_LEN;
        let payload = (len <= MAX_PAYLOAD)
            .then(|| buf.get(start..start + len as usize))
            .flatten();
        let Some(payload) = payload else {
            torn_at = Some(pos as u64);
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            torn_at = Some(pos as u64);
            break;
        }
        frames.push((seq, payload.to_vec()));
        pos = start + len as usize;
    }
    Ok(SegmentContents { frames, torn_at })
}

/// fsync a directory so that a create, rename or delete in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn torn_tail_is_detected_and_whole_frames_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 7);
        let mut bytes = Vec::new();
        encode_frame(7, b"hello", &mut bytes);
        encode_frame(8, b"world", &mut bytes);
        let whole = bytes.len();
        encode_frame(9, b"torn!", &mut bytes);
        let mut f = File::create(&path).unwrap();
        f.write_all(&bytes[..bytes.len() - 2]).unwrap();
        let c = read_segment(&path).unwrap();
        assert_eq!(
            c.frames,
            vec![(7, b"hello".to_vec()), (8, b"world".to_vec())]
        );
        assert_eq!(c.torn_at, Some(whole as u64));
        assert_eq!(list_segments(dir.path()).unwrap(), vec![(7, path)]);
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = Vec::new();
        encode_frame(1, b"payload", &mut bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let c = read_segment(&path).unwrap();
        assert!(c.frames.is_empty());
        assert_eq!(c.torn_at, Some(0));
    }
}
