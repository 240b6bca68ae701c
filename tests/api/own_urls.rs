//! Tasks with their own confirm and cancel URLs (docs/api.md, "Tasks with confirm and cancel
//! URLs"), against a real participant that keeps a ledger of every call it received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use serde_json::{Value, json};

use super::helpers::*;

/// One call a participant received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: String,
}

/// How a participant answers: a status and a body, or never (`stall`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub stall: bool,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::with(200, r#"{"dtm_result":"SUCCESS"}"#)
    }

    pub fn with(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            stall: false,
        }
    }

    /// Never answers: the caller's timeout ends the call.
    pub fn stall() -> Reply {
        Reply {
            stall: true,
            ..Reply::ok()
        }
    }
}

#[derive(Default)]
struct Ledger {
    calls: Vec<(String, Call)>,
    script: HashMap<String, VecDeque<Reply>>,
    default: HashMap<String, Reply>,
}

/// A participant with a path per operation and name (`/{op}/{name}`, any method): it records
/// every call in order and answers as scripted, else 200 with DTM's `SUCCESS`.
#[derive(Clone)]
pub struct Branches {
    base: String,
    ledger: Arc<Mutex<Ledger>>,
}

async fn called(
    State(ledger): State<Arc<Mutex<Ledger>>>,
    Path(path): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let query = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let reply = {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        l.calls.push((
            path.clone(),
            Call {
                method,
                query,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
        ));
        let scripted = l.script.get_mut(&path).and_then(VecDeque::pop_front);
        scripted
            .or_else(|| l.default.get(&path).cloned())
            .unwrap_or_else(Reply::ok)
    };
    if reply.stall {
        std::future::pending::<()>().await;
    }
    (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        reply.body,
    )
}

impl Branches {
    pub async fn start() -> Branches {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let app = Router::new()
            .route("/{*path}", any(called))
            .with_state(ledger.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Branches { base, ledger }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `{base}/{op}/{name}`.
    pub fn url(&self, op: &str, name: &str) -> String {
        format!("{}/{op}/{name}", self.base)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer the next calls to `/{op}/{name}` so, in order.
    pub fn script(&self, op: &str, name: &str, replies: Vec<Reply>) {
        self.lock()
            .script
            .entry(format!("{op}/{name}"))
            .or_default()
            .extend(replies);
    }

    /// Answer every call to `/{op}/{name}` so once the script is spent.
    pub fn always(&self, op: &str, name: &str, reply: Reply) {
        self.lock().default.insert(format!("{op}/{name}"), reply);
    }

    pub fn calls(&self, op: &str, name: &str) -> Vec<Call> {
        let path = format!("{op}/{name}");
        self.lock()
            .calls
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, c)| c.clone())
            .collect()
    }

    pub fn count(&self, op: &str, name: &str) -> usize {
        self.calls(op, name).len()
    }

    /// Every call's path (`op/name`) in the order received.
    pub fn order(&self) -> Vec<String> {
        self.lock().calls.iter().map(|(p, _)| p.clone()).collect()
    }
}

fn own_task(b: &Branches, name: &str, tried: bool) -> Value {
    let mut t = json!({
        "taskID": name,
        "confirmURL": b.url("confirm", name),
        "cancelURL": b.url("cancel", name),
        "body": {"item": name},
    });
    if tried {
        t["taskURL"] = json!(b.url("try", name));
    }
    t
}

#[tokio::test]
async fn tasks_with_their_own_urls_are_tried_then_confirmed_at_their_confirm_url() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    // The Try's answer holds no link: none is needed.
    b.always("try", "a", Reply::with(200, r#"{"held": 1}"#));
    let id = app
        .submit(&json!({
            "correlationID": "own-urls-1",
            "tasks": [own_task(&b, "a", true), own_task(&b, "b", false)],
        }))
        .await;
    let job = app.wait_status(&id, "completed").await;
    assert_eq!(b.count("try", "a"), 1);
    assert_eq!(b.count("try", "b"), 0, "b was tried by the client");
    for name in ["a", "b"] {
        let calls = b.calls("confirm", name);
        assert_eq!(calls.len(), 1, "{name}: one confirm");
        let c = &calls[0];
        assert_eq!(c.method, Method::POST);
        assert_eq!(
            serde_json::from_str::<Value>(&c.body).ok(),
            Some(json!({"item": name})),
            "the task's body"
        );
        assert_eq!(
            header_in(&c.headers, "correlation-id").as_deref(),
            Some("own-urls-1")
        );
        assert_eq!(header_in(&c.headers, "request-id").as_deref(), Some(name));
        assert_eq!(b.count("cancel", name), 0);
        let t = task(&job, name);
        assert_eq!(t["taskStatus"], "confirmed");
        assert_eq!(t["confirmURL"], json!(b.url("confirm", name)));
        assert_eq!(t["cancelURL"], json!(b.url("cancel", name)));
        assert!(t["participantLink"].is_null());
    }
    assert_eq!(task(&job, "a")["tryResponse"], json!({"held": 1}));
    app.stop().await;
}

#[tokio::test]
async fn a_failed_try_cancels_every_task_whose_try_was_sent_at_its_cancel_url() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    b.always("try", "a", Reply::with(200, "{}"));
    b.always("try", "b", Reply::with(409, "no stock"));
    let id = app
        .submit(&json!({"tasks": [own_task(&b, "a", true), own_task(&b, "b", true), own_task(&b, "c", false)]}))
        .await;
    let job = app.wait_status(&id, "failed").await;
    assert_eq!(job["failureReason"], "try-failed");
    // a reserved, b refused its Try (the participant answers that cancel with an empty
    // compensation), c was reserved by the client: all three are canceled.
    for name in ["a", "b", "c"] {
        assert_eq!(b.count("cancel", name), 1, "{name}: one cancel");
        assert_eq!(b.count("confirm", name), 0);
        assert_eq!(task(&job, name)["taskStatus"], "canceled");
    }
    app.stop().await;
}

#[tokio::test]
async fn participants_register_their_own_urls_and_a_repeat_finds_the_same_task() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "jobMaxTTL": 60, "tasks": []}))
        .await;
    let reg = json!({"confirmURL": b.url("confirm", "p"), "cancelURL": b.url("cancel", "p"), "body": {"n": 1}, "taskID": "p"});
    let url = app.url(&format!("/jobs/{id}/participants"));
    let r = app
        .http
        .post(&url)
        .json(&reg)
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.expect("json");
    assert_eq!(t["taskStatus"], "reserved");
    assert_eq!(t["confirmURL"], json!(b.url("confirm", "p")));
    let again = app.http.post(&url).json(&reg).send().await.expect("again");
    assert_eq!(again.status(), 200, "the same participant again");
    // The same taskID with other URLs is another participant: refused.
    let other = json!({"confirmURL": b.url("confirm", "q"), "cancelURL": b.url("cancel", "q"), "taskID": "p"});
    let r = app
        .http
        .post(&url)
        .json(&other)
        .send()
        .await
        .expect("other");
    assert_eq!(r.status(), 409);
    // A half pair is refused, naming the missing field.
    let half = json!({"confirmURL": b.url("confirm", "q")});
    let r = app.http.post(&url).json(&half).send().await.expect("half");
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["errors"][0]["pointer"], "/cancelURL", "{e}");

    assert_eq!(app.delete(&format!("/jobs/{id}")).await.status(), 202);
    let job = app.wait_status(&id, "canceled").await;
    assert_eq!(job["tasks"].as_array().map(Vec::len), Some(1));
    let calls = b.calls("cancel", "p");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].body).ok(),
        Some(json!({"n": 1}))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_confirm_failing_until_the_horizon_is_heuristic_and_calls_for_help() {
    let ops = Branches::start().await;
    let hook = ops.url("hook", "ops");
    let app = spawn_app_with(&["--callback-horizon", "1s", "--heuristic-webhook", &hook]).await;
    let b = Branches::start().await;
    b.always("confirm", "b", Reply::with(503, "busy"));
    let id = app
        .submit(&json!({"tasks": [own_task(&b, "a", false), own_task(&b, "b", false)]}))
        .await;
    let job = app.wait_status(&id, "heuristic").await;
    assert_eq!(task(&job, "a")["taskStatus"], "confirmed");
    let t = task(&job, "b");
    assert_eq!(t["taskStatus"], "heuristic");
    let said = t["lastMessage"].as_str().unwrap_or_default();
    assert!(
        said.contains("callback horizon") && said.contains("503"),
        "{said}"
    );
    assert!(b.count("confirm", "b") >= 1, "retried until the horizon");
    assert_eq!(
        b.count("cancel", "a") + b.count("cancel", "b"),
        0,
        "never turned to cancel"
    );
    let told = eventually(|| async { ops.count("hook", "ops") >= 1 }).await;
    assert!(
        told,
        "the operators' webhook hears of the heuristic outcome"
    );
    let calls = ops.calls("hook", "ops");
    let body: Value = serde_json::from_str(&calls[0].body).unwrap_or_default();
    assert_eq!(body["job"]["jobID"], json!(id), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_refused_cancel_is_heuristic_as_nothing_lapses_there() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    b.always("cancel", "b", Reply::with(400, "unknown order"));
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": [own_task(&b, "a", false), own_task(&b, "b", false)]}))
        .await;
    app.wait_status(&id, "reserved").await;
    assert_eq!(app.delete(&format!("/jobs/{id}")).await.status(), 202);
    let job = app.wait_status(&id, "heuristic").await;
    assert_eq!(task(&job, "a")["taskStatus"], "canceled");
    let t = task(&job, "b");
    assert_eq!(t["taskStatus"], "heuristic");
    assert!(
        t["lastMessage"]
            .as_str()
            .is_some_and(|m| m.contains("cancel was refused")),
        "{t}"
    );
    // `continue` retries confirms; a failed cancel is not turned into one.
    assert_eq!(
        app.post(&format!("/jobs/{id}/continue")).await.status(),
        409
    );
    app.stop().await;
}

#[tokio::test]
async fn own_urls_are_checked_like_every_url() {
    let app = spawn_app_with(&["--allowed-targets", "127.0.0.1"]).await;
    let cases = [
        (
            json!({"taskID": "a", "confirmURL": "http://127.0.0.1:9/c"}),
            "/tasks/0/cancelURL",
        ),
        (
            json!({"taskID": "a", "cancelURL": "http://127.0.0.1:9/c"}),
            "/tasks/0/confirmURL",
        ),
        (
            json!({"taskID": "a", "confirmURL": "ftp://x/c", "cancelURL": "http://127.0.0.1:9/c"}),
            "/tasks/0/confirmURL",
        ),
        (
            json!({"taskID": "a", "confirmURL": "http://127.0.0.1:9/c", "cancelURL": "http://127.0.0.1:9/x",
                   "participantLink": {"uri": "http://127.0.0.1:9/r", "expires": "2999-01-01T00:00:00Z"}}),
            "/tasks/0/participantLink",
        ),
        (
            json!({"taskID": "a", "confirmURL": "http://127.0.0.1:9/c", "cancelURL": "http://127.0.0.1:9/x",
                   "inputMapping": {"/a": "/b"}}),
            "/tasks/0/inputMapping",
        ),
        (
            json!({"taskID": "a", "confirmURL": "http://10.1.2.3/c", "cancelURL": "http://127.0.0.1:9/x"}),
            "/tasks/0/confirmURL",
        ),
    ];
    for (t, pointer) in cases {
        let r = app
            .http
            .post(app.url("/jobs"))
            .json(&json!({"tasks": [t]}))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 422, "{t}");
        let e: Value = r.json().await.expect("json");
        let pointers: Vec<&str> = e["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["pointer"].as_str())
            .collect();
        assert!(pointers.contains(&pointer), "{t}: {e}");
    }
    assert_eq!(app.job_count().await, 0, "nothing stored");
    app.stop().await;
}

/// The coordinator's `POST` reaches the participant within the call timeout; a participant that
/// never answers is retried (its confirm may have been applied), not refused.
#[tokio::test]
async fn a_stalled_confirm_is_retried_until_it_answers() {
    let app = spawn_app_with(&["--call-timeout", "300ms"]).await;
    let b = Branches::start().await;
    b.script("confirm", "a", vec![Reply::stall()]);
    let id = app
        .submit(
            &json!({"tasks": [own_task(&b, "a", false)], "retryPolicy": {"initialDelay": 0.05}}),
        )
        .await;
    let job = app.wait_status(&id, "completed").await;
    assert!(b.count("confirm", "a") >= 2);
    assert_eq!(task(&job, "a")["taskStatus"], "confirmed");
    app.stop().await;
}
