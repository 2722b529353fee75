//! `ListJobs` pages: newest first, at most the asked limit (and never more than the
//! server's page), with a cursor to the next page, so 10,000 jobs never make one reply.

mod common;

use common::{tuning, Client, Cluster, LeaderFollower};
use snapfleet_coordinator::pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_newest_first_with_a_cursor() {
    let cluster = Cluster::start(1, tuning(1_000)).await;
    cluster.wait_leader(Duration::from_secs(15)).await;
    let lf = LeaderFollower::new(cluster.addrs());
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = on_leader!(lf, Client, |c| c.submit_job(pb::SubmitJobRequest {
            kind: "backup".into(),
            spec_json: format!("{{\"db\":\"d{i}\"}}"),
            tasks: vec![pb::TaskSpec {
                payload_json: "{}".into(),
                ..Default::default()
            }],
            retry_budget: 1,
            ..Default::default()
        }))
        .expect("submit");
        ids.push(job.id);
    }
    let page = |before_id: u64| {
        let lf = &lf;
        async move {
            on_leader!(lf, Client, |c| c.list_jobs(pb::ListJobsRequest {
                include_finished: true,
                limit: 2,
                before_id,
            }))
            .expect("list")
        }
    };
    let mut seen = Vec::new();
    let mut before = 0;
    let mut pages = 0;
    loop {
        let p = page(before).await;
        assert!(p.jobs.len() <= 2, "{} jobs in a page of 2", p.jobs.len());
        seen.extend(p.jobs.iter().map(|j| j.id));
        pages += 1;
        if p.next_before_id == 0 {
            break;
        }
        assert_eq!(p.next_before_id, p.jobs.last().unwrap().id);
        before = p.next_before_id;
        assert!(pages < 10, "the cursor never ends");
    }
    ids.reverse();
    assert_eq!(seen, ids, "every job once, newest first");
    assert_eq!(pages, 3);
}
