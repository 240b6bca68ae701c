//! The job definitions' pages: the list, and a definition with the form that starts a job,
//! built from its parameter schema (text, number, checkbox, a select for an `enum`; required
//! fields marked, defaults filled in, each property's `description` as its help). The form
//! POSTs to the start's own URL; `start_form` reads it as the schema says, starts the job as
//! the API does, and answers 303 to the job's page, or this page again with what was refused
//! beside its field.

use std::collections::HashMap;

use askama::Template;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::super::app::AppState;
use super::super::auth::Actor;
use super::super::definitions::{read, start_from};
use super::super::error::ApiError;
use super::super::extract::read_body;
use super::super::negotiate::vary_accept;
use super::super::repr::{DefinitionListRepr, DefinitionRepr, Links, VersionListRepr};
use super::super::respond::base_url;
use super::pages::Refusal;
use super::render;
use crate::domain::DefinitionName;
use crate::domain::definition::Start;
use crate::domain::request::{FieldError, pointer_token};
use crate::store::DefinitionRecord;

/// One row of the list.
struct DefinitionRow {
    name: String,
    href: String,
    description: String,
    version: i32,
    retired: bool,
    updated: String,
}

#[derive(Template)]
#[template(path = "definitions.html")]
struct ListPage {
    base: String,
    rows: Vec<DefinitionRow>,
    next: Option<String>,
}

/// `/job-definitions` for a browser, from the list's representation.
pub fn definition_list(
    base: &str,
    rows: &[DefinitionRecord],
    next: Option<String>,
) -> Result<Response, ApiError> {
    let list = DefinitionListRepr::new(base, rows, String::new(), next);
    let page = ListPage {
        base: base.to_string(),
        rows: list
            .definitions
            .iter()
            .map(|d| DefinitionRow {
                name: d.name.to_string(),
                href: href(&d.links, "self"),
                description: d.description.unwrap_or_default().to_string(),
                version: d.version,
                retired: d.retired,
                updated: super::pages::shown(d.date_updated.0),
            })
            .collect(),
        next: list.links.get("next").map(|l| l.href.clone()),
    };
    render(StatusCode::OK, &page)
}

/// A link's target, from a representation's `_links` (empty when it is not there).
fn href(links: &Links, rel: &str) -> String {
    links.get(rel).map(|l| l.href.clone()).unwrap_or_default()
}

#[derive(Template)]
#[template(path = "versions.html")]
struct VersionsPage {
    base: String,
    name: String,
    href: String,
    versions: Vec<(i32, String, String)>,
}

/// `/job-definitions/{name}/versions` for a browser: each version, oldest first.
pub fn versions(
    base: &str,
    name: &DefinitionName,
    versions: &[(i32, chrono::DateTime<chrono::Utc>)],
) -> Result<Response, ApiError> {
    let list = VersionListRepr::new(base, name, versions);
    let page = VersionsPage {
        base: base.to_string(),
        name: name.to_string(),
        versions: list
            .versions
            .iter()
            .map(|v| {
                let at = super::pages::shown(v.date_created.0);
                (v.version, href(&v.links, "self"), at)
            })
            .collect(),
        href: href(&list.links, "up"),
    };
    render(StatusCode::OK, &page)
}

/// One of the form's controls, for one top-level property of the parameter schema.
struct Field {
    name: String,
    id: String,
    label: String,
    /// `text`, `number`, `checkbox` or `select`.
    kind: &'static str,
    step: &'static str,
    required: bool,
    value: String,
    checked: bool,
    /// A select's options: the text, and whether it is chosen.
    options: Vec<(String, bool)>,
    help: Option<String>,
    error: Option<String>,
    /// `aria-describedby`: the help and the error, when there are.
    described_by: String,
}

#[derive(Template)]
#[template(path = "definition.html")]
struct DefinitionPage {
    base: String,
    name: String,
    version: i32,
    latest: i32,
    retired: bool,
    description: Option<String>,
    start_href: Option<String>,
    fields: Vec<Field>,
    refused: Option<Refusal>,
    versions_href: String,
    jobs_href: String,
    document: String,
}

