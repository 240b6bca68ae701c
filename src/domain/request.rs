//! The job document as a client submits it (docs/api.md, "The job document"), parsed once into [`NewJob`].
//!
//! Parsing reports every broken rule at once, each with the JSON Pointer of the offending field,
//! so that a client can fix its document in one round.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::job::{Callbacks, Link, TrySpec};
use super::mapping::{MAX_POINTER_SEGMENTS, segments, valid_pointer};
use super::retry::RetryPolicyPatch;
use super::target::{TargetUrl, TaskId};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

/// A key as one reference token of a JSON Pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }

    /// Each error as `pointer: detail` (the detail alone at the root), joined by `; `: for an
    /// answer that has no list of errors.
    pub fn joined(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(|e| {
                if e.pointer.is_empty() {
                    e.detail.clone()
                } else {
                    format!("{}: {}", e.pointer, e.detail)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Limits that come from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tasks: usize,
}

pub const MAX_JOB_TTL: f64 = 604_800.0;
const MAX_TEXT: usize = 2048;
const MAX_CORRELATION_ID: usize = 128;
const MAX_TAGS: usize = 20;
const MAX_TAG: usize = 64;
const MAX_SHARED_STATE: usize = 256 * 1024;

/// The largest magnitude a number in a request may have. PostgreSQL's `jsonb` keeps numbers as
/// decimals and writes one near `f64::MAX` out in full, which the JSON reader then refuses as
/// out of range: a job holding one could no longer be read (found by schemathesis).
pub const MAX_NUMBER: f64 = 1e308;

/// How far ahead a participant link's `expires` may be: confirms are retried until a link
/// expires, so a link given with a later expiry is refused (and a Try answer's is taken as this).
pub const MAX_LINK_DAYS: i64 = 30;

/// The latest `expires` a link may have, given now.
pub fn latest_expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::days(MAX_LINK_DAYS)
}

fn too_far_ahead() -> String {
    format!(
        "is more than {MAX_LINK_DAYS} days ahead: a link the coordinator confirms expires within {MAX_LINK_DAYS} days"
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ParticipantLinkRequest)]
pub struct LinkWire {
    /// Absolute http(s) URL of the reserved participant resource.
    #[schema(format = "uri")]
    uri: Option<String>,
    /// RFC 3339; must be in the future.
    #[schema(format = DateTime)]
    expires: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TaskRequest)]
pub struct TaskWire {
    /// Unique in the job; default a generated id.
    #[schema(pattern = "^[A-Za-z0-9._~-]{1,128}$")]
    #[serde(rename = "taskID")]
    task_id: Option<String>,
    /// Free text.
    #[schema(max_length = 2048)]
    #[serde(rename = "taskDescription")]
    task_description: Option<String>,
    /// Absolute http(s) URL of the participant's Try endpoint (exactly one of taskURL and participantLink).
    #[schema(format = "uri")]
    #[serde(rename = "taskURL")]
    task_url: Option<String>,
    /// Sent as the Try body; default `{}`.
    #[schema(value_type = Option<Object>)]
    body: Option<Value>,
    /// `{pointerIntoBody: pointerIntoSharedState}` (RFC 6901), applied when the Try is sent.
    #[schema(value_type = Option<HashMap<String, String>>)]
    #[serde(rename = "inputMapping")]
    input_mapping: Option<serde_json::Map<String, Value>>,
    /// `{pointerIntoSharedState: pointerIntoTryResponse}`, applied when the Try answer arrives.
    #[schema(value_type = Option<HashMap<String, String>>)]
    #[serde(rename = "outputMapping")]
    output_mapping: Option<serde_json::Map<String, Value>>,
    /// Seconds for one Try call; default 10; capped by the time left to the deadline.
    #[schema(exclusive_minimum = 0)]
    #[serde(rename = "taskMaxTTL")]
    task_max_ttl: Option<f64>,
    #[serde(rename = "retryPolicy")]
    retry_policy: Option<RetryPolicyPatch>,
    /// An already reserved link (instead of taskURL).
    #[serde(rename = "participantLink")]
    participant_link: Option<LinkWire>,
    /// Where the coordinator confirms this task: `POST` with the task's body (with cancelURL,
    /// instead of a participant link; with or without a taskURL).
    #[schema(format = "uri")]
    #[serde(rename = "confirmURL")]
    confirm_url: Option<String>,
    /// Where the coordinator cancels this task: `POST` with the task's body.
    #[schema(format = "uri")]
    #[serde(rename = "cancelURL")]
    cancel_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// The example: an open job that participants register into (a job with tasks needs their
// services).
#[schema(as = JobRequest, example = json!({"correlationID": "order-42", "autoConfirm": false, "jobMaxTTL": 300, "tasks": []}))]
pub struct JobWire {
    /// Free text.
    #[schema(max_length = 2048)]
    description: Option<String>,
    /// Default: the jobID.
    #[schema(min_length = 1, max_length = 128)]
    #[serde(rename = "correlationID")]
    correlation_id: Option<String>,
    /// Seconds (fractions allowed); default 60.
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    #[serde(rename = "jobMaxTTL")]
    job_max_ttl: Option<f64>,
    /// Default true; a job with no task must say false.
    #[serde(rename = "autoConfirm")]
    auto_confirm: Option<bool>,
    /// Receives a POST when the job completes.
    #[schema(format = "uri")]
    #[serde(rename = "jobSuccessURL")]
    job_success_url: Option<String>,
    /// Receives a POST when the job ends failed, canceled or heuristic.
    #[schema(format = "uri")]
    #[serde(rename = "jobFailedURL")]
    job_failed_url: Option<String>,
    contact: Option<Contact>,
    /// Each 1–64 characters.
    #[schema(max_items = 20)]
    tags: Option<Vec<String>>,
    /// At most 256 KiB serialized; default `{}`.
    #[schema(value_type = Option<Object>)]
    #[serde(rename = "sharedState")]
    shared_state: Option<Value>,
    #[serde(rename = "retryPolicy")]
    retry_policy: Option<RetryPolicyPatch>,
    /// 0 to TCC_MAX_TASKS (default 100).
    #[schema(max_items = 100)]
    tasks: Option<Vec<TaskWire>>,
}

/// A task as accepted: either a Try to send or an already reserved link.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub task_id: TaskId,
    pub description: Option<String>,
    pub kind: NewTaskKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NewTaskKind {
    Try(TrySpec),
    Link(Link),
    /// Its own confirm and cancel URLs; with a Try the coordinator sends, or tried by the client.
    Callbacks {
        try_spec: Option<TrySpec>,
        callbacks: Box<Callbacks>,
    },
}

/// The job-level fields as they are stored (`jobs.fields`) and shown back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "correlationID", skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(rename = "jobMaxTTL")]
    pub job_max_ttl: f64,
    pub auto_confirm: bool,
    #[serde(rename = "jobSuccessURL", skip_serializing_if = "Option::is_none")]
    pub job_success_url: Option<String>,
    #[serde(rename = "jobFailedURL", skip_serializing_if = "Option::is_none")]
    pub job_failed_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyPatch>,
    /// The definition (and its version) the job was started from, if any: set by the start
    /// (`POST /job-definitions/{name}/jobs`), never by the job document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<super::definition::DefinitionRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub fields: JobFields,
    pub shared_state: Value,
    pub tasks: Vec<NewTask>,
}

/// Turn a serde error path into a JSON Pointer.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } => out.push_str(&pointer_token(key)),
            Segment::Enum { variant } => out.push_str(variant),
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

/// Deserialize with the path of the first type error or unknown field.
pub fn from_value<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let pointer = pointer_of(e.path());
        let inner = e.into_inner().to_string();
        // serde's own words, trimmed of the position it adds for text input.
        let detail = match inner.find(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        vec![FieldError::new(pointer, detail)]
    })
}

