//! Nothing wedged, nothing unbounded, nothing panics on input: driver failures are caught,
//! counted, shown and retried; requests have a time limit and an in-flight limit answered 503;
//! a panicking handler answers 500 and the process serves on; unreadable input answers 400.

use serde_json::{Value, json};

use crate::helpers::{
    PATIENCE, TestApp, eventually, eventually_some, fresh_database, job_of, scrape, spawn_app_on,
    spawn_app_with, task,
};
use crate::participant::Participant;

/// The value of the series `name{labels}` on the app's `/metrics` (0 when not exported).
async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape(&app.http, &app.addr).await;
    s.value(name, labels).unwrap_or(0.0)
}

async fn db_client(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

async fn driver_failures(client: &tokio_postgres::Client, id: &str) -> i32 {
    client
        .query_one("SELECT driver_failures FROM jobs WHERE id = $1", &[&id])
        .await
        .expect("the job's row")
        .get(0)
}

/// A job whose driver fails (`fault`: the test-only fault-injection feature) is counted, says
/// so on its tasks, is retried with backoff, and completes once the fault is gone.
async fn a_failing_driver_is_retried(fault: &str, kind: &str) {
    let db = fresh_database().await;
    let app = spawn_app_on(&db, &[]).await;
    let p = Participant::start().await;
    let client = db_client(&db).await;
    let counter = "tcc_engine_driver_failures_total";
    let before = metric(&app, counter, &[("kind", kind)]).await;

    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b"))]);
    job["correlationID"] = json!(fault);
    let id = app.submit(&job).await;

    let told = eventually(|| async {
        let job = app.get_job(&id).await;
        task(&job, "a")["lastMessage"]
            .as_str()
            .is_some_and(|m| m.contains(kind) && m.contains("retries"))
    })
    .await;
    assert!(
        told,
        "the failure is written on the task: {:#}",
        app.get_job(&id).await
    );
    assert!(
        metric(&app, counter, &[("kind", kind)]).await >= before + 1.0,
        "the failure is counted in {counter}{{kind=\"{kind}\"}}"
    );
    // Retried, not dropped: the driver fails again after its backoff.
    assert!(
        eventually(|| async { driver_failures(&client, &id).await >= 2 }).await,
        "the job was driven again after the first failure"
    );
    let job = app.get_job(&id).await;
    assert_ne!(
        job["jobStatus"], "completed",
        "not driven to the end while failing"
    );

    // The fault goes away (as a fixed bug would): the next retry drives the job to the end.
    client
        .execute(
            "UPDATE jobs SET correlation_id = 'healed' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("heal");
    let done = app.wait_status(&id, "completed").await;
    assert_eq!(task(&done, "a")["taskStatus"], "confirmed");
    assert!(p.confirmed("a") && p.confirmed("b"));
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_driver_is_counted_shown_and_retried_until_it_completes() {
    a_failing_driver_is_retried("fault:panic", "panic").await;
}

#[tokio::test]
async fn an_illegal_transition_is_counted_shown_and_retried_until_it_completes() {
    a_failing_driver_is_retried("fault:illegal", "illegal").await;
}

#[tokio::test]
async fn a_panicking_handler_answers_a_500_problem_and_the_process_serves_on() {
    let app = spawn_app_with(&[]).await;
    for _ in 0..3 {
        let resp = app.get("/fault/panic").await;
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.expect("a problem body");
        assert_eq!(body["status"], 500);
        assert!(
            !body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("fault injected"),
            "no internals"
        );
    }
    assert_eq!(app.get("/health/live").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_past_its_time_limit_answers_503_with_retry_after() {
    let app = spawn_app_with(&["--request-timeout", "1s"]).await;
    let rejected = [("reason", "timeout")];
    let before = metric(&app, "tcc_api_rejected_total", &rejected).await;
    let resp = app.get("/fault/stall").await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(metric(&app, "tcc_api_rejected_total", &rejected).await >= before + 1.0);
    app.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_refused_at_once_not_queued() {
    let app = spawn_app_with(&["--max-inflight-requests", "2"]).await;
    let p = Participant::start().await;
    let rejected = [("reason", "overloaded")];
    let before = metric(&app, "tcc_api_rejected_total", &rejected).await;
    // Two requests that never end take both places.
    let stalls: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (app.http.clone(), app.url("/fault/stall"));
            // A stall refused because another request held a place tries again: in the end
            // both hold one.
            tokio::spawn(async move {
                eventually(|| async {
                    !http.get(&url).send().await.is_ok_and(|r| r.status() == 503)
                })
                .await
            })
        })
        .collect();
    let job = job_of(&[("a", p.url("a"))]);
    // Accepted while the stalls were still taking their places.
    let accepted_before = std::cell::Cell::new(0);
    let refused = eventually_some(|| async {
        let resp = app
            .http
            .post(app.url("/jobs"))
            .json(&job)
            .send()
            .await
            .expect("POST");
        if resp.status() == 503 {
            return Some(resp);
        }
        accepted_before.set(accepted_before.get() + usize::from(resp.status() == 202));
        None
    })
    .await;
    assert!(
        refused.is_some(),
        "a third request is refused while two are in progress"
    );
    let resp = refused.expect("the refusal");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("a problem body");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("TCC_MAX_INFLIGHT_REQUESTS")
    );
    for s in stalls {
        s.abort();
    }
    let free = eventually(|| async { app.get("/jobs").await.status() == 200 }).await;
    assert!(free, "the places free up when the stalled requests end");
    assert_eq!(
        app.job_count().await,
        accepted_before.get(),
        "nothing was stored for the refusals"
    );
    let accepted = eventually(|| async {
        app.http
            .post(app.url("/jobs"))
            .json(&job)
            .send()
            .await
            .is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(
        accepted,
        "accepted again once the requests in progress ended"
    );
    assert!(metric(&app, "tcc_api_rejected_total", &rejected).await >= before + 1.0);
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_is_clamped_below_the_time_limit() {
    let app = spawn_app_with(&["--request-timeout", "2s"]).await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    let url = app.url(&format!("/jobs/{id}/progress"));
    let etag = app.http.get(&url).send().await.expect("GET").headers()["etag"].clone();
    for wait in ["1e20", "inf", "99999999999999999999999", "-1", "nan"] {
        let resp = tokio::time::timeout(
            PATIENCE,
            app.http
                .get(&url)
                .header("if-none-match", etag.clone())
                .header("prefer", format!("wait={wait}"))
                .send(),
        )
        .await
        .expect("answered in time")
        .expect("an answer, not a dropped connection");
        assert_eq!(resp.status(), 304, "wait={wait}");
    }
    let resp = app
        .http
        .post(app.url(&format!("/jobs/{id}/confirm")))
        .header("prefer", "wait=1e20")
        .send()
        .await
        .expect("an answer to a confirm with a huge wait");
    assert!(
        resp.status() == 200 || resp.status() == 202,
        "{}",
        resp.status()
    );
    app.stop().await;
}

#[tokio::test]
async fn nul_and_invalid_utf8_in_paths_queries_and_headers_answer_400() {
    let app = spawn_app_with(&[]).await;
    for path in [
        "/jobs/%00",
        "/jobs/a%00b/tasks",
        "/jobs/%FF%FE",
        "/jobs?tag=%00",
        "/jobs?status=%FF",
        "/jobs?correlationID=x%00y",
        "/nothing/%00",
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 400, "GET {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.expect("a problem body");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains("path") || detail.contains("query"),
            "{path}: {detail}"
        );
    }
    let opaque = reqwest::header::HeaderValue::from_bytes(b"key-\xff").expect("an obs-text value");
    for name in ["idempotency-key", "prefer", "if-none-match", "traceparent"] {
        let resp = app
            .http
            .post(app.url("/jobs"))
            .header(name, opaque.clone())
            .json(&json!({"autoConfirm": false, "tasks": []}))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 400, "{name}");
        let body: Value = resp.json().await.expect("a problem body");
        assert!(body["detail"].as_str().unwrap_or("").contains(name));
    }
    assert_eq!(app.job_count().await, 0, "nothing was stored");
    app.stop().await;
}

#[tokio::test]
async fn a_busy_port_fails_start_up_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("address").port();
    let dir = tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("TCC_DATA_DIR", &dir)
        .env("TCC_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("run the coordinator");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TCC_LISTEN"),
        "the message names the setting: {err}"
    );
    assert!(
        !dir.exists(),
        "no embedded cluster was created under {}",
        dir.display()
    );
}

fn tempdir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tcc-busy-port-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn a_second_live_instance_with_the_same_id_refuses_to_start() {
    let db = fresh_database().await;
    let first = spawn_app_on(&db, &["--instance-id", "twin", "--lease-ttl", "4s"]).await;
    let config = crate::helpers::test_config(&db, &["--instance-id", "twin", "--lease-ttl", "4s"]);
    let parsed: tokio_postgres::Config = db.parse().expect("database string");
    let second = tokio::time::timeout(
        PATIENCE,
        tcc_coordinator::startup::Application::build(&config, &parsed),
    )
    .await
    .expect("start-up gives up in time");
    let err = second.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        err.contains("TCC_INSTANCE_ID"),
        "refused, naming the setting: {err}"
    );
    first.stop().await;
}
