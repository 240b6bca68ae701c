//! The operators' actions `continue` and `restart`, across instances; and the hypermedia table:
//! in every job status exactly the allowed actions are advertised, each one advertised works,
//! and each one not advertised is refused with a 409 that says why.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply, ResState};

async fn post(http: &reqwest::Client, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn events(http: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let page = get_json(http, &format!("{base}/jobs/{id}/events?limit=1000")).await;
    page["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn continue_completes_a_heuristic_job_once_its_participant_is_back_from_another_instance() {
    let db = fresh_database().await;
    let one = spawn_app_on(&db, &[]).await;
    let two = spawn_app_on(&db, &[]).await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "cont-b", Reply::Status(403));
    let id = one
        .submit(&job_of(&[("a", p.url("cont-a")), ("b", p.url("cont-b"))]))
        .await;
    let job = wait_for_status(&one.http, &one.addr, &id, "heuristic").await;
    assert!(job["_links"]["continue"].is_object(), "{job:#}");
    assert!(p.confirmed("cont-a") && !p.confirmed("cont-b"));

    // The participant is fixed; an operator continues, through the other instance.
    p.set_default(Op::Confirm, "cont-b", Reply::Ok);
    let (status, body) = post(&two.http, &two.url(&format!("/jobs/{id}/continue")), None).await;
    assert_eq!(status, 202, "{body:#}");
    let done = wait_for_status(&two.http, &two.addr, &id, "completed").await;
    assert!(p.confirmed("cont-b"), "b confirmed at last");
    assert_eq!(
        p.count(Op::Confirm, "cont-a"),
        1,
        "a is not confirmed twice"
    );
    assert!(done["_links"]["continue"].is_null() && done["_links"]["resolve"].is_null());
    // Off the heuristics list, and the log says who continued and what followed.
    let list = get_json(&one.http, &one.url("/heuristics")).await;
    assert!(
        list["jobs"].as_array().is_some_and(|j| j.is_empty()),
        "{list:#}"
    );
    let log = events(&one.http, &one.addr, &id).await;
    let pos = |pred: &dyn Fn(&Value) -> bool| log.iter().position(pred);
    let cont = pos(&|e| e["action"] == "continue").expect("the continue");
    assert_eq!(log[cont]["actor"], "anonymous");
    let first_heuristic = pos(&|e| e["jobStatus"] == "heuristic").expect("heuristic");
    let completed = pos(&|e| e["jobStatus"] == "completed").expect("completed");
    assert!(first_heuristic < cont && cont < completed, "{log:#?}");

    // Continuing again is refused: nothing to retry.
    let (status, problem) = post(&one.http, &one.url(&format!("/jobs/{id}/continue")), None).await;
    assert_eq!(status, 409);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("completed"))
    );
}

#[tokio::test]
async fn continue_sends_a_confirm_waiting_for_its_backoff_at_once() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    // b's participant asks for five minutes; the job's policy lets it.
    p.script(
        Op::Confirm,
        "hurry-b",
        vec![Reply::StatusRetryAfter(503, 300)],
    );
    let mut doc = job_of(&[("a", p.url("hurry-a")), ("b", p.url("hurry-b"))]);
    doc["retryPolicy"] = json!({"maxDelay": 300});
    let id = app.submit(&doc).await;
    let ok = eventually(|| async {
        let job = app.get_job(&id).await;
        job["_links"]["continue"].is_object()
    })
    .await;
    assert!(ok, "the waiting confirm is never offered to continue");
    assert_eq!(app.get_job(&id).await["jobStatus"], "confirming");
    let (status, body) = post(&app.http, &app.url(&format!("/jobs/{id}/continue")), None).await;
    assert_eq!(status, 202, "{body:#}");
    // Completed long before the five minutes.
    app.wait_status(&id, "completed").await;
    assert_eq!(p.count(Op::Confirm, "hurry-b"), 2);
}

