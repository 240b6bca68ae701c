//! Jobs from submit to their end, against real participants.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{TestApp, eventually, header_opt, job_of, spawn_app, spawn_app_with, task};
use crate::participant::{Op, Participant, Reply};

/// `POST /jobs/{id}/confirm` with `Prefer: wait={secs}`.
async fn confirm_waiting(app: &TestApp, id: &str, secs: u64) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/jobs/{id}/confirm")))
        .header("prefer", format!("wait={secs}"))
        .send()
        .await
        .expect("confirm")
}

#[tokio::test]
async fn three_tasks_complete_with_one_try_and_one_confirm_each() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b")), ("c", p.url("c"))]);
    job["correlationID"] = json!("order-8812");
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = app
        .http
        .post(app.url("/jobs"))
        .header("traceparent", trace)
        .json(&job)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["jobID"]
        .as_str()
        .expect("jobID")
        .to_string();
    let done = app.wait_status(&id, "completed").await;
    for name in ["a", "b", "c"] {
        assert_eq!(p.count(Op::Try, name), 1, "{name}: one Try");
        assert_eq!(p.count(Op::Confirm, name), 1, "{name}: one confirm");
        assert_eq!(p.count(Op::Cancel, name), 0, "{name}: no cancel");
        assert!(p.confirmed(name), "{name} confirmed at the participant");
        let tried = &p.received(Op::Try, name)[0];
        assert_eq!(tried.correlation_id.as_deref(), Some("order-8812"));
        assert_eq!(tried.request_id.as_deref(), Some(name));
        let confirm = &p.received(Op::Confirm, name)[0];
        assert_eq!(confirm.content_type.as_deref(), Some("application/tcc"));
        assert_eq!(confirm.accept.as_deref(), Some("application/tcc"));
        assert_eq!(confirm.correlation_id.as_deref(), Some("order-8812"));
        assert_eq!(confirm.request_id.as_deref(), Some(name));
        assert_eq!(tried.traceparent.as_deref(), Some(trace));
        assert_eq!(confirm.traceparent.as_deref(), Some(trace));
        let t = task(&done, name);
        assert_eq!(t["taskStatus"], "confirmed");
        assert_eq!(t["attempts"], 1);
        assert!(t["participantLink"]["uri"].as_str().is_some());
        assert!(t["endTime"].as_str().is_some());
    }
    assert_eq!(done["failureReason"], Value::Null);
    app.stop().await;
}

/// Every Try carries `tcc-deadline`: the end of this call's timeout (`taskMaxTTL`), or the job's
/// deadline when that comes first, in RFC 3339 with milliseconds; a confirm does not.
#[tokio::test]
async fn every_try_says_until_when_its_answer_counts() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let sent = chrono::Utc::now();
    let mut job = job_of(&[("short", p.url("short")), ("long", p.url("long"))]);
    job["jobMaxTTL"] = json!(60);
    job["autoConfirm"] = json!(true);
    job["tasks"][0]["taskMaxTTL"] = json!(5);
    job["tasks"][1]["taskMaxTTL"] = json!(600);
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "completed").await;
    let job_deadline = chrono::DateTime::parse_from_rfc3339(
        done["deadline"].as_str().expect("the job's deadline"),
    )
    .expect("RFC 3339");
    let deadline_of = |name: &str| {
        let tried = &p.received(Op::Try, name)[0];
        let text = tried.deadline.clone().expect("a tcc-deadline");
        let fraction = text.rsplit('.').next().unwrap_or_default();
        assert!(
            fraction.len() == 4 && fraction.ends_with('Z'),
            "milliseconds, UTC: {text}"
        );
        chrono::DateTime::parse_from_rfc3339(&text).expect("RFC 3339")
    };
    let short = deadline_of("short");
    assert!(
        short > sent && short <= chrono::Utc::now() + chrono::Duration::seconds(5),
        "{short}"
    );
    assert!(short < job_deadline);
    // The job's deadline comes before the end of a 600-second call.
    assert_eq!(deadline_of("long"), job_deadline);
    assert_eq!(p.received(Op::Confirm, "short")[0].deadline, None);
}

