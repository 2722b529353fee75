//! Opening repositories by URL, once per process: the passphrase comes from the process's
//! own configuration (never from the coordinator's log), and every store gets the retry
//! layer and a bandwidth budget that can change while tasks run, lowered by the adaptive
//! rate (`layers/aimd.rs`) while the store throttles. Agents and the leader's job drivers
//! both open repositories through it.

use crate::error::{Error, Result};
use crate::layers::{AdaptiveRate, AimdConfig, FaultConfig, FaultStore, RetryConfig};
use crate::{open_store, with_layers, Repository, StoreLayers};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Where the repository passphrase comes from.
#[derive(Debug, Clone, Default)]
pub struct Passphrase {
    pub file: Option<PathBuf>,
}

impl Passphrase {
    /// `file`, else `$SNAPFLEET_PASSWORD_FILE`, else `$SNAPFLEET_PASSWORD`.
    pub fn read(&self, url: &str) -> Result<Vec<u8>> {
        let file = self
            .file
            .clone()
            .or_else(|| std::env::var_os("SNAPFLEET_PASSWORD_FILE").map(PathBuf::from));
        if let Some(f) = file {
            return read_passphrase_file(&f);
        }
        if let Some(p) = std::env::var_os("SNAPFLEET_PASSWORD") {
            return Ok(p.into_encoded_bytes());
        }
        Err(Error::NoPassphrase {
            url: url.to_string(),
        })
    }
}

/// Reads a passphrase file: its first line, without the line ending (the same rule for
/// `repo init`, the coordinator and the agents, so a file they share unlocks alike).
pub fn read_passphrase_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read the passphrase file {}: {e}; check --password-file / \
             SNAPFLEET_PASSWORD_FILE",
            path.display()
        ))
    })?;
    let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(line.to_vec())
}

/// Opened repositories, by URL, sharing one bandwidth budget and one adaptive rate.
pub struct Repos {
    pass: Passphrase,
    open: Mutex<HashMap<String, Arc<Repository>>>,
    adaptive: Arc<AdaptiveRate>,
    faults: Option<FaultConfig>,
}

impl Repos {
    pub fn new(pass: Passphrase) -> Self {
        Self {
            pass,
            open: Mutex::new(HashMap::new()),
            adaptive: Arc::new(AdaptiveRate::new(AimdConfig::default())),
            faults: None,
        }
    }

    /// Drills and tests only: every store opened from now on injects these faults (below
    /// the retry layer, so they are retried and throttle the adaptive rate like real ones).
    pub fn with_faults(mut self, faults: Option<FaultConfig>) -> Self {
        self.faults = faults;
        self
    }

    /// The process-wide budget in bytes/s (0 = unlimited); the rate paced to may be lower
    /// while the store throttles.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.adaptive.set_budget(bytes_per_sec);
    }

    /// The rate paced to now (bytes/s, 0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.adaptive.current()
    }

    /// The adaptive rate (throttling counts and the lowest rate, for task results).
    pub fn adaptive(&self) -> &Arc<AdaptiveRate> {
        &self.adaptive
    }

    pub async fn get(&self, url: &str) -> Result<Arc<Repository>> {
        let mut open = self.open.lock().await;
        if let Some(r) = open.get(url) {
            return Ok(r.clone());
        }
        let mut store = open_store(url)?;
        if let Some(f) = self.faults {
            tracing::warn!(url, faults = ?f, "injecting object-store faults (drill mode)");
            store = Arc::new(FaultStore::new(store, f));
        }
        let store = with_layers(
            store,
            StoreLayers {
                retry: Some(RetryConfig::default()),
                rate: Some(self.adaptive.layer_rate()),
                observer: Some(self.adaptive.clone()),
            },
        );
        let repo = match self.pass.read(url) {
            Ok(pass) => Repository::open(store, &pass).await?,
            // An unencrypted repository needs no passphrase; an encrypted one reports the
            // missing passphrase as before.
            Err(no_pass @ Error::NoPassphrase { .. }) => {
                match Repository::open_without_passphrase(store).await {
                    Err(Error::PassphraseRequired { .. }) => return Err(no_pass),
                    r => r?,
                }
            }
            Err(e) => return Err(e),
        };
        let repo = Arc::new(repo);
        open.insert(url.to_string(), repo.clone());
        Ok(repo)
    }
}
