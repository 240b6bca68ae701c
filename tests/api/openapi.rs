//! `GET /openapi.json`: an OpenAPI 3.1 description that matches the routes the coordinator
//! answers, and schemathesis (PyPI) run against a live coordinator with it.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[tokio::test]
async fn the_description_is_openapi_3_1_and_names_exactly_the_methods_each_route_answers() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.addr))
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "JobRequest",
        "JobRepr",
        "Problem",
        "Registration",
        "TaskRepr",
    ] {
        assert!(schemas.contains_key(name), "schema {name} is described");
    }
    // Every $ref points at a schema the document holds.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').expect("a quoted ref")];
        assert!(schemas.contains_key(name), "$ref {name} resolves");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["basic"]["scheme"], "basic");

    // A job to fill the path templates with.
    let id = submit_to(
        &app.http,
        &app.addr,
        &json!({"autoConfirm": false, "tasks": [{"taskID": "t1", "taskURL": p.url("a")}]}),
    )
    .await;

    let paths = doc["paths"].as_object().expect("paths");
    for route in [
        "/",
        "/jobs",
        "/jobs/{jobID}",
        "/jobs/{jobID}/cancel",
        "/jobs/{jobID}/confirm",
        "/jobs/{jobID}/progress",
        "/jobs/{jobID}/tasks",
        "/jobs/{jobID}/tasks/{taskID}",
        "/jobs/{jobID}/participants",
        "/jobs/{jobID}/shared-state",
        "/jobs/{jobID}/resolve",
        "/jobs/{jobID}/continue",
        "/jobs/{jobID}/restart",
        "/jobs/{jobID}/events",
        "/heuristics",
        "/coordinator/confirm",
        "/coordinator/cancel",
        "/problems/{slug}",
        "/console/{asset}",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(route), "{route} is described");
    }
    for (route, item) in paths {
        let mut described: Vec<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        described.sort();
        let url = route
            .replace("{jobID}", &id)
            .replace("{taskID}", "t1")
            .replace("{slug}", "invalid-job")
            .replace("{asset}", "style.css");
        let resp = app
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{url}", app.addr))
            .send()
            .await
            .expect("OPTIONS");
        let allow =
            header_opt(&resp, "allow").unwrap_or_else(|| panic!("{route}: OPTIONS answers Allow"));
        let mut answered: Vec<String> = allow
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m != "HEAD" && m != "OPTIONS")
            .collect();
        answered.sort();
        assert_eq!(described, answered, "{route}: described methods = Allow");
        for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let op = &item[*m];
            let answers = op["responses"].as_object().expect("responses");
            for (status, answer) in answers {
                if status.starts_with(['4', '5']) {
                    assert!(
                        answer["content"]["application/problem+json"].is_object(),
                        "{m} {route} {status}: a problem body"
                    );
                }
            }
            let open = route.starts_with("/health/")
                || route.starts_with("/problems/")
                || route.starts_with("/console/")
                || route == "/metrics"
                || route == "/openapi.json";
            assert_eq!(
                op.get("security").is_some(),
                !open,
                "{m} {route}: a key is required exactly where the API asks for one"
            );
        }
    }

    // Links lead from a job just made to what can be done with it, its jobID from the answer.
    let operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| METHODS.iter().filter_map(|m| item.get(*m)))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    for (route, method, status) in [("/jobs", "post", "202"), ("/jobs/{jobID}", "put", "201")] {
        let links = paths[route][method]["responses"][status]["links"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {route} {status}: links"));
        for target in [
            "get_job",
            "confirm_job",
            "cancel_job",
            "events",
            "resolve_job",
        ] {
            assert_eq!(
                links[target]["parameters"]["jobID"], "$response.body#/jobID",
                "{method} {route} {status} → {target}"
            );
        }
        for (name, link) in links {
            let target = link["operationId"].as_str().unwrap_or_default();
            assert!(operation_ids.contains(&target), "{name}: {target} exists");
        }
    }
}

