//! The layers every request passes (`guarded`): the body's arrival, admission, the time limit,
//! panics caught, unreadable input refused, problem details completed; and the HTTP metrics
//! (`track_http`) and the fallback 404 the routes use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::app::{ApiSettings, HttpService};
use super::error::{self, ApiError, ProblemType};
use super::extract::read_body;
use super::html;
use super::negotiate::prefers_html;
use super::respond::prefer_wait;
use crate::metrics as m;

/// The layers every request passes, outermost first: the body's arrival (`arrived`: a slow
/// sender waits outside the budgets), admission (`admit`: 503 at once when its budget is spent,
/// never queued) and the time limit (503), around the whole router so that the
/// limits are one for all routes; then, on each route, a panic caught into a 500 problem (the
/// process goes on serving), unreadable input refused (400), problem details completed.
pub(super) fn guarded(routes: Router, settings: &ApiSettings) -> impl HttpService + use<> {
    use tower::ServiceBuilder;
    let budgets = Budgets {
        requests: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight_requests)),
        waits: Arc::new(tokio::sync::Semaphore::new(settings.max_inflight_requests)),
    };
    let public: Option<Arc<str>> = settings.public_url.as_deref().map(Arc::from);
    let base: Arc<str> = public.clone().unwrap_or_else(|| Arc::from(""));
    let open = settings.api_keys.is_empty();
    let body_limits = (settings.max_body, settings.body_read_timeout);
    let routes = routes
        .layer(middleware::from_fn(move |req, next: Next| {
            let (base, public) = (base.clone(), public.clone());
            problem_details(base, req, move |req| {
                refuse_unread(req, move |req| {
                    reject_unreadable(req, move |req| {
                        html::forms::same_origin(public, open, req, move |req| next.run(req))
                    })
                })
            })
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked));
    ServiceBuilder::new()
        .layer(middleware::from_fn(move |req, next: Next| {
            let budgets = budgets.clone();
            arrived(body_limits, req, move |req| {
                admit(budgets, req, move |req| next.run(req))
            })
        }))
        .layer(axum::error_handling::HandleErrorLayer::new(refused))
        .timeout(settings.request_timeout)
        .service(routes)
}

/// What a layer hands the request on to: the layers inside it and the route. The layers on each
/// side of the router are one `from_fn` (`guarded`, and the routes' in `api::routes`), each layer
/// a function of the next: a `from_fn` per layer would clone every layer inside it and box its
/// future, for every request.
pub(crate) trait Then: FnOnce(Request) -> Self::Answer + Send {
    type Answer: Future<Output = Response> + Send;
}

impl<F, A> Then for F
where
    F: FnOnce(Request) -> A + Send,
    A: Future<Output = Response> + Send,
{
    type Answer = A;
}

/// What requests in progress may hold: `TCC_MAX_INFLIGHT_REQUESTS` of each budget.
#[derive(Clone)]
struct Budgets {
    /// Ordinary requests.
    requests: Arc<tokio::sync::Semaphore>,
    /// Requests that wait for a job to change (`Prefer: wait`, the Atomikos confirm): they hold
    /// their slot for seconds, so a crowd of them must not crowd out submissions. (Event
    /// streams have a budget of their own too: `AppState.streams`.)
    waits: Arc<tokio::sync::Semaphore>,
}

/// Whether a request may wait for a job to change before it answers.
fn waits(req: &Request) -> bool {
    prefer_wait(req.headers(), Duration::from_secs(3600)).is_some()
        || (req.method() == axum::http::Method::PUT && req.uri().path() == "/coordinator/confirm")
}

