//! `ApiError`: every 4xx/5xx answer as RFC 9457 `application/problem+json` (docs/api.md, "Errors").
//!
//! Internal details (SQL, driver messages) are logged, never sent: a client sees what it can act
//! on, and a database outage is a 503 with `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::actions::Refusal;
use crate::domain::request::FieldError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares `ProblemType` with `ALL` and `describe` from one list, so that a type cannot be
/// added without its slug, its title and the text of its page, nor be left out of what
/// `/problems/{slug}` serves.
macro_rules! problem_types {
    ($($variant:ident => ($slug:literal, $title:literal, $text:literal $(,)?),)*) => {
        /// Every problem type the API answers, with its slug (`/problems/<slug>`), its title and
        /// the text of its page.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $($variant,)*
        }

        impl ProblemType {
            /// Every type, as `/problems/{slug}` serves them.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$variant,)*];

            /// `(slug, title, what it means and what to do)`.
            fn describe(self) -> (&'static str, &'static str, &'static str) {
                match self {
                    $(ProblemType::$variant => ($slug, $title, $text),)*
                }
            }
        }
    };
}

problem_types! {
    BadRequest => (
        "bad-request",
        "Bad request",
        "The request itself is unreadable: a query parameter, a path or a header the coordinator cannot take. The detail names which; fix it and send again.",
    ),
    BodyTooLarge => (
        "body-too-large",
        "Body too large",
        "The body is larger than TCC_MAX_BODY (1 MiB by default). Send less: large data belongs with the participants, not in the job.",
    ),
    JsonTooDeep => (
        "json-too-deep",
        "JSON nested too deep",
        "The body nests arrays and objects deeper than 32 levels. Flatten it: no job document, registration or shared state needs that depth.",
    ),
    Conflict => (
        "conflict",
        "Conflict",
        "The job's state does not allow this now (for example a cancel after the decision, or an action the job's _links do not offer). The detail says why; read the job and follow its links.",
    ),
    CrossSite => (
        "cross-site",
        "Cross-site request",
        "A page of another site tried to act on the coordinator through the browser (its Origin or Sec-Fetch-Site says so). The console's own forms and direct API calls are not affected; if a proxy changes the Host, set TCC_PUBLIC_URL to the address browsers use.",
    ),
    UnknownHost => (
        "unknown-host",
        "Unknown host name",
        "A browser reached this coordinator, which has no API keys, by a host name it does not know as its own. A page elsewhere could otherwise point its own name at the coordinator's address (DNS rebinding) and use the open API through the browser. Browse to it by IP address or localhost, set TCC_PUBLIC_URL to the URL browsers use, or configure TCC_API_KEYS.",
    ),
    DefinitionRetired => (
        "definition-retired",
        "Job definition retired",
        "The job definition was retired (DELETE /job-definitions/{name}): it starts no more jobs. Its versions can still be read and the jobs started from it go on. PUT the definition again to bring it back.",
    ),
    DatabaseUnavailable => (
        "database-unavailable",
        "Database unavailable",
        "The coordinator cannot reach PostgreSQL, or it did not answer within TCC_DB_TIMEOUT. Retry after Retry-After; what was asked may have taken effect, so look before repeating a write (a POST /jobs under its Idempotency-Key is safe to repeat).",
    ),
    Forbidden => (
        "forbidden",
        "Forbidden",
        "The API key is known but its role is too weak for this (read < submit < admin). The detail names the role needed; use a key that has it.",
    ),
    Heuristic => (
        "heuristic",
        "Heuristic outcome",
        "Some participants confirmed and others could not: they disagree, and the coordinator cannot settle it. The problem lists each task's outcome. An operator sets the participants right, then records it with POST /jobs/{id}/resolve, or has the confirms retried with POST /jobs/{id}/continue.",
    ),
    IdempotencyKeyReused => (
        "idempotency-key-reused",
        "Idempotency key reused",
        "This Idempotency-Key was used before for a different job document, or by another API key. Use a new key for a new job; repeat a request only with exactly the same body and key.",
    ),
    Internal => (
        "internal",
        "Internal error",
        "Something failed inside the coordinator. Nothing internal is shown; the coordinator logs the cause. Retry; if it persists, report it with the time and the request.",
    ),
    InvalidParticipantLinks => (
        "invalid-participant-links",
        "Invalid participant links",
        "A PUT /coordinator/confirm or /cancel body must be {\"participantLinks\": [{\"uri\", \"expires\"}, ...]} with an absolute http(s) uri and an RFC 3339 expires for each link. The errors list names each bad link.",
    ),
    MalformedJson => (
        "malformed-json",
        "Malformed JSON",
        "The body is not valid JSON; the detail gives the line and column. Fix the document and send it again.",
    ),
    MethodNotAllowed => (
        "method-not-allowed",
        "Method not allowed",
        "This resource does not take that method. The Allow header lists the methods it takes.",
    ),
    MetricsUnavailable => (
        "metrics-unavailable",
        "Metrics unavailable",
        "The metrics recorder could not be installed in this process, so there is nothing to scrape. Restart the coordinator; if it persists, report it.",
    ),
    NotConfirmed => (
        "not-confirmed",
        "Not confirmed",
        "The job ended without confirming anything (failed or canceled, with the failure reason). The problem lists each task's outcome; submit a new job, or restart this one if it offers restart.",
    ),
    NotFound => (
        "not-found",
        "Not found",
        "There is no such resource: a job id, task id or path that does not exist (or a finished job removed after TCC_RETENTION).",
    ),
    NotReady => (
        "not-ready",
        "Not ready",
        "The coordinator cannot accept and drive jobs right now: it does not hold its instance identity, the database is not migrated, or it does not take a durable write. Send work to another instance, or wait.",
    ),
    OutcomePending => (
        "outcome-pending",
        "Outcome not known yet",
        "The Atomikos-compatible confirm is still being worked on (a participant is being retried) after the time the request may wait. Repeat the same request: it waits again and never confirms twice.",
    ),
    Overloaded => (
        "overloaded",
        "Overloaded",
        "The coordinator is serving as many requests (TCC_MAX_INFLIGHT_REQUESTS), jobs or event streams as it takes at once; nothing was stored. Retry after Retry-After.",
    ),
    PreconditionFailed => (
        "precondition-failed",
        "Precondition failed",
        "If-Match does not hold the resource's current ETag: it changed since you read it. Read it again, apply your change to what is there now, and send it with the new ETag.",
    ),
    SharedStateTooLarge => (
        "shared-state-too-large",
        "Shared state too large",
        "A job's shared state may be at most 256 KiB serialized. Keep large data with the participants and put references in the shared state.",
    ),
    RequestTimeout => (
        "request-timeout",
        "Request timeout",
        "The request's body did not arrive within TCC_HEADER_READ_TIMEOUT (30 s by default), so nothing was done and the connection was closed. Send the body at once with its headers.",
    ),
    Timeout => (
        "timeout",
        "Timeout",
        "The request was not answered within TCC_REQUEST_TIMEOUT. It may still take effect: look before repeating it.",
    ),
    TooLate => (
        "too-late",
        "Too late to confirm",
        "The participant links of this Atomikos-compatible confirm were canceled or had lapsed before they could be confirmed: nothing is confirmed. Start the transaction again.",
    ),
    Unauthorized => (
        "unauthorized",
        "Unauthorized",
        "This coordinator needs an API key: send Authorization: Bearer <secret> with a key from TCC_API_KEYS. An unknown key is refused the same way.",
    ),
    Unavailable => (
        "unavailable",
        "Service unavailable",
        "A resource the request needs is not available right now (for example the database pool is shutting down). Retry after Retry-After.",
    ),
    UnsupportedMediaType => (
        "unsupported-media-type",
        "Unsupported media type",
        "The body must be JSON (Content-Type: application/json or another +json type); a shared-state PATCH must be application/merge-patch+json.",
    ),
    Validation => (
        "validation",
        "The document breaks a rule",
        "The JSON is well-formed but breaks a rule of the job document (or of the request). The errors list each place as a JSON Pointer with what is wrong there; fix each and send again.",
    ),
}

