//! `GET /openapi.json`: the OpenAPI 3.1 description of this API, generated from the handlers'
//! own annotations and the request and representation types they read and write (`repr`,
//! `domain::request`), so that it follows the code. Every problem answer refers to one `Problem`
//! schema, and both key schemes (Bearer for programs, Basic for pages) are described.

use std::sync::OnceLock;

use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::PROBLEM_JSON;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tcc-coordinator",
        description = "A Try-Confirm/Cancel transaction coordinator with a RESTful Job Control Language (docs/api.md)."
    ),
    paths(
        super::entry::entry_point,
        super::jobs::list_jobs,
        super::jobs::create_job,
        super::jobs::get_job,
        super::jobs::put_job,
        super::decisions::cancel_job,
        super::decisions::cancel_form,
        super::decisions::confirm_job,
        super::jobs::progress,
        super::tasks::list_tasks,
        super::tasks::get_task,
        super::tasks::register,
        super::heuristics::resolve_job,
        super::heuristics::heuristics,
        super::actions::continue_job,
        super::actions::restart_job,
        super::shared_state::get_shared_state,
        super::shared_state::put_shared_state,
        super::shared_state::patch_shared_state,
        super::events::events,
        super::definitions::list_definitions,
        super::definitions::put_definition,
        super::definitions::get_definition,
        super::definitions::retire_definition,
        super::definitions::list_versions,
        super::definitions::get_version,
        super::definitions::start_job,
        super::coordinator::confirm,
        super::coordinator::cancel,
        super::problems::problem_page,
        super::html::asset,
        super::health::live,
        super::health::ready,
        super::health::metrics_text,
        openapi_json,
    ),
    components(schemas(super::error::ProblemRepr)),
    modifiers(&Common)
)]
struct ApiDoc;

/// What every operation shares: the problem body on each 4xx/5xx, the answers any request may
/// get (a refused key, an overload, a database outage, a malformed or oversized body), and the
/// security schemes.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key's secret (TCC_API_KEYS)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("For pages: the key's name and its secret as password"))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
            ] {
                if let Some(op) = op {
                    // The same rule the keys' check applies (`auth::needed`).
                    common(op, super::auth::needed(&method, path));
                }
            }
        }
        link_jobs(doc);
    }
}

/// Every operation with its path.
fn operations_mut(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (&*path, op))
    })
}

/// Whether some content is described by this schema.
fn described_by<'a>(content: impl IntoIterator<Item = &'a RefOr<Content>>, schema: &str) -> bool {
    let wanted = format!("#/components/schemas/{schema}");
    content.into_iter().any(|c| match c {
        RefOr::T(c) => matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == wanted),
        RefOr::Ref(_) => false,
    })
}

/// OpenAPI links from the job that an operation taking a job document (`POST /jobs`,
/// `PUT /jobs/{jobID}`) answers to every operation on that job's path, with its `jobID` taken
/// from the answer: how a client (and schemathesis's stateful phase) goes from a job it made to
/// what it can do with it. (Those under `/tasks/{taskID}` are left out: a job may have no task.)
fn link_jobs(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::link::{Link, LinkBuilder};
    use utoipa::openapi::path::ParameterIn;
    let path_parameters = |op: &Operation| -> Vec<String> {
        op.parameters
            .iter()
            .flatten()
            .filter_map(|p| match p {
                RefOr::T(p) if p.parameter_in == ParameterIn::Path => Some(p.name.clone()),
                _ => None,
            })
            .collect()
    };
    let targets: Vec<(String, Link)> = operations_mut(doc)
        .filter(|(path, op)| path.starts_with("/jobs/{jobID}") && path_parameters(op) == ["jobID"])
        .filter_map(|(_, op)| {
            let id = op.operation_id.clone()?;
            let link = LinkBuilder::new()
                .operation_id(id.clone())
                .parameter("jobID", "$response.body#/jobID")
                .build();
            Some((id, link))
        })
        .collect();
    for (_, op) in operations_mut(doc) {
        let takes_a_job = match &op.request_body {
            Some(RefOr::T(body)) => described_by(body.content.values(), "JobRequest"),
            _ => false,
        };
        if !takes_a_job {
            continue;
        }
        for (status, answer) in op.responses.responses.iter_mut() {
            if let RefOr::T(answer) = answer
                && status.starts_with('2')
                && described_by(answer.content.values(), "JobRepr")
            {
                for (id, link) in &targets {
                    answer.links.insert(id.clone(), link.clone().into());
                }
            }
        }
    }
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

fn common(op: &mut Operation, needed: Option<super::auth::Role>) {
    let answers = &mut op.responses.responses;
    // Problems the annotations name by status only get the problem body.
    for (status, answer) in answers.iter_mut() {
        if status.starts_with(['4', '5'])
            && let RefOr::T(r) = answer
            && r.content.is_empty()
        {
            *answer = problem(&r.description);
        }
    }
    let mut shared = vec![
        (
            "503",
            "Overloaded, or the database is unreachable (Retry-After)",
        ),
        ("400", "Malformed: the request cannot be read"),
    ];
    if op.request_body.is_some() {
        shared.push(("413", "The body is larger than TCC_MAX_BODY"));
        shared.push((
            "415",
            "The Content-Type is not the one this operation reads",
        ));
    }
    let too_weak;
    if let Some(role) = needed {
        too_weak = format!("The key's role is too weak: this needs {}", role.as_str());
        shared.push(("401", "No key, or a wrong one (TCC_API_KEYS)"));
        shared.push(("403", &too_weak));
        op.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("basic", Vec::<String>::new()),
        ]);
    }
    for (status, text) in shared {
        answers
            .entry(status.to_string())
            .or_insert_with(|| problem(text));
    }
}

/// The description, built once.
#[utoipa::path(get, path = "/openapi.json", tag = "entry", responses((status = 200, description = "This description", body = Object)))]
pub async fn openapi_json() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    let mut resp = text.clone().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
