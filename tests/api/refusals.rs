//! A client's confirm, cancel and registration are decided by the one rule that also makes a
//! job's links and the console's forms (`domain::actions`): what `_links` does not offer is
//! refused with the rule's reason, and a request repeated is answered as the first time.

use serde_json::{Value, json};

use crate::helpers::spawn_app;
use crate::participant::{Op, Participant, Reply};

/// The client actions a job's `_links` offers.
fn offered(job: &Value) -> Vec<&'static str> {
    ["confirm", "cancel", "participants"]
        .into_iter()
        .filter(|rel| !job["_links"][*rel].is_null())
        .collect()
}

async fn detail(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_confirm_without_a_task_is_refused_as_the_links_say() {
    let app = spawn_app().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let job = app.get_job(&id).await;
    assert_eq!(offered(&job), vec!["cancel", "participants"]);
    let (status, why) = detail(app.post(&format!("/jobs/{id}/confirm")).await).await;
    assert_eq!(status, 409);
    assert!(why.contains("no task yet"), "{why}");
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_request_is_the_clients_decision_and_closes_the_cancel() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    // The Try never answers: the job stays undecided with the confirm request recorded.
    p.set_default(Op::Try, "slow", Reply::Stall);
    let id = app
        .submit(&json!({
            "autoConfirm": false,
            "jobMaxTTL": 60,
            "tasks": [{"taskID": "slow", "taskURL": p.url("slow"), "taskMaxTTL": 30}]
        }))
        .await;
    let confirm = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(confirm.status(), 202);
    let job = app.get_job(&id).await;
    assert_eq!(job["jobStatus"], "trying");
    assert_eq!(offered(&job), vec!["participants"], "{:#}", job["_links"]);
    // Not offered, and refused with the rule's reason.
    let (status, why) = detail(app.delete(&format!("/jobs/{id}")).await).await;
    assert_eq!(status, 409);
    assert!(
        why.contains("a confirm of this job was already requested"),
        "{why}"
    );
    // The confirm again is a repeat: answered as the first time.
    let again = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(app.get_job(&id).await["jobStatus"], "trying");
    app.stop().await;
}

#[tokio::test]
async fn after_the_decision_every_client_request_is_refused_with_the_status_it_met() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app
        .submit(&json!({"tasks": [{"taskID": "a", "taskURL": p.url("a")}]}))
        .await;
    let job = app.wait_status(&id, "completed").await;
    assert_eq!(offered(&job), Vec::<&str>::new());
    let (status, why) = detail(app.delete(&format!("/jobs/{id}")).await).await;
    assert_eq!(status, 409);
    assert!(why.contains("already completed"), "{why}");
    let register = app
        .http
        .post(app.url(&format!("/jobs/{id}/participants")))
        .json(&json!({
            "uri": p.url("late"),
            "expires": tcc_coordinator::domain::rfc3339(chrono::Utc::now() + chrono::Duration::seconds(60))
        }))
        .send()
        .await
        .expect("POST");
    let (status, why) = detail(register).await;
    assert_eq!(status, 409);
    assert!(
        why.contains("already completed") && why.contains("register"),
        "{why}"
    );
    app.stop().await;
}
