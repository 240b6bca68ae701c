//! Operator actions on heuristic outcomes: `GET /heuristics` and `POST /jobs/{id}/resolve`.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// A job whose task `a` confirms and `b` refuses its confirm: heuristic.
pub(crate) async fn heuristic_job(
    base: &str,
    http: &reqwest::Client,
    p: &Participant,
    corr: &str,
) -> String {
    submit_to(http, base, &heuristic_job_document(p, corr)).await
}

/// The document of `heuristic_job`.
pub(crate) fn heuristic_job_document(p: &Participant, corr: &str) -> Value {
    p.set_default(Op::Confirm, &format!("{corr}-b"), Reply::Status(403));
    let mut job = job_of(&[
        ("a", p.url(&format!("{corr}-a"))),
        ("b", p.url(&format!("{corr}-b"))),
    ]);
    job["correlationID"] = json!(corr);
    job
}

async fn resolve(http: &reqwest::Client, base: &str, id: &str, body: &str) -> reqwest::Response {
    http.post(format!("{base}/jobs/{id}/resolve"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("resolve")
}

fn listed(heuristics: &Value) -> Vec<String> {
    heuristics["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["jobID"].as_str().map(str::to_string))
        .collect()
}

/// Wait until the instance at `addr` reports `tcc_heuristic_unresolved` = `n` (its gauges are
/// read from the database every few seconds).
async fn wait_unresolved(http: &reqwest::Client, addr: &str, n: f64) {
    let what = format!("tcc_heuristic_unresolved {n}");
    scrape_until(http, addr, &what, |s| {
        s.value("tcc_heuristic_unresolved", &[]) == Some(n)
    })
    .await;
}

#[tokio::test]
async fn a_resolved_heuristic_leaves_the_list_and_the_gauge_on_every_instance() {
    // Real processes: each has its own metrics, so the gauge is this database's alone.
    let db = fresh_database().await;
    let one = start_process(&db, "operator-1");
    let two = start_process(&db, "operator-2");
    let http = reqwest::Client::new();
    one.wait_ready(&http).await;
    two.wait_ready(&http).await;
    let p = Participant::start().await;
    let first = heuristic_job(&one.addr, &http, &p, "h1").await;
    let done = wait_for_status(&http, &one.addr, &first, "heuristic").await;
    let second = heuristic_job(&one.addr, &http, &p, "h2").await;
    wait_for_status(&http, &one.addr, &second, "heuristic").await;

    // Oldest first, each task's outcome, the resolve action advertised.
    assert!(
        done["_links"]["resolve"]["href"].as_str().is_some(),
        "{done}"
    );
    assert_eq!(done["resolution"], Value::Null);
    let list = get_json(&http, &format!("{}/heuristics", two.addr)).await;
    assert_eq!(listed(&list), vec![first.clone(), second.clone()]);
    let tasks = list["jobs"][0]["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().any(|t| t["taskStatus"] == "confirmed"));
    assert!(tasks.iter().any(|t| t["participantLink"].is_string()));
    // Paging: one at a time, by the next link.
    let page = get_json(&http, &format!("{}/heuristics?limit=1", one.addr)).await;
    assert_eq!(listed(&page), vec![first.clone()]);
    let next = page["_links"]["next"]["href"]
        .as_str()
        .expect("next")
        .to_string();
    assert_eq!(listed(&get_json(&http, &next).await), vec![second.clone()]);

    for addr in [&one.addr, &two.addr] {
        wait_unresolved(&http, addr, 2.0).await;
    }

    // Resolved on the second instance.
    let note = "refunded the payment by hand, ticket OPS-1234";
    let r = resolve(&http, &two.addr, &first, &json!({"note": note}).to_string()).await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.expect("job");
    assert_eq!(job["resolution"]["note"], note);
    assert_eq!(job["resolution"]["resolvedBy"], "anonymous");
    assert!(job["resolution"]["resolvedAt"].as_str().is_some());
    assert!(
        job["_links"]["resolve"].is_null(),
        "no resolve action once resolved"
    );
    assert_eq!(job["jobStatus"], "heuristic");

    // The same note again is answered the same; another note is a conflict.
    let again = resolve(&http, &one.addr, &first, &json!({"note": note}).to_string()).await;
    assert_eq!(again.status(), 200);
    let other = resolve(&http, &one.addr, &first, r#"{"note": "something else"}"#).await;
    assert_eq!(other.status(), 409);
    let problem: Value = other.json().await.expect("problem");
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains(note)),
        "{problem}"
    );

    for addr in [&one.addr, &two.addr] {
        assert_eq!(
            listed(&get_json(&http, &format!("{addr}/heuristics")).await),
            vec![second.clone()]
        );
        wait_unresolved(&http, addr, 1.0).await;
    }
    let shown = get_json(&http, &format!("{}/jobs/{first}", one.addr)).await;
    assert_eq!(shown["resolution"]["note"], note);
}

#[tokio::test]
async fn resolve_needs_a_note_and_a_heuristic_job() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = heuristic_job(&app.addr, &app.http, &p, "n1").await;
    app.wait_status(&id, "heuristic").await;
    for (body, detail) in [
        ("{}", "is required"),
        (r#"{"note": ""}"#, "empty"),
        (r#"{"note": "   "}"#, "empty"),
        (r#"{"note": 7}"#, "must be a string"),
    ] {
        let r = resolve(&app.http, &app.addr, &id, body).await;
        assert_eq!(r.status(), 422, "{body}");
        let problem: Value = r.json().await.expect("problem");
        assert_eq!(problem["errors"][0]["pointer"], "/note", "{body}");
        assert!(
            problem["errors"][0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains(detail)),
            "{body}: {problem}"
        );
    }
    let long = json!({"note": "x".repeat(5000)}).to_string();
    assert_eq!(
        resolve(&app.http, &app.addr, &id, &long).await.status(),
        422
    );
    assert_eq!(
        get_json(&app.http, &app.url("/heuristics")).await["jobs"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "still unresolved"
    );

    // A completed job has nothing to resolve, and says so.
    let ok = app.submit(&job_of(&[("a", p.url("fine"))])).await;
    app.wait_status(&ok, "completed").await;
    let r = resolve(&app.http, &app.addr, &ok, r#"{"note": "nothing"}"#).await;
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("completed") && d.contains("only a heuristic job")),
        "{problem}"
    );
    let done = app.get_job(&ok).await;
    assert!(done["_links"]["resolve"].is_null());
    let r = resolve(&app.http, &app.addr, "no-such-job", r#"{"note": "x"}"#).await;
    assert_eq!(r.status(), 404);
    app.stop().await;
}
