//! The client gRPC service (CLI, console): submit, get, list, cancel and watch jobs, and
//! cluster status, and membership changes (add or remove a replica). Writes and reads are served by the leader only (followers answer
//! FAILED_PRECONDITION "not leader; leader is N at ADDR"); reads are linearizable via
//! ReadIndex. `ClusterStatus` is answered by any replica. This file must never change state
//! except by proposing commands.

use crate::command::{Command, Response, TaskSpec};
use crate::convert;
use crate::ids::{AgentId, JobId, LeaderTime, RepoId, ScheduleId};
use crate::model::{Affinity, JobKind, Schedule};
use crate::pb::coordinator_server::Coordinator;
use crate::pb::{self, Empty};
use crate::raft_loop::{MemberChange, Membership};
use crate::shared::Shared;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response as TResponse, Status};
use tracing::{info_span, Instrument};

pub(crate) struct ClientApi(pub Arc<Shared>);

fn replicas(members: &std::collections::BTreeMap<u64, String>) -> Vec<pb::Replica> {
    members
        .iter()
        .map(|(id, address)| pb::Replica {
            id: *id,
            address: address.clone(),
        })
        .collect()
}

fn membership(m: Membership) -> pb::MembershipResponse {
    pb::MembershipResponse {
        index: m.index,
        replicas: replicas(&m.members),
    }
}

/// The longest schedule interval accepted (366 days).
/// Jobs in one `ListJobs` reply at most (page on with `before_id`).
pub const LIST_PAGE: usize = 1_000;
/// How often a `WatchJob` stream looks at its job at most.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_SCHEDULE_INTERVAL_MS: u64 = 366 * 24 * 3_600_000;

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::JobInfo, Status>> + Send>>;

impl ClientApi {
    async fn leader_read(&self) -> Result<(), Status> {
        self.0.raft.require_leader()?;
        self.0.raft.read_index().await?;
        Ok(())
    }

    fn job_info(&self, id: JobId) -> Result<pb::JobInfo, Status> {
        self.0
            .raft
            .read(|sm| {
                sm.job(id)
                    .map(|j| convert::job_with_tasks(j, sm.tasks_of(id)))
            })
            .ok_or_else(|| {
                Status::from(crate::CoordinatorError::from(
                    crate::command::Rejection::JobNotFound(id),
                ))
            })
    }
}

