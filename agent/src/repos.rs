//! Opening repositories by URL, once per process: the passphrase comes from the process's
//! own configuration (never from the coordinator's log), and every store gets the retry
//! layer and a bandwidth budget that can change while tasks run.

use crate::error::{AgentError, Result};
use snapfleet_repository::layers::{Rate, RetryConfig};
use snapfleet_repository::{open_store, with_layers, Repository, StoreLayers};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
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
            let s = std::fs::read(&f).map_err(|source| AgentError::Io {
                what: format!("password file {}", f.display()),
                source,
            })?;
            let trimmed = s.strip_suffix(b"\n").unwrap_or(&s);
            return Ok(trimmed.to_vec());
        }
        if let Some(p) = std::env::var_os("SNAPFLEET_PASSWORD") {
            return Ok(p.into_encoded_bytes());
        }
        Err(AgentError::NoPassphrase {
            url: url.to_string(),
        })
    }
}

/// Opened repositories, by URL, sharing one bandwidth budget.
pub struct Repos {
    pass: Passphrase,
    open: Mutex<HashMap<String, Arc<Repository>>>,
    rate: Rate,
}

impl Repos {
    pub fn new(pass: Passphrase) -> Self {
        Self {
            pass,
            open: Mutex::new(HashMap::new()),
            rate: Rate::default(),
        }
    }

    /// The process-wide budget in bytes/s (0 = unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub async fn get(&self, url: &str) -> Result<Arc<Repository>> {
        let mut open = self.open.lock().await;
        if let Some(r) = open.get(url) {
            return Ok(r.clone());
        }
        let store = with_layers(
            open_store(url)?,
            StoreLayers {
                retry: Some(RetryConfig::default()),
                rate: Some(self.rate.clone()),
            },
        );
        let pass = self.pass.read(url)?;
        let repo = Arc::new(Repository::open(store, &pass).await?);
        open.insert(url.to_string(), repo.clone());
        Ok(repo)
    }
}
