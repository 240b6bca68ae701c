//! The jobs: `POST /jobs`, `PUT`/`GET /jobs/{id}`, the list `GET /jobs`, and a job's progress.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, load, load_tasks, wait_change, wake, within};
use super::error::{ApiError, ProblemType};
use super::extract::{JobPath, MAX_IDEMPOTENCY_KEY, NewJobPath, allowed, read_json, traceparent};
use super::html;
use super::negotiate::{prefers_html, vary_accept};
use super::paging::{encode_cursor, parse_cursor, parse_limit};
use super::repr;
use super::respond::{
    base_url, if_match, job_response, json_response, linked_json, matches_any, none_match,
    not_modified, prefer_wait, unless_matched,
};
use crate::domain::policy::refusals;
use crate::domain::request::{self, Limits, parse_rfc3339};
use crate::domain::{ActionKind, JobId, JobSource, JobStatus, Requested, Submission};
use crate::engine::Accepted;
use crate::store::{self, JobFilter, JobRecord, StoredDocument};

#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body(content = crate::domain::request::JobWire, content_type = "application/json"), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters. A replay with the same key and body answers the same; another body with the key, or the key from another API key, is 422", min_length = 1, max_length = 255, pattern = "^[ -~]+$")), responses((status = 202, description = "Accepted and started; or, under the same Idempotency-Key and body, a replay answering the job as it stands", body = crate::api::repr::JobRepr, headers(("Location" = String), ("Link" = String))), (status = 422, description = "A rule is broken: each in errors")))]
pub async fn create_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let key = idempotency_key(&headers)?;
    let limits = Limits {
        max_tasks: state.settings.max_tasks,
    };
    let new = request::parse_job(&value, limits, Utc::now()).map_err(ApiError::validation)?;
    submit(&state, &actor, &headers, key, new, &value).await
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters, or a 400.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })
}