/// An absolute http(s) URL, or why not (the rule of `TargetUrl`).
pub fn check_url(url: &str) -> Result<(), &'static str> {
    TargetUrl::parse(url).map(|_| ())
}

pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn check_text(errors: &mut Vec<FieldError>, pointer: &str, text: &Option<String>, max: usize) {
    if let Some(t) = text
        && t.chars().count() > max
    {
        errors.push(FieldError::new(
            pointer,
            format!("must be at most {max} characters"),
        ));
    }
}

fn check_opt_url(errors: &mut Vec<FieldError>, pointer: &str, url: &Option<String>) {
    if let Some(u) = url
        && let Err(d) = check_url(u)
    {
        errors.push(FieldError::new(pointer, d));
    }
}

fn check_seconds(
    errors: &mut Vec<FieldError>,
    pointer: &str,
    value: f64,
    max: f64,
) -> Result<(), ()> {
    if !(value > 0.0 && value <= max) {
        errors.push(FieldError::new(
            pointer,
            format!("must be a number of seconds greater than 0 and at most {max}"),
        ));
        return Err(());
    }
    Ok(())
}

pub fn check_retry_policy(errors: &mut Vec<FieldError>, pointer: &str, p: &RetryPolicyPatch) {
    if let Some(n) = p.max_attempts
        && !(1..=100).contains(&n)
    {
        errors.push(FieldError::new(
            format!("{pointer}/maxAttempts"),
            "must be between 1 and 100",
        ));
    }
    for (name, v, max) in [
        ("initialDelay", p.initial_delay, 3600.0),
        ("maxDelay", p.max_delay, 86_400.0),
    ] {
        if let Some(v) = v
            && !(0.0..=max).contains(&v)
        {
            errors.push(FieldError::new(
                format!("{pointer}/{name}"),
                format!("must be a number of seconds between 0 and {max}"),
            ));
        }
    }
    if let (Some(i), Some(m)) = (p.initial_delay, p.max_delay)
        && i > m
    {
        errors.push(FieldError::new(
            format!("{pointer}/maxDelay"),
            "must not be less than initialDelay",
        ));
    }
    if let Some(m) = p.multiplier
        && !(1.0..=100.0).contains(&m)
    {
        errors.push(FieldError::new(
            format!("{pointer}/multiplier"),
            "must be between 1 and 100",
        ));
    }
}