#[tonic::async_trait]
impl Coordinator for ClientApi {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<TResponse<pb::JobInfo>, Status> {
        let caller = crate::tls::caller(&req);
        let r = req.into_inner();
        let span = info_span!("rpc", method = "SubmitJob", kind = %r.kind, tasks = r.tasks.len());
        async move {
            self.0.raft.require_leader()?;
            // Raw task payloads go to agents as they are: only an admin may write them. An
            // operator submits driven jobs, whose tasks the leader's driver makes.
            if !r.tasks.is_empty() {
                if let Some((who, role)) = &caller {
                    if *role != crate::tls::Role::Admin {
                        return Err(Status::permission_denied(format!(
                            "{who} ({role}) may not submit a job with raw tasks: that needs the \
                             admin role; use `snapfleet backup create` / `restore`, whose tasks \
                             the coordinator makes"
                        )));
                    }
                }
            }
            let kind = JobKind::parse(&r.kind).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown job kind {:?}: use backup, restore, clone, pitr, verify, gc or copy",
                    r.kind
                ))
            })?;
            if r.driven && !self.0.drivers.iter().any(|d| d.handles(kind)) {
                return Err(Status::invalid_argument(format!(
                    "this coordinator has no driver for {} jobs: start it with the snapfleet binary \
                     (`snapfleet coordinator`), which runs backup and restore jobs",
                    kind.as_str()
                )));
            }
            let mut tasks = Vec::with_capacity(r.tasks.len());
            for t in &r.tasks {
                tasks.push(TaskSpec {
                    payload: convert::json("task payload_json", &t.payload_json)?,
                    affinity: Affinity {
                        agent: (!t.agent.is_empty()).then(|| AgentId(t.agent.clone())),
                        node: (!t.node.is_empty()).then(|| t.node.clone()),
                    },
                });
            }
            let cmd = Command::SubmitJob {
                kind,
                spec: convert::json("spec_json", &r.spec_json)?,
                repository: (!r.repository.is_empty()).then(|| RepoId(r.repository.clone())),
                tasks,
                retry_budget: r.retry_budget,
                now: LeaderTime::now(),
                driven: r.driven,
            };
            match self.0.raft.propose(cmd).await? {
                Response::JobSubmitted(id) => {
                    tracing::info!(job = id.0, "job submitted");
                    Ok(TResponse::new(self.job_info(id)?))
                }
                other => Err(Status::internal(format!("unexpected response {other:?}"))),
            }
        }
        .instrument(span)
        .await
    }

    async fn get_job(&self, req: Request<pb::JobRef>) -> Result<TResponse<pb::JobInfo>, Status> {
        let id = JobId(req.into_inner().id);
        async move {
            self.leader_read().await?;
            Ok(TResponse::new(self.job_info(id)?))
        }
        .instrument(info_span!("rpc", method = "GetJob", job = id.0))
        .await
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<TResponse<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        async move {
            self.leader_read().await?;
            // One page, newest first: at most LIST_PAGE jobs whatever was asked, so that
            // 10,000 jobs never make one reply (or one read of the state) unbounded.
            let limit = match r.limit {
                0 => LIST_PAGE,
                n => (n as usize).min(LIST_PAGE),
            };
            let before = if r.before_id == 0 {
                u64::MAX
            } else {
                r.before_id
            };
            let (jobs, more) = self.0.raft.read(|sm| {
                let mut page = sm
                    .jobs()
                    .rev()
                    .filter(|j| j.id.0 < before)
                    .filter(|j| r.include_finished || !j.state.is_terminal());
                let jobs: Vec<pb::JobInfo> = page
                    .by_ref()
                    .take(limit)
                    .map(|j| convert::job_with_tasks(j, sm.tasks_of(j.id)))
                    .collect();
                (jobs, page.next().is_some())
            });
            let next_before_id = match jobs.last() {
                Some(j) if more => j.id,
                _ => 0,
            };
            Ok(TResponse::new(pb::ListJobsResponse {
                jobs,
                next_before_id,
            }))
        }
        .instrument(info_span!("rpc", method = "ListJobs"))
        .await
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<TResponse<pb::JobInfo>, Status> {
        let r = req.into_inner();
        async move {
            self.0.raft.require_leader()?;
            let reason = if r.reason.is_empty() {
                "requested by client".to_string()
            } else {
                r.reason
            };
            self.0
                .raft
                .propose(Command::CancelJob {
                    job: JobId(r.id),
                    reason,
                    now: LeaderTime::now(),
                })
                .await?;
            Ok(TResponse::new(self.job_info(JobId(r.id))?))
        }
        .instrument(info_span!("rpc", method = "CancelJob", job = r.id))
        .await
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        req: Request<pb::JobRef>,
    ) -> Result<TResponse<Self::WatchJobStream>, Status> {
        let id = JobId(req.into_inner().id);
        self.leader_read()
            .instrument(info_span!("rpc", method = "WatchJob", job = id.0))
            .await?;
        let first = self.job_info(id)?;
        let shared = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        // The stream's task ends when the job finishes, the client goes away, leadership is
        // lost or the replica shuts down.
        tokio::spawn(
            async move {
                let mut status = shared.raft.watch_status();
                let mut last = None;
                let mut next = Some(first);
                let mut looked = tokio::time::Instant::now();
                loop {
                    if let Some(info) = next.take() {
                        if last.as_ref() != Some(&info) {
                            let done = info.state != "pending" && info.state != "running";
                            if tx.send(Ok(info.clone())).await.is_err() || done {
                                return;
                            }
                            last = Some(info);
                        }
                    }
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        r = status.changed() => if r.is_err() { return },
                    }
                    // Building the per-node view reads every task of the job: at most once
                    // per WATCH_EVERY, not once per applied entry (a 10,000-task job applies
                    // tens of thousands of entries while watched).
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep_until(looked + WATCH_EVERY) => {}
                    }
                    looked = tokio::time::Instant::now();
                    if let Err(e) = shared.raft.require_leader() {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                    next = shared.raft.read(|sm| {
                        sm.job(id)
                            .map(|j| convert::job_with_tasks(j, sm.tasks_of(id)))
                    });
                }
            }
            .instrument(info_span!("watch_job", job = id.0)),
        );
        Ok(TResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cluster_status(
        &self,
        _req: Request<Empty>,
    ) -> Result<TResponse<pb::ClusterStatusResponse>, Status> {
        let raft = &self.0.raft;
        let st = raft.status();
        let heartbeats = self.0.heartbeats.lock().expect("lock").clone();
        let agents = raft.read(|sm| {
            sm.agents()
                .map(|a| convert::agent(a, heartbeats.get(&a.id).copied().unwrap_or(0)))
                .collect()
        });
        let archives = raft.read(convert::archives);
        Ok(TResponse::new(pb::ClusterStatusResponse {
            archives,
            id: st.id,
            role: st.role.to_string(),
            leader_id: st.leader_id,
            leader_address: raft.peers().get(&st.leader_id).cloned().unwrap_or_default(),
            term: st.term,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            snapshot_index: st.snapshot_index,
            log_entries: st.log_entries,
            replicas: replicas(&raft.peers()),
            agents,
        }))
    }

    async fn put_schedule(
        &self,
        req: Request<pb::ScheduleInfo>,
    ) -> Result<TResponse<pb::ScheduleInfo>, Status> {
        let r = req.into_inner();
        async move {
            self.0.raft.require_leader()?;
            let kind = JobKind::parse(&r.kind).ok_or_else(|| {
                Status::invalid_argument(format!("unknown job kind {:?}", r.kind))
            })?;
            if !self.0.drivers.iter().any(|d| d.handles(kind)) {
                return Err(Status::invalid_argument(format!(
                    "this coordinator has no driver for {} jobs; schedules need one",
                    kind.as_str()
                )));
            }
            // Checked here, at proposal: whatever is committed is applied by every replica.
            if !(1_000..=MAX_SCHEDULE_INTERVAL_MS).contains(&r.interval_ms) {
                return Err(Status::invalid_argument(format!(
                    "a schedule's interval must be between 1s and 366d, not {} ms",
                    r.interval_ms
                )));
            }
            if !r.id.is_empty() {
                snapfleet_api::ids::check("schedule id", &r.id)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            }
            let now = LeaderTime::now();
            let id = if r.id.is_empty() {
                format!("s{}", now.0)
            } else {
                r.id.clone()
            };
            let schedule = Schedule {
                id: ScheduleId(id),
                kind,
                spec: convert::json("spec_json", &r.spec_json)?,
                repository: None,
                interval_ms: r.interval_ms,
                retention: r.retention,
                next_due: if r.next_due_ms == 0 {
                    now
                } else {
                    LeaderTime(r.next_due_ms)
                },
            };
            self.0
                .raft
                .propose(Command::PutSchedule(schedule.clone()))
                .await?;
            tracing::info!(schedule = %schedule.id, "schedule stored");
            Ok(TResponse::new(convert::schedule(&schedule)))
        }
        .instrument(info_span!("rpc", method = "PutSchedule"))
        .await
    }

    async fn list_schedules(
        &self,
        _req: Request<Empty>,
    ) -> Result<TResponse<pb::ListSchedulesResponse>, Status> {
        async move {
            self.leader_read().await?;
            let schedules = self
                .0
                .raft
                .read(|sm| sm.schedules().map(convert::schedule).collect());
            Ok(TResponse::new(pb::ListSchedulesResponse { schedules }))
        }
        .instrument(info_span!("rpc", method = "ListSchedules"))
        .await
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<TResponse<Empty>, Status> {
        let r = req.into_inner();
        async move {
            self.0.raft.require_leader()?;
            let id = ScheduleId(r.id.clone());
            if !self.0.raft.read(|sm| sm.schedules().any(|s| s.id == id)) {
                return Err(Status::not_found(format!(
                    "schedule {:?} does not exist: list them with `snapfleet backup schedule list`",
                    r.id
                )));
            }
            self.0.raft.propose(Command::DeleteSchedule(id)).await?;
            Ok(TResponse::new(Empty {}))
        }
        .instrument(info_span!("rpc", method = "DeleteSchedule"))
        .await
    }

    async fn add_replica(
        &self,
        req: Request<pb::AddReplicaRequest>,
    ) -> Result<TResponse<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        let span = info_span!("rpc", method = "AddReplica", replica = r.id, address = %r.address);
        async move {
            self.0.raft.require_leader()?;
            let peers = self.0.raft.peers();
            let address = r.address.trim();
            let known = peers.contains_key(&r.id) || peers.values().any(|a| a == address);
            if !r.force && !known && r.id != 0 {
                // A voter that never answers would leave the group unable to commit (even the
                // removal that would undo it): make sure it is there, waiting to join.
                self.probe_joining(r.id, address).await?;
            }
            let m = self
                .0
                .raft
                .change_membership(MemberChange::Add {
                    id: r.id,
                    address: r.address.trim().to_string(),
                })
                .await?;
            tracing::info!(index = m.index, members = ?m.members, "replica added");
            Ok(TResponse::new(membership(m)))
        }
        .instrument(span)
        .await
    }

    async fn remove_replica(
        &self,
        req: Request<pb::RemoveReplicaRequest>,
    ) -> Result<TResponse<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        async move {
            let raft = &self.0.raft;
            raft.require_leader()?;
            if r.id == raft.id().0 {
                // The leader cannot remove itself (raft-rs would keep it leading outside the
                // group): hand over, then send the client to the new leader.
                let to = raft.transfer_leadership().await?;
                let mut status = raft.watch_status();
                let wait = async {
                    loop {
                        let st = status.borrow_and_update().clone();
                        if st.leader_id != 0 && st.leader_id != st.id {
                            return Ok(st.leader_id);
                        }
                        if status.changed().await.is_err() {
                            return Err(crate::CoordinatorError::Stopped);
                        }
                    }
                };
                let timeout = self.0.tuning.raft.request_timeout;
                let leader = tokio::time::timeout(timeout, wait).await.map_err(|_| {
                    Status::unavailable(format!(
                        "replica {} did not take over leadership within {timeout:?}; retry",
                        to
                    ))
                })??;
                tracing::info!(new_leader = leader, "leadership handed over before removal");
                return Err(match raft.peer_address(leader) {
                    Some(address) => crate::CoordinatorError::NotLeader {
                        leader: crate::ids::ReplicaId(leader),
                        address,
                    },
                    None => crate::CoordinatorError::NoLeader,
                }
                .into());
            }
            let m = raft
                .change_membership(MemberChange::Remove { id: r.id })
                .await?;
            tracing::info!(index = m.index, members = ?m.members, "replica removed");
            Ok(TResponse::new(membership(m)))
        }
        .instrument(info_span!("rpc", method = "RemoveReplica", replica = r.id))
        .await
    }
}

