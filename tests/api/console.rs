//! The web console: the same resources as HTML by content negotiation. Browsers get pages;
//! `*/*`, no `Accept` and `application/json` get JSON; every negotiated answer says
//! `Vary: Accept`; text from jobs is escaped.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::Participant;

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get_with(app: &TestApp, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut req = app.http.get(app.url(path));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.expect("GET");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (ctype, vary) = (header("content-type"), header("vary"));
    (ctype, vary, r.text().await.expect("body"))
}

#[tokio::test]
async fn a_job_is_json_for_clients_and_a_page_for_browsers() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = app.submit(&job_of(&[("seat", p.url("seat"))])).await;
    app.wait_status(&id, "completed").await;
    let path = format!("/jobs/{id}");
    for accept in [None, Some("*/*"), Some("application/json")] {
        let (ctype, vary, body) = get_with(&app, &path, accept).await;
        assert!(ctype.starts_with("application/json"), "{accept:?}: {ctype}");
        assert!(
            vary.to_ascii_lowercase().contains("accept"),
            "{accept:?}: {vary:?}"
        );
        let job: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(job["jobStatus"], "completed");
    }
    let (ctype, vary, page) = get_with(&app, &path, Some(BROWSER)).await;
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(vary.to_ascii_lowercase().contains("accept"), "{vary:?}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains(&id), "{page}");
    assert!(page.contains("status-completed"), "{page}");
    assert!(page.contains("<code>seat</code>"), "{page}");
    assert!(
        page.contains("value=\"100\""),
        "the progress bar is full: {page}"
    );
}

#[tokio::test]
async fn text_from_a_job_is_escaped_on_its_page() {
    let app = spawn_app().await;
    let job = json!({
        "autoConfirm": false,
        "tasks": [],
        "description": "<script>alert('description')</script>",
        "correlationID": "a&b\"<i>c</i>",
        "sharedState": {"note": "</pre><img src=x onerror=alert(1)>"},
    });
    let id = app.submit(&job).await;
    let (_, _, page) = get_with(&app, &format!("/jobs/{id}"), Some(BROWSER)).await;
    for raw in ["<script>alert", "<i>c</i>", "<img src=x"] {
        assert!(
            !page.contains(raw),
            "{raw} reached the page unescaped:\n{page}"
        );
    }
    // As entities (askama writes them numerically).
    assert!(page.contains("&#60;script&#62;alert"), "{page}");
    assert!(page.contains("a&#38;b&#34;&#60;i&#62;c"), "{page}");
    assert!(page.contains("&#60;img src=x"), "{page}");
}
