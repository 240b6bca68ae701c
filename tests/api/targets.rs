//! The outbound target policy (`TCC_ALLOWED_TARGETS`): what a request may name (422 naming the
//! field), and what the coordinator connects to once names are resolved, for every call,
//! including the links a Try answer returns.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// The metadata address and its other spellings.
const METADATA: [&str; 5] = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[::ffff:a9fe:a9fe]/x",
    "http://169.254.10.1:8080/x",
    "http://[fe80::1]:8080/x",
];

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The pointers a 422 names, and whether each detail names the policy.
fn refused_pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("TCC_ALLOWED_TARGETS"))
        })
        .filter_map(|e| e["pointer"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn link_local_and_metadata_addresses_are_refused_wherever_a_request_names_them() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    for bad in METADATA {
        // A task URL.
        let (status, problem) = post_json(
            &app.http,
            &app.url("/jobs"),
            &job_of(&[("ok", p.url("ok")), ("bad", bad.to_string())]),
        )
        .await;
        assert_eq!(status, 422, "{bad}: {problem}");
        assert_eq!(
            refused_pointers(&problem),
            ["/tasks/1/taskURL"],
            "{problem}"
        );
        // Callbacks and the contact's webhook.
        let mut job = job_of(&[("ok", p.url("ok"))]);
        job["jobSuccessURL"] = json!(bad);
        job["jobFailedURL"] = json!(bad);
        job["contact"] = json!({"webhook": bad});
        let (status, problem) = post_json(&app.http, &app.url("/jobs"), &job).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(
            refused_pointers(&problem),
            ["/jobSuccessURL", "/jobFailedURL", "/contact/webhook"],
            "{problem}"
        );
        // A task given by its participant link.
        let expires = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
        let job = json!({"tasks": [{"taskID": "l", "participantLink": {"uri": bad, "expires": expires}}]});
        let (status, problem) = post_json(&app.http, &app.url("/jobs"), &job).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(
            refused_pointers(&problem),
            ["/tasks/0/participantLink/uri"],
            "{problem}"
        );
        // The Atomikos-compatible link set (400 there, as that contract has it).
        let set = json!({"participantLinks": [
            {"uri": p.url("fine"), "expires": expires},
            {"uri": bad, "expires": expires},
        ]});
        let r = app
            .http
            .put(app.url("/coordinator/confirm"))
            .header("content-type", "application/tcc+json")
            .body(set.to_string())
            .send()
            .await
            .expect("confirm");
        assert_eq!(r.status(), 400, "{bad}");
        let problem: Value = r.json().await.expect("problem");
        assert_eq!(
            refused_pointers(&problem),
            ["/participantLinks/1/uri"],
            "{problem}"
        );
    }
    // A participant registering a link on a job that waits for it.
    let job = app
        .submit(&json!({"tasks": [], "autoConfirm": false}))
        .await;
    let expires = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let (status, problem) = post_json(
        &app.http,
        &app.url(&format!("/jobs/{job}/participants")),
        &json!({"uri": METADATA[0], "expires": expires}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(refused_pointers(&problem), ["/uri"], "{problem}");
    // Nothing was stored but that one job, and nothing was ever called.
    assert_eq!(app.job_count().await, 1);
    assert_eq!(p.count_all(Op::Try), 0);
}

#[tokio::test]
async fn a_try_answer_whose_link_is_refused_fails_the_task_and_the_link_is_never_called() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let expires = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    p.set_default(
        Op::Try,
        "b",
        Reply::StatusBody(
            200,
            json!({"participantLink": {"uri": "http://169.254.169.254/latest/meta-data/iam", "expires": expires}})
                .to_string(),
        ),
    );
    let id = app
        .submit(&job_of(&[("a", p.url("a")), ("b", p.url("b"))]))
        .await;
    let done = app.wait_status(&id, "failed").await;
    let message = task(&done, "b")["lastMessage"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("169.254.169.254") && message.contains("TCC_ALLOWED_TARGETS"),
        "{message}"
    );
    assert!(
        task(&done, "b")["participantLink"].is_null(),
        "the refused link is not kept: {done}"
    );
    // The other task's reservation was released, as for any failed Try.
    assert!(p.released("a"), "{done}");
}

#[tokio::test]
async fn a_policy_allows_exactly_what_it_lists() {
    let app = spawn_app_with(&["--allowed-targets", "127.0.0.1, *.allowed.test, 10.0.0.0/8"]).await;
    let p = Participant::start().await;
    // Listed: the participant on 127.0.0.1 is called and the job completes.
    let id = app.submit(&job_of(&[("t", p.url("t"))])).await;
    app.wait_status(&id, "completed").await;
    assert!(p.confirmed("t"));
    // A name under the wildcard and an address in the block are accepted.
    for ok in ["http://shop.allowed.test:9/x", "http://10.20.30.40:9/x"] {
        let (status, body) = post_json(
            &app.http,
            &app.url("/jobs"),
            &json!({"tasks": [{"taskID": "t", "taskURL": ok}], "autoConfirm": false, "jobMaxTTL": 1}),
        )
        .await;
        assert_eq!(status, 202, "{ok}: {body}");
    }
    // Not listed: refused, the field named.
    for refused in [
        "http://localhost:9/x",
        "http://allowed.test/x",
        "http://127.0.0.2/x",
        "http://[::1]:9/x",
        "http://11.0.0.1/x",
        "http://169.254.169.254/x",
    ] {
        let (status, problem) = post_json(
            &app.http,
            &app.url("/jobs"),
            &job_of(&[("t", refused.to_string())]),
        )
        .await;
        assert_eq!(status, 422, "{refused}: {problem}");
        assert_eq!(
            refused_pointers(&problem),
            ["/tasks/0/taskURL"],
            "{problem}"
        );
    }
}

#[tokio::test]
async fn a_bad_policy_stops_start_up_naming_the_setting_and_the_entry() {
    // A bad entry; and the operators' webhook must be allowed too.
    for (setting, value, named) in [
        (
            "TCC_ALLOWED_TARGETS",
            "pay.example, http://x.example",
            "http://x.example",
        ),
        (
            "TCC_HEURISTIC_WEBHOOK",
            "http://169.254.169.254/hook",
            "link-local",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
            .args(["serve"])
            .env(setting, value)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{setting}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(setting) && err.contains(named), "{err}");
    }
}

/// A coordinator whose resolver sees `hosts` (lines of /etc/hosts) as well, through a private
/// mount namespace; `None` when this machine cannot make one (not root), outside CI.
fn start_with_hosts(db: &str, hosts: &str) -> Option<Process> {
    let file = std::env::temp_dir().join(format!("tcc-hosts-{}", uuid::Uuid::new_v4().simple()));
    let system = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write(&file, format!("{hosts}\n{system}")).expect("hosts file");
    let probe = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!("mount --bind {} /etc/hosts", file.display()))
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "unshare -m with mount --bind failed: the CI machine runs the tests as root"
        );
        eprintln!("skipped: cannot make a mount namespace here (unshare -m needs root)");
        return None;
    }
    let script = format!(
        "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
        file.display()
    );
    Some(start_process_via(
        &["unshare", "-m", "sh", "-c", &script],
        db,
        "targets-hosts",
        &[],
    ))
}

