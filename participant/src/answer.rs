//! What the library answers: a status, a few headers and a JSON body, for any framework; axum's
//! `Response` from it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// An answer to the coordinator (or anyone calling a link).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// `Location`: the link, on a Try's success.
    pub location: Option<String>,
    /// `Retry-After` in seconds, on a 503.
    pub retry_after: Option<u32>,
    /// The body: JSON (`application/json`), a problem (`application/problem+json`), or none.
    pub body: Option<Value>,
    pub problem: bool,
}

/// RFC 3339 with milliseconds, in UTC.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Answer {
    /// 201 with the link and its expiry.
    pub(crate) fn reserved(link: String, expires: DateTime<Utc>) -> Self {
        Answer {
            status: 201,
            body: Some(json!({"participantLink": {"uri": link, "expires": rfc3339(expires)}})),
            location: Some(link),
            retry_after: None,
            problem: false,
        }
    }

    /// 204.
    pub(crate) fn done() -> Self {
        Answer {
            status: 204,
            location: None,
            retry_after: None,
            body: None,
            problem: false,
        }
    }

    /// 200 with a JSON body.
    pub(crate) fn json(body: Value) -> Self {
        Answer {
            status: 200,
            body: Some(body),
            ..Answer::done()
        }
    }

    /// A problem: `status`, a title and what happened.
    pub(crate) fn problem(status: u16, title: &str, detail: impl Into<String>) -> Self {
        Answer {
            status,
            body: Some(json!({"title": title, "status": status, "detail": detail.into()})),
            problem: true,
            ..Answer::done()
        }
    }

    /// 503 with `Retry-After: 1`: the database failed or did not answer in time. What was
    /// asked was not done, or (a commit whose answer was lost) done whole: a repeat is answered
    /// as the first, so the caller repeats it. The cause is logged, not shown.
    pub(crate) fn unavailable() -> Self {
        Answer {
            retry_after: Some(1),
            ..Answer::problem(
                503,
                "Service unavailable",
                "the participant's database failed or did not answer in time: nothing was done, or all of it; repeat the call",
            )
        }
    }
}

impl From<Answer> for axum::response::Response {
    fn from(a: Answer) -> Self {
        use axum::http::{HeaderValue, StatusCode, header};
        let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = match &a.body {
            Some(body) => {
                let mut r = axum::response::Response::new(axum::body::Body::from(body.to_string()));
                let ctype = if a.problem {
                    "application/problem+json"
                } else {
                    "application/json"
                };
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                r
            }
            None => axum::response::Response::new(axum::body::Body::empty()),
        };
        *resp.status_mut() = status;
        if let Some(v) = a.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        if let Some(s) = a.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
