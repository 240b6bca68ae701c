//! The outside review's findings, each reproduced as the review did it: the promise (an Atomikos
//! confirm that no idempotency key can hijack, a job that no mapping can make unreadable), the
//! budgets that keep the process serving, and the inputs refused at the edge.

use serde_json::{Value, json};

use crate::atomikos::{put_links, reserve};
use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// A Try answer with these members beside the link.
fn answer_with(members: Value) -> Reply {
    Reply::ReserveWith(members.as_object().cloned().unwrap_or_default())
}

async fn post_job(app: &TestApp, headers: &[(&str, &str)], job: &Value) -> reqwest::Response {
    let mut req = app.http.post(app.url("/jobs")).json(job);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("POST /jobs")
}

/// The pointers of a 422's errors.
async fn refused_pointers(r: reqwest::Response) -> Vec<String> {
    let status = r.status();
    let body: Value = r.json().await.expect("a problem");
    assert!(
        status == 422 || status == 400,
        "refused, not {status}: {body:#}"
    );
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["pointer"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Finding 1: a client's `Idempotency-Key` and the key the Atomikos endpoints derive from a link
/// set live apart. A job posted under `atomikos-confirm:<digest of the victim's set>` is just a
/// job; the victim's confirm confirms the victim's link.
#[tokio::test]
async fn an_idempotency_key_cannot_stand_in_for_an_atomikos_confirm() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let link = reserve(&p, "victim").await;
    let set = json!({"participantLinks": [link.clone()]});
    let digest = tcc_coordinator::domain::request::parse_link_set(&set, 10, chrono::Utc::now())
        .expect("a link set")
        .digest();
    let key = format!("atomikos-confirm:{digest}");
    let attacker = json!({"autoConfirm": false, "tasks": []});
    let r = post_job(&app, &[("idempotency-key", key.as_str())], &attacker).await;
    assert_eq!(r.status(), 202, "the attacker's job is accepted as any job");
    let attackers_job = header_text(&r, "location");

    let r = put_links(&app, "confirm", &[link]).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    assert_ne!(header_text(&r, "location"), attackers_job);
    assert!(p.confirmed("victim"), "the victim's link is confirmed");
    assert_eq!(p.count(Op::Confirm, "victim"), 1);
    // And the client's key still replays the client's job.
    let again = post_job(&app, &[("idempotency-key", key.as_str())], &attacker).await;
    assert_eq!(header_text(&again, "location"), attackers_job);
}

/// A value `levels` arrays deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("deep"), |v, _| json!([v]))
}

/// Finding 2: a mapping's pointer deeper than a body may nest is refused at submit; a Try answer
/// whose value would nest the shared state too deep is not written (the task says so), and the
/// job stays readable, ends, and settles its participant.
#[tokio::test]
async fn no_output_mapping_can_make_a_job_unreadable() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let deep_target = "/a".repeat(128);
    let mut job = job_of(&[("a", p.url("a"))]);
    job["tasks"][0]["outputMapping"] = json!({deep_target.clone(): "/participantLink/uri"});
    let r = post_job(&app, &[], &job).await;
    assert_eq!(r.status(), 422);
    let escaped = deep_target.replace('/', "~1");
    assert_eq!(
        refused_pointers(r).await,
        vec![format!("/tasks/0/outputMapping/{escaped}")]
    );

    // Within the pointer limit, but the answer's value is deep: 32 + 40 levels.
    p.script(
        Op::Try,
        "b",
        vec![answer_with(json!({"deep": nested(40), "flat": 7}))],
    );
    let mut job = job_of(&[("b", p.url("b"))]);
    job["tasks"][0]["outputMapping"] = json!({"/a".repeat(32): "/deep", "/flat": "/flat"});
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "completed").await;
    assert!(p.confirmed("b"));
    assert_eq!(done["sharedState"], json!({"flat": 7}), "{done:#}");
    // The Try's event says why the value was not written.
    let events = get_json(&app.http, &app.url(&format!("/jobs/{id}/events"))).await;
    let said = events["events"].as_array().is_some_and(|all| {
        all.iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("outputMapping") && m.contains("at most 64"))
        })
    });
    assert!(said, "{events:#}");
    for path in [format!("/jobs/{id}"), format!("/jobs/{id}/events")] {
        assert_eq!(app.get(&path).await.status(), 200, "{path}");
    }
}

