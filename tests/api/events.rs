//! The event log: `GET /jobs/{id}/events`, paged and as a live `text/event-stream`.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::participant::{Op, Participant, Reply};

/// Every event of a job, following `next` links from a first page of `limit`.
pub(crate) async fn all_events(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    limit: usize,
) -> Vec<Value> {
    let mut url = format!("{base}/jobs/{id}/events?limit={limit}");
    let mut events = Vec::new();
    loop {
        let page = get_json(http, &url).await;
        let got = page["events"].as_array().cloned().unwrap_or_default();
        assert!(got.len() <= limit, "a page longer than asked: {page}");
        let done = got.is_empty();
        events.extend(got);
        match page["_links"]["next"]["href"].as_str() {
            Some(next) if !done => url = next.to_string(),
            _ => return events,
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test]
async fn the_log_tells_a_job_from_acceptance_to_completion_in_order() {
    let app = spawn_app().await;
    let p = Participant::start().await;
    p.script(Op::Confirm, "ev-b", vec![Reply::Status(503), Reply::Ok]);
    let mut doc = job_of(&[("a", p.url("ev-a")), ("b", p.url("ev-b"))]);
    doc["autoConfirm"] = json!(false);
    let id = app.submit(&doc).await;
    app.wait_status(&id, "reserved").await;
    assert_eq!(app.post(&format!("/jobs/{id}/confirm")).await.status(), 202);
    app.wait_status(&id, "completed").await;

    // Paged two at a time, the log is the same as in one page, numbered 1, 2, 3, ...
    let events = all_events(&app.http, &app.addr, &id, 2).await;
    let whole = all_events(&app.http, &app.addr, &id, 1000).await;
    assert_eq!(events, whole);
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "{events:#?}"
    );

    // The job's statuses, in order, from acceptance to the end.
    let statuses: Vec<&str> = of_type(&events, "status")
        .iter()
        .filter_map(|e| e["jobStatus"].as_str())
        .collect();
    assert_eq!(statuses.first(), Some(&"pending"), "{events:#?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{events:#?}");
    let at = |s: &str| statuses.iter().position(|x| *x == s);
    assert!(at("reserved") < at("confirming") && at("confirming") < at("completed"));

    // Every participant call, with what came back.
    let calls = of_type(&events, "call");
    let call = |task: &str, op: &str, attempt: i64| {
        calls
            .iter()
            .find(|c| c["taskID"] == task && c["op"] == op && c["attempt"] == attempt)
            .unwrap_or_else(|| panic!("no {op} #{attempt} of {task} in {events:#?}"))
    };
    for t in ["a", "b"] {
        let c = call(t, "try", 1);
        assert_eq!(c["httpStatus"], 201);
        assert_eq!(c["taskStatus"], "reserved");
        assert!(c["durationMs"].as_i64().is_some_and(|d| d >= 0), "{c}");
    }
    assert_eq!(call("b", "confirm", 1)["httpStatus"], 503);
    assert_eq!(call("b", "confirm", 1)["taskStatus"], "confirming");
    assert_eq!(call("b", "confirm", 2)["httpStatus"], 204);
    assert_eq!(call("b", "confirm", 2)["taskStatus"], "confirmed");
    assert_eq!(calls.len(), 5, "two Tries and three confirms: {calls:#?}");

    // The client's confirm, with who asked, between reserved and confirming.
    let seq_of = |pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .find(|e| pred(e))
            .and_then(|e| e["seq"].as_i64())
    };
    let confirm = seq_of(&|e| e["type"] == "action" && e["action"] == "confirm");
    let reserved = seq_of(&|e| e["jobStatus"] == "reserved");
    let confirming = seq_of(&|e| e["jobStatus"] == "confirming");
    assert!(reserved < confirm && confirm < confirming, "{events:#?}");
    let action = events
        .iter()
        .find(|e| e["action"] == "confirm")
        .expect("the confirm");
    assert_eq!(action["actor"], "anonymous");

    // The job links to its log; an unknown job and a bad cursor are refused.
    let job = app.get_job(&id).await;
    assert_eq!(
        job["_links"]["events"]["href"],
        app.url(&format!("/jobs/{id}/events"))
    );
    assert_eq!(app.get("/jobs/no-such-job/events").await.status(), 404);
    let bad = app.get(&format!("/jobs/{id}/events?after=-1")).await;
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("after"))
    );
}

/// A text/event-stream, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

impl Stream {
    async fn open(http: &reqwest::Client, url: &str, last_id: Option<&str>) -> Stream {
        let mut req = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("open the stream");
        assert_eq!(resp.status(), 200);
        assert!(
            header_text(&resp, "content-type").starts_with("text/event-stream"),
            "{:?}",
            resp.headers()
        );
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event; `None` when the stream ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("JSON data");
                return Some(Sse { id, event, data });
            }
            let chunk = tokio::time::timeout(PATIENCE, self.resp.chunk())
                .await
                .expect("the stream went quiet")
                .expect("read the stream")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Every event until the stream ends.
    async fn rest(&mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

#[tokio::test]
async fn the_stream_follows_a_job_driven_by_another_instance_and_resumes_where_it_left() {
    let db = fresh_database().await;
    let driver = spawn_app_on(&db, &[]).await;
    let watcher = spawn_app_on(&db, &[]).await;
    let p = Participant::start().await;
    let mut doc = job_of(&[("a", p.url("live-a")), ("b", p.url("live-b"))]);
    doc["autoConfirm"] = json!(false);
    // The job is accepted, and so driven, by the first instance; the second only reads.
    let id = driver.submit(&doc).await;
    driver.wait_status(&id, "reserved").await;

    let url = watcher.url(&format!("/jobs/{id}/events"));
    let mut stream = Stream::open(&watcher.http, &url, None).await;
    // What was there before the stream opened comes first, up to the reservation.
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Sse| e.data["jobStatus"] == "reserved") {
        seen.push(stream.next().await.expect("the events so far"));
    }
    // Then what happens while it is open.
    assert_eq!(
        driver.post(&format!("/jobs/{id}/confirm")).await.status(),
        202
    );
    seen.extend(stream.rest().await);
    let end = seen.last().expect("events").clone();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["jobStatus"], "completed");
    let ids: Vec<i64> = seen
        .iter()
        .filter_map(|e| e.id.as_deref().and_then(|i| i.parse().ok()))
        .collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "{seen:#?}");
    for e in &seen[..seen.len() - 1] {
        assert_eq!(
            e.data["seq"].as_i64(),
            e.id.as_deref().and_then(|i| i.parse().ok())
        );
        assert_eq!(e.event, e.data["type"].as_str().unwrap_or("?"));
    }
    assert!(
        seen.iter()
            .any(|e| e.data["op"] == "confirm" && e.data["taskStatus"] == "confirmed"),
        "{seen:#?}"
    );
    // The stream holds exactly the log.
    let log = all_events(&watcher.http, &watcher.addr, &id, 1000).await;
    assert_eq!(log.len(), ids.len());

    // Resuming after event 3 gives 4, 5, ... and the end, nothing twice.
    let mut again = Stream::open(&watcher.http, &url, Some("3")).await;
    let resumed = again.rest().await;
    let resumed_ids: Vec<i64> = resumed
        .iter()
        .filter_map(|e| e.id.as_deref().and_then(|i| i.parse().ok()))
        .collect();
    assert_eq!(resumed_ids, (4..=ids.len() as i64).collect::<Vec<_>>());
    assert_eq!(resumed.last().map(|e| e.event.as_str()), Some("end"));
}