#[tokio::test]
async fn a_failed_try_cancels_the_reserved_tasks() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Try, "b", vec![Reply::Status(400)]);
    let id = app
        .submit(&job_of(&[
            ("a", p.url("a")),
            ("b", p.url("b")),
            ("c", p.url("c")),
        ]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(done["failureReason"], "try-failed");
    assert_eq!(task(&done, "b")["taskStatus"], "failed");
    assert!(
        task(&done, "b")["lastMessage"]
            .as_str()
            .is_some_and(|m| m.contains("400"))
    );
    for name in ["a", "c"] {
        assert!(p.released(name), "{name} released");
        assert_eq!(p.count(Op::Cancel, name), 1, "{name}: one cancel (DELETE)");
        assert_eq!(task(&done, name)["taskStatus"], "canceled");
    }
    assert_eq!(p.count_all(Op::Confirm), 0, "nothing confirmed");
    app.stop().await;
}

/// PostgreSQL stores no NUL character; participants' answers holding one are kept with U+FFFD in
/// its place, and the job goes on to its end.
#[tokio::test]
async fn answers_holding_a_nul_character_are_kept_readable_and_the_job_ends() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        Op::Try,
        "a",
        vec![Reply::ReserveWithNote("held\u{0}here".into())],
    );
    p.script(
        Op::Try,
        "b",
        vec![Reply::StatusBody(409, "no\u{0}stock".into())],
    );
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(task(&done, "a")["tryResponse"]["note"], "held\u{FFFD}here");
    assert_eq!(task(&done, "a")["taskStatus"], "canceled");
    assert!(p.released("a"));
    let message = task(&done, "b")["lastMessage"].as_str().unwrap_or_default();
    assert!(message.contains("no\u{FFFD}stock"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_answered_503_twice_is_retried_to_completion() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        Op::Confirm,
        "a",
        vec![Reply::Status(503), Reply::Status(503)],
    );
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "completed").await;
    assert_eq!(task(&done, "a")["attempts"], 3);
    assert_eq!(p.count(Op::Confirm, "a"), 3);
    assert!(p.confirmed("a") && p.confirmed("b"));
    app.stop().await;
}

