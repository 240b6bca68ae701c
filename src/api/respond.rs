//! Answers: JSON with its `ETag`, a job's representation with its links, `304`s, the base of
//! absolute links, content negotiation (JSON or a page) and the request headers that shape an
//! answer (`Prefer: wait`, `If-Match`, `If-None-Match`).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::app::AppState;
use super::repr::{self, JobRepr};
use crate::store::JobRecord;

pub(super) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    // The representations are plain data: serializing them cannot fail. A job's document is
    // a kilobyte or two: room for it from the start, rather than growing 128 bytes by doubling.
    let mut bytes = Vec::with_capacity(2048);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
    }
    let etag = repr::etag(&bytes);
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// JSON with its `ETag`, and a `Link` header that states `links` (the document's own `_links`).
pub(super) fn linked_json(
    status: StatusCode,
    body: &impl serde::Serialize,
    links: &repr::Links,
) -> Response {
    let mut resp = json_response(status, body);
    if let Ok(v) = HeaderValue::from_str(&links.header()) {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

/// `304 Not Modified` instead of `resp` when `If-None-Match` names its `ETag`.
pub(super) fn unless_matched(resp: Response, headers: &HeaderMap) -> Response {
    match resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
    {
        Some(etag) if none_match(headers, etag) => not_modified(etag),
        _ => resp,
    }
}

pub(super) fn not_modified(etag: &str) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// A job's representation with `Link` headers (and `Location` when asked).
pub(super) fn job_response(
    status: StatusCode,
    base: &str,
    record: &JobRecord,
    location: bool,
) -> Response {
    let body = JobRepr::new(base, record);
    let mut resp = linked_json(status, &body, &body.links);
    if location && let Ok(v) = HeaderValue::from_str(&format!("{base}/jobs/{}", record.job.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Each task's outcome, for a problem body.
pub(super) fn outcomes(record: &JobRecord) -> Value {
    serde_json::to_value(repr::task_outcomes(record)).unwrap_or_default()
}

/// The base of absolute links: `TCC_PUBLIC_URL`, else `http://{Host}`.
pub(super) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.settings.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| state.settings.listen.to_string());
    format!("http://{host}")
}

/// `Prefer: wait=N` (RFC 7240), capped at `max`.
pub(super) fn prefer_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait")).then(|| v.trim().parse::<f64>().ok())?
        })
        .find(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(max.as_secs_f64())))
}

/// `If-Match`: the ETags given, or `None` without the header.
pub(super) fn if_match(headers: &HeaderMap) -> Option<Vec<String>> {
    let v = headers.get(header::IF_MATCH)?;
    Some(
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .map(|t| t.trim().to_string())
            .collect(),
    )
}

/// Whether the `If-Match` tags name `etag` (or `*`).
pub(super) fn matches_any(tags: &[String], etag: &str) -> bool {
    tags.iter().any(|t| t == etag || t == "*")
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub(super) fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
        })
}
