//! What a request carries, read and checked once: a JSON body (its type, size, depth and numbers),
//! a raw body, the `Idempotency-Key` and `traceparent` headers, the URLs a request names under
//! the target policy.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::error::{ApiError, ProblemType};
use crate::domain::request::{FieldError, MAX_NUMBER, pointer_token};
use crate::domain::{DefinitionName, JobId, TaskId};

/// (Also in `create_job`'s description, which takes a literal.)
pub(super) const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Read a JSON request body: `Content-Type` must be JSON (415), at most `max` bytes (413),
/// well-formed (400 with line and column).
pub(super) async fn read_json(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Value, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json_like = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json_like {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemType::UnsupportedMediaType,
            if ctype.is_empty() {
                "the body must be JSON, sent with Content-Type: application/json".to_string()
            } else {
                format!("the body must be JSON (Content-Type: application/json), not {ctype}")
            },
        ));
    }
    // A body announced larger than the limit is refused before it is read.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large("body", max));
    }
    let bytes = read_body(body, max, "body").await?;
    let depth = nesting(&bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ProblemType::JsonTooDeep,
            format!(
                "the body nests arrays and objects {depth} levels deep; the limit of JSON depth is {MAX_JSON_DEPTH}"
            ),
        ));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ProblemType::MalformedJson,
            format!(
                "the body is not valid JSON: {} (line {}, column {})",
                strip_position(&e.to_string()),
                e.line(),
                e.column()
            ),
        )
    })?;
    match huge_number(&value) {
        None => Ok(value),
        Some(pointer) => Err(ApiError::validation(vec![
            crate::domain::request::FieldError::new(
                pointer,
                format!(
                    "is a number beyond ±{MAX_NUMBER:e}; such numbers cannot be stored and read back faithfully"
                ),
            ),
        ])),
    }
}

/// A request body of at most `max` bytes: 413 when it is larger, 400 when it cannot be read (a
/// malformed chunked encoding, a connection cut short). `what` names it ("body", "form").
pub(super) async fn read_body(
    body: Body,
    max: usize,
    what: &str,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return too_large(what, max);
            }
            cause = c.source();
        }
        ApiError::bad_request(format!("the {what} could not be read: {e}"))
    })
}

/// 413: the body (or form) is larger than `max` bytes.
fn too_large(what: &str, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ProblemType::BodyTooLarge,
        format!("the {what} is larger than the limit of {max} bytes (TCC_MAX_BODY)"),
    )
}

/// The JSON Pointer of the first number in `v` beyond ±`MAX_NUMBER`, if any (nothing is
/// allocated unless one is found: this walks every request body).
fn huge_number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|f| f.abs() > MAX_NUMBER)
            .then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| huge_number(item).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            huge_number(item).map(|rest| format!("/{}{rest}", pointer_token(k)))
        }),
        _ => None,
    }
}

/// The deepest a request body may nest arrays and objects.
pub const MAX_JSON_DEPTH: usize = 32;

/// How deep a JSON text nests arrays and objects (brackets inside strings aside); a text that
/// is not JSON gets some number, and its parse says what is wrong.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn strip_position(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

/// The URLs a request names that `TCC_ALLOWED_TARGETS` refuses: 422, each by its field.
pub(super) fn allowed(refused: Vec<FieldError>) -> Result<(), ApiError> {
    if refused.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(refused))
    }
}

/// The incoming W3C `traceparent`, when well-formed (`00-<32 hex>-<16 hex>-<2 hex>`).
pub(super) fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("traceparent")?.to_str().ok()?.trim();
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2))
    .then_some(v)
}

/// The path's parameters by name (`job_id`, `task_id`); a path that cannot be read is a 400.
async fn path_params(parts: &mut Parts) -> Result<HashMap<String, String>, ApiError> {
    Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map(|Path(params)| params)
        .map_err(|e| ApiError::bad_request(format!("the path cannot be read: {}", e.body_text())))
}

/// The path's `{job_id}` as given, and as a job id (or the rule it breaks).
async fn job_id_param(
    parts: &mut Parts,
) -> Result<(String, Result<JobId, &'static str>), ApiError> {
    let raw = path_params(parts)
        .await?
        .remove("job_id")
        .unwrap_or_default();
    let id = JobId::parse(&raw);
    Ok((raw, id))
}

/// `{job_id}` of a job that must exist: an id no job can have is a 404, as an unknown one.
pub(super) struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let (raw, id) = job_id_param(parts).await?;
        id.map(JobPath)
            .map_err(|_| ApiError::not_found(format!("no job {raw}")))
    }
}

/// `{job_id}` of a job a client names to create it (`PUT /jobs/{id}`): an id that breaks the
/// rule is a 400 that says the rule.
pub(super) struct NewJobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for NewJobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let (_, id) = job_id_param(parts).await?;
        id.map(NewJobPath)
            .map_err(|rule| ApiError::bad_request(format!("the job id in the path {rule}")))
    }
}

/// A definition's `{name}` as given: one no definition can have is a 404, as an unknown one.
fn existing_definition(raw: &str) -> Result<DefinitionName, ApiError> {
    DefinitionName::parse(raw).map_err(|_| ApiError::not_found(format!("no job definition {raw}")))
}

/// `{name}` of a job definition that must exist: a name no definition can have is a 404.
pub(super) struct DefinitionPath(pub DefinitionName);

impl<S: Send + Sync> FromRequestParts<S> for DefinitionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = path_params(parts).await?.remove("name").unwrap_or_default();
        existing_definition(&raw).map(DefinitionPath)
    }
}

/// `{name}` of a job definition a PUT names: a name that breaks the rule is a 400 that says it.
pub(super) struct NewDefinitionPath(pub DefinitionName);

impl<S: Send + Sync> FromRequestParts<S> for NewDefinitionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = path_params(parts).await?.remove("name").unwrap_or_default();
        DefinitionName::parse(&raw)
            .map(NewDefinitionPath)
            .map_err(|rule| {
                ApiError::bad_request(format!("the definition name in the path {rule}"))
            })
    }
}

/// `{name}/versions/{version}`: a version that must exist (anything but 1, 2, ... is a 404).
pub(super) struct VersionPath(pub DefinitionName, pub i32);

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut params = path_params(parts).await?;
        let raw = params.remove("name").unwrap_or_default();
        let version = params.remove("version").unwrap_or_default();
        let name = existing_definition(&raw)?;
        let n = version
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ApiError::not_found(format!("job definition {name} has no version {version}"))
            })?;
        Ok(VersionPath(name, n))
    }
}

/// `{job_id}/tasks/{task_id}`: a task that must exist (an impossible id is a 404).
pub(super) struct TaskPath(pub JobId, pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut params = path_params(parts).await?;
        let job = params.remove("job_id").unwrap_or_default();
        let task = params.remove("task_id").unwrap_or_default();
        let job = JobId::parse(&job).map_err(|_| ApiError::not_found(format!("no job {job}")))?;
        let task = TaskId::parse(&task)
            .map_err(|_| ApiError::not_found(format!("job {job} has no task {task}")))?;
        Ok(TaskPath(job, task))
    }
}

#[cfg(test)]
mod depth {
    use super::nesting;

    #[test]
    fn nesting_counts_the_brackets_outside_strings() {
        assert_eq!(nesting(b"3"), 0);
        assert_eq!(nesting(br#"{}"#), 1);
        assert_eq!(nesting(br#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(nesting(br#"{"a":"[[[[\"]]]{{","b":"\\"}"#), 1);
        assert_eq!(nesting("[".repeat(40).as_bytes()), 40);
    }
}
