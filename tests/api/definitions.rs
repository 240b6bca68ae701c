//! Job definitions (SPEC §14): versioned job templates, started by a POST, against real
//! participants and a real PostgreSQL.

use std::collections::{BTreeSet, HashMap};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::own_urls::Branches;
use crate::participant::{Op, Participant};

/// A definition name (or key) no other test uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `PUT /job-definitions/{name}`.
async fn put_definition(app: &TestApp, name: &str, doc: &Value) -> (u16, HeaderMap, Value) {
    let path = format!("/job-definitions/{name}");
    call(app, Method::PUT, &path, None, Some(doc)).await
}

/// `POST /job-definitions/{name}/jobs`.
async fn start(app: &TestApp, name: &str, body: &Value) -> (u16, HeaderMap, Value) {
    let path = format!("/job-definitions/{name}/jobs");
    call(app, Method::POST, &path, None, Some(body)).await
}

/// `POST /job-definitions/{name}/jobs` under an `Idempotency-Key`.
async fn start_keyed(app: &TestApp, name: &str, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/job-definitions/{name}/jobs")))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("POST start")
}

/// Start a job from definition `name`; it must be accepted (202, `Location` naming the job).
/// Returns the job's representation.
async fn start_job(app: &TestApp, name: &str, body: &Value) -> Value {
    let (status, headers, job) = start(app, name, body).await;
    assert_eq!(status, 202, "start of {name} not accepted: {job:#}");
    let id = job["jobID"].as_str().expect("jobID");
    let location = header_in(&headers, "location").unwrap_or_default();
    assert!(
        location.ends_with(&format!("/jobs/{id}")),
        "Location of job {id}: {location:?}"
    );
    job
}

fn id_of(job: &Value) -> String {
    job["jobID"].as_str().expect("jobID").to_string()
}

/// PUT `doc` as definition `name`, which must answer `status`; returns the answer's body.
async fn put_expecting(app: &TestApp, name: &str, doc: &Value, status: u16) -> Value {
    let (got, _, body) = put_definition(app, name, doc).await;
    assert_eq!(got, status, "PUT /job-definitions/{name}: {body:#}");
    body
}

/// The pointers of a problem's errors.
fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["pointer"].as_str().map(str::to_string))
        .collect()
}

/// Whether `pointers` holds `pointer`.
fn has(pointers: &[String], pointer: &str) -> bool {
    pointers.iter().any(|p| p == pointer)
}

/// A request that must be refused with 422; the pointers its problem names.
async fn refused(app: &TestApp, method: Method, path: &str, body: &Value) -> Vec<String> {
    let (status, _, problem) = call(app, method, path, None, Some(body)).await;
    assert_eq!(status, 422, "{path} with {body}: {problem:#}");
    pointers(&problem)
}

/// Assert that `body` links `rel` to an href ending with `ends`.
fn assert_link(body: &Value, rel: &str, ends: &str) {
    let href = body["_links"][rel]["href"].as_str().unwrap_or_default();
    assert!(
        href.ends_with(ends),
        "link {rel} should end with {ends}: {:#}",
        body["_links"]
    );
}

