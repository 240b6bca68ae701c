//! The participant protocol on the wire (docs/participant.md): Try, confirm and cancel calls, and the
//! classification of every answer into a planner [`Answer`].
//!
//! Every call has a timeout and reads at most 1 MiB of the answer. Redirects are not followed: a
//! confirm or cancel must reach the link it names. This module decides nothing about the job.

mod connections;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use self::connections::{Connections, SendError};
use crate::domain::TargetUrl;
use crate::domain::job::Callbacks;
use crate::domain::policy::TargetPolicy;
use crate::domain::request::MAX_NUMBER;
use crate::domain::{Answer, Link, Op, rfc3339};

/// Answers larger than this are refused.
pub const MAX_ANSWER: usize = 1024 * 1024;
/// The part of a Try answer kept on the task.
pub const MAX_KEPT_RESPONSE: usize = 64 * 1024;

/// The outcome label of `tcc_participant_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Success,
    Retryable,
    Refused,
    Gone,
    Timeout,
    Error,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Retryable => "retryable",
            CallOutcome::Refused => "refused",
            CallOutcome::Gone => "gone",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Error => "error",
        }
    }
}

/// One call's result: the classified answer, its metric label, its HTTP status, its duration.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub answer: Answer,
    pub outcome: CallOutcome,
    pub http_status: Option<u16>,
    pub duration: Duration,
}

/// Sent with every call.
const USER_AGENT: &str = concat!("tcc-coordinator/", env!("CARGO_PKG_VERSION"));

/// The HTTP client for participants, shared by every call (keep-alive connections per host).
/// Plain `http://` participants are called through hyper's HTTP/1.1 connections directly, each
/// driven by its call (`plain`, `connections`); reqwest's layers (its redirect policy parses
/// every request's URL again, each request copies the client's default headers, the answer's
/// URL is parsed back) cost about a sixth of a call's CPU. `https://` ones go through reqwest
/// (`http`), with its TLS.
#[derive(Debug, Clone)]
pub struct ParticipantClient {
    http: reqwest::Client,
    plain: Arc<Connections>,
    /// `TCC_ALLOWED_TARGETS`: checked before each call, and on every address a name resolves to.
    policy: Arc<TargetPolicy>,
}

/// The headers that identify a call: `correlation-id`, `request-id` (the task id, the same on
/// every retry) and the creating request's `traceparent`.
pub struct CallIds<'a> {
    pub correlation_id: &'a str,
    pub request_id: &'a str,
    pub traceparent: Option<&'a str>,
}

/// What a Try needs besides the URL and body.
pub struct TryCall<'a> {
    pub url: &'a TargetUrl,
    pub body: &'a Value,
    pub ids: CallIds<'a>,
    pub timeout: Duration,
    /// A missing `expires` in the answer means the reservation lasts until here.
    pub job_deadline: DateTime<Utc>,
    /// The answer must carry a participant link: false for a task with its own confirm and
    /// cancel URLs, whose Try succeeds with any 200 or 201.
    pub needs_link: bool,
}

enum Failure {
    /// The request may have been received.
    Timeout(String),
    /// The connection could not be made: nothing was sent.
    NotSent(String),
    /// The connection broke: the request may have been received.
    Error(String),
    /// `TCC_ALLOWED_TARGETS` refuses the target (its name, its address, or every address its
    /// name resolves to): nothing was sent.
    Refused(String),
}

impl ParticipantClient {
    /// `max_inflight` is the most calls that can be out at once (`TCC_MAX_INFLIGHT_CALLS`): the
    /// keep-alive pool keeps that many idle connections per participant host, so a busy host's
    /// connections are reused rather than closed after each call and opened again.
    pub fn new(max_inflight: usize, policy: Arc<TargetPolicy>) -> Result<Self, reqwest::Error> {
        let http = crate::outbound::client_builder(policy.clone())
            // Whether and when a call is sent again is the engine's decision (same request-id,
            // the job's retry policy). reqwest's own retries (of HTTP/2 refusals only, and this
            // client speaks HTTP/1.1) still copied every request before sending it, in case.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_idle_timeout(connections::IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_inflight)
            .user_agent(USER_AGENT)
            .build()?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(
            crate::outbound::PolicyDns::new(policy.clone()),
        );
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let plain = Arc::new(Connections::new(connector, max_inflight));
        Ok(ParticipantClient {
            http,
            plain,
            policy,
        })
    }

