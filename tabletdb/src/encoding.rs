//! How rows sit in RocksDB. A stored key is `escaped(primary key) ++ !hybrid_time` (big
//! endian), so all versions of one row are adjacent, newest first, and a seek to
//! `key ++ !T` lands on the newest version at or before `T`. A stored value is a one-byte
//! tag (put or tombstone) followed by the protobuf-encoded row.

use crate::error::{Error, Result};
use crate::hlc::HybridTime;
use prost::Message;
use snapfleet_proto::tabletdb as pb;

/// Number of distinct partition hash values: tablets split `[0, HASH_SPACE)`.
pub const HASH_SPACE: u32 = 1 << 16;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// The primary-key values of `row`, in key order.
pub fn key_values(schema: &pb::TableSchema, row: &pb::Row) -> pb::Row {
    pb::Row {
        values: schema
            .primary_key
            .iter()
            .map(|&i| row.values.get(i as usize).cloned().unwrap_or_default())
            .collect(),
    }
}

/// Encodes key values into a prefix-free byte string (`0x00` escaped as `0x00 0xff`,
/// terminated by `0x00 0x01`), so no row's key is a prefix of another's.
pub fn encode_key(key: &pb::Row) -> Vec<u8> {
    let raw = key.encode_to_vec();
    let mut out = Vec::with_capacity(raw.len() + 10);
    for b in raw {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
    out
}

/// Decodes [`encode_key`] output back into key values.
pub fn decode_key(encoded: &[u8]) -> Result<pb::Row> {
    let mut raw = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let b = encoded[i];
        if b == 0 {
            match encoded.get(i + 1) {
                Some(0xff) => raw.push(0),
                Some(1) if i + 2 == encoded.len() => {
                    return pb::Row::decode(raw.as_slice()).map_err(|e| Error::Corrupt {
                        what: "row key".into(),
                        detail: e.to_string(),
                    })
                }
                _ => break,
            }
            i += 2;
        } else {
            raw.push(b);
            i += 1;
        }
    }
    Err(Error::Corrupt {
        what: "row key".into(),
        detail: "bad escape or missing terminator".into(),
    })
}

/// The 16-bit partition hash of an encoded key: picks the tablet.
pub fn partition_hash(encoded_key: &[u8]) -> u32 {
    let h = blake3::hash(encoded_key);
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]) as u32
}

/// The hash ranges of `n` tablets covering the whole hash space.
pub fn tablet_ranges(n: u32) -> Vec<(u32, u32)> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            (
                (i as u64 * HASH_SPACE as u64 / n as u64) as u32,
                ((i as u64 + 1) * HASH_SPACE as u64 / n as u64) as u32,
            )
        })
        .collect()
}

/// `encoded_key ++ !ht` in big endian.
pub fn mvcc_key(encoded_key: &[u8], ht: HybridTime) -> Vec<u8> {
    let mut k = Vec::with_capacity(encoded_key.len() + 8);
    k.extend_from_slice(encoded_key);
    k.extend_from_slice(&(!ht.0).to_be_bytes());
    k
}

/// Splits a stored key into the encoded row key and its version's hybrid time.
pub fn split_mvcc_key(k: &[u8]) -> Option<(&[u8], HybridTime)> {
    if k.len() < 10 {
        return None;
    }
    let (key, ht) = k.split_at(k.len() - 8);
    let ht = u64::from_be_bytes(ht.try_into().ok()?);
    Some((key, HybridTime(!ht)))
}

/// A stored value: a new row, or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum Version {
    Put(pb::Row),
    Delete,
}

pub fn encode_put(row: &pb::Row) -> Vec<u8> {
    let mut v = Vec::with_capacity(row.encoded_len() + 1);
    v.push(TAG_PUT);
    row.encode(&mut v).expect("vec has room");
    v
}

pub fn encode_delete() -> Vec<u8> {
    vec![TAG_DELETE]
}

pub fn is_tombstone(value: &[u8]) -> bool {
    value.first() == Some(&TAG_DELETE)
}

pub fn decode_value(v: &[u8]) -> Result<Version> {
    match v.split_first() {
        Some((&TAG_PUT, rest)) => {
            pb::Row::decode(rest)
                .map(Version::Put)
                .map_err(|e| Error::Corrupt {
                    what: "row value".into(),
                    detail: e.to_string(),
                })
        }
        Some((&TAG_DELETE, _)) => Ok(Version::Delete),
        _ => Err(Error::Corrupt {
            what: "row value".into(),
            detail: "unknown tag".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::value::Kind;

    fn key(vals: Vec<Kind>) -> pb::Row {
        pb::Row {
            values: vals
                .into_iter()
                .map(|k| pb::Value { kind: Some(k) })
                .collect(),
        }
    }

    #[test]
    fn keys_round_trip_and_are_prefix_free() {
        let a = key(vec![Kind::Text("ab".into())]);
        let b = key(vec![Kind::Text("ab\0c".into())]);
        let c = key(vec![Kind::Int(0), Kind::Bytes(vec![0, 0, 1])]);
        for k in [&a, &b, &c] {
            assert_eq!(&decode_key(&encode_key(k)).unwrap(), k);
        }
        let (ea, eb) = (encode_key(&a), encode_key(&b));
        assert!(!eb.starts_with(&ea) && !ea.starts_with(&eb));
    }

    #[test]
    fn versions_sort_newest_first() {
        let k = encode_key(&key(vec![Kind::Int(7)]));
        let old = mvcc_key(&k, HybridTime(100));
        let new = mvcc_key(&k, HybridTime(200));
        assert!(new < old);
        assert_eq!(
            split_mvcc_key(&new).unwrap(),
            (k.as_slice(), HybridTime(200))
        );
    }

    #[test]
    fn ranges_cover_the_hash_space() {
        for n in [1, 3, 7, 16] {
            let r = tablet_ranges(n);
            assert_eq!(r.len(), n as usize);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().unwrap().1, HASH_SPACE);
            for w in r.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
        }
    }
}
