//! Keys and the sealed-object envelope shared by chunks, manifest pages and ROOTs.
//!
//! Envelope layout (all objects this crate writes under `chunks/` and `backups/`):
//! `magic "SFOB" | version u8 | kind u8 | flags u8 (bit 0 = zstd) | reserved u8 | nonce[12] |
//! AES-256-GCM ciphertext + 16-byte tag`. The first 8 header bytes and a per-object context
//! (the chunk id, the page id, or the backup id for a ROOT) are the associated data, so an
//! object cannot be moved, relabelled or have its flags flipped without failing to open.
//! This module must never log or format key material, and never return plaintext that did
//! not authenticate.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::ids::ChunkId;

const MAGIC: &[u8; 4] = b"SFOB";
const ENVELOPE_VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
/// Not encrypted: the body is the plaintext and the "tag" a keyed BLAKE3 checksum (an
/// unencrypted repository, `repo init --encryption none`).
const FLAG_PLAIN: u8 = 2;
/// Header bytes before the ciphertext.
pub const HEADER_LEN: usize = 8 + 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Smallest possible sealed object (empty plaintext).
pub const MIN_OBJECT_LEN: usize = HEADER_LEN + TAG_LEN;
/// Refuse to decompress anything larger: a corrupt or hostile object must not exhaust memory.
const MAX_PLAINTEXT: usize = 256 << 20;

/// What a sealed object holds; part of the authenticated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    Chunk = 1,
    ManifestPage = 2,
    Root = 3,
    /// An archived change-log piece (off-cluster PITR).
    ArchiveLog = 4,
    /// Archive metadata: what is archived, archivers' progress.
    ArchiveMeta = 5,
}

/// The repository master key (32 random bytes, wrapped by every key slot).
#[derive(Clone)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub(crate) fn generate() -> Self {
        MasterKey(rand::random())
    }
}

/// Working keys derived from the master key; what readers and writers hold.
///
/// AES-256-GCM comes from aws-lc (already linked for TLS through object_store): its
/// assembly runs several times faster than the portable RustCrypto implementation, which
/// was a fifth of a backup's CPU. The format is plain AES-256-GCM either way.
///
/// In an unencrypted repository there is no cipher: objects carry their plaintext and a
/// keyed-BLAKE3 checksum in the tag's place. Its key is in the repository's description, so
/// it detects damage, not forgery — that repository mode promises no secrecy and no
/// authenticity, only integrity against corruption.
#[derive(Clone)]
pub struct Keys {
    cipher: Option<Arc<LessSafeKey>>,
    mac_key: [u8; 32],
    id_key: [u8; 32],
}

/// A sealed object in three parts — header and nonce, ciphertext, tag — so that a chunk's
/// bytes are encrypted where they lie and handed to the store without another copy.
pub struct Sealed {
    head: [u8; HEADER_LEN],
    body: Bytes,
    tag: [u8; TAG_LEN],
}

impl Sealed {
    /// Size of the object as stored.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.body.len() + TAG_LEN
    }

    /// Never true: every object has a header and a tag.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The object as an upload payload (three parts, no copy of the body).
    pub fn into_payload(self) -> object_store::PutPayload {
        object_store::PutPayload::from_iter([
            Bytes::copy_from_slice(&self.head),
            self.body,
            Bytes::copy_from_slice(&self.tag),
        ])
    }

    /// The object as one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.tag);
        out
    }
}

fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub(crate) fn derive(master: &MasterKey) -> Self {
        let data = blake3::derive_key("snapfleet repository v1 data encryption", &master.0);
        Keys {
            cipher: Some(Arc::new(aes_key(&data))),
            ..Self::derive_unencrypted(master)
        }
    }

    /// Keys of an unencrypted repository: chunk ids and checksums, no cipher.
    pub(crate) fn derive_unencrypted(master: &MasterKey) -> Self {
        Keys {
            cipher: None,
            mac_key: blake3::derive_key("snapfleet repository v1 object checksum", &master.0),
            id_key: blake3::derive_key("snapfleet repository v1 chunk id", &master.0),
        }
    }

    /// Whether objects are encrypted (false in an unencrypted repository).
    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    /// The checksum that stands in for the GCM tag in an unencrypted repository.
    fn checksum(&self, aad: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        h.update(&(aad.len() as u64).to_le_bytes());
        h.update(aad);
        h.update(body);
        h.finalize().as_bytes()[..TAG_LEN]
            .try_into()
            .expect("16 bytes")
    }

    /// Keyed BLAKE3 of `data`: the id of a chunk or manifest page.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// Compresses (zstd `level`, 0 = off; kept only if smaller) and encrypts `plaintext`.
    pub fn seal(
        &self,
        kind: ObjectKind,
        context: &[u8],
        plaintext: &[u8],
        level: i32,
    ) -> Result<Vec<u8>> {
        let compressed = compress(plaintext, level)?;
        let body = compressed.as_deref().unwrap_or(plaintext);
        let head = self.header(kind, compressed.is_some());
        // One copy of the body: into the output, encrypted in place there, the tag appended.
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(&head);
        out.extend_from_slice(body);
        let tag = self.encrypt(&head, context, &mut out[HEADER_LEN..])?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// [`Keys::seal`] of a buffer the caller gives up: data that is not compressed is
    /// encrypted where it lies, and the result goes to the store without being copied.
    pub fn seal_owned(
        &self,
        kind: ObjectKind,
        context: &[u8],
        mut plaintext: BytesMut,
        level: i32,
    ) -> Result<Sealed> {
        if let Some(mut c) = compress(&plaintext, level)? {
            let head = self.header(kind, true);
            let tag = self.encrypt(&head, context, &mut c)?;
            return Ok(Sealed {
                head,
                body: Bytes::from(c),
                tag,
            });
        }
        let head = self.header(kind, false);
        let tag = self.encrypt(&head, context, &mut plaintext)?;
        Ok(Sealed {
            head,
            body: plaintext.freeze(),
            tag,
        })
    }

    /// Encrypts `body` in place under the nonce in `head`; the associated data is the
    /// header's first 8 bytes and `context`.
    fn encrypt(
        &self,
        head: &[u8; HEADER_LEN],
        context: &[u8],
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let aad = [&head[..8], context].concat();
        let Some(cipher) = &self.cipher else {
            return Ok(self.checksum(&aad, body));
        };
        let nonce: [u8; 12] = head[8..].try_into().expect("12-byte nonce");
        let tag = cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                body,
            )
            .map_err(|_| Error::InvalidArgument("plaintext too large to encrypt".into()))?;
        Ok(tag.as_ref().try_into().expect("16-byte GCM tag"))
    }

    /// Authenticates, decrypts and decompresses an object written by [`Keys::seal`].
    /// `key` only names the object in errors.
    pub fn open(
        &self,
        key: &str,
        kind: ObjectKind,
        context: &[u8],
        object: &[u8],
    ) -> Result<Vec<u8>> {
        if object.len() < MIN_OBJECT_LEN {
            return Err(Error::corrupt(
                key,
                format!(
                    "truncated: {} bytes, smaller than any sealed object",
                    object.len()
                ),
            ));
        }
        if &object[..4] != MAGIC {
            return Err(Error::corrupt(key, "bad magic: not a snapfleet object"));
        }
        if object[4] != ENVELOPE_VERSION {
            return Err(Error::corrupt(
                key,
                format!("unknown object version {}", object[4]),
            ));
        }
        if object[5] != kind as u8 {
            return Err(Error::corrupt(
                key,
                format!("object kind {} where {:?} was expected", object[5], kind),
            ));
        }
        let flags = object[6];
        if flags & !(FLAG_ZSTD | FLAG_PLAIN) != 0 {
            return Err(Error::corrupt(key, format!("unknown flags {flags:#x}")));
        }
        let aad = [&object[..8], context].concat();
        let body =
            match (&self.cipher, flags & FLAG_PLAIN != 0) {
                (Some(cipher), false) => {
                    let nonce_bytes: [u8; 12] = object[8..HEADER_LEN].try_into().expect("12 bytes");
                    let mut body = object[HEADER_LEN..].to_vec();
                    let plain_len = cipher
                        .open_in_place(
                            Nonce::assume_unique_for_key(nonce_bytes),
                            Aad::from(&aad[..]),
                            &mut body,
                        )
                        .map_err(|_| {
                            Error::corrupt(
                                key,
                                "authentication failed (truncated, modified, or written under \
                             another key)",
                            )
                        })?
                        .len();
                    body.truncate(plain_len);
                    body
                }
                (None, true) => {
                    let (body, tag) =
                        object[HEADER_LEN..].split_at(object.len() - HEADER_LEN - TAG_LEN);
                    if self.checksum(&aad, body)[..] != tag[..] {
                        return Err(Error::corrupt(
                            key,
                            "checksum mismatch (truncated or modified)",
                        ));
                    }
                    body.to_vec()
                }
                // Never accept an unencrypted object in an encrypted repository: it could only
                // have been planted (or copied in from an unencrypted repository by hand).
                (Some(_), true) => return Err(Error::corrupt(
                    key,
                    "unencrypted object in an encrypted repository (planted or copied in by hand)",
                )),
                (None, false) => {
                    return Err(Error::corrupt(
                        key,
                        "encrypted object in an unencrypted repository (copied in by hand?)",
                    ))
                }
            };
        if flags & FLAG_ZSTD != 0 {
            decompress_bounded(&body).map_err(|e| Error::corrupt(key, format!("zstd: {e}")))
        } else {
            Ok(body)
        }
    }
}

