//! Handlers of the job resources.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::auth::Actor;
use super::repr::{self, JobRepr, TaskRepr};
use super::{ApiError, AppState, base_url, html, none_match, prefer_wait, read_json};
use crate::domain::policy::refusals;
use crate::domain::request::{self, FieldError, Limits, parse_rfc3339};
use crate::domain::{FailureReason, JobStatus};
use crate::engine::Accepted;
use crate::metrics as m;
use crate::store::{self, ClientRequest, JobFilter, JobRecord, Registered, RequestOutcome};

/// (Also in `create_job`'s description, which takes a literal.)
const MAX_IDEMPOTENCY_KEY: usize = 255;

pub(super) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    // The representations are plain data: serializing them cannot fail.
    let bytes = serde_json::to_string(body).unwrap_or_default();
    let etag = repr::etag(bytes.as_bytes());
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

/// `304 Not Modified` instead of `resp` when `If-None-Match` names its `ETag`.
fn unless_matched(resp: Response, headers: &HeaderMap) -> Response {
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
    let mut resp = json_response(status, &body);
    // The `Link` header states the document's own `_links`.
    if let Ok(v) = HeaderValue::from_str(&body.links.header()) {
        resp.headers_mut().insert(header::LINK, v);
    }
    if location && let Ok(v) = HeaderValue::from_str(&format!("{base}/jobs/{}", record.job.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Each task's outcome, for a problem body.
pub(super) fn outcomes(record: &JobRecord) -> Value {
    serde_json::to_value(repr::task_outcomes(record)).unwrap_or_default()
}

/// The URLs a request names that `TCC_ALLOWED_TARGETS` refuses: 422, each by its field.
pub(super) fn allowed(refused: Vec<FieldError>) -> Result<(), ApiError> {
    if refused.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(refused))
    }
}

/// `work` with the database, given up after `TCC_DB_TIMEOUT`: a database that cannot answer or
/// commit (failing over, a synchronous standby missing) is a 503, not a request that hangs. The
/// work given up may still take effect (a commit already sent), which is why the answer says
/// so and why a new job is repeated under its `Idempotency-Key`.
pub(super) async fn within<T>(
    state: &AppState,
    work: impl Future<Output = Result<T, store::StoreError>>,
) -> Result<T, store::StoreError> {
    let limit = state.settings.db_timeout;
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(store::StoreError::Unavailable(format!(
            "the database did not answer within {limit:?} (TCC_DB_TIMEOUT); what was asked may still take effect: look before repeating it"
        )))
    })
}

/// A pooled database connection; an unreachable database is a 503.
pub(super) async fn db(state: &AppState) -> Result<deadpool_postgres::Client, ApiError> {
    Ok(within(state, async {
        state.pool.get().await.map_err(store::StoreError::from)
    })
    .await?)
}

/// Record a client's confirm or cancel, and wake the job's driver when it was taken.
async fn record_request(
    state: &AppState,
    id: &str,
    what: ClientRequest,
    actor: &str,
) -> Result<RequestOutcome, ApiError> {
    let client = db(state).await?;
    let outcome = within(state, store::request(&client, id, what, actor)).await?;
    if outcome == RequestOutcome::Accepted {
        wake(state, id).await;
    }
    Ok(outcome)
}

/// Wake the job's driver, or claim the job, for a request just recorded; given up after
/// `TCC_DB_TIMEOUT` (the request is stored, and the scanner claims a job nobody drives).
pub(super) async fn wake(state: &AppState, id: &str) {
    let _ = tokio::time::timeout(state.settings.db_timeout, state.engine.wake(id)).await;
}