/// A request's body, read whole before the request counts as in progress, so that a client that
/// sends it slowly holds a connection but no place of the budget: 413 beyond `max` bytes
/// (`TCC_MAX_BODY`), 400 when it cannot be read, 408 (the connection
/// closed) when it has not arrived within `limit`. Requests without a body pass as they are.
/// A body announced larger than `max` passes unread too: the handler refuses it at once.
async fn arrived((max, limit): (usize, Duration), req: Request, next: impl Then) -> Response {
    use axum::body::HttpBody as _;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if req.body().is_end_stream() || announced.is_some_and(|n| n > max as u64) {
        return next(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let refused = match tokio::time::timeout(limit, read_body(body, max, "body")).await {
        Ok(Ok(bytes)) => {
            return next(Request::from_parts(parts, Body::from(bytes))).await;
        }
        Ok(Err(refused)) => refused,
        Err(_) => {
            metrics::counter!(m::API_REJECTED, "reason" => "timeout").increment(1);
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ProblemType::RequestTimeout,
                "the request's body did not arrive within the time limit (TCC_HEADER_READ_TIMEOUT); nothing was done",
            )
        }
    };
    // Answered inside the routes' layers (`refuse_unread`), as a problem like any other.
    parts.extensions.insert(Unread(refused));
    next(Request::from_parts(parts, Body::empty())).await
}

/// A body `arrived` could not take, and why.
#[derive(Clone)]
struct Unread(ApiError);

/// A request whose body `arrived` refused is answered with that refusal (a 408 closes the
/// connection: the rest of the body may still come).
async fn refuse_unread(req: Request, next: impl Then) -> Response {
    let Some(Unread(refused)) = req.extensions().get::<Unread>() else {
        return next(req).await;
    };
    let mut resp = refused.clone().into_response();
    if resp.status() == StatusCode::REQUEST_TIMEOUT {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Admission: health checks always (a liveness probe must never be refused by load, or a
/// healthy process is restarted); others within their budget, else 503 at once.
async fn admit(budgets: Budgets, req: Request, next: impl Then) -> Response {
    if req.uri().path().starts_with("/health/") {
        return next(req).await;
    }
    let budget = if waits(&req) {
        &budgets.waits
    } else {
        &budgets.requests
    };
    match budget.clone().try_acquire_owned() {
        Ok(_permit) => next(req).await,
        Err(_) => {
            metrics::counter!(m::API_REJECTED, "reason" => "overloaded").increment(1);
            overloaded(
                "the coordinator is serving as many requests as it takes at once (TCC_MAX_INFLIGHT_REQUESTS); try again shortly",
            )
        }
    }
}

/// A request the guard layers refused: out of time. 503 with `Retry-After`.
async fn refused(err: tower::BoxError) -> Response {
    let (reason, detail) = if err.is::<tower::timeout::error::Elapsed>() {
        (
            "timeout",
            "the request was not answered within the time limit (TCC_REQUEST_TIMEOUT); it may still take effect: look before repeating it",
        )
    } else {
        (
            "overloaded",
            "the coordinator could not take the request now",
        )
    };
    metrics::counter!(m::API_REJECTED, "reason" => reason).increment(1);
    overloaded(detail)
}

/// 503 (with `Retry-After`, as every 503), as a problem.
fn overloaded(detail: impl Into<String>) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ProblemType::Unavailable,
        detail,
    )
    .into_response()
}

/// A handler panicked: a 500 problem that says nothing of the internals.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::engine::panic_message(&*panic);
    tracing::error!(panic = %message, "a request handler panicked; answered 500");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ProblemType::Internal, "the coordinator failed while answering this request; it was not applied, or only in part: look before repeating it",
    )
    .into_response()
}

/// The headers the API reads: each must be visible ASCII when present.
const READ_HEADERS: [&str; 7] = [
    "idempotency-key",
    "if-match",
    "if-none-match",
    "prefer",
    "traceparent",
    "content-type",
    "accept",
];

/// Refuse a path or query that is not UTF-8 or holds a NUL once percent-decoded, and a header
/// the API reads that is not visible ASCII: 400, naming which.
async fn reject_unreadable(req: Request, next: impl Then) -> Response {
    match unreadable(&req) {
        Some(detail) => ApiError::bad_request(detail).into_response(),
        None => next(req).await,
    }
}

fn unreadable(req: &Request) -> Option<String> {
    let uri = req.uri();
    let parts = [("path", Some(uri.path())), ("query", uri.query())];
    for (what, raw) in parts {
        let Some(raw) = raw else { continue };
        match percent_encoding::percent_decode_str(raw).decode_utf8() {
            Err(_) => return Some(format!("the {what} is not UTF-8 once percent-decoded")),
            Ok(text) if text.contains('\0') => {
                return Some(format!("the {what} holds a NUL character (%00)"));
            }
            Ok(_) => {}
        }
    }
    READ_HEADERS.iter().find_map(|name| {
        req.headers()
            .get_all(*name)
            .iter()
            .any(|v| v.to_str().is_err())
            .then(|| format!("the {name} header must be visible ASCII"))
    })
}

/// Test-only routes (the `fault-injection` feature): a handler that panics, one that never
/// answers.
#[cfg(feature = "fault-injection")]
pub(super) async fn fault_panic() -> StatusCode {
    panic!("fault injected")
}

