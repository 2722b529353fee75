//! The staging janitor: removes this node's staged restores once their job has ended.
//!
//! A restore stages each tablet under `<node data>/staging/restore-<job id>/` on the node's
//! own host, where only this agent can reach it (the coordinator may run elsewhere). Every
//! [`PERIOD`] and at start-up the agent asks the coordinator about each staged restore and
//! removes the directories of jobs that ended, however they ended (succeeded, failed,
//! cancelled, or forgotten by a coordinator that lost its state), so nothing is left behind
//! after a crash of any process either. A job still running is never touched.

use snapfleet_api::client::Leader;
use snapfleet_api::pb::coordinator_client::CoordinatorClient;
use snapfleet_api::pb::{self as cpb};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the staging directory is looked at.
pub const PERIOD: Duration = Duration::from_secs(3);

/// The job a staged restore belongs to: `restore-<job id>` (as the restore driver names it).
fn job_of(name: &str) -> Option<u64> {
    name.strip_prefix("restore-")?.parse().ok()
}

/// Whether the job has ended (or is unknown to the coordinator); None if we cannot tell now.
async fn ended(leader: &Leader, id: u64) -> Option<bool> {
    let r = leader
        .call(move |ch| async move { CoordinatorClient::new(ch).get_job(cpb::JobRef { id }).await })
        .await;
    match r {
        Ok(job) => Some(snapfleet_api::client::job_state_is_terminal(
            &job.into_inner().state,
        )),
        Err(s) if s.code() == tonic::Code::NotFound => Some(true),
        Err(s) => {
            warn!(job = id, status = %s.message(), "cannot ask about a staged restore's job");
            None
        }
    }
}

/// One look: removes the staged restores of ended jobs. Returns the directories removed.
pub async fn sweep(leader: &Leader, staging: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return Vec::new(); // nothing staged yet
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(job) = job_of(&name) else {
            continue; // not ours: leave it
        };
        if ended(leader, job).await != Some(true) {
            continue;
        }
        let dir = e.path();
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d)).await {
            Ok(Ok(())) => {
                info!(dir = %dir.display(), job, "removed the staging of an ended restore");
                removed.push(dir);
            }
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(err)) => warn!(dir = %dir.display(), error = %err, "cannot remove staging"),
            Err(err) => warn!(error = %err, "staging removal task failed"),
        }
    }
    removed
}

/// Sweeps every [`PERIOD`] until `shutdown`.
pub async fn run(leader: &Leader, staging: &Path, shutdown: CancellationToken) {
    loop {
        sweep(leader, staging).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_restore_directories_name_a_job() {
        assert_eq!(super::job_of("restore-42"), Some(42));
        assert_eq!(super::job_of("restore-"), None);
        assert_eq!(super::job_of("restore-x"), None);
        assert_eq!(super::job_of("lost+found"), None);
    }
}