/// The job and its tasks only, for what shows no notifications (progress, its long poll).
async fn load_tasks(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let client = db(state).await?;
    within(state, store::load_job(&client, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

/// The job as its representation shows it, notifications included.
pub(super) async fn load(state: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let client = db(state).await?;
    within(state, store::load_shown(&client, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
}

/// The incoming W3C `traceparent`, when well-formed (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent(headers: &HeaderMap) -> Option<&str> {
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

#[utoipa::path(get, path = "/", tag = "entry", responses((status = 200, description = "Links to everything", body = Object)))]
pub async fn entry_point(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers);
    if html::prefers_html(&headers) {
        return html::pages::overview(&state, &base).await;
    }
    let body = json!({
        "name": "tcc-coordinator",
        "version": env!("CARGO_PKG_VERSION"),
        "_links": {
            "self": {"href": format!("{base}/"), "method": "GET", "title": "This entry point"},
            "jobs": {"href": format!("{base}/jobs"), "method": "GET", "title": "List jobs"},
            "heuristics": {"href": format!("{base}/heuristics"), "method": "GET", "title": "Unresolved heuristic jobs, oldest first"},
            "create-job": {"href": format!("{base}/jobs"), "method": "POST", "title": "Submit a job"},
            "atomikos-confirm": {"href": format!("{base}/coordinator/confirm"), "method": "PUT", "type": "application/tcc+json", "title": "Atomikos-compatible: confirm a set of participant links"},
            "atomikos-cancel": {"href": format!("{base}/coordinator/cancel"), "method": "PUT", "type": "application/tcc+json", "title": "Atomikos-compatible: cancel a set of participant links"},
            "metrics": {"href": format!("{base}/metrics"), "method": "GET", "title": "Prometheus metrics"},
            "health-live": {"href": format!("{base}/health/live"), "method": "GET", "title": "Liveness"},
            "health-ready": {"href": format!("{base}/health/ready"), "method": "GET", "title": "Readiness"},
            "service-desc": {"href": format!("{base}/openapi.json"), "method": "GET", "type": "application/openapi+json", "title": "The API's OpenAPI 3.1 description"},
        }
    });
    Ok(html::vary_accept(json_response(StatusCode::OK, &body)))
}

#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body(content = crate::domain::request::JobWire, content_type = "application/json"), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters. A replay with the same key and body answers the same; another body with the key, or the key from another API key, is 422", min_length = 1, max_length = 255, pattern = "^[ -~]+$")), responses((status = 202, description = "Accepted and started", body = crate::api::repr::JobRepr, headers(("Location" = String), ("Link" = String))), (status = 200, description = "A replay of an earlier request with the same Idempotency-Key", body = crate::api::repr::JobRepr), (status = 422, description = "A rule is broken: each in errors")))]
pub async fn create_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ))
                })?;
            Some(k.to_string())
        }
    };
    let now = Utc::now();
    let limits = Limits {
        max_tasks: state.settings.max_tasks,
    };
    let new = request::parse_job(&value, limits, now).map_err(ApiError::validation)?;
    allowed(refusals::job(&state.settings.targets, &new))?;
    // Only a replay under the same key compares hashes.
    let hash = key
        .as_ref()
        .map(|_| repr::sha256_hex(repr::canonical(&value).to_string().as_bytes()));
    let row = store::NewJobRow {
        id: crate::domain::JobId::generate(),
        job: new,
        source: "jcl",
        created_at: now,
        owner: state.engine.instance_id().to_string(),
        lease_ttl: state.engine.lease_ttl(),
        key_holder: key.as_ref().map(|_| actor.0.clone()),
        idempotency_key: key,
        request_hash: hash,
        traceparent: traceparent(&headers).map(str::to_string),
    };
    let inserted = within(&state, state.engine.accept(row)).await?;
    let base = base_url(&state, &headers);
    match inserted {
        Accepted::Created(record) => {
            metrics::counter!(m::JOBS_CREATED, "source" => "jcl").increment(1);
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        Accepted::Replay {
            id,
            same_request: true,
            ..
        } => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        // Keys are the holder's: another API key's job is neither answered nor named.
        Accepted::Replay {
            another_holder: true,
            ..
        } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was already used by another API key; use a key of your own",
        )),
        Accepted::Replay {
            id,
            same_request: false,
            ..
        } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            format!(
                "this Idempotency-Key was already used for job {id} with a different document; use a new key for a new job"
            ),
        )),
    }
}