/// A new job, its document read (`request`, what a replay under the same `key` must match):
/// the target policy checked, then accepted as `POST /jobs` answers it (202 and `Location`; a
/// replay answers the job as it stands; a key used for another request, or by another API
/// key, is a 422). A job started from a definition comes this way too.
pub(super) async fn submit(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    key: Option<String>,
    new: request::NewJob,
    request: &Value,
) -> Result<Response, ApiError> {
    allowed(refusals::job(&state.settings.targets, &new))?;
    // Only a replay under the same key compares hashes.
    let hash = key
        .as_ref()
        .map(|_| repr::sha256_hex(repr::canonical(request).to_string().as_bytes()));
    // A job without a key cannot be a replay: its first Tries may go before it is stored.
    let try_first = key.is_none();
    let submission = Submission {
        id: JobId::generate(),
        job: new,
        source: JobSource::Jcl,
        created_at: Utc::now(),
        key_holder: key.as_ref().map(|_| actor.0.clone()),
        idempotency_key: key,
        request_hash: hash,
        traceparent: traceparent(headers).map(str::to_string),
    };
    let inserted = within(state, state.engine.accept(submission, try_first)).await?;
    let base = base_url(state, headers);
    match inserted {
        Accepted::Created(record) => Ok(job_response(StatusCode::ACCEPTED, &base, &record, true)),
        Accepted::Replay {
            id,
            same_request: true,
            ..
        } => {
            let record = load(state, &id).await?;
            Ok(job_response(StatusCode::ACCEPTED, &base, &record, true))
        }
        // Keys are the holder's: another API key's job is neither answered nor named.
        Accepted::Replay {
            another_holder: true,
            ..
        } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::IdempotencyKeyReused,
            "this Idempotency-Key was already used by another API key; use a key of your own",
        )),
        Accepted::Replay {
            id,
            same_request: false,
            ..
        } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemType::IdempotencyKeyReused,
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
    NewJobPath(id): NewJobPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
        within(&state, store::stored_document(&client, &id)).await?
    };
    let stored = match known {
        StoredDocument::Absent => {
            let submission = Submission {
                id: id.clone(),
                job: new.clone(),
                source: JobSource::Jcl,
                created_at: now,
                idempotency_key: None,
                key_holder: None,
                request_hash: Some(hash.clone()),
                traceparent: traceparent(&headers).map(str::to_string),
            };
            let failed = match within(&state, state.engine.accept(submission, false)).await {
                Ok(Accepted::Created(record)) => {
                    return Ok(job_response(StatusCode::CREATED, &base, &record, true));
                }
                // No idempotency key was given: a replay cannot come back.
                Ok(Accepted::Replay { .. }) => None,
                Err(e) => Some(e),
            };
            // Another PUT of the same id may have won the race: answer as to a second PUT.
            let client = db(&state).await?;
            match within(&state, store::stored_document(&client, &id)).await? {
                StoredDocument::Absent => {
                    return Err(failed.map(ApiError::from).unwrap_or_else(|| {
                        ApiError::conflict(format!("job {id} could not be stored; try again"))
                    }));
                }
                stored => stored,
            }
        }
        stored => stored,
    };
    let record = load(&state, &id).await?;
    if stored == StoredDocument::Hashed(hash.clone()) {
        return Ok(job_response(StatusCode::OK, &base, &record, false));
    }
    let Some(tags) = if_match(&headers) else {
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
    if !matches_any(&tags, etag) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            ProblemType::PreconditionFailed,
            format!(
                "If-Match does not hold the job's current ETag ({etag}): it changed since it was read"
            ),
        ));
    }
    if let Some(why) = unchanged_parts(&record, &new, &value) {
        return Err(ApiError::conflict(why));
    }
    if !record.job.status().is_undecided() || record.job.requested == Requested::Cancel {
        return Err(ApiError::conflict(format!(
            "the job is {}: it can only be updated before the decision",
            record.job.status()
        )));
    }
    let event = crate::domain::Event::action(
        now,
        ActionKind::Update,
        &actor.0,
        Some("description, contact, callbacks, tags, autoConfirm and jobMaxTTL as sent".into()),
    );
    // The definition a job was started from is the coordinator's to record, not the document's.
    let mut fields = new.fields.clone();
    fields.definition = record.fields.definition.clone();
    let written = {
        let client = db(&state).await?;
        within(
            &state,
            store::update_job(&client, &id, &fields, &hash, record.updated_at, &event),
        )
        .await?
    };
    if !written {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            ProblemType::PreconditionFailed,
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
                request::NewTaskKind::Callbacks {
                    try_spec,
                    callbacks,
                } => {
                    stored.try_spec.as_deref() == try_spec.as_ref()
                        && stored.callbacks.as_deref() == Some(callbacks.as_ref())
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
    JobPath(id): JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load(&state, &id).await?;
    let base = base_url(&state, &headers);
    if prefers_html(&headers) {
        return html::pages::job(&state, &base, &record, None).await;
    }
    let resp = job_response(StatusCode::OK, &base, &record, false);
    Ok(vary_accept(unless_matched(resp, &headers)))
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
            "definition" => f.definition = Some(v.into_owned()),
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
                    "unknown; use status, correlationID, tag, definition, createdAfter, createdBefore, limit or cursor".into(),
                ));
            }
        }
    }
    Ok(f)
}

#[utoipa::path(get, path = "/jobs", tag = "jobs", params(("status" = Option<Vec<String>>, Query, explode = true, description = "A job status, or working; repeatable"), ("correlationID" = Option<String>, Query), ("tag" = Option<String>, Query), ("definition" = Option<String>, Query, description = "Only jobs started from this job definition"), ("createdAfter" = Option<String>, Query, format = DateTime), ("createdBefore" = Option<String>, Query, format = DateTime), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query, description = "Opaque: from a next link")), responses((status = 200, description = "Newest first", body = crate::api::repr::JobListRepr), (status = 400, description = "A filter is malformed")))]
pub async fn list_jobs(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let page = prefers_html(&headers);
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
    Ok(vary_accept(linked_json(StatusCode::OK, &body, &body.links)))
}

#[utoipa::path(get, path = "/jobs/{jobID}/progress", tag = "jobs", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$"), ("If-None-Match" = Option<String>, Header), ("Prefer" = Option<String>, Header, description = "wait=N with If-None-Match: long poll")), responses((status = 200, description = "Progress", body = crate::api::repr::ProgressRepr, headers(("ETag" = String))), (status = 304, description = "No change"), (status = 404, description = "No such job")))]
pub async fn progress(
    State(state): State<AppState>,
    JobPath(id): JobPath,
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