#[tokio::test]
async fn a_link_expiring_while_its_confirm_is_retried_makes_the_job_heuristic() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        Op::Try,
        "b",
        vec![Reply::ReserveFor(Duration::from_secs(4))],
    );
    p.set_default(Op::Confirm, "b", Reply::Status(503));
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "heuristic").await;
    assert_eq!(task(&done, "a")["taskStatus"], "confirmed");
    assert_eq!(task(&done, "b")["taskStatus"], "heuristic");
    assert!(
        task(&done, "b")["lastMessage"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{done:#}"
    );
    assert!(p.confirmed("a"));
    assert!(p.count(Op::Confirm, "b") >= 2, "b's confirm was retried");
    assert!(p.reservations("b").iter().all(|r| r.confirms_applied == 0));
    // The confirm is never turned into a cancel once a participant confirmed.
    assert_eq!(p.count_all(Op::Cancel), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_first_confirm_refused_before_any_confirmed_cancels_the_rest() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Confirm, "a", vec![Reply::Status(404)]);
    // b never confirms: its confirm stays retryable, so nobody has confirmed when a refuses.
    p.set_default(Op::Confirm, "b", Reply::Status(503));
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(done["failureReason"], "confirm-refused");
    assert_eq!(p.count(Op::Confirm, "a"), 1, "no further confirm to a");
    for name in ["a", "b"] {
        assert!(p.released(name), "{name} released");
        assert_eq!(p.count(Op::Cancel, name), 1, "{name} canceled");
        assert_eq!(task(&done, name)["taskStatus"], "canceled");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_link_expiring_within_the_confirm_margin_fails_the_job_expiring() {
    let app = spawn_app_with(&["--confirm-margin", "5s"]).await;
    let p = Participant::start().await;
    p.script(
        Op::Try,
        "b",
        vec![Reply::ReserveFor(Duration::from_secs(3))],
    );
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(done["failureReason"], "expiring");
    assert_eq!(p.count_all(Op::Confirm), 0, "nothing confirmed");
    assert!(p.released("a") && p.count(Op::Cancel, "a") == 1);
    app.stop().await;
}

#[tokio::test]
async fn a_client_cancels_before_the_decision_but_not_after() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    let resp = app.delete(&format!("/jobs/{id}")).await;
    assert_eq!(resp.status(), 202);
    let done = app.wait_status(&id, "canceled").await;
    assert_eq!(done["failureReason"], "client");
    assert!(p.released("a") && p.released("b"));
    assert_eq!(p.count_all(Op::Confirm), 0);
    // Again: already canceled.
    let again = app.post(&format!("/jobs/{id}/cancel")).await;
    assert_eq!(again.status(), 200);
    let confirm = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(confirm.status(), 409);

    // After the decision, a cancel is refused.
    let id = app.submit(&job_of(&[("c", p.url("c"))])).await;
    app.wait_status(&id, "completed").await;
    let late = app.delete(&format!("/jobs/{id}")).await;
    assert_eq!(late.status(), 409);
    let problem: Value = late.json().await.expect("problem");
    assert_eq!(problem["status"], 409);
    assert!(p.confirmed("c"));
    app.stop().await;
}

#[tokio::test]
async fn the_deadline_passing_while_a_try_stalls_cancels_the_job() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "slow", Reply::Stall);
    let mut job = job_of(&[("a", p.url("a")), ("slow", p.url("slow"))]);
    job["jobMaxTTL"] = json!(2);
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(done["failureReason"], "timeout");
    assert_eq!(p.count(Op::Cancel, "a"), 1, "the reserved task is canceled");
    assert!(p.released("a"));
    assert_eq!(p.count_all(Op::Confirm), 0);
    assert_eq!(task(&done, "slow")["taskStatus"], "expired");
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_shows_while_another_try_still_runs() {
    // The engine holds back writes that need no synchronous commit while calls are out; they
    // still reach the job's representation within moments.
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "slow", Reply::Stall);
    let mut job = job_of(&[("a", p.url("a")), ("slow", p.url("slow"))]);
    job["jobMaxTTL"] = json!(120);
    // The stalled Try stays out for longer than the test waits.
    job["tasks"][1]["taskMaxTTL"] = json!(100);
    let id = app.submit(&job).await;
    let shown = eventually(|| async {
        let j = app.get_job(&id).await;
        j["jobStatus"] == "trying"
            && task(&j, "a")["taskStatus"] == "reserved"
            && task(&j, "slow")["taskStatus"] == "trying"
    })
    .await;
    assert!(
        shown,
        "task a reserved while the other Try runs: {:#}",
        app.get_job(&id).await
    );
    assert_eq!(p.count(Op::Try, "a"), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_with_prefer_wait_answers_200_with_the_completed_job() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    assert_eq!(
        p.count_all(Op::Confirm),
        0,
        "no confirm before the client asks"
    );
    let resp = confirm_waiting(&app, &id, 30).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["jobStatus"], "completed");
    assert!(p.confirmed("a") && p.confirmed("b"));
    app.stop().await;
}