/// Restarted through another instance than the one that ran the first attempt, which is then
/// stopped at once; a third instance started afterwards finishes the new attempt.
#[tokio::test]
async fn restart_tries_a_failed_job_again_as_a_new_attempt_across_instances_and_a_restart() {
    let db = fresh_database().await;
    let first = spawn_app_on(&db, &[]).await;
    let p = Participant::start().await;
    p.script(Op::Try, "again-b", vec![Reply::Status(400)]);
    let id = first
        .submit(&job_of(&[("a", p.url("again-a")), ("b", p.url("again-b"))]))
        .await;
    let failed = first.wait_status(&id, "failed").await;
    assert_eq!(failed["failureReason"], "try-failed");
    assert_eq!(failed["attempt"], 1);
    assert!(p.released("again-a"), "a's reservation canceled");
    first.stop().await;

    let second = spawn_app_on(&db, &[]).await;
    let (status, body) = post(
        &second.http,
        &second.url(&format!("/jobs/{id}/restart")),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(body["attempt"], 2);
    second.stop().await;
    let app = spawn_app_on(&db, &[]).await;
    let done = app.wait_status(&id, "completed").await;
    assert_eq!(done["attempt"], 2);
    assert!(done["failureReason"].is_null());
    // Each participant holds two reservations: the first attempt's released (a's canceled, b's
    // never made), the second's confirmed once.
    for name in ["again-a", "again-b"] {
        let mut states: Vec<(ResState, u32)> = p
            .reservations(name)
            .iter()
            .map(|r| (r.state, r.confirms_applied))
            .collect();
        states.sort_by_key(|s| s.1);
        let want = if name == "again-a" {
            vec![(ResState::Canceled, 0), (ResState::Confirmed, 1)]
        } else {
            vec![(ResState::Confirmed, 1)]
        };
        assert_eq!(states, want, "{name}");
    }
    // The second attempt is a new request for the participants.
    let ids = |name: &str| -> BTreeSet<String> {
        p.received(Op::Try, name)
            .iter()
            .filter_map(|r| r.request_id.clone())
            .collect()
    };
    assert_eq!(ids("again-a"), BTreeSet::from(["a".into(), "a/2".into()]));
    assert_eq!(ids("again-b"), BTreeSet::from(["b".into(), "b/2".into()]));
    // Both attempts are in the log, in order.
    let log = events(&app.http, &app.addr, &id).await;
    let statuses: Vec<&str> = log.iter().filter_map(|e| e["jobStatus"].as_str()).collect();
    let failed_at = statuses
        .iter()
        .position(|s| *s == "failed")
        .expect("failed");
    let completed_at = statuses
        .iter()
        .position(|s| *s == "completed")
        .expect("completed");
    assert!(failed_at < completed_at, "{statuses:?}");
    assert!(
        log.iter()
            .any(|e| e["action"] == "restart" && e["actor"] == "anonymous")
    );
    assert!(
        log.iter()
            .any(|e| e["op"] == "try" && e["taskID"] == "b" && e["httpStatus"] == 400),
        "the first attempt's failure stays visible"
    );
}

// ---- the hypermedia table ----

const ACTIONS: [&str; 6] = [
    "confirm",
    "cancel",
    "participants",
    "continue",
    "resolve",
    "restart",
];

fn advertised(job: &Value) -> BTreeSet<String> {
    ACTIONS
        .iter()
        .filter(|a| job["_links"][**a].is_object())
        .map(|a| a.to_string())
        .collect()
}

fn body_for(action: &str) -> Option<Value> {
    match action {
        "resolve" => Some(json!({"note": "fixed by hand"})),
        "participants" => Some(json!({
            "uri": "http://127.0.0.1:9/late",
            "expires": tcc_coordinator::domain::rfc3339(chrono::Utc::now() + chrono::Duration::seconds(120)),
        })),
        _ => None,
    }
}

/// A job brought to `status`; returns its id once there (and, for `confirming`, once a confirm
/// waits for its backoff).
async fn job_in(app: &TestApp, p: &Participant, status: &str, n: usize) -> String {
    let name = |t: &str| format!("table-{status}-{n}-{t}");
    let two = job_of(&[("a", p.url(&name("a"))), ("b", p.url(&name("b")))]);
    let held = |mut doc: Value| {
        doc["autoConfirm"] = json!(false);
        doc["jobMaxTTL"] = json!(120);
        doc
    };
    let id = match status {
        "pending" => {
            app.submit(&json!({"autoConfirm": false, "tasks": []}))
                .await
        }
        "trying" => {
            p.set_default(Op::Try, &name("b"), Reply::Stall);
            app.submit(&held(two)).await
        }
        "reserved" => app.submit(&held(two)).await,
        "confirming" => {
            p.script(
                Op::Confirm,
                &name("b"),
                vec![Reply::StatusRetryAfter(503, 300)],
            );
            let mut doc = two;
            doc["retryPolicy"] = json!({"maxDelay": 300});
            app.submit(&doc).await
        }
        "canceling" | "canceled" => {
            if status == "canceling" {
                p.set_default(Op::Cancel, &name("b"), Reply::Stall);
            }
            let id = app.submit(&held(two)).await;
            app.wait_status(&id, "reserved").await;
            assert_eq!(app.post(&format!("/jobs/{id}/cancel")).await.status(), 202);
            id
        }
        "completed" => app.submit(&two).await,
        "failed" => {
            p.set_default(Op::Try, &name("b"), Reply::Status(400));
            app.submit(&two).await
        }
        "heuristic" => {
            p.set_default(Op::Confirm, &name("b"), Reply::Status(403));
            app.submit(&two).await
        }
        other => panic!("no recipe for {other}"),
    };
    app.wait_status(&id, status).await;
    if status == "confirming" {
        let ok = eventually(|| async {
            task(&app.get_job(&id).await, "b")["lastMessage"]
                .as_str()
                .is_some_and(|m| m.contains("503"))
        })
        .await;
        assert!(ok, "b's confirm never waited for a retry");
    }
    id
}

#[tokio::test]
async fn every_status_offers_exactly_its_actions_and_refuses_the_others_saying_why() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let table: [(&str, &[&str]); 9] = [
        ("pending", &["cancel", "participants"]),
        ("trying", &["confirm", "cancel", "participants"]),
        ("reserved", &["confirm", "cancel", "participants"]),
        ("confirming", &["continue"]),
        ("canceling", &[]),
        ("completed", &[]),
        ("failed", &["restart"]),
        ("canceled", &["restart"]),
        ("heuristic", &["continue", "resolve"]),
    ];
    for (status, offered) in table {
        let id = job_in(&app, &p, status, 0).await;
        let job = app.get_job(&id).await;
        let want: BTreeSet<String> = offered.iter().map(|s| s.to_string()).collect();
        assert_eq!(advertised(&job), want, "{status}: {:#}", job["_links"]);
        // The same relations as Link headers.
        let resp = app.get(&format!("/jobs/{id}")).await;
        let link = header_text(&resp, "link");
        for a in ACTIONS {
            assert_eq!(
                link.contains(&format!("rel=\"{a}\"")),
                want.contains(a),
                "{status}: Link header {link}"
            );
        }
        // Not offered: 409 with a reason. A confirm of a confirming or completed job and a cancel
        // of a canceling or canceled one are the contract's repeats of a decision already taken:
        // they answer how it stands (202 or 200), not a conflict.
        for a in ACTIONS.iter().filter(|a| !want.contains(**a)) {
            let repeat = matches!(
                (status, *a),
                ("confirming" | "completed", "confirm") | ("canceling" | "canceled", "cancel")
            );
            let (code, problem) =
                post(&app.http, &app.url(&format!("/jobs/{id}/{a}")), body_for(a)).await;
            if repeat {
                assert!((200..300).contains(&code), "{status} {a}: {problem:#}");
                continue;
            }
            assert_eq!(code, 409, "{status} {a}: {problem:#}");
            assert!(
                problem["detail"].as_str().is_some_and(|d| d.len() > 10),
                "{status} {a}: says why: {problem:#}"
            );
        }
        // Offered: following each works (each on a job of its own in this status).
        for (n, a) in offered.iter().enumerate() {
            let fresh = if n == 0 {
                id.clone()
            } else {
                job_in(&app, &p, status, n).await
            };
            let href = app.get_job(&fresh).await["_links"][*a]["href"]
                .as_str()
                .expect("href")
                .to_string();
            let (code, body) = post(&app.http, &href, body_for(a)).await;
            assert!(
                (200..300).contains(&code),
                "{status}: following {a} answered {code}: {body:#}"
            );
        }
    }
}

