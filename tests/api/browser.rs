//! The web console in a real browser: `tests/browser/console.mjs` drives Debian's chromium with
//! playwright-core against a coordinator with API keys (the browser signs in with HTTP Basic),
//! real participants and real jobs; this side then checks through the API that the clicks did
//! what they said. `.ci/run` installs chromium and the script's npm packages; outside CI a
//! missing one skips the test, saying so.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;
use crate::operator::heuristic_job;
use crate::participant::{Op, Participant, Reply};

const OPS: &str = "ops-console-secret-0001";

/// `node` and the npm packages of `tests/browser`, or `None` (skipped) outside CI.
fn browser_tools() -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let chromium = tool(&["chromium", "chromium-browser"], "Debian's chromium")?;
    let node = tool(&["node"], "Node.js")?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir()
        || !dir.join("node_modules/axe-core").is_dir()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tests/browser has no node_modules (npm ci there); under CI that is a failure"
        );
        eprintln!("skipped: tests/browser has no node_modules (run npm ci there)");
        return None;
    }
    Some((chromium, node, dir))
}

#[tokio::test]
async fn the_consoles_clicks_in_a_real_browser_do_what_they_say() {
    let Some((chromium, node, dir)) = browser_tools() else {
        return;
    };
    let keys = format!("ops:admin:{OPS}");
    let app = spawn_app_with(&["--api-keys", &keys]).await;
    let http = client_with_key(OPS);
    let p = Participant::start().await;
    let tag = "console-test";
    let waiting = |name: &str| {
        // Reserved until confirmed: long enough for a slow machine.
        p.set_default(Op::Try, name, Reply::ReserveFor(Duration::from_secs(600)));
        let mut job = job_of(&[("seat", p.url(name)), ("meal", p.url(&format!("{name}-2")))]);
        p.set_default(
            Op::Try,
            &format!("{name}-2"),
            Reply::ReserveFor(Duration::from_secs(600)),
        );
        job["autoConfirm"] = json!(false);
        job["jobMaxTTL"] = json!(600);
        job["tags"] = json!([tag]);
        job
    };
    let live = submit_to(&http, &app.addr, &waiting("live")).await;
    let reserved = submit_to(&http, &app.addr, &waiting("reserved")).await;
    let mut done = job_of(&[("seat", p.url("done"))]);
    done["tags"] = json!([tag]);
    let completed = submit_to(&http, &app.addr, &done).await;
    let heuristic = heuristic_job(&app.addr, &http, &p, "console-h").await;
    for id in [&live, &reserved] {
        wait_for_status(&http, &app.addr, id, "reserved").await;
    }
    wait_for_status(&http, &app.addr, &completed, "completed").await;
    wait_for_status(&http, &app.addr, &heuristic, "heuristic").await;

    // A definition to start from its form: its task's URL a template of the form's values.
    let definition = "hotel-stay";
    let stay = json!({
        "description": "A stay at one of our hotels",
        "tags": [tag],
        "sharedState": {"channel": "console"},
        "parameters": {
            "type": "object",
            "required": ["hotel"],
            "properties": {
                "hotel": {"type": "string", "title": "Hotel", "pattern": "^[a-z-]+$", "description": "The hotel's code: lower-case letters and dashes"},
                "nights": {"type": "integer", "title": "Nights", "minimum": 1, "default": 2, "description": "How many nights"},
                "room": {"type": "string", "title": "Room", "enum": ["single", "double"], "default": "double"},
                "breakfast": {"type": "boolean", "title": "Breakfast included"},
            },
        },
        "tasks": [{"taskID": "room", "taskURL": format!("{}{{?nights,room}}", p.url("stay-{hotel}"))}],
    });
    let put = http
        .put(format!("{}/job-definitions/{definition}", app.addr))
        .json(&stay)
        .send()
        .await
        .expect("PUT the definition");
    assert_eq!(put.status(), 201, "the definition is stored");

    let note = "Refunded the seat by hand <and> told the customer";
    let out = tokio::process::Command::new(node)
        .arg("console.mjs")
        .current_dir(&dir)
        .env("TCC_BASE", &app.addr)
        .env("TCC_USER", "ops")
        .env("TCC_PASSWORD", OPS)
        .env("CHROMIUM", chromium)
        .env("JOB_LIVE", &live)
        .env("JOB_RESERVED", &reserved)
        .env("JOB_HEURISTIC", &heuristic)
        .env("JOB_COMPLETED", &completed)
        .env("TAG", tag)
        .env("NOTE", note)
        .env("DEFINITION", definition)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the browser test ended within 5 minutes")
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser test failed:\n{}",
        printed(&out)
    );

    // What the clicks did, as the API tells.
    for id in [&live, &reserved] {
        wait_for_status(&http, &app.addr, id, "completed").await;
    }
    assert!(p.confirmed("reserved") && p.confirmed("reserved-2"));
    let job: Value = get_json(&http, &format!("{}/jobs/{heuristic}", app.addr)).await;
    assert_eq!(job["resolution"]["note"], note, "{job:#}");
    assert_eq!(job["resolution"]["resolvedBy"], "ops", "{job:#}");
    let events: Value = get_json(&http, &format!("{}/jobs/{reserved}/events", app.addr)).await;
    let confirm = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["action"] == "confirm")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        confirm["actor"], "ops",
        "the page's confirm is recorded as the key's: {events:#}"
    );

    // The job the form started: from the definition, with the form's values.
    let started: Value =
        get_json(&http, &format!("{}/jobs?definition={definition}", app.addr)).await;
    let jobs = started["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1, "one job started from the form: {started:#}");
    let id = jobs[0]["jobID"].as_str().unwrap_or_default();
    let job = wait_for_status(&http, &app.addr, id, "completed").await;
    assert_eq!(
        job["definition"],
        json!({"name": definition, "version": 1}),
        "{job:#}"
    );
    assert_eq!(
        job["sharedState"],
        json!({"channel": "console", "hotel": "seaside", "nights": 3, "room": "double", "breakfast": true}),
        "the form's values, typed as the schema says, with the default kept: {job:#}"
    );
    assert!(
        p.confirmed("stay-seaside"),
        "the task's URL was expanded from the form's values, and confirmed"
    );
    assert!(
        job["tasks"][0]["taskURL"]
            .as_str()
            .is_some_and(|u| u.ends_with("/try/stay-seaside?nights=3&room=double")),
        "{job:#}"
    );
}