impl ProblemType {
    /// The last segment of the type's URL, `/problems/<slug>`.
    pub fn slug(self) -> &'static str {
        self.describe().0
    }

    /// The problem's `title`: the same on every answer of the type and on its page.
    pub fn title(self) -> &'static str {
        self.describe().1
    }

    /// What the problem means and what to do: the text of its page.
    pub fn explanation(self) -> &'static str {
        self.describe().2
    }

    /// The type whose page is `/problems/{slug}`.
    pub fn from_slug(slug: &str) -> Option<ProblemType> {
        ProblemType::ALL.iter().copied().find(|t| t.slug() == slug)
    }
}

/// Boxed: an error travels through many `Result`s and should stay one pointer wide.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Problem>);

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: ProblemType,
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
    pub fn new(status: StatusCode, kind: ProblemType, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem {
            status,
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            tasks: None,
        }))
    }

    /// The same problem under another status and type (a contract that answers differently).
    pub fn with_status(mut self, status: StatusCode, kind: ProblemType) -> Self {
        self.0.status = status;
        self.0.kind = kind;
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
        ApiError::new(StatusCode::NOT_FOUND, ProblemType::NotFound, what)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, ProblemType::Conflict, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ProblemType::BadRequest, detail)
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] if one.pointer.is_empty() => one.detail.clone(),
            [one] => format!("{}: {}", one.pointer, one.detail),
            many => format!("{} fields break the rules; see errors", many.len()),
        };
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::Validation,
            detail,
        );
        e.0.errors = errors;
        e
    }
}

/// A job's state does not allow the action: 409, saying why as the domain does.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::conflict(refusal.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemType::DatabaseUnavailable,
                    "the coordinator's database cannot be reached right now; nothing was lost, try again shortly",
                )
            }
            StoreError::Overloaded(what) => {
                metrics::counter!(crate::metrics::API_REJECTED, "reason" => "overloaded")
                    .increment(1);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemType::Unavailable,
                    format!(
                        "the coordinator is at its limit ({what}); nothing was stored, try again shortly"
                    ),
                )
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ProblemType::Internal,
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
            kind: format!("/problems/{}", this.kind.slug()),
            title: this.kind.title(),
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
