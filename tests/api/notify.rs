//! Being told: callbacks on a job's end, calls for help on a heuristic outcome (the contact's
//! webhook, the operators' webhook, email), signed, retried until the receiver is back, and
//! delivered after a coordinator crash.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};
use crate::try_first::{LONG_WAIT, job_statuses, post_job};

/// One delivery as a receiver got it.
#[derive(Debug, Clone)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name)
    }
}

/// In a receiver's script: hold the request and never answer.
const STALL: u16 = 0;

#[derive(Default)]
struct Inbox {
    got: HashMap<String, Vec<Got>>,
    /// Statuses to answer, per path, before answering 200.
    script: HashMap<String, VecDeque<u16>>,
}

/// A webhook receiver: records every POST by path; can be told to fail a few times first.
#[derive(Clone)]
struct Receiver {
    base: String,
    inbox: Arc<Mutex<Inbox>>,
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answer = {
        let mut i = inbox.lock().unwrap_or_else(|p| p.into_inner());
        let answer = i
            .script
            .get_mut(&path)
            .and_then(|q| q.pop_front())
            .unwrap_or(200);
        if answer == 200 {
            i.got.entry(path).or_default().push(Got { headers, body });
        }
        answer
    };
    if answer == STALL {
        // Never answers: the coordinator's timeout must end the call.
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(answer).unwrap_or(StatusCode::OK)
}

impl Receiver {
    async fn start_on(listener: tokio::net::TcpListener) -> Receiver {
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(inbox.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, inbox }
    }

    async fn start() -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Receiver::start_on(l).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn fail_first(&self, path: &str, statuses: &[u16]) {
        let mut i = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        i.script
            .entry(path.to_string())
            .or_default()
            .extend(statuses);
    }

    fn got(&self, path: &str) -> Vec<Got> {
        let i = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        i.got.get(path).cloned().unwrap_or_default()
    }

    async fn wait_for(&self, path: &str) -> Got {
        let first = eventually_some(|| async { self.got(path).first().cloned() }).await;
        first.unwrap_or_else(|| panic!("nothing delivered to /{path}"))
    }
}

/// The check the README gives receivers: HMAC-SHA256 of the exact body with the shared secret,
/// in hex, after `sha256=`.
fn verify(secret: &str, got: &Got) -> bool {
    let signature = got.header("tcc-signature").unwrap_or_default();
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(&got.body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == hex
}

fn notification<'a>(job: &'a Value, target: &str) -> &'a Value {
    job["notifications"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["target"] == target))
        .unwrap_or_else(|| panic!("no notification to {target} in {job:#}"))
}

async fn wait_notification(app: &TestApp, id: &str, target: &str, status: &str) -> Value {
    let reached = eventually_some(|| async {
        let job = app.get_job(id).await;
        job["notifications"]
            .as_array()
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["target"] == target && n["status"] == status)
            })
            .then(|| notification(&job, target).clone())
    })
    .await;
    match reached {
        Some(notification) => notification,
        None => panic!(
            "the notification to {target} never became {status}: {:#}",
            app.get_job(id).await
        ),
    }
}