/// `PUT /jobs/{id}`: create the job under the client's id (201); the same document again answers
/// the job as it stands (200); another document is a conflict (409), unless `If-Match` holds
/// the job's current `ETag` and no decision was taken: then its description, contact,
/// callbacks, tags, `autoConfirm` and `jobMaxTTL` are updated (200). Tasks, the correlation id,
/// the retry policy and the shared state cannot change this way.
#[utoipa::path(put, path = "/jobs/{jobID}", tag = "jobs", request_body(content = crate::domain::request::JobWire, content_type = "application/json"), params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-Match" = Option<String>, Header, description = "The current ETag: update the job's fields (before the decision)")), responses((status = 201, description = "Created with this id", body = crate::api::repr::JobRepr), (status = 200, description = "The same document again, or updated under If-Match", body = crate::api::repr::JobRepr), (status = 409, description = "Another document has this id"), (status = 412, description = "If-Match does not hold the current ETag"), (status = 422, description = "A rule is broken: each in errors")))]
pub async fn put_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let job_id = crate::domain::JobId::parse(&id)
        .map_err(|rule| ApiError::bad_request(format!("the job id in the path {rule}")))?;
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let now = Utc::now();
    let limits = Limits {
        max_tasks: state.settings.max_tasks,
    };
    let new = request::parse_job(&value, limits, now).map_err(ApiError::validation)?;
    allowed(refusals::job(&state.settings.targets, &new))?;
    let hash = repr::sha256_hex(repr::canonical(&value).to_string().as_bytes());
    let base = base_url(&state, &headers);
    let known = {
        let client = db(&state).await?;
        within(&state, store::request_hash(&client, &id)).await?
    };
    let stored_hash = match known {
        Some(hash) => hash,
        None => {
            let row = store::NewJobRow {
                id: job_id,
                job: new.clone(),
                source: "jcl",
                created_at: now,
                owner: state.engine.instance_id().to_string(),
                lease_ttl: state.engine.lease_ttl(),
                idempotency_key: None,
                key_holder: None,
                request_hash: Some(hash.clone()),
                traceparent: traceparent(&headers).map(str::to_string),
            };
            let failed = match within(&state, state.engine.accept(row)).await {
                Ok(Accepted::Created(record)) => {
                    metrics::counter!(m::JOBS_CREATED, "source" => "jcl").increment(1);
                    return Ok(job_response(StatusCode::CREATED, &base, &record, true));
                }
                // No idempotency key was given: a replay cannot come back.
                Ok(Accepted::Replay { .. }) => None,
                Err(e) => Some(e),
            };
            // Another PUT of the same id may have won the race: answer as to a second PUT.
            let client = db(&state).await?;
            match within(&state, store::request_hash(&client, &id)).await? {
                Some(hash) => hash,
                None => {
                    return Err(failed.map(ApiError::from).unwrap_or_else(|| {
                        ApiError::conflict(format!("job {id} could not be stored; try again"))
                    }));
                }
            }
        }
    };
    let record = load(&state, &id).await?;
    if stored_hash.as_deref() == Some(hash.as_str()) {
        return Ok(job_response(StatusCode::OK, &base, &record, false));
    }
    let Some(tags) = super::if_match(&headers) else {
        return Err(ApiError::conflict(format!(
            "job {id} exists with another document; to update it, send If-Match with its current ETag"
        )));
    };
    let current = job_response(StatusCode::OK, &base, &record, false);
    let etag = current
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !super::matches_any(&tags, etag) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            format!(
                "If-Match does not hold the job's current ETag ({etag}): it changed since it was read"
            ),
        ));
    }
    if let Some(why) = unchanged_parts(&record, &new, &value) {
        return Err(ApiError::conflict(why));
    }
    if !record.job.status.is_undecided() || record.job.cancel_requested {
        return Err(ApiError::conflict(format!(
            "the job is {}: it can only be updated before the decision",
            record.job.status
        )));
    }
    let event = crate::domain::Event::action(
        now,
        "update",
        &actor.0,
        Some("description, contact, callbacks, tags, autoConfirm and jobMaxTTL as sent".into()),
    );
    let written = {
        let client = db(&state).await?;
        within(
            &state,
            store::update_job(&client, &id, &new.fields, &hash, record.updated_at, &event),
        )
        .await?
    };
    if !written {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            "the job changed while it was being updated (or the decision was taken): read it again",
        ));
    }
    wake(&state, &id).await;
    let record = load(&state, &id).await?;
    Ok(job_response(StatusCode::OK, &base, &record, false))
}

/// What an update may not change: the tasks (each as sent: its id when the document gives one,
/// its Try or link, its description), the correlation id, the retry policy. `Some`: what
/// differs.
fn unchanged_parts(record: &JobRecord, new: &request::NewJob, doc: &Value) -> Option<String> {
    let old = &record.fields;
    if new.fields.correlation_id.is_some() && new.fields.correlation_id != old.correlation_id {
        return Some("correlationID cannot change".into());
    }
    if new.fields.retry_policy != old.retry_policy {
        return Some("retryPolicy cannot change".into());
    }
    if new.tasks.len() > record.job.tasks.len() {
        return Some("tasks cannot change: the document has more tasks than the job".into());
    }
    for (i, (t, stored)) in new.tasks.iter().zip(&record.job.tasks).enumerate() {
        let id_given = doc["tasks"][i].get("taskID").is_some();
        let same = (!id_given || t.task_id == stored.task_id)
            && t.description == stored.description
            && match &t.kind {
                request::NewTaskKind::Try(spec) => stored.try_spec.as_deref() == Some(spec),
                request::NewTaskKind::Link(link) => {
                    stored.try_spec.is_none() && stored.link.as_ref() == Some(link)
                }
            };
        if !same {
            return Some(format!(
                "tasks cannot change: /tasks/{i} differs from the job's"
            ));
        }
    }
    None
}

