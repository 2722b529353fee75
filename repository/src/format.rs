//! `snapfleet-repo.json`: the self-describing root of a repository — format version, repo id,
//! chunker parameters, and key slots. Each key slot holds the master key wrapped with
//! AES-256-GCM under a key-encryption key derived from a passphrase by Argon2id (own salt and
//! cost parameters per slot), so keys can be added and removed without touching any data.
//!
//! This file is plain JSON and must never contain anything secret in the clear: no master
//! key, no passphrase, no derived key. The one exception is an unencrypted repository
//! (`repo init --encryption none`, format version 2): it has no key slots and keeps its key
//! for chunk ids and checksums here, because nothing in it is secret. The version is checked
//! before anything else is parsed, so a future format is refused cleanly instead of misread
//! (a build that knows only version 1 refuses an unencrypted repository by its version).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::crypto::{self, MasterKey};
use crate::error::{Error, Result};
use crate::ids::KeyId;
use crate::ids::{hex_decode, hex_encode};

/// The repository format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Format 1 without encryption: no key slots, `unencrypted_key` instead.
pub const FORMAT_VERSION_UNENCRYPTED: u64 = 2;
/// Object key of the repository description.
pub const CONFIG_KEY: &str = "snapfleet-repo.json";

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: ~0.1–0.3 s on a server core, per open.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 << 10,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// OWASP's minimum for Argon2id (19 MiB, 2 passes): for tests and small machines.
    pub fn minimum() -> Self {
        KdfParams {
            m_cost_kib: 19 << 10,
            t_cost: 2,
            p_cost: 1,
        }
    }

    /// Bounds on what a repository's config may ask of every client that opens it: the
    /// config comes from the bucket, so whoever can write the bucket must not be able to make
    /// every open hang or run out of memory.
    pub const MAX_M_COST_KIB: u32 = 2 << 20; // 2 GiB
    pub const MIN_M_COST_KIB: u32 = 8 << 10; // 8 MiB
    pub const MAX_T_COST: u32 = 16;
    pub const MAX_P_COST: u32 = 16;
    /// Memory × passes: 8 GiB·pass (e.g. 1 GiB × 8), about ten seconds on a slow core.
    pub const MAX_WORK_KIB: u64 = 8 << 20;

    /// Refuses parameters outside the bounds above, naming the bound.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::InvalidArgument(format!(
                "the repository's key derivation parameters {self:?} are refused: {why}; the \
                 config file (snapfleet-repo.json) was changed by someone other than snapfleet"
            )))
        };
        if !(Self::MIN_M_COST_KIB..=Self::MAX_M_COST_KIB).contains(&self.m_cost_kib) {
            return bad(format!(
                "memory must be {}-{} KiB",
                Self::MIN_M_COST_KIB,
                Self::MAX_M_COST_KIB
            ));
        }
        if !(1..=Self::MAX_T_COST).contains(&self.t_cost) {
            return bad(format!("passes must be 1-{}", Self::MAX_T_COST));
        }
        if !(1..=Self::MAX_P_COST).contains(&self.p_cost) {
            return bad(format!("lanes must be 1-{}", Self::MAX_P_COST));
        }
        if u64::from(self.m_cost_kib) * u64::from(self.t_cost) > Self::MAX_WORK_KIB {
            return bad(format!(
                "memory × passes must be at most {} KiB",
                Self::MAX_WORK_KIB
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        self.check()?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| Error::InvalidArgument(format!("argon2 parameters {self:?}: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase, salt, &mut out)
            .map_err(|e| Error::InvalidArgument(format!("argon2: {e}")))?;
        Ok(out)
    }
}

/// One passphrase's wrapping of the master key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySlot {
    pub id: KeyId,
    pub created: DateTime<Utc>,
    /// Always "argon2id" in format 1.
    pub kdf: String,
    pub kdf_params: KdfParams,
    /// Hex.
    pub salt: String,
    /// Hex, 12 bytes.
    pub nonce: String,
    /// Hex: AES-256-GCM(master key) + tag.
    pub wrapped_key: String,
}

/// What `list_keys` shows: no key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: KeyId,
    pub created: DateTime<Utc>,
    pub kdf_params: KdfParams,
}

/// The parsed `snapfleet-repo.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u64,
    pub repo_id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    pub keys: Vec<KeySlot>,
    /// Hex: the key of an unencrypted repository (format 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unencrypted_key: Option<String>,
}