/// A wait that runs out answers 202 with the job as it is when the wait ends (confirming), not
/// as it was when the wait began (reserved), though the waiter lets the non-terminal statuses
/// its driver announces pass unread. (It fails for a waiter that never reads the job again;
/// the last read before answering, after an announcement let pass within the last re-check
/// interval, depends on timing no test here controls.) The wait is long enough for the driver
/// to have saved `confirming` on a loaded machine (it does so within milliseconds of the
/// request).
#[tokio::test]
async fn a_confirm_whose_wait_runs_out_answers_with_the_job_as_it_is_then() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    // Every confirm stalls past the call timeout (2 s), for longer than the wait: the job stays
    // confirming however fast or slow the machine.
    p.script(Op::Confirm, "a", (0..20).map(|_| Reply::Stall).collect());
    let mut job = job_of(&[("a", p.url("a"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    let resp = confirm_waiting(&app, &id, 5).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["jobStatus"], "confirming", "{body:#}");
    assert!(
        p.count(Op::Confirm, "a") >= 1,
        "the job was decided, and its confirm sent, before the wait ended"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_that_arrives_while_tries_run_is_remembered() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    // The first Try stalls past its taskMaxTTL, so the job is still trying when the confirm comes.
    p.script(Op::Try, "a", vec![Reply::Stall]);
    let job = json!({
        "autoConfirm": false,
        "tasks": [
            {"taskID": "a", "taskURL": p.url("a"), "taskMaxTTL": 1},
            {"taskID": "b", "taskURL": p.url("b")}
        ]
    });
    let id = app.submit(&job).await;
    let resp = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(resp.status(), 202);
    let done = app.wait_status(&id, "completed").await;
    assert_eq!(p.count(Op::Try, "a"), 2, "the stalled Try was retried");
    assert_eq!(task(&done, "a")["taskStatus"], "confirmed");
    assert!(p.confirmed("a") && p.confirmed("b"));
    app.stop().await;
}

#[tokio::test]
async fn prefer_wait_on_a_job_that_cannot_confirm_answers_409_with_the_outcomes() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Confirm, "a", vec![Reply::Status(410)]);
    let mut job = job_of(&[("a", p.url("a"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    let resp = confirm_waiting(&app, &id, 30).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(
        header_opt(&resp, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let problem: Value = resp.json().await.expect("problem");
    assert_eq!(problem["tasks"][0]["taskID"], "a");
    assert_eq!(problem["tasks"][0]["taskStatus"], "canceled");
    let done = app.get_job(&id).await;
    assert_eq!(done["jobStatus"], "failed");
    assert_eq!(done["failureReason"], "confirm-refused");
    app.stop().await;
}

/// Reserve at the participant directly, as a service would before registering its link.
async fn reserve(http: &reqwest::Client, p: &Participant, name: &str) -> Value {
    let body: Value = http
        .post(p.url(name))
        .json(&json!({}))
        .send()
        .await
        .expect("reserve")
        .json()
        .await
        .expect("json");
    body["participantLink"].clone()
}

#[tokio::test]
async fn an_open_job_takes_registered_links_then_confirms_them() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "jobMaxTTL": 60, "tasks": []}))
        .await;
    let confirm_empty = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(confirm_empty.status(), 409, "nothing to confirm yet");

    let x = reserve(&app.http, &p, "x").await;
    let y = reserve(&app.http, &p, "y").await;
    let url = app.url(&format!("/jobs/{id}/participants"));
    let first = app
        .http
        .post(&url)
        .json(&json!({"uri": x["uri"], "expires": x["expires"], "taskID": "x"}))
        .send()
        .await
        .expect("register");
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("location").is_some());
    let second = app
        .http
        .post(&url)
        .json(&json!({"participantLink": y, "taskDescription": "the y service"}))
        .send()
        .await
        .expect("register");
    assert_eq!(second.status(), 201);
    let again = app
        .http
        .post(&url)
        .json(&json!({"uri": x["uri"], "expires": x["expires"]}))
        .send()
        .await
        .expect("register again");
    assert_eq!(
        again.status(),
        200,
        "the same link again answers the existing task"
    );
    let existing: Value = again.json().await.expect("json");
    assert_eq!(existing["taskID"], "x");

    let resp = confirm_waiting(&app, &id, 30).await;
    assert_eq!(resp.status(), 200);
    assert!(p.confirmed("x") && p.confirmed("y"));
    let done = app.get_job(&id).await;
    assert_eq!(done["tasks"].as_array().map(Vec::len), Some(2));

    let z = reserve(&app.http, &p, "z").await;
    let late = app
        .http
        .post(&url)
        .json(&json!({"participantLink": z}))
        .send()
        .await
        .expect("late register");
    assert_eq!(late.status(), 409, "no registration after the decision");
    app.stop().await;
}

#[tokio::test]
async fn an_open_job_nobody_confirms_times_out() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "jobMaxTTL": 3, "tasks": []}))
        .await;
    let x = reserve(&app.http, &p, "x").await;
    let resp = app
        .http
        .post(app.url(&format!("/jobs/{id}/participants")))
        .json(&json!({"participantLink": x}))
        .send()
        .await
        .expect("register");
    assert_eq!(resp.status(), 201);
    let done = app.wait_status(&id, "failed").await;
    assert_eq!(done["failureReason"], "timeout");
    assert!(p.released("x") && p.count(Op::Cancel, "x") == 1);
    app.stop().await;
}

