//! `/jobs/{id}/shared-state`: conditional reads and writes, merge patches, limits; and writers at
//! the same time as the engine's output mappings, none of them lost.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    id: &str,
    ctype: &str,
    body: String,
    if_match: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = app
        .http
        .request(method, app.url(&format!("/jobs/{id}/shared-state")))
        .header("content-type", ctype)
        .body(body);
    if let Some(t) = if_match {
        req = req.header("if-match", t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let etag = header_opt(&resp, "etag");
    (status, etag, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_shared_state_is_read_and_written_conditionally() {
    let app = spawn_app().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": [], "sharedState": {"customer": 42}}))
        .await;
    let path = format!("/jobs/{id}/shared-state");
    let resp = app.get(&path).await;
    let etag = header_opt(&resp, "etag").expect("an ETag");
    assert_eq!(
        resp.json::<Value>().await.ok(),
        Some(json!({"customer": 42}))
    );
    let unchanged = app
        .http
        .get(app.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(unchanged.status(), 304);

    use reqwest::Method;
    let json_type = "application/json";
    // A stale If-Match: 412, nothing written.
    let (status, _, _) = send(
        &app,
        Method::PUT,
        &id,
        json_type,
        r#"{"x":1}"#.into(),
        Some("\"old\""),
    )
    .await;
    assert_eq!(status, 412);
    // The current one: written, and a new ETag.
    let (status, new_tag, body) = send(
        &app,
        Method::PUT,
        &id,
        json_type,
        r#"{"customer":43,"note":"a"}"#.into(),
        Some(&etag),
    )
    .await;
    assert_eq!((status, body), (200, json!({"customer": 43, "note": "a"})));
    let new_tag = new_tag.expect("an ETag");
    assert_ne!(new_tag, etag);
    // A merge patch: members replaced, removed with null, added.
    let (status, _, body) = send(
        &app,
        Method::PATCH,
        &id,
        "application/merge-patch+json",
        r#"{"note":null,"address":{"city":"Ghent"}}"#.into(),
        Some(&new_tag),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"customer": 43, "address": {"city": "Ghent"}}))
    );
    // The old tag no longer matches.
    let (status, _, _) = send(
        &app,
        Method::PATCH,
        &id,
        "application/merge-patch+json",
        "{}".into(),
        Some(&new_tag),
    )
    .await;
    assert_eq!(status, 412);
    // A PATCH must be a merge patch; a PUT must be an object within 256 KiB.
    let (status, _, problem) = send(&app, Method::PATCH, &id, json_type, "{}".into(), None).await;
    assert_eq!(status, 415, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("merge-patch"))
    );
    let (status, _, _) = send(&app, Method::PUT, &id, json_type, "[1]".into(), None).await;
    assert_eq!(status, 422);
    let big = json!({"blob": "x".repeat(300 * 1024)}).to_string();
    let (status, _, problem) = send(&app, Method::PUT, &id, json_type, big, None).await;
    assert_eq!(status, 413, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("256 KiB"))
    );
    let (status, _, _) = send(
        &app,
        Method::PUT,
        "no-such-job",
        json_type,
        "{}".into(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // What was refused changed nothing.
    let now = get_json(&app.http, &app.url(&path)).await;
    assert_eq!(now, json!({"customer": 43, "address": {"city": "Ghent"}}));
}

#[tokio::test]
async fn a_write_while_a_try_is_retried_is_seen_by_the_retry() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Try, "seen-a", vec![Reply::StatusRetryAfter(503, 2)]);
    let id = app
        .submit(&json!({
            "sharedState": {"who": "old"},
            "retryPolicy": {"maxDelay": 2},
            "tasks": [{"taskID": "a", "taskURL": p.url("seen-a"), "inputMapping": {"/who": "/who"}}]
        }))
        .await;
    assert!(eventually(|| async { p.count(Op::Try, "seen-a") >= 1 }).await);
    let (status, _, _) = send(
        &app,
        reqwest::Method::PUT,
        &id,
        "application/json",
        r#"{"who":"new"}"#.into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    app.wait_status(&id, "completed").await;
    let tries = p.received(Op::Try, "seen-a");
    assert_eq!(tries.len(), 2);
    assert_eq!(
        tries[0].body.as_ref().map(|b| b["who"].clone()),
        Some(json!("old"))
    );
    assert_eq!(
        tries[1].body.as_ref().map(|b| b["who"].clone()),
        Some(json!("new"))
    );
}

#[tokio::test]
async fn client_patches_and_output_mappings_at_the_same_time_all_land() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    const TASKS: usize = 4;
    const PATCHES: usize = 40;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let name = format!("race-{t}");
        // Each Try is retried twice, quickly, so that its mapping lands among the patches.
        p.script(Op::Try, &name, vec![Reply::Status(503), Reply::Status(503)]);
        tasks.push(json!({
            "taskID": format!("t{t}"),
            "taskURL": p.url(&name),
            "outputMapping": {format!("/t{t}"): "/participantLink/uri"}
        }));
    }
    let id = app
        .submit(&json!({
            "retryPolicy": {"maxAttempts": 5, "initialDelay": 0.02, "maxDelay": 0.1},
            "tasks": tasks
        }))
        .await;
    for k in 0..PATCHES {
        let (status, _, body) = send(
            &app,
            reqwest::Method::PATCH,
            &id,
            "application/merge-patch+json",
            json!({format!("k{k}"): k}).to_string(),
            None,
        )
        .await;
        assert_eq!(status, 200, "patch {k}: {body:#}");
    }
    app.wait_status(&id, "completed").await;
    let state = get_json(&app.http, &app.url(&format!("/jobs/{id}/shared-state"))).await;
    for k in 0..PATCHES {
        assert_eq!(
            state[format!("k{k}")],
            json!(k),
            "patch {k} lost: {state:#}"
        );
    }
    for t in 0..TASKS {
        assert!(
            state[format!("t{t}")]
                .as_str()
                .is_some_and(|u| u.contains("race-")),
            "task t{t}'s output mapping lost: {state:#}"
        );
    }
}