fn slot_aad(repo_id: &str, slot: &KeyId) -> Vec<u8> {
    format!("snapfleet key slot v1|{repo_id}|{slot}").into_bytes()
}

impl KeySlot {
    /// Wraps `master` under `passphrase`.
    pub(crate) fn create(
        repo_id: &str,
        master: &MasterKey,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::InvalidArgument(
                "the passphrase must not be empty".into(),
            ));
        }
        let id = KeyId::generate();
        let salt: [u8; 16] = rand::random();
        let kek = params.derive(passphrase, &salt)?;
        let (nonce, wrapped) = crypto::wrap(&kek, &slot_aad(repo_id, &id), &master.0);
        Ok(KeySlot {
            id,
            created: Utc::now(),
            kdf: "argon2id".into(),
            kdf_params: params,
            salt: hex_encode(&salt),
            nonce: hex_encode(&nonce),
            wrapped_key: hex_encode(&wrapped),
        })
    }

    /// `Ok(None)` when the passphrase does not open this slot.
    pub(crate) fn open(&self, repo_id: &str, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        let bad =
            |what: &str| Error::corrupt(CONFIG_KEY, format!("key slot {}: bad {what}", self.id));
        if self.kdf != "argon2id" {
            return Err(bad("kdf name"));
        }
        let salt = hex_decode(&self.salt).ok_or_else(|| bad("salt"))?;
        let nonce: [u8; 12] = hex_decode(&self.nonce)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| bad("nonce"))?;
        let wrapped = hex_decode(&self.wrapped_key).ok_or_else(|| bad("wrapped key"))?;
        let kek = self.kdf_params.derive(passphrase, &salt)?;
        match crypto::unwrap(&kek, &slot_aad(repo_id, &self.id), &nonce, &wrapped) {
            None => Ok(None),
            Some(m) => {
                let arr: [u8; 32] = m.try_into().map_err(|_| bad("master key length"))?;
                Ok(Some(MasterKey(arr)))
            }
        }
    }

    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id.clone(),
            created: self.created,
            kdf_params: self.kdf_params,
        }
    }
}