#[utoipa::path(get, path = "/jobs/{jobID}", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-None-Match" = Option<String>, Header)), responses((status = 200, description = "The job", body = crate::api::repr::JobRepr, headers(("ETag" = String))), (status = 304, description = "Not modified"), (status = 404, description = "No such job")))]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load(&state, &id).await?;
    let base = base_url(&state, &headers);
    if html::prefers_html(&headers) {
        return html::pages::job(&state, &base, &record, None).await;
    }
    let resp = job_response(StatusCode::OK, &base, &record, false);
    Ok(html::vary_accept(unless_matched(resp, &headers)))
}

fn parse_list_query(q: Option<&str>) -> Result<JobFilter, ApiError> {
    let mut f = JobFilter {
        limit: 50,
        ..Default::default()
    };
    let bad = |name: &str, detail: String| {
        ApiError::bad_request(format!("query parameter {name}: {detail}"))
    };
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "status" => {
                if v == "working" {
                    f.statuses.extend(JobStatus::WORKING);
                } else {
                    let s = v.parse::<JobStatus>().map_err(|_| {
                        let detail = match v.as_ref() {
                            "cancelling" => "\"cancelling\" is spelt \"canceling\" (one l, as every status)".to_string(),
                            "cancelled" => "\"cancelled\" is spelt \"canceled\" (one l, as every status)".to_string(),
                            _ => format!(
                                "{v:?} is not a job status (pending, trying, reserved, confirming, canceling, completed, failed, canceled, heuristic, working)"
                            ),
                        };
                        bad("status", detail)
                    })?;
                    f.statuses.push(s);
                }
            }
            "correlationID" => f.correlation_id = Some(v.into_owned()),
            "tag" => f.tag = Some(v.into_owned()),
            "createdAfter" | "createdBefore" => {
                let t = parse_rfc3339(&v)
                    .ok_or_else(|| bad(&k, format!("{v:?} is not an RFC 3339 date-time")))?;
                if k == "createdAfter" {
                    f.created_after = Some(t);
                } else {
                    f.created_before = Some(t);
                }
            }
            "limit" => f.limit = parse_limit(&v)?,
            "cursor" => f.before = Some(parse_cursor(&v)?),
            other => {
                return Err(bad(
                    other,
                    "unknown; use status, correlationID, tag, createdAfter, createdBefore, limit or cursor".into(),
                ));
            }
        }
    }
    Ok(f)
}

/// A page size: 1 to 500.
fn parse_limit(v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>()
        .ok()
        .filter(|n| (1..=500).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request("query parameter limit: must be a number from 1 to 500")
        })
}

/// A keyset cursor this server gave (`encode_cursor`).
fn parse_cursor(v: &str) -> Result<(chrono::DateTime<Utc>, String), ApiError> {
    decode_cursor(v).ok_or_else(|| {
        ApiError::bad_request("query parameter cursor: is not a cursor this server gave")
    })
}

