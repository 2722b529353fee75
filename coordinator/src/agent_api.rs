//! The agent gRPC service: Register (logged), Heartbeat (leader memory only), AcquireTasks
//! (long poll), ReportProgress, CompleteTask, FailTask. Leader only; followers answer
//! FAILED_PRECONDITION naming the leader. Times come from the leader's clock. This file must
//! never change state except by proposing commands.

use crate::command::{Command, Response};
use crate::convert;
use crate::error::CoordinatorError;
use crate::ids::{AgentId, LeaderTime, TaskId};
use crate::model::{Agent, TaskProgress};
use crate::pb::agent_service_server::AgentService;
use crate::pb::{self, Empty};
use crate::shared::Shared;
use crate::tls::{caller, Role};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response as TResponse, Status};
use tracing::{info_span, Instrument};

pub(crate) struct AgentApi(pub Arc<Shared>);

/// Default lease when the agent asks for none.
const DEFAULT_LEASE_MS: u64 = 30_000;

impl AgentApi {
    fn beat(&self, agent: &AgentId) {
        self.0
            .heartbeats
            .lock()
            .expect("lock")
            .insert(agent.clone(), LeaderTime::now().0);
    }

    /// The agent id of a request, which an agent certificate must name (its CN): one agent's
    /// certificate cannot register, lease or fail tasks as another.
    fn agent_id(who: &Option<(String, Role)>, s: &str) -> Result<AgentId, Status> {
        if s.is_empty() {
            return Err(Status::invalid_argument("agent_id is empty"));
        }
        if let Some((cn, Role::Agent)) = who {
            if cn != s {
                return Err(Status::permission_denied(format!(
                    "certificate {cn:?} (role agent) may act only as agent {cn:?}, not {s:?}: \
                     start the agent with --id {cn} or issue it a certificate named {s}"
                )));
            }
        }
        Ok(AgentId(s.to_string()))
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<TResponse<Empty>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let agent = Self::agent_id(&who, &r.agent_id)?;
        // An agent certificate serves the one node it names (`agent-<node id>`): whoever
        // holds one node's agent certificate cannot lease another node's tablets.
        if let Some((cn, Role::Agent)) = &who {
            if cn.strip_prefix("agent-") != Some(r.node.as_str()) {
                return Err(Status::permission_denied(format!(
                    "certificate {cn:?} (role agent) may serve only the node it names \
                     (agent-<node id>), not node {:?}: issue this node's agent a certificate \
                     with `snapfleet certs issue --role agent --name agent-{}`",
                    r.node, r.node
                )));
            }
        }
        async move {
            self.0.raft.require_leader()?;
            self.0
                .raft
                .propose(Command::RegisterAgent(Agent {
                    id: agent.clone(),
                    node: r.node,
                    address: r.address,
                    labels: r.labels.into_iter().collect(),
                    version: r.version,
                }))
                .await?;
            if r.restarted {
                self.0
                    .raft
                    .propose(Command::ReleaseLeases {
                        agent: agent.clone(),
                        now: LeaderTime::now(),
                    })
                    .await?;
            }
            self.beat(&agent);
            Ok(TResponse::new(Empty {}))
        }
        .instrument(info_span!("rpc", method = "Register", agent = %r.agent_id))
        .await
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<TResponse<pb::HeartbeatResponse>, Status> {
        let who = caller(&req);
        let agent = Self::agent_id(&who, &req.into_inner().agent_id)?;
        self.0.raft.require_leader()?;
        self.beat(&agent);
        Ok(TResponse::new(pb::HeartbeatResponse {
            leader_time_ms: LeaderTime::now().0,
        }))
    }

    async fn acquire_tasks(
        &self,
        req: Request<pb::AcquireTasksRequest>,
    ) -> Result<TResponse<pb::AcquireTasksResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let agent = Self::agent_id(&who, &r.agent_id)?;
        let span = info_span!("rpc", method = "AcquireTasks", agent = %r.agent_id);
        async move {
            let raft = &self.0.raft;
            let wait = Duration::from_millis(r.wait_ms).min(self.0.tuning.max_poll);
            let deadline = tokio::time::Instant::now() + wait;
            let lease_ms = if r.lease_ms == 0 { DEFAULT_LEASE_MS } else { r.lease_ms };
            let max = r.max.max(1);
            let mut status = raft.watch_status();
            loop {
                raft.require_leader()?;
                self.beat(&agent);
                let node = raft
                    .read(|sm| sm.agent(&agent).map(|a| a.node.clone()))
                    .ok_or_else(|| {
                        CoordinatorError::from(crate::command::Rejection::AgentNotRegistered(
                            agent.clone(),
                        ))
                    })?;
                let now = LeaderTime::now();
                if raft.read(|sm| sm.has_runnable_for(&agent, &node, now)) {
                    let resp = raft
                        .propose(Command::AcquireTasks {
                            agent: agent.clone(),
                            node,
                            now,
                            lease_ms,
                            max,
                        })
                        .await?;
                    if let Response::Granted(grants) = resp {
                        if !grants.is_empty() {
                            for g in &grants {
                                tracing::info!(task = g.task.0, job = g.job.0, lease_seq = g.lease_seq, "task leased");
                            }
                            return Ok(TResponse::new(pb::AcquireTasksResponse {
                                tasks: grants.iter().map(convert::grant).collect(),
                            }));
                        }
                    }
                }
                // Wait for something to change (or a backoff to pass), up to the deadline.
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        return Ok(TResponse::new(pb::AcquireTasksResponse { tasks: vec![] }));
                    }
                    _ = self.0.shutdown.cancelled() => return Err(CoordinatorError::Stopped.into()),
                    r = status.changed() => if r.is_err() { return Err(CoordinatorError::Stopped.into()) },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn report_progress(
        &self,
        req: Request<pb::ReportProgressRequest>,
    ) -> Result<TResponse<pb::LeaseResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let agent = Self::agent_id(&who, &r.agent_id)?;
        async move {
            self.0.raft.require_leader()?;
            self.beat(&agent);
            let resp = self
                .0
                .raft
                .propose(Command::ReportProgress {
                    agent,
                    task: TaskId(r.task_id),
                    progress: TaskProgress {
                        bytes_done: r.bytes_done,
                        bytes_total: r.bytes_total,
                        items_done: r.items_done,
                        items_total: r.items_total,
                        checkpoint: r.checkpoint_ht,
                    },
                    now: LeaderTime::now(),
                    lease_ms: r.lease_ms,
                })
                .await?;
            let expires_at_ms = match resp {
                Response::LeaseRenewed { expires_at } => expires_at.0,
                _ => 0,
            };
            let rate_limit = self.0.raft.read(|sm| sm.rate_share(TaskId(r.task_id)));
            Ok(TResponse::new(pb::LeaseResponse {
                expires_at_ms,
                rate_limit,
            }))
        }
        .instrument(
            info_span!("task", method = "ReportProgress", task = r.task_id, agent = %r.agent_id),
        )
        .await
    }

    async fn complete_task(
        &self,
        req: Request<pb::CompleteTaskRequest>,
    ) -> Result<TResponse<Empty>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let agent = Self::agent_id(&who, &r.agent_id)?;
        async move {
            self.0.raft.require_leader()?;
            self.beat(&agent);
            self.0
                .raft
                .propose(Command::CompleteTask {
                    agent,
                    task: TaskId(r.task_id),
                    result: convert::json("result_json", &r.result_json)?,
                    now: LeaderTime::now(),
                })
                .await?;
            tracing::info!("task completed");
            Ok(TResponse::new(Empty {}))
        }
        .instrument(
            info_span!("task", method = "CompleteTask", task = r.task_id, agent = %r.agent_id),
        )
        .await
    }

    async fn fail_task(
        &self,
        req: Request<pb::FailTaskRequest>,
    ) -> Result<TResponse<Empty>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let agent = Self::agent_id(&who, &r.agent_id)?;
        async move {
            self.0.raft.require_leader()?;
            self.beat(&agent);
            self.0
                .raft
                .propose(Command::FailTask {
                    agent,
                    task: TaskId(r.task_id),
                    reason: r.reason.clone(),
                    retryable: !r.permanent,
                    now: LeaderTime::now(),
                })
                .await?;
            tracing::warn!(reason = %r.reason, "task failed");
            Ok(TResponse::new(Empty {}))
        }
        .instrument(info_span!("task", method = "FailTask", task = r.task_id, agent = %r.agent_id))
        .await
    }
}
