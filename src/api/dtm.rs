//! DTM's HTTP API under `/api/dtmsvr/` (docs/dtm.md), for DTM's client libraries as they are: a
//! TCC global transaction is a job (`source: dtm`, `correlationID` its gid, the gid its key in the
//! `dtm` namespace), each branch a task with its own confirm and cancel URLs, called as DTM calls
//! them (`domain::job::DtmBranch`).
//!
//! Answers are DTM's: `200 {"dtm_result": "SUCCESS"}`, `409 {"dtm_result": "FAILURE", "message"}`
//! when the transaction's state refuses the call, `425 {"dtm_result": "ONGOING"}` while a waited
//! result is not there yet. Where DTM answers 500 for a client's mistake (an unknown gid, no gid),
//! this answers 404 or 400 with the same `message`: DTM's clients treat every answer but 200 the
//! same, and a 5xx here means the coordinator failed.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, load, record_request, register, wait_terminal, within};
use super::error::ApiError;
use super::extract::{MAX_IDEMPOTENCY_KEY, read_json};
use super::respond::{base_url, json_response};
use crate::domain::actions::Gate;
use crate::domain::job::{Callbacks, DtmBranch};
use crate::domain::request::{self, FieldError, Hold, Limits, Registration};
use crate::domain::{
    JobId, JobSource, JobStatus, Requested, Submission, TargetUrl, TaskId, TaskStatus,
};
use crate::engine::Accepted;
use crate::store::{self, ClientRequest, Keyed, Registered, RequestOutcome};

/// DTM's default `timeout_to_fail`, in seconds: a prepared transaction not submitted by then is
/// aborted.
const DEFAULT_TIMEOUT_TO_FAIL: i64 = 35;

fn answer(status: StatusCode, body: Value) -> Response {
    json_response(status, &body)
}

fn success() -> Response {
    answer(StatusCode::OK, json!({"dtm_result": "SUCCESS"}))
}

/// 409 with DTM's `FAILURE`: the transaction's state refuses the call.
fn failure(message: impl std::fmt::Display) -> Response {
    answer(
        StatusCode::CONFLICT,
        json!({"dtm_result": "FAILURE", "message": format!("{message} FAILURE")}),
    )
}

/// 425 with DTM's `ONGOING`: the result waited for is not there yet.
fn ongoing(message: impl std::fmt::Display) -> Response {
    answer(
        StatusCode::TOO_EARLY,
        json!({"dtm_result": "ONGOING", "message": message.to_string()}),
    )
}

/// A client's mistake, with DTM's `message` (no `dtm_result`, as DTM has none there).
fn mistake(status: StatusCode, message: impl std::fmt::Display) -> Response {
    answer(status, json!({"message": message.to_string()}))
}

/// The body of `prepare`, `submit` and `abort`: DTM's `TransBase` (unknown fields are ignored,
/// as DTM ignores them).
#[derive(Debug, Deserialize)]
struct TransRequest {
    gid: Option<String>,
    trans_type: Option<String>,
    #[serde(default)]
    wait_result: bool,
    timeout_to_fail: Option<i64>,
    retry_interval: Option<i64>,
    #[serde(default)]
    branch_headers: BTreeMap<String, String>,
}

/// The options of a transaction as kept with its job (in the shared state, under `dtm`): what
/// later calls need (the branch headers, whether to wait).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
struct Options {
    gid: String,
    #[serde(default)]
    wait_result: bool,
    #[serde(default)]
    timeout_to_fail: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    branch_headers: BTreeMap<String, String>,
}

async fn trans_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Result<(String, TransRequest), Response>, ApiError> {
    let value = read_json(headers, body, state.settings.max_body).await?;
    let req: TransRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return Ok(Err(mistake(StatusCode::BAD_REQUEST, e))),
    };
    if let Some(t) = req.trans_type.as_deref()
        && t != "tcc"
    {
        return Ok(Err(mistake(
            StatusCode::BAD_REQUEST,
            format!(
                "trans_type {t:?} is not served here: this coordinator runs DTM's TCC transactions only"
            ),
        )));
    }
    match gid_of(req.gid.as_deref()) {
        Ok(gid) => Ok(Ok((gid, req))),
        Err(why) => Ok(Err(mistake(StatusCode::BAD_REQUEST, why))),
    }
}