fn encode_cursor(at: chrono::DateTime<Utc>, id: &str) -> String {
    let raw = format!("{}|{id}", at.timestamp_micros());
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(s: &str) -> Option<(chrono::DateTime<Utc>, String)> {
    if !s.len().is_multiple_of(2) || s.len() > 600 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    // Only what this server could have given: a job's creation time (years PostgreSQL and
    // RFC 3339 both hold) and a job id. Anything else is forged, and must not reach the query.
    let id = crate::domain::JobId::parse(id).ok()?;
    (1..=9999)
        .contains(&chrono::Datelike::year(&at))
        .then(|| (at, id.to_string()))
}

#[utoipa::path(get, path = "/jobs", tag = "jobs", params(("status" = Option<Vec<String>>, Query, explode = true, description = "A job status, or working; repeatable"), ("correlationID" = Option<String>, Query), ("tag" = Option<String>, Query), ("createdAfter" = Option<String>, Query, format = DateTime), ("createdBefore" = Option<String>, Query, format = DateTime), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query, description = "Opaque: from a next link")), responses((status = 200, description = "Newest first", body = crate::api::repr::JobListRepr), (status = 400, description = "A filter is malformed")))]
pub async fn list_jobs(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let page = html::prefers_html(&headers);
    let query = if page {
        html::pages::form_query(query.as_deref())
    } else {
        query
    };
    let filter = parse_list_query(query.as_deref())?;
    let rows = {
        let client = db(&state).await?;
        within(&state, store::list_jobs(&client, &filter)).await?
    };
    let base = base_url(&state, &headers);
    let self_href = match &query {
        Some(q) if !q.is_empty() => format!("{base}/jobs?{q}"),
        _ => format!("{base}/jobs"),
    };
    let mut next = None;
    if rows.len() as i64 == filter.limit
        && let Some(last) = rows.last()
    {
        let cursor = encode_cursor(last.created_at, &last.id);
        let mut params: Vec<(String, String)> =
            url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
                .filter(|(k, _)| k != "cursor")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        params.push(("cursor".into(), cursor));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        next = Some(format!("{base}/jobs?{qs}"));
    }
    if page {
        return html::pages::job_list(&state, &base, query.as_deref(), &rows, next).await;
    }
    let body = repr::JobListRepr::new(&base, &rows, self_href, next);
    let mut resp = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&body.links.header()) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(html::vary_accept(resp))
}

#[utoipa::path(delete, path = "/jobs/{jobID}", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "Canceling", body = crate::api::repr::JobRepr), (status = 200, description = "Already canceled", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Already confirming or finished")))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let outcome = record_request(&state, &id, ClientRequest::Cancel, &actor.0).await?;
    let base = base_url(&state, &headers);
    match outcome {
        RequestOutcome::Accepted => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        RequestOutcome::AlreadyAt(JobStatus::Canceled, _) => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::OK, &base, &record, false))
        }
        RequestOutcome::AlreadyAt(JobStatus::Canceling, Some(FailureReason::Client)) => {
            let record = load(&state, &id).await?;
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        RequestOutcome::AlreadyAt(status, _) => Err(ApiError::conflict(format!(
            "the job is already {status}: a cancel is only possible before the decision"
        ))),
        RequestOutcome::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
        RequestOutcome::NoTasks | RequestOutcome::CancelRequested => Err(ApiError::conflict(
            "the job cannot be canceled in its current state",
        )),
    }
}

/// The answer to a confirm once the job is final.
fn confirm_outcome(base: &str, record: &JobRecord) -> Result<Response, ApiError> {
    match record.job.status {
        JobStatus::Completed => Ok(job_response(StatusCode::OK, base, record, false)),
        JobStatus::Heuristic => Err(ApiError::new(
            StatusCode::CONFLICT,
            "heuristic",
            "Heuristic outcome",
            "some participants confirmed and others could not: the outcome is heuristic and needs an operator",
        )
        .with_tasks(outcomes(record))),
        status => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-confirmed",
            "Not confirmed",
            format!(
                "the job is {status}{}: nothing was confirmed",
                record
                    .job
                    .failure_reason
                    .map(|r| format!(" ({})", r.as_str()))
                    .unwrap_or_default()
            ),
        )
        .with_tasks(outcomes(record))),
    }
}

/// Wait up to `wait` for the job to reach a terminal status.
pub(super) async fn wait_terminal(
    state: &AppState,
    id: &str,
    wait: Duration,
) -> Result<JobRecord, ApiError> {
    let mut changes = state.engine.subscribe();
    let until = Instant::now() + wait;
    loop {
        let record = load(state, id).await?;
        if record.job.status.is_terminal() || Instant::now() >= until {
            return Ok(record);
        }
        wait_change(&mut changes, id, until).await;
    }
}

/// Until `id` changes here, `until`, or a short re-check interval (changes made by another
/// instance are not announced here).
pub(super) async fn wait_change(
    changes: &mut tokio::sync::broadcast::Receiver<String>,
    id: &str,
    until: Instant,
) {
    let recheck = (Instant::now() + Duration::from_millis(500)).min(until);
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                Ok(changed) if changed == id => return,
                Ok(_) => continue,
                Err(_) => return,
            },
            _ = tokio::time::sleep_until(recheck) => return,
        }
    }
}