/// Check a participant link given by a client: absolute http(s) `uri`, `expires` in the future.
pub fn check_link(
    errors: &mut Vec<FieldError>,
    pointer: &str,
    uri: Option<&str>,
    expires: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Link> {
    let before = errors.len();
    let uri = match uri {
        None => {
            errors.push(FieldError::new(format!("{pointer}/uri"), "is required"));
            None
        }
        Some(u) => TargetUrl::parse(u)
            .map_err(|d| errors.push(FieldError::new(format!("{pointer}/uri"), d)))
            .ok(),
    };
    let expires = match expires {
        None => {
            errors.push(FieldError::new(format!("{pointer}/expires"), "is required"));
            None
        }
        Some(e) => match parse_rfc3339(e) {
            None => {
                errors.push(FieldError::new(
                    format!("{pointer}/expires"),
                    "must be an RFC 3339 date-time, like 2026-11-23T10:15:54Z",
                ));
                None
            }
            Some(t) if t <= now => {
                errors.push(FieldError::new(
                    format!("{pointer}/expires"),
                    "is in the past: the reservation has already lapsed",
                ));
                None
            }
            Some(t) if t > latest_expiry(now) => {
                errors.push(FieldError::new(
                    format!("{pointer}/expires"),
                    too_far_ahead(),
                ));
                None
            }
            Some(t) => Some(t),
        },
    };
    if errors.len() > before {
        return None;
    }
    Some(Link {
        uri: uri?,
        expires: expires?,
    })
}

fn mapping_pairs(
    errors: &mut Vec<FieldError>,
    pointer: &str,
    map: &Option<serde_json::Map<String, Value>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (target, source) in map.iter().flatten() {
        let escaped = pointer_token(target);
        let here = format!("{pointer}/{escaped}");
        // Deeper than a body may nest: a target would build a shared state nobody can read back.
        let too_deep = |ptr: &str| {
            (segments(ptr) > MAX_POINTER_SEGMENTS).then(|| {
                format!(
                    "{} segments; a mapping's pointer has at most {MAX_POINTER_SEGMENTS}",
                    segments(ptr)
                )
            })
        };
        if !valid_pointer(target) {
            errors.push(FieldError::new(
                &here,
                "the key must be a JSON Pointer (RFC 6901), like /customer/id",
            ));
        } else if let Some(why) = too_deep(target) {
            errors.push(FieldError::new(&here, format!("the key has {why}")));
        }
        match source.as_str() {
            Some(s) if valid_pointer(s) => match too_deep(s) {
                Some(why) => errors.push(FieldError::new(&here, format!("has {why}"))),
                None => out.push((target.clone(), s.to_string())),
            },
            _ => errors.push(FieldError::new(
                &here,
                "must be a JSON Pointer string (RFC 6901), like /customer",
            )),
        }
    }
    out
}

/// The largest shared state, serialized.
pub const MAX_SHARED_STATE_BYTES: usize = MAX_SHARED_STATE;

/// A shared state as a client writes it (`PUT`, or the result of a `PATCH`): a JSON object of
/// at most 256 KiB serialized, with no NUL character.
pub fn check_shared_state(value: &Value) -> Result<(), Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new(
            "",
            "the shared state must be a JSON object",
        )]);
    }
    if serde_json::to_vec(value).map_or(0, |v| v.len()) > MAX_SHARED_STATE {
        return Err(vec![FieldError::new(
            "",
            "the shared state must be at most 256 KiB serialized",
        )]);
    }
    let nul = nul_errors(value);
    if nul.is_empty() { Ok(()) } else { Err(nul) }
}

/// Where a document holds the NUL character (U+0000), in a key or a string: PostgreSQL can store
/// neither, so such a document is refused up front rather than failing when it is written.
pub fn nul_errors(value: &Value) -> Vec<FieldError> {
    const MESSAGE: &str = "must not contain the NUL character (U+0000)";
    fn walk(v: &Value, pointer: &mut String, out: &mut Vec<FieldError>) {
        match v {
            Value::String(s) if s.contains('\0') => {
                out.push(FieldError::new(pointer.clone(), MESSAGE));
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push_str(&format!("/{i}"));
                    walk(item, pointer, out);
                    pointer.truncate(len);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&pointer_token(key));
                    if key.contains('\0') {
                        out.push(FieldError::new(
                            pointer.clone(),
                            format!("the key {MESSAGE}"),
                        ));
                    }
                    walk(item, pointer, out);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }
    /// Whether there is any, before the walk that names where (which builds a pointer to
    /// every value it passes).
    fn any(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(any),
            Value::Object(map) => map
                .iter()
                .any(|(key, item)| key.contains('\0') || any(item)),
            _ => false,
        }
    }
    let mut out = Vec::new();
    if any(value) {
        walk(value, &mut String::new(), &mut out);
    }
    out
}

