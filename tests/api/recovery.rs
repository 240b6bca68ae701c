//! Crashes, restarts and several instances on one database.

use serde_json::{Value, json};

use crate::helpers::{
    PATIENCE, eventually, eventually_some, fresh_database, job_of, spawn_app_on, start_process,
    submit_to, task, wait_for_status,
};
use crate::participant::{Op, Participant, Reply};

#[tokio::test]
async fn a_coordinator_killed_while_retrying_a_confirm_is_taken_over() {
    let db = fresh_database().await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "flaky", Reply::Status(503));
    let http = reqwest::Client::new();

    let mut first = start_process(&db, "first");
    first.wait_ready(&http).await;
    let id = submit_to(
        &http,
        &first.addr,
        &job_of(&[("ok", p.url("ok")), ("flaky", p.url("flaky"))]),
    )
    .await;
    assert!(
        eventually(|| async { p.count(Op::Confirm, "flaky") >= 2 }).await,
        "the confirm is being retried"
    );
    first.kill();

    // The participant recovers while nobody drives the job; a fresh instance takes over once
    // the dead instance's lease lapses.
    p.set_default(Op::Confirm, "flaky", Reply::Ok);
    let second = start_process(&db, "second");
    second.wait_ready(&http).await;
    let job = wait_for_status(&http, &second.addr, &id, "completed").await;
    assert!(
        p.confirmed("ok") && p.confirmed("flaky"),
        "both applied, once"
    );
    let attempts = task(&job, "flaky")["attempts"].as_u64().unwrap_or(0) as usize;
    let received = p.count(Op::Confirm, "flaky");
    assert!(received >= 3, "confirms before and after the crash arrived");
    assert!(
        received <= attempts,
        "every confirm the participant saw is on record ({received} seen, {attempts} recorded)"
    );
    assert_eq!(p.overlaps(), 0);
}

#[tokio::test]
async fn two_coordinators_drive_200_jobs_without_overlapping_calls() {
    let db = fresh_database().await;
    let a = spawn_app_on(&db, &["--instance-id", "a"]).await;
    let b = spawn_app_on(&db, &["--instance-id", "b"]).await;
    let p = Participant::start().await;
    // Some confirms fail once, so that retries go through the database and the scanners.
    for i in (0..200).step_by(7) {
        p.script(Op::Confirm, &format!("j{i}-t1"), vec![Reply::Status(503)]);
    }
    let mut ids = Vec::new();
    for i in 0..200 {
        let names: Vec<String> = (0..3).map(|t| format!("j{i}-t{t}")).collect();
        let mut job = job_of(&[
            ("t0", p.url(&names[0])),
            ("t1", p.url(&names[1])),
            ("t2", p.url(&names[2])),
        ]);
        // Half wait for an explicit confirm, sent to the other instance.
        let explicit = i % 2 == 0;
        job["autoConfirm"] = json!(!explicit);
        let (submit_to, confirm_to) = if i % 4 < 2 { (&a, &b) } else { (&b, &a) };
        let id = submit_to.submit(&job).await;
        ids.push((id, explicit, confirm_to));
    }
    for (id, explicit, confirm_to) in &ids {
        if *explicit {
            confirm_to.wait_status(id, "reserved").await;
            let resp = confirm_to.post(&format!("/jobs/{id}/confirm")).await;
            assert!(
                resp.status() == 202 || resp.status() == 200,
                "{}",
                resp.status()
            );
        }
    }
    let all_done = eventually(|| async {
        let body: Value = a
            .get("/jobs?status=completed&limit=500")
            .await
            .json()
            .await
            .expect("json");
        body["jobs"].as_array().map_or(0, Vec::len) == 200
    })
    .await;
    assert!(all_done, "all 200 jobs completed within {PATIENCE:?}");
    assert_eq!(p.overlaps(), 0, "no task had two calls in flight at once");
    let reservations = p.all_reservations();
    assert_eq!(reservations.len(), 600);
    assert!(
        reservations.iter().all(|r| r.confirms_applied == 1),
        "every reservation confirmed exactly once"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_hands_the_job_to_the_next_instance() {
    let db = fresh_database().await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "flaky", Reply::Status(503));
    let first = spawn_app_on(&db, &["--instance-id", "first", "--lease-ttl", "600s"]).await;
    let id = first.submit(&job_of(&[("flaky", p.url("flaky"))])).await;
    assert!(eventually(|| async { p.count(Op::Confirm, "flaky") >= 1 }).await);
    first.stop().await;
    let seen = p.count(Op::Confirm, "flaky");
    p.set_default(Op::Confirm, "flaky", Reply::Ok);
    // No lease to wait out (it would outlast the test): the stopped instance released it.
    let second = spawn_app_on(&db, &["--instance-id", "second", "--lease-ttl", "600s"]).await;
    let done = second.wait_status(&id, "completed").await;
    assert!(p.confirmed("flaky"));
    assert!(p.count(Op::Confirm, "flaky") > seen);
    assert_eq!(task(&done, "flaky")["taskStatus"], "confirmed");
    second.stop().await;
}

#[tokio::test]
async fn sigterm_releases_the_leases_and_exits_zero() {
    let db = fresh_database().await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "flaky", Reply::Status(503));
    let http = reqwest::Client::new();
    let mut first = start_process(&db, "first");
    first.wait_ready(&http).await;
    let id = submit_to(&http, &first.addr, &job_of(&[("flaky", p.url("flaky"))])).await;
    assert!(eventually(|| async { p.count(Op::Confirm, "flaky") >= 1 }).await);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let exit = eventually_some(|| {
        let exited = first.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await
    .expect("the coordinator exits after SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status 0");

    // The lease was released: an instance whose own leases last ten minutes takes the job at once.
    p.set_default(Op::Confirm, "flaky", Reply::Ok);
    let second = spawn_app_on(&db, &["--instance-id", "second", "--lease-ttl", "600s"]).await;
    second.wait_status(&id, "completed").await;
    assert!(p.confirmed("flaky"));
    second.stop().await;
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_reaches_the_driving_one_at_once() {
    let db = fresh_database().await;
    // Leases so long that, without a wake-up, the driving instance would not look again in time.
    let a = spawn_app_on(&db, &["--instance-id", "a", "--lease-ttl", "600s"]).await;
    let b = spawn_app_on(&db, &["--instance-id", "b", "--lease-ttl", "600s"]).await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "slow", Reply::Stall);
    let job = json!({
        "jobMaxTTL": 600,
        "tasks": [
            {"taskID": "a", "taskURL": p.url("a")},
            {"taskID": "slow", "taskURL": p.url("slow"), "taskMaxTTL": 300}
        ]
    });
    let id = a.submit(&job).await;
    assert!(
        eventually(|| async { p.count(Op::Try, "slow") == 1 && p.reservations("a").len() == 1 })
            .await
    );
    let resp = b.delete(&format!("/jobs/{id}")).await;
    assert_eq!(resp.status(), 202);
    assert!(
        eventually(|| async { p.count(Op::Cancel, "a") == 1 && p.released("a") }).await,
        "instance a, blocked on the stalled Try, was woken and canceled the reservation"
    );
    let job = a.get_job(&id).await;
    assert_eq!(
        job["jobStatus"], "canceling",
        "the stalled Try is still awaited"
    );
    assert_eq!(job["failureReason"], "client");
    a.stop().await;
    b.stop().await;
}