/// The gid, or why it is refused.
fn gid_of(gid: Option<&str>) -> Result<String, &'static str> {
    match gid {
        None | Some("") => Err("no gid specified"),
        Some(g) if g.len() > MAX_IDEMPOTENCY_KEY.min(128) => {
            Err("the gid is longer than 128 bytes")
        }
        Some(g) if g.chars().any(char::is_control) => Err("the gid holds a control character"),
        Some(g) => Ok(g.to_string()),
    }
}

/// The job of a gid, if any.
async fn job_of(state: &AppState, gid: &str) -> Result<Option<Keyed>, ApiError> {
    let client = db(state).await?;
    Ok(within(state, store::find_by_key(&client, JobSource::Dtm, gid)).await?)
}

/// A job's state as DTM names a global transaction's: before the decision, the client's submit
/// or abort already recorded counts as taken.
fn dtm_status(gate: &Gate) -> &'static str {
    match gate.state.status() {
        JobStatus::Pending | JobStatus::Trying | JobStatus::Reserved => match gate.requested {
            Requested::Nothing => "prepared",
            Requested::Confirm => "submitted",
            Requested::Cancel => "aborting",
        },
        JobStatus::Confirming => "submitted",
        JobStatus::Completed => "succeed",
        JobStatus::Canceling => "aborting",
        // A heuristic job is not DTM's `failed` (some branches confirmed), but DTM has no name
        // for it; `tcc_job_status` in `query` says which it is.
        JobStatus::Failed | JobStatus::Canceled | JobStatus::Heuristic => "failed",
    }
}

/// The options `prepare` kept in the job's shared state.
fn options_of(shared_state: &Value) -> Options {
    shared_state
        .get("dtm")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// `GET /api/dtmsvr/newGid`: a new gid.
pub async fn new_gid() -> Response {
    answer(
        StatusCode::OK,
        json!({"dtm_result": "SUCCESS", "gid": JobId::generate().as_str()}),
    )
}

/// `POST /api/dtmsvr/prepare`: a new global transaction (a job with no task yet, waiting for
/// its submit until `timeout_to_fail`); the same gid again while it is prepared is a success.
pub async fn prepare(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (gid, req) = match trans_request(&state, &headers, body).await? {
        Ok(r) => r,
        Err(answer) => return Ok(answer),
    };
    let timeout = req
        .timeout_to_fail
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_TIMEOUT_TO_FAIL);
    let options = Options {
        gid: gid.clone(),
        wait_result: req.wait_result,
        timeout_to_fail: timeout,
        retry_interval: req.retry_interval.filter(|t| *t > 0),
        branch_headers: req.branch_headers,
    };
    let mut doc = json!({
        "description": format!("DTM global transaction {gid}"),
        "correlationID": gid,
        "jobMaxTTL": timeout,
        "autoConfirm": false,
        "tags": ["dtm"],
        "sharedState": {"dtm": options},
        "tasks": [],
    });
    if let Some(every) = options.retry_interval {
        doc["retryPolicy"] =
            json!({"initialDelay": every, "maxDelay": every.max(30), "multiplier": 2});
    }
    let job = match request::parse_job(
        &doc,
        Limits {
            max_tasks: state.settings.max_tasks,
        },
        Utc::now(),
    ) {
        Ok(job) => job,
        Err(errors) => {
            return Ok(mistake(
                StatusCode::BAD_REQUEST,
                FieldError::joined(&errors),
            ));
        }
    };
    let submission = Submission {
        id: JobId::generate(),
        job,
        source: JobSource::Dtm,
        created_at: Utc::now(),
        idempotency_key: Some(gid.clone()),
        key_holder: None,
        request_hash: Some("dtm-tcc".into()),
        traceparent: super::extract::traceparent(&headers).map(str::to_string),
    };
    match within(&state, state.engine.accept(submission, false)).await? {
        Accepted::Created(_) => Ok(success()),
        Accepted::Replay { id, .. } => {
            let record = load(&state, &id).await?;
            match dtm_status(&Gate::of(&record.job)) {
                "prepared" => Ok(success()),
                other => Ok(failure(format!(
                    "current status '{other}', cannot prepare."
                ))),
            }
        }
    }
}