impl ClientApi {
    /// Checks that a replica started with `--join` answers at `address` as replica `id`.
    async fn probe_joining(&self, id: u64, address: &str) -> Result<(), Status> {
        let fix = format!(
            "start it first with `snapfleet coordinator --id {id} --listen {address} --join \
             <members>` (or pass --force to add it anyway; the group then cannot commit until \
             it answers)"
        );
        let ep = crate::tls::endpoint(address, self.0.tls.as_deref(), true)
            .map_err(|e| Status::invalid_argument(format!("replica address {address:?}: {e}")))?;
        let probe = async {
            let ch = ep
                .connect_timeout(std::time::Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            crate::pb::coordinator_client::CoordinatorClient::new(ch)
                .cluster_status(pb::Empty {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        };
        let st = tokio::time::timeout(std::time::Duration::from_secs(5), probe)
            .await
            .map_err(|_| "no answer within 5 s".to_string())
            .and_then(|r| r)
            .map_err(|why| {
                Status::failed_precondition(format!(
                    "no coordinator replica answers at {address} ({why}): {fix}"
                ))
            })?;
        if st.id != id || st.role != "joining" {
            return Err(Status::failed_precondition(format!(
                "{address} is replica {} in role {:?}, not replica {id} waiting to join: {fix}",
                st.id, st.role
            )));
        }
        Ok(())
    }
}
