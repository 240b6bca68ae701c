//! The resources as HTML pages for people (the web console), by content negotiation on the
//! same URLs: a client that ranks `text/html` above `application/json` (a browser) gets a page;
//! `*/*`, no `Accept` and `application/json` get JSON. Pages are askama templates (`templates/`,
//! checked at compile time, auto-escaped, compiled into the binary with their CSS), filled from
//! the very representation the JSON answer serializes, so a page shows what the API says.
//!
//! So far: the job page (read only). The list, the overview, the heuristics page and the
//! actions as forms are still to come.

use askama::Template;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;
use super::repr::{JobRepr, ProgressRepr};
use crate::store::JobRecord;

/// Whether the client ranks `text/html` above `application/json` (RFC 9110 §12.5.1, q-values;
/// a wildcard counts for both, so `*/*` alone is a tie, and a tie is JSON).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" => json = json.max(q),
            "text/*" => html = html.max(q),
            "application/*" => json = json.max(q),
            "*/*" => {
                html = html.max(q);
                json = json.max(q);
            }
            _ => {}
        }
    }
    html > json
}

/// `Vary: Accept` on every answer of a negotiated resource.
pub fn vary_accept(mut resp: Response) -> Response {
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    resp
}

struct TaskRow {
    id: String,
    status: String,
    attempts: i64,
    link: Option<String>,
    expires: Option<String>,
    last_message: Option<String>,
}

struct NotificationRow {
    channel: String,
    target: String,
    status: String,
    attempts: i64,
    last_error: String,
}

struct LinkRow {
    href: String,
    title: String,
}

struct JobView {
    id: String,
    status: String,
    reason: Option<String>,
    description: Option<String>,
    correlation_id: String,
    created: String,
    deadline: String,
    attempt: i64,
    percent: u32,
    tasks: Vec<TaskRow>,
    shared_state: String,
    notifications: Vec<NotificationRow>,
    links: Vec<LinkRow>,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    base: String,
    job: JobView,
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn opt_text(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_string)
}

impl JobView {
    /// From the JSON the API answers for the same job.
    fn new(repr: &Value, percent: u32) -> Self {
        let tasks = repr["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| TaskRow {
                id: text(t, "taskID"),
                status: text(t, "taskStatus"),
                attempts: t["attempts"].as_i64().unwrap_or_default(),
                link: opt_text(&t["participantLink"], "uri"),
                expires: opt_text(&t["participantLink"], "expires"),
                last_message: opt_text(t, "lastMessage"),
            })
            .collect();
        let notifications = repr["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| NotificationRow {
                channel: text(n, "channel"),
                target: text(n, "target"),
                status: text(n, "status"),
                attempts: n["attempts"].as_i64().unwrap_or_default(),
                last_error: text(n, "lastError"),
            })
            .collect();
        let links = repr["_links"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, l)| l["method"] == "GET")
            .map(|(_, l)| LinkRow {
                href: text(l, "href"),
                title: text(l, "title"),
            })
            .collect();
        JobView {
            id: text(repr, "jobID"),
            status: text(repr, "jobStatus"),
            reason: opt_text(repr, "failureReason"),
            description: opt_text(repr, "description"),
            correlation_id: text(repr, "correlationID"),
            created: text(repr, "dateCreated"),
            deadline: text(repr, "deadline"),
            attempt: repr["attempt"].as_i64().unwrap_or(1),
            percent,
            tasks,
            shared_state: serde_json::to_string_pretty(&repr["sharedState"]).unwrap_or_default(),
            notifications,
            links,
        }
    }
}

fn page_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the page could not be made; the failure is logged (the same resource as JSON is unaffected: ask with Accept: application/json)",
    )
}

/// The job page.
pub fn job_page(base: &str, record: &JobRecord) -> Result<Response, ApiError> {
    let repr = serde_json::to_value(JobRepr::new(base, record)).map_err(|e| {
        tracing::error!(error = %e, "a job representation did not serialize");
        page_failed()
    })?;
    let percent = ProgressRepr::new(base, record).percent_complete;
    let page = JobPage {
        base: base.to_string(),
        job: JobView::new(&repr, percent),
    };
    let body = page.render().map_err(|e| {
        tracing::error!(error = %e, "the job page did not render");
        page_failed()
    })?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn browsers_get_html_and_everything_else_json() {
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
        for json in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "application/*, text/html;q=0.9",
            "text/html;q=0, */*",
            "image/png",
        ] {
            assert!(!prefers_html(&accept(json)), "{json}");
        }
        for html in [
            // Firefox's and Chromium's.
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
            "text/html",
            "application/json;q=0.5, text/html",
        ] {
            assert!(prefers_html(&accept(html)), "{html}");
        }
    }
}
