//! DTM's HTTP API (docs/dtm.md) driven by DTM's own Python client, `dtmcli` from PyPI, unchanged:
//! its TCC scenarios against real branch services that keep a ledger. `.ci/run` installs the
//! client; elsewhere, without it, these tests say they skipped.

use std::time::Duration;

use serde_json::{Value, json};

use super::helpers::*;
use super::own_urls::{Branches, Reply};

/// What DTM's Python client runs: `tcc_global_transaction` with two branches (`out` then `in`),
/// as DTM's own examples do; `dies` prepares and registers one branch, then exits without a
/// submit or an abort.
const CLIENT: &str = r#"
import json, os, sys
import requests
from dtmcli import tcc, utils

dtm, svc, scenario = sys.argv[1], sys.argv[2], sys.argv[3]

def branch(t, name):
    body = {"amount": 30, "branch": name}
    t.call_branch(body, svc + "/try/" + name, svc + "/confirm/" + name, svc + "/cancel/" + name)

gid = utils.gen_gid(dtm)
if scenario == "dies":
    r = requests.post(dtm + "/prepare", json={"gid": gid, "trans_type": "tcc", "timeout_to_fail": 2})
    utils.check_result(r)
    branch(tcc.Tcc(dtm, gid), "out")
    print(json.dumps({"asked": gid}), flush=True)
    os._exit(0)

def busi(t):
    branch(t, "out")
    branch(t, "in")

done = tcc.tcc_global_transaction(dtm, gid, busi)
print(json.dumps({"asked": gid, "gid": done}), flush=True)
"#;

/// Python with `dtmcli`, or `None` (a failure under CI).
async fn python_with_dtmcli() -> Option<&'static str> {
    let found = tokio::process::Command::new("python3")
        .args(["-c", "import dtmcli.tcc, dtmcli.utils"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("python3");
    }
    assert!(
        std::env::var("CI").is_err(),
        "DTM's Python client is not installed (pip install dtmcli)"
    );
    eprintln!("skipped: DTM's Python client is not installed (pip install dtmcli)");
    None
}

/// Run the client's `scenario` against the coordinator at `base` (whose DTM URL it is given
/// as DTM's clients take it); returns what it printed: the gid asked for and, but for `dies`,
/// the gid `tcc_global_transaction` returned ("" when it aborted).
async fn run_client(python: &str, dtm: &str, b: &Branches, scenario: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("tcc-dtm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the client");
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).expect("write the client");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(&script)
            .args([dtm, b.base(), scenario])
            .output(),
    )
    .await
    .expect("the client ends")
    .expect("run the client");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "the client printed {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The job of a gid (its correlation id), once there.
async fn job_of_gid(http: &reqwest::Client, base: &str, gid: &str) -> Value {
    let url = format!("{base}/jobs?correlationID={gid}");
    let id = eventually_some(|| async {
        let list = get_json(http, &url).await;
        list["jobs"][0]["jobID"].as_str().map(str::to_string)
    })
    .await
    .expect("a job for the gid");
    get_json(http, &format!("{base}/jobs/{id}")).await
}