/// Finding 8: the output mappings read the whole Try answer, not the copy kept for display (at
/// most 64 KiB).
#[tokio::test]
async fn output_mappings_read_an_answer_over_64_kib() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(
        Op::Try,
        "big",
        vec![answer_with(
            json!({"padding": "x".repeat(100 * 1024), "booking": "B-42"}),
        )],
    );
    let mut job = job_of(&[("big", p.url("big"))]);
    job["tasks"][0]["outputMapping"] = json!({"/booking": "/booking"});
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "completed").await;
    assert_eq!(
        done["sharedState"]["booking"], "B-42",
        "{}",
        done["sharedState"]
    );
    assert!(
        task(&done, "big")["tryResponse"].is_null(),
        "too large to keep for display"
    );
}

/// Finding 3: a crowd of long polls does not take the budget of health checks and submissions.
#[tokio::test]
async fn long_polls_never_starve_health_checks_or_submissions() {
    let app = spawn_app_with(&["--max-inflight-requests", "4"]).await;
    let id = app
        .submit(&json!({"autoConfirm": false, "jobMaxTTL": 120, "tasks": []}))
        .await;
    let r = app.get(&format!("/jobs/{id}/progress")).await;
    let etag = header_text(&r, "etag");
    let (http, url) = (app.http.clone(), app.url(&format!("/jobs/{id}/progress")));
    let poll = move |secs: u32| {
        http.get(&url)
            .header("prefer", format!("wait={secs}"))
            .header("if-none-match", etag.as_str())
            .send()
    };
    // Four clients that long-poll again as soon as they are answered (refused or not), so that
    // the budget stays full.
    let mut polls = Vec::new();
    for _ in 0..4 {
        let poll = poll.clone();
        polls.push(tokio::spawn(async move {
            loop {
                let _ = poll(30).await;
            }
        }));
    }
    // Once the waiting budget is full, one more long poll is refused at once...
    let full = eventually(|| async { poll(1).await.is_ok_and(|r| r.status() == 503) }).await;
    assert!(full, "the waiting requests' budget fills");
    // ...and the health checks and a submission are not.
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    let r = post_job(&app, &[], &json!({"autoConfirm": false, "tasks": []})).await;
    assert_eq!(r.status(), 202);
    for poll in polls {
        poll.abort();
    }
}

/// Finding 6: a forged cursor (a timestamp PostgreSQL cannot hold, an id that is none) is a 400
/// naming `cursor`, on the list, the heuristics and the console's list.
#[tokio::test]
async fn a_forged_cursor_is_a_bad_request_naming_cursor() {
    let app = spawn_app().await;
    let hex = |raw: &str| raw.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for raw in ["-6300000000000000000|0193-abc", "1700000000000000|a b"] {
        let cursor = hex(raw);
        for (path, accept) in [
            ("/jobs", "application/json"),
            ("/heuristics", "application/json"),
            ("/jobs", "text/html"),
        ] {
            let r = app
                .http
                .get(app.url(&format!("{path}?cursor={cursor}")))
                .header("accept", accept)
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), 400, "{path} ({accept}) with {raw}");
            let text = r.text().await.unwrap_or_default();
            assert!(text.contains("cursor"), "{path}: {text}");
        }
    }
}

/// Finding 7: a URL the HTTP client could never call is refused, and so is a link expiring
/// further ahead than a link may (confirms are retried until it expires).
#[tokio::test]
async fn uncallable_urls_and_links_without_end_are_refused() {
    let app = spawn_app().await;
    let long = format!("http://127.0.0.1:9/{}", "x".repeat(70_000));
    let far = (chrono::Utc::now() + chrono::Duration::days(3650)).to_rfc3339();
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let job = json!({"tasks": [
        {"taskID": "a", "taskURL": long},
        {"taskID": "b", "participantLink": {"uri": "http://127.0.0.1:9/r/1", "expires": far}},
        {"taskID": "c", "participantLink": {"uri": long, "expires": soon}},
    ]});
    let r = post_job(&app, &[], &job).await;
    assert_eq!(
        refused_pointers(r).await,
        vec![
            "/tasks/0/taskURL",
            "/tasks/1/participantLink/expires",
            "/tasks/2/participantLink/uri"
        ]
    );
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let r = app
        .http
        .post(app.url(&format!("/jobs/{id}/participants")))
        .json(&json!({"uri": "http://127.0.0.1:9/r/2", "expires": far}))
        .send()
        .await
        .expect("register");
    assert_eq!(refused_pointers(r).await, vec!["/expires"]);
    let far_link = json!({"uri": "http://127.0.0.1:9/r/3", "expires": far});
    let r = put_links(&app, "confirm", &[far_link]).await;
    assert_eq!(
        refused_pointers(r).await,
        vec!["/participantLinks/0/expires"]
    );
}