/// `POST /api/dtmsvr/registerBranch` (and `registerTccBranch`, as older clients call it): a
/// branch of a prepared transaction, a task with its own confirm and cancel URLs. The same
/// branch registered again is a success; another branch under a taken `branch_id` is refused.
pub async fn register_branch(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let nul = request::nul_errors(&value);
    if !nul.is_empty() {
        return Ok(mistake(StatusCode::BAD_REQUEST, FieldError::joined(&nul)));
    }
    let text = |field: &str| value.get(field).and_then(Value::as_str).unwrap_or_default();
    let gid = match gid_of(Some(text("gid"))) {
        Ok(g) => g,
        Err(why) => return Ok(mistake(StatusCode::BAD_REQUEST, why)),
    };
    let trans_type = text("trans_type");
    if !trans_type.is_empty() && trans_type != "tcc" {
        return Ok(mistake(
            StatusCode::BAD_REQUEST,
            format!(
                "unknow trans type: {trans_type}: this coordinator runs DTM's TCC transactions only"
            ),
        ));
    }
    let mut errors = Vec::new();
    let branch_id = TaskId::parse(text("branch_id"))
        .map_err(|d| errors.push(FieldError::new("/branch_id", d)))
        .ok();
    let mut url = |field: &str| {
        TargetUrl::parse(text(field))
            .map_err(|d| errors.push(FieldError::new(format!("/{field}"), d)))
            .ok()
    };
    let (confirm, cancel) = (url("confirm"), url("cancel"));
    let (Some(branch_id), Some(confirm_url), Some(cancel_url)) = (branch_id, confirm, cancel)
    else {
        return Ok(mistake(
            StatusCode::BAD_REQUEST,
            FieldError::joined(&errors),
        ));
    };
    let reg = Registration {
        hold: Hold::Callbacks(Box::new(Callbacks {
            confirm_url,
            cancel_url,
            body: None,
            dtm: Some(DtmBranch {
                gid: gid.clone(),
                branch_id: branch_id.to_string(),
                data: text("data").to_string(),
            }),
            retry_policy: None,
        })),
        task_id: Some(branch_id.clone()),
        description: Some(format!("DTM branch {branch_id}")),
    };
    // Found by its gid in the registration's own transaction. As DTM: a branch joins only a
    // transaction still prepared (not once submitted or aborted, even before the decision).
    let job = store::JobRef::Key(JobSource::Dtm, &gid);
    Ok(match register(&state, job, &reg, &actor.0, true).await? {
        Registered::Created { .. } | Registered::Existing(_) => success(),
        Registered::NotFound | Registered::Refused(_) => {
            failure(format!("no trans with gid: {gid} status: prepared found"))
        }
        Registered::TaskIdTaken(task) => failure(format!(
            "branch_id {task} of gid {gid} is registered already, with other URLs or data;"
        )),
        Registered::TooMany(max) => failure(format!(
            "gid {gid} has the most branches allowed ({max}, TCC_MAX_TASKS);"
        )),
    })
}

/// `POST /api/dtmsvr/submit`: confirm every branch (in the reverse order of their registration).
/// With `wait_result`, the answer waits for the outcome.
pub async fn submit(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (gid, req) = match trans_request(&state, &headers, body).await? {
        Ok(r) => r,
        Err(answer) => return Ok(answer),
    };
    // DTM takes a submit of a gid it never saw as a transaction with no branch: done.
    let Some(Keyed {
        id,
        shared_state,
        gate,
    }) = job_of(&state, &gid).await?
    else {
        return Ok(success());
    };
    let wait = req.wait_result || options_of(&shared_state).wait_result;
    // A transaction with no branch has nothing to confirm: its job is ended (canceled) at once.
    let what = if !gate.has_tasks {
        ClientRequest::Cancel
    } else {
        ClientRequest::Confirm
    };
    match record_request(&state, &id, what, &actor.0).await? {
        RequestOutcome::NotFound => return Ok(success()),
        RequestOutcome::Accepted => {}
        // Submitted and not ended: a repeat. Once ended, DTM refuses it.
        RequestOutcome::Unchanged(gate) => match dtm_status(&gate) {
            "submitted" => {}
            other => {
                return Ok(failure(format!(
                    "current status '{other}', cannot sumbmit."
                )));
            }
        },
    }
    if !wait || what == ClientRequest::Cancel {
        return Ok(success());
    }
    let record = wait_terminal(&state, &id, state.settings.max_wait()).await?;
    Ok(match record.job.status() {
        JobStatus::Completed => success(),
        status if status.is_terminal() => failure(format!(
            "wait result not return success: the transaction is {} ({status}, {}/jobs/{id});",
            dtm_status(&Gate::of(&record.job)),
            base_url(&state, &headers)
        )),
        _ => ongoing("ONGOING"),
    })
}