/// `POST /jobs/{id}/cancel`: the same as `DELETE /jobs/{id}`, for HTML forms.
#[utoipa::path(post, path = "/jobs/{jobID}/cancel", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 202, description = "Canceling", body = crate::api::repr::JobRepr), (status = 200, description = "Already canceled", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Already confirming or finished")))]
pub async fn cancel_form(
    state: State<AppState>,
    actor: Extension<Actor>,
    id: Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    cancel_job(state, actor, id, headers).await
}

#[utoipa::path(post, path = "/jobs/{jobID}/confirm", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("Prefer" = Option<String>, Header, description = "wait=N: answer when terminal, waiting up to N s")), responses((status = 202, description = "Confirming", body = crate::api::repr::JobRepr), (status = 200, description = "Completed (Prefer: wait)", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Decided otherwise, or heuristic or failed: tasks lists each outcome")))]
pub async fn confirm_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let outcome = record_request(&state, &id, ClientRequest::Confirm, &actor.0).await?;
    let base = base_url(&state, &headers);
    match outcome {
        RequestOutcome::Accepted | RequestOutcome::AlreadyAt(JobStatus::Confirming, _) => {
            match prefer_wait(&headers, state.settings.max_wait()) {
                Some(wait) => {
                    let record = wait_terminal(&state, &id, wait).await?;
                    if record.job.status.is_terminal() {
                        let mut resp = match confirm_outcome(&base, &record) {
                            Ok(r) => r,
                            Err(e) => e.into_response(),
                        };
                        resp.headers_mut().insert(
                            "preference-applied",
                            HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
                                .unwrap_or(HeaderValue::from_static("wait")),
                        );
                        Ok(resp)
                    } else {
                        Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
                    }
                }
                None => {
                    let record = load(&state, &id).await?;
                    Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
                }
            }
        }
        RequestOutcome::AlreadyAt(_, _) => {
            let record = load(&state, &id).await?;
            if record.job.status.is_terminal() {
                confirm_outcome(&base, &record)
            } else {
                Err(ApiError::conflict(format!(
                    "the job is {}: it is being canceled and can no longer be confirmed",
                    record.job.status
                ))
                .with_tasks(outcomes(&record)))
            }
        }
        RequestOutcome::NoTasks => Err(ApiError::conflict(
            "the job has no task yet: register participants before confirming",
        )),
        RequestOutcome::CancelRequested => Err(ApiError::conflict(
            "a cancel of this job was already requested",
        )),
        RequestOutcome::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

#[utoipa::path(get, path = "/jobs/{jobID}/progress", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-None-Match" = Option<String>, Header), ("Prefer" = Option<String>, Header, description = "wait=N with If-None-Match: long poll")), responses((status = 200, description = "Progress", body = crate::api::repr::ProgressRepr, headers(("ETag" = String))), (status = 304, description = "No change"), (status = 404, description = "No such job")))]
pub async fn progress(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers);
    let wait = prefer_wait(&headers, state.settings.max_wait());
    let mut changes = state.engine.subscribe();
    let until = Instant::now() + wait.unwrap_or_default();
    loop {
        let record = load_tasks(&state, &id).await?;
        let body = repr::ProgressRepr::new(&base, &record);
        let bytes = serde_json::to_string(&body).unwrap_or_default();
        let etag = repr::etag(bytes.as_bytes());
        if !none_match(&headers, &etag) {
            return Ok(json_response(StatusCode::OK, &body));
        }
        // Unchanged: long-poll when asked, else 304 at once.
        if wait.is_none() || Instant::now() >= until {
            return Ok(not_modified(&etag));
        }
        wait_change(&mut changes, &id, until).await;
    }
}

#[utoipa::path(get, path = "/jobs/{jobID}/tasks", tag = "tasks", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 200, description = "The tasks", body = crate::api::repr::TaskListRepr), (status = 404, description = "No such job")))]
pub async fn list_tasks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load_tasks(&state, &id).await?;
    let base = base_url(&state, &headers);
    Ok(json_response(
        StatusCode::OK,
        &repr::TaskListRepr::new(&base, &record),
    ))
}

#[utoipa::path(get, path = "/jobs/{jobID}/tasks/{taskID}", tag = "tasks", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("taskID" = String, Path)), responses((status = 200, description = "The task", body = crate::api::repr::TaskRepr), (status = 404, description = "No such job or task")))]
pub async fn get_task(
    State(state): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load_tasks(&state, &id).await?;
    let base = base_url(&state, &headers);
    let task = record
        .job
        .tasks
        .iter()
        .find(|t| t.task_id == task_id)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no task {task_id}")))?;
    if html::prefers_html(&headers) {
        return html::pages::task(&base, &record, task);
    }
    Ok(html::vary_accept(json_response(
        StatusCode::OK,
        &TaskRepr::new(&base, &id, task),
    )))
}