/// A JSON value as a form shows it: a string as it is, anything else as its JSON text.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The schema's top-level properties, in the schema's order, with whether each is required.
fn properties(schema: Option<&Value>) -> Vec<(&String, &Value, bool)> {
    let Some(schema) = schema else {
        return Vec::new();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(name, prop)| (name, prop, required.contains(&name.as_str())))
                .collect()
        })
        .unwrap_or_default()
}

/// The JSON Schema `type` of a property (the first non-null one of a list).
fn type_of(prop: &Value) -> &str {
    match prop.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    }
}

/// What a person entered, and what was refused, for showing the form again.
pub struct Entered {
    pub values: HashMap<String, String>,
    pub errors: Vec<FieldError>,
}

/// The definition's page: with `entered`, as the answer to a start that was refused (422).
pub fn definition(
    base: &str,
    d: &DefinitionRecord,
    entered: Option<Entered>,
) -> Result<Response, ApiError> {
    // The links the JSON answer carries: the form is offered where `start` is.
    let repr = DefinitionRepr::new(base, d, d.version != d.latest);
    let schema = d.document.get("parameters");
    let mut errors = entered
        .as_ref()
        .map(|e| e.errors.clone())
        .unwrap_or_default();
    let mut fields = Vec::new();
    for (name, prop, required) in properties(schema) {
        let id = format!("p-{name}");
        let pointer = format!("/parameters/{}", pointer_token(name));
        // Everything refused at or under this parameter is shown beside it.
        let (mine, rest): (Vec<FieldError>, Vec<FieldError>) = errors
            .into_iter()
            .partition(|e| e.pointer == pointer || e.pointer.starts_with(&format!("{pointer}/")));
        errors = rest;
        let error = (!mine.is_empty()).then(|| {
            mine.iter()
                .map(|e| e.detail.clone())
                .collect::<Vec<_>>()
                .join("; ")
        });
        let entered_value = entered.as_ref().map(|e| e.values.get(name).cloned());
        let default = prop.get("default").map(as_text).unwrap_or_default();
        let value = match &entered_value {
            Some(v) => v.clone().unwrap_or_default(),
            None => default.clone(),
        };
        let kind = match (prop.get("enum"), type_of(prop)) {
            (Some(_), _) => "select",
            (None, "boolean") => "checkbox",
            (None, "integer" | "number") => "number",
            _ => "text",
        };
        let options = prop
            .get("enum")
            .and_then(Value::as_array)
            .map(|values| {
                values
                    .iter()
                    .map(|v| {
                        let text = as_text(v);
                        let chosen = text == value;
                        (text, chosen)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let help = prop
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut described_by = Vec::new();
        if help.is_some() {
            described_by.push(format!("{id}-help"));
        }
        if error.is_some() {
            described_by.push(format!("{id}-error"));
        }
        fields.push(Field {
            name: name.clone(),
            label: prop
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(name)
                .to_string(),
            id,
            kind,
            step: if type_of(prop) == "integer" {
                "1"
            } else {
                "any"
            },
            required,
            checked: value == "true",
            value,
            options,
            help,
            error,
            described_by: described_by.join(" "),
        });
    }
    // What is refused elsewhere (the start's other members, the job the template made).
    let refused = (!errors.is_empty()).then(|| Refusal {
        title: "The job could not be started".into(),
        detail: FieldError::joined(&errors),
    });
    let page = DefinitionPage {
        base: base.to_string(),
        name: d.name.to_string(),
        version: d.version,
        latest: d.latest,
        retired: d.retired_at.is_some(),
        description: d.description().map(str::to_string),
        // A form starts the latest version (the API can start any with `version`).
        start_href: (d.version == d.latest)
            .then(|| repr.links.get("start").map(|l| l.href.clone()))
            .flatten(),
        fields,
        refused,
        versions_href: href(&repr.links, "versions"),
        jobs_href: href(&repr.links, "jobs"),
        document: serde_json::to_string_pretty(&d.document).unwrap_or_default(),
    };
    let status = if entered.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render(status, &page)
}

/// A form's value as the schema's property wants it: a number for a number, `true`/`false`
/// for a checkbox, the enum's own value for a select, JSON for an array or object; an empty
/// text is no value. What does not read as the type is passed on as text, for the schema to
/// refuse with its own words.
fn typed(prop: &Value, text: Option<&str>) -> Option<Value> {
    let kind = type_of(prop);
    if kind == "boolean" && prop.get("enum").is_none() {
        return Some(Value::Bool(matches!(text, Some("true" | "on"))));
    }
    let text = text.map(str::trim).filter(|t| !t.is_empty())?;
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        return Some(
            values
                .iter()
                .find(|v| as_text(v) == text)
                .cloned()
                .unwrap_or_else(|| Value::String(text.to_string())),
        );
    }
    let parsed = match kind {
        "integer" => text.parse::<i64>().ok().map(Value::from),
        "number" => text.parse::<i64>().ok().map(Value::from).or_else(|| {
            text.parse::<f64>()
                .ok()
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
        }),
        "array" | "object" => serde_json::from_str(text).ok(),
        _ => None,
    };
    Some(parsed.unwrap_or_else(|| Value::String(text.to_string())))
}

/// The console's form, POSTed to `/job-definitions/{name}/jobs`: the parameters read as the
/// latest version's schema says, the job started as the API starts it, 303 to its page; a
/// refusal of the values is the definition's page again with each message beside its field.
pub async fn start_form(
    state: &AppState,
    actor: &Actor,
    name: &DefinitionName,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let base = base_url(state, headers);
    let bytes = read_body(body, state.settings.max_body, "form").await?;
    let values: HashMap<String, String> = url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let d = read(state, name, None).await?;
    let mut parameters = Map::new();
    for (prop_name, prop, _) in properties(d.document.get("parameters")) {
        if let Some(v) = typed(prop, values.get(prop_name).map(String::as_str)) {
            parameters.insert(prop_name.clone(), v);
        }
    }
    let start = Start {
        parameters: parameters.clone(),
        version: Some(d.version),
        overrides: Map::new(),
    };
    let request = serde_json::json!({"parameters": parameters, "version": d.version});
    match start_from(state, actor, headers, None, &d, &start, &request).await {
        Ok(resp) => {
            let location = resp
                .headers()
                .get(header::LOCATION)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("/jobs"));
            Ok(vary_accept(
                (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
            ))
        }
        Err(e) if e.status() == StatusCode::UNPROCESSABLE_ENTITY && !e.errors.is_empty() => {
            definition(
                &base,
                &d,
                Some(Entered {
                    values,
                    errors: e.errors.clone(),
                }),
            )
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_forms_text_is_typed_as_the_schema_says() {
        let cases = [
            (json!({"type": "integer"}), Some(" 3 "), Some(json!(3))),
            (
                json!({"type": "integer"}),
                Some("three"),
                Some(json!("three")),
            ),
            (json!({"type": "number"}), Some("2.5"), Some(json!(2.5))),
            (json!({"type": "number"}), Some("2"), Some(json!(2))),
            (json!({"type": "boolean"}), Some("true"), Some(json!(true))),
            (json!({"type": "boolean"}), None, Some(json!(false))),
            (json!({"enum": [1, 2]}), Some("2"), Some(json!(2))),
            (
                json!({"type": "string", "enum": ["a", "b"]}),
                Some(""),
                None,
            ),
            (
                json!({"type": "array"}),
                Some("[\"x\"]"),
                Some(json!(["x"])),
            ),
            (json!({"type": "string"}), Some("  "), None),
            (
                json!({"type": ["string", "null"]}),
                Some("seaside"),
                Some(json!("seaside")),
            ),
            (json!({}), Some("x"), Some(json!("x"))),
        ];
        for (prop, text, want) in cases {
            assert_eq!(typed(&prop, text), want, "{prop} {text:?}");
        }
    }
}