/// Finding 9: a `correlationID` that cannot be sent as a header value is refused at submit.
#[tokio::test]
async fn a_correlation_id_that_cannot_be_a_header_is_refused() {
    let app = spawn_app().await;
    for bad in ["order-1\r\nX-Injected: yes", "order\n2", "tab\there"] {
        let r = post_job(
            &app,
            &[],
            &json!({"correlationID": bad, "tasks": [{"taskURL": "http://127.0.0.1:9/try"}]}),
        )
        .await;
        assert_eq!(refused_pointers(r).await, vec!["/correlationID"], "{bad:?}");
    }
}

/// Finding 11: metadata addresses beyond link-local, and IPv6 spellings that carry
/// 169.254.169.254, are refused by the default policy.
#[tokio::test]
async fn metadata_addresses_in_any_spelling_are_refused() {
    let app = spawn_app().await;
    let hosts = [
        "[fd00:ec2::254]",
        "100.100.100.200",
        "[::169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",
        "[::ffff:0:a9fe:a9fe]",
        "[2002:a9fe:a9fe::]",
        "[fd00:ec2::23]",
        "192.0.0.192",
        "[64:ff9b:1:a9fe:a9:fe00::]",
    ];
    let tasks: Vec<Value> = hosts
        .iter()
        .map(|h| json!({"taskURL": format!("http://{h}/latest/meta-data/")}))
        .collect();
    let r = post_job(&app, &[], &json!({"tasks": tasks})).await;
    let want: Vec<String> = (0..hosts.len())
        .map(|i| format!("/tasks/{i}/taskURL"))
        .collect();
    assert_eq!(refused_pointers(r).await, want);
}

/// Finding 13: the cross-site check compares the whole origin: the right host under https (or
/// no scheme) is another site.
#[tokio::test]
async fn an_origin_with_the_right_host_but_another_scheme_is_cross_site() {
    let app = spawn_app().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let host = app.addr.trim_start_matches("http://").to_string();
    for origin in [format!("https://{host}"), host.clone()] {
        let r = app
            .http
            .delete(app.url(&format!("/jobs/{id}")))
            .header("origin", origin.as_str())
            .send()
            .await
            .expect("DELETE");
        assert_eq!(r.status(), 403, "{origin}");
    }
    let r = app
        .http
        .delete(app.url(&format!("/jobs/{id}")))
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 202, "the coordinator's own origin");
}

/// Finding 10: a start-up error about a setting that holds a secret does not repeat it.
#[tokio::test]
async fn start_up_errors_never_repeat_a_secret() {
    let secret = "Hunter2Hunter2Hunter2";
    let cases = [
        (
            "DATABASE_URL",
            format!("postgres://app:{secret}@db:notaport/tcc"),
        ),
        (
            "TCC_SMTP_URL",
            format!("smtp://mail:{secret}@mail.example?tls=sometimes"),
        ),
        ("TCC_API_KEYS", format!("ops:{secret}:admin")),
        ("TCC_SMTP_URL", format!("smtp://mail.example?tls={secret}")),
        (
            "TCC_HEURISTIC_WEBHOOK",
            format!("http://ops:{secret}@[x/hook"),
        ),
    ];
    for (name, value) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
            .arg("migrate")
            .env(name, &value)
            .env(
                "TCC_DATA_DIR",
                std::env::temp_dir().join("tcc-never-started"),
            )
            .output()
            .expect("run the binary");
        let text = printed(&out);
        assert!(!out.status.success(), "{name}: {text}");
        assert!(text.contains(name), "{name} is named: {text}");
        assert!(!text.contains(secret), "{name}: {text}");
    }
}

