//! Job definitions (docs/api.md, "Job definitions"): `PUT`/`GET`/`DELETE
//! /job-definitions/{name}`, its versions, the list, and the start `POST
//! /job-definitions/{name}/jobs`, which makes a job document of a version and the parameters and
//! then takes exactly `POST /jobs`'s path.

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::{Value, json};

use super::app::AppState;
use super::auth::Actor;
use super::db::{db, within};
use super::error::{ApiError, ProblemType};
use super::extract::{DefinitionPath, NewDefinitionPath, VersionPath, read_json};
use super::html;
use super::jobs::{idempotency_key, submit};
use super::negotiate::{prefers_html, vary_accept};
use super::paging::parse_limit;
use super::repr::{self, DefinitionListRepr, DefinitionRepr, VersionListRepr};
use super::respond::{base_url, json_response, linked_json, unless_matched};
use crate::domain::DefinitionName;
use crate::domain::actions;
use crate::domain::definition::{self, DefinitionRef, Start};
use crate::domain::request::{self, Limits};
use crate::store::{self, DefinitionRecord, Put};

/// A definition's representation with its `Link` header (and `Location` when asked).
fn definition_response(
    status: StatusCode,
    base: &str,
    d: &DefinitionRecord,
    version: bool,
    location: bool,
) -> Response {
    let body = DefinitionRepr::new(base, d, version);
    let mut resp = linked_json(status, &body, &body.links);
    if location && let Ok(v) = HeaderValue::from_str(&repr::version_href(base, &d.name, d.version))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    vary_accept(resp)
}

/// The definition, with its latest version or the one asked for; a 404 when there is none.
pub(super) async fn read(
    state: &AppState,
    name: &DefinitionName,
    version: Option<i32>,
) -> Result<DefinitionRecord, ApiError> {
    let client = db(state).await?;
    within(state, store::get_definition(&client, name, version))
        .await?
        .ok_or_else(|| match version {
            None => ApiError::not_found(format!("no job definition {name}")),
            Some(v) => ApiError::not_found(format!("job definition {name} has no version {v}")),
        })
}

/// `PUT /job-definitions/{name}`: a new definition, or a new version of it (201); the latest
/// version's document again is no new version (200). Either way a retired definition is back.
#[utoipa::path(put, path = "/job-definitions/{name}", tag = "definitions", request_body(content = Object, description = "A job document (as POST /jobs) with parameters: a JSON Schema 2020-12 for a start's parameters. taskURL, confirmURL and cancelURL may be RFC 6570 URI templates", content_type = "application/json"), params(("name" = String, Path, pattern = "^[A-Za-z0-9._~-]{1,128}$")), responses((status = 201, description = "A new definition or a new version", body = DefinitionRepr, headers(("Location" = String))), (status = 200, description = "The same document as the latest version: no new version", body = DefinitionRepr), (status = 400, description = "The name breaks the rule"), (status = 422, description = "The document, a template or the schema breaks a rule: each in errors")))]
pub async fn put_definition(
    State(state): State<AppState>,
    NewDefinitionPath(name): NewDefinitionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let limits = Limits {
        max_tasks: state.settings.max_tasks,
    };
    let now = Utc::now();
    let document = definition::check_document(&name, &value, |job| {
        request::parse_job(job, limits, now).map(|_| ())
    })
    .map_err(ApiError::validation)?;
    let hash = repr::sha256_hex(repr::canonical(&document).to_string().as_bytes());
    let put = {
        let mut client = db(&state).await?;
        within(
            &state,
            store::put_definition(&mut client, &name, &document, &hash),
        )
        .await?
    };
    let (status, version) = match put {
        Put::Created(v) => (StatusCode::CREATED, v),
        Put::Same(v) => (StatusCode::OK, v),
    };
    let d = read(&state, &name, Some(version)).await?;
    let base = base_url(&state, &headers);
    Ok(definition_response(
        status,
        &base,
        &d,
        true,
        status == StatusCode::CREATED,
    ))
}

/// `GET /job-definitions/{name}`: the latest version.
#[utoipa::path(get, path = "/job-definitions/{name}", tag = "definitions", params(("name" = String, Path)), responses((status = 200, description = "The latest version, with the start action unless retired", body = DefinitionRepr, headers(("ETag" = String))), (status = 304, description = "Not modified"), (status = 404, description = "No such definition")))]
pub async fn get_definition(
    State(state): State<AppState>,
    DefinitionPath(name): DefinitionPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let d = read(&state, &name, None).await?;
    let base = base_url(&state, &headers);
    if prefers_html(&headers) {
        return html::definitions::definition(&base, &d, None);
    }
    Ok(unless_matched(
        definition_response(StatusCode::OK, &base, &d, false, false),
        &headers,
    ))
}

