//! Membership changes in process: the leader refuses what would break the group (adding a
//! member twice, removing the last voter, a second change while one is pending), and a
//! restarted replica keeps the membership it had (conf state in sled, addresses in the
//! state machine) instead of going back to its start-up configuration.

mod common;

use common::{channel, tuning, Client, Cluster};
use snapfleet_coordinator::pb;
use std::time::Duration;
use tonic::Code;

/// A tuning where a leader that cannot reach a quorum keeps leading for a long time
/// (check-quorum steps down after an election timeout), so that a pending change stays
/// pending for the whole test.
fn patient_tuning() -> snapfleet_coordinator::Tuning {
    let mut t = tuning(1_000);
    t.raft.election_tick = 600; // 30 s at 50 ms ticks
    t.raft.request_timeout = Duration::from_secs(1);
    t
}

async fn add(addr: &str, id: u64, address: &str) -> Result<pb::MembershipResponse, tonic::Status> {
    Client::new(channel(addr))
        .add_replica(pb::AddReplicaRequest {
            id,
            address: address.into(),
            // Unreachable voters on purpose: they make changes stay pending.
            force: true,
        })
        .await
        .map(|r| r.into_inner())
}

async fn remove(addr: &str, id: u64) -> Result<pb::MembershipResponse, tonic::Status> {
    Client::new(channel(addr))
        .remove_replica(pb::RemoveReplicaRequest { id })
        .await
        .map(|r| r.into_inner())
}

fn ids(replicas: &[pb::Replica]) -> Vec<u64> {
    replicas.iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_refuses_unsafe_membership_changes() {
    let c = Cluster::start(1, patient_tuning()).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let a = c.replicas[0].addr.clone();

    let e = remove(&a, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("last voter"), "{e:?}");
    let e = add(&a, 1, "127.0.0.1:9").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = add(&a, 0, "127.0.0.1:9").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = add(&a, 2, "no-port").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = remove(&a, 7).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Without --force, a replica that does not answer as one waiting to join is refused
    // (it would leave the group unable to commit), and nothing changes.
    let e = Client::new(channel(&a))
        .add_replica(pb::AddReplicaRequest {
            id: 2,
            address: "127.0.0.1:9".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("start it first"), "{e:?}");

    // With one voter, adding a second commits at once (nobody listens at its address).
    let m = add(&a, 2, "127.0.0.1:9").await.unwrap();
    assert_eq!(ids(&m.replicas), vec![1, 2]);
    let e = add(&a, 3, &c.replicas[0].addr).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains("already used by replica 1"), "{e:?}");

    // Now a quorum needs replica 2, which never answers: the next change cannot commit...
    let e = add(&a, 3, "127.0.0.1:10").await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // ...and a second change is refused while it is pending.
    let e = add(&a, 5, "127.0.0.1:11").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("has not been applied yet"), "{e:?}");
    let e = remove(&a, 2).await.unwrap_err();
    assert!(e.message().contains("has not been applied yet"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_keeps_its_membership() {
    let mut c = Cluster::start(1, patient_tuning()).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let a = c.replicas[0].addr.clone();
    add(&a, 2, "127.0.0.1:9").await.unwrap();
    c.stop(1).await;
    let sm = snapfleet_coordinator::raft_loop::read_state(&c.replicas[0].dir).unwrap();
    assert_eq!(sm.members().keys().copied().collect::<Vec<_>>(), vec![1, 2]);

    // Restarted in single-replica mode, it still has two voters: it can no longer elect
    // itself alone, and it lists both replicas.
    c.restart(1).await;
    let st = common::eventually_status(&c, 1).await;
    assert_eq!(ids(&st.replicas), vec![1, 2], "{st:?}");
    assert_ne!(st.role, "leader", "{st:?}");
    let e = add(&a, 3, "127.0.0.1:10").await.unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::FailedPrecondition),
        "{e:?}"
    );
}