#[cfg(feature = "fault-injection")]
pub(super) async fn fault_stall() -> StatusCode {
    std::future::pending().await
}

/// Count and time every request by its route template.
pub(super) async fn track_http(req: Request, next: impl Then) -> Response {
    let started = Instant::now();
    // A bounded label: any other method (a client may send any token) is `other`.
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Make every error a problem document: turn axum's bare 405 into one (keeping `Allow`), and
/// name the request path as the problem's `instance`; for a browser, show it as a page (same
/// status and headers; `base` is `TCC_PUBLIC_URL`, else the page's own origin).
async fn problem_details(base: Arc<str>, req: Request, next: impl Then) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let page = prefers_html(req.headers());
    let resp = next(req).await;
    let resp = problem_document(resp, &path, &method).await;
    if !page || !is_problem(&resp) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let doc = serde_json::from_slice::<Value>(&bytes).unwrap_or_default();
    html::problem_page(Response::from_parts(parts, Body::empty()), &doc, &base)
}

fn is_problem(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(error::PROBLEM_JSON.as_bytes()))
}

/// A problem completed with its `instance`; a bare 405 made a problem.
async fn problem_document(resp: Response, path: &str, method: &axum::http::Method) -> Response {
    let is_problem = is_problem(&resp);
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !is_problem {
        let allow = resp.headers().get(header::ALLOW).cloned();
        let mut problem = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ProblemType::MethodNotAllowed,
            format!(
                "{method} is not allowed here{}",
                allow
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .map(|a| format!("; allowed: {a}"))
                    .unwrap_or_default()
            ),
        )
        .into_response();
        if let Some(a) = allow {
            problem.headers_mut().insert(header::ALLOW, a);
        }
        return with_instance(problem, path).await;
    }
    if is_problem {
        return with_instance(resp, path).await;
    }
    resp
}

async fn with_instance(resp: Response, path: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(o) = doc.as_object_mut() {
        o.insert("instance".into(), path.into());
    }
    let out = doc.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no resource at this path")
}

/// Property tests over the parsers of what a request carries: whatever the input, they answer
/// (a value or an error) and never panic. Bounded: proptest's default number of cases.
#[cfg(test)]
mod parser_properties {
    use super::*;
    use axum::http::HeaderMap;
    use proptest::prelude::*;
    use serde_json::json;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("tasks".to_string()),
                        Just("taskURL".to_string()),
                        Just("participantLink".to_string()),
                        Just("uri".to_string()),
                        Just("expires".to_string()),
                        Just("jobMaxTTL".to_string()),
                        Just("retryPolicy".to_string()),
                        Just("inputMapping".to_string()),
                        Just("sharedState".to_string()),
                        ".{0,12}"
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn prefer_wait_never_panics_and_stays_under_the_cap(v in any::<Vec<u8>>(), n in any::<f64>()) {
            let max = Duration::from_secs(45);
            for value in [v.clone(), format!("wait={n}").into_bytes(), format!("respond-async, wait={n:e}").into_bytes()] {
                let mut headers = HeaderMap::new();
                if let Ok(h) = HeaderValue::from_bytes(&value) {
                    headers.insert("prefer", h);
                }
                prop_assert!(prefer_wait(&headers, max).is_none_or(|w| w <= max));
            }
        }

        #[test]
        fn unreadable_input_never_panics(path in "/[a-zA-Z0-9/._~%-]{0,40}", raw in any::<Vec<u8>>()) {
            let uri = format!("{path}?q={}", percent_encoding::percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC));
            if let Ok(req) = Request::builder().uri(uri.as_str()).body(Body::empty()) {
                let verdict = unreadable(&req);
                let decoded = std::str::from_utf8(&raw);
                if decoded.is_err() || decoded.is_ok_and(|s| s.contains('\0')) {
                    prop_assert!(verdict.is_some(), "{uri} refused");
                }
            }
        }

        #[test]
        fn job_and_registration_parsers_never_panic(v in json_value()) {
            let now = chrono::Utc::now();
            let _ = crate::domain::request::parse_job(&v, crate::domain::request::Limits { max_tasks: 100 }, now);
            let _ = crate::domain::request::parse_registration(&v, now);
            let doc = json!({"autoConfirm": false, "tasks": [v.clone()], "sharedState": v});
            let _ = crate::domain::request::parse_job(&doc, crate::domain::request::Limits { max_tasks: 100 }, now);
        }
    }
}
