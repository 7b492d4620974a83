//! WAL segment files: `<first-seq>.wal`, a sequence of framed entries.
//!
//! Frame: `u32 payload length`, `u32 crc32 of (seq ‖ payload)`, `u64 seq`,
//! payload (see `codec`). Acknowledgement waits for the fsync that follows a
//! whole frame, so only the end of a segment may hold a torn frame; a bad
//! frame followed by good ones is damage (see [`parse_segment`]).

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
    crc.update(payload);
    encode_frame_with_crc(seq, payload, &crc, out);
}

/// Like [`encode_frame`], with the checksum of `payload` already computed
/// (by the appender, off the writer thread).
pub fn encode_frame_with_crc(
    seq: u64,
    payload: &[u8],
    payload_crc: &crc32fast::Hasher,
    out: &mut Vec<u8>,
) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.combine(payload_crc);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Bytes of a segment that hold no readable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRegion {
    /// Byte offset of the first unreadable byte.
    pub offset: u64,
    pub len: u64,
    /// Sequence of the last whole frame before the region, if any.
    pub after_seq: Option<u64>,
    /// Sequence of the first whole frame after the region, if any.
    pub before_seq: Option<u64>,
}

/// The whole frames of a segment and the regions between them that could
/// not be read. A bad region followed by a good frame is damage; a bad
/// region at the very end is either a torn write (never acknowledged) or
/// damage to the last frames, which only the next segment can tell apart
/// (see [`classify_tail`]).
#[derive(Debug, Default)]
pub struct SegmentContents {
    pub frames: Vec<(u64, Vec<u8>)>,
    /// Byte offset of each frame of `frames`.
    pub offsets: Vec<u64>,
    /// Unreadable regions followed by a whole frame.
    pub damaged: Vec<BadRegion>,
    /// Unreadable bytes at the end, with no whole frame after them.
    pub tail: Option<BadRegion>,
}

/// A whole frame at `pos` whose sequence is at least `min_seq`: `(seq,
/// payload range end)`.
fn frame_at(buf: &[u8], pos: usize, min_seq: u64) -> Option<(u64, usize)> {
    let header = buf.get(pos..pos.checked_add(HEADER_LEN)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    // Sequences grow by one a frame: a header far from the expected one is
    // not a frame (this also keeps resynchronisation cheap).
    if len > MAX_PAYLOAD || seq < min_seq || seq - min_seq > 1 << 32 {
        return None;
    }
    let start = pos + HEADER_LEN;
    let payload = buf.get(start..start + len as usize)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    (h.finalize() == crc).then_some((seq, start + len as usize))
}

/// Splits a segment's bytes into whole frames and unreadable regions. After
/// a bad frame it resynchronises on the next offset that holds a whole frame
/// (length, CRC and a sequence after the last good one), so one flipped byte
/// costs one frame, not the rest of the segment.
pub fn parse_segment(buf: &[u8], first_seq: u64) -> SegmentContents {
    let mut out = SegmentContents::default();
    let mut pos = 0usize;
    let mut last_seq: Option<u64> = None;
    while pos < buf.len() {
        let min_seq = last_seq.map_or(first_seq, |s| s.saturating_add(1));
        if let Some((seq, end)) = frame_at(buf, pos, min_seq) {
            out.frames.push((seq, buf[pos + HEADER_LEN..end].to_vec()));
            out.offsets.push(pos as u64);
            last_seq = Some(seq);
            pos = end;
            continue;
        }
        let next = (pos + 1..buf.len()).find_map(|q| frame_at(buf, q, min_seq).map(|f| (q, f.0)));
        let region = |end: usize, before_seq| BadRegion {
            offset: pos as u64,
            len: (end - pos) as u64,
            after_seq: last_seq,
            before_seq,
        };
        match next {
            Some((q, seq)) => {
                out.damaged.push(region(q, Some(seq)));
                pos = q;
            }
            None => {
                out.tail = Some(region(buf.len(), None));
                break;
            }
        }
    }
    out
}

pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let first_seq = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(parse_segment(&buf, first_seq))
}

/// Entries lost in a bad region, counted from the sequences around it.
pub fn lost_entries(region: &BadRegion, segment_first_seq: u64) -> u64 {
    let from = region
        .after_seq
        .map_or(segment_first_seq, |s| s.saturating_add(1));
    region.before_seq.map_or(0, |b| b.saturating_sub(from))
}

/// What the unreadable tail of a segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// A frame cut short by a crash: its append was never acknowledged.
    Torn,
    /// Acknowledged entries are missing: the next segment starts after them.
    Damaged { lost_entries: u64 },
}

/// Tells a torn write from damage. The writer starts a segment at the
/// sequence after the last frame it wrote (rotation), or after the last
/// frame replay could read (restart). So the tail of the last segment, or
/// of a segment whose successor starts right after its last whole frame, is
/// a torn write; a successor that starts later proves frames were lost.
pub fn classify_tail(
    segment_first_seq: u64,
    last_whole_seq: Option<u64>,
    next_segment_first_seq: Option<u64>,
) -> Tail {
    let expected = last_whole_seq.map_or(segment_first_seq, |s| s.saturating_add(1));
    match next_segment_first_seq {
        Some(next) if next > expected => Tail::Damaged {
            lost_entries: next - expected,
        },
        _ => Tail::Torn,
    }
}

/// The name a segment takes while it is deleted. Replay does not read it: a
/// crash part-way through the deletion leaves a cut file, which under its
/// segment name would read as damage.
pub fn removing_path(segment: &Path) -> PathBuf {
    segment.with_extension(REMOVING)
}

const REMOVING: &str = "removing";