#[utoipa::path(post, path = "/jobs/{jobID}/participants", tag = "tasks", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), request_body(content = crate::domain::request::RegistrationWire, content_type = "application/json"), responses((status = 201, description = "Registered", body = crate::api::repr::TaskRepr, headers(("Location" = String))), (status = 200, description = "This uri was registered before", body = crate::api::repr::TaskRepr), (status = 404, description = "No such job"), (status = 409, description = "The decision is taken"), (status = 422, description = "A rule is broken: each in errors")))]
pub async fn register(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let reg = request::parse_registration(&value, Utc::now()).map_err(ApiError::validation)?;
    allowed(refusals::registration(&state.settings.targets, &reg))?;
    let outcome = {
        let mut client = db(&state).await?;
        within(
            &state,
            store::register(&mut client, &id, &reg, state.settings.max_tasks, &actor.0),
        )
        .await?
    };
    let base = base_url(&state, &headers);
    match outcome {
        Registered::Created(task) => {
            wake(&state, &id).await;
            let mut resp = json_response(StatusCode::CREATED, &TaskRepr::new(&base, &id, &task));
            if let Ok(v) =
                HeaderValue::from_str(&format!("{base}/jobs/{id}/tasks/{}", task.task_id))
            {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
        Registered::Existing(task) => Ok(json_response(
            StatusCode::OK,
            &TaskRepr::new(&base, &id, &task),
        )),
        Registered::NotFound => Err(ApiError::not_found(format!("no job {id}"))),
        Registered::Closed(status) => Err(ApiError::conflict(format!(
            "the job is {status}: participants can only register before the decision"
        ))),
        Registered::TaskIdTaken(task_id) => Err(ApiError::conflict(format!(
            "the job already has a task {task_id:?} with another link"
        ))),
        Registered::TooMany(max) => Err(ApiError::validation(vec![FieldError::new(
            "",
            format!("the job already has the most tasks allowed ({max}, TCC_MAX_TASKS)"),
        )])),
    }
}

#[cfg(test)]
mod list_query_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the query, the list's parser answers a filter or an error naming a
        /// parameter; it never panics.
        #[test]
        fn the_list_query_parser_never_panics(q in ".{0,80}", raw in any::<Vec<u8>>()) {
            let encoded: String = url::form_urlencoded::byte_serialize(&raw).collect();
            for query in [q.clone(), format!("status={encoded}&limit={encoded}&cursor={encoded}&createdAfter={encoded}")] {
                if let Err(e) = parse_list_query(Some(&query)) {
                    prop_assert!(e.detail.starts_with("query parameter"), "{}", e.detail);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        let c = encode_cursor(at, "0193-abc");
        assert_eq!(decode_cursor(&c), Some((at, "0193-abc".to_string())));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abc"), None);
        // Well-formed, but beyond what PostgreSQL holds, or not a job id: forged.
        let forged = [
            format!("{}|0193-abc", 3_000_000_000_000_000_000i64),
            format!("{}|0193-abc", -8_000_000_000_000_000_000i64),
            format!("{}|a\0b", at.timestamp_micros()),
        ];
        for raw in forged {
            let forged: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(decode_cursor(&forged), None, "{raw}");
        }
    }

    #[test]
    fn list_query_errors_name_the_parameter() {
        let e = parse_list_query(Some("status=nope")).err();
        assert!(e.is_some_and(|e| e.detail.contains("status")));
        let e = parse_list_query(Some("limit=501")).err();
        assert!(e.is_some_and(|e| e.detail.contains("limit")));
        for british in ["cancelling", "cancelled"] {
            let e = parse_list_query(Some(&format!("status={british}"))).err();
            let right = british.replacen("ll", "l", 1);
            assert!(
                e.is_some_and(|e| e.status == axum::http::StatusCode::BAD_REQUEST
                    && e.detail.contains(&format!("{right:?}"))),
                "{british} is answered 400 naming {right}"
            );
        }
        let f = parse_list_query(Some("status=working&status=completed&tag=a")).ok();
        assert_eq!(f.map(|f| f.statuses.len()), Some(5));
    }
}

/// The longest resolution note taken.
const MAX_NOTE: usize = 4096;

/// `POST /jobs/{id}/resolve` `{"note"}`: an operator records the manual fix of a heuristic
/// outcome; the job leaves `/heuristics` and `tcc_heuristic_unresolved`. The same note again is
/// answered as the first time; another note on a resolved job is a conflict.
#[utoipa::path(post, path = "/jobs/{jobID}/resolve", tag = "operators", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), request_body(content = crate::api::openapi::Resolve, content_type = "application/json"), responses((status = 200, description = "Resolved", body = crate::api::repr::JobRepr), (status = 404, description = "No such job"), (status = 409, description = "Not an unresolved heuristic job"), (status = 422, description = "The note is missing, empty or too long")))]
pub async fn resolve_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let note = match value.get("note") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.chars().count() <= MAX_NOTE => {
            n.clone()
        }
        Some(Value::String(n)) if !n.trim().is_empty() => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                format!("is longer than {MAX_NOTE} characters"),
            )]));
        }
        Some(Value::String(_)) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "must say what was done to fix the outcome (it is empty)",
            )]));
        }
        Some(_) => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "must be a string",
            )]));
        }
        None => {
            return Err(ApiError::validation(vec![FieldError::new(
                "/note",
                "is required: say what was done to fix the outcome",
            )]));
        }
    };
    if note.contains('\0') {
        return Err(ApiError::validation(vec![FieldError::new(
            "/note",
            "must not contain a NUL character (U+0000)",
        )]));
    }
    let resolution = crate::domain::Resolution {
        note,
        resolved_at: Utc::now(),
        resolved_by: actor.0.clone(),
    };
    let client = db(&state).await?;
    let outcome = within(&state, store::resolve(&client, &id, &resolution)).await?;
    drop(client);
    match outcome {
        store::Resolved::Done(_) => {
            state.engine.changed(&id);
        }
        store::Resolved::Already(first) if first.note == resolution.note => {}
        store::Resolved::Already(first) => {
            return Err(ApiError::conflict(format!(
                "the job was already resolved at {} by {}: {:?}",
                crate::domain::rfc3339(first.resolved_at),
                first.resolved_by,
                first.note
            )));
        }
        store::Resolved::NotHeuristic(status) => {
            return Err(ApiError::conflict(format!(
                "the job is {status}: only a heuristic job can be resolved"
            )));
        }
        store::Resolved::NotFound => return Err(ApiError::not_found(format!("no job {id}"))),
    }
    let record = load(&state, &id).await?;
    let base = base_url(&state, &headers);
    Ok(job_response(StatusCode::OK, &base, &record, false))
}