/// `POST /api/dtmsvr/{path}` with `body`: the status and the JSON answer.
async fn dtm_post(app: &TestApp, path: &'static str, body: Value) -> (u16, Value) {
    let url = app.url(&format!("/api/dtmsvr/{path}"));
    let r = app.http.post(url).json(&body).send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

fn gid_of(printed: &Value) -> String {
    printed["asked"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn dtm_client_both_branches_confirmed_last_registered_first() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let app = spawn_app().await;
    let b = Branches::start().await;
    let printed = run_client(python, &app.url("/api/dtmsvr"), &b, "two").await;
    let gid = gid_of(&printed);
    assert_eq!(
        printed["gid"],
        json!(gid),
        "the client saw its transaction succeed"
    );
    let job = job_of_gid(&app.http, &app.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    let job = app.wait_status(&id, "completed").await;
    assert_eq!(job["correlationID"], json!(gid));
    assert_eq!(task(&job, "01")["dtmBranchID"], "01");
    // The client tried each branch itself; the coordinator confirmed each once, `in` (02) first,
    // as DTM does: POST with the registered data, and DTM's query parameters.
    assert_eq!((b.count("try", "out"), b.count("try", "in")), (1, 1));
    let confirms: Vec<String> = b
        .order()
        .into_iter()
        .filter(|p| p.starts_with("confirm/"))
        .collect();
    assert_eq!(confirms, vec!["confirm/in", "confirm/out"]);
    let c = &b.calls("confirm", "out")[0];
    assert_eq!(c.method, axum::http::Method::POST);
    assert_eq!(
        serde_json::from_str::<Value>(&c.body).ok(),
        Some(json!({"amount": 30, "branch": "out"}))
    );
    for (k, v) in [
        ("gid", gid.as_str()),
        ("trans_type", "tcc"),
        ("branch_id", "01"),
        ("op", "confirm"),
    ] {
        assert_eq!(c.query.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(b.count("cancel", "out") + b.count("cancel", "in"), 0);
    // DTM's query shows it as DTM would.
    let q = get_json(&app.http, &app.url(&format!("/api/dtmsvr/query?gid={gid}"))).await;
    assert_eq!(q["transaction"]["status"], "succeed", "{q}");
    assert_eq!(q["branches"].as_array().map(Vec::len), Some(4));
    let scrape = scrape(&app.http, &app.addr).await;
    // Counted by source (other tests' coordinators in this process count into the same registry).
    assert!(scrape.value("tcc_jobs_created_total", &[("source", "dtm")]) >= Some(1.0));
    app.stop().await;
}

#[tokio::test]
async fn dtm_client_a_refused_try_aborts_and_every_registered_branch_is_canceled() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let app = spawn_app().await;
    let b = Branches::start().await;
    b.always("try", "in", Reply::with(409, r#"{"dtm_result":"FAILURE"}"#));
    let printed = run_client(python, &app.url("/api/dtmsvr"), &b, "two").await;
    assert_eq!(printed["gid"], "", "the client aborted");
    let gid = gid_of(&printed);
    let job = job_of_gid(&app.http, &app.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    let job = app.wait_status(&id, "canceled").await;
    assert_eq!(job["failureReason"], "client");
    // Both branches were registered before their Try: both get a cancel, in reverse order.
    let cancels: Vec<String> = b
        .order()
        .into_iter()
        .filter(|p| p.starts_with("cancel/"))
        .collect();
    assert_eq!(cancels, vec!["cancel/in", "cancel/out"]);
    assert_eq!(b.count("confirm", "out") + b.count("confirm", "in"), 0);
    let q = get_json(&app.http, &app.url(&format!("/api/dtmsvr/query?gid={gid}"))).await;
    assert_eq!(q["transaction"]["status"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn dtm_client_that_dies_before_submit_times_out_and_its_branches_are_canceled() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let app = spawn_app().await;
    let b = Branches::start().await;
    let printed = run_client(python, &app.url("/api/dtmsvr"), &b, "dies").await;
    let gid = gid_of(&printed);
    let job = job_of_gid(&app.http, &app.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    let job = app.wait_status(&id, "failed").await;
    assert_eq!(job["failureReason"], "timeout");
    assert_eq!(b.count("cancel", "out"), 1);
    assert_eq!(b.count("confirm", "out"), 0);
    // DTM's answers afterwards: the branch can no longer register, the abort is refused.
    let late = app
        .http
        .post(app.url("/api/dtmsvr/registerBranch"))
        .json(
            &json!({"gid": gid, "branch_id": "02", "trans_type": "tcc", "data": "{}",
                      "confirm": b.url("confirm", "x"), "cancel": b.url("cancel", "x")}),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(late.status(), 409);
    let body: Value = late.json().await.expect("json");
    assert_eq!(body["dtm_result"], "FAILURE");
    let abort = app
        .http
        .post(app.url("/api/dtmsvr/abort"))
        .json(&json!({"gid": gid, "trans_type": "tcc"}))
        .send()
        .await
        .expect("abort");
    assert_eq!(abort.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn dtm_client_a_branch_answering_ongoing_is_asked_again_until_it_succeeds() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let app = spawn_app().await;
    let b = Branches::start().await;
    b.script(
        "confirm",
        "in",
        vec![
            Reply::with(425, r#"{"dtm_result":"ONGOING"}"#),
            Reply::with(200, r#"{"dtm_result":"ONGOING"}"#),
        ],
    );
    let printed = run_client(python, &app.url("/api/dtmsvr"), &b, "two").await;
    let gid = gid_of(&printed);
    let job = job_of_gid(&app.http, &app.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    app.wait_status(&id, "completed").await;
    assert_eq!(b.count("confirm", "in"), 3, "ONGOING twice, then SUCCESS");
    // `out` waited for `in`.
    let order = b.order();
    let last_in = order.iter().rposition(|p| p == "confirm/in");
    let out = order.iter().position(|p| p == "confirm/out");
    assert!(last_in < out, "{order:?}");
    app.stop().await;
}

#[tokio::test]
async fn dtm_client_a_confirm_failing_until_the_horizon_is_heuristic_and_the_operators_hear() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let ops = Branches::start().await;
    let hook = ops.url("hook", "ops");
    let app = spawn_app_with(&["--callback-horizon", "2s", "--heuristic-webhook", &hook]).await;
    let b = Branches::start().await;
    b.always("confirm", "out", Reply::with(503, "down"));
    let printed = run_client(python, &app.url("/api/dtmsvr"), &b, "two").await;
    let gid = gid_of(&printed);
    let job = job_of_gid(&app.http, &app.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    let job = app.wait_status(&id, "heuristic").await;
    assert_eq!(task(&job, "02")["taskStatus"], "confirmed");
    assert_eq!(task(&job, "01")["taskStatus"], "heuristic");
    assert!(b.count("confirm", "out") >= 1);
    let told = eventually(|| async { ops.count("hook", "ops") >= 1 }).await;
    assert!(told, "the operators' webhook hears of it");
    let body: Value = serde_json::from_str(&ops.calls("hook", "ops")[0].body).unwrap_or_default();
    assert_eq!(body["job"]["correlationID"], json!(gid), "{body}");
    // The console and the operators' actions treat it as any job.
    let page = app
        .http
        .get(app.url(&format!("/jobs/{id}")))
        .header("accept", "text/html")
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap_or_default();
    assert!(html.contains(&gid) && html.contains("heuristic"));
    let r = app
        .http
        .post(app.url(&format!("/jobs/{id}/resolve")))
        .json(&json!({"note": "refunded by hand"}))
        .send()
        .await
        .expect("resolve");
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn dtm_client_the_coordinator_killed_between_submit_and_the_confirms_loses_nothing() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let db = fresh_database().await;
    let http = reqwest::Client::new();
    let mut first = start_process(&db, "dtm-a");
    first.wait_ready(&http).await;
    let b = Branches::start().await;
    // The first confirm never answers: the coordinator dies with it in flight.
    b.script("confirm", "in", vec![Reply::stall()]);
    let printed = run_client(python, &format!("{}/api/dtmsvr", first.addr), &b, "two").await;
    let gid = gid_of(&printed);
    assert_eq!(printed["gid"], json!(gid));
    let sent = eventually(|| async { b.count("confirm", "in") >= 1 }).await;
    assert!(sent, "the first confirm went out");
    first.kill();
    let second = start_process(&db, "dtm-b");
    second.wait_ready(&http).await;
    let job = job_of_gid(&http, &second.addr, &gid).await;
    let id = job["jobID"].as_str().unwrap_or_default().to_string();
    let job = wait_for_status(&http, &second.addr, &id, "completed").await;
    assert_eq!(task(&job, "01")["taskStatus"], "confirmed");
    assert_eq!(b.count("confirm", "out"), 1);
    assert!(b.count("confirm", "in") >= 2, "sent again by the new owner");
    assert_eq!(b.count("cancel", "out") + b.count("cancel", "in"), 0);
}

#[tokio::test]
async fn dtm_api_with_keys_takes_them_as_basic_credentials_in_the_url() {
    let Some(python) = python_with_dtmcli().await else {
        return;
    };
    let app = spawn_app_with(&["--api-keys", "orders:submit:s3cret-s3cret-s3cret"]).await;
    let b = Branches::start().await;
    let with_key = app
        .url("/api/dtmsvr")
        .replace("http://", "http://orders:s3cret-s3cret-s3cret@");
    let printed = run_client(python, &with_key, &b, "two").await;
    let gid = gid_of(&printed);
    assert_eq!(printed["gid"], json!(gid), "the client's calls were let in");
    // Without the key the client's first call (newGid) is refused.
    let r = reqwest::get(app.url("/api/dtmsvr/newGid"))
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);
    let ok = eventually(|| async { b.count("confirm", "out") == 1 }).await;
    assert!(ok, "confirmed");
    app.stop().await;
}

/// DTM's answers to repeated and out-of-order calls, without a client library.
#[tokio::test]
async fn dtm_api_answers_repeats_and_calls_out_of_order_as_dtm_does() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    let post = |path: &'static str, body: Value| dtm_post(&app, path, body);
    let g = get_json(&app.http, &app.url("/api/dtmsvr/newGid")).await;
    assert_eq!(g["dtm_result"], "SUCCESS");
    let gid = g["gid"].as_str().unwrap_or_default().to_string();
    let tb = json!({"gid": gid, "trans_type": "tcc"});
    assert_eq!(
        post("prepare", tb.clone()).await,
        (200, json!({"dtm_result": "SUCCESS"}))
    );
    assert_eq!(
        post("prepare", tb.clone()).await.0,
        200,
        "again while prepared"
    );
    let branch = json!({"gid": gid, "branch_id": "01", "trans_type": "tcc", "status": "prepared",
                        "data": "{\"n\": 1}", "confirm": b.url("confirm", "x"), "cancel": b.url("cancel", "x")});
    assert_eq!(post("registerBranch", branch.clone()).await.0, 200);
    assert_eq!(
        post("registerTccBranch", branch.clone()).await.0,
        200,
        "the same branch again"
    );
    let mut other = branch.clone();
    other["confirm"] = json!(b.url("confirm", "y"));
    let (status, body) = post("registerBranch", other).await;
    assert_eq!(
        (status, body["dtm_result"].clone()),
        (409, json!("FAILURE"))
    );
    assert_eq!(post("submit", tb.clone()).await.0, 200);
    // Once submitted, no branch joins (as DTM).
    let mut late = branch.clone();
    late["branch_id"] = json!("02");
    let (status, body) = post("registerBranch", late).await;
    assert_eq!(
        (status, body["dtm_result"].clone()),
        (409, json!("FAILURE"))
    );
    let done = eventually(|| async { b.count("confirm", "x") == 1 }).await;
    assert!(done);
    let q = eventually_some(|| async {
        let q = get_json(&app.http, &app.url(&format!("/api/dtmsvr/query?gid={gid}"))).await;
        (q["transaction"]["status"] == "succeed").then_some(q)
    })
    .await
    .expect("succeed");
    let confirm_row = q["branches"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["op"] == "confirm")
        .cloned()
        .unwrap_or_default();
    assert_eq!(confirm_row["status"], "succeed");
    assert_eq!(
        confirm_row["bin_data"], "eyJuIjogMX0=",
        "the data, base64 as DTM shows it"
    );
    // Once succeeded: prepare, submit and abort are refused with FAILURE.
    for path in ["prepare", "submit", "abort"] {
        let (status, body) = post(path, tb.clone()).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("succeed") && m.ends_with("FAILURE")),
            "{path}: {body}"
        );
    }
    // Unknown gids and missing ones.
    let unknown = json!({"gid": "never-prepared", "trans_type": "tcc"});
    assert_eq!(post("abort", unknown.clone()).await.0, 404);
    assert_eq!(
        post("submit", unknown).await.0,
        200,
        "DTM: nothing to confirm"
    );
    let q = get_json(&app.http, &app.url("/api/dtmsvr/query?gid=never-prepared")).await;
    assert_eq!(q, json!({"branches": [], "transaction": null}));
    let r = app.get("/api/dtmsvr/query").await;
    assert_eq!(r.status(), 400);
    let (status, _) = post("prepare", json!({"gid": "s1", "trans_type": "saga"})).await;
    assert_eq!(status, 400, "only TCC");
    // What PostgreSQL cannot store is refused up front, saying where.
    assert_eq!(
        post("prepare", json!({"gid": "nul-1", "trans_type": "tcc"}))
            .await
            .0,
        200
    );
    let (status, body) = post(
        "registerBranch",
        json!({"gid": "nul-1", "branch_id": "01", "trans_type": "tcc", "data": "a\u{0}b",
               "confirm": b.url("confirm", "n"), "cancel": b.url("cancel", "n")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("/data")),
        "{body}"
    );
    app.stop().await;
}

/// The options DTM's clients send (Go's sends them with `prepare` and `submit`): `wait_result`,
/// `timeout_to_fail`, `retry_interval` and `branch_headers`.
#[tokio::test]
async fn dtm_api_honours_the_options_dtm_clients_send() {
    let app = spawn_app().await;
    let b = Branches::start().await;
    let post = |path: &'static str, body: Value| dtm_post(&app, path, body);
    let branch = |gid: &str, id: &str, name: &str| {
        json!({"gid": gid, "branch_id": id, "trans_type": "tcc", "data": "{\"n\": 1}",
               "confirm": b.url("confirm", name), "cancel": b.url("cancel", name)})
    };
    // Completed: `submit` with wait_result answers once the confirms are done; the branch
    // headers go with every branch call; retry_interval is the branches' first retry delay.
    let options = json!({"gid": "opts-1", "trans_type": "tcc", "wait_result": true,
                         "timeout_to_fail": 30, "retry_interval": 1,
                         "branch_headers": {"x-tenant": "t1", "content-length": "1"}});
    assert_eq!(post("prepare", options.clone()).await.0, 200);
    assert_eq!(
        post("registerBranch", branch("opts-1", "01", "a")).await.0,
        200
    );
    let (status, body) = post("submit", options).await;
    assert_eq!(
        (status, body),
        (200, json!({"dtm_result": "SUCCESS"})),
        "after the outcome"
    );
    let calls = b.calls("confirm", "a");
    assert_eq!(calls.len(), 1, "confirmed before the answer");
    assert_eq!(
        header_in(&calls[0].headers, "x-tenant").as_deref(),
        Some("t1")
    );
    let q = get_json(&app.http, &app.url("/api/dtmsvr/query?gid=opts-1")).await;
    let job = app
        .get_job(
            q["transaction"]["tcc_job"]
                .as_str()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or_default(),
        )
        .await;
    assert_eq!(job["jobMaxTTL"], json!(30.0), "timeout_to_fail");
    assert_eq!(
        job["retryPolicy"]["initialDelay"],
        json!(1.0),
        "retry_interval"
    );

    // Refused: the first confirm answers FAILURE, so the branches are canceled and the job
    // fails; `submit` with wait_result says FAILURE.
    b.always(
        "confirm",
        "c",
        Reply::with(409, r#"{"dtm_result":"FAILURE"}"#),
    );
    let tb = json!({"gid": "opts-2", "trans_type": "tcc", "wait_result": true});
    assert_eq!(post("prepare", tb.clone()).await.0, 200);
    assert_eq!(
        post("registerBranch", branch("opts-2", "01", "c")).await.0,
        200
    );
    let (status, body) = post("submit", tb).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["dtm_result"], "FAILURE");
    assert_eq!(b.count("cancel", "c"), 1, "canceled before the answer");
    app.stop().await;
}