#[tokio::test]
async fn every_resource_answers_options_with_allow_and_the_entry_point_reaches_them_by_links() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut doc = job_of(&[("a", p.url("opt-a"))]);
    doc["autoConfirm"] = json!(false);
    let id = app.submit(&doc).await;
    app.wait_status(&id, "reserved").await;
    // From the entry point to the job list, to the job, to each of its resources, by links alone.
    let root = get_json(&app.http, &app.url("/")).await;
    let jobs_href = root["_links"]["jobs"]["href"]
        .as_str()
        .or_else(|| root["_links"]["collection"]["href"].as_str())
        .expect("the entry point links to the jobs")
        .to_string();
    let list = get_json(&app.http, &jobs_href).await;
    let job_href = list["jobs"][0]["_links"]["self"]["href"]
        .as_str()
        .expect("a job's link")
        .to_string();
    let job = get_json(&app.http, &job_href).await;
    assert_eq!(job["jobID"], id.as_str());
    for rel in ["progress", "shared-state", "tasks", "events", "collection"] {
        let href = job["_links"][rel]["href"].as_str().expect(rel);
        get_json(&app.http, href).await;
    }
    assert!(root["_links"]["heuristics"].is_object(), "{root:#}");
    // OPTIONS everywhere, with Allow.
    for (path, must) in [
        ("/".to_string(), "GET"),
        ("/jobs".to_string(), "POST"),
        (format!("/jobs/{id}"), "DELETE"),
        (format!("/jobs/{id}/events"), "GET"),
        (format!("/jobs/{id}/continue"), "POST"),
        (format!("/jobs/{id}/restart"), "POST"),
        (format!("/jobs/{id}/resolve"), "POST"),
        (format!("/jobs/{id}/tasks/a"), "GET"),
        ("/heuristics".to_string(), "GET"),
    ] {
        let resp = app
            .http
            .request(reqwest::Method::OPTIONS, app.url(&path))
            .send()
            .await
            .expect("OPTIONS");
        let allow = header_text(&resp, "allow");
        assert!(
            resp.status().is_success(),
            "OPTIONS {path}: {}",
            resp.status()
        );
        assert!(allow.contains(must), "OPTIONS {path}: Allow {allow:?}");
    }
}