/// Finding 5: proxy variables do not route the coordinator's calls: a host name reaches the
/// resolver that enforces the target policy, never a proxy that would resolve it instead.
#[tokio::test]
async fn proxy_variables_never_carry_a_participant_call() {
    let db = fresh_database().await;
    // The "proxy" is a participant: were a call sent through it, it would answer the Try.
    let proxy = Participant::start().await;
    let proxy_url = proxy
        .url("x")
        .split("/try")
        .next()
        .unwrap_or_default()
        .to_string();
    let app = start_process_with(
        &db,
        "proxied",
        &[
            ("HTTP_PROXY", proxy_url.as_str()),
            ("http_proxy", proxy_url.as_str()),
            ("ALL_PROXY", proxy_url.as_str()),
        ],
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
    app.wait_ready(&http).await;
    let job = json!({"jobMaxTTL": 3, "tasks": [{"taskID": "a", "taskURL": "http://participant.tcc-test.invalid/try/a"}]});
    let id = submit_to(&http, &app.addr, &job).await;
    let ended = wait_for_status(&http, &app.addr, &id, "failed").await;
    assert_eq!(proxy.count(Op::Try, "a"), 0, "{ended:#}");
}

/// Read what the server sends until it closes the connection (or `PATIENCE` passes: `None`).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

/// Whether `/health/live` answers 200 within `PATIENCE`.
async fn live(app: &TestApp) -> bool {
    eventually(|| async {
        app.http
            .get(app.url("/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.addr.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Finding 4: a connection that never finishes its head, one that sends nothing, and an idle
/// keep-alive connection are closed after `TCC_HEADER_READ_TIMEOUT`.
#[tokio::test]
async fn connections_that_do_not_send_a_request_in_time_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&["--header-read-timeout", "1s"]).await;
    let mut trickle = connect(&app).await;
    trickle
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");
    let mut silent = connect(&app).await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a request");
    for (what, stream) in [
        ("half a head", &mut trickle),
        ("nothing", &mut silent),
        ("idle after a request", &mut idle),
    ] {
        let got = read_until_closed(stream).await;
        assert!(got.is_some(), "a connection that sent {what} is still open");
        if what == "idle after a request" {
            assert!(
                got.unwrap_or_default().starts_with("HTTP/1.1 200"),
                "answered first"
            );
        }
    }
}

/// Finding 4: open connections are capped; one more is answered 503 with a problem and closed,
/// and once one closes, a new one is served.
#[tokio::test]
async fn connections_over_the_cap_are_answered_503() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&["--max-connections", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app).await);
    }
    let refused = eventually(|| async {
        let mut extra = connect(&app).await;
        let _ = extra
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        read_until_closed(&mut extra).await.is_some_and(|answer| {
            answer.starts_with("HTTP/1.1 503")
                && answer.contains("application/problem+json")
                && answer.contains("TCC_MAX_CONNECTIONS")
        })
    })
    .await;
    assert!(refused, "a fourth connection is answered 503");
    held.clear();
    let served = live(&app).await;
    assert!(served, "served again once the held connections closed");
}

/// Finding 12: a malformed chunked body is a bad request (400, a problem), not "too large".
#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        )
        .await
        .expect("a request");
    let answer = read_until_closed(&mut stream).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("could not be read"), "{answer}");
}

// The second pass of the same probes, after the fixes above: what it found, each reproduced.

/// Second pass A: any token is a method to HTTP; the metrics' `method` label takes only the
/// methods the API answers, and `other`.
#[tokio::test]
async fn unknown_methods_never_grow_the_metrics() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    for i in 0..20 {
        let mut stream = connect(&app).await;
        let request = format!(
            "M{i:03}{} /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "X".repeat(100)
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let _ = read_until_closed(&mut stream).await;
    }
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    assert!(!metrics.contains("M000"), "a method name became a label");
    assert!(metrics.contains("method=\"other\""), "counted as other");
}

/// Second pass B: a client that stops reading what it asked for is closed once a write has made
/// no progress for `TCC_HEADER_READ_TIMEOUT`, and its connection slot is free again.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&["--header-read-timeout", "1s", "--max-connections", "2"]).await;
    let addr: std::net::SocketAddr = app
        .addr
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        let mut stream = socket.connect(addr).await.expect("connect");
        let many = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
        stream.write_all(many.as_bytes()).await.expect("send");
        stalled.push(stream);
    }
    // Both slots are held by clients that do not read; the server frees them by itself.
    let served = live(&app).await;
    assert!(served, "the stalled connections kept their slots");
    drop(stalled);
}

