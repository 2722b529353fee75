//! `snapfleet bench coordinator`: the coordinator numbers of issue 6, measured on real
//! `snapfleet coordinator` processes on loopback:
//! - failover: kill -9 the leader of 3 replicas, time until a write (SubmitJob) is committed
//!   through the new leader; the killed replica is restarted and caught up before the next
//!   trial; median and p99 against the targets (< 2 s, < 3 s);
//! - throughput: concurrent clients submit one-task jobs to the leader of 3 replicas for a
//!   fixed time; committed entries/s and submit latency;
//! - memory: jobs totalling 100 k tasks on a single replica; its RSS before and after, and
//!   the size of the state-machine snapshot rebuilt from its data directory.
//!
//! Prints a Markdown report (`--json`: the numbers). Never leaves a process behind: every
//! replica is a `ChildProcess`, killed on drop.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use snapfleet_coordinator::pb::coordinator_client::CoordinatorClient;
use snapfleet_coordinator::pb::{self, Empty};
use snapfleet_localfleet::cluster::{spawn, wait_for_file, ChildProcess};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Args)]
pub struct CoordinatorBenchArgs {
    /// Failover trials (kill -9 the leader, time the first committed write after it).
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// How long the throughput clients submit jobs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent throughput clients (each with its own connection).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Tasks held by the single replica in the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Jobs the memory measurement's tasks are spread over (one SubmitJob each).
    #[arg(long, default_value_t = 10)]
    jobs: usize,
    /// Which parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "failover,throughput,memory"
    )]
    only: Vec<String>,
}

/// Failover targets of issue 6.
const FAILOVER_MEDIAN_TARGET_MS: f64 = 2000.0;
const FAILOVER_P99_TARGET_MS: f64 = 3000.0;

#[derive(serde::Serialize)]
struct FailoverResult {
    trials_ms: Vec<f64>,
    median_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// Time for the restarted replica to catch up, median.
    catch_up_median_ms: f64,
}

#[derive(serde::Serialize)]
struct ThroughputResult {
    clients: usize,
    seconds: f64,
    jobs_submitted: u64,
    errors: u64,
    jobs_per_sec: f64,
    /// Leader commit index growth (every committed entry, including the scheduler's).
    committed_entries: u64,
    entries_per_sec: f64,
    latency_median_ms: f64,
    latency_p99_ms: f64,
}

#[derive(serde::Serialize)]
struct MemoryResult {
    jobs: usize,
    tasks: usize,
    submit_seconds: f64,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    hwm_after_bytes: u64,
    rss_per_task_bytes: f64,
    snapshot_bytes: u64,
    snapshot_per_task_bytes: f64,
    tasks_in_rebuilt_state: usize,
}

/// Nearest-rank percentile of `v` (p in 0..=1).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A small job: one task, as a per-tablet task would look.
fn small_job(n: u64) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        kind: "verify".into(),
        spec_json: r#"{"bench":true}"#.into(),
        tasks: vec![pb::TaskSpec {
            payload_json: format!(r#"{{"tablet":"bench-{n}"}}"#),
            ..Default::default()
        }],
        retry_budget: 3,
        ..Default::default()
    }
}

struct Replica {
    id: u64,
    addr: String,
    dir: PathBuf,
    proc: Option<ChildProcess>,
}

