//! Property tests of every parser of bytes that come from the bucket: the repository config
//! and its key slots, sealed objects (chunks, ROOT, manifest pages) with random, truncated,
//! extended and bit-flipped bytes, and — the case of an unencrypted repository, whose
//! checksums a bucket writer can recompute — validly sealed objects with hostile content.
//! Each must return a value or an error, never panic; inputs are at most a few KiB, so a
//! run is a few seconds and its memory is bounded by the decompression caps.

use crate::crypto::{Keys, MasterKey, ObjectKind};
use crate::format::{KdfParams, RepoConfig};
use crate::ids::{BackupId, ChunkId};
use crate::manifest::{parse_page, Root};
use crate::ChunkerParams;
use proptest::prelude::*;

fn keys(encrypted: bool) -> Keys {
    let m = MasterKey::generate();
    if encrypted {
        Keys::derive(&m)
    } else {
        Keys::derive_unencrypted(&m)
    }
}

/// A valid object with hostile edits: flipped bits, cut short, or grown.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    prop_oneof![
        (0..n.max(1), any::<u8>()).prop_map({
            let v = valid.clone();
            move |(i, b)| {
                let mut v = v.clone();
                if !v.is_empty() {
                    let at = i % v.len();
                    v[at] ^= b | 1;
                }
                v
            }
        }),
        (0..=n).prop_map({
            let v = valid.clone();
            move |cut| v[..cut].to_vec()
        }),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(move |tail| {
            let mut v = valid.clone();
            v.extend(tail);
            v
        }),
    ]
}

/// JSON-ish text: the characters JSON is made of, so parsers get past the first byte.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'{'),
            Just(b'}'),
            Just(b'['),
            Just(b']'),
            Just(b'"'),
            Just(b':'),
            Just(b','),
            Just(b'-'),
            Just(b'\n'),
            b'0'..=b'9',
            b'a'..=b'z',
        ],
        0..512,
    )
}

fn sample_config() -> Vec<u8> {
    let m = MasterKey::generate();
    RepoConfig::new(&m, b"pw", KdfParams::minimum(), ChunkerParams::default())
        .expect("config")
        .to_json()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = RepoConfig::parse(&bytes);
    }

    #[test]
    fn edited_configs_never_panic(bytes in mutated(sample_config())) {
        let _ = RepoConfig::parse(&bytes);
    }

    #[test]
    fn sealed_objects_with_any_bytes_never_panic(
        encrypted in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let k = keys(encrypted);
        let id = ChunkId([7; 32]);
        let _ = crate::chunk::open_chunk(&k, &id, &bytes);
        let _ = Root::open(&k, &BackupId::new("b").unwrap(), &bytes);
        let _ = parse_page(&k, "page", &id, &bytes, 3);
    }

    #[test]
    fn edited_sealed_objects_are_refused(
        encrypted in any::<bool>(),
        plain in proptest::collection::vec(any::<u8>(), 1..2048),
        edit in 0usize..3,
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let k = keys(encrypted);
        let id = k.chunk_id(&plain);
        let mut object = k.seal(ObjectKind::Chunk, &id.0, &plain, 3).unwrap();
        match edit {
            0 => { let i = at % object.len(); object[i] ^= flip; }
            1 => object.truncate(at % object.len()),
            _ => object.push(flip),
        }
        // No change yields other content: refused, or (an unencrypted object's nonce bytes,
        // which nothing reads) the very same plaintext.
        match crate::chunk::open_chunk(&k, &id, &object) {
            Err(_) => {}
            Ok(got) => {
                prop_assert!(!encrypted && edit == 0, "an edited encrypted object opened");
                prop_assert_eq!(got, plain);
            }
        }
    }

    #[test]
    fn forged_roots_and_pages_with_valid_seals_never_panic(
        encrypted in any::<bool>(),
        body in jsonish(),
        entries in 0u64..5,
    ) {
        // What a bucket writer of an unencrypted repository can produce: any content,
        // correctly sealed.
        let k = keys(encrypted);
        let id = BackupId::new("b").unwrap();
        let root = k.seal(ObjectKind::Root, b"ROOT|b", &body, 0).unwrap();
        let _ = Root::open(&k, &id, &root);
        let page_id = k.chunk_id(&body);
        let page = k.seal(ObjectKind::ManifestPage, &page_id.0, &body, 0).unwrap();
        let _ = parse_page(&k, "page", &page_id, &page, entries);
    }
}
