//! The Atomikos-compatible coordinator: `PUT /coordinator/confirm` and `/cancel` with the links
//! a client got from its participants' Tries.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// Run a Try at the participant as an Atomikos client does, and return the link it answers.
pub async fn reserve(p: &Participant, name: &str) -> Value {
    let r = reqwest::Client::new()
        .post(p.url(name))
        .json(&json!({}))
        .send()
        .await
        .expect("try");
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.expect("link");
    body["participantLink"].clone()
}

pub async fn put_links(app: &TestApp, what: &str, links: &[Value]) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/coordinator/{what}")))
        .header("content-type", "application/tcc+json")
        .body(json!({"participantLinks": links}).to_string())
        .send()
        .await
        .expect("PUT")
}

fn location(r: &reqwest::Response) -> String {
    header_opt(r, "location").expect("a Location")
}

#[tokio::test]
async fn confirm_answers_204_once_every_link_is_confirmed_and_a_replay_on_another_instance_confirms_nothing_twice()
 {
    let db = fresh_database().await;
    let app = spawn_app_on(&db, &[]).await;
    let p = Participant::start().await;
    let links = vec![reserve(&p, "a").await, reserve(&p, "b").await];

    let r = put_links(&app, "confirm", &links).await;
    assert_eq!(r.status(), 204);
    let job_url = location(&r);
    assert!(p.confirmed("a") && p.confirmed("b"));
    for name in ["a", "b"] {
        let got = p.received(Op::Confirm, name);
        assert_eq!(got.len(), 1, "{name}: one confirm");
        assert_eq!(got[0].content_type.as_deref(), Some("application/tcc"));
        assert_eq!(got[0].accept.as_deref(), Some("application/tcc"));
    }
    let job = get_json(&app.http, &job_url).await;
    assert_eq!(job["jobStatus"], "completed");
    assert_eq!(job["tasks"].as_array().map(Vec::len), Some(2));

    // The same set again, in another order, here and on a second instance: the same answer,
    // the same job, and no second confirm.
    let other = spawn_app_on(&db, &[]).await;
    for target in [&app, &other] {
        let r = put_links(target, "confirm", &[links[1].clone(), links[0].clone()]).await;
        assert_eq!(r.status(), 204);
        assert!(location(&r).ends_with(job_url.rsplit('/').next().unwrap_or_default()));
    }
    assert_eq!(p.count(Op::Confirm, "a"), 1);
    assert_eq!(p.count(Op::Confirm, "b"), 1);
    // The recorder is the process's, shared with the other tests: at least this job.
    let metrics = scrape(&app.http, &app.addr).await;
    let created = metrics
        .value("tcc_jobs_created_total", &[("source", "atomikos")])
        .expect("tcc_jobs_created_total{source=\"atomikos\"}");
    assert!(created >= 1.0, "{}", metrics.text);
    other.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_confirm_beside_a_confirmed_one_answers_409_with_every_link_outcome() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let links = vec![reserve(&p, "a").await, reserve(&p, "b").await];
    p.set_default(Op::Confirm, "b", Reply::Status(403));

    let r = put_links(&app, "confirm", &links).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/heuristic");
    let tasks = problem["tasks"].as_array().expect("outcomes");
    assert_eq!(tasks.len(), 2);
    for link in &links {
        assert!(
            tasks.iter().any(|t| t["participantLink"] == link["uri"]),
            "{link} in {tasks:?}"
        );
    }
    assert!(p.confirmed("a"));
    assert!(!p.confirmed("b"));
    app.stop().await;
}

#[tokio::test]
async fn confirm_after_the_reservations_are_gone_answers_404() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let links = vec![reserve(&p, "a").await, reserve(&p, "b").await];
    // Both reservations gone at the participant (expired or canceled there).
    p.set_default(Op::Confirm, "a", Reply::Status(404));
    p.set_default(Op::Confirm, "b", Reply::Status(404));
    let r = put_links(&app, "confirm", &links).await;
    assert_eq!(r.status(), 404);
    let problem: Value = r.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/too-late");
    assert!(!p.confirmed("a") && !p.confirmed("b"));
    app.stop().await;
}

#[tokio::test]
async fn a_link_already_lapsed_answers_404_at_once_and_the_others_are_canceled() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let open = reserve(&p, "a").await;
    let lapsed = json!({"uri": format!("{}/r/old", p.base), "expires": "2020-01-01T00:00:00Z"});
    let r = put_links(&app, "confirm", &[open, lapsed]).await;
    assert_eq!(r.status(), 404);
    let problem: Value = r.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/r/old") && d.contains("lapsed")),
        "{problem}"
    );
    // Canceled, not merely lapsed: the participant got the DELETE.
    assert!(
        eventually(|| async { p.count(Op::Cancel, "a") == 1 && p.released("a") }).await,
        "the open link is canceled"
    );
    assert_eq!(p.count(Op::Confirm, "a"), 0);
    app.stop().await;
}