/// Segments a deletion left behind (see [`removing_path`]).
pub fn list_removing(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == REMOVING) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// How much of a segment one step of [`remove_in_steps`] cuts, and the
/// pause after it.
pub const REMOVE_STEP: u64 = 4 << 20;
pub const REMOVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Deletes a segment `step` bytes at a time: renamed out of replay's sight,
/// cut from the end with each cut committed, then unlinked.
///
/// One unlink of a 64 MiB segment frees (and, on a file system mounted with
/// `discard`, discards) all its blocks at once, and a WAL `fdatasync`
/// meanwhile waits behind it: 40–75 ms measured under ingest on ext4, the
/// slowest acknowledgements (BENCHMARKS.md). Cut a few MiB at a time, with
/// a pause between the cuts, the fsyncs wait about as long as with no
/// delete at all. `Ok(false)` when there was no file.
pub fn remove_in_steps(path: &Path, step: u64, pause: std::time::Duration) -> io::Result<bool> {
    let removing = removing_path(path);
    match fs::rename(path, &removing) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    // The new name is durable before the file is cut.
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    let file = fs::OpenOptions::new().write(true).open(&removing)?;
    let mut len = file.metadata()?.len();
    while len > 0 {
        len = len.saturating_sub(step.max(1));
        file.set_len(len)?;
        file.sync_data()?;
        if len > 0 {
            std::thread::sleep(pause);
        }
    }
    drop(file);
    fs::remove_file(&removing)?;
    Ok(true)
}

/// fsync a directory so that a create, rename or delete in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frames(seqs: std::ops::RangeInclusive<u64>) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for seq in seqs {
            starts.push(bytes.len());
            encode_frame(
                seq,
                format!("payload of entry {seq}").as_bytes(),
                &mut bytes,
            );
        }
        (bytes, starts)
    }

    #[test]
    fn a_segment_is_removed_in_steps_out_of_replays_sight() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 7);
        fs::write(&path, vec![7u8; 10 << 10]).unwrap();
        let keep = segment_path(dir.path(), 9);
        fs::write(&keep, b"").unwrap();
        assert!(remove_in_steps(&path, 3 << 10, std::time::Duration::ZERO).unwrap());
        assert!(!path.exists());
        assert!(!removing_path(&path).exists());
        assert!(list_removing(dir.path()).unwrap().is_empty());
        assert_eq!(list_segments(dir.path()).unwrap(), vec![(9, keep)]);
        // Gone already: nothing to do.
        assert!(!remove_in_steps(&path, 3 << 10, std::time::Duration::ZERO).unwrap());
    }

    #[test]
    fn a_segment_being_removed_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 7);
        let removing = removing_path(&path);
        fs::write(&removing, b"cut").unwrap();
        assert_eq!(
            removing.file_name().unwrap(),
            "00000000000000000007.removing"
        );
        assert!(list_segments(dir.path()).unwrap().is_empty());
        assert_eq!(list_removing(dir.path()).unwrap(), vec![removing]);
    }

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
        assert!(c.damaged.is_empty());
        let tail = c.tail.unwrap();
        assert_eq!((tail.offset, tail.after_seq), (whole as u64, Some(8)));
        assert_eq!(classify_tail(7, Some(8), None), Tail::Torn);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![(7, path)]);
    }

    #[test]
    fn a_flipped_byte_costs_one_frame_and_the_frames_after_it_are_read() {
        let (clean, starts) = frames(1..=5);
        // Every byte of frame 3, header included.
        for at in starts[2]..starts[3] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x5a;
            let c = parse_segment(&bytes, 1);
            let seqs: Vec<u64> = c.frames.iter().map(|f| f.0).collect();
            assert_eq!(seqs, vec![1, 2, 4, 5], "byte {at}");
            assert_eq!(c.damaged.len(), 1, "byte {at}");
            let region = c.damaged[0];
            assert_eq!(region.offset, starts[2] as u64);
            assert_eq!(region.len, (starts[3] - starts[2]) as u64);
            assert_eq!(lost_entries(&region, 1), 1);
            assert!(c.tail.is_none());
        }
    }

    #[test]
    fn damage_to_the_first_frame_is_counted_from_the_segment_name() {
        let (mut bytes, starts) = frames(10..=12);
        bytes[starts[0] + 3] ^= 1;
        let c = parse_segment(&bytes, 10);
        assert_eq!(c.frames.len(), 2);
        assert_eq!(c.damaged[0].offset, 0);
        assert_eq!(lost_entries(&c.damaged[0], 10), 1);
    }

    #[test]
    fn a_damaged_last_frame_is_damage_when_the_next_segment_starts_after_it() {
        let (mut bytes, starts) = frames(1..=3);
        bytes[starts[2] + 20] ^= 1;
        let c = parse_segment(&bytes, 1);
        assert!(c.damaged.is_empty());
        assert_eq!(c.tail.unwrap().after_seq, Some(2));
        // The writer rotated after frame 3: the next segment starts at 4.
        assert_eq!(
            classify_tail(1, Some(2), Some(4)),
            Tail::Damaged { lost_entries: 1 }
        );
        // A restart after a torn frame 3 starts the next segment at 3.
        assert_eq!(classify_tail(1, Some(2), Some(3)), Tail::Torn);
        assert_eq!(classify_tail(1, None, None), Tail::Torn);
    }

    #[test]
    fn garbage_between_frames_is_skipped() {
        let (a, _) = frames(1..=2);
        let (b, _) = frames(3..=3);
        let mut bytes = a.clone();
        bytes.extend_from_slice(&[0xff; 37]);
        bytes.extend_from_slice(&b);
        let c = parse_segment(&bytes, 1);
        assert_eq!(
            c.frames.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(c.damaged[0].len, 37);
        assert_eq!(lost_entries(&c.damaged[0], 1), 0);
    }
}