#[tokio::test]
async fn mappings_carry_the_shared_state_into_a_try_and_back_and_a_location_only_answer_is_a_link()
{
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Try, "loc", vec![Reply::ReserveLocationOnly]);
    let job = json!({
        "sharedState": {"customer": 42},
        "tasks": [
            {"taskID": "phone", "taskURL": p.url("phone"), "body": {"number": "0586"},
             "inputMapping": {"/customerId": "/customer"},
             "outputMapping": {"/phoneBooking": "/reservation"}},
            {"taskID": "loc", "taskURL": p.url("loc")}
        ]
    });
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "completed").await;
    let sent = &p.received(Op::Try, "phone")[0];
    assert_eq!(
        sent.body,
        Some(json!({"number": "0586", "customerId": 42})),
        "the input mapping wrote the shared state into the Try body"
    );
    assert!(
        done["sharedState"]["phoneBooking"]
            .as_str()
            .is_some_and(|s| s.starts_with("phone-")),
        "{done:#}"
    );
    let loc = task(&done, "loc");
    assert!(
        loc["participantLink"]["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with(&p.base) && u.contains("/r/loc-")),
        "a relative Location is resolved against the taskURL: {loc:#}"
    );
    assert_eq!(
        loc["participantLink"]["expires"], done["deadline"],
        "an answer without expires is taken to last until the job deadline"
    );
    assert!(p.confirmed("loc"));

    // An input mapping whose source is missing fails the Try without calling the participant.
    let bad = json!({"tasks": [{"taskID": "m", "taskURL": p.url("m"), "inputMapping": {"/x": "/missing"}}]});
    let id = app.submit(&bad).await;
    let failed = app.wait_status(&id, "failed").await;
    assert_eq!(p.count(Op::Try, "m"), 0);
    assert!(
        task(&failed, "m")["lastMessage"]
            .as_str()
            .is_some_and(|m| m.contains("/missing"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_try_answered_429_waits_for_retry_after() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Try, "a", vec![Reply::StatusRetryAfter(429, 1)]);
    let id = app.submit(&job_of(&[("a", p.url("a"))])).await;
    let done = app.wait_status(&id, "completed").await;
    let tries = p.received(Op::Try, "a");
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].at.duration_since(tries[0].at) >= Duration::from_secs(1),
        "the retry came before Retry-After"
    );
    assert_eq!(task(&done, "a")["taskStatus"], "confirmed");
    app.stop().await;
}

/// Regression, found by the chaos soak: a confirm that was applied but whose answer was lost
/// must not be followed by a cancel when another participant refuses. The job is heuristic, and
/// the participant that confirmed is never told to cancel.
#[tokio::test]
async fn a_lost_confirm_answer_and_a_refusal_make_the_job_heuristic_not_failed() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Confirm, "a", vec![Reply::ApplyThenStall]);
    p.script(Op::Confirm, "b", vec![Reply::Status(403)]);
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "heuristic").await;
    assert!(p.confirmed("a"), "a applied its confirm");
    assert_eq!(task(&done, "a")["taskStatus"], "confirmed");
    assert_eq!(task(&done, "b")["taskStatus"], "heuristic");
    assert_eq!(
        p.count(Op::Cancel, "a"),
        0,
        "no cancel after a confirm that may have applied"
    );
    assert!(p.count(Op::Confirm, "a") >= 2, "a's confirm was sent again");
    app.stop().await;
}

