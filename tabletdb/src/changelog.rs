//! A tablet's change log: every committed write batch, in hybrid-time order, in segment
//! files `<first-ht>.seg` beside the tablet. Point-in-time recovery outside the cluster
//! ships these segments; they are kept for the history-retention window.
//!
//! A record is `len: u32 LE | ht: u64 LE | RowOp (protobuf)`. The tablet's write lock
//! serialises appends, so records are in hybrid-time order. A record is handed to the
//! kernel before the write is acknowledged, so it survives the process being killed; a
//! torn last record (power loss) is detected by its length and ignored by readers.

use crate::error::{Error, Result};
use crate::hlc::HybridTime;
use prost::Message;
use snapfleet_proto::tabletdb as pb;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Roll to a new segment after this many bytes...
pub const SEGMENT_MAX_BYTES: u64 = 16 << 20;
/// ...or after this long.
pub const SEGMENT_MAX_AGE: Duration = Duration::from_secs(10);

struct Open {
    file: File,
    bytes: u64,
    opened: Instant,
}

/// The writer side of one tablet's change log.
pub struct ChangeLog {
    dir: PathBuf,
    current: Option<Open>,
}

impl ChangeLog {
    /// Opens (creating) the change-log directory. Appends always go to a fresh segment.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self { dir, current: None })
    }

    /// Appends one write batch committed at `ht`.
    pub fn append(&mut self, ht: HybridTime, ops: &[pb::RowOp]) -> Result<()> {
        let roll = match &self.current {
            None => true,
            Some(o) => o.bytes >= SEGMENT_MAX_BYTES || o.opened.elapsed() >= SEGMENT_MAX_AGE,
        };
        if roll {
            let path = self.dir.join(format!("{:020}.seg", ht.0));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            self.current = Some(Open {
                file,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        let mut buf = Vec::new();
        for op in ops {
            let len = op.encoded_len() as u32;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&ht.0.to_le_bytes());
            op.encode(&mut buf).expect("vec has room");
        }
        let cur = self.current.as_mut().expect("opened above");
        if let Err(e) = cur.file.write_all(&buf) {
            // Part of the batch may be in the file: a torn record that readers stop at.
            // Later records go to a new segment, so they are never hidden behind it.
            self.current = None;
            return Err(Error::io(&self.dir, e));
        }
        cur.bytes += buf.len() as u64;
        Ok(())
    }

    /// Deletes segments that hold only records older than `cutoff`.
    /// The newest deleted record's time is kept in `TRUNCATED`, so a reader that asks for
    /// records after an older time learns that some are gone ([`read_after`]).
    pub fn truncate_before(&mut self, cutoff: HybridTime) -> Result<usize> {
        let segs = list_segments(&self.dir)?;
        let mut removed = 0;
        let mut through = truncated_through(&self.dir)?;
        for w in segs.windows(2) {
            // Every record in w[0] is older than w[1]'s first record.
            if w[1].0 <= cutoff {
                let last = SegmentReader::open(&w[0].1)?
                    .filter_map(|r| r.ok())
                    .map(|(ht, _)| ht)
                    .last()
                    .unwrap_or(w[0].0);
                if last > through {
                    through = last;
                    let tmp = self.dir.join("TRUNCATED.tmp");
                    fs::write(&tmp, through.0.to_string()).map_err(|e| Error::io(&tmp, e))?;
                    let dst = self.dir.join(TRUNCATED_FILE);
                    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
                }
                fs::remove_file(&w[0].1).map_err(|e| Error::io(&w[0].1, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

const TRUNCATED_FILE: &str = "TRUNCATED";

/// The newest record that truncation deleted from this change log (`MIN` if none).
pub fn truncated_through(dir: &Path) -> Result<HybridTime> {
    let p = dir.join(TRUNCATED_FILE);
    match fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map(HybridTime)
            .map_err(|e| Error::Corrupt {
                what: p.display().to_string(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HybridTime::MIN),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Where a read of the change log stopped: a segment (its first record's time) and the
/// byte offset just after the last record read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

/// One answer of [`read_after`].
#[derive(Debug, Default)]
pub struct LogRead {
    /// Raw records (`len | ht | RowOp`), in hybrid-time order.
    pub records: Vec<u8>,
    pub count: u32,
    /// Every record with `after < ht <= covered` is in `records`.
    pub covered: HybridTime,
    /// Stopped at `max_bytes`: ask again from `covered`.
    pub more: bool,
    pub cursor: Cursor,
    /// Records after `after` were deleted by truncation before anyone read them.
    pub gap: bool,
    pub truncated_through: HybridTime,
}

/// Reads the records with `after < ht <= safe` (about `max_bytes` of them, never splitting
/// one hybrid time), starting at `cursor` when it still names a segment of this log.
/// `safe` must be a time at which every write at or before it has been appended (the
/// tablet's safe time), so that `covered` never claims a record not yet written.
pub fn read_after(
    dir: &Path,
    after: HybridTime,
    cursor: Cursor,
    safe: HybridTime,
    max_bytes: u64,
) -> Result<LogRead> {
    let mut out = read_after_unchecked(dir, after, cursor, safe, max_bytes)?;
    // Truncation records what it deletes before deleting it: read that again now, so a
    // segment deleted while we listed or read counts as a gap, never as "no records".
    let truncated = truncated_through(dir)?;
    if after < truncated {
        out.gap = true;
        out.truncated_through = truncated;
    }
    Ok(out)
}

fn read_after_unchecked(
    dir: &Path,
    after: HybridTime,
    cursor: Cursor,
    safe: HybridTime,
    max_bytes: u64,
) -> Result<LogRead> {
    let truncated = truncated_through(dir)?;
    let segs = list_segments(dir)?;
    let mut out = LogRead {
        covered: safe.max(after),
        cursor,
        gap: after < truncated,
        truncated_through: truncated,
        ..Default::default()
    };
    // The segment to start in: the cursor's, or the last one starting at or before `after`
    // (records after `after` can be in it), or the first.
    let start = segs
        .iter()
        .position(|(first, _)| cursor.segment != 0 && first.0 == cursor.segment)
        .map(|i| (i, cursor.offset))
        .unwrap_or_else(|| {
            let i = segs
                .iter()
                .rposition(|(first, _)| *first <= after)
                .unwrap_or(0);
            (i, 0)
        });
    let mut last_ht = after;
    for (i, (first, path)) in segs.iter().enumerate().skip(start.0) {
        let offset = if i == start.0 { start.1 } else { 0 };
        let mut r = match RawReader::open_at(path, offset) {
            Ok(r) => r,
            // Truncated between the listing and now: it held only old records.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        out.cursor = Cursor {
            segment: first.0,
            offset,
        };
        while let Some(rec) = r.next_raw() {
            let (ht, body) = rec?;
            if ht > safe {
                return Ok(out);
            }
            if ht <= after {
                out.cursor.offset = r.pos;
                continue;
            }
            if out.records.len() as u64 >= max_bytes && ht > last_ht {
                out.more = true;
                out.covered = last_ht;
                return Ok(out);
            }
            out.records
                .extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.records.extend_from_slice(&ht.0.to_le_bytes());
            out.records.extend_from_slice(&body);
            out.count += 1;
            last_ht = ht;
            out.cursor.offset = r.pos;
        }
    }
    Ok(out)
}

/// Decodes raw records (as [`read_after`] returns them).
pub fn decode_records(mut buf: &[u8]) -> Result<Vec<(HybridTime, pb::RowOp)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 12 {
            return Err(Error::Corrupt {
                what: "change-log records".into(),
                detail: format!("{} bytes left, a record header needs 12", buf.len()),
            });
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        let ht = HybridTime(u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes")));
        let body = buf.get(12..12 + len).ok_or_else(|| Error::Corrupt {
            what: "change-log records".into(),
            detail: format!("a record of {len} bytes is cut short"),
        })?;
        let op = pb::RowOp::decode(body).map_err(|e| Error::Corrupt {
            what: "change-log records".into(),
            detail: e.to_string(),
        })?;
        out.push((ht, op));
        buf = &buf[12 + len..];
    }
    Ok(out)
}

/// Raw records of one segment with their end offsets; stops quietly at a torn tail.
struct RawReader {
    path: PathBuf,
    r: BufReader<File>,
    pos: u64,
}

impl RawReader {
    fn open_at(path: &Path, offset: u64) -> Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            r: BufReader::new(f),
            pos: offset,
        })
    }

    fn next_raw(&mut self) -> Option<Result<(HybridTime, Vec<u8>)>> {
        let mut head = [0u8; 12];
        if read_full(&mut self.r, &mut head).ok()? < 12 {
            return None;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let ht = HybridTime(u64::from_le_bytes(head[4..].try_into().expect("8 bytes")));
        if len > 256 << 20 {
            return Some(Err(Error::Corrupt {
                what: format!("change-log segment {}", self.path.display()),
                detail: format!("record length {len} is implausible"),
            }));
        }
        let mut body = vec![0u8; len];
        match read_full(&mut self.r, &mut body) {
            Ok(n) if n == len => {}
            _ => return None, // torn tail
        }
        self.pos += 12 + len as u64;
        Some(Ok((ht, body)))
    }
}

/// The segments in a change-log directory, oldest first: `(first ht, path)`.
pub fn list_segments(dir: &Path) -> Result<Vec<(HybridTime, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(ht) = stem.parse::<u64>() {
            out.push((HybridTime(ht), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Hybrid time of the newest complete record in a change-log directory, if any.
pub fn last_record_ht(dir: &Path) -> Option<HybridTime> {
    let segs = list_segments(dir).ok()?;
    let (first, path) = segs.last()?;
    let last = SegmentReader::open(path)
        .ok()?
        .filter_map(|r| r.ok())
        .map(|(ht, _)| ht)
        .last();
    Some(last.unwrap_or(*first))
}

/// Streams the records of one segment; stops quietly at a torn final record.
pub struct SegmentReader(RawReader);

impl SegmentReader {
    pub fn open(path: &Path) -> Result<Self> {
        RawReader::open_at(path, 0).map(Self)
    }
}

impl Iterator for SegmentReader {
    type Item = Result<(HybridTime, pb::RowOp)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (ht, body) = match self.0.next_raw()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        Some(
            pb::RowOp::decode(body.as_slice())
                .map(|op| (ht, op))
                .map_err(|e| Error::Corrupt {
                    what: format!("change-log segment {}", self.0.path.display()),
                    detail: e.to_string(),
                }),
        )
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::value::Kind;

    fn op(i: i64) -> pb::RowOp {
        pb::RowOp {
            row: Some(pb::Row {
                values: vec![pb::Value {
                    kind: Some(Kind::Int(i)),
                }],
            }),
            delete: false,
        }
    }

    #[test]
    fn append_read_truncate_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let mut log = ChangeLog::open(d.path().join("log")).unwrap();
        log.append(HybridTime(10), &[op(1), op(2)]).unwrap();
        log.current = None; // force a roll
        log.append(HybridTime(20), &[op(3)]).unwrap();
        let segs = list_segments(log.dir()).unwrap();
        assert_eq!(segs.len(), 2);
        let recs: Vec<_> = segs
            .iter()
            .flat_map(|(_, p)| SegmentReader::open(p).unwrap())
            .map(|r| r.unwrap().0 .0)
            .collect();
        assert_eq!(recs, vec![10, 10, 20]);

        // A torn final record is ignored.
        let mut f = OpenOptions::new().append(true).open(&segs[1].1).unwrap();
        f.write_all(&[9, 0, 0, 0, 1]).unwrap();
        assert_eq!(SegmentReader::open(&segs[1].1).unwrap().count(), 1);

        assert_eq!(log.truncate_before(HybridTime(15)).unwrap(), 0);
        assert_eq!(log.truncate_before(HybridTime(20)).unwrap(), 1);
        assert_eq!(list_segments(log.dir()).unwrap().len(), 1);
    }

    #[test]
    fn read_after_covers_up_to_the_safe_time_resumes_and_reports_gaps() {
        let d = tempfile::tempdir().unwrap();
        let mut log = ChangeLog::open(d.path().join("log")).unwrap();
        log.append(HybridTime(10), &[op(1), op(2)]).unwrap();
        log.append(HybridTime(20), &[op(3)]).unwrap();
        log.current = None;
        log.append(HybridTime(30), &[op(4)]).unwrap();
        log.append(HybridTime(40), &[op(5)]).unwrap();
        let hts = |r: &LogRead| -> Vec<u64> {
            decode_records(&r.records)
                .unwrap()
                .iter()
                .map(|(h, _)| h.0)
                .collect()
        };
        let dir = log.dir().to_path_buf();
        let r = read_after(
            &dir,
            HybridTime(10),
            Cursor::default(),
            HybridTime(35),
            1 << 20,
        )
        .unwrap();
        assert_eq!(hts(&r), vec![20, 30]);
        assert_eq!(r.covered, HybridTime(35));
        assert!(!r.more && !r.gap);
        // From the cursor: the same answer as from scratch.
        let a = read_after(&dir, r.covered, r.cursor, HybridTime(50), 1 << 20).unwrap();
        let b = read_after(&dir, r.covered, Cursor::default(), HybridTime(50), 1 << 20).unwrap();
        assert_eq!(hts(&a), vec![40]);
        assert_eq!(hts(&b), vec![40]);
        assert_eq!(a.covered, HybridTime(50));
        // A small budget stops at a hybrid-time boundary, never inside one.
        let r = read_after(&dir, HybridTime::MIN, Cursor::default(), HybridTime(50), 1).unwrap();
        assert_eq!(hts(&r), vec![10, 10]);
        assert!(r.more);
        assert_eq!(r.covered, HybridTime(10));
        // Truncation that deletes unread records is reported as a gap, read ones are not.
        assert_eq!(log.truncate_before(HybridTime(30)).unwrap(), 1);
        assert_eq!(truncated_through(&dir).unwrap(), HybridTime(20));
        assert!(
            read_after(
                &dir,
                HybridTime(15),
                Cursor::default(),
                HybridTime(50),
                1 << 20
            )
            .unwrap()
            .gap
        );
        let r = read_after(
            &dir,
            HybridTime(20),
            Cursor::default(),
            HybridTime(50),
            1 << 20,
        )
        .unwrap();
        assert!(!r.gap);
        assert_eq!(hts(&r), vec![30, 40]);
    }
}

#[cfg(test)]
mod fuzz {
    //! The change-log record decoder reads pieces from the bucket (off-cluster PITR):
    //! random and edited buffers must decode or fail, never panic or over-allocate.
    use super::*;
    use proptest::prelude::*;

    fn valid() -> Vec<u8> {
        let op = pb::RowOp {
            row: Some(pb::Row::default()),
            delete: false,
        };
        let body = op.encode_to_vec();
        let mut out = Vec::new();
        for ht in [5u64, 9] {
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&ht.to_le_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    proptest! {
        #[test]
        fn random_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_records(&bytes);
        }

        #[test]
        fn edited_records_never_panic(at in any::<usize>(), flip in 1u8..=255, cut in any::<bool>()) {
            let mut v = valid();
            assert_eq!(decode_records(&v).unwrap().len(), 2);
            if cut {
                v.truncate(at % v.len());
            } else {
                let i = at % v.len();
                v[i] ^= flip;
            }
            let _ = decode_records(&v);
        }
    }
}
