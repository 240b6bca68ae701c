//! `PUT /jobs/{id}`: a job under the client's own id, and its update before the decision.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant};

async fn put(
    app: &TestApp,
    id: &str,
    doc: &Value,
    if_match: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = app.http.put(app.url(&format!("/jobs/{id}"))).json(doc);
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let resp = req.send().await.expect("PUT");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

async fn etag(app: &TestApp, id: &str) -> String {
    let resp = app.get(&format!("/jobs/{id}")).await;
    header_opt(&resp, "etag").expect("an ETag")
}

#[tokio::test]
async fn a_job_under_the_clients_id_is_created_once_and_updated_only_with_its_etag() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = "order-8812.booking";
    let mut doc = job_of(&[("a", p.url("put-a"))]);
    doc["autoConfirm"] = json!(false);
    doc["description"] = json!("first");

    let (status, headers, body) = put(&app, id, &doc, None).await;
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["jobID"], id);
    assert_eq!(
        header_in(&headers, "location"),
        Some(app.url(&format!("/jobs/{id}")))
    );
    app.wait_status(id, "reserved").await;
    // The same document again: the job as it stands, nothing created twice.
    let (status, _, body) = put(&app, id, &doc, None).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["jobStatus"], "reserved");
    assert_eq!(p.count(Op::Try, "put-a"), 1);

    // Another document: a conflict, unless If-Match holds the current ETag.
    let mut changed = doc.clone();
    changed["description"] = json!("second");
    changed["autoConfirm"] = json!(true);
    changed["tags"] = json!(["updated"]);
    let (status, _, problem) = put(&app, id, &changed, None).await;
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("If-Match"))
    );
    let (status, _, _) = put(&app, id, &changed, Some("\"stale\"")).await;
    assert_eq!(status, 412);
    // Tasks cannot change, even with the right ETag.
    let mut other_tasks = changed.clone();
    other_tasks["tasks"][0]["taskURL"] = json!(p.url("put-elsewhere"));
    let (status, _, problem) = put(&app, id, &other_tasks, Some(&etag(&app, id).await)).await;
    assert_eq!(status, 409, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/tasks/0"))
    );

    // With it: updated, and the engine takes the new autoConfirm in: the job completes.
    let (status, _, body) = put(&app, id, &changed, Some(&etag(&app, id).await)).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["description"], "second");
    assert_eq!(body["tags"], json!(["updated"]));
    let done = app.wait_status(id, "completed").await;
    assert!(p.confirmed("put-a"));
    assert_eq!(done["autoConfirm"], true);
    // After the decision no update is taken; the event log has the update.
    let mut late = changed.clone();
    late["description"] = json!("third");
    let (status, _, problem) = put(&app, id, &late, Some(&etag(&app, id).await)).await;
    assert_eq!(status, 409, "{problem:#}");
    let log = get_json(&app.http, &app.url(&format!("/jobs/{id}/events"))).await;
    assert!(
        log["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["action"] == "update")),
        "{log:#}"
    );
}

#[tokio::test]
async fn a_bad_id_or_document_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let (status, _, problem) = put(&app, "has%20space", &json!({"tasks": []}), None).await;
    assert_eq!(status, 400, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("job id"))
    );
    let (status, _, problem) = put(&app, "fine", &json!({"jobMaxTtl": 5, "tasks": []}), None).await;
    assert_eq!(status, 422, "{problem:#}");
    assert_eq!(app.get("/jobs/fine").await.status(), 404);
}

/// An id no job can have names no job: every job resource answers 404, as for an unknown id,
/// and says which job it looked for.
#[tokio::test]
async fn an_id_no_job_can_have_is_404_on_every_job_resource() {
    let app = spawn_app().await;
    let long = "x".repeat(129);
    for id in ["has%20space", long.as_str()] {
        for path in [
            format!("/jobs/{id}"),
            format!("/jobs/{id}/progress"),
            format!("/jobs/{id}/tasks"),
            format!("/jobs/{id}/tasks/a"),
            format!("/jobs/{id}/events"),
            format!("/jobs/{id}/shared-state"),
        ] {
            let resp = app.get(&path).await;
            assert_eq!(resp.status(), 404, "{path}");
            let problem: Value = resp.json().await.unwrap_or_default();
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("no job ")),
                "{path}: {problem:#}"
            );
        }
        for path in [format!("/jobs/{id}/confirm"), format!("/jobs/{id}/cancel")] {
            assert_eq!(app.post(&path).await.status(), 404, "{path}");
        }
        assert_eq!(app.delete(&format!("/jobs/{id}")).await.status(), 404);
    }
    // A task id no task can have, of a job that exists: 404 naming the task.
    let job = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let resp = app.get(&format!("/jobs/{job}/tasks/has%20space")).await;
    assert_eq!(resp.status(), 404);
}
