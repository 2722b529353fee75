//! Content-defined chunking: splits a byte stream into FastCDC (2020) chunks so that an edit
//! in the middle of a file changes only the chunks around it, which is what makes every
//! backup incremental for free.
//!
//! The parameters are stored in `snapfleet-repo.json` so every writer of a repository cuts
//! identically. This module reads, it does not slurp: one block (8 MiB, or twice the largest
//! chunk) per stream, and each chunk handed out keeps its block alive until it is dropped.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// FastCDC sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: large enough that a 2 GiB tablet is ~2 000 objects, small
    /// enough that a 5% change re-uploads little.
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 << 10,
            avg_size: 1 << 20,
            max_size: 4 << 20,
        }
    }
}

impl ChunkerParams {
    /// Checks the sizes against FastCDC's limits and `min ≤ avg ≤ max`.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as f;
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&min)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&avg)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "chunk sizes min {min} / avg {avg} / max {max} out of FastCDC range or order"
            )))
        }
    }
}

/// Bytes read from the source at a time (at least twice the largest chunk).
const BLOCK: usize = 8 << 20;

/// Iterator over the chunks of a reader (blocking I/O: run it on a blocking thread).
///
/// Cuts exactly where fastcdc's `StreamCDC` cuts (same gear table, masks and
/// normalisation; a test holds it to that), but reads the source in blocks of ≥ 8 MiB and
/// hands out each chunk as a slice of its block (`BytesMut::split_to`, no copy). Only the
/// bytes after the last cut of a block are copied into the next one. `StreamCDC` copies
/// every chunk out of a max-size buffer and shifts the rest of that buffer down after
/// each cut: about four copies of every byte, and a zeroed 4 MiB buffer per file.
///
/// A chunk keeps its block alive until it is dropped, so memory is bounded by the chunks
/// in flight times the block size.
pub struct Chunker<R: Read> {
    reader: R,
    buf: BytesMut,
    eof: bool,
    /// Size of the first block when the caller knows the source's size.
    first_block: Option<usize>,
    /// A read failed: the iterator has ended (bytes read before the error are gone, so going
    /// on would leave a hole).
    failed: bool,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Self::with_prefix(Vec::new(), reader, params)
    }

    /// Chunks `prefix` followed by `reader` (for callers that read the head of a stream
    /// before deciding to chunk it).
    pub fn with_prefix(prefix: Vec<u8>, reader: R, params: ChunkerParams) -> Self {
        let (mask_s, mask_l) = fastcdc::v2020::select_masks(
            params.avg_size as usize,
            fastcdc::v2020::Normalization::Level1,
        );
        Chunker {
            reader,
            buf: BytesMut::from(Bytes::from(prefix)),
            eof: false,
            first_block: None,
            failed: false,
            params,
            mask_s,
            mask_l,
        }
    }

    /// The source is about `size` bytes long (prefix included): a smaller source reads
    /// into a block of its size instead of a whole 8 MiB one. Only memory depends on it; a
    /// wrong hint costs one more block.
    pub fn size_hint(mut self, size: Option<u64>) -> Self {
        let full = BLOCK.max(2 * self.params.max_size as usize);
        self.first_block = size
            .map(|s| (s as usize).saturating_add(1).max(self.buf.len() + 1))
            .filter(|b| *b < full);
        self
    }

    /// Makes sure the buffer holds a whole max-size chunk or the rest of the source: a new
    /// block starts with the unconsumed tail of the old one and is filled from the reader.
    fn fill(&mut self) -> std::io::Result<()> {
        let max = self.params.max_size as usize;
        while !self.eof && self.buf.len() < max {
            let block = self
                .first_block
                .take()
                .unwrap_or(BLOCK.max(2 * max))
                .max(self.buf.len() + 1);
            let mut next = Vec::with_capacity(block);
            next.extend_from_slice(&self.buf);
            let want = (block - next.len()) as u64;
            let got = (&mut self.reader).take(want).read_to_end(&mut next)?;
            if (got as u64) < want {
                self.eof = true;
            }
            self.buf = BytesMut::from(Bytes::from(next));
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<BytesMut>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.fill() {
            self.failed = true;
            return Some(Err(e));
        }
        if self.buf.is_empty() {
            return None;
        }
        let (_, len) = fastcdc::v2020::cut(
            &self.buf,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        Some(Ok(self.buf.split_to(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 4 << 10,
            avg_size: 16 << 10,
            max_size: 64 << 10,
        }
    }

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_concatenate_to_input_within_bounds() {
        let input = data(1 << 20, 1);
        let chunks: Vec<Vec<u8>> = Chunker::new(&input[..], small())
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert!(chunks.len() > 8);
        assert_eq!(chunks.concat(), input);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 4 << 10 && c.len() <= 64 << 10);
        }
    }

    #[test]
    fn an_insert_changes_few_chunks() {
        let a = data(1 << 20, 2);
        let mut b = a.clone();
        b.splice(500_000..500_000, data(100, 3));
        let ca: std::collections::HashSet<Vec<u8>> = Chunker::new(&a[..], small())
            .map(|c| c.unwrap().to_vec())
            .collect();
        let cb: Vec<Vec<u8>> = Chunker::new(&b[..], small())
            .map(|c| c.unwrap().to_vec())
            .collect();
        let changed = cb.iter().filter(|c| !ca.contains(*c)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", cb.len());
    }

    /// A reader that returns at most `step` bytes per read, like a pipe or a socket.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Cut points are part of the repository format (they decide what dedups against
    /// existing backups): they must stay those of fastcdc's StreamCDC, for every size
    /// class, across block boundaries, with a prefix, and with short reads.
    #[test]
    fn cuts_where_fastcdc_streamcdc_cuts() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(3 << 20)
            .copied()
            .collect();
        let mut input = data(30 << 20, 9);
        input.extend_from_slice(&text);
        input.extend_from_slice(&data(5 << 20, 10));
        for params in [small(), ChunkerParams::default()] {
            let reference: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(
                &input[..],
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
            )
            .map(|c| c.unwrap().data)
            .collect();
            let ours: Vec<Vec<u8>> = Chunker::new(&input[..], params)
                .map(|c| c.unwrap().to_vec())
                .collect();
            assert_eq!(ours.len(), reference.len());
            assert!(ours == reference, "cut points differ for {params:?}");
            let (head, rest) = input.split_at(1 << 20);
            let prefixed: Vec<Vec<u8>> =
                Chunker::with_prefix(head.to_vec(), Dribble(rest, 100_000), params)
                    .map(|c| c.unwrap().to_vec())
                    .collect();
            assert!(prefixed == reference, "cut points differ with a prefix");
            for hint in [input.len() as u64, 1000, 3 << 20, 100 << 20] {
                let hinted: Vec<Vec<u8>> = Chunker::with_prefix(head.to_vec(), rest, params)
                    .size_hint(Some(hint))
                    .map(|c| c.unwrap().to_vec())
                    .collect();
                assert!(
                    hinted == reference,
                    "cut points differ with size hint {hint}"
                );
            }
        }
        assert_eq!(Chunker::new(&[][..], small()).count(), 0);
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams {
            min_size: 10,
            avg_size: 16,
            max_size: 20
        }
        .validate()
        .is_err());
        assert!(ChunkerParams {
            min_size: 1 << 20,
            avg_size: 512 << 10,
            max_size: 4 << 20
        }
        .validate()
        .is_err());
    }
}
