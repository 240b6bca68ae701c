//! Every bad input gets the right status and a problem body that names what is wrong, and
//! nothing is stored.

use serde_json::{Value, json};

use crate::helpers::{header_opt, header_text, spawn_app_with};

struct Case {
    name: &'static str,
    body: String,
    content_type: &'static str,
    status: u16,
    /// A JSON Pointer the problem must name, or text its detail must contain.
    names: &'static str,
}

fn case(name: &'static str, body: Value, status: u16, names: &'static str) -> Case {
    Case {
        name,
        body: body.to_string(),
        content_type: "application/json",
        status,
        names,
    }
}

#[tokio::test]
async fn bad_jobs_are_rejected_with_a_named_field_and_nothing_is_stored() {
    let app = spawn_app_with(&["--max-tasks", "3", "--max-body", "4KiB"]).await;
    let t = |url: &str| json!({"taskURL": url});
    let cases = vec![
        Case {
            name: "malformed JSON",
            body: "{\"tasks\": [".into(),
            content_type: "application/json",
            status: 400,
            names: "line 1",
        },
        Case {
            name: "wrong content type",
            body: "{}".into(),
            content_type: "text/plain",
            status: 415,
            names: "text/plain",
        },
        Case {
            name: "body too big",
            body: json!({"description": "x".repeat(5000), "tasks": [t("http://a/t")]}).to_string(),
            content_type: "application/json",
            status: 413,
            names: "limit",
        },
        case(
            "unknown field",
            json!({"jobMaxTtl": 5, "tasks": [t("http://a/t")]}),
            422,
            "/jobMaxTtl",
        ),
        case(
            "relative URL",
            json!({"tasks": [t("/relative/try")]}),
            422,
            "/tasks/0/taskURL",
        ),
        case(
            "negative TTL",
            json!({"jobMaxTTL": -5, "tasks": [t("http://a/t")]}),
            422,
            "/jobMaxTTL",
        ),
        case(
            "too many tasks",
            json!({"tasks": [t("http://a/1"), t("http://a/2"), t("http://a/3"), t("http://a/4")]}),
            422,
            "/tasks",
        ),
        case(
            "duplicate taskID",
            json!({"tasks": [{"taskID": "x", "taskURL": "http://a/1"}, {"taskID": "x", "taskURL": "http://a/2"}]}),
            422,
            "/tasks/1/taskID",
        ),
        case(
            "expired link",
            json!({"tasks": [{"participantLink": {"uri": "http://a/r/1", "expires": "2020-01-01T00:00:00Z"}}]}),
            422,
            "/tasks/0/participantLink/expires",
        ),
        case(
            "no task and autoConfirm",
            json!({"tasks": []}),
            422,
            "/autoConfirm",
        ),
        case("not an object", json!([1, 2]), 422, "JSON object"),
        // Limits, each named in the problem.
        Case {
            name: "JSON nested too deep",
            body: format!(
                "{{\"tasks\": [{{\"taskURL\": \"http://a/t\", \"body\": {}1{}}}]}}",
                "[".repeat(40),
                "]".repeat(40)
            ),
            content_type: "application/json",
            status: 400,
            names: "limit of JSON depth is 32",
        },
        case(
            "description too long",
            json!({"description": "d".repeat(2049), "tasks": [t("http://a/t")]}),
            422,
            "/description",
        ),
        case(
            "too many tags",
            json!({"tags": (0..21).map(|i| format!("t{i}")).collect::<Vec<_>>(), "tasks": [t("http://a/t")]}),
            422,
            "/tags",
        ),
        case(
            "a tag too long",
            json!({"tags": ["ok", "x".repeat(65)], "tasks": [t("http://a/t")]}),
            422,
            "/tags/1",
        ),
        case(
            "correlationID too long",
            json!({"correlationID": "c".repeat(129), "tasks": [t("http://a/t")]}),
            422,
            "/correlationID",
        ),
        case(
            "task description too long",
            json!({"tasks": [{"taskURL": "http://a/t", "taskDescription": "d".repeat(2049)}]}),
            422,
            "/tasks/0/taskDescription",
        ),
        case(
            "wrong type",
            json!({"autoConfirm": "yes", "tasks": [t("http://a/t")]}),
            422,
            "/autoConfirm",
        ),
        // PostgreSQL stores no NUL character: refused by name, not failed on writing.
        case(
            "NUL in a text",
            json!({"description": "a\u{0}b", "tasks": [t("http://a/t")]}),
            422,
            "/description",
        ),
        case(
            "NUL deep in a Try body",
            json!({"tasks": [{"taskURL": "http://a/t", "body": {"items": [{"name": "x\u{0}"}]}}]}),
            422,
            "/tasks/0/body/items/0/name",
        ),
        case(
            "NUL in a key of the shared state",
            json!({"sharedState": {"a/\u{0}": 1}, "tasks": [t("http://a/t")]}),
            422,
            "/sharedState/a~1\u{0}",
        ),
    ];
    for c in cases {
        let resp = app
            .http
            .post(app.url("/jobs"))
            .header("content-type", c.content_type)
            .body(c.body.clone())
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        let ctype = header_text(&resp, "content-type");
        let problem: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {problem:#}", c.name);
        assert_eq!(ctype, "application/problem+json", "{}", c.name);
        assert_eq!(problem["status"], c.status, "{}", c.name);
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("/problems/"))
        );
        assert_eq!(problem["instance"], "/jobs", "{}", c.name);
        let text = problem.to_string();
        let named = problem["errors"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["pointer"] == c.names))
            || problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(c.names));
        assert!(
            named,
            "{}: the problem must name {:?}: {text}",
            c.name, c.names
        );
    }
    assert_eq!(app.job_count().await, 0, "no rejected job was stored");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_registration_names_its_fields_and_stores_nothing_and_an_unknown_job_is_404() {
    let app = spawn_app_with(&[]).await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let url = app.url(&format!("/jobs/{id}/participants"));
    // A refused registration's status and the pointers its problem names.
    let refused = |body: Value| {
        let (http, url) = (app.http.clone(), url.clone());
        async move {
            let resp = http.post(&url).json(&body).send().await.expect("register");
            let status = resp.status();
            let problem: Value = resp.json().await.expect("problem");
            let pointers: Vec<String> = problem["errors"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .filter_map(|e| e["pointer"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (status, pointers)
        }
    };
    let (status, pointers) = refused(json!({"uri": "not a url", "expires": "soon"})).await;
    assert_eq!(status, 422);
    assert_eq!(pointers, vec!["/uri", "/expires"]);
    let (status, pointers) =
        refused(json!({"uri": "http://a/r/\u{0}", "expires": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(status, 422);
    assert_eq!(pointers, vec!["/uri"]);
    let job = app.get_job(&id).await;
    assert_eq!(
        job["tasks"].as_array().map(Vec::len),
        Some(0),
        "nothing stored"
    );

    let missing = app
        .http
        .post(app.url("/jobs/nope/participants"))
        .json(&json!({"uri": "http://a/r", "expires": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}))
        .send()
        .await
        .expect("register");
    assert_eq!(missing.status(), 404);
    for path in ["/jobs/nope", "/jobs/nope/progress", "/jobs/nope/tasks"] {
        let r = app.http.get(app.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 404, "{path}");
    }
    let confirm = app.post("/jobs/nope/confirm").await;
    assert_eq!(confirm.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn one_idempotency_key_makes_one_job_and_another_document_under_it_is_refused() {
    let app = spawn_app_with(&[]).await;
    let job = json!({"autoConfirm": false, "tags": ["t"], "tasks": []});
    let send = |body: Value, key: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/jobs"))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .expect("POST")
        }
    };
    let first = send(job.clone(), "k-1").await;
    assert_eq!(first.status(), 202);
    let location = header_opt(&first, "location");
    let first: Value = first.json().await.expect("json");
    // The same document (keys in another order) under the same key: the same job.
    let reordered: Value =
        serde_json::from_str(r#"{"tasks": [], "tags": ["t"], "autoConfirm": false}"#)
            .expect("json");
    let replay = send(reordered, "k-1").await;
    assert_eq!(replay.status(), 202);
    assert_eq!(header_opt(&replay, "location"), location);
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay["jobID"], first["jobID"]);
    // Another document under the same key.
    let other = send(
        json!({"autoConfirm": false, "tasks": [], "tags": ["u"]}),
        "k-1",
    )
    .await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(app.job_count().await, 1);
    // A new key makes a new job.
    assert_eq!(send(job, "k-2").await.status(), 202);
    assert_eq!(app.job_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_under_one_key_make_one_job() {
    // New jobs are written in batches: the same key twice in one batch, or in two batches at
    // once, must still make one job, and every answer names it.
    let app = spawn_app_with(&[]).await;
    let job = json!({"autoConfirm": false, "tasks": []});
    let sends = (0..24).map(|i| {
        let (app, job) = (&app, job.clone());
        async move {
            let key = if i % 2 == 0 { "shared" } else { "" };
            let mut req = app.http.post(app.url("/jobs")).json(&job);
            if !key.is_empty() {
                req = req.header("idempotency-key", key);
            }
            let resp = req.send().await.expect("POST");
            assert_eq!(resp.status(), 202);
            let body: Value = resp.json().await.expect("json");
            (key, body["jobID"].as_str().map(str::to_string))
        }
    });
    let answers = futures::future::join_all(sends).await;
    let shared: std::collections::HashSet<_> = answers
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(shared.len(), 1, "one job under the shared key: {answers:?}");
    // 12 without a key, one under the shared key.
    assert_eq!(app.job_count().await, 13);
    app.stop().await;
}

#[tokio::test]
async fn a_participant_answer_over_1_mib_fails_the_try_naming_the_limit() {
    use crate::helpers::{spawn_app, task};
    use crate::participant::{Op, Participant, Reply};
    let app = spawn_app().await;
    let p = Participant::start().await;
    let big = format!(
        "{{\"participantLink\": {{\"uri\": \"{}\"}}, \"pad\": \"{}\"}}",
        p.url("big"),
        "x".repeat(1_100_000)
    );
    p.set_default(Op::Try, "big", Reply::StatusBody(200, big));
    let id = app
        .submit(&crate::helpers::job_of(&[("t", p.url("big"))]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    let message = task(&done, "t")["lastMessage"].as_str().unwrap_or_default();
    assert!(message.contains("over 1 MiB"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn too_many_request_headers_are_refused() {
    let app = crate::helpers::spawn_app().await;
    let mut req = app.http.get(app.url("/jobs"));
    for i in 0..200 {
        req = req.header(format!("x-filler-{i}"), "v");
    }
    let status = match req.send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("the server must answer, not drop the connection: {e}"),
    };
    assert_eq!(status, 431);
    app.stop().await;
}
