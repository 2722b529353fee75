//! Talking to the coordinator from the CLI: the `--coordinator`/`--certs` flags every
//! fleet command shares, submitting a job, and following it (`--wait`: one progress bar per
//! node from the WatchJob stream) until it ends. Shared by the command files; imports none
//! of them.

use crate::util::{human_bytes, human_duration};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use snapfleet_coordinator::client::Leader;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self as cpb};
use snapfleet_coordinator::tls::Tls;
use snapfleet_coordinator::CancellationToken;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct CoordArg {
    /// Coordinator replicas (any; the leader is found): HOST:PORT[,HOST:PORT…].
    #[arg(long, env = "SNAPFLEET_COORDINATOR", default_value = "127.0.0.1:7000")]
    pub coordinator: String,
}

impl CoordArg {
    /// The TLS identity of `--certs`, loaded and checked (None without it).
    pub fn tls(&self) -> Result<Option<Arc<Tls>>> {
        crate::certs::load_tls(false)
    }

    /// A leader-following client for `--coordinator`, over TLS with `--certs`.
    pub fn leader(&self) -> Result<Leader> {
        Ok(Leader::new([self.coordinator.as_str()]).with_tls(self.tls()?))
    }
}

pub async fn submit(leader: &Leader, kind: &str, spec: serde_json::Value) -> Result<cpb::JobInfo> {
    let req = cpb::SubmitJobRequest {
        kind: kind.into(),
        spec_json: spec.to_string(),
        driven: true,
        ..Default::default()
    };
    let info = leader
        .call(move |ch| {
            let req = req.clone();
            async move { CoordinatorClient::new(ch).submit_job(req).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("submitting the {kind} job: {}", s.message()))?
        .into_inner();
    Ok(info)
}

pub(crate) async fn finish_command(
    leader: &Leader,
    job: cpb::JobInfo,
    wait: bool,
    json: bool,
) -> Result<()> {
    let job = if wait {
        watch(leader, job.id, json).await?
    } else {
        job
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
    } else if !wait {
        println!("{}", job.id);
    } else if let Some(note) = serde_json::from_str::<serde_json::Value>(&job.result_json)
        .ok()
        .and_then(|r| r["throttle_note"].as_str().map(str::to_string))
    {
        eprintln!("note: {note}");
    }
    if wait && job.state != "succeeded" {
        bail!("job {} {}: {}", job.id, job.state, job.failure);
    }
    Ok(())
}

pub(crate) fn job_json(j: &cpb::JobInfo) -> serde_json::Value {
    let p = j.progress.unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "kind": j.kind,
        "state": j.state,
        "phase": j.phase,
        "failure": (!j.failure.is_empty()).then(|| j.failure.clone()),
        "result": serde_json::from_str::<serde_json::Value>(&j.result_json).ok(),
        "spec": serde_json::from_str::<serde_json::Value>(&j.spec_json).ok(),
        "tasks_total": p.tasks_total,
        "tasks_succeeded": p.tasks_succeeded,
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "created_at_ms": j.created_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "nodes": j.nodes.iter().map(|n| serde_json::json!({
            "node": n.node, "bytes_done": n.bytes_done, "bytes_total": n.bytes_total,
            "tasks_done": n.tasks_done, "tasks_total": n.tasks_total,
        })).collect::<Vec<_>>(),
    })
}

/// Follows job `id` (re-attaching after a coordinator failover) until it ends; draws one
/// progress bar per node on a terminal.
pub async fn watch(leader: &Leader, id: u64, quiet_human: bool) -> Result<cpb::JobInfo> {
    let mp = MultiProgress::new();
    if quiet_human {
        mp.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let head = mp.add(ProgressBar::new_spinner());
    head.enable_steady_tick(Duration::from_millis(200));
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let started = std::time::Instant::now();
    let mut last: Option<cpb::JobInfo> = None;
    loop {
        let stream = leader
            .call(move |ch| async move {
                CoordinatorClient::new(ch)
                    .watch_job(cpb::JobRef { id })
                    .await
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => bail!("{}", s.message()),
            Err(s) => bail!("watching job {id}: {}", s.message()),
        };
        while let Ok(Some(j)) = stream.message().await {
            let p = j.progress.unwrap_or_default();
            head.set_message(format!(
                "job {} {} {}: {}/{} tasks, {} / {}",
                j.id,
                j.kind,
                if j.phase.is_empty() {
                    "starting"
                } else {
                    &j.phase
                },
                p.tasks_succeeded,
                p.tasks_total,
                human_bytes(p.bytes_done),
                human_bytes(p.bytes_total)
            ));
            for n in &j.nodes {
                let b = bars.entry(n.node.clone()).or_insert_with(|| {
                    let b = mp.add(ProgressBar::new(n.bytes_total));
                    b.set_style(style.clone());
                    b.set_prefix(format!("node {}", n.node));
                    b
                });
                b.set_length(n.bytes_total.max(1));
                b.set_position(n.bytes_done);
                b.set_message(format!("{}/{} tablets", n.tasks_done, n.tasks_total));
            }
            let done = snapfleet_coordinator::client::job_state_is_terminal(&j.state);
            last = Some(j);
            if done {
                break;
            }
        }
        if let Some(j) = &last {
            if snapfleet_coordinator::client::job_state_is_terminal(&j.state) {
                break;
            }
        }
        // The stream ended without a final state (leader change): attach again.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for b in bars.values() {
        b.finish();
    }
    head.finish_and_clear();
    let j = last.expect("loop ends with a job");
    if !quiet_human {
        eprintln!(
            "job {} {} {} in {}{}",
            j.id,
            j.kind,
            j.state,
            human_duration(started.elapsed()),
            if j.failure.is_empty() {
                String::new()
            } else {
                format!(": {}", j.failure)
            }
        );
    }
    Ok(j)
}

/// Follows scenario jobs (`demo`, benches) with [`watch`]'s progress bars; `quiet` hides
/// them (`--json`).
pub struct Bars {
    pub quiet: bool,
}

#[async_trait::async_trait]
impl snapfleet_localfleet::scenario::Watcher for Bars {
    async fn watch(&self, leader: &Leader, id: u64) -> std::result::Result<cpb::JobInfo, String> {
        watch(leader, id, self.quiet)
            .await
            .map_err(|e| format!("{e:#}"))
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM (systemd stop, kill).
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        crate::db::shutdown_signal().await;
        token.cancel();
    });
}
