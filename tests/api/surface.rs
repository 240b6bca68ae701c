//! The API around the jobs: entry point, listing, conditional requests, long polls, methods,
//! health and metrics.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{header_opt, header_text, job_of, scrape, spawn_app};
use crate::participant::Participant;

#[tokio::test]
async fn the_entry_point_links_the_jobs_health_answers_200_and_a_completed_job_is_counted() {
    let app = spawn_app().await;
    let root: Value = app.get("/").await.json().await.expect("json");
    assert!(
        root["_links"]["jobs"]["href"]
            .as_str()
            .is_some_and(|h| h.ends_with("/jobs"))
    );
    for path in ["/health/live", "/health/ready"] {
        let r = app.http.get(app.url(path)).send().await.expect("health");
        assert_eq!(r.status(), 200, "{path}");
    }
    let p = Participant::start().await;
    let id = app.submit(&job_of(&[("a", p.url("a"))])).await;
    app.wait_status(&id, "completed").await;
    let s = scrape(&app.http, &app.addr).await;
    let participant = p.url("a");
    let participant = participant
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let text = &s.text;
    assert!(
        s.value("tcc_jobs_created_total", &[("source", "jcl")])
            .is_some(),
        "{text}"
    );
    assert!(
        s.value("tcc_jobs_finished_total", &[("status", "completed")])
            .is_some(),
        "{text}"
    );
    let confirms = [
        ("op", "confirm"),
        ("outcome", "success"),
        ("participant", participant),
    ];
    assert_eq!(
        s.value("tcc_participant_calls_total", &confirms),
        Some(1.0),
        "{text}"
    );
    for name in [
        "tcc_participant_call_duration_seconds_bucket",
        "tcc_http_requests_total",
        "tcc_build_info",
    ] {
        assert!(
            s.series(name).next().is_some(),
            "metrics lack {name}:\n{text}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_list_pages_newest_first_through_every_job_and_filters_by_the_query() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = json!({
            "autoConfirm": false, "tasks": [],
            "correlationID": format!("order-{}", i % 2),
            "tags": [if i < 3 { "early" } else { "late" }],
        });
        ids.push(app.submit(&job).await);
    }
    let page: Value = app.get("/jobs?limit=2").await.json().await.expect("json");
    let first: Vec<&str> = page["jobs"]
        .as_array()
        .map(|js| js.iter().filter_map(|j| j["jobID"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        first,
        vec![ids[4].as_str(), ids[3].as_str()],
        "newest first"
    );
    // Follow the next links to the end: every job once.
    let mut seen: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let mut next = page["_links"]["next"]["href"].as_str().map(str::to_string);
    while let Some(url) = next {
        let resp = app.http.get(&url).send().await.expect("next");
        assert!(resp.headers().get("link").is_some());
        let page: Value = resp.json().await.expect("json");
        for j in page["jobs"].as_array().into_iter().flatten() {
            seen.push(j["jobID"].as_str().unwrap_or_default().to_string());
        }
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, expected);
    let count = |q: &'static str| app.count_jobs(q);
    assert_eq!(count("correlationID=order-0").await, 3);
    assert_eq!(count("tag=late").await, 2);
    assert_eq!(count("status=pending&status=completed").await, 5);
    assert_eq!(count("status=completed").await, 0);
    assert_eq!(count("createdAfter=2999-01-01T00:00:00Z").await, 0);
    let bad = app.get("/jobs?status=done").await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn an_unchanged_job_answers_304_and_a_progress_long_poll_returns_as_soon_as_it_changes() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a"))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;

    let url = app.url(&format!("/jobs/{id}"));
    let resp = app.http.get(&url).send().await.expect("get");
    let etag = header_opt(&resp, "etag").expect("etag");
    let again = app
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(again.status(), 304);

    let progress_url = app.url(&format!("/jobs/{id}/progress"));
    let progress = app.http.get(&progress_url).send().await.expect("progress");
    let petag = header_opt(&progress, "etag").expect("etag");
    let body: Value = progress.json().await.expect("json");
    assert_eq!(body["jobStatus"], "reserved");
    assert_eq!(body["percentComplete"], 50);

    // A long poll returns as soon as the job changes.
    let poll = {
        let http = app.http.clone();
        let progress_url = progress_url.clone();
        let petag = petag.clone();
        tokio::spawn(async move {
            http.get(&progress_url)
                .header("if-none-match", &petag)
                .header("prefer", "wait=60")
                .send()
                .await
                .expect("long poll")
        })
    };
    let confirm = app.post(&format!("/jobs/{id}/confirm")).await;
    assert_eq!(confirm.status(), 202);
    let changed = tokio::time::timeout(Duration::from_secs(60), poll)
        .await
        .expect("the long poll answered")
        .expect("task");
    assert_eq!(changed.status(), 200);
    let body: Value = changed.json().await.expect("json");
    assert_ne!(body["jobStatus"], "reserved");

    // Nothing changes any more: a short long poll ends in 304.
    app.wait_status(&id, "completed").await;
    let final_progress = app.http.get(&progress_url).send().await.expect("progress");
    let fetag = header_opt(&final_progress, "etag").expect("etag");
    let unchanged = app
        .http
        .get(&progress_url)
        .header("if-none-match", &fetag)
        .header("prefer", "wait=1")
        .send()
        .await
        .expect("poll");
    assert_eq!(unchanged.status(), 304);
    app.stop().await;
}

#[tokio::test]
async fn head_options_and_links_describe_a_job_and_a_wrong_method_or_path_is_a_problem() {
    let app = spawn_app().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let url = app.url(&format!("/jobs/{id}"));
    let head = app.http.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    assert!(head.headers().get("etag").is_some());
    let options = app
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .expect("OPTIONS");
    let allow = header_text(&options, "allow");
    assert!(allow.contains("GET") && allow.contains("DELETE"), "{allow}");

    let job = app.get_job(&id).await;
    for rel in [
        "self",
        "collection",
        "progress",
        "tasks",
        "events",
        "cancel",
        "participants",
    ] {
        assert!(job["_links"][rel]["href"].as_str().is_some(), "link {rel}");
    }
    // An open job with no task yet cannot be confirmed: not offered.
    assert!(job["_links"]["confirm"].is_null(), "{:#}", job["_links"]);
    let resp = app.http.get(&url).send().await.expect("get");
    let link = header_text(&resp, "link");
    assert!(link.contains("rel=\"progress\""), "{link}");

    let put = app.http.put(app.url("/jobs")).send().await.expect("PUT");
    assert_eq!(put.status(), 405);
    assert!(put.headers().get("allow").is_some());
    assert_eq!(
        header_opt(&put, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let missing = app.http.get(app.url("/nowhere")).send().await.expect("get");
    assert_eq!(missing.status(), 404);
    let problem: Value = missing.json().await.expect("problem");
    assert_eq!(problem["instance"], "/nowhere");
    app.stop().await;
}

/// A process just started exports every counter of the contract whose labels it knows, at 0, so
/// that `increase()` and alerts work before the first event.
#[tokio::test]
async fn a_fresh_process_exports_the_counters_at_zero() {
    let db = crate::helpers::fresh_database().await;
    let process = crate::helpers::start_process(&db, "metrics-at-zero");
    let http = reqwest::Client::new();
    process.wait_ready(&http).await;
    let s = scrape(&http, &process.addr).await;
    let at_zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            s.value(name, labels),
            Some(0.0),
            "{name}{labels:?} is not exported at 0:\n{}",
            s.text
        );
    };
    at_zero("tcc_heuristic_jobs_total", &[]);
    at_zero("tcc_engine_lease_lost_total", &[]);
    for source in ["jcl", "atomikos"] {
        at_zero("tcc_jobs_created_total", &[("source", source)]);
    }
    for status in ["completed", "failed", "canceled", "heuristic"] {
        at_zero("tcc_jobs_finished_total", &[("status", status)]);
    }
    for channel in ["callback", "webhook", "email"] {
        for outcome in ["delivered", "retry", "failed"] {
            at_zero(
                "tcc_notifications_total",
                &[("channel", channel), ("outcome", outcome)],
            );
        }
    }
    for kind in ["panic", "illegal", "store"] {
        at_zero("tcc_engine_driver_failures_total", &[("kind", kind)]);
    }
    for reason in ["overloaded", "timeout"] {
        at_zero("tcc_api_rejected_total", &[("reason", reason)]);
    }
}

/// Every problem's `type` resolves to a page that says what it means; an unknown one is 404.
#[tokio::test]
async fn problem_types_resolve_to_pages() {
    let app = spawn_app().await;
    let resp = app.get("/jobs/no-such-job").await;
    assert_eq!(resp.status(), 404);
    let problem: serde_json::Value = resp.json().await.expect("a problem");
    let ty = problem["type"].as_str().expect("a type").to_string();
    assert_eq!(ty, "/problems/not-found");
    let page = app.get(&ty).await;
    assert_eq!(page.status(), 200);
    assert!(
        header_text(&page, "content-type").starts_with("text/html"),
        "{:?}",
        page.headers()
    );
    let html = page.text().await.expect("the page");
    assert!(html.contains("<h1>Not found</h1>"), "{html}");
    assert_eq!(app.get("/problems/no-such-problem").await.status(), 404);
}