    /// `send` to a URL parsed where it entered: the policy checks the parsed form.
    async fn send_target(
        &self,
        method: Method,
        target: &TargetUrl,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Result<Vec<u8>, String>), Failure> {
        self.refused(target, target)?;
        self.send(method, target.url(), headers, body, timeout)
            .await
    }

    /// Whether the target policy refuses `target`, a call to which is shown as `shown`.
    fn refused(&self, target: &TargetUrl, shown: &dyn std::fmt::Display) -> Result<(), Failure> {
        self.policy
            .check_target(target)
            .map_err(|why| Failure::Refused(format!("{shown} {why}")))
    }

    /// Send a request to `url`, already checked against the policy, and read its answer.
    async fn send(
        &self,
        method: Method,
        url: &url::Url,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Result<Vec<u8>, String>), Failure> {
        if url.scheme() == "http" {
            return self.send_plain(method, url, headers, body, timeout).await;
        }
        let mut req = self
            .http
            .request(method, url.clone())
            .headers(headers)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.body(b);
        }
        let mut resp = req.send().await.map_err(classify_error)?;
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let mut buf = Vec::new();
        let body = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > MAX_ANSWER {
                        break Err("the answer body is over 1 MiB".to_string());
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break Ok(buf),
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Timeout(format!(
                        "timed out reading the answer after {timeout:?}"
                    )));
                }
                Err(e) => break Err(format!("the answer body could not be read: {e}")),
            }
        };
        Ok((status, headers, body))
    }

    /// `send` for a plain `http://` URL, on a connection of its own (`connections`): the
    /// same deadline over the answer's head and body, the same limit on the body, the same
    /// failures.
    async fn send_plain(
        &self,
        method: Method,
        url: &url::Url,
        mut headers: HeaderMap,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, HeaderMap, Result<Vec<u8>, String>), Failure> {
        use http_body_util::BodyExt as _;
        let deadline = tokio::time::Instant::now() + timeout;
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        let mut req = hyper::Request::new(http_body_util::Full::new(hyper::body::Bytes::from(
            body.unwrap_or_default(),
        )));
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        let (mut lease, resp) =
            match tokio::time::timeout_at(deadline, self.plain.send(url, req)).await {
                Err(_) => return Err(Failure::Timeout("timed out".into())),
                Ok(Err(SendError::NotSent(e))) => return Err(classify(&*e, timed_out(&*e), true)),
                Ok(Err(SendError::Broken(e))) => return Err(classify(&e, timed_out(&e), false)),
                Ok(Ok(sent)) => sent,
            };
        let (head, mut answer) = resp.into_parts();
        let mut buf = Vec::new();
        let body = loop {
            match tokio::time::timeout_at(deadline, lease.drive(answer.frame())).await {
                Err(_) => {
                    return Err(Failure::Timeout(format!(
                        "timed out reading the answer after {timeout:?}"
                    )));
                }
                Ok(None) => {
                    lease.give_back();
                    break Ok(buf);
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    if buf.len() + chunk.len() > MAX_ANSWER {
                        break Err("the answer body is over 1 MiB".to_string());
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(Some(Err(e))) => break Err(format!("the answer body could not be read: {e}")),
            }
        };
        Ok((head.status, head.headers, body))
    }

    fn base_headers(ids: &CallIds<'_>) -> HeaderMap {
        let (correlation_id, request_id) = (ids.correlation_id, ids.request_id);
        let mut h = HeaderMap::new();
        if let Some(t) = ids.traceparent
            && let Ok(v) = t.parse()
        {
            h.insert("traceparent", v);
        }
        if let Ok(v) = correlation_id.parse() {
            h.insert("correlation-id", v);
        }
        if let Ok(v) = request_id.parse() {
            h.insert("request-id", v);
        }
        h
    }

    /// `POST {taskURL}` with the Try body.
    pub async fn try_reserve(&self, call: TryCall<'_>) -> CallResult {
        let started = Instant::now();
        let mut headers = Self::base_headers(&call.ids);
        headers.insert(CONTENT_TYPE, "application/json".parse().expect("static"));
        headers.insert(ACCEPT, "application/json".parse().expect("static"));
        // The instant after which the coordinator no longer acts on this answer: a participant
        // that reads it reserves nothing for a Try that arrives later.
        let acts_until = chrono::Duration::from_std(call.timeout)
            .ok()
            .and_then(|t| Utc::now().checked_add_signed(t))
            .map_or(call.job_deadline, |end| end.min(call.job_deadline));
        if let Ok(v) = HeaderValue::from_str(&rfc3339(acts_until)) {
            headers.insert("tcc-deadline", v);
        }
        let body = serde_json::to_vec(call.body).unwrap_or_else(|_| b"{}".to_vec());
        let sent = self
            .send_target(Method::POST, call.url, headers, Some(body), call.timeout)
            .await;
        let (answer, outcome, http_status) = match sent {
            Err(f) => failure(f, Op::Try),
            Ok((status, headers, body)) => {
                let code = status.as_u16();
                let (answer, outcome) = match code {
                    200 | 201 => match body {
                        Err(e) => (Answer::Refused { message: e }, CallOutcome::Refused),
                        Ok(body) if !call.needs_link => {
                            let (response, keep) = kept_answer(parse_json(&body), &body);
                            (
                                Answer::Reserved {
                                    link: None,
                                    note: None,
                                    response,
                                    keep,
                                },
                                CallOutcome::Success,
                            )
                        }
                        Ok(body) => match read_link(
                            call.url.url(),
                            &headers,
                            &body,
                            call.job_deadline,
                            &self.policy,
                        ) {
                            Ok(answer) => (answer, CallOutcome::Success),
                            Err(message) => (Answer::Refused { message }, CallOutcome::Refused),
                        },
                    },
                    408 | 429 | 500..=599 => retryable(code, &headers),
                    400..=499 => (
                        Answer::Refused {
                            message: format!("the Try was refused: HTTP {code}{}", excerpt(&body)),
                        },
                        CallOutcome::Refused,
                    ),
                    _ => (
                        Answer::Refused {
                            message: format!(
                                "the Try answered HTTP {code}; a Try must answer 200 or 201"
                            ),
                        },
                        CallOutcome::Refused,
                    ),
                };
                (answer, outcome, Some(code))
            }
        };
        CallResult {
            answer,
            outcome,
            http_status,
            duration: started.elapsed(),
        }
    }

    /// `PUT {link}` with `application/tcc`.
    pub async fn confirm(&self, link: &Link, ids: &CallIds<'_>, timeout: Duration) -> CallResult {
        let mut headers = Self::base_headers(ids);
        headers.insert(CONTENT_TYPE, "application/tcc".parse().expect("static"));
        headers.insert(ACCEPT, "application/tcc".parse().expect("static"));
        self.settle(Method::PUT, Op::Confirm, link, headers, timeout)
            .await
    }

    /// `DELETE {link}`.
    pub async fn cancel(&self, link: &Link, ids: &CallIds<'_>, timeout: Duration) -> CallResult {
        let mut headers = Self::base_headers(ids);
        headers.insert(ACCEPT, "application/tcc".parse().expect("static"));
        self.settle(Method::DELETE, Op::Cancel, link, headers, timeout)
            .await
    }

    /// The confirm or cancel of a task with its own URLs: `POST {confirmURL}` or
    /// `POST {cancelURL}` with the task's body, any 2xx a success; or, for a DTM branch, the call
    /// DTM makes (`dtm_call`).
    pub async fn settle_own(
        &self,
        op: Op,
        callbacks: &Callbacks,
        branch_headers: &[(String, String)],
        ids: &CallIds<'_>,
        timeout: Duration,
    ) -> CallResult {
        let started = Instant::now();
        let url = match op {
            Op::Cancel => &callbacks.cancel_url,
            Op::Try | Op::Confirm => &callbacks.confirm_url,
        };
        let what = op.as_str();
        let mut headers = Self::base_headers(ids);
        headers.insert(ACCEPT, "application/json".parse().expect("static"));
        let sent = match &callbacks.dtm {
            None => {
                headers.insert(CONTENT_TYPE, "application/json".parse().expect("static"));
                let body = callbacks
                    .body
                    .as_ref()
                    .map_or_else(|| b"{}".to_vec(), |b| b.to_string().into_bytes());
                self.send_target(Method::POST, url, headers, Some(body), timeout)
                    .await
            }
            Some(branch) => {
                // DTM's query on the URL: the same host, so the same answer from the policy.
                let mut target = url.url().clone();
                target
                    .query_pairs_mut()
                    .append_pair("gid", &branch.gid)
                    .append_pair("trans_type", "tcc")
                    .append_pair("branch_id", &branch.branch_id)
                    .append_pair("op", what);
                // The transaction's branch_headers, but never one that frames the request or
                // names the call (the coordinator's own headers win).
                for (name, value) in branch_headers {
                    let framing = ["host", "content-length", "transfer-encoding", "connection"]
                        .iter()
                        .any(|h| name.eq_ignore_ascii_case(h));
                    if framing || headers.contains_key(name.as_str()) {
                        continue;
                    }
                    if let (Ok(n), Ok(v)) = (
                        reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        headers.insert(n, v);
                    }
                }
                if let Err(refused) = self.refused(url, &target) {
                    Err(refused)
                } else if branch.data.is_empty() {
                    self.send(Method::GET, &target, headers, None, timeout)
                        .await
                } else {
                    headers.insert(CONTENT_TYPE, "application/json".parse().expect("static"));
                    self.send(
                        Method::POST,
                        &target,
                        headers,
                        Some(branch.data.clone().into_bytes()),
                        timeout,
                    )
                    .await
                }
            }
        };
        let (answer, outcome, http_status) = match sent {
            Err(f) => failure(f, op),
            Ok((status, headers, body)) => {
                let code = status.as_u16();
                let (answer, outcome) = if callbacks.dtm.is_some() {
                    dtm_answer(what, code, &headers, &body)
                } else {
                    match code {
                        200..=299 => (Answer::Done, CallOutcome::Success),
                        408 | 429 | 500..=599 => retryable(code, &headers),
                        _ => (
                            Answer::Refused {
                                message: format!(
                                    "the participant refused the {what}: HTTP {code}{}",
                                    excerpt(&body)
                                ),
                            },
                            CallOutcome::Refused,
                        ),
                    }
                };
                (answer, outcome, Some(code))
            }
        };
        CallResult {
            answer,
            outcome,
            http_status,
            duration: started.elapsed(),
        }
    }

    async fn settle(
        &self,
        method: Method,
        op: Op,
        link: &Link,
        headers: HeaderMap,
        timeout: Duration,
    ) -> CallResult {
        let started = Instant::now();
        let sent = self
            .send_target(method, &link.uri, headers, Some(Vec::new()), timeout)
            .await;
        let (answer, outcome, http_status) = match sent {
            Err(f) => failure(f, op),
            Ok((status, headers, body)) => {
                let code = status.as_u16();
                let what = op.as_str();
                let (answer, outcome) = match (op, code) {
                    (_, 200..=299) => (Answer::Done, CallOutcome::Success),
                    (_, 404 | 410) => (
                        Answer::Gone {
                            message: format!(
                                "the {what} answered HTTP {code}: the reservation is gone"
                            ),
                        },
                        CallOutcome::Gone,
                    ),
                    (_, 408 | 429 | 500..=599) => retryable(code, &headers),
                    (Op::Cancel, 405) => (
                        Answer::NotImplemented {
                            message: format!("the cancel answered HTTP {code}"),
                        },
                        CallOutcome::Refused,
                    ),
                    (Op::Cancel, 409) => (
                        Answer::AlreadyConfirmed {
                            message: format!("the cancel answered HTTP {code}"),
                        },
                        CallOutcome::Refused,
                    ),
                    (_, 400..=499) => (
                        Answer::Refused {
                            message: format!(
                                "the participant refused the {what}: HTTP {code}{}",
                                excerpt(&body)
                            ),
                        },
                        CallOutcome::Refused,
                    ),
                    _ => (
                        Answer::Retryable {
                            message: format!("the {what} answered HTTP {code}"),
                            retry_after: None,
                        },
                        CallOutcome::Retryable,
                    ),
                };
                (answer, outcome, Some(code))
            }
        };
        CallResult {
            answer,
            outcome,
            http_status,
            duration: started.elapsed(),
        }
    }
}

/// A DTM branch's answer as DTM reads it: 425, or `ONGOING` in the body, is to be tried again;
/// 409, or `FAILURE` in the body, is a refusal; any other 200 a success; anything else is
/// retried (500, 502 and 504 as calls that may have been applied).
fn dtm_answer(
    what: &str,
    code: u16,
    headers: &HeaderMap,
    body: &Result<Vec<u8>, String>,
) -> (Answer, CallOutcome) {
    let text = match body {
        Ok(b) => String::from_utf8_lossy(b),
        Err(_) => "".into(),
    };
    if code == 425 || text.contains("ONGOING") {
        return (
            Answer::Retryable {
                message: format!("the branch answered ONGOING to the {what} (HTTP {code})"),
                retry_after: None,
            },
            CallOutcome::Retryable,
        );
    }
    if code == 409 || text.contains("FAILURE") {
        return (
            Answer::Refused {
                message: format!(
                    "the branch answered FAILURE to the {what}: HTTP {code}{}",
                    excerpt(body)
                ),
            },
            CallOutcome::Refused,
        );
    }
    match code {
        200 => (Answer::Done, CallOutcome::Success),
        500..=599 | 408 | 429 => retryable(code, headers),
        _ => (
            Answer::Retryable {
                message: format!("the {what} answered HTTP {code}{}", excerpt(body)),
                retry_after: None,
            },
            CallOutcome::Retryable,
        ),
    }
}

/// A JSON answer, if the body is one.
fn parse_json(body: &[u8]) -> Option<Value> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        serde_json::from_slice(body).ok()
    }
}