/// The ids of the jobs `GET /jobs?{query}` lists.
async fn listed_jobs(app: &TestApp, query: &str) -> BTreeSet<String> {
    let page = get_json(&app.http, &app.url(&format!("/jobs?limit=500&{query}"))).await;
    page["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["jobID"].as_str().map(str::to_string))
        .collect()
}

/// POST the job's `confirm` link: the client's commit decision, taken.
async fn confirm_by_link(app: &TestApp, job: &Value) {
    let href = job["_links"]["confirm"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("no confirm link: {job:#}"));
    let resp = app.http.post(href).send().await.expect("confirm");
    assert_eq!(resp.status(), 202, "confirm of {}", job["jobID"]);
}

#[tokio::test]
async fn a_changed_document_makes_a_new_version_and_the_same_one_again_does_not() {
    let app = spawn_app().await;
    let name = unique("stay");
    let path = format!("/job-definitions/{name}");
    let v1 = json!({
        "description": "a hotel stay",
        "autoConfirm": false,
        "sharedState": {"customer": 42},
        "tasks": [{"taskID": "room", "taskURL": "http://127.0.0.1:9/try/room"}],
    });
    let (status, headers, body) = put_definition(&app, &name, &v1).await;
    assert_eq!(status, 201, "{body:#}");
    let location = header_in(&headers, "location").unwrap_or_default();
    assert!(
        location.ends_with(&format!("{path}/versions/1")),
        "{location:?}"
    );
    assert_eq!(body["name"], name.as_str());
    assert_eq!(body["version"], 1, "{body:#}");
    assert_eq!(body["retired"], false, "{body:#}");
    assert_eq!(body["description"], "a hotel stay");

    // The same document, its keys in another order: no new version.
    let reordered = json!({
        "tasks": [{"taskURL": "http://127.0.0.1:9/try/room", "taskID": "room"}],
        "sharedState": {"customer": 42},
        "autoConfirm": false,
        "description": "a hotel stay",
    });
    let body = put_expecting(&app, &name, &reordered, 200).await;
    assert_eq!(body["version"], 1, "{body:#}");

    // Another document: version 2.
    let mut v2 = v1.clone();
    v2["description"] = json!("a longer hotel stay");
    v2["tags"] = json!(["v2"]);
    let (status, headers, body) = put_definition(&app, &name, &v2).await;
    assert_eq!(status, 201, "{body:#}");
    let location = header_in(&headers, "location").unwrap_or_default();
    assert!(
        location.ends_with(&format!("{path}/versions/2")),
        "{location:?}"
    );
    assert_eq!(body["version"], 2, "{body:#}");

    // The definition is its latest version, with its links.
    let latest = get_json(&app.http, &app.url(&path)).await;
    assert_eq!(latest["name"], name.as_str());
    assert_eq!(latest["version"], 2, "{latest:#}");
    assert_eq!(latest["retired"], false);
    assert_eq!(latest["description"], "a longer hotel stay");
    assert_eq!(latest["tags"], json!(["v2"]));
    assert_eq!(latest["sharedState"], json!({"customer": 42}));
    assert!(latest["dateCreated"].is_string(), "{latest:#}");
    assert!(latest["dateUpdated"].is_string(), "{latest:#}");
    assert!(
        latest["_links"]["self"]["href"]
            .as_str()
            .is_some_and(|h| h.contains(&path)),
        "{latest:#}"
    );
    assert_link(&latest, "collection", "/job-definitions");
    assert_link(&latest, "versions", &format!("{path}/versions"));
    assert_link(&latest, "jobs", &format!("/jobs?definition={name}"));
    assert_link(&latest, "start", &format!("{path}/jobs"));
    assert_eq!(latest["_links"]["start"]["method"], "POST", "{latest:#}");

    // Its versions, oldest first.
    let versions = get_json(&app.http, &app.url(&format!("{path}/versions"))).await;
    let listed: Vec<i64> = versions["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_i64())
        .collect();
    assert_eq!(listed, vec![1, 2], "{versions:#}");
    for v in versions["versions"].as_array().into_iter().flatten() {
        assert_link(v, "self", &format!("{path}/versions/{}", v["version"]));
        assert!(v["dateCreated"].is_string(), "{v:#}");
    }
    assert_link(&versions, "up", &path);

    // Version 1 as it was.
    let old = get_json(&app.http, &app.url(&format!("{path}/versions/1"))).await;
    assert_eq!(old["version"], 1, "{old:#}");
    assert_eq!(old["name"], name.as_str());
    assert_eq!(old["description"], "a hotel stay");
    assert!(old["tags"].is_null(), "version 1 had no tags: {old:#}");
    assert_eq!(old["tasks"][0]["taskURL"], "http://127.0.0.1:9/try/room");

    // What does not exist: 404.
    let (status, _, _) = call(&app, Method::GET, &format!("{path}/versions/3"), None, None).await;
    assert_eq!(status, 404, "an unknown version");
    let unknown = format!("/job-definitions/{}", unique("unknown"));
    let (status, _, _) = call(&app, Method::GET, &unknown, None, None).await;
    assert_eq!(status, 404, "an unknown definition");

    // A name no definition can have: 400, nothing stored.
    let too_long = "x".repeat(129);
    for bad in ["has%20space", too_long.as_str()] {
        let (status, _, problem) = put_definition(&app, bad, &v1).await;
        assert_eq!(status, 400, "{bad}: {problem:#}");
    }
    // The longest name, of every character allowed, is fine.
    let longest = format!("{}.A_z~0-{}", "n".repeat(89), uuid::Uuid::new_v4().simple());
    assert_eq!(longest.len(), 128);
    let body = put_expecting(&app, &longest, &v1, 201).await;
    assert_eq!(body["name"], longest.as_str());
    app.stop().await;
}

#[tokio::test]
async fn a_definitions_representation_put_back_is_the_same_document() {
    let app = spawn_app().await;
    let name = unique("round-trip");
    let path = format!("/job-definitions/{name}");
    let doc = json!({
        "description": "round trip",
        "correlationID": "defs-round-trip",
        "jobMaxTTL": 90,
        "autoConfirm": false,
        "tags": ["defs"],
        "contact": {"person": "Mook Maundy", "email": "mook@example.org"},
        "retryPolicy": {"maxAttempts": 2},
        "sharedState": {"customer": 7},
        "parameters": {
            "type": "object",
            "required": ["hotel"],
            "properties": {"hotel": {"type": "string"}, "nights": {"type": "integer", "default": 1}},
        },
        "tasks": [{
            "taskID": "room",
            "taskURL": "http://127.0.0.1:9/hotels/{hotel}/reserve{?nights}",
            "body": {"kind": "room"},
            "inputMapping": {"/customer": "/customer"},
            "taskMaxTTL": 5,
        }],
    });
    put_expecting(&app, &name, &doc, 201).await;

    // The latest version's representation, read-only members and all, PUT back: the same.
    let shown = get_json(&app.http, &app.url(&path)).await;
    let body = put_expecting(&app, &name, &shown, 200).await;
    assert_eq!(body["version"], 1, "{body:#}");
    // So is a version's representation.
    let version = get_json(&app.http, &app.url(&format!("{path}/versions/1"))).await;
    let body = put_expecting(&app, &name, &version, 200).await;
    assert_eq!(body["version"], 1, "{body:#}");

    // A representation naming another definition is refused.
    let mut renamed = shown.clone();
    renamed["name"] = json!(unique("another"));
    let named = refused(&app, Method::PUT, &path, &renamed).await;
    assert!(named.contains(&"/name".to_string()), "{named:?}");

    let versions = get_json(&app.http, &app.url(&format!("{path}/versions"))).await;
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(1),
        "no new version: {versions:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_started_from_a_version_keep_its_tasks_when_a_new_version_comes() {
    let app = spawn_app().await;
    let p1 = Participant::start().await;
    let p2 = Participant::start().await;
    let name = unique("versions");
    let mut v1 = job_of(&[("room", p1.url("room"))]);
    v1["autoConfirm"] = json!(false);
    v1["jobMaxTTL"] = json!(120);
    put_expecting(&app, &name, &v1, 201).await;

    let first = start_job(&app, &name, &json!({"parameters": {}})).await;
    assert_eq!(
        first["definition"],
        json!({"name": name, "version": 1}),
        "{first:#}"
    );
    assert_link(
        &first,
        "definition",
        &format!("/job-definitions/{name}/versions/1"),
    );
    let first_id = id_of(&first);
    let reserved = app.wait_status(&first_id, "reserved").await;

    // Version 2 sends the room to another participant.
    let mut v2 = v1.clone();
    v2["tasks"][0]["taskURL"] = json!(p2.url("room"));
    let body = put_expecting(&app, &name, &v2, 201).await;
    assert_eq!(body["version"], 2, "{body:#}");

    // The first job is still version 1's, confirmed where it reserved.
    confirm_by_link(&app, &reserved).await;
    let done = app.wait_status(&first_id, "completed").await;
    assert_eq!(task(&done, "room")["taskURL"], json!(p1.url("room")));
    assert_eq!(done["definition"], json!({"name": name, "version": 1}));
    assert!(p1.confirmed("room"), "version 1's participant confirmed");
    assert_eq!(p1.count(Op::Confirm, "room"), 1);
    for op in [Op::Try, Op::Confirm, Op::Cancel] {
        assert_eq!(p2.count_all(op), 0, "version 2's participant heard nothing");
    }

    // A job started now is version 2's.
    let second = start_job(&app, &name, &json!({"parameters": {}})).await;
    assert_eq!(
        second["definition"],
        json!({"name": name, "version": 2}),
        "{second:#}"
    );
    assert_link(
        &second,
        "definition",
        &format!("/job-definitions/{name}/versions/2"),
    );
    let second = app.wait_status(&id_of(&second), "reserved").await;
    assert_eq!(task(&second, "room")["taskURL"], json!(p2.url("room")));
    assert_eq!(p2.count(Op::Try, "room"), 1);

    // Version 1, asked for by number.
    let third = start_job(&app, &name, &json!({"parameters": {}, "version": 1})).await;
    assert_eq!(
        third["definition"],
        json!({"name": name, "version": 1}),
        "{third:#}"
    );
    let third = app.wait_status(&id_of(&third), "reserved").await;
    assert_eq!(task(&third, "room")["taskURL"], json!(p1.url("room")));
    assert_eq!(p1.count(Op::Try, "room"), 2);
    assert_eq!(p2.count(Op::Try, "room"), 1);
    assert_eq!(p2.count_all(Op::Confirm), 0);
    app.stop().await;
}

#[tokio::test]
async fn parameters_the_schema_refuses_are_named_by_their_pointers_and_start_nothing() {
    let app = spawn_app().await;
    let name = unique("params");
    let doc = json!({
        "autoConfirm": false,
        "tasks": [],
        "parameters": {
            "type": "object",
            "required": ["hotel", "nights"],
            "properties": {
                "hotel": {"type": "string", "pattern": "^[a-z-]+$"},
                "nights": {"type": "integer", "minimum": 1},
            },
        },
    });
    put_expecting(&app, &name, &doc, 201).await;
    let path = format!("/job-definitions/{name}/jobs");

    // A missing required parameter and a value below its minimum, both named.
    let ps = refused(
        &app,
        Method::POST,
        &path,
        &json!({"parameters": {"nights": 0}}),
    )
    .await;
    assert!(has(&ps, "/parameters/hotel"), "missing hotel: {ps:?}");
    assert!(has(&ps, "/parameters/nights"), "nights below 1: {ps:?}");
    // A value off its pattern: only that one.
    let body = json!({"parameters": {"hotel": "Ritz!", "nights": 2}});
    let ps = refused(&app, Method::POST, &path, &body).await;
    assert!(has(&ps, "/parameters/hotel"), "{ps:?}");
    assert!(!has(&ps, "/parameters/nights"), "{ps:?}");
    // A value of the wrong type.
    let body = json!({"parameters": {"hotel": "ritz", "nights": "two"}});
    let ps = refused(&app, Method::POST, &path, &body).await;
    assert!(has(&ps, "/parameters/nights"), "{ps:?}");
    // Parameters that are not an object.
    let ps = refused(
        &app,
        Method::POST,
        &path,
        &json!({"parameters": ["ritz", 2]}),
    )
    .await;
    assert!(has(&ps, "/parameters"), "{ps:?}");
    // A member a start cannot have: named.
    let body = json!({"parameters": {"hotel": "ritz", "nights": 2}, "tasks": []});
    let ps = refused(&app, Method::POST, &path, &body).await;
    assert!(has(&ps, "/tasks"), "{ps:?}");
    // A version the definition does not have.
    let body = json!({"parameters": {"hotel": "ritz", "nights": 2}, "version": 9});
    let ps = refused(&app, Method::POST, &path, &body).await;
    assert!(has(&ps, "/version"), "{ps:?}");
    assert_eq!(app.job_count().await, 0, "nothing started");

    // An unknown definition: 404.
    let unknown = unique("unknown");
    let (status, _, problem) = start(&app, &unknown, &json!({"parameters": {}})).await;
    assert_eq!(status, 404, "{problem:#}");

    // Good parameters start a job.
    let job = start_job(
        &app,
        &name,
        &json!({"parameters": {"hotel": "ritz", "nights": 2}}),
    )
    .await;
    assert_eq!(job["definition"], json!({"name": name, "version": 1}));
    assert_eq!(app.job_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_schema_uri_template_or_document_is_refused_with_its_pointer() {
    let app = spawn_app().await;
    let name = unique("invalid");
    let path = format!("/job-definitions/{name}");
    let no_tasks =
        |parameters: Value| json!({"autoConfirm": false, "tasks": [], "parameters": parameters});
    // Schemas that are not JSON Schema: pointers under /parameters.
    for schema in [
        json!({"type": "strnig"}),
        json!({"type": "object", "properties": {"nights": {"type": "integer", "minimum": "x"}}}),
        json!(5),
    ] {
        let ps = refused(&app, Method::PUT, &path, &no_tasks(schema.clone())).await;
        assert!(
            !ps.is_empty() && ps.iter().all(|p| p.starts_with("/parameters")),
            "{schema}: {ps:?}"
        );
    }
    // URI templates that are not RFC 6570, and the rules of a job document.
    let cases = [
        (
            json!({"tasks": [{"taskID": "a", "taskURL": "http://127.0.0.1:1/x/{unclosed"}]}),
            "/tasks/0/taskURL",
        ),
        (
            json!({"tasks": [{"taskID": "a", "confirmURL": "http://127.0.0.1:1/c/{a",
                              "cancelURL": "http://127.0.0.1:1/x"}]}),
            "/tasks/0/confirmURL",
        ),
        (
            json!({"tasks": [{"taskID": "a", "taskURL": "ftp://127.0.0.1/x"}]}),
            "/tasks/0/taskURL",
        ),
        (
            json!({"jobMaxTtl": 5, "autoConfirm": false, "tasks": []}),
            "/jobMaxTtl",
        ),
    ];
    for (doc, pointer) in cases {
        let ps = refused(&app, Method::PUT, &path, &doc).await;
        assert!(ps.iter().any(|p| p == pointer), "{doc}: {ps:?}");
    }
    let (status, _, _) = call(&app, Method::GET, &path, None, None).await;
    assert_eq!(status, 404, "nothing stored");
    app.stop().await;
}

#[tokio::test]
async fn uri_templates_are_expanded_into_the_calls_and_the_parameters_join_the_shared_state() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    let base = b.base().to_string();
    let name = unique("templates");
    let doc = json!({
        "sharedState": {"customer": 42, "channel": "web", "nights": 1},
        "parameters": {
            "type": "object",
            "required": ["hotel"],
            "properties": {
                "hotel": {"type": "string", "minLength": 1},
                "nights": {"type": "integer", "minimum": 1, "default": 2},
            },
        },
        "tasks": [{
            "taskID": "room",
            "taskURL": format!("{base}/try/{{hotel}}{{?nights}}"),
            "confirmURL": format!("{base}/confirm/{{hotel}}{{?nights}}"),
            "cancelURL": format!("{base}/cancel/{{hotel}}"),
            "body": {"kind": "room"},
            "inputMapping": {"/hotel": "/hotel", "/nights": "/nights"},
        }],
    });
    put_expecting(&app, &name, &doc, 201).await;
    let nights = |n: &str| HashMap::from([("nights".to_string(), n.to_string())]);

    // Every parameter given.
    let job = start_job(
        &app,
        &name,
        &json!({"parameters": {"hotel": "ritz", "nights": 3}}),
    )
    .await;
    let done = app.wait_status(&id_of(&job), "completed").await;
    let tries = b.calls("try", "ritz");
    assert_eq!(
        tries.len(),
        1,
        "one Try at the expanded URL: {:?}",
        b.order()
    );
    assert_eq!(tries[0].method.as_str(), "POST");
    assert_eq!(tries[0].query, nights("3"));
    assert_eq!(
        serde_json::from_str::<Value>(&tries[0].body).ok(),
        Some(json!({"kind": "room", "hotel": "ritz", "nights": 3})),
        "the Try's body, mapped from the shared state"
    );
    let confirms = b.calls("confirm", "ritz");
    assert_eq!(confirms.len(), 1, "{:?}", b.order());
    assert_eq!(confirms[0].query, nights("3"));
    assert_eq!(b.count("cancel", "ritz"), 0);
    let t = task(&done, "room");
    assert_eq!(t["taskURL"], json!(format!("{base}/try/ritz?nights=3")));
    assert_eq!(
        t["confirmURL"],
        json!(format!("{base}/confirm/ritz?nights=3"))
    );
    assert_eq!(
        done["sharedState"],
        json!({"customer": 42, "channel": "web", "hotel": "ritz", "nights": 3}),
        "the parameters merged into the template's shared state"
    );

    // nights left out: its default, in the shared state and the URLs; the hotel's space
    // percent-encoded in the path.
    let job = start_job(&app, &name, &json!({"parameters": {"hotel": "le grand"}})).await;
    let done = app.wait_status(&id_of(&job), "completed").await;
    let tries = b.calls("try", "le grand");
    assert_eq!(tries.len(), 1, "{:?}", b.order());
    assert_eq!(tries[0].query, nights("2"));
    assert_eq!(
        serde_json::from_str::<Value>(&tries[0].body).ok(),
        Some(json!({"kind": "room", "hotel": "le grand", "nights": 2}))
    );
    assert_eq!(b.calls("confirm", "le grand").len(), 1, "{:?}", b.order());
    assert_eq!(
        task(&done, "room")["taskURL"],
        json!(format!("{base}/try/le%20grand?nights=2"))
    );
    assert_eq!(
        done["sharedState"],
        json!({"customer": 42, "channel": "web", "hotel": "le grand", "nights": 2})
    );
    app.stop().await;
}

#[tokio::test]
async fn one_idempotency_key_starts_one_job_and_other_parameters_under_it_are_refused() {
    let app = spawn_app().await;
    let name = unique("idempotent");
    let doc = json!({
        "autoConfirm": false,
        "tasks": [],
        "parameters": {"type": "object", "properties": {"hotel": {"type": "string"}}},
    });
    put_expecting(&app, &name, &doc, 201).await;
    let key = unique("stay-key");
    let body = json!({"parameters": {"hotel": "ritz"}});

    let first = start_keyed(&app, &name, &key, &body).await;
    assert_eq!(first.status(), 202);
    let location = header_opt(&first, "location");
    assert!(location.is_some(), "a Location");
    let first: Value = first.json().await.expect("json");
    let first_id = id_of(&first);

    // The same body under the same key: the same job.
    let replay = start_keyed(&app, &name, &key, &body).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(header_opt(&replay, "location"), location);
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(replay["jobID"], first["jobID"]);

    // Other parameters under the same key: refused.
    let other = start_keyed(
        &app,
        &name,
        &key,
        &json!({"parameters": {"hotel": "savoy"}}),
    )
    .await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.expect("problem");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/problems/idempotency-key-reused")),
        "{problem:#}"
    );
    let definition = format!("definition={name}");
    assert_eq!(
        listed_jobs(&app, &definition).await,
        BTreeSet::from([first_id.clone()])
    );
    let job = app.get_job(&first_id).await;
    assert_eq!(job["sharedState"]["hotel"], "ritz", "{job:#}");

    // A new key: a new job.
    let fresh = start_keyed(&app, &name, &unique("stay-key"), &body).await;
    assert_eq!(fresh.status(), 202);
    assert_eq!(app.count_jobs(&definition).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_retired_definition_refuses_starts_its_jobs_go_on_and_a_put_brings_it_back() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let prefix = unique("retire");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut doc = job_of(&[("room", p.url("retire-room"))]);
    doc["autoConfirm"] = json!(false);
    doc["jobMaxTTL"] = json!(120);
    for name in [&a, &b] {
        put_expecting(&app, name, &doc, 201).await;
    }
    let go = json!({"parameters": {}});
    let before = start_job(&app, &a, &go).await;
    let before_id = id_of(&before);
    let reserved = app.wait_status(&before_id, "reserved").await;

    // Retired: 200 with the representation, no start action; again, the same.
    let path = format!("/job-definitions/{a}");
    for _ in 0..2 {
        let (status, _, body) = call(&app, Method::DELETE, &path, None, None).await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(body["retired"], true, "{body:#}");
        assert_eq!(body["name"], a.as_str());
        assert!(body["_links"]["start"].is_null(), "{body:#}");
    }
    // A start: 410.
    let (status, _, problem) = start(&app, &a, &go).await;
    assert_eq!(status, 410, "{problem:#}");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/problems/definition-retired")),
        "{problem:#}"
    );
    assert_eq!(app.count_jobs(&format!("definition={a}")).await, 1);
    // Reads still work.
    let shown = get_json(&app.http, &app.url(&path)).await;
    assert_eq!(shown["retired"], true);
    assert_eq!(shown["version"], 1);
    assert!(shown["_links"]["start"].is_null(), "{shown:#}");
    get_json(&app.http, &app.url(&format!("{path}/versions/1"))).await;

    // The list, one a page, by name, with the retired flags.
    let mut seen = Vec::new();
    let mut next = Some(app.url("/job-definitions?limit=1"));
    let mut pages = 0;
    while let Some(url) = next {
        pages += 1;
        assert!(pages <= 100, "the pages never end");
        let page = get_json(&app.http, &url).await;
        let definitions = page["definitions"].as_array().cloned().unwrap_or_default();
        assert!(definitions.len() <= 1, "limit=1: {page:#}");
        if pages == 1 {
            assert_eq!(definitions.len(), 1, "{page:#}");
        }
        seen.extend(
            definitions
                .into_iter()
                .filter(|d| d["name"].as_str().is_some_and(|n| n.starts_with(&prefix))),
        );
        next = page["_links"]["next"]["href"].as_str().map(str::to_string);
    }
    assert!(pages >= 2, "two definitions, one a page");
    let flags: Vec<(&str, bool)> = seen
        .iter()
        .filter_map(|d| Some((d["name"].as_str()?, d["retired"].as_bool()?)))
        .collect();
    assert_eq!(
        flags,
        vec![(a.as_str(), true), (b.as_str(), false)],
        "{seen:#?}"
    );
    for d in &seen {
        assert_eq!(d["version"], 1, "{d:#}");
        let name = d["name"].as_str().unwrap_or_default();
        assert_link(d, "self", &format!("/job-definitions/{name}"));
    }

    // The job started before the retire runs to its end.
    confirm_by_link(&app, &reserved).await;
    let done = app.wait_status(&before_id, "completed").await;
    assert_eq!(done["definition"], json!({"name": a, "version": 1}));
    assert!(p.confirmed("retire-room"));

    // PUT again: back, no new version, and starts work again.
    let body = put_expecting(&app, &a, &doc, 200).await;
    assert_eq!(body["retired"], false, "{body:#}");
    assert_eq!(body["version"], 1, "{body:#}");
    assert_link(&body, "start", &format!("{path}/jobs"));
    start_job(&app, &a, &go).await;
    assert_eq!(app.count_jobs(&format!("definition={a}")).await, 2);

    let unknown = format!("/job-definitions/{}", unique("unknown"));
    let (status, _, _) = call(&app, Method::DELETE, &unknown, None, None).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_by_the_definition_they_were_started_from() {
    let app = spawn_app().await;
    let (a, b) = (unique("list-a"), unique("list-b"));
    let doc = json!({"autoConfirm": false, "tasks": []});
    for name in [&a, &b] {
        put_expecting(&app, name, &doc, 201).await;
    }
    let go = json!({"parameters": {}});
    let a1 = id_of(&start_job(&app, &a, &go).await);
    let a2 = id_of(&start_job(&app, &a, &go).await);
    let b1 = id_of(&start_job(&app, &b, &go).await);
    let plain = app.submit(&doc).await;

    assert_eq!(
        listed_jobs(&app, &format!("definition={a}")).await,
        BTreeSet::from([a1.clone(), a2.clone()])
    );
    assert_eq!(
        listed_jobs(&app, &format!("definition={b}")).await,
        BTreeSet::from([b1.clone()])
    );
    let all = listed_jobs(&app, "").await;
    for id in [&a1, &a2, &b1, &plain] {
        assert!(all.contains(id), "{id} in the whole list");
    }
    // The definition's jobs link lists the same.
    let shown = get_json(&app.http, &app.url(&format!("/job-definitions/{a}"))).await;
    let href = shown["_links"]["jobs"]["href"]
        .as_str()
        .unwrap_or_else(|| panic!("a jobs link: {shown:#}"));
    let page = get_json(&app.http, href).await;
    let linked: BTreeSet<String> = page["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["jobID"].as_str().map(str::to_string))
        .collect();
    assert_eq!(linked, BTreeSet::from([a1, a2]));
    app.stop().await;
}

const READER: &str = "defs-reader-secret-01";
const WRITER: &str = "defs-writer-secret-01";
const OPS: &str = "defs-ops-secret-000001";

#[tokio::test]
async fn definitions_are_changed_by_admin_started_by_submit_and_read_by_read() {
    let keys = format!("reader:read:{READER},writer:submit:{WRITER},ops:admin:{OPS}");
    let app = spawn_app_with(&["--api-keys", &keys]).await;
    let name = unique("roles");
    let path = format!("/job-definitions/{name}");
    let jobs = format!("{path}/jobs");
    let doc = json!({"autoConfirm": false, "tasks": []});
    let go = json!({"parameters": {}});

    // Only admin creates a definition.
    for secret in [READER, WRITER] {
        let (status, _, problem) = call(&app, Method::PUT, &path, Some(secret), Some(&doc)).await;
        assert_eq!(status, 403, "{problem:#}");
    }
    let (status, _, body) = call(&app, Method::PUT, &path, Some(OPS), Some(&doc)).await;
    assert_eq!(status, 201, "{body:#}");
    // No key: 401.
    let (status, _, _) = call(&app, Method::GET, &path, None, None).await;
    assert_eq!(status, 401);

    // read reads, and may not start.
    for p in [
        "/job-definitions".to_string(),
        path.clone(),
        format!("{path}/versions"),
        format!("{path}/versions/1"),
    ] {
        let (status, _, body) = call(&app, Method::GET, &p, Some(READER), None).await;
        assert_eq!(status, 200, "{p}: {body:#}");
    }
    let (status, _, problem) = call(&app, Method::POST, &jobs, Some(READER), Some(&go)).await;
    assert_eq!(status, 403, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("submit")),
        "{problem:#}"
    );

    // submit starts, and may neither change nor retire.
    let (status, _, job) = call(&app, Method::POST, &jobs, Some(WRITER), Some(&go)).await;
    assert_eq!(status, 202, "{job:#}");
    let mut changed = doc.clone();
    changed["description"] = json!("changed");
    let (status, _, problem) = call(&app, Method::PUT, &path, Some(WRITER), Some(&changed)).await;
    assert_eq!(status, 403, "{problem:#}");
    for secret in [READER, WRITER] {
        let (status, _, problem) = call(&app, Method::DELETE, &path, Some(secret), None).await;
        assert_eq!(status, 403, "{problem:#}");
    }

    // admin does all.
    let (status, _, job) = call(&app, Method::POST, &jobs, Some(OPS), Some(&go)).await;
    assert_eq!(status, 202, "{job:#}");
    let (status, _, body) = call(&app, Method::PUT, &path, Some(OPS), Some(&changed)).await;
    assert_eq!(status, 201, "{body:#}");
    assert_eq!(body["version"], 2, "{body:#}");
    let (status, _, body) = call(&app, Method::DELETE, &path, Some(OPS), None).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["retired"], true, "{body:#}");

    // Both jobs, seen with the read key.
    let (status, _, list) = call(
        &app,
        Method::GET,
        &format!("/jobs?definition={name}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list:#}");
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(2), "{list:#}");
    app.stop().await;
}

#[tokio::test]
async fn the_entry_point_links_the_job_definitions() {
    let app = spawn_app().await;
    let root = get_json(&app.http, &app.url("/")).await;
    let href = root["_links"]["job-definitions"]["href"]
        .as_str()
        .unwrap_or_default();
    assert!(href.ends_with("/job-definitions"), "{root:#}");
    let list = get_json(&app.http, href).await;
    assert!(list["definitions"].is_array(), "{list:#}");
    app.stop().await;
}

/// A job's definition is the coordinator's record, not part of its document: an update of the
/// job under `If-Match` (`PUT /jobs/{id}`) keeps it.
#[tokio::test]
async fn an_update_under_if_match_keeps_the_definition_a_job_was_started_from() {
    let app = spawn_app().await;
    let name = unique("kept");
    put_expecting(
        &app,
        &name,
        &json!({"autoConfirm": false, "jobMaxTTL": 600, "tasks": []}),
        201,
    )
    .await;
    let job = start_job(&app, &name, &json!({})).await;
    let url = app.url(&format!("/jobs/{}", id_of(&job)));
    let read = app.http.get(&url).send().await.expect("GET the job");
    let etag = header_in(read.headers(), "etag").expect("an ETag");
    let updated = app
        .http
        .put(&url)
        .header("if-match", etag)
        .json(
            &json!({"autoConfirm": false, "jobMaxTTL": 600, "description": "renamed", "tasks": []}),
        )
        .send()
        .await
        .expect("PUT the job");
    assert_eq!(updated.status(), 200);
    let body: Value = updated.json().await.expect("the job");
    assert_eq!(body["description"], "renamed", "{body:#}");
    assert_eq!(
        body["definition"],
        json!({"name": name, "version": 1}),
        "{body:#}"
    );
    assert_link(
        &body,
        "definition",
        &format!("/job-definitions/{name}/versions/1"),
    );
}