/// Replicas as `snapfleet coordinator` processes on fixed loopback ports.
struct Group {
    bin: PathBuf,
    replicas: Vec<Replica>,
    /// `--peers` value; empty for a single replica.
    peers: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Group {
    fn start(bin: &Path, root: &Path, n: u64) -> Result<Self> {
        let mut replicas = Vec::new();
        for id in 1..=n {
            replicas.push(Replica {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                dir: root.join(format!("replica-{id}")),
                proc: None,
            });
        }
        let peers = if n == 1 {
            String::new()
        } else {
            replicas
                .iter()
                .map(|r| format!("{}={}", r.id, r.addr))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut g = Group {
            bin: bin.to_path_buf(),
            replicas,
            peers,
        };
        for id in 1..=n {
            g.spawn(id)?;
        }
        Ok(g)
    }

    fn replica(&self, id: u64) -> &Replica {
        &self.replicas[id as usize - 1]
    }

    /// Starts replica `id` (again) on its port and data directory; returns once it serves.
    fn spawn(&mut self, id: u64) -> Result<()> {
        let bin = self.bin.clone();
        let peers = self.peers.clone();
        let r = &mut self.replicas[id as usize - 1];
        std::fs::create_dir_all(&r.dir)?;
        let addr_file = r.dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = r.dir.with_extension("log");
        let mut args = vec![
            "coordinator".to_string(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            r.addr.clone(),
            "--data".into(),
            r.dir.display().to_string(),
        ];
        if !peers.is_empty() {
            args.extend(["--peers".to_string(), peers]);
        }
        let mut child = spawn(&bin, &format!("coordinator replica {id}"), &args, &log)?;
        wait_for_file(&addr_file, &mut child, &log)?;
        r.proc = Some(child);
        Ok(())
    }

    /// kill -9 (SIGKILL) and reap.
    fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.replicas[id as usize - 1].proc.take() {
            p.kill();
        }
    }

    /// Graceful stop (SIGTERM): the replica syncs its storage, commit index included, before
    /// exiting (after kill -9 the commit index on disk may lag: it is re-learnt on restart).
    fn stop(&mut self, id: u64) -> Result<()> {
        if let Some(mut p) = self.replicas[id as usize - 1].proc.take() {
            std::process::Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status()
                .context("running kill -TERM")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while p.is_running() {
                if Instant::now() > deadline {
                    bail!("coordinator replica {id} did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(|r| r.proc.is_some())
    }

    async fn status(addr: &str) -> Option<pb::ClusterStatusResponse> {
        let mut c = CoordinatorClient::new(channel(addr).ok()?);
        tokio::time::timeout(Duration::from_millis(500), c.cluster_status(Empty {}))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }

    /// Polls until every live replica names the same live leader and has applied everything
    /// that leader has committed; returns the leader's status.
    async fn wait_settled(&self, within: Duration) -> Result<pb::ClusterStatusResponse> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = Vec::new();
            for r in self.live() {
                all.push(Self::status(&r.addr).await);
            }
            let all: Option<Vec<_>> = all.into_iter().collect();
            if let Some(all) = all {
                let leader = all[0].leader_id;
                let live: Vec<u64> = self.live().map(|r| r.id).collect();
                if leader != 0
                    && live.contains(&leader)
                    && all.iter().all(|s| s.leader_id == leader)
                {
                    let ls = all.iter().find(|s| s.id == leader).cloned();
                    if let Some(ls) = ls {
                        if all.iter().all(|s| s.applied_index >= ls.commit_index) {
                            return Ok(ls);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the coordinator replicas did not agree on a caught-up leader within {within:?} (logs next to {})", self.replicas[0].dir.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Kills the leader `trials` times; each trial ends with the first SubmitJob accepted by a
/// surviving replica (every live replica is tried in turn, every 5 ms).
async fn failover(bin: &Path, root: &Path, trials: usize) -> Result<FailoverResult> {
    let mut g = Group::start(bin, &root.join("failover"), 3)?;
    let mut times = Vec::new();
    let mut catch_up = Vec::new();
    let mut n = 0u64;
    for trial in 0..trials {
        let leader = g.wait_settled(Duration::from_secs(60)).await?.id;
        let survivors: Vec<(String, CoordinatorClient<Channel>)> = g
            .live()
            .filter(|r| r.id != leader)
            .map(|r| Ok((r.addr.clone(), CoordinatorClient::new(channel(&r.addr)?))))
            .collect::<Result<_>>()?;
        // Warm the connections so connection set-up is not counted as failover time.
        for (addr, _) in &survivors {
            Group::status(addr).await;
        }
        let t0 = Instant::now();
        g.kill(leader);
        let (ms, by) = 'found: loop {
            for (addr, c) in &survivors {
                n += 1;
                let mut c = c.clone();
                let r =
                    tokio::time::timeout(Duration::from_secs(2), c.submit_job(small_job(n))).await;
                if let Ok(Ok(_)) = r {
                    break 'found (t0.elapsed().as_secs_f64() * 1000.0, addr.clone());
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("trial {trial}: no write committed within 30 s of killing leader {leader}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!(
            "failover trial {}/{trials}: killed leader {leader}, write committed through {by} after {ms:.0} ms",
            trial + 1
        );
        times.push(ms);
        let t1 = Instant::now();
        g.spawn(leader)?;
        g.wait_settled(Duration::from_secs(60)).await?;
        catch_up.push(t1.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(FailoverResult {
        median_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        min_ms: percentile(&times, 0.0),
        max_ms: percentile(&times, 1.0),
        catch_up_median_ms: percentile(&catch_up, 0.5),
        trials_ms: times,
    })
}

async fn throughput(
    bin: &Path,
    root: &Path,
    clients: usize,
    duration: Duration,
) -> Result<ThroughputResult> {
    let g = Group::start(bin, &root.join("throughput"), 3)?;
    let before = g.wait_settled(Duration::from_secs(60)).await?;
    let leader_addr = g.replica(before.id).addr.clone();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut client = CoordinatorClient::new(channel(&leader_addr)?);
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = (c as u64) << 32;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                match client.submit_job(small_job(n)).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        let (l, e) = r?;
        lat.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = Group::status(&leader_addr)
        .await
        .ok_or_else(|| anyhow!("the leader at {leader_addr} stopped answering"))?;
    if after.id != before.id || after.leader_id != before.id {
        bail!("leadership changed during the throughput run; rerun on a quieter machine");
    }
    if lat.is_empty() {
        bail!("no job was submitted in {duration:?} ({errors} errors)");
    }
    let committed = after.commit_index - before.commit_index;
    Ok(ThroughputResult {
        clients,
        seconds,
        jobs_submitted: lat.len() as u64,
        errors,
        jobs_per_sec: lat.len() as f64 / seconds,
        committed_entries: committed,
        entries_per_sec: committed as f64 / seconds,
        latency_median_ms: percentile(&lat, 0.5),
        latency_p99_ms: percentile(&lat, 0.99),
    })
}

/// VmRSS and VmHWM of `pid`, in bytes.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    let field = |name: &str| -> Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("malformed {line:?}"))?
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

async fn memory(bin: &Path, root: &Path, tasks: usize, jobs: usize) -> Result<MemoryResult> {
    let dir = root.join("memory");
    let mut g = Group::start(bin, &dir, 1)?;
    let st = g.wait_settled(Duration::from_secs(60)).await?;
    let addr = g.replica(st.id).addr.clone();
    let pid = g.replica(1).proc.as_ref().expect("started").id();
    let (rss_before, _) = rss(pid)?;
    let mut client = CoordinatorClient::new(channel(&addr)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let jobs = jobs.max(1);
    let t = Instant::now();
    let mut next = 0usize;
    for j in 0..jobs {
        let count = tasks / jobs + usize::from(j < tasks % jobs);
        // What a per-tablet backup task carries: tablet, table, node; never file lists.
        let specs = (next..next + count)
            .map(|i| pb::TaskSpec {
                payload_json: format!(
                    r#"{{"tablet":"{:032x}","table":"bench.t{}","node":"n{}","snapshot":"{:032x}"}}"#,
                    i as u128 * 0x9e37_79b9_7f4a_7c15,
                    i % 64,
                    i % 3 + 1,
                    j as u128 * 0x51_7cc1_b727_220a
                ),
                node: format!("n{}", i % 3 + 1),
                ..Default::default()
            })
            .collect();
        next += count;
        client
            .submit_job(pb::SubmitJobRequest {
                kind: "backup".into(),
                spec_json: format!(r#"{{"db":"bench","job":{j}}}"#),
                tasks: specs,
                retry_budget: 3,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("submitting job {j}: {}", s.message()))?;
    }
    let submit_seconds = t.elapsed().as_secs_f64();
    let (rss_after, hwm_after) = rss(pid)?;
    // The replica's own state, rebuilt from its data directory (snapshot + committed log).
    g.stop(1)?;
    let dir1 = g.replica(1).dir.clone();
    let sm =
        tokio::task::spawn_blocking(move || snapfleet_coordinator::raft_loop::read_state(&dir1))
            .await??;
    let in_state: usize = sm.jobs().map(|j| sm.tasks_of(j.id).count()).sum();
    if in_state != tasks {
        bail!("the replica's state holds {in_state} tasks, expected {tasks}");
    }
    let snapshot_bytes = sm.snapshot().len() as u64;
    Ok(MemoryResult {
        jobs,
        tasks,
        submit_seconds,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        hwm_after_bytes: hwm_after,
        rss_per_task_bytes: rss_after.saturating_sub(rss_before) as f64 / tasks.max(1) as f64,
        snapshot_bytes,
        snapshot_per_task_bytes: snapshot_bytes as f64 / tasks.max(1) as f64,
        tasks_in_rebuilt_state: in_state,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub async fn run(a: CoordinatorBenchArgs, json: bool) -> Result<()> {
    let root = tempfile::Builder::new()
        .prefix("snapfleet-bench-coordinator-")
        .tempdir()?;
    let bin = std::env::current_exe()?;
    let want = |p: &str| a.only.iter().any(|o| o == p);
    let f = if want("failover") {
        Some(failover(&bin, root.path(), a.trials.max(1)).await?)
    } else {
        None
    };
    let t = if want("throughput") {
        Some(throughput(&bin, root.path(), a.clients.max(1), a.duration).await?)
    } else {
        None
    };
    let m = if want("memory") {
        Some(memory(&bin, root.path(), a.tasks, a.jobs).await?)
    } else {
        None
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "failover": f, "throughput": t, "memory": m,
                "targets": {"failover_median_ms": FAILOVER_MEDIAN_TARGET_MS, "failover_p99_ms": FAILOVER_P99_TARGET_MS},
            }))?
        );
        return Ok(());
    }
    println!("## Coordinator (3 × `snapfleet coordinator` on loopback)\n");
    if let Some(f) = &f {
        println!(
            "### Failover: kill -9 the leader → first committed write through the new leader ({} trials)\n",
            f.trials_ms.len()
        );
        println!("| | measured | target | |\n|---|---|---|---|");
        println!(
            "| median | {:.0} ms | < {:.0} ms | {} |",
            f.median_ms,
            FAILOVER_MEDIAN_TARGET_MS,
            verdict(f.median_ms < FAILOVER_MEDIAN_TARGET_MS)
        );
        println!(
            "| p99 | {:.0} ms | < {:.0} ms | {} |",
            f.p99_ms,
            FAILOVER_P99_TARGET_MS,
            verdict(f.p99_ms < FAILOVER_P99_TARGET_MS)
        );
        println!(
            "\nmin {:.0} ms, max {:.0} ms; restarted replica caught up in {:.0} ms (median). Trials (ms): {}\n",
            f.min_ms,
            f.max_ms,
            f.catch_up_median_ms,
            f.trials_ms
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(t) = &t {
        println!(
            "### Committed entries per second ({} clients, {:.1} s, one-task SubmitJob each)\n",
            t.clients, t.seconds
        );
        println!("| jobs submitted | jobs/s | committed entries | entries/s | latency median | latency p99 | errors |\n|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.1} ms | {:.1} ms | {} |\n",
            t.jobs_submitted,
            t.jobs_per_sec,
            t.committed_entries,
            t.entries_per_sec,
            t.latency_median_ms,
            t.latency_p99_ms,
            t.errors
        );
    }
    if let Some(m) = &m {
        println!(
            "### State-machine memory: {} tasks in {} jobs on a single replica\n",
            m.tasks, m.jobs
        );
        println!("| RSS before | RSS after | peak RSS (VmHWM) | RSS per task | snapshot | snapshot per task | submit time |\n|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.0} B | {} | {:.0} B | {:.1} s |",
            mib(m.rss_before_bytes),
            mib(m.rss_after_bytes),
            mib(m.hwm_after_bytes),
            m.rss_per_task_bytes,
            mib(m.snapshot_bytes),
            m.snapshot_per_task_bytes,
            m.submit_seconds
        );
        println!(
            "\nThe snapshot is the replica's state rebuilt from its data directory (snapshot + committed log, {} tasks): per-tablet tasks and counters only, no per-file lists.",
            m.tasks_in_rebuilt_state
        );
    }
    Ok(())
}
