//! Content-defined chunking: splits a byte stream into FastCDC (2020) chunks so that an edit
//! in the middle of a file changes only the chunks around it, which is what makes every
//! backup incremental for free.
//!
//! The parameters are stored in `snapfleet-repo.json` so every writer of a repository cuts
//! identically. This module must never hold more than one chunk buffer (≤ `max_size`) per
//! stream: it reads, it does not slurp.

use std::io::Read;

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

/// Iterator over the chunks of a reader (blocking I/O: run it on a blocking thread).
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Chunker {
            inner: fastcdc::v2020::StreamCDC::new(
                reader,
                params.min_size as usize,
                params.avg_size as usize,
                params.max_size as usize,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(c) => Some(Ok(c.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(e) => Some(Err(std::io::Error::other(format!("chunker: {e:?}")))),
        }
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
            .map(|c| c.unwrap())
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
        let ca: std::collections::HashSet<Vec<u8>> =
            Chunker::new(&a[..], small()).map(|c| c.unwrap()).collect();
        let cb: Vec<Vec<u8>> = Chunker::new(&b[..], small()).map(|c| c.unwrap()).collect();
        let changed = cb.iter().filter(|c| !ca.contains(*c)).count();
        assert!(changed <= 3, "{changed} of {} chunks changed", cb.len());
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
