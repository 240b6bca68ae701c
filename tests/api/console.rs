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
    let (ctype, vary) = (header_text(&r, "content-type"), header_text(&r, "vary"));
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

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A job held `reserved` (not confirmed automatically) by a participant's one task.
async fn reserved_job(app: &TestApp, p: &Participant, name: &str) -> String {
    let mut job = job_of(&[("seat", p.url(name))]);
    job["autoConfirm"] = json!(false);
    let id = app.submit(&job).await;
    app.wait_status(&id, "reserved").await;
    id
}

#[tokio::test]
async fn a_form_is_taken_as_the_api_takes_it_and_a_cross_site_one_is_refused() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let id = reserved_job(&app, &p, "form").await;
    let http = no_redirects();
    let cancel = |extra: &[(&'static str, &'static str)], body: &'static str| {
        let mut req = http
            .post(app.url(&format!("/jobs/{id}/cancel")))
            .header("accept", BROWSER)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send()
    };
    // The box not ticked: nothing done, the page says why.
    let r = cancel(&[("sec-fetch-site", "same-origin")], "")
        .await
        .expect("POST");
    assert_eq!(r.status(), 422);
    let page = r.text().await.expect("page");
    assert!(page.contains("nothing was done"), "{page}");
    // Another site's page: refused, whatever it carries.
    for cross in [
        [
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        [("origin", "http://evil.example"), ("x-none", "")],
    ] {
        let r = cancel(&cross, "confirmed=yes").await.expect("POST");
        assert_eq!(r.status(), 403, "{cross:?}");
        assert!(r.text().await.expect("page").contains("another site"));
    }
    app.wait_status(&id, "reserved").await;
    // The console's own form: taken, and back to the job.
    let r = cancel(&[("sec-fetch-site", "same-origin")], "confirmed=yes")
        .await
        .expect("POST");
    assert_eq!(r.status(), 303);
    assert_eq!(
        header_opt(&r, "location"),
        Some(app.url(&format!("/jobs/{id}")))
    );
    app.wait_status(&id, "canceled").await;
    assert!(
        p.released("form"),
        "the participant's reservation was canceled"
    );
    // Refused by the job's state: the job's page, with the problem's status and detail.
    let r = cancel(&[("sec-fetch-site", "same-origin")], "confirmed=yes")
        .await
        .expect("POST");
    assert_eq!(
        r.status(),
        303,
        "a cancel of a canceled job is taken, as the API takes it (200)"
    );
    let confirm = http
        .post(app.url(&format!("/jobs/{id}/confirm")))
        .header("accept", BROWSER)
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .expect("POST");
    assert_eq!(confirm.status(), 409);
    let page = confirm.text().await.expect("page");
    assert!(page.contains("class=\"refused\""), "{page}");
    assert!(
        page.contains("can no longer be confirmed") || page.contains("nothing was confirmed"),
        "{page}"
    );
}

#[tokio::test]
async fn pages_ask_a_browser_for_the_keys_name_and_secret() {
    const OPS: &str = "ops-console-secret-01";
    const READER: &str = "reader-console-secret";
    let keys = format!("ops:admin:{OPS},reader:read:{READER}");
    let app = spawn_app_with(&["--api-keys", &keys]).await;
    let http = no_redirects();
    let get = |user: Option<(&'static str, &'static str)>| {
        let mut req = http.get(app.url("/jobs")).header("accept", BROWSER);
        if let Some((name, secret)) = user {
            req = req.basic_auth(name, Some(secret));
        }
        req.send()
    };
    let r = get(None).await.expect("GET");
    assert_eq!(r.status(), 401);
    let challenge = header_text(&r, "www-authenticate");
    assert!(challenge.starts_with("Basic "), "{challenge}");
    assert!(
        header_text(&r, "content-type").starts_with("text/html"),
        "a browser's 401 is a page"
    );
    // An API client is still asked for a Bearer key.
    let r = app.get("/jobs").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header_text(&r, "www-authenticate"),
        "Bearer realm=\"tcc-coordinator\""
    );
    // The right name and secret; a secret under another key's name is not taken.
    assert_eq!(
        get(Some(("reader", READER))).await.expect("GET").status(),
        200
    );
    assert_eq!(get(Some(("ops", READER))).await.expect("GET").status(), 401);
    assert_eq!(get(Some(("reader", OPS))).await.expect("GET").status(), 401);
    // The roles are the API's: a reader's form is refused, naming the role needed.
    let r = http
        .post(app.url("/jobs/any/confirm"))
        .header("accept", BROWSER)
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth("reader", Some(READER))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("page").contains("submit role"));
}

