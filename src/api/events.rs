//! `GET /jobs/{id}/events`: the job's event log, a page at a time, or with
//! `Accept: text/event-stream` a live stream of it (SSE) that ends when the job does.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::app::AppState;
use super::db::{db, wait_change, within};
use super::error::{ApiError, ProblemType};
use super::extract::JobPath;
use super::repr::{self, EventListRepr, EventRepr};
use super::respond::base_url;
use crate::domain::{JobId, JobStatus};
use crate::store::{self, StoredEvent};

/// The default and the largest page.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// The most events one read of a stream takes.
const STREAM_BATCH: i64 = 500;
/// How long a stream waits for news before it looks again anyway: events written by another
/// instance are not announced here.
const STREAM_RECHECK: Duration = Duration::from_millis(500);

struct Query {
    after: i64,
    limit: i64,
}

fn parse_query(q: Option<&str>, headers: &HeaderMap) -> Result<Query, ApiError> {
    let mut query = Query {
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "after" => query.after = parse_seq("query parameter after", &v)?,
            "limit" => query.limit = v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query parameter limit: {v:?} is not a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other}: unknown; use after or limit"
                )));
            }
        }
    }
    // An event stream resuming: the last event it had.
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().unwrap_or_default();
        query.after = parse_seq("the Last-Event-ID header", v)?;
    }
    Ok(query)
}

fn parse_seq(what: &str, v: &str) -> Result<i64, ApiError> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{what}: {v:?} is not an event's sequence number (a whole number, 0 or more)"
            ))
        })
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

async fn read(
    state: &AppState,
    id: &JobId,
    after: i64,
    limit: i64,
) -> Result<(JobStatus, Vec<StoredEvent>), ApiError> {
    let client = db(state).await?;
    within(state, store::list_events(&client, id, after, limit))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

#[utoipa::path(get, path = "/jobs/{jobID}/events", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("after" = Option<i64>, Query, description = "Events after this seq"), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000)), responses((status = 200, description = "The job's events, in order (text/event-stream: live)", content((crate::api::repr::EventListRepr = "application/json"), (String = "text/event-stream"))), (status = 400, description = "A parameter is malformed"), (status = 404, description = "No such job")))]
pub async fn events(
    State(state): State<AppState>,
    JobPath(id): JobPath,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = parse_query(q.as_deref(), &headers)?;
    if wants_stream(&headers) {
        // The job must exist before the stream starts: a 404 is an answer, not an event.
        let (status, first) = read(&state, &id, query.after, STREAM_BATCH).await?;
        let Ok(permit) = state.streams.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::Overloaded,
                "the coordinator is serving as many event streams as it takes at once; try again shortly",
            ));
        };
        let sse = Sse::new(live(state, id, status, first, query.after, permit))
            .keep_alive(KeepAlive::default());
        let mut resp = sse.into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(resp);
    }
    let (status, page) = read(&state, &id, query.after, query.limit).await?;
    let base = base_url(&state, &headers);
    let job = format!("{base}/jobs/{id}");
    let mut links = repr::Links::default();
    links.add(
        "self",
        format!("{job}/events?after={}&limit={}", query.after, query.limit),
        "GET",
        "This page of the job's events",
    );
    links.add("job", job.clone(), "GET", "The job");
    // A full page may have more after it; so may a job that has not ended.
    if let Some(last) = page.last().map(|e| e.seq)
        && (page.len() as i64 == query.limit || !status.is_terminal())
    {
        links.add(
            "next",
            format!("{job}/events?after={last}&limit={}", query.limit),
            "GET",
            "The events after these",
        );
    }
    let body = EventListRepr {
        job_id: &id,
        job_status: status.as_str(),
        events: page.iter().map(EventRepr::new).collect(),
        links,
    };
    let mut resp = (StatusCode::OK, axum::Json(&body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&body.links.header()) {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(resp)
}

fn sse_event(e: &StoredEvent) -> SseEvent {
    let data = serde_json::to_string(&EventRepr::new(e)).unwrap_or_default();
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.event.kind().as_str())
        .data(data)
}

/// What a stream has sent and knows.
struct Live {
    state: AppState,
    id: JobId,
    after: i64,
    /// Events read and not yet sent, with the job's status when they were read.
    ready: Option<(JobStatus, Vec<StoredEvent>)>,
    changes: tokio::sync::broadcast::Receiver<crate::engine::Change>,
    ended: bool,
    /// Held while the stream lives: one of `AppState.streams`.
    _permit: OwnedSemaphorePermit,
}

/// The job's events after `after` as they are written, until the job ends (every event up to
/// its final status sent, then an `end` event with that status).
fn live(
    state: AppState,
    id: JobId,
    status: JobStatus,
    first: Vec<StoredEvent>,
    after: i64,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let changes = state.engine.subscribe();
    let live = Live {
        state,
        id,
        after,
        ready: Some((status, first)),
        changes,
        ended: false,
        _permit: permit,
    };
    stream::unfold(live, |mut l| async move {
        if l.ended {
            return None;
        }
        loop {
            let (status, page) = match l.ready.take() {
                Some(r) => r,
                None => match read(&l.state, &l.id, l.after, STREAM_BATCH).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The stream ends; a client reconnects with Last-Event-ID.
                        l.ended = true;
                        let detail = serde_json::json!({"detail": e.detail()}).to_string();
                        return Some((vec![SseEvent::default().event("error").data(detail)], l));
                    }
                },
            };
            if let Some(last) = page.last() {
                l.after = last.seq;
                return Some((page.iter().map(sse_event).collect(), l));
            }
            if status.is_terminal() {
                l.ended = true;
                let end = serde_json::json!({"jobStatus": status.as_str()}).to_string();
                return Some((vec![SseEvent::default().event("end").data(end)], l));
            }
            wait_change(&mut l.changes, &l.id, Instant::now() + STREAM_RECHECK).await;
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}
