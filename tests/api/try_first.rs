//! A new job's first Tries before it is stored (`TCC_TRY_FIRST_WAIT`): answers that come in time
//! are stored with the job, and the decision they bring; a slow Try does not hold the 202 back;
//! a job with an `Idempotency-Key` is stored first, and a replay sends no Try; and while the
//! database refuses writes, new jobs are stored first, so that no Try goes out for them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::events::all_events;
use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// A wait far longer than any Try here takes, so that every prompt answer comes within it.
pub(crate) const LONG_WAIT: &[&str] = &[
    "--try-first-wait",
    "10s",
    "--lease-ttl",
    "60s",
    "--call-timeout",
    "20s",
    "--db-timeout",
    "30s",
];

/// `POST /jobs` with `doc` (and an `Idempotency-Key`), answered within `limit`: (status, body).
pub(crate) async fn post_job(
    app: &TestApp,
    doc: &Value,
    key: Option<&str>,
    limit: Duration,
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .expect("client");
    let mut req = client.post(app.url("/jobs")).json(doc);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("POST /jobs answered in time");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn id_of(body: &Value) -> String {
    body["jobID"].as_str().expect("jobID").to_string()
}

/// The job's statuses in its event log, in order.
pub(crate) fn job_statuses(log: &[Value]) -> Vec<&str> {
    log.iter()
        .filter(|e| e["type"] == "status")
        .filter_map(|e| e["jobStatus"].as_str())
        .collect()
}

#[tokio::test]
async fn tries_that_answer_in_time_are_stored_with_the_job_and_the_decision_they_bring() {
    let app = spawn_app_with(LONG_WAIT).await;
    let p = Participant::start().await;
    let doc = job_of(&[("a", p.url("tf-a")), ("b", p.url("tf-b"))]);
    let (status, body) = post_job(&app, &doc, None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    // Both Tries answered before the job was stored: the 202 has their links and the decision.
    assert_eq!(body["jobStatus"], "confirming", "{body:#}");
    for t in ["a", "b"] {
        assert_eq!(p.count(Op::Try, &format!("tf-{t}")), 1);
        assert!(
            task(&body, t)["participantLink"]["uri"].is_string(),
            "{body:#}"
        );
    }
    let id = id_of(&body);
    app.wait_status(&id, "completed").await;
    assert!(p.confirmed("tf-a") && p.confirmed("tf-b"));

    // The log tells it as it happened, numbered without a gap: accepted, trying, both Tries,
    // the decision, the confirms, the end.
    let log = all_events(&app.http, &app.addr, &id, 1000).await;
    let seqs: Vec<i64> = log.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>(), "{log:#?}");
    assert_eq!(
        job_statuses(&log),
        ["pending", "trying", "confirming", "completed"],
        "{log:#?}"
    );
    let position = |pred: &dyn Fn(&Value) -> bool| log.iter().position(pred);
    let decided = position(&|e| e["type"] == "status" && e["jobStatus"] == "confirming");
    for t in ["a", "b"] {
        let tried = position(&|e| e["type"] == "call" && e["op"] == "try" && e["taskID"] == t);
        assert!(tried.is_some() && tried < decided, "{log:#?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_among_the_first_answers_is_stored_as_the_cancel_before_any_cancel_goes() {
    let app = spawn_app_with(LONG_WAIT).await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "refuse-b", Reply::Status(409));
    let doc = job_of(&[("a", p.url("refuse-a")), ("b", p.url("refuse-b"))]);
    let (status, body) = post_job(&app, &doc, None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    // Stored with the cancel decision and a's link, which the cancel then goes to.
    assert_eq!(body["jobStatus"], "canceling", "{body:#}");
    assert!(task(&body, "a")["participantLink"]["uri"].is_string());
    let job = app.wait_status(&id_of(&body), "failed").await;
    assert_eq!(job["failureReason"], "try-failed");
    assert!(p.released("refuse-a"), "a's reservation canceled");
    assert_eq!(p.count(Op::Confirm, "refuse-a"), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_try_slower_than_the_wait_does_not_hold_the_answer_back() {
    // The Try of b never answers before its 20 s timeout; the job is stored after 300 ms with
    // what came by then.
    let app = spawn_app_with(&[
        "--try-first-wait",
        "300ms",
        "--lease-ttl",
        "60s",
        "--call-timeout",
        "20s",
    ])
    .await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "slow-b", Reply::Stall);
    let doc = job_of(&[("a", p.url("slow-a")), ("b", p.url("slow-b"))]);
    let (status, body) = post_job(&app, &doc, None, Duration::from_secs(10)).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "trying", "{body:#}");
    assert_eq!(task(&body, "a")["taskStatus"], "reserved", "{body:#}");
    assert!(task(&body, "a")["participantLink"]["uri"].is_string());
    assert_eq!(task(&body, "b")["taskStatus"], "trying", "{body:#}");
    // As stored: a's answer with it.
    let stored = app.get_job(&id_of(&body)).await;
    assert!(task(&stored, "a")["participantLink"]["uri"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn a_job_with_an_idempotency_key_is_stored_first_and_its_replay_sends_no_try() {
    let app = spawn_app_with(LONG_WAIT).await;
    let p = Participant::start().await;

    // Stored before its Tries: answered at once, though its Try never answers and the wait is
    // 10 s.
    p.set_default(Op::Try, "key-stall", Reply::Stall);
    let doc = job_of(&[("a", p.url("key-stall"))]);
    let (status, body) = post_job(&app, &doc, Some("k-stall"), Duration::from_secs(5)).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "trying", "{body:#}");

    // A replay answers the job as it stands and reserves nothing more.
    let doc = job_of(&[("a", p.url("key-a")), ("b", p.url("key-b"))]);
    let (status, body) = post_job(&app, &doc, Some("k-twice"), PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    let id = id_of(&body);
    app.wait_status(&id, "completed").await;
    let (status, again) = post_job(&app, &doc, Some("k-twice"), PATIENCE).await;
    assert_eq!(status, 202, "{again:#}");
    assert_eq!(id_of(&again), id);
    assert_eq!(p.count(Op::Try, "key-a"), 1, "the replay sent no Try");
    assert_eq!(p.count(Op::Try, "key-b"), 1, "the replay sent no Try");
    app.stop().await;
}

#[tokio::test]
async fn a_job_with_a_task_of_its_own_urls_is_stored_before_its_tries() {
    // Its reservation has no expiry: were the job never stored, nothing would ever release it.
    let app = spawn_app_with(LONG_WAIT).await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "own-b", Reply::Stall);
    let mut doc = job_of(&[("a", p.url("own-a")), ("b", p.url("own-b"))]);
    doc["tasks"][1]["confirmURL"] = json!(p.url("own-b/confirm"));
    doc["tasks"][1]["cancelURL"] = json!(p.url("own-b/cancel"));
    let (status, body) = post_job(&app, &doc, None, Duration::from_secs(5)).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "trying", "{body:#}");
    assert_eq!(task(&body, "a")["taskStatus"], "trying", "{body:#}");
    app.stop().await;
}

#[tokio::test]
async fn while_the_database_refuses_new_jobs_no_try_goes_out_before_one_is_stored() {
    let db = fresh_database().await;
    let app = spawn_app_on(&db, LONG_WAIT).await;
    let p = Participant::start().await;
    let (sql, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let job = |name: &str| {
        let mut doc = job_of(&[("a", p.url(name))]);
        doc["correlationID"] = json!(name);
        doc
    };

    // The database takes writes: a job's Try goes before it is stored.
    let (status, body) = post_job(&app, &job("gate-1"), None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "confirming", "{body:#}");
    app.wait_status(&id_of(&body), "completed").await;

    // Now it refuses new jobs. The first one finds out after its Try: it is not stored, and
    // its reservation is left to lapse.
    sql.batch_execute(
        "CREATE FUNCTION refuse_jobs() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs
             FOR EACH ROW EXECUTE FUNCTION refuse_jobs();",
    )
    .await
    .expect("refuse new jobs");
    let (status, body) = post_job(&app, &job("gate-2"), None, PATIENCE).await;
    assert!((500..600).contains(&status), "{status}: {body:#}");
    assert_eq!(app.count_jobs("correlationID=gate-2").await, 0);

    // After a refused write, a new job is stored first: refused before any Try.
    let (status, body) = post_job(&app, &job("gate-3"), None, PATIENCE).await;
    assert!((500..600).contains(&status), "{status}: {body:#}");
    assert_eq!(
        p.count(Op::Try, "gate-3"),
        0,
        "no Try for a job never stored"
    );

    // Writes again: the next job is stored first, and once that has worked, Tries go first.
    sql.batch_execute("DROP TRIGGER refuse_jobs ON jobs")
        .await
        .expect("take new jobs again");
    let (status, body) = post_job(&app, &job("gate-4"), None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "trying", "stored first: {body:#}");
    app.wait_status(&id_of(&body), "completed").await;
    let (status, body) = post_job(&app, &job("gate-5"), None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["jobStatus"], "confirming", "{body:#}");
    app.wait_status(&id_of(&body), "completed").await;
    // Two jobs later, gate-2's reservation is still held: no cancel went out for a job that
    // was never stored.
    assert_eq!(p.count(Op::Cancel, "gate-2"), 0);
    app.stop().await;
}