/// Parse and check a job document. `now` judges link expiries.
pub fn parse_job(
    value: &Value,
    limits: Limits,
    now: DateTime<Utc>,
) -> Result<NewJob, Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new("", "the job must be a JSON object")]);
    }
    let nul = nul_errors(value);
    if !nul.is_empty() {
        return Err(nul);
    }
    let wire: JobWire = from_value(value)?;
    let mut errors = Vec::new();

    check_text(&mut errors, "/description", &wire.description, MAX_TEXT);
    if let Some(c) = &wire.correlation_id
        && (c.is_empty() || c.chars().count() > MAX_CORRELATION_ID)
    {
        errors.push(FieldError::new(
            "/correlationID",
            format!("must be 1 to {MAX_CORRELATION_ID} characters"),
        ));
    } else if let Some(c) = &wire.correlation_id
        && c.chars().any(char::is_control)
    {
        // Every participant call carries it as the correlation-id header.
        errors.push(FieldError::new(
            "/correlationID",
            "must hold no control character (CR, LF, tab, ...): it is sent as the correlation-id header",
        ));
    }
    let job_max_ttl = wire.job_max_ttl.unwrap_or(60.0);
    let _ = check_seconds(&mut errors, "/jobMaxTTL", job_max_ttl, MAX_JOB_TTL);
    check_opt_url(&mut errors, "/jobSuccessURL", &wire.job_success_url);
    check_opt_url(&mut errors, "/jobFailedURL", &wire.job_failed_url);
    if let Some(c) = &wire.contact {
        check_text(&mut errors, "/contact/person", &c.person, MAX_TEXT);
        if let Some(e) = &c.email {
            let ok = e.len() <= 254
                && e.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
                })
                && !e
                    .chars()
                    .any(|c| c.is_whitespace() || c == ',' || c == '<' || c == '>');
            if !ok {
                errors.push(FieldError::new(
                    "/contact/email",
                    "must be an email address, like ops@example.org",
                ));
            }
        }
        check_opt_url(&mut errors, "/contact/webhook", &c.webhook);
    }
    let tags = wire.tags.clone().unwrap_or_default();
    if tags.len() > MAX_TAGS {
        errors.push(FieldError::new(
            "/tags",
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        let n = t.chars().count();
        if n == 0 || n > MAX_TAG {
            errors.push(FieldError::new(
                format!("/tags/{i}"),
                format!("must be 1 to {MAX_TAG} characters"),
            ));
        }
    }
    let shared_state = wire
        .shared_state
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !shared_state.is_object() {
        errors.push(FieldError::new("/sharedState", "must be a JSON object"));
    } else if serde_json::to_vec(&shared_state).map_or(0, |v| v.len()) > MAX_SHARED_STATE {
        errors.push(FieldError::new(
            "/sharedState",
            "must be at most 256 KiB serialized",
        ));
    }
    if let Some(p) = &wire.retry_policy {
        check_retry_policy(&mut errors, "/retryPolicy", p);
    }

    let wire_tasks = wire.tasks.clone().unwrap_or_default();
    let auto_confirm = wire.auto_confirm.unwrap_or(true);
    if wire_tasks.len() > limits.max_tasks {
        errors.push(FieldError::new(
            "/tasks",
            format!(
                "{} tasks given; at most {} are allowed",
                wire_tasks.len(),
                limits.max_tasks
            ),
        ));
    }
    if wire_tasks.is_empty() && auto_confirm {
        errors.push(FieldError::new(
            "/autoConfirm",
            "a job with no task must set autoConfirm to false (an open job that participants register into)",
        ));
    }

    let mut tasks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in wire_tasks.iter().enumerate() {
        let p = format!("/tasks/{i}");
        let task_id = match &t.task_id {
            Some(id) => TaskId::parse(id)
                .map_err(|d| errors.push(FieldError::new(format!("{p}/taskID"), d)))
                .ok(),
            None => TaskId::parse(&format!("task-{}", i + 1)).ok(),
        };
        if let Some(task_id) = &task_id
            && !seen.insert(task_id.clone())
        {
            errors.push(FieldError::new(
                format!("{p}/taskID"),
                format!("duplicate taskID {task_id:?}: task IDs must be unique in the job"),
            ));
        }
        check_text(
            &mut errors,
            &format!("{p}/taskDescription"),
            &t.task_description,
            MAX_TEXT,
        );
        let callbacks = match (&t.confirm_url, &t.cancel_url) {
            (None, None) => None,
            (Some(confirm), Some(cancel)) => {
                let confirm = TargetUrl::parse(confirm)
                    .map_err(|d| errors.push(FieldError::new(format!("{p}/confirmURL"), d)))
                    .ok();
                let cancel = TargetUrl::parse(cancel)
                    .map_err(|d| errors.push(FieldError::new(format!("{p}/cancelURL"), d)))
                    .ok();
                if t.participant_link.is_some() {
                    errors.push(FieldError::new(
                        format!("{p}/participantLink"),
                        "a task with confirmURL and cancelURL has no participant link",
                    ));
                }
                Some(confirm.zip(cancel))
            }
            (Some(_), None) => {
                errors.push(FieldError::new(
                    format!("{p}/cancelURL"),
                    "a task with a confirmURL needs a cancelURL too",
                ));
                Some(None)
            }
            (None, Some(_)) => {
                errors.push(FieldError::new(
                    format!("{p}/confirmURL"),
                    "a task with a cancelURL needs a confirmURL too",
                ));
                Some(None)
            }
        };
        let kind = match (&t.task_url, &t.participant_link) {
            _ if callbacks.is_some() => {
                let try_spec = match &t.task_url {
                    Some(url) => try_spec_of(&mut errors, &p, url, t),
                    None => {
                        only_with_a_try(&mut errors, &p, t, false);
                        if let Some(rp) = &t.retry_policy {
                            check_retry_policy(&mut errors, &format!("{p}/retryPolicy"), rp);
                        }
                        None
                    }
                };
                match callbacks.flatten() {
                    Some((confirm_url, cancel_url))
                        if t.task_url.is_none() || try_spec.is_some() =>
                    {
                        Some(NewTaskKind::Callbacks {
                            try_spec,
                            callbacks: Box::new(Callbacks {
                                confirm_url,
                                cancel_url,
                                body: t.body.clone(),
                                dtm: None,
                                retry_policy: if t.task_url.is_none() {
                                    t.retry_policy
                                } else {
                                    None
                                },
                            }),
                        })
                    }
                    _ => None,
                }
            }
            (Some(_), Some(_)) | (None, None) => {
                errors.push(FieldError::new(
                    &p,
                    "a task must have exactly one of taskURL or participantLink, or a confirmURL and a cancelURL",
                ));
                None
            }
            (Some(url), None) => try_spec_of(&mut errors, &p, url, t).map(NewTaskKind::Try),
            (None, Some(link)) => {
                only_with_a_try(&mut errors, &p, t, true);
                check_link(
                    &mut errors,
                    &format!("{p}/participantLink"),
                    link.uri.as_deref(),
                    link.expires.as_deref(),
                    now,
                )
                .map(NewTaskKind::Link)
            }
        };
        if let (Some(kind), Some(task_id)) = (kind, task_id) {
            tasks.push(NewTask {
                task_id,
                description: t.task_description.clone(),
                kind,
            });
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(NewJob {
        fields: JobFields {
            description: wire.description,
            correlation_id: wire.correlation_id,
            job_max_ttl,
            auto_confirm,
            job_success_url: wire.job_success_url,
            job_failed_url: wire.job_failed_url,
            contact: wire.contact,
            tags,
            retry_policy: wire.retry_policy,
            definition: None,
        },
        shared_state,
        tasks,
    })
}

/// The fields of a Try given to a task without a `taskURL`, each refused. A link task has no
/// body and no policy either (`linked`); a task with its own URLs sends its body with its confirm
/// and cancel, and retries them with its policy.
fn only_with_a_try(errors: &mut Vec<FieldError>, p: &str, t: &TaskWire, linked: bool) {
    for (field, present) in [
        ("body", linked && t.body.is_some()),
        ("inputMapping", t.input_mapping.is_some()),
        ("outputMapping", t.output_mapping.is_some()),
        ("taskMaxTTL", t.task_max_ttl.is_some()),
        ("retryPolicy", linked && t.retry_policy.is_some()),
    ] {
        if present {
            errors.push(FieldError::new(
                format!("{p}/{field}"),
                "applies only to a task with a taskURL",
            ));
        }
    }
}

/// The Try of a task with a `taskURL`: the URL, the timeout, the policy and the mappings checked.
fn try_spec_of(errors: &mut Vec<FieldError>, p: &str, url: &str, t: &TaskWire) -> Option<TrySpec> {
    let target = TargetUrl::parse(url)
        .map_err(|d| errors.push(FieldError::new(format!("{p}/taskURL"), d)))
        .ok();
    let ttl = t.task_max_ttl.unwrap_or(10.0);
    let _ = check_seconds(errors, &format!("{p}/taskMaxTTL"), ttl, MAX_JOB_TTL);
    if let Some(rp) = &t.retry_policy {
        check_retry_policy(errors, &format!("{p}/retryPolicy"), rp);
    }
    let input_mapping = mapping_pairs(errors, &format!("{p}/inputMapping"), &t.input_mapping);
    let output_mapping = mapping_pairs(errors, &format!("{p}/outputMapping"), &t.output_mapping);
    target.map(|task_url| TrySpec {
        task_url,
        body: t.body.clone(),
        input_mapping,
        output_mapping,
        task_max_ttl: ttl,
        retry_policy: t.retry_policy,
    })
}

/// The body of the Atomikos-compatible `PUT /coordinator/confirm` and `/cancel`:
/// `{"participantLinks": [{"uri", "expires"}...]}`, split into links still open and links whose
/// reservation has already lapsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSet {
    pub open: Vec<Link>,
    pub lapsed: Vec<Link>,
}

impl LinkSet {
    /// A digest of the set (order and spelling of the JSON aside): the same links give the same
    /// digest, so a repeated request finds the job made for the first.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let mut all: Vec<(String, String)> = self
            .open
            .iter()
            .chain(&self.lapsed)
            .map(|l| (l.uri.to_string(), l.expires.to_rfc3339()))
            .collect();
        all.sort();
        let mut h = sha2::Sha256::new();
        for (uri, expires) in all {
            h.update(uri.as_bytes());
            h.update([0]);
            h.update(expires.as_bytes());
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The job that carries out the set: a task per open link (`p1`, `p2`… in the order given),
    /// confirmed at once (`confirm`) or waiting for the cancel that follows.
    pub fn job(&self, confirm: bool) -> NewJob {
        let what = if confirm { "confirm" } else { "cancel" };
        let tasks = self
            .open
            .iter()
            .enumerate()
            .filter_map(|(i, link)| {
                Some(NewTask {
                    task_id: TaskId::parse(&format!("p{}", i + 1)).ok()?,
                    description: None,
                    kind: NewTaskKind::Link(link.clone()),
                })
            })
            .collect();
        NewJob {
            fields: JobFields {
                description: Some(format!(
                    "Atomikos-compatible {what} of {} participant links (PUT /coordinator/{what})",
                    self.open.len()
                )),
                correlation_id: None,
                job_max_ttl: 60.0,
                auto_confirm: confirm,
                job_success_url: None,
                job_failed_url: None,
                contact: None,
                tags: vec!["atomikos".to_string()],
                retry_policy: None,
                definition: None,
            },
            shared_state: Value::Object(Default::default()),
            tasks,
        }
    }
}

/// Parse an Atomikos link set: every link needs `uri` (an absolute http or https URL) and
/// `expires` (RFC 3339); at least one link, at most `max_links`, no uri twice. A link whose
/// `expires` has passed is not an error here: it makes the set too late to confirm.
pub fn parse_link_set(
    value: &Value,
    max_links: usize,
    now: DateTime<Utc>,
) -> Result<LinkSet, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(items) = value.get("participantLinks").and_then(Value::as_array) else {
        return Err(vec![FieldError::new(
            "/participantLinks",
            "is required: an array of {\"uri\", \"expires\"}",
        )]);
    };
    if items.is_empty() {
        errors.push(FieldError::new(
            "/participantLinks",
            "must hold at least one link",
        ));
    }
    if items.len() > max_links {
        errors.push(FieldError::new(
            "/participantLinks",
            format!(
                "holds {} links; at most {max_links} (TCC_MAX_TASKS)",
                items.len()
            ),
        ));
    }
    let mut set = LinkSet {
        open: Vec::new(),
        lapsed: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("/participantLinks/{i}");
        if !item.is_object() {
            errors.push(FieldError::new(
                &p,
                "must be an object {\"uri\", \"expires\"}",
            ));
            continue;
        }
        let text = |k: &str| item.get(k).map(|v| v.as_str().ok_or(()));
        let uri = match text("uri") {
            None => {
                errors.push(FieldError::new(format!("{p}/uri"), "is required"));
                None
            }
            Some(Err(())) => {
                errors.push(FieldError::new(format!("{p}/uri"), "must be a string"));
                None
            }
            Some(Ok(u)) => TargetUrl::parse(u)
                .map_err(|d| errors.push(FieldError::new(format!("{p}/uri"), d)))
                .ok(),
        };
        let expires = match text("expires") {
            None => {
                errors.push(FieldError::new(format!("{p}/expires"), "is required"));
                None
            }
            Some(Err(())) => {
                errors.push(FieldError::new(format!("{p}/expires"), "must be a string"));
                None
            }
            Some(Ok(e)) => match parse_rfc3339(e) {
                None => {
                    errors.push(FieldError::new(
                        format!("{p}/expires"),
                        "must be an RFC 3339 date-time, like 2026-11-23T10:15:54Z",
                    ));
                    None
                }
                Some(t) if t > latest_expiry(now) => {
                    errors.push(FieldError::new(format!("{p}/expires"), too_far_ahead()));
                    None
                }
                Some(t) => Some(t),
            },
        };
        if let (Some(uri), Some(expires)) = (uri, expires) {
            // As it is called: one spelling for one link (scheme and host in lower case, no
            // default port, no fragment), so that the same link spelled twice is one, and the
            // same set spelled otherwise is the same set.
            let uri = url::Url::parse(&uri)
                .ok()
                .map(|mut u| {
                    u.set_fragment(None);
                    u
                })
                .and_then(|u| TargetUrl::from_url(u).ok())
                .unwrap_or(uri);
            if !seen.insert(uri.to_string()) {
                errors.push(FieldError::new(
                    format!("{p}/uri"),
                    "names a link already in the set",
                ));
                continue;
            }
            let link = Link { uri, expires };
            if expires <= now {
                set.lapsed.push(link);
            } else {
                set.open.push(link);
            }
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// A participant's registration into an open job.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub hold: Hold,
    pub task_id: Option<TaskId>,
    pub description: Option<String>,
}

/// What a registered participant holds: a link to confirm or cancel, or its own URLs for both.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    Link(Link),
    Callbacks(Box<Callbacks>),
}

impl Hold {
    /// What the registration event names: the link, or the confirm URL.
    pub fn describe(&self) -> String {
        match self {
            Hold::Link(l) => format!("the link {}", l.uri.as_str()),
            Hold::Callbacks(c) => format!(
                "the confirm URL {} and the cancel URL {}",
                c.confirm_url.as_str(),
                c.cancel_url.as_str()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Registration)]
pub struct RegistrationWire {
    /// The participant's link (or give participantLink).
    #[schema(format = "uri")]
    uri: Option<String>,
    /// RFC 3339; must be in the future.
    #[schema(format = DateTime)]
    expires: Option<String>,
    /// An already reserved link (instead of uri and expires).
    #[serde(rename = "participantLink")]
    participant_link: Option<LinkWire>,
    /// Unique in the job; default `participant-N` (N: the task's place).
    #[schema(pattern = "^[A-Za-z0-9._~-]{1,128}$")]
    #[serde(rename = "taskID")]
    task_id: Option<String>,
    /// Free text.
    #[schema(max_length = 2048)]
    #[serde(rename = "taskDescription")]
    task_description: Option<String>,
    /// Where the coordinator confirms this participant: `POST` with `body` (with cancelURL,
    /// instead of a link).
    #[schema(format = "uri")]
    #[serde(rename = "confirmURL")]
    confirm_url: Option<String>,
    /// Where the coordinator cancels this participant: `POST` with `body`.
    #[schema(format = "uri")]
    #[serde(rename = "cancelURL")]
    cancel_url: Option<String>,
    /// Sent with the confirm and the cancel; default `{}`.
    #[schema(value_type = Option<Object>)]
    body: Option<Value>,
}

pub fn parse_registration(
    value: &Value,
    now: DateTime<Utc>,
) -> Result<Registration, Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new(
            "",
            "the registration must be a JSON object",
        )]);
    }
    let nul = nul_errors(value);
    if !nul.is_empty() {
        return Err(nul);
    }
    let wire: RegistrationWire = from_value(value)?;
    let mut errors = Vec::new();
    let has_link = wire.participant_link.is_some() || wire.uri.is_some() || wire.expires.is_some();
    let hold = if wire.confirm_url.is_some() || wire.cancel_url.is_some() {
        if has_link {
            errors.push(FieldError::new(
                "",
                "give either a link or confirmURL and cancelURL, not both",
            ));
        }
        let mut url = |field: &str, v: &Option<String>| match v {
            Some(u) => TargetUrl::parse(u)
                .map_err(|d| errors.push(FieldError::new(format!("/{field}"), d)))
                .ok(),
            None => {
                errors.push(FieldError::new(
                    format!("/{field}"),
                    "a participant with its own URLs needs both confirmURL and cancelURL",
                ));
                None
            }
        };
        let confirm = url("confirmURL", &wire.confirm_url);
        let cancel = url("cancelURL", &wire.cancel_url);
        confirm.zip(cancel).map(|(confirm_url, cancel_url)| {
            Hold::Callbacks(Box::new(Callbacks {
                confirm_url,
                cancel_url,
                body: wire.body.clone(),
                dtm: None,
                retry_policy: None,
            }))
        })
    } else {
        if wire.body.is_some() {
            errors.push(FieldError::new(
                "/body",
                "applies only to a participant with confirmURL and cancelURL",
            ));
        }
        registered_link(&mut errors, &wire, now).map(Hold::Link)
    };
    let task_id = wire.task_id.as_deref().and_then(|id| {
        TaskId::parse(id)
            .map_err(|d| errors.push(FieldError::new("/taskID", d)))
            .ok()
    });
    check_text(
        &mut errors,
        "/taskDescription",
        &wire.task_description,
        MAX_TEXT,
    );
    match hold {
        Some(hold) if errors.is_empty() => Ok(Registration {
            hold,
            task_id,
            description: wire.task_description,
        }),
        _ => Err(errors),
    }
}

/// The link of a registration: `participantLink`, or `uri` and `expires`.
fn registered_link(
    errors: &mut Vec<FieldError>,
    wire: &RegistrationWire,
    now: DateTime<Utc>,
) -> Option<Link> {
    match (
        &wire.participant_link,
        wire.uri.is_some() || wire.expires.is_some(),
    ) {
        (Some(_), true) => {
            errors.push(FieldError::new(
                "/participantLink",
                "give either participantLink or uri and expires, not both",
            ));
            None
        }
        (Some(l), false) => check_link(
            errors,
            "/participantLink",
            l.uri.as_deref(),
            l.expires.as_deref(),
            now,
        ),
        (None, _) => check_link(
            errors,
            "",
            wire.uri.as_deref(),
            wire.expires.as_deref(),
            now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        parse_rfc3339("2026-11-23T10:00:00Z").unwrap_or_default()
    }

    fn limits() -> Limits {
        Limits { max_tasks: 3 }
    }

    fn errors(v: Value) -> Vec<FieldError> {
        parse_job(&v, limits(), now()).err().unwrap_or_default()
    }

    fn pointers(v: Value) -> Vec<String> {
        errors(v).into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn spec_example_parses() {
        let v = json!({
          "description": "Book number 0586664302 for customer 42",
          "correlationID": "order-8812",
          "jobMaxTTL": 60,
          "autoConfirm": true,
          "jobSuccessURL": "http://orders.internal/tcc/done",
          "contact": {"person": "Mook Maundy", "email": "mook@example.org", "webhook": "http://pager.internal/hooks/tcc"},
          "tags": ["daily_batch"],
          "sharedState": {"customer": 42},
          "retryPolicy": {"maxAttempts": 3, "initialDelay": 0.1, "maxDelay": 30, "multiplier": 2},
          "tasks": [
            {"taskID": "reserve-number", "taskURL": "http://phones.internal/booking",
             "body": {"number": "0586664302"}, "inputMapping": {"/customerId": "/customer"},
             "outputMapping": {"/phoneBooking": "/participantLink/uri"}, "taskMaxTTL": 10,
             "retryPolicy": {"maxAttempts": 5}},
            {"taskID": "bill", "participantLink": {"uri": "http://billing.internal/bill/42", "expires": "2026-11-23T10:15:54Z"}}
          ]
        });
        let job = parse_job(&v, limits(), now()).expect("valid");
        assert_eq!(job.tasks.len(), 2);
        assert!(matches!(job.tasks[1].kind, NewTaskKind::Link(_)));
        match &job.tasks[0].kind {
            NewTaskKind::Try(s) => {
                assert_eq!(
                    s.input_mapping,
                    vec![("/customerId".to_string(), "/customer".to_string())]
                );
                assert_eq!(s.retry_policy.and_then(|p| p.max_attempts), Some(5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let e = errors(json!({"jobMaxTtl": 5, "tasks": []}));
        assert_eq!(e.len(), 1);
        assert!(e[0].detail.contains("jobMaxTtl"), "{e:?}");
        let e = errors(json!({"tasks": [{"taskURL": "http://a/b", "bogus": 1}]}));
        assert!(e[0].pointer.starts_with("/tasks/0"), "{e:?}");
        assert!(e[0].detail.contains("bogus"), "{e:?}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = errors(json!({"jobMaxTTL": "ten", "tasks": [{"taskURL": "http://a"}]}));
        assert_eq!(e[0].pointer, "/jobMaxTTL");
    }

    #[test]
    fn every_rule_reports_its_pointer() {
        assert_eq!(
            pointers(json!({"tasks": [{"taskURL": "/relative"}]})),
            vec!["/tasks/0/taskURL"]
        );
        assert_eq!(
            pointers(json!({"jobMaxTTL": -1, "tasks": [{"taskURL": "http://a"}]})),
            vec!["/jobMaxTTL"]
        );
        assert_eq!(
            pointers(json!({"jobMaxTTL": 604801, "tasks": [{"taskURL": "http://a"}]})),
            vec!["/jobMaxTTL"]
        );
        assert_eq!(
            pointers(
                json!({"tasks": [{"taskURL": "http://a"}, {"taskURL": "http://b"}, {"taskURL": "http://c"}, {"taskURL": "http://d"}]})
            ),
            vec!["/tasks"]
        );
        assert_eq!(
            pointers(
                json!({"tasks": [{"taskID": "x", "taskURL": "http://a"}, {"taskID": "x", "taskURL": "http://b"}]})
            ),
            vec!["/tasks/1/taskID"]
        );
        assert_eq!(
            pointers(
                json!({"tasks": [{"participantLink": {"uri": "http://a/r", "expires": "2026-11-23T09:00:00Z"}}]})
            ),
            vec!["/tasks/0/participantLink/expires"]
        );
        assert_eq!(
            pointers(json!({"tasks": [{"taskURL": "http://a", "participantLink": {}}]})),
            vec!["/tasks/0"]
        );
        assert_eq!(pointers(json!({"tasks": []})), vec!["/autoConfirm"]);
        assert_eq!(
            pointers(
                json!({"correlationID": "a\r\nX-Injected: 1", "tasks": [{"taskURL": "http://a"}]})
            ),
            vec!["/correlationID"]
        );
        assert_eq!(
            pointers(json!({"tasks": [{"taskURL": format!("http://a/{}", "x".repeat(8192))}]})),
            vec!["/tasks/0/taskURL"]
        );
        assert_eq!(
            pointers(json!({"tags": [""], "tasks": [{"taskURL": "ftp://a"}]})),
            vec!["/tags/0", "/tasks/0/taskURL"]
        );
        assert_eq!(
            pointers(
                json!({"tasks": [{"taskURL": "http://a", "inputMapping": {"nope": "/x", "/a": 3}}]})
            ),
            vec!["/tasks/0/inputMapping/nope", "/tasks/0/inputMapping/~1a"]
        );
        // Pointers deeper than a body may nest: a target (which would build a shared state
        // nobody can read back) and a source.
        let deep = "/a".repeat(33);
        assert_eq!(
            pointers(
                json!({"tasks": [{"taskURL": "http://a", "outputMapping": {deep.clone(): "/x", "/ok": deep.clone(), "/fine": "/a".repeat(32)}}]})
            ),
            vec![
                format!("/tasks/0/outputMapping/{}", deep.replace('/', "~1")),
                "/tasks/0/outputMapping/~1ok".to_string()
            ]
        );
        assert_eq!(
            pointers(
                json!({"contact": {"email": "not-an-address"}, "tasks": [{"taskURL": "http://a"}]})
            ),
            vec!["/contact/email"]
        );
        assert_eq!(
            pointers(
                json!({"retryPolicy": {"maxAttempts": 0, "multiplier": 0.5}, "tasks": [{"taskURL": "http://a"}]})
            ),
            vec!["/retryPolicy/maxAttempts", "/retryPolicy/multiplier"]
        );
        assert_eq!(
            pointers(json!({"sharedState": [1], "tasks": [{"taskURL": "http://a"}]})),
            vec!["/sharedState"]
        );
    }

    /// One link spelled in several ways is one link: it is refused as a repeat, and the set
    /// spelled otherwise has the same digest (the same job, confirmed once).
    #[test]
    fn a_link_set_is_taken_as_its_links_are_called() {
        let soon = crate::domain::rfc3339(Utc::now() + chrono::Duration::minutes(5));
        let set = |uris: &[&str]| {
            let links: Vec<Value> = uris
                .iter()
                .map(|u| json!({"uri": u, "expires": soon}))
                .collect();
            parse_link_set(&json!({ "participantLinks": links }), 10, Utc::now())
        };
        let spelled = [
            "HTTP://A.example/r/dd",
            "http://a.example/r/dd#x",
            "http://a.example:80/r/dd ",
        ];
        for other in spelled {
            let errors = set(&["http://a.example/r/dd", other])
                .err()
                .unwrap_or_default();
            assert_eq!(errors.len(), 1, "{other}: {errors:?}");
            assert_eq!(errors[0].pointer, "/participantLinks/1/uri");
        }
        let digest = |u: &str| set(&[u, "http://b.example/r/1"]).map(|s| s.digest()).ok();
        let first = digest("http://a.example/r/dd");
        assert!(first.is_some());
        for other in spelled {
            assert_eq!(digest(other), first, "{other}");
        }
    }

    #[test]
    fn default_task_ids_are_generated() {
        let job = parse_job(
            &json!({"tasks": [{"taskURL": "http://a"}, {"taskURL": "http://b"}]}),
            limits(),
            now(),
        )
        .expect("valid");
        let ids: Vec<_> = job.tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, vec!["task-1", "task-2"]);
    }

    #[test]
    fn registrations() {
        let r = parse_registration(
            &json!({"uri": "http://a/r/1", "expires": "2026-11-23T11:00:00Z", "taskID": "a"}),
            now(),
        )
        .expect("valid");
        assert_eq!(r.task_id.as_deref(), Some("a"));
        let r = parse_registration(
            &json!({"participantLink": {"uri": "http://a/r/1", "expires": "2026-11-23T11:00:00Z"}}),
            now(),
        )
        .expect("valid");
        assert!(matches!(&r.hold, Hold::Link(l) if l.uri == "http://a/r/1"));
        let e = parse_registration(&json!({"uri": "rel"}), now())
            .err()
            .unwrap_or_default();
        let p: Vec<_> = e.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(p, vec!["/uri", "/expires"]);
    }
}