#[tokio::test]
async fn a_name_that_resolves_to_a_refused_address_is_never_connected_to() {
    let db = fresh_database().await;
    let p = Participant::start().await;
    let Some(coordinator) = start_with_hosts(
        &db,
        "169.254.169.254 metadata.test\nfe80::1 metadata6.test\n127.0.0.1 fine.test",
    ) else {
        return;
    };
    let http = reqwest::Client::new();
    coordinator.wait_ready(&http).await;
    let port = p
        .url("x")
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next().map(str::to_string))
        .expect("the participant's port");
    // The name is allowed (the default `*`), so the job is accepted; the call is not made.
    for name in ["metadata.test", "metadata6.test"] {
        let url = format!("http://{name}:{port}/try/r");
        let id = submit_to(&http, &coordinator.addr, &job_of(&[("t", url)])).await;
        let job = wait_for_status(&http, &coordinator.addr, &id, "failed").await;
        let message = task(&job, "t")["lastMessage"].as_str().unwrap_or_default();
        assert!(
            message.contains("resolves only to addresses TCC_ALLOWED_TARGETS refuses"),
            "{name}: {message}"
        );
    }
    // The same resolver lets an allowed address through: the participant is reached by name.
    let url = format!("http://fine.test:{port}/try/ok");
    let id = submit_to(&http, &coordinator.addr, &job_of(&[("t", url)])).await;
    wait_for_status(&http, &coordinator.addr, &id, "completed").await;
    assert!(p.confirmed("ok"));
    assert_eq!(p.count(Op::Try, "r"), 0);
}
