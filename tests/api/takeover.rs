//! Takeover in seconds: an instance whose process ends hands its jobs over at once (its identity
//! lock is freed with its sessions), not after its lease lapses. Every lease here lasts a minute,
//! so a takeover that waited for it would fail the 5 s bound.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    PATIENCE, eventually, eventually_some, fresh_database, start_process_with, submit_to, task,
    wait_for_status,
};
use crate::participant::{Op, Participant, Reply};

/// A minute's lease and the default scan interval: only the identity rule can be quick.
const LONG_LEASE: &[(&str, &str)] = &[
    ("TCC_LEASE_TTL", "60s"),
    ("TCC_CALL_TIMEOUT", "1s"),
    ("TCC_SCAN_INTERVAL", "1s"),
];

/// The most a takeover may take from the kill to the next participant call.
const TAKEOVER_BOUND: Duration = Duration::from_secs(5);

/// Two tasks, one of whose confirms is retried quickly (so that the next call after a takeover
/// comes at once, not after a long backoff).
fn retrying_job(p: &Participant) -> Value {
    json!({
        "jobMaxTTL": 120,
        "retryPolicy": {"initialDelay": 0.05, "maxDelay": 0.2},
        "tasks": [
            {"taskID": "ok", "taskURL": p.url("ok")},
            {"taskID": "flaky", "taskURL": p.url("flaky")}
        ]
    })
}

/// How long after `killed_at` the participant first heard a confirm of `flaky`.
fn gap_after(p: &Participant, killed_at: Instant) -> Option<Duration> {
    p.received(Op::Confirm, "flaky")
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > killed_at)
        .min()
        .map(|at| at - killed_at)
}

/// Kill the instance driving a retrying confirm, then (if `successor` is not yet running)
/// start `successor`; the next confirm must come within the bound, and the job must complete.
async fn kill_and_measure(restart_as: Option<&str>, two_instances: bool) {
    let db = fresh_database().await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "flaky", Reply::Status(503));
    let http = reqwest::Client::new();

    let mut first = start_process_with(&db, "first", LONG_LEASE);
    first.wait_ready(&http).await;
    let other = if two_instances {
        let b = start_process_with(&db, "other", LONG_LEASE);
        b.wait_ready(&http).await;
        Some(b)
    } else {
        None
    };
    let id = submit_to(&http, &first.addr, &retrying_job(&p)).await;
    assert!(
        eventually(|| async { p.count(Op::Confirm, "flaky") >= 3 }).await,
        "the confirm is being retried"
    );
    first.kill();
    let killed_at = Instant::now();
    let successor = restart_as.map(|name| start_process_with(&db, name, LONG_LEASE));
    let gap = eventually_some(|| async { gap_after(&p, killed_at) }).await;
    let gap = gap.unwrap_or_else(|| panic!("nobody took the job over within {PATIENCE:?}"));
    eprintln!("takeover gap (kill to next confirm): {gap:?}");
    assert!(
        gap <= TAKEOVER_BOUND,
        "the next confirm came {gap:?} after the kill (bound {TAKEOVER_BOUND:?})"
    );

    p.set_default(Op::Confirm, "flaky", Reply::Ok);
    let base = match (&successor, &other) {
        (Some(s), _) => s.addr.clone(),
        (None, Some(o)) => o.addr.clone(),
        (None, None) => unreachable!("a successor or another instance"),
    };
    let job = wait_for_status(&http, &base, &id, "completed").await;
    assert_eq!(task(&job, "flaky")["taskStatus"], "confirmed");
    assert!(p.confirmed("ok") && p.confirmed("flaky"), "both applied");
    assert_eq!(p.overlaps(), 0, "no task had two calls in flight at once");
}

#[tokio::test]
async fn a_killed_instance_restarted_under_a_new_id_resumes_its_jobs_within_seconds() {
    kill_and_measure(Some("second"), false).await;
}

#[tokio::test]
async fn a_killed_instance_restarted_under_the_same_id_resumes_its_jobs_within_seconds() {
    kill_and_measure(Some("first"), false).await;
}

#[tokio::test]
async fn a_running_instance_takes_over_the_jobs_of_a_killed_one_within_seconds() {
    kill_and_measure(None, true).await;
}