/// A 202 shows the job with the request recorded: it never offers the action just taken, nor
/// its opposite, nor (after a cancel) a registration.
#[tokio::test]
async fn an_accepted_request_is_not_offered_again_nor_its_opposite() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    for (action, path, gone) in [
        (
            "cancel",
            "",
            &["cancel", "confirm", "participants"] as &[&str],
        ),
        ("confirm", "/confirm", &["confirm", "cancel"]),
    ] {
        let name = format!("asked-{action}");
        let job =
            json!({"autoConfirm": false, "tasks": [{"taskID": "a", "taskURL": p.url(&name)}]});
        let id = app.submit(&job).await;
        app.wait_status(&id, "reserved").await;
        let url = app.url(&format!("/jobs/{id}{path}"));
        let r = if action == "cancel" {
            app.http.delete(&url).send().await
        } else {
            app.http.post(&url).send().await
        }
        .expect("the request");
        assert_eq!(r.status(), 202, "{action}");
        let link_header = header_text(&r, "link");
        let body: Value = r.json().await.expect("the job");
        for rel in gone {
            assert!(
                body["_links"][*rel].is_null(),
                "{action}: {rel} still offered: {:#}",
                body["_links"]
            );
            assert!(
                !link_header.contains(&format!("rel=\"{rel}\"")),
                "{action}: {link_header}"
            );
        }
    }
}