/// `GET /job-definitions/{name}/versions/{version}`.
#[utoipa::path(get, path = "/job-definitions/{name}/versions/{version}", tag = "definitions", params(("name" = String, Path), ("version" = i32, Path, minimum = 1)), responses((status = 200, description = "This version", body = DefinitionRepr, headers(("ETag" = String))), (status = 304, description = "Not modified"), (status = 404, description = "No such definition or version")))]
pub async fn get_version(
    State(state): State<AppState>,
    VersionPath(name, version): VersionPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let d = read(&state, &name, Some(version)).await?;
    let base = base_url(&state, &headers);
    if prefers_html(&headers) {
        return html::definitions::definition(&base, &d, None);
    }
    Ok(unless_matched(
        definition_response(StatusCode::OK, &base, &d, true, false),
        &headers,
    ))
}

/// `GET /job-definitions/{name}/versions`: every version, oldest first.
#[utoipa::path(get, path = "/job-definitions/{name}/versions", tag = "definitions", params(("name" = String, Path)), responses((status = 200, description = "Every version, oldest first", body = VersionListRepr), (status = 404, description = "No such definition")))]
pub async fn list_versions(
    State(state): State<AppState>,
    DefinitionPath(name): DefinitionPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let versions = {
        let client = db(&state).await?;
        within(&state, store::list_versions(&client, &name)).await?
    };
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no job definition {name}")));
    }
    let base = base_url(&state, &headers);
    if prefers_html(&headers) {
        return html::definitions::versions(&base, &name, &versions);
    }
    Ok(vary_accept(json_response(
        StatusCode::OK,
        &VersionListRepr::new(&base, &name, &versions),
    )))
}

/// `DELETE /job-definitions/{name}`: retire it. Starts are refused (410) from then on; reads
/// still work and the jobs started from it go on. Repeating it answers the same.
#[utoipa::path(delete, path = "/job-definitions/{name}", tag = "definitions", params(("name" = String, Path)), responses((status = 200, description = "Retired: the definition, without its start action", body = DefinitionRepr), (status = 404, description = "No such definition")))]
pub async fn retire_definition(
    State(state): State<AppState>,
    DefinitionPath(name): DefinitionPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = {
        let client = db(&state).await?;
        within(&state, store::retire_definition(&client, &name)).await?
    };
    if found.is_none() {
        return Err(ApiError::not_found(format!("no job definition {name}")));
    }
    let d = read(&state, &name, None).await?;
    let base = base_url(&state, &headers);
    Ok(definition_response(StatusCode::OK, &base, &d, false, false))
}

/// The list's query: `limit` and `cursor`.
fn parse_list_query(q: Option<&str>) -> Result<(i64, Option<String>), ApiError> {
    let mut limit = 50;
    let mut after = None;
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = parse_limit(&v)?,
            "cursor" => {
                after = Some(
                    DefinitionName::parse(&v)
                        .map_err(|_| {
                            ApiError::bad_request(
                                "query parameter cursor: is not a cursor this server gave",
                            )
                        })?
                        .to_string(),
                )
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other}: unknown; use limit or cursor"
                )));
            }
        }
    }
    Ok((limit, after))
}

/// `GET /job-definitions`: the definitions by name, with their latest versions.
#[utoipa::path(get, path = "/job-definitions", tag = "definitions", params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("cursor" = Option<String>, Query, description = "Opaque: from a next link")), responses((status = 200, description = "By name", body = DefinitionListRepr), (status = 400, description = "A parameter is malformed")))]
pub async fn list_definitions(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let page = prefers_html(&headers);
    let (limit, after) = parse_list_query(query.as_deref())?;
    let rows = {
        let client = db(&state).await?;
        within(
            &state,
            store::list_definitions(&client, after.as_deref(), limit),
        )
        .await?
    };
    let base = base_url(&state, &headers);
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| format!("{base}/job-definitions?limit={limit}&cursor={}", last.name));
    if page {
        return html::definitions::definition_list(&base, &rows, next);
    }
    let self_href = match &query {
        Some(q) if !q.is_empty() => format!("{base}/job-definitions?{q}"),
        _ => format!("{base}/job-definitions"),
    };
    let body = DefinitionListRepr::new(&base, &rows, self_href, next);
    Ok(vary_accept(linked_json(StatusCode::OK, &body, &body.links)))
}

