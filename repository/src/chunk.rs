//! Chunk objects: where a chunk lives (`chunks/<aa>/<id>`), how it is sealed, and the check
//! every read performs (decrypt, decompress, re-hash to the id).
//!
//! This module must never hand out chunk bytes that have not been re-hashed to their id.

use bytes::BytesMut;

use crate::crypto::{Keys, ObjectKind, Sealed};
use crate::error::{Error, Result};
use crate::ids::ChunkId;

/// Seals a chunk's plaintext for upload (in place when it is not compressed); the chunk id
/// is the associated data.
pub fn seal_chunk(
    keys: &Keys,
    id: &ChunkId,
    plaintext: BytesMut,
    zstd_level: i32,
) -> Result<Sealed> {
    keys.seal_owned(ObjectKind::Chunk, &id.0, plaintext, zstd_level)
}

/// Opens a chunk object and checks that its plaintext hashes to `id`.
pub fn open_chunk(keys: &Keys, id: &ChunkId, object: &[u8]) -> Result<Vec<u8>> {
    let key = id.object_key();
    let plain = keys.open(&key, ObjectKind::Chunk, &id.0, object)?;
    let actual = keys.chunk_id(&plain);
    if actual != *id {
        return Err(Error::corrupt(
            &key,
            format!("content hashes to {actual}, not to its id"),
        ));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn chunk_round_trip_and_wrong_id() {
        let keys = Keys::derive(&MasterKey([1; 32]));
        let data = vec![42u8; 10_000];
        let id = keys.chunk_id(&data);
        let obj = seal_chunk(&keys, &id, BytesMut::from(&data[..]), 3)
            .unwrap()
            .into_vec();
        assert_eq!(open_chunk(&keys, &id, &obj).unwrap(), data);
        let other = keys.chunk_id(b"x");
        match open_chunk(&keys, &other, &obj) {
            Err(Error::CorruptObject { key, .. }) => assert_eq!(key, other.object_key()),
            r => panic!("{r:?}"),
        }
    }
}