impl RepoConfig {
    /// A new configuration with one key slot for `passphrase`.
    pub(crate) fn new(
        master: &MasterKey,
        passphrase: &[u8],
        kdf: KdfParams,
        chunker: ChunkerParams,
    ) -> Result<Self> {
        chunker.validate()?;
        let repo_id = uuid::Uuid::new_v4().to_string();
        let slot = KeySlot::create(&repo_id, master, passphrase, kdf)?;
        Ok(RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id,
            created: Utc::now(),
            chunker,
            keys: vec![slot],
            unencrypted_key: None,
        })
    }

    /// A new unencrypted configuration: no key slots, `master` kept in the clear.
    pub(crate) fn new_unencrypted(master: &MasterKey, chunker: ChunkerParams) -> Result<Self> {
        chunker.validate()?;
        Ok(RepoConfig {
            format_version: FORMAT_VERSION_UNENCRYPTED,
            repo_id: uuid::Uuid::new_v4().to_string(),
            created: Utc::now(),
            chunker,
            keys: vec![],
            unencrypted_key: Some(hex_encode(&master.0)),
        })
    }

    /// The key of an unencrypted repository; `None` for an encrypted one.
    pub(crate) fn unencrypted_master(&self) -> Result<Option<MasterKey>> {
        match &self.unencrypted_key {
            None => Ok(None),
            Some(h) => hex_decode(h)
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .map(|k| Some(MasterKey(k)))
                .ok_or_else(|| Error::corrupt(CONFIG_KEY, "bad unencrypted_key")),
        }
    }

    /// Parses the file, checking the format version before anything else.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(CONFIG_KEY, format!("not JSON: {e}")))?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| Error::corrupt(CONFIG_KEY, "no numeric format_version"))?;
        if found != FORMAT_VERSION && found != FORMAT_VERSION_UNENCRYPTED {
            return Err(Error::UnsupportedFormat {
                found,
                supported: FORMAT_VERSION_UNENCRYPTED,
            });
        }
        let config: RepoConfig = serde_json::from_value(value)
            .map_err(|e| Error::corrupt(CONFIG_KEY, format!("unexpected layout: {e}")))?;
        config.chunker.validate()?;
        if found == FORMAT_VERSION_UNENCRYPTED {
            if !config.keys.is_empty() || config.unencrypted_master()?.is_none() {
                return Err(Error::corrupt(
                    CONFIG_KEY,
                    "format 2 (unencrypted) must have unencrypted_key and no key slots",
                ));
            }
        } else if config.keys.is_empty() || config.unencrypted_key.is_some() {
            return Err(Error::corrupt(
                CONFIG_KEY,
                "format 1 must have key slots and no unencrypted_key",
            ));
        }
        Ok(config)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config serializes")
    }

    /// Tries every slot; the first that opens yields the master key.
    pub(crate) fn unlock(&self, passphrase: &[u8]) -> Result<(KeyId, MasterKey)> {
        for slot in &self.keys {
            if let Some(master) = slot.open(&self.repo_id, passphrase)? {
                return Ok((slot.id.clone(), master));
            }
        }
        Err(Error::WrongPassphrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_open_only_with_their_passphrase() {
        let master = MasterKey([3; 32]);
        let cfg = RepoConfig::new(
            &master,
            b"secret",
            KdfParams::minimum(),
            ChunkerParams::default(),
        )
        .unwrap();
        let json = cfg.to_json();
        assert!(!String::from_utf8_lossy(&json).contains("secret"));
        let parsed = RepoConfig::parse(&json).unwrap();
        let (_, m) = parsed.unlock(b"secret").unwrap();
        assert_eq!(m.0, master.0);
        assert!(matches!(
            parsed.unlock(b"wrong"),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_at_once() {
        let master = MasterKey([3; 32]);
        let cfg = RepoConfig::new(
            &master,
            b"secret",
            KdfParams::minimum(),
            ChunkerParams::default(),
        )
        .unwrap();
        let good: serde_json::Value = serde_json::from_slice(&cfg.to_json()).unwrap();
        let text = good.to_string();
        let min = KdfParams::minimum();
        for (m, t, p) in [
            (u32::MAX, 1, 1),                   // 4 TiB of memory
            (KdfParams::MAX_M_COST_KIB, 16, 1), // 4 GiB × 16 passes
            (min.m_cost_kib, u32::MAX, 1),      // four billion passes
            (min.m_cost_kib, 2, 1 << 20),       // a million lanes
            (1, 1, 1),                          // 1 KiB: below the floor
        ] {
            let hostile = text
                .replace(
                    &format!("\"m_cost_kib\":{}", min.m_cost_kib),
                    &format!("\"m_cost_kib\":{m}"),
                )
                .replace(
                    &format!("\"t_cost\":{}", min.t_cost),
                    &format!("\"t_cost\":{t}"),
                )
                .replace(
                    &format!("\"p_cost\":{}", min.p_cost),
                    &format!("\"p_cost\":{p}"),
                );
            assert_ne!(hostile, text, "the test must change the parameters");
            let started = std::time::Instant::now();
            let err = RepoConfig::parse(hostile.as_bytes())
                .and_then(|c| c.unlock(b"secret").map(|_| ()))
                .unwrap_err();
            assert!(
                err.to_string().contains("key derivation parameters"),
                "{m} {t} {p}: {err}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn unknown_versions_are_refused_before_parsing() {
        let v = br#"{"format_version": 7, "whatever": true}"#;
        match RepoConfig::parse(v) {
            Err(Error::UnsupportedFormat {
                found: 7,
                supported: 2,
            }) => {}
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            RepoConfig::parse(b"nope"),
            Err(Error::CorruptObject { .. })
        ));
    }

    #[test]
    fn a_slot_moved_to_another_repo_does_not_open() {
        let master = MasterKey([3; 32]);
        let mut a = RepoConfig::new(
            &master,
            b"pw",
            KdfParams::minimum(),
            ChunkerParams::default(),
        )
        .unwrap();
        a.repo_id = "other".into();
        assert!(matches!(a.unlock(b"pw"), Err(Error::WrongPassphrase)));
    }
}