/// The answer as the output mappings read it, and whether the task keeps it for display (small
/// and shallow enough to show, and to read back inside the job's representation).
fn kept_answer(json: Option<Value>, body: &[u8]) -> (Option<Value>, bool) {
    let response = json.map(|mut v| {
        make_storable(&mut v);
        v
    });
    let keep = body.len() <= MAX_KEPT_RESPONSE
        && response.as_ref().is_none_or(|v| {
            crate::domain::mapping::depth(v) <= crate::domain::mapping::MAX_BUILT_DEPTH
        });
    (response, keep)
}

fn classify_error(e: reqwest::Error) -> Failure {
    classify(&e, e.is_timeout(), e.is_connect())
}

/// A failed call: refused by the policy's resolver, timed out (it may have been received), not
/// connected (nothing was sent), or broken (it may have been received).
fn classify(e: &(dyn std::error::Error + 'static), timeout: bool, connect: bool) -> Failure {
    if let Some(why) = crate::outbound::refusal(e) {
        Failure::Refused(why)
    } else if timeout {
        Failure::Timeout("timed out".into())
    } else if connect {
        Failure::NotSent(format!("could not connect: {}", root_cause(e)))
    } else {
        Failure::Error(root_cause(e))
    }
}

/// Whether an error, or one it was caused by, is an I/O timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn failure(f: Failure, op: Op) -> (Answer, CallOutcome, Option<u16>) {
    let what = op.as_str();
    match f {
        Failure::Timeout(m) => (
            Answer::Unknown {
                message: format!("the {what} call {m}"),
            },
            CallOutcome::Timeout,
            None,
        ),
        Failure::NotSent(m) => (
            Answer::Retryable {
                message: format!("the {what} call failed: {m}"),
                retry_after: None,
            },
            CallOutcome::Error,
            None,
        ),
        Failure::Error(m) => (
            Answer::Unknown {
                message: format!("the {what} call failed: {m}"),
            },
            CallOutcome::Error,
            None,
        ),
        // Not sent. A Try reserved nothing: the task fails. A confirm or cancel is retried
        // (until its link expires), so that an operator who widens the policy can let it through.
        Failure::Refused(m) => {
            let message = format!("the {what} was not sent: {m}");
            let answer = match op {
                Op::Try => Answer::Refused { message },
                Op::Confirm | Op::Cancel => Answer::Retryable {
                    message,
                    retry_after: None,
                },
            };
            (answer, CallOutcome::Error, None)
        }
    }
}