/// `GET /heuristics`: unresolved heuristic jobs, oldest first, each with its tasks' outcomes;
/// `limit` (1–500, default 50) and `cursor`, with `Link: rel="next"`.
#[utoipa::path(get, path = "/heuristics", tag = "operators", params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query)), responses((status = 200, description = "Unresolved heuristic jobs, oldest first", body = crate::api::repr::HeuristicListRepr), (status = 400, description = "A parameter is malformed")))]
pub async fn heuristics(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (mut limit, mut after) = (50i64, None);
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = parse_limit(&v)?,
            "cursor" => after = Some(parse_cursor(&v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other}: unknown; use limit or cursor"
                )));
            }
        }
    }
    let jobs = {
        let client = db(&state).await?;
        within(&state, store::unresolved_heuristics(&client, after, limit)).await?
    };
    let base = base_url(&state, &headers);
    let page = html::prefers_html(&headers);
    let mut links = repr::Links::default();
    links.add(
        "self",
        format!("{base}/heuristics"),
        "GET",
        "Unresolved heuristic jobs, oldest first",
    );
    if jobs.len() as i64 == limit
        && let Some(last) = jobs.last()
    {
        let cursor = encode_cursor(last.job.created_at, last.job.id.as_str());
        links.add(
            "next",
            format!("{base}/heuristics?limit={limit}&cursor={cursor}"),
            "GET",
            "The next page",
        );
    }
    if page {
        let next = links.0.iter().find(|(rel, _)| *rel == "next");
        return html::pages::heuristics(&base, &jobs, next.map(|(_, l)| l.href.clone()));
    }
    let body = repr::HeuristicListRepr {
        jobs: jobs
            .iter()
            .map(|r| repr::HeuristicRepr::new(&base, r))
            .collect(),
        links,
    };
    let header_links = body.links.header();
    let mut resp = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&header_links) {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(html::vary_accept(resp))
}