#[tokio::test]
async fn links_without_uri_or_expires_answer_400_naming_each() {
    let app = spawn_app().await;
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (
            json!({"participantLinks": [{"expires": soon}]}),
            "/participantLinks/0/uri",
        ),
        (
            json!({"participantLinks": [{"uri": "http://p.example/r/1"}]}),
            "/participantLinks/0/expires",
        ),
        (
            json!({"participantLinks": [{"uri": "not a url", "expires": soon}]}),
            "/participantLinks/0/uri",
        ),
        (
            json!({"participantLinks": [{"uri": "http://p.example/r/1", "expires": "soon"}]}),
            "/participantLinks/0/expires",
        ),
        (json!({"participantLinks": []}), "/participantLinks"),
        (json!({"links": []}), "/participantLinks"),
        (
            json!({"participantLinks": [
                {"uri": "http://p.example/r/1", "expires": soon},
                {"uri": "http://p.example/r/1", "expires": soon}]}),
            "/participantLinks/1/uri",
        ),
    ];
    for what in ["confirm", "cancel"] {
        for (body, pointer) in &cases {
            let r = app
                .http
                .put(app.url(&format!("/coordinator/{what}")))
                .header("content-type", "application/tcc+json")
                .body(body.to_string())
                .send()
                .await
                .expect("PUT");
            assert_eq!(r.status(), 400, "{what} {body}");
            let problem: Value = r.json().await.expect("problem");
            assert!(
                problem["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["pointer"] == *pointer)),
                "{what} {body}: {problem}"
            );
        }
    }
    assert_eq!(app.job_count().await, 0, "nothing stored");
    app.stop().await;
}

#[tokio::test]
async fn cancel_answers_204_and_each_participant_sees_an_atomikos_cancel_once() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let links = vec![reserve(&p, "a").await, reserve(&p, "b").await];
    let r = put_links(&app, "cancel", &links).await;
    assert_eq!(r.status(), 204);
    let job_url = location(&r);
    assert!(eventually(|| async { p.released("a") && p.released("b") }).await);
    for name in ["a", "b"] {
        let got = p.received(Op::Cancel, name);
        assert_eq!(got.len(), 1, "{name}: one cancel");
        assert_eq!(got[0].accept.as_deref(), Some("application/tcc"));
    }
    let r = put_links(&app, "cancel", &links).await;
    assert_eq!(r.status(), 204);
    assert_eq!(location(&r), job_url);
    let job = get_json(&app.http, &job_url).await;
    assert_eq!(job["jobStatus"], "canceled");
    assert_eq!(p.count(Op::Cancel, "a"), 1);
    assert_eq!(p.count(Op::Confirm, "a"), 0);
    app.stop().await;
}

/// A participant that cannot confirm yet (it answers 503), with its reservation good for a long
/// while: the outcome is not known within the request's time limit, so the answer is 503
/// `outcome-pending` with `Retry-After`, listing the link as still confirming. The same set
/// again waits again, on the same job, and once the participant confirms it answers 204.
#[tokio::test]
async fn an_outcome_not_known_in_time_answers_503_and_the_same_set_again_waits_for_it() {
    let app = spawn_app_with(&["--request-timeout", "2s"]).await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "busy", Reply::ReserveFor(Duration::from_secs(600)));
    p.set_default(Op::Confirm, "busy", Reply::Status(503));
    let links = vec![reserve(&p, "busy").await];

    let r = put_links(&app, "confirm", &links).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some(), "Retry-After");
    let job_url = location(&r);
    let problem: Value = r.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/outcome-pending", "{problem}");
    assert_eq!(problem["tasks"][0]["taskStatus"], "confirming", "{problem}");
    assert!(!p.confirmed("busy"));

    p.set_default(Op::Confirm, "busy", Reply::Ok);
    // Each request waits at most three quarters of the time limit; the retries' back-off
    // may take several.
    let answered = eventually(|| async {
        let r = put_links(&app, "confirm", &links).await;
        assert_eq!(location(&r), job_url, "the same job");
        if r.status() != 204 {
            assert_eq!(r.status(), 503, "still pending, or done");
        }
        r.status() == 204
    })
    .await;
    assert!(
        answered,
        "the same set again answers 204 once the participant confirms"
    );
    assert!(p.confirmed("busy"));
    let job = get_json(&app.http, &job_url).await;
    assert_eq!(job["jobStatus"], "completed");
    app.stop().await;
}