/// 408, 429 and 503 say the request was not handled; 500, 502 and 504 leave it open whether it
/// was (an error after the effect, a gateway that lost the answer).
fn retryable(code: u16, headers: &HeaderMap) -> (Answer, CallOutcome) {
    if matches!(code, 500 | 502 | 504) {
        return (
            Answer::Unknown {
                message: format!("HTTP {code}"),
            },
            CallOutcome::Retryable,
        );
    }
    let retry_after = if code == 429 || code == 503 {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
    } else {
        None
    };
    (
        Answer::Retryable {
            message: format!("HTTP {code}"),
            retry_after,
        },
        CallOutcome::Retryable,
    )
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

fn excerpt(body: &Result<Vec<u8>, String>) -> String {
    match body {
        Ok(b) if !b.is_empty() => {
            let text = String::from_utf8_lossy(b);
            let short: String = text.chars().take(200).map(without_nul).collect();
            format!(" ({})", short.trim())
        }
        _ => String::new(),
    }
}

/// PostgreSQL stores no NUL character (U+0000) in text or JSON; what a participant said is kept
/// with each one shown as U+FFFD instead.
fn without_nul(c: char) -> char {
    if c == '\0' { '\u{FFFD}' } else { c }
}

/// Makes a participant's answer storable, in place: each NUL in a string or key becomes U+FFFD
/// (as in [`without_nul`]), and a number beyond ±`MAX_NUMBER` (which PostgreSQL would write back
/// in a form the JSON reader refuses) is kept as its text. A clean answer (the usual one) is not
/// copied.
fn make_storable(value: &mut Value) {
    const NUL: char = '\0';
    match value {
        Value::String(s) if s.contains(NUL) => *s = s.replace(NUL, "\u{FFFD}"),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() > MAX_NUMBER) => {
            *value = Value::String(n.to_string())
        }
        Value::Array(items) => items.iter_mut().for_each(make_storable),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(NUL)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace(NUL, "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(make_storable);
        }
        _ => {}
    }
}