/// Calls to one participant host keep their connections: after 80 Tries out at once (above what
/// an idle pool of a fixed few dozen would keep), the 80 confirms go out on those same
/// connections rather than on new ones.
#[tokio::test]
async fn many_calls_at_once_to_one_host_reuse_their_connections() {
    const N: usize = 80;
    let app = spawn_app().await;
    let p = Participant::start().await;
    let names: Vec<String> = (0..N).map(|i| format!("r{i}")).collect();
    for name in &names {
        p.set_default(Op::Try, name, Reply::Together(N));
        p.set_default(Op::Confirm, name, Reply::Together(N));
    }
    let tasks: Vec<(&str, String)> = names.iter().map(|n| (n.as_str(), p.url(n))).collect();
    let id = app.submit(&job_of(&tasks)).await;
    app.wait_status(&id, "completed").await;
    assert!(names.iter().all(|n| p.confirmed(n)), "every task confirmed");
    let tried = p.peers(Op::Try);
    let confirmed = p.peers(Op::Confirm);
    assert_eq!(
        tried.len(),
        N,
        "the Tries were out at once, one connection each"
    );
    assert_eq!(confirmed.len(), N, "the confirms were out at once");
    let fresh = confirmed.difference(&tried).count();
    assert_eq!(fresh, 0, "{fresh} of {N} confirms needed a new connection");
    app.stop().await;
}

/// A participant on raw HTTP/1.1 that keeps every connection open after answering (no
/// `Connection: close`), until told to close them all at once, as a server closes its idle
/// keep-alive connections; it counts the connections it accepted and each request's method.
struct ClosingParticipant {
    base: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    close: tokio::sync::watch::Sender<u64>,
}

impl ClosingParticipant {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (close, _) = tokio::sync::watch::channel(0u64);
        let p = ClosingParticipant {
            base: base.clone(),
            accepted: Arc::default(),
            open: Arc::default(),
            requests: Arc::default(),
            close,
        };
        let (accepted, open, requests, close) = (
            p.accepted.clone(),
            p.open.clone(),
            p.requests.clone(),
            p.close.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (open, requests, base) = (open.clone(), requests.clone(), base.clone());
                let mut closed = close.subscribe();
                tokio::spawn(async move {
                    let mut conn = tokio::io::BufReader::new(stream);
                    loop {
                        tokio::select! {
                            req = read_request(&mut conn) => {
                                let Some(method) = req else { break };
                                requests.lock().expect("ledger").push(method.clone());
                                let answer = if method == "POST" {
                                    let expires = (chrono::Utc::now() + chrono::Duration::seconds(60))
                                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                                    let body = json!({"participantLink":
                                        {"uri": format!("{base}/r/1"), "expires": expires}})
                                    .to_string();
                                    format!(
                                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                        body.len()
                                    )
                                } else {
                                    "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                                };
                                if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                                    break;
                                }
                            }
                            _ = closed.changed() => break,
                        }
                    }
                    drop(conn);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        p
    }

    /// Close every open connection, and wait until they are closed.
    async fn close_all(&self) {
        self.close.send_modify(|g| *g += 1);
        assert!(
            eventually(|| async { self.open.load(Ordering::SeqCst) == 0 }).await,
            "the participant's connections did not close"
        );
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("ledger").clone()
    }
}

/// One request's method, its head and body read off `conn`; `None` at the connection's end.
async fn read_request(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Option<String> {
    let mut method = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match method {
            None => method = line.split(' ').next().map(str::to_string),
            Some(_) => {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().ok()?;
                }
            }
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.ok()?;
    method
}

/// A participant that closes its kept-alive connections between two calls (as servers close
/// idle ones): the next call finds its kept connection closed before writing to it, and goes
/// out on a new one at once, as its first attempt (no failed attempt, no retry later).
#[tokio::test]
async fn a_call_whose_kept_connection_the_participant_closed_goes_out_on_a_new_one() {
    let app = spawn_app().await;
    let p = ClosingParticipant::start().await;
    let mut job = job_of(&[("a", format!("{}/try/a", p.base))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    assert_eq!(p.accepted.load(Ordering::SeqCst), 1);
    // The Try's connection is kept by the coordinator; the participant closes it.
    p.close_all().await;
    let resp = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(resp.status(), 202);
    let done = app.wait_status(&id, "completed").await;
    let a = task(&done, "a");
    assert_eq!(a["taskStatus"], "confirmed");
    assert_eq!(a["attempts"], 1, "the confirm needed another attempt: {a}");
    assert_eq!(a["lastMessage"], "confirmed", "{a}");
    assert_eq!(p.requests(), ["POST", "PUT"]);
    assert_eq!(
        p.accepted.load(Ordering::SeqCst),
        2,
        "the confirm went out on a new connection"
    );
    app.stop().await;
}