/// Second pass C: output mappings keep the shared state within its 256 KiB (so a client can
/// still write it); what would not fit is not written, and the task says so.
#[tokio::test]
async fn output_mappings_keep_the_shared_state_within_its_limit() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b"))]);
    for (i, name) in ["a", "b"].iter().enumerate() {
        p.script(
            Op::Try,
            name,
            vec![answer_with(json!({"big": "x".repeat(200 * 1024)}))],
        );
        job["tasks"][i]["outputMapping"] = json!({format!("/{name}"): "/big"});
    }
    let id = app.submit(&job).await;
    let done = app.wait_status(&id, "completed").await;
    let state = &done["sharedState"];
    assert!(
        state.to_string().len() <= 256 * 1024,
        "{} bytes",
        state.to_string().len()
    );
    assert_eq!(
        state.as_object().map(|m| m.len()),
        Some(1),
        "one of the two fits"
    );
    let r = app
        .http
        .patch(app.url(&format!("/jobs/{id}/shared-state")))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"note": "still writable"}"#)
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 200);
}

/// Second pass G and F: a head larger than any real request is refused (431) instead of held in
/// memory; a body announced larger than `TCC_MAX_BODY` is refused before it is sent.
#[tokio::test]
async fn oversized_heads_and_announced_bodies_are_refused_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    let head = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(100 * 1024)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut stream).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{",
        )
        .await
        .expect("a head");
    let mut first = [0u8; 12];
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first),
    )
    .await;
    assert!(read.is_ok(), "no answer before the body");
    assert_eq!(&first, b"HTTP/1.1 413");
}

/// Second pass I: an Atomikos set naming one link in two spellings is refused: the link would
/// be confirmed twice.
#[tokio::test]
async fn one_link_spelled_twice_is_one_link() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    let link = reserve(&p, "dd").await;
    let uri = link["uri"].as_str().unwrap_or_default().to_string();
    let other = format!("{}#again", uri.replacen("http://", "HTTP://", 1));
    let again = json!({"uri": other, "expires": link["expires"]});
    let r = put_links(&app, "confirm", &[link, again]).await;
    assert_eq!(refused_pointers(r).await, vec!["/participantLinks/1/uri"]);
    assert_eq!(p.count(Op::Confirm, "dd"), 0);
}

/// Second pass D: the operators' webhook URL (which may carry a token) is never shown in a job's
/// representation, which its client reads and its contact's webhook receives.
#[tokio::test]
async fn the_operators_webhook_is_never_shown() {
    let p = Participant::start().await;
    let secret_hook = format!(
        "{}/ops-hook/SECRETTOKEN",
        p.url("x").split("/try").next().unwrap_or_default()
    );
    let app = spawn_app_with(&["--heuristic-webhook", &secret_hook]).await;
    p.set_default(Op::Confirm, "b", Reply::Status(403));
    let mut job = job_of(&[("a", p.url("a")), ("b", p.url("b"))]);
    job["contact"] = json!({"webhook": "http://127.0.0.1:9/contact-hook"});
    let id = app.submit(&job).await;
    app.wait_status(&id, "heuristic").await;
    let shown = eventually(|| async {
        let job = app.get_job(&id).await;
        job["notifications"]
            .as_array()
            .is_some_and(|all| all.iter().any(|n| n["target"] == "TCC_HEURISTIC_WEBHOOK"))
    })
    .await;
    let job = app.get_job(&id).await;
    assert!(shown, "{:#}", job["notifications"]);
    assert!(
        !job.to_string().contains("SECRETTOKEN"),
        "{:#}",
        job["notifications"]
    );
    assert!(
        job.to_string().contains("contact-hook"),
        "the job's own contact is shown as it is"
    );
}

/// Second pass L: an `Idempotency-Key` is its API key's. Another key that sends the same key and
/// body is refused (422) and told nothing of the job; the holder's replay still answers its job.
#[tokio::test]
async fn an_idempotency_key_is_its_api_keys_own() {
    let (alice, bob) = ("alice-secret-000001", "bob-secret-00000001");
    let keys = format!("alice:submit:{alice},bob:submit:{bob}");
    let app = spawn_app_with(&["--api-keys", &keys]).await;
    let job = json!({"autoConfirm": false, "tasks": []});
    let post = |secret: &'static str| {
        app.http
            .post(app.url("/jobs"))
            .bearer_auth(secret)
            .header("idempotency-key", "order-1")
            .json(&job)
            .send()
    };
    let first = post(alice).await.expect("POST /jobs");
    assert_eq!(first.status(), 202);
    let alices_job = header_text(&first, "location");

    let r = post(bob).await.expect("POST /jobs");
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("location").is_none());
    let problem: Value = r.json().await.expect("a problem");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/problems/idempotency-key-reused")),
        "{problem:#}"
    );
    let id = alices_job.rsplit('/').next().unwrap_or_default();
    assert!(!problem.to_string().contains(id), "{problem:#}");

    let again = post(alice).await.expect("POST /jobs");
    assert_eq!(again.status(), 202);
    assert_eq!(header_text(&again, "location"), alices_job);
}