impl Keys {
    /// An envelope header with a fresh random nonce (unused without a cipher).
    fn header(&self, kind: ObjectKind, compressed: bool) -> [u8; HEADER_LEN] {
        header(kind, compressed, self.cipher.is_none())
    }
}

fn header(kind: ObjectKind, compressed: bool, plain: bool) -> [u8; HEADER_LEN] {
    let flags = if compressed { FLAG_ZSTD } else { 0 } | if plain { FLAG_PLAIN } else { 0 };
    let mut head = [0u8; HEADER_LEN];
    head[..8].copy_from_slice(&[
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        ENVELOPE_VERSION,
        kind as u8,
        flags,
        0,
    ]);
    head[8..].copy_from_slice(&rand::random::<[u8; 12]>());
    head
}

/// zstd at `level` (0 = off) when the data looks compressible; `None` unless it got smaller.
fn compress(plaintext: &[u8], level: i32) -> Result<Option<Vec<u8>>> {
    if level <= 0 || !looks_compressible(plaintext) {
        return Ok(None);
    }
    let c = zstd::bulk::compress(plaintext, level)
        .map_err(|e| Error::InvalidArgument(format!("zstd level {level}: {e}")))?;
    Ok((c.len() < plaintext.len()).then_some(c))
}

/// Data larger than this is sampled before compressing it.
const SAMPLE_OVER: usize = 64 << 10;
const SAMPLE: usize = 16 << 10;

/// Whether compressing `data` is worth trying: large inputs are judged by a 16 KiB sample
/// from their middle at zstd's fastest level (already-compressed data — compressed SSTs,
/// media, encrypted files — saves nothing and costs a third of a backup's CPU otherwise).
/// Small inputs are always tried: the sample would cost as much as the real thing.
fn looks_compressible(data: &[u8]) -> bool {
    if data.len() <= SAMPLE_OVER {
        return true;
    }
    let mid = data.len() / 2 - SAMPLE / 2;
    let sample = &data[mid..mid + SAMPLE];
    match zstd::bulk::compress(sample, 1) {
        Ok(c) => c.len() < SAMPLE * 97 / 100,
        Err(_) => true,
    }
}

