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
        cur.file
            .write_all(&buf)
            .map_err(|e| Error::io(&self.dir, e))?;
        cur.bytes += buf.len() as u64;
        Ok(())
    }

    /// Deletes segments that hold only records older than `cutoff`.
    pub fn truncate_before(&mut self, cutoff: HybridTime) -> Result<usize> {
        let segs = list_segments(&self.dir)?;
        let mut removed = 0;
        for w in segs.windows(2) {
            // Every record in w[0] is older than w[1]'s first record.
            if w[1].0 <= cutoff {
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
pub struct SegmentReader {
    path: PathBuf,
    r: BufReader<File>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            r: BufReader::new(f),
        })
    }
}

impl Iterator for SegmentReader {
    type Item = Result<(HybridTime, pb::RowOp)>;

    fn next(&mut self) -> Option<Self::Item> {
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
        Some(
            pb::RowOp::decode(body.as_slice())
                .map(|op| (ht, op))
                .map_err(|e| Error::Corrupt {
                    what: format!("change-log segment {}", self.path.display()),
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
}