/// Second pass K: DNS rebinding. Without API keys, a browser's request that came by a host name
/// the coordinator does not know as its own (a page elsewhere that pointed its name at this
/// address, same-origin with itself) is refused, reads as well as actions; by IP address,
/// `localhost` or `TCC_PUBLIC_URL`'s host it is served, and so is any client but a browser.
#[tokio::test]
async fn a_browser_by_a_strange_host_name_cannot_use_an_open_coordinator() {
    let app = spawn_app().await;
    let id = app
        .submit(&json!({"autoConfirm": false, "tasks": []}))
        .await;
    let port = app.addr.rsplit(':').next().unwrap_or_default().to_string();
    let rebound = format!("rebound.example:{port}");
    let from = |host: &str, method: reqwest::Method, path: &str, browser: bool| {
        let mut req = app
            .http
            .request(method, app.url(path))
            .header("host", host)
            .header("accept", "application/json");
        if browser {
            req = req
                .header("origin", format!("http://{host}"))
                .header("sec-fetch-site", "same-origin");
        }
        req.send()
    };
    for (method, path) in [
        (reqwest::Method::GET, "/jobs".to_string()),
        (reqwest::Method::DELETE, format!("/jobs/{id}")),
    ] {
        let r = from(&rebound, method.clone(), &path, true)
            .await
            .expect("a request");
        assert_eq!(r.status(), 403, "{method} {path}");
        let problem: Value = r.json().await.expect("a problem");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("/problems/unknown-host")),
            "{problem:#}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("TCC_PUBLIC_URL")),
            "{problem:#}"
        );
    }
    let status = app.get_job(&id).await["jobStatus"].clone();
    assert!(status != "canceling" && status != "canceled", "{status}");
    // The problem pages and the console's assets are anyone's.
    let r = from(
        &rebound,
        reqwest::Method::GET,
        "/problems/unknown-host",
        true,
    )
    .await
    .expect("a request");
    assert_eq!(r.status(), 200);
    // Its own names, and a client that is no browser, are served.
    for (host, browser) in [
        (format!("127.0.0.1:{port}"), true),
        (format!("localhost:{port}"), true),
        (format!("[::1]:{port}"), true),
        (rebound.clone(), false),
    ] {
        let r = from(&host, reqwest::Method::GET, "/jobs", browser)
            .await
            .expect("a request");
        assert_eq!(r.status(), 200, "{host}, browser: {browser}");
    }
    // With a public URL, its host is the coordinator's own name.
    let public = format!("http://rebound.example:{port}");
    let named = spawn_app_with(&["--public-url", &public]).await;
    let r = named
        .http
        .get(named.url("/jobs"))
        .header("host", format!("rebound.example:{port}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("a request");
    assert_eq!(r.status(), 200);
}

/// Second pass F: a client that sends its body slowly holds a connection, not a place among the
/// requests in progress: while more slow senders than `TCC_MAX_INFLIGHT_REQUESTS` wait, every
/// submission is taken; each slow one is answered 408 once `TCC_HEADER_READ_TIMEOUT` passes.
#[tokio::test]
async fn slow_bodies_never_starve_submissions() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(&[
        "--max-inflight-requests",
        "2",
        "--header-read-timeout",
        "2s",
    ])
    .await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        stream
            .write_all(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tasks\"",
            )
            .await
            .expect("a head and a little of the body");
        slow.push(stream);
    }
    let answers = tokio::spawn(async move {
        let mut answers = Vec::new();
        for mut stream in slow {
            answers.push(read_until_closed(&mut stream).await);
        }
        answers
    });
    let mut taken = 0;
    while !answers.is_finished() || taken == 0 {
        let r = post_job(&app, &[], &json!({"autoConfirm": false, "tasks": []})).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        taken += 1;
    }
    for answer in answers.await.expect("the slow senders' answers") {
        let answer = answer.expect("a slow sender is answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("TCC_HEADER_READ_TIMEOUT"), "{answer}");
    }
}