/// `POST /api/dtmsvr/abort`: cancel every branch (in the reverse order of their registration).
pub async fn abort(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (gid, _req) = match trans_request(&state, &headers, body).await? {
        Ok(r) => r,
        Err(answer) => return Ok(answer),
    };
    let Some(Keyed {
        id, shared_state, ..
    }) = job_of(&state, &gid).await?
    else {
        return Ok(mistake(
            StatusCode::NOT_FOUND,
            format!("no TransGlobal with gid: {gid} found"),
        ));
    };
    let wait = options_of(&shared_state).wait_result;
    match record_request(&state, &id, ClientRequest::Cancel, &actor.0).await? {
        RequestOutcome::NotFound => {
            return Ok(mistake(
                StatusCode::NOT_FOUND,
                format!("no TransGlobal with gid: {gid} found"),
            ));
        }
        RequestOutcome::Accepted => {}
        RequestOutcome::Unchanged(gate) => match dtm_status(&gate) {
            "aborting" => {}
            other => {
                return Ok(failure(format!(
                    "trans type: 'tcc' current status '{other}', cannot abort."
                )));
            }
        },
    }
    if !wait {
        return Ok(success());
    }
    let record = wait_terminal(&state, &id, state.settings.max_wait()).await?;
    Ok(match record.job.status() {
        JobStatus::Failed | JobStatus::Canceled => success(),
        status if status.is_terminal() => {
            failure(format!("the transaction ended {status}, not rolled back;"))
        }
        _ => ongoing("ONGOING"),
    })
}

#[derive(Debug, Deserialize)]
pub struct GidQuery {
    gid: Option<String>,
}

/// `GET /api/dtmsvr/query?gid=`: the transaction and its branches as DTM shows them (two rows
/// per branch, its cancel then its confirm), with the job's own status and address beside.
pub async fn query(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<GidQuery>,
) -> Result<Response, ApiError> {
    let gid = match gid_of(q.gid.as_deref()) {
        Ok(g) => g,
        Err(why) => return Ok(mistake(StatusCode::BAD_REQUEST, why)),
    };
    let Some(Keyed { id, .. }) = job_of(&state, &gid).await? else {
        return Ok(answer(
            StatusCode::OK,
            json!({"branches": [], "transaction": null}),
        ));
    };
    let record = load(&state, &id).await?;
    let job = &record.job;
    let status = job.status();
    let at = crate::domain::rfc3339;
    let mut branches = Vec::new();
    for t in &job.tasks {
        let Some(own) = t.callbacks.as_deref() else {
            continue;
        };
        let data = own
            .dtm
            .as_ref()
            .map(|d| d.data.as_str())
            .unwrap_or_default();
        use base64::Engine;
        let bin_data = base64::engine::general_purpose::STANDARD.encode(data);
        for (op, url, done) in [
            (
                "cancel",
                own.cancel_url.as_str(),
                t.status == TaskStatus::Canceled,
            ),
            (
                "confirm",
                own.confirm_url.as_str(),
                t.status == TaskStatus::Confirmed,
            ),
        ] {
            let mut b = json!({
                "gid": gid,
                "url": url,
                "bin_data": bin_data,
                "branch_id": t.task_id.as_str(),
                "op": op,
                "status": if done { "succeed" } else { "prepared" },
                "create_time": t.start_time.map(at),
                "update_time": t.end_time.or(t.start_time).map(at),
            });
            if done && let Some(end) = t.end_time {
                b["finish_time"] = json!(at(end));
            }
            branches.push(b);
        }
    }
    let options = options_of(&job.shared_state);
    let mut transaction = json!({
        "create_time": at(job.created_at),
        "update_time": at(record.updated_at),
        "gid": gid,
        "trans_type": "tcc",
        "status": dtm_status(&Gate::of(job)),
        "protocol": "http",
        "timeout_to_fail": options.timeout_to_fail,
        "wait_result": options.wait_result,
        "concurrent": false,
        "tcc_job_status": status,
        "tcc_job": format!("{}/jobs/{id}", base_url(&state, &headers)),
    });
    if let Some(reason) = job.failure_reason() {
        transaction["rollback_reason"] = json!(reason.as_str());
    }
    Ok(answer(
        StatusCode::OK,
        json!({"branches": branches, "transaction": transaction}),
    ))
}