/// schemathesis generates requests from the description (examples, edge cases, fuzzing, and
/// stateful sequences through the links) and checks that nothing answers 5xx and every answer
/// conforms to the description: status, content type, headers and body schema.
#[tokio::test]
async fn schemathesis_finds_nothing_against_a_live_coordinator() {
    let Some(st) = tool(&["schemathesis", "st"], "PyPI's schemathesis") else {
        return;
    };
    // Waits (Prefer: wait, the Atomikos confirm) end within the request's time limit: well
    // within schemathesis's own (10 s).
    let app = spawn_app_with(&["--request-timeout", "4s"]).await;
    let url = format!("{}/openapi.json", app.addr);
    // schemathesis keeps a cache in its working directory: not in the repository.
    let workdir = std::env::temp_dir().join(format!(
        "tcc-schemathesis-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&workdir).expect("a directory for schemathesis");
    let config = workdir.join("schemathesis.toml");
    // A 5xx is a failure, but for the one the contract gives: the Atomikos confirm's "outcome
    // not known yet" (503) when a participant it must confirm cannot be reached in time, as a
    // generated link to an unreachable host never can.
    std::fs::write(
        &config,
        r#"[[operations]]
include-name = "PUT /coordinator/confirm"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"#,
    )
    .expect("write the schemathesis config");
    let dir = workdir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(&dir)
            .arg("--config-file")
            .arg(&config)
            .args([
                "run",
                &url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "40",
                // One worker: Python 3.11.7's ast.parse is not thread-safe ("AST constructor
                // recursion depth mismatch" inside hypothesis, now and then, with two), and one
                // is as fast here.
                "--workers",
                "1",
                "--seed",
                "1",
            ])
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("join");
    let _ = std::fs::remove_dir_all(&workdir);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{}",
        printed(&out)
    );
}

/// Found by schemathesis: a number near `f64::MAX` in a shared state (or any body) was stored,
/// and PostgreSQL wrote it back out in full digits that the JSON reader refuses, so that every
/// read of the job answered 500. Such numbers are refused at the door, naming where they are.
#[tokio::test]
async fn a_number_that_could_not_be_read_back_is_refused_and_the_job_stays_readable() {
    let app = spawn_app().await;
    let id = submit_to(
        &app.http,
        &app.addr,
        &json!({"autoConfirm": false, "tasks": []}),
    )
    .await;
    let state = format!("{}/jobs/{id}/shared-state", app.addr);
    let resp = app
        .http
        .put(&state)
        .header("content-type", "application/json")
        .body(r#"{"a": [1, {"b~/c": -1.7976931348623157e308}]}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 422);
    let problem: Value = resp.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["pointer"], "/a/1/b~0~1c");
    let resp = app
        .http
        .post(format!("{}/jobs", app.addr))
        .header("content-type", "application/json")
        .body(r#"{"autoConfirm": false, "sharedState": {"x": 1e308, "y": 1.5e308}}"#)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 422, "1.5e308 is beyond the limit");
    // Large but faithful numbers pass, and the job reads back.
    let resp = app
        .http
        .put(&state)
        .header("content-type", "application/json")
        .body(r#"{"x": 1e300, "y": -4.9e-324}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 200);
    for url in [format!("{}/jobs/{id}", app.addr), state] {
        let resp = app.http.get(&url).send().await.expect("GET");
        assert_eq!(resp.status(), 200, "{url} reads back");
    }
}

/// The same number in a participant's Try answer is kept as its text, so that the job stays
/// readable.
#[tokio::test]
async fn a_try_answer_with_such_a_number_keeps_it_as_text() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let expires = chrono::Utc::now() + chrono::Duration::minutes(5);
    let answer = json!({
        "participantLink": {"uri": p.url("elsewhere"), "expires": expires.to_rfc3339()},
        "n": "PLACEHOLDER",
    })
    .to_string()
    .replace("\"PLACEHOLDER\"", "-1.7976931348623157e308");
    p.script(Op::Try, "a", vec![Reply::StatusBody(200, answer)]);
    let id = submit_to(
        &app.http,
        &app.addr,
        &json!({"autoConfirm": false, "tasks": [{"taskID": "t1", "taskURL": p.url("a")}]}),
    )
    .await;
    let job = wait_for_status(&app.http, &app.addr, &id, "reserved").await;
    assert_eq!(
        job["tasks"][0]["tryResponse"]["n"],
        "-1.7976931348623157e+308"
    );
}

/// Found by schemathesis: the Atomikos endpoints answer 400 for any broken rule, this one too.
#[tokio::test]
async fn the_atomikos_endpoints_refuse_such_a_number_with_400() {
    let app = spawn_app().await;
    let resp = app
        .http
        .put(format!("{}/coordinator/confirm", app.addr))
        .header("content-type", "application/tcc+json")
        .body(r#"{"participantLinks": [{"uri": "http://a.example/x", "expires": "2999-01-01T00:00:00Z", "n": 1.7976931348623155e308}]}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["pointer"], "/participantLinks/0/n");
}

/// The entry point links the description (`service-desc`, RFC 8631), as it links everything.
#[tokio::test]
async fn the_entry_point_links_the_description() {
    let app = spawn_app().await;
    let root = get_json(&app.http, &app.url("/")).await;
    let href = root["_links"]["service-desc"]["href"]
        .as_str()
        .expect("a service-desc link")
        .to_string();
    let description = get_json(&app.http, &href).await;
    assert!(
        description["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{href}"
    );
}