fn decompress_bounded(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Our frames record their size (bulk compression): decompress in one call into a buffer
    // of exactly that size instead of streaming into a growing one.
    if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(data) {
        if n > MAX_PLAINTEXT as u64 {
            return Err(std::io::Error::other("decompressed size exceeds limit"));
        }
        let out = zstd::bulk::decompress(data, n as usize)?;
        if out.len() as u64 != n {
            return Err(std::io::Error::other(format!(
                "frame says {n} bytes, holds {}",
                out.len()
            )));
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(data)?;
    decoder
        .take(MAX_PLAINTEXT as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > MAX_PLAINTEXT {
        return Err(std::io::Error::other("decompressed size exceeds limit"));
    }
    Ok(out)
}

/// Seals `data` under a key-encryption key (used to wrap the master key in a key slot).
pub(crate) fn wrap(kek: &[u8; 32], aad: &[u8], data: &[u8]) -> ([u8; 12], Vec<u8>) {
    let nonce_bytes: [u8; 12] = rand::random();
    let mut ct = data.to_vec();
    aes_key(kek)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut ct,
        )
        .expect("wrapping 32 bytes cannot exceed AES-GCM limits");
    (nonce_bytes, ct)
}

/// Opens a key slot; `None` when the KEK (hence the passphrase) is wrong.
pub(crate) fn unwrap(kek: &[u8; 32], aad: &[u8], nonce: &[u8; 12], ct: &[u8]) -> Option<Vec<u8>> {
    let mut buf = ct.to_vec();
    let n = aes_key(kek)
        .open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{hex_decode, hex_encode};

    fn keys() -> Keys {
        Keys::derive(&MasterKey([7; 32]))
    }

    #[test]
    fn incompressible_data_is_stored_without_trying_to_compress_it() {
        let k = keys();
        let noise: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i as u8).rotate_left(3))
            .collect();
        let random: Vec<u8> = {
            let mut v = vec![0u8; 1 << 20];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
            v
        };
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(30_000);
        assert!(!looks_compressible(&random));
        assert!(looks_compressible(&text));
        assert!(
            looks_compressible(&random[..4096]),
            "small inputs are always tried"
        );
        for data in [&random[..], &text[..], &noise[..]] {
            let sealed = k.seal(ObjectKind::Chunk, b"ctx", data, 3).unwrap();
            assert_eq!(
                k.open("x", ObjectKind::Chunk, b"ctx", &sealed).unwrap(),
                data
            );
        }
        let sealed = k.seal(ObjectKind::Chunk, b"ctx", &random, 3).unwrap();
        assert_eq!(sealed[6] & FLAG_ZSTD, 0, "random data is stored as it is");
        let sealed = k.seal(ObjectKind::Chunk, b"ctx", &text, 3).unwrap();
        assert!(sealed.len() < text.len() / 10, "text is compressed");
    }

    #[test]
    fn seal_open_round_trip_with_and_without_compression() {
        let k = keys();
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        for level in [0, 3] {
            let sealed = k.seal(ObjectKind::Chunk, b"ctx", &text, level).unwrap();
            if level > 0 {
                assert!(sealed.len() < text.len() / 4);
            }
            assert_eq!(
                k.open("o", ObjectKind::Chunk, b"ctx", &sealed).unwrap(),
                text
            );
        }
    }

    #[test]
    fn tampering_is_detected() {
        let k = keys();
        let sealed = k.seal(ObjectKind::Chunk, b"ctx", b"payload", 3).unwrap();
        let err = |r: Result<Vec<u8>>| match r {
            Err(Error::CorruptObject { key, .. }) => key,
            other => panic!("expected CorruptObject, got {other:?}"),
        };
        assert_eq!(err(k.open("o", ObjectKind::Chunk, b"other", &sealed)), "o");
        err(k.open("o", ObjectKind::ManifestPage, b"ctx", &sealed));
        err(k.open("o", ObjectKind::Chunk, b"ctx", &sealed[..sealed.len() - 1]));
        err(k.open("o", ObjectKind::Chunk, b"ctx", &sealed[..10]));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        err(k.open("o", ObjectKind::Chunk, b"ctx", &flipped));
        let mut flags = sealed.clone();
        flags[6] ^= FLAG_ZSTD;
        err(k.open("o", ObjectKind::Chunk, b"ctx", &flags));
        let other = Keys::derive(&MasterKey([8; 32]));
        err(other.open("o", ObjectKind::Chunk, b"ctx", &sealed));
    }

    #[test]
    fn unencrypted_objects_are_checksummed_and_never_mixed_with_encrypted_ones() {
        let plain = Keys::derive_unencrypted(&MasterKey([7; 32]));
        let enc = keys();
        assert!(!plain.encrypts() && enc.encrypts());
        assert_eq!(
            plain.chunk_id(b"x"),
            enc.chunk_id(b"x"),
            "same ids either way"
        );
        let text = b"plain text plain text plain text plain text".repeat(50);
        for level in [0, 3] {
            let sealed = plain.seal(ObjectKind::Chunk, b"ctx", &text, level).unwrap();
            assert_eq!(sealed[6] & FLAG_PLAIN, FLAG_PLAIN);
            if level == 0 {
                let body = &sealed[HEADER_LEN..sealed.len() - TAG_LEN];
                assert_eq!(body, &text[..], "stored as it is");
            }
            assert_eq!(
                plain.open("o", ObjectKind::Chunk, b"ctx", &sealed).unwrap(),
                text
            );
            let mut flipped = sealed.clone();
            flipped[HEADER_LEN + 3] ^= 1;
            assert!(plain
                .open("o", ObjectKind::Chunk, b"ctx", &flipped)
                .is_err());
            assert!(plain
                .open("o", ObjectKind::Chunk, b"other", &sealed)
                .is_err());
            assert!(plain
                .open("o", ObjectKind::Chunk, b"ctx", &sealed[..sealed.len() - 1])
                .is_err());
            // A downgrade: an encrypted repository refuses an unencrypted object …
            match enc.open("o", ObjectKind::Chunk, b"ctx", &sealed) {
                Err(Error::CorruptObject { detail, .. }) => {
                    assert!(detail.contains("unencrypted object"), "{detail}")
                }
                r => panic!("{r:?}"),
            }
            // … and the other way round.
            let e = enc.seal(ObjectKind::Chunk, b"ctx", &text, level).unwrap();
            assert!(plain.open("o", ObjectKind::Chunk, b"ctx", &e).is_err());
        }
        let owned = plain
            .seal_owned(ObjectKind::Chunk, b"ctx", BytesMut::from(&text[..]), 0)
            .unwrap()
            .into_vec();
        assert_eq!(
            plain.open("o", ObjectKind::Chunk, b"ctx", &owned).unwrap(),
            text
        );
    }

    /// The envelope is plain AES-256-GCM (the switch from RustCrypto to aws-lc must not
    /// change a byte): an object built by hand from OpenSSL's output (Python
    /// `cryptography`: key 0..32, nonce 100..112, AAD = the 8 header bytes + the context)
    /// opens, and sealing with that nonce gives the same bytes.
    #[test]
    fn envelope_is_standard_aes_256_gcm_known_answer() {
        let data_key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let k = Keys {
            cipher: Some(Arc::new(aes_key(&data_key))),
            mac_key: [0; 32],
            id_key: [0; 32],
        };
        let openssl =
            "3b75bf161f8533fb4a423486b51204dd23ac757dee1ea759881e21c9f14afc8e6c5a27a933c3";
        let mut head = [0u8; HEADER_LEN];
        head[..8].copy_from_slice(b"SFOB\x01\x01\x00\x00");
        for (i, b) in head[8..].iter_mut().enumerate() {
            *b = 100 + i as u8;
        }
        let object = [&head[..], &hex_decode(openssl).unwrap()].concat();
        let context = [9u8; 32];
        assert_eq!(
            k.open("o", ObjectKind::Chunk, &context, &object).unwrap(),
            b"snapfleet known answer"
        );
        let mut body = b"snapfleet known answer".to_vec();
        let tag = k.encrypt(&head, &context, &mut body).unwrap();
        assert_eq!(hex_encode(&[&body[..], &tag[..]].concat()), openssl);
        // GCM spec test case 14 through the key-slot wrapping path (zero key, zero AAD).
        let mut zero = vec![0u8; 16];
        aes_key(&[0; 32])
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut zero,
            )
            .unwrap();
        assert_eq!(
            hex_encode(&zero),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
    }

    #[test]
    fn ids_are_keyed() {
        let a = keys().chunk_id(b"data");
        let b = Keys::derive(&MasterKey([8; 32])).chunk_id(b"data");
        assert_ne!(a, b);
        assert_ne!(a.0, *blake3::hash(b"data").as_bytes());
        assert_eq!(a, keys().chunk_id(b"data"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            hex_decode(&hex_encode(&[0, 1, 255])).unwrap(),
            vec![0, 1, 255]
        );
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
    }
}