/// The participant link of a Try answer: `participantLink` in a JSON body, else `Location`.
fn read_link(
    task_url: &url::Url,
    headers: &HeaderMap,
    body: &[u8],
    job_deadline: DateTime<Utc>,
    policy: &TargetPolicy,
) -> Result<Answer, String> {
    let json = parse_json(body);
    let from_body = json.as_ref().and_then(|j| j.get("participantLink"));
    let (uri, expires) = match from_body {
        Some(link) => {
            let uri = link
                .get("uri")
                .and_then(Value::as_str)
                .ok_or("the Try answer's participantLink has no uri string")?;
            (uri.to_string(), link.get("expires"))
        }
        None => {
            let location = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(
                    "the Try answer has no participant link (no participantLink in a JSON body and no Location header)",
                )?;
            (location.to_string(), None)
        }
    };
    // Against the task URL as parsed; an absolute link resolves to itself.
    let resolved = task_url
        .join(&uri)
        .map_err(|e| format!("the Try answer's link {uri:?} is not a URL: {e}"))?;
    let resolved = TargetUrl::from_url(resolved).map_err(|(why, u)| {
        let shown: String = u.as_str().chars().take(200).collect();
        format!("the Try answer's link {shown} {why}")
    })?;
    policy.check_target(&resolved).map_err(|why| {
        format!(
            "the Try answer's link {resolved} {why}; it is never called (what the participant reserved lapses at its expiry)"
        )
    })?;
    let now = Utc::now();
    let (expires, note) = match expires {
        None | Some(Value::Null) => (
            job_deadline,
            Some(format!(
                "reserved; the Try answer gave no expires, so the reservation is taken to last until the job deadline {}",
                rfc3339(job_deadline)
            )),
        ),
        Some(v) => {
            let text = v
                .as_str()
                .ok_or("the Try answer's expires is not a string")?;
            let at = crate::domain::request::parse_rfc3339(text).ok_or_else(|| {
                format!("the Try answer's expires {text:?} is not an RFC 3339 date-time")
            })?;
            if at <= now {
                return Err(format!(
                    "the Try answer's link already expired at {}",
                    rfc3339(at)
                ));
            }
            let latest = crate::domain::request::latest_expiry(now);
            if at > latest {
                // Confirms are retried until the link expires: never without a bound.
                (
                    latest,
                    Some(format!(
                        "reserved; the Try answer's expires {} is further ahead than a link may be, so the coordinator takes the reservation to last until {}",
                        rfc3339(at),
                        rfc3339(latest)
                    )),
                )
            } else {
                (at, None)
            }
        }
    };
    let (response, keep) = kept_answer(json, body);
    Ok(Answer::Reserved {
        link: Some(Link {
            uri: resolved,
            expires,
        }),
        note,
        response,
        keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deadline() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(60)
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("a URL")
    }

    #[test]
    fn link_from_body_resolves_relative() {
        let expires = rfc3339(Utc::now() + chrono::Duration::days(2));
        let body = format!(r#"{{"participantLink": {{"uri": "/r/1", "expires": "{expires}"}}}}"#);
        match read_link(
            &url("http://p:9/try/x"),
            &HeaderMap::new(),
            body.as_bytes(),
            deadline(),
            &TargetPolicy::default(),
        ) {
            Ok(Answer::Reserved {
                link: Some(link),
                note,
                ..
            }) => {
                assert_eq!(link.uri, "http://p:9/r/1");
                assert!(note.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    /// Confirms are retried until a link expires: an expiry further ahead than a link may be is
    /// taken as the latest one, and the task says so.
    #[test]
    fn an_expiry_too_far_ahead_is_taken_as_the_latest() {
        let body = br#"{"participantLink": {"uri": "/r/1", "expires": "2999-01-01T00:00:00Z"}}"#;
        match read_link(
            &url("http://p:9/try/x"),
            &HeaderMap::new(),
            body,
            deadline(),
            &TargetPolicy::default(),
        ) {
            Ok(Answer::Reserved {
                link: Some(link),
                note,
                ..
            }) => {
                assert!(link.expires <= crate::domain::request::latest_expiry(Utc::now()));
                assert!(note.is_some_and(|n| n.contains("2999")), "says so");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absolute_and_scheme_relative_links() {
        let cases = [
            ("HTTPS://Q:8443/r/1?x=1", "https://q:8443/r/1?x=1"),
            ("http://other/r/2", "http://other/r/2"),
            ("//q/r/3", "http://q/r/3"),
            ("http:r/4", "http://p:9/try/r/4"),
        ];
        for (uri, want) in cases {
            let body = json!({"participantLink": {"uri": uri, "expires": "2999-01-01T00:00:00Z"}});
            let body = serde_json::to_vec(&body).unwrap_or_default();
            match read_link(
                &url("http://p:9/try/x"),
                &HeaderMap::new(),
                &body,
                deadline(),
                &TargetPolicy::default(),
            ) {
                Ok(Answer::Reserved {
                    link: Some(link), ..
                }) => assert_eq!(link.uri, want, "{uri}"),
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn link_from_location_takes_the_deadline() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, "r/2".parse().expect("static"));
        let d = deadline();
        match read_link(&url("http://p/try/"), &h, b"", d, &TargetPolicy::default()) {
            Ok(Answer::Reserved {
                link: Some(link),
                note,
                ..
            }) => {
                assert_eq!(link.uri, "http://p/try/r/2");
                assert_eq!(link.expires, d);
                assert!(note.unwrap_or_default().contains("no expires"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unusable_answers_say_why() {
        let cases: [(&[u8], &str); 4] = [
            (b"{}", "no participant link"),
            (
                br#"{"participantLink": {"uri": "/r", "expires": "tomorrow"}}"#,
                "RFC 3339",
            ),
            (
                br#"{"participantLink": {"uri": "/r", "expires": "2000-01-01T00:00:00Z"}}"#,
                "already expired",
            ),
            (
                br#"{"participantLink": {"expires": "2999-01-01T00:00:00Z"}}"#,
                "no uri",
            ),
        ];
        for (body, want) in cases {
            let err = read_link(
                &url("http://p/t"),
                &HeaderMap::new(),
                body,
                deadline(),
                &TargetPolicy::default(),
            )
            .err()
            .unwrap_or_default();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