#[tokio::test]
async fn callbacks_and_calls_for_help_are_delivered_and_signed() {
    let r = Receiver::start().await;
    let secret = "s3cret";
    let ops = r.url("ops");
    let app = spawn_app_with(&["--webhook-secret", secret, "--heuristic-webhook", &ops]).await;
    let p = Participant::start().await;

    // A job that completes: its success callback, signed.
    let mut ok = job_of(&[("a", p.url("told-a"))]);
    ok["correlationID"] = json!("told-ok");
    ok["jobSuccessURL"] = json!(r.url("done"));
    ok["jobFailedURL"] = json!(r.url("failed"));
    let id = app.submit(&ok).await;
    let got = r.wait_for("done").await;
    assert!(
        verify(secret, &got),
        "the signature checks out: {:?}",
        got.headers
    );
    assert!(!verify("another secret", &got));
    assert_eq!(got.header("tcc-event").as_deref(), Some("job.completed"));
    assert_eq!(got.header("correlation-id").as_deref(), Some("told-ok"));
    let body = got.json();
    assert_eq!(body["event"], "job.completed");
    assert_eq!(body["job"]["jobID"], id.as_str());
    assert_eq!(body["job"]["jobStatus"], "completed");
    assert_eq!(
        body["job"]["_links"]["self"]["href"],
        app.url(&format!("/jobs/{id}"))
    );
    let n = wait_notification(&app, &id, &r.url("done"), "delivered").await;
    assert_eq!(
        (n["channel"].as_str(), n["attempts"].as_i64()),
        (Some("callback"), Some(1))
    );
    assert!(r.got("failed").is_empty() && r.got("ops").is_empty());

    // A heuristic job: its failure callback, its contact's webhook, the operators' webhook; its
    // contact's email fails, saying why.
    p.set_default(Op::Confirm, "told-h-b", Reply::Status(403));
    let mut bad = job_of(&[("a", p.url("told-h-a")), ("b", p.url("told-h-b"))]);
    bad["correlationID"] = json!("told-h");
    bad["jobFailedURL"] = json!(r.url("failed"));
    bad["contact"] =
        json!({"person": "Mook", "email": "mook@example.org", "webhook": r.url("pager")});
    let hid = app.submit(&bad).await;
    for path in ["failed", "pager", "ops"] {
        let got = r.wait_for(path).await;
        assert!(verify(secret, &got), "/{path} signed");
        let body = got.json();
        assert_eq!(body["event"], "job.heuristic", "/{path}");
        assert_eq!(body["job"]["jobID"], hid.as_str());
        assert_eq!(task(&body["job"], "b")["taskStatus"], "heuristic");
    }
    let email = wait_notification(&app, &hid, "mook@example.org", "failed").await;
    assert_eq!(email["channel"], "email");
    assert!(
        email["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("TCC_SMTP_URL")),
        "{email:#}"
    );
    // The operators' webhook is shown by its setting's name, never its URL.
    for target in [
        r.url("failed"),
        r.url("pager"),
        "TCC_HEURISTIC_WEBHOOK".into(),
    ] {
        wait_notification(&app, &hid, &target, "delivered").await;
    }
    // Each was delivered once.
    for path in ["done", "failed", "pager", "ops"] {
        assert_eq!(r.got(path).len(), 1, "/{path}");
    }
    // Counted (the recorder is the test process's: other tests count there too).
    let s = scrape(&app.http, &app.addr).await;
    let count = |channel: &str, outcome: &str| {
        s.sum(
            "tcc_notifications_total",
            &[("channel", channel), ("outcome", outcome)],
        )
    };
    let text = &s.text;
    assert!(count("callback", "delivered") >= 2.0, "{text}");
    assert!(count("webhook", "delivered") >= 2.0, "{text}");
    assert!(count("email", "failed") >= 1.0, "{text}");
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_gets_it_when_it_is_back() {
    let r = Receiver::start().await;
    r.fail_first("flaky", &[503, 500, 502]);
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut doc = job_of(&[("a", p.url("flaky-a"))]);
    doc["jobSuccessURL"] = json!(r.url("flaky"));
    let id = app.submit(&doc).await;
    let got = r.wait_for("flaky").await;
    assert_eq!(got.json()["event"], "job.completed");
    assert!(
        got.header("tcc-signature").is_none(),
        "no secret, no signature"
    );
    let n = wait_notification(&app, &id, &r.url("flaky"), "delivered").await;
    assert_eq!(n["attempts"], 4, "{n:#}");
    assert_eq!(r.got("flaky").len(), 1);
}

#[tokio::test]
async fn notifications_claimed_together_each_carry_their_own_job() {
    let r = Receiver::start().await;
    r.fail_first("held", &[STALL]);
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut first = job_of(&[("a", p.url("held-a"))]);
    first["jobSuccessURL"] = json!(r.url("held"));
    let held = app.submit(&first).await;
    // The notifier is held by that delivery until the call's timeout (2 s): the callbacks of
    // the jobs below gather meanwhile, and are claimed and read together.
    let attempted = eventually(|| async {
        app.get_job(&held).await["notifications"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["attempts"].as_i64() >= Some(1)))
    })
    .await;
    assert!(attempted, "the held callback is being delivered");
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut doc = job_of(&[
            ("a", p.url(&format!("many-{i}-a"))),
            ("b", p.url(&format!("many-{i}-b"))),
        ]);
        doc["correlationID"] = json!(format!("many-{i}"));
        doc["jobSuccessURL"] = json!(r.url(&format!("many-{i}")));
        ids.push(app.submit(&doc).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let got = r.wait_for(&format!("many-{i}")).await;
        assert_eq!(got.header("correlation-id"), Some(format!("many-{i}")));
        let job = &got.json()["job"];
        assert_eq!(job["jobID"], id.as_str());
        for t in ["a", "b"] {
            assert_eq!(
                task(job, t)["taskURL"],
                p.url(&format!("many-{i}-{t}")),
                "job {i}'s own tasks: {job:#}"
            );
        }
        let targets: Vec<&Value> = job["notifications"]
            .as_array()
            .map(|ns| ns.iter().map(|n| &n["target"]).collect())
            .unwrap_or_default();
        assert_eq!(
            targets,
            [&json!(r.url(&format!("many-{i}")))],
            "job {i}'s own notifications"
        );
        assert_eq!(r.got(&format!("many-{i}")).len(), 1);
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_timed_out_and_tried_again() {
    let r = Receiver::start().await;
    r.fail_first("stuck", &[STALL]);
    // The test app's TCC_CALL_TIMEOUT is 2 s: each delivery is bounded by it.
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut doc = job_of(&[("a", p.url("stuck-a"))]);
    doc["jobSuccessURL"] = json!(r.url("stuck"));
    let id = app.submit(&doc).await;
    let n = wait_notification(&app, &id, &r.url("stuck"), "delivered").await;
    assert_eq!(
        n["attempts"], 2,
        "the stalled attempt, then the delivery: {n:#}"
    );
    assert_eq!(r.got("stuck").len(), 1);
}

#[tokio::test]
async fn a_notification_outlives_a_coordinator_crash_before_its_delivery() {
    // The receiver's port, not listening yet: every attempt is refused.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = parked.local_addr().expect("address");
    drop(parked);
    let target = format!("http://{addr}/after-crash");
    let db = fresh_database().await;
    let http = reqwest::Client::new();
    let mut first = start_process(&db, "notify-1");
    first.wait_ready(&http).await;
    let p = Participant::start().await;
    let mut doc = job_of(&[("a", p.url("crash-a"))]);
    doc["jobSuccessURL"] = json!(target);
    let id = submit_to(&http, &first.addr, &doc).await;
    let url = format!("{}/jobs/{id}", first.addr);
    let tried = eventually(|| async {
        let job = get_json(&http, &url).await;
        job["notifications"][0]["attempts"].as_i64().unwrap_or(0) >= 1
            && job["notifications"][0]["status"] == "pending"
    })
    .await;
    assert!(tried, "the delivery was never attempted");
    first.kill();

    // The receiver comes up; a new coordinator on the same database delivers.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let r = Receiver::start_on(listener).await;
    let second = start_process(&db, "notify-2");
    second.wait_ready(&http).await;
    let got = r.wait_for("after-crash").await;
    assert_eq!(got.json()["job"]["jobID"], id.as_str());
    let url = format!("{}/jobs/{id}", second.addr);
    let delivered = eventually(|| async {
        get_json(&http, &url).await["notifications"][0]["status"] == "delivered"
    })
    .await;
    assert!(delivered);
}

/// A real SMTP server (aiosmtpd from PyPI, which `.ci/run` installs) keeping what it receives
/// in a maildir. `None` when it is not installed outside CI (the test says it skipped).
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl SmtpServer {
    fn start() -> Option<SmtpServer> {
        let found = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "aiosmtpd is missing (python3 -m pip install aiosmtpd); under CI that is a failure"
            );
            eprintln!("skipped: aiosmtpd is not installed (python3 -m pip install aiosmtpd)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("tcc-maildir-{}", uuid::Uuid::new_v4()));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).expect("maildir");
        }
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        Some(SmtpServer { child, port, dir })
    }

    async fn wait_listening(&self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let up = eventually(|| async { tokio::net::TcpStream::connect(&addr).await.is_ok() }).await;
        assert!(up, "aiosmtpd never listened");
    }

    /// The messages received so far, as text.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of a header in a message's text (its first line; folded lines joined).
fn mail_header(message: &str, name: &str) -> Option<String> {
    let head = message
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    let mut lines = head.split('\n').peekable();
    while let Some(line) = lines.next() {
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case(name)
        {
            let mut value = v.trim().to_string();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

#[tokio::test]
async fn a_heuristic_outcome_emails_the_contact_through_a_real_smtp_server() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    smtp.wait_listening().await;
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let app = spawn_app_with(&["--smtp-url", &url, "--smtp-from", "tcc@example.org"]).await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "mail-pay", Reply::Status(403));
    let mut doc = job_of(&[("seat", p.url("mail-seat")), ("pay", p.url("mail-pay"))]);
    doc["correlationID"] = json!("order-77");
    doc["contact"] = json!({"person": "Mook", "email": "mook@example.org"});
    let id = app.submit(&doc).await;
    let got = eventually(|| async { !smtp.messages().is_empty() }).await;
    assert!(
        got,
        "no email arrived: {:#}",
        app.get_job(&id).await["notifications"]
    );
    let message = smtp.messages().remove(0);
    assert_eq!(
        mail_header(&message, "To").as_deref(),
        Some("mook@example.org")
    );
    assert_eq!(
        mail_header(&message, "From").as_deref(),
        Some("tcc@example.org")
    );
    let subject = mail_header(&message, "Subject").unwrap_or_default();
    assert!(
        subject.contains(&id) && subject.contains("order-77"),
        "{subject}"
    );
    let text = message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("\r\n", "\n");
    let job_url = app.url(&format!("/jobs/{id}"));
    for needle in [
        "seat: confirmed",
        "pay: heuristic",
        "HEURISTIC",
        job_url.as_str(),
        "/resolve",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let n = wait_notification(&app, &id, "mook@example.org", "delivered").await;
    assert_eq!(n["channel"], "email");
}

#[tokio::test]
async fn an_smtp_server_that_refuses_is_quoted_in_the_notification() {
    // An SMTP server that says no at once: a permanent refusal.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn
                .write_all(b"554 5.7.1 no mail from you today\r\n")
                .await;
        }
    });
    let url = format!("smtp://127.0.0.1:{port}");
    let app = spawn_app_with(&["--smtp-url", &url]).await;
    let p = Participant::start().await;
    p.set_default(Op::Confirm, "refused-b", Reply::Status(403));
    let mut doc = job_of(&[("a", p.url("refused-a")), ("b", p.url("refused-b"))]);
    doc["contact"] = json!({"email": "ops@example.org"});
    let id = app.submit(&doc).await;
    let n = wait_notification(&app, &id, "ops@example.org", "failed").await;
    assert!(
        n["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("no mail from you today")),
        "{n:#}"
    );
}

/// A job that its first Tries end before it is stored (`TCC_TRY_FIRST_WAIT`) is stored as
/// accepted, then ended by a save that carries its notification, as any end is.
#[tokio::test]
async fn a_job_its_first_tries_end_before_it_is_stored_is_stored_then_ended_and_told() {
    let r = Receiver::start().await;
    let app = spawn_app_with(LONG_WAIT).await;
    let p = Participant::start().await;
    p.set_default(Op::Try, "ended-a", Reply::Status(409));
    let mut doc = job_of(&[("a", p.url("ended-a"))]);
    doc["jobFailedURL"] = json!(r.url("failed"));
    let (status, body) = post_job(&app, &doc, None, PATIENCE).await;
    assert_eq!(status, 202, "{body:#}");
    // The refusal came within the wait, yet the job was stored as accepted: its end is written
    // after, with the notification.
    assert_eq!(body["jobStatus"], "trying", "{body:#}");
    let id = body["jobID"].as_str().expect("jobID").to_string();
    let got = r.wait_for("failed").await;
    assert_eq!(got.json()["event"], "job.failed");
    assert_eq!(got.json()["job"]["jobID"], id.as_str());
    let job = app.wait_status(&id, "failed").await;
    assert_eq!(job["failureReason"], "try-failed");
    assert_eq!(p.count(Op::Try, "ended-a"), 1);
    let log = crate::events::all_events(&app.http, &app.addr, &id, 1000).await;
    let seqs: Vec<i64> = log.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>(), "{log:#?}");
    assert_eq!(
        job_statuses(&log),
        ["pending", "trying", "failed"],
        "{log:#?}"
    );
    assert_eq!(
        log.iter().filter(|e| e["type"] == "call").count(),
        1,
        "{log:#?}"
    );
    app.stop().await;
}
