//! Typed identifiers that cross module boundaries: chunk ids, backup ids, key slot ids.
//!
//! A `ChunkId` is a keyed BLAKE3 hash (the key comes from the master key), so it reveals
//! nothing about content to someone without the key. These types must never accept input
//! that could form a path outside their directory in the store (no `/`, no `..`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Keyed BLAKE3 of a chunk's (or manifest page's) plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Object key of this chunk: `chunks/<first 2 hex>/<hex>`.
    pub fn object_key(&self) -> String {
        let hex = self.to_hex();
        format!("chunks/{}/{}", &hex[..2], hex)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

impl FromStr for ChunkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bytes = hex_decode(s)
            .ok_or_else(|| Error::InvalidArgument(format!("`{s}` is not a hex chunk id")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::InvalidArgument(format!("`{s}` is not a 32-byte chunk id")))?;
        Ok(ChunkId(arr))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Name of one backup: `backups/<id>/…`. Letters, digits, `-`, `_`, `.` (not leading), ≤ 128.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// Validates a backup id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 128
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(BackupId(s))
        } else {
            Err(Error::InvalidArgument(format!(
                "backup id `{s}` must be 1-128 chars of [A-Za-z0-9._-], not starting with `.`"
            )))
        }
    }

    /// A fresh id: UTC time plus a random suffix, so ids sort by creation time.
    pub fn generate() -> Self {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let rnd = uuid::Uuid::new_v4().simple().to_string();
        BackupId(format!("b-{now}-{}", &rnd[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        BackupId::new(s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackupId::new(s)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Id of one key slot in `snapfleet-repo.json`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn generate() -> Self {
        KeyId(format!(
            "k-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lower-case hex of `bytes` (ids, salts and nonces in the format's JSON).
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; None unless it is whole bytes of hex digits.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_round_trips_and_keys() {
        let id = ChunkId([0xab; 32]);
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex.parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.object_key(), format!("chunks/ab/{hex}"));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        assert!("zz".parse::<ChunkId>().is_err());
    }

    #[test]
    fn backup_ids_are_validated() {
        assert!(BackupId::new("b-1_x.y").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(BackupId::new(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<BackupId>("\"../etc\"").is_err());
        let g = BackupId::generate();
        assert!(BackupId::new(g.as_str()).is_ok());
    }
}
