//! `ApiError`: every 4xx/5xx answer as RFC 9457 `application/problem+json` (docs/api.md, "Errors").
//!
//! Internal details (SQL, driver messages) are logged, never sent: a client sees what it can act
//! on, and a database outage is a 503 with `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::request::FieldError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Boxed: an error travels through many `Result`s and should stay one pointer wide.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>);

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Per-task outcomes, for a decision that did not end as asked.
    pub tasks: Option<Value>,
}

/// An RFC 9457 problem, as every 4xx and 5xx answer carries it (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemRepr<'a> {
    /// `/problems/<slug>`: a page that says what the problem means and how to fix it.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'a str,
    pub status: u16,
    pub detail: &'a str,
    /// The request's path (added on the way out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<&'a str>,
    /// Each broken rule, for a validation error.
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    pub errors: &'a [FieldError],
    /// Each task's outcome, for a decision that did not end as asked (409).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::api::repr::TaskOutcome>>)]
    pub tasks: Option<&'a Value>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError(Box::new(Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            tasks: None,
        }))
    }

    /// The same problem under another status and type (a contract that answers differently).
    pub fn with_status(mut self, status: StatusCode, slug: &'static str) -> Self {
        self.0.status = status;
        self.0.slug = slug;
        self
    }

    /// Each task's outcome, shown with the problem.
    pub fn with_tasks(mut self, outcomes: Value) -> Self {
        self.0.tasks = Some(outcomes);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// What the problem says to the client.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", what)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] if one.pointer.is_empty() => one.detail.clone(),
            [one] => format!("{}: {}", one.pointer, one.detail),
            many => format!("{} fields break the rules; see errors", many.len()),
        };
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The document breaks a rule",
            detail,
        );
        e.0.errors = errors;
        e
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database-unavailable",
                    "Database unavailable",
                    "the coordinator's database cannot be reached right now; nothing was lost, try again shortly",
                )
            }
            StoreError::Overloaded(what) => {
                metrics::counter!(crate::metrics::API_REJECTED, "reason" => "overloaded")
                    .increment(1);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    format!(
                        "the coordinator is at its limit ({what}); nothing was stored, try again shortly"
                    ),
                )
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the coordinator failed to handle this request; the failure is logged",
                )
            }
        }
    }
}

impl std::ops::Deref for ApiError {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let body = ProblemRepr {
            kind: format!("/problems/{}", this.slug),
            title: this.title,
            status: this.status.as_u16(),
            detail: &this.detail,
            instance: None,
            errors: &this.errors,
            tasks: this.tasks.as_ref(),
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let mut resp = (this.status, text).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if this.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}