/// `POST /job-definitions/{name}/jobs`: start a job from the definition (its latest version,
/// or `version`): the parameters checked and merged in, the templates expanded, then `POST
/// /jobs`. From the console's form (`application/x-www-form-urlencoded`) the answer is a 303 to
/// the job's page, or the definition's page with what was refused beside its field.
#[utoipa::path(post, path = "/job-definitions/{name}/jobs", tag = "definitions", request_body(content = Object, description = "{\"parameters\": {...}} and optionally version, correlationID, description, tags, contact, jobSuccessURL, jobFailedURL, autoConfirm", content_type = "application/json"), params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "As for POST /jobs", min_length = 1, max_length = 255, pattern = "^[ -~]+$")), responses((status = 202, description = "Accepted and started, as POST /jobs", body = crate::api::repr::JobRepr, headers(("Location" = String))), (status = 303, description = "From the console's form: to the job's page"), (status = 404, description = "No such definition"), (status = 410, description = "The definition is retired"), (status = 422, description = "The parameters (pointers under /parameters) or the start break a rule")))]
pub async fn start_job(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    DefinitionPath(name): DefinitionPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if html::forms::is_form(&headers) {
        return html::definitions::start_form(&state, &actor, &name, &headers, body).await;
    }
    let value = read_json(&headers, body, state.settings.max_body).await?;
    let key = idempotency_key(&headers)?;
    let start = definition::parse_start(&value).map_err(ApiError::validation)?;
    let d = version_to_start(&state, &name, start.version).await?;
    start_from(&state, &actor, &headers, key, &d, &start, &value).await
}

/// The version a start asks for (the latest when it names none): an unknown definition is a
/// 404, a version the definition does not have a 422 at `/version`.
async fn version_to_start(
    state: &AppState,
    name: &DefinitionName,
    version: Option<i32>,
) -> Result<DefinitionRecord, ApiError> {
    let client = db(state).await?;
    if let Some(d) = within(state, store::get_definition(&client, name, version)).await? {
        return Ok(d);
    }
    let latest = match version {
        None => None,
        Some(_) => within(state, store::latest_version(&client, name)).await?,
    };
    Err(match (version, latest) {
        (Some(v), Some(latest)) => ApiError::validation(vec![request::FieldError::new(
            "/version",
            format!("job definition {name} has no version {v}: it has versions 1 to {latest}"),
        )]),
        _ => ApiError::not_found(format!("no job definition {name}")),
    })
}

/// A start of version `d` (`start`, and `request` as the client sent it): made into a job
/// document and submitted as `POST /jobs` submits.
pub(super) async fn start_from(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    key: Option<String>,
    d: &DefinitionRecord,
    start: &Start,
    request: &Value,
) -> Result<Response, ApiError> {
    let name = &d.name;
    if let Some(refusal) = actions::start_refusal(d.retired_at) {
        return Err(ApiError::new(
            StatusCode::GONE,
            ProblemType::DefinitionRetired,
            format!("{name}: {refusal}"),
        ));
    }
    let document = definition::instantiate(&d.document, start).map_err(ApiError::validation)?;
    let limits = Limits {
        max_tasks: state.settings.max_tasks,
    };
    let mut new =
        request::parse_job(&document, limits, Utc::now()).map_err(ApiError::validation)?;
    new.fields.definition = Some(DefinitionRef {
        name: name.clone(),
        version: d.version,
    });
    // A replay under the same key must be the same start of the same definition.
    let asked = json!({"definition": name.as_str(), "start": request});
    submit(state, actor, headers, key, new, &asked).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_query_names_what_is_wrong() {
        assert_eq!(parse_list_query(None).ok(), Some((50, None)));
        assert_eq!(
            parse_list_query(Some("limit=2&cursor=b.1")).ok(),
            Some((2, Some("b.1".to_string())))
        );
        for (q, named) in [
            ("limit=0", "limit"),
            ("cursor=a%20b", "cursor"),
            ("sort=name", "sort"),
        ] {
            let e = parse_list_query(Some(q)).err();
            assert!(e.is_some_and(|e| e.detail.contains(named)), "{q}");
        }
    }
}