#[tokio::test]
async fn text_from_jobs_is_escaped_on_the_list_and_the_heuristics_page() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = crate::operator::heuristic_job_document(&p, "esc");
    job["correlationID"] = json!("<b>x</b>");
    job["description"] = json!("<script>alert('list')</script>");
    let id = app.submit(&job).await;
    app.wait_status(&id, "heuristic").await;
    for path in ["/jobs", "/heuristics", "/"] {
        let (_, _, page) = get_with(&app, path, Some(BROWSER)).await;
        assert!(page.contains(&id), "{path}: {page}");
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        assert!(!page.contains("<b>x</b>"), "{path}: {page}");
        assert!(page.contains("&#60;script&#62;alert"), "{path}: {page}");
    }
}

/// Every page (a problem's too) carries a Content-Security-Policy that allows nothing inline and
/// nothing from another origin; its stylesheet and script are files of their own, served without
/// a key, revalidated by ETag. (That the pages work under the policy, the browser test shows.)
#[tokio::test]
async fn pages_allow_nothing_inline_and_load_their_own_files() {
    let keys = "ops:admin:s3cret-ops";
    let app = spawn_app_with(&["--api-keys", keys]).await;
    let made: Value = app
        .http
        .post(app.url("/jobs"))
        .bearer_auth("s3cret-ops")
        .json(&json!({"autoConfirm": false, "tasks": []}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let id = made["jobID"].as_str().expect("jobID");
    for (path, status) in [(format!("/jobs/{id}"), 200), ("/jobs/none".into(), 404)] {
        let r = app
            .http
            .get(app.url(&path))
            .header("accept", BROWSER)
            .basic_auth("ops", Some("s3cret-ops"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), status, "{path}");
        let csp = header_text(&r, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp:?}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let page = r.text().await.expect("page");
        assert!(!page.contains("<style"), "{path}: inline style");
        assert!(!page.contains("<script>"), "{path}: inline script:\n{page}");
        assert!(page.contains("/console/style.css"), "{path}");
    }
    // The files need no key, and are revalidated.
    for (file, kind, text) in [
        ("style.css", "text/css", "font:"),
        ("live.js", "text/javascript", "EventSource"),
    ] {
        let r = app.get(&format!("/console/{file}")).await;
        assert_eq!(r.status(), 200, "{file}");
        let header = |n: &str| header_text(&r, n);
        assert!(header("content-type").starts_with(kind), "{file}");
        assert_eq!(header("cache-control"), "no-cache", "{file}");
        let etag = header("etag");
        assert!(r.text().await.expect("text").contains(text), "{file}");
        let again = app
            .http
            .get(app.url(&format!("/console/{file}")))
            .header("if-none-match", &etag)
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status(), 304, "{file} revalidated with {etag}");
    }
    // Only the console's own files: not a path out of it, not another name.
    for path in ["/console/%2e%2e%2fCargo.toml", "/console/app.js"] {
        let missing = app.get(path).await;
        assert_eq!(missing.status(), 404, "{path}");
        let problem: Value = missing.json().await.expect("problem");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("style.css and live.js")),
            "{path}: {problem}"
        );
    }
}
