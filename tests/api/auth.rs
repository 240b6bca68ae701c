//! API keys and roles: who may do what, who did it, and what stays open.

use serde_json::json;

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

const READER: &str = "reader-secret-0001";
const WRITER: &str = "writer-secret-0001";
const OPS: &str = "ops-secret-000001x";

#[tokio::test]
async fn keys_and_roles_decide_who_may_do_what_and_name_who_did() {
    let keys = format!("reader:read:{READER},writer:submit:{WRITER},ops:admin:{OPS}");
    let app = spawn_app_with(&["--api-keys", &keys]).await;
    let p = Participant::start().await;
    use reqwest::Method;

    // No key, or an unknown one: 401, saying how to authenticate.
    for secret in [None, Some("not-a-known-secret-at-all")] {
        let (status, headers, problem) = call(&app, Method::GET, "/jobs", secret, None).await;
        assert_eq!(status, 401, "{problem:#}");
        assert_eq!(
            header_in(&headers, "www-authenticate").as_deref(),
            Some("Bearer realm=\"tcc-coordinator\"")
        );
        assert_eq!(problem["type"], "/problems/unauthorized");
    }
    // Health, metrics and the problem pages stay open.
    for path in [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/problems/unauthorized",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    // read may read, not submit: 403 naming the role needed.
    assert_eq!(
        call(&app, Method::GET, "/jobs", Some(READER), None).await.0,
        200
    );
    let mut doc = job_of(&[("a", p.url("auth-a")), ("b", p.url("auth-b"))]);
    doc["autoConfirm"] = json!(false);
    let (status, _, problem) = call(&app, Method::POST, "/jobs", Some(READER), Some(&doc)).await;
    assert_eq!(status, 403, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("submit") && d.contains("reader")),
        "{problem:#}"
    );
    // submit may create and confirm.
    let (status, _, job) = call(&app, Method::POST, "/jobs", Some(WRITER), Some(&doc)).await;
    assert_eq!(status, 202, "{job:#}");
    let id = job["jobID"].as_str().expect("id").to_string();
    // Waited for with the read-only key.
    let reader = client_with_key(READER);
    wait_for_status(&reader, &app.addr, &id, "reserved").await;
    p.set_default(Op::Confirm, "auth-b", Reply::Status(403));
    let (status, _, _) = call(
        &app,
        Method::POST,
        &format!("/jobs/{id}/confirm"),
        Some(WRITER),
        None,
    )
    .await;
    assert_eq!(status, 202);
    wait_for_status(&reader, &app.addr, &id, "heuristic").await;
    // resolve needs admin.
    let note = json!({"note": "refunded by hand"});
    let (status, _, problem) = call(
        &app,
        Method::POST,
        &format!("/jobs/{id}/resolve"),
        Some(WRITER),
        Some(&note),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("admin"))
    );
    let (status, _, job) = call(
        &app,
        Method::POST,
        &format!("/jobs/{id}/resolve"),
        Some(OPS),
        Some(&note),
    )
    .await;
    assert_eq!(status, 200, "{job:#}");
    // Who did what: the keys' names, never their secrets.
    assert_eq!(job["resolution"]["resolvedBy"], "ops");
    let (_, _, log) = call(
        &app,
        Method::GET,
        &format!("/jobs/{id}/events"),
        Some(READER),
        None,
    )
    .await;
    let actor = |action: &str| {
        log["events"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["action"] == action))
            .map(|e| e["actor"].clone())
    };
    assert_eq!(actor("confirm"), Some(json!("writer")));
    assert_eq!(actor("resolve"), Some(json!("ops")));
    for text in [log.to_string(), job.to_string()] {
        for secret in [READER, WRITER, OPS] {
            assert!(!text.contains(secret), "a secret in a representation");
        }
    }
}

#[tokio::test]
async fn a_bad_key_list_stops_start_up_naming_the_problem_never_the_secret() {
    let db = fresh_database().await;
    for (keys, says) in [
        ("ops:root:0123456789abcdef-secret", "role"),
        ("ops:admin:short-secret", "16 characters"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
            .arg("serve")
            .env("DATABASE_URL", &db)
            .env("TCC_LISTEN", "127.0.0.1:0")
            .env("TCC_API_KEYS", keys)
            .output()
            .await
            .expect("run the coordinator");
        assert!(!out.status.success(), "started with {keys:?}");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("TCC_API_KEYS") && text.contains(says),
            "{text}"
        );
        let secret = keys.rsplit(':').next().unwrap_or_default();
        assert!(!text.contains(secret), "the secret was printed: {text}");
    }
}
