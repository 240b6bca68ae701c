//! A job's tasks: `GET /jobs/{id}/tasks`, one task, and a participant's registration
//! `POST /jobs/{id}/participants`.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;

use super::app::AppState;
use super::auth::Actor;
use super::db::load_tasks;
use super::error::ApiError;
use super::extract::{JobPath, TaskPath, read_json};
use super::html;
use super::negotiate::{prefers_html, vary_accept};
use super::repr::{self, TaskRepr};
use super::respond::{base_url, json_response};
use crate::domain::request::{self, FieldError};
use crate::store::{self, Registered};

#[utoipa::path(get, path = "/jobs/{jobID}/tasks", tag = "tasks", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 200, description = "The tasks", body = crate::api::repr::TaskListRepr), (status = 404, description = "No such job")))]
pub async fn list_tasks(
    State(state): State<AppState>,
    JobPath(id): JobPath,
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
    TaskPath(id, task_id): TaskPath,
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
    if prefers_html(&headers) {
        return html::pages::task(&base, &record, task);
    }
    Ok(vary_accept(json_response(
        StatusCode::OK,
        &TaskRepr::new(&base, &id, task),
    )))
}

#[utoipa::path(post, path = "/jobs/{jobID}/participants", tag = "tasks", params(("jobID" = String, Path, description = "The job's id", pattern = "^[A-Za-z0-9._~-]{1,128}$")), request_body(content = crate::domain::request::RegistrationWire, content_type = "application/json"), responses((status = 201, description = "Registered", body = crate::api::repr::TaskRepr, headers(("Location" = String))), (status = 200, description = "This uri was registered before", body = crate::api::repr::TaskRepr), (status = 404, description = "No such job"), (status = 409, description = "The decision is taken"), (status = 422, description = "A rule is broken: each in errors")))]
pub async fn register(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    JobPath(id): JobPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let reg = request::parse_registration(&value, Utc::now()).map_err(ApiError::validation)?;
    let outcome =
        super::db::register(&state, store::JobRef::Id(&id), &reg, &actor.0, false).await?;
    let base = base_url(&state, &headers);
    match outcome {
        Registered::Created { task, .. } => {
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
        Registered::Refused(refusal) => Err(refusal.into()),
        Registered::TaskIdTaken(task_id) => Err(ApiError::conflict(format!(
            "the job already has a task {task_id:?} with another link"
        ))),
        Registered::TooMany(max) => Err(ApiError::validation(vec![FieldError::new(
            "",
            format!("the job already has the most tasks allowed ({max}, TCC_MAX_TASKS)"),
        )])),
    }
}
