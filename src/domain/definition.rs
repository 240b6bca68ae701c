//! Job definitions (docs/api.md, "Job definitions"): a job document kept as a versioned template,
//! with a JSON Schema (2020-12) for the parameters a start supplies, and RFC 6570 URI templates
//! in its tasks' URLs. Checking a definition (`check_document`) and turning a start into the job
//! document `POST /jobs` takes (`instantiate`) are here; storing them is the store's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use iri_string::spec::UriSpec;
use iri_string::template::UriTemplateStr;
use iri_string::template::simple_context::{SimpleContext, Value as TemplateValue};

use super::mapping::merge_patch;
use super::request::{FieldError, pointer_token};
use super::target::DefinitionName;

/// Which definition, and which of its versions, a job was started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DefinitionRef {
    #[schema(value_type = String)]
    pub name: DefinitionName,
    pub version: i32,
}

/// The members of a definition's representation that are the coordinator's, not the
/// document's: a representation PUT back has them, and they are set aside.
pub const READ_ONLY: [&str; 8] = [
    "name",
    "version",
    "latestVersion",
    "retired",
    "dateCreated",
    "dateUpdated",
    "versionCreated",
    "_links",
];

/// The task members that may be URI templates.
const TEMPLATED: [&str; 3] = ["taskURL", "confirmURL", "cancelURL"];

/// What a start may set besides the parameters and the version: they replace the template's.
pub const START_OVERRIDES: [&str; 7] = [
    "correlationID",
    "description",
    "tags",
    "contact",
    "jobSuccessURL",
    "jobFailedURL",
    "autoConfirm",
];

/// A JSON Schema 2020-12 for the parameters, compiled: compiling checks it against the
/// meta-schema too, and says where it is wrong (under `/parameters`). No `$ref` is fetched from
/// anywhere (the crate is built without retrieving).
fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, Vec<FieldError>> {
    if !schema.is_object() {
        return Err(vec![FieldError::new(
            "/parameters",
            "must be a JSON Schema (2020-12) object describing the parameters of a start",
        )]);
    }
    jsonschema::draft202012::new(schema).map_err(|e| {
        vec![FieldError::new(
            format!("/parameters{}", e.instance_path().as_str()),
            format!("is not a JSON Schema 2020-12 that can be used: {e}"),
        )]
    })
}

/// The template members of a document's tasks that hold an expression (`{...}`): their
/// pointers and text. A URL without braces is taken as it is, exactly as `POST /jobs` takes it.
fn templated(document: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let Some(tasks) = document.get("tasks").and_then(Value::as_array) else {
        return out;
    };
    for (i, task) in tasks.iter().enumerate() {
        for member in TEMPLATED {
            if let Some(text) = task.get(member).and_then(Value::as_str)
                && (text.contains('{') || text.contains('}'))
            {
                out.push((format!("/tasks/{i}/{member}"), text));
            }
        }
    }
    out
}

/// Set the task member at `pointer` (`/tasks/{i}/{member}`) to `text`.
fn set_at(document: &mut Value, pointer: &str, text: String) {
    if let Some(slot) = document.pointer_mut(pointer) {
        *slot = Value::String(text);
    }
}

/// A definition as PUT: the document to store (without the representation's read-only members),
/// or what is wrong with it. `check_job` is `POST /jobs`'s check of a job document: it is run on
/// the template with every variable given a sample value (the parameter's `default`, its first
/// `enum` or `examples` value, else `x`), so that a definition that could never start a job is
/// refused when it is PUT, with the pointers of the job document.
pub fn check_document(
    name: &DefinitionName,
    body: &Value,
    check_job: impl FnOnce(&Value) -> Result<(), Vec<FieldError>>,
) -> Result<Value, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            "a job definition must be a JSON object: a job document, with its parameters' schema in parameters",
        )]);
    };
    let mut document = object.clone();
    if let Some(given) = document.get("name")
        && given.as_str() != Some(name.as_str())
    {
        return Err(vec![FieldError::new(
            "/name",
            format!("must be {name}, the name in the URL, or be left out"),
        )]);
    }
    for member in READ_ONLY {
        document.remove(member);
    }
    let document = Value::Object(document);
    let mut errors = Vec::new();
    let schema = match document.get("parameters") {
        None => None,
        Some(s) => match compile_schema(s) {
            Ok(_) => Some(s.clone()),
            Err(e) => {
                errors.extend(e);
                None
            }
        },
    };
    let templates = templated(&document);
    let mut samples = Vec::new();
    for (pointer, text) in &templates {
        match UriTemplateStr::new(text) {
            Ok(template) => samples.push((pointer, sample_expansion(template, schema.as_ref()))),
            Err(e) => errors.push(FieldError::new(
                pointer.as_str(),
                format!("is not an RFC 6570 URI template: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut job = document.clone();
    if let Some(job) = job.as_object_mut() {
        job.remove("parameters");
    }
    for (pointer, text) in samples {
        set_at(&mut job, pointer, text);
    }
    check_job(&job).map_err(|errors| {
        errors
            .into_iter()
            .map(|mut e| {
                if templates.iter().any(|(p, _)| *p == e.pointer) {
                    e.detail.push_str(
                        " (the template, with each variable its parameter's default, first enum or examples value, else x)",
                    );
                }
                e
            })
            .collect::<Vec<_>>()
    })?;
    Ok(document)
}

/// The template expanded with a sample value for each variable (see `check_document`).
fn sample_expansion(template: &UriTemplateStr, schema: Option<&Value>) -> String {
    let mut context = SimpleContext::new();
    for var in template.variables() {
        let name = var.as_str();
        let property = schema
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(name));
        let sample = property
            .and_then(|p| {
                p.get("default")
                    .or_else(|| p.get("enum").and_then(|e| e.get(0)))
                    .or_else(|| p.get("examples").and_then(|e| e.get(0)))
            })
            .map(template_value)
            .unwrap_or_else(|| TemplateValue::String("x".into()));
        context.insert(name, sample);
    }
    template
        .expand::<UriSpec, _>(&context)
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// A parameter as a URI template's variable: a string as it is, a number or a boolean as its
/// JSON text, an array as a list, an object as an associative array, `null` as undefined.
/// Values nested deeper are their JSON text.
fn template_value(v: &Value) -> TemplateValue {
    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    match v {
        Value::Null => TemplateValue::Undefined,
        Value::Array(items) => TemplateValue::List(items.iter().map(text).collect()),
        Value::Object(m) => {
            TemplateValue::Assoc(m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        }
        other => TemplateValue::String(text(other)),
    }
}

/// A start's request (`POST /job-definitions/{name}/jobs`), read.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub parameters: Map<String, Value>,
    pub version: Option<i32>,
    /// The members of `START_OVERRIDES` given, as given (the job document's rules check them).
    pub overrides: Map<String, Value>,
}

/// Read a start's body: what is wrong, each with its pointer.
pub fn parse_start(body: &Value) -> Result<Start, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            "a start must be a JSON object, like {\"parameters\": {...}}",
        )]);
    };
    let mut errors = Vec::new();
    let mut start = Start {
        parameters: Map::new(),
        version: None,
        overrides: Map::new(),
    };
    for (key, value) in object {
        match key.as_str() {
            "parameters" => match value {
                Value::Object(m) => start.parameters = m.clone(),
                _ => errors.push(FieldError::new(
                    "/parameters",
                    "must be a JSON object: the parameters by name",
                )),
            },
            "version" => match value.as_i64().and_then(|v| i32::try_from(v).ok()) {
                Some(v) if v >= 1 => start.version = Some(v),
                _ => errors.push(FieldError::new(
                    "/version",
                    "must be a version number of the definition: 1, 2, ...",
                )),
            },
            k if START_OVERRIDES.contains(&k) => {
                start.overrides.insert(key.clone(), value.clone());
            }
            other => errors.push(FieldError::new(
                format!("/{}", pointer_token(other)),
                format!(
                    "is not a member of a start: it takes parameters, version, {}",
                    START_OVERRIDES.join(", ")
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(start)
    } else {
        Err(errors)
    }
}

/// The top-level `default`s of the schema's properties, for the parameters not given.
fn fill_defaults(schema: &Value, parameters: &mut Map<String, Value>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        if let Some(default) = property.get("default")
            && !parameters.contains_key(name)
        {
            parameters.insert(name.clone(), default.clone());
        }
    }
}

/// The job document a start makes of a version's `document`: the parameters, with the schema's
/// defaults filled in, checked against the schema (what is wrong, under `/parameters`), merged
/// into the template's `sharedState` (JSON Merge Patch), the URI templates expanded with them,
/// and the start's own members put in place of the template's. `POST /jobs`'s rules are the
/// caller's to apply to what comes out.
pub fn instantiate(document: &Value, start: &Start) -> Result<Value, Vec<FieldError>> {
    let mut parameters = start.parameters.clone();
    if let Some(schema) = document.get("parameters") {
        fill_defaults(schema, &mut parameters);
        let validator = compile_schema(schema)?;
        let instance = Value::Object(parameters.clone());
        let errors: Vec<FieldError> = validator
            .iter_errors(&instance)
            .map(|e| {
                let mut pointer = format!("/parameters{}", e.instance_path().as_str());
                if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
                    && let Some(p) = property.as_str()
                {
                    pointer.push('/');
                    pointer.push_str(&pointer_token(p));
                }
                FieldError::new(pointer, e.to_string())
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    let mut job = document.clone();
    let Some(object) = job.as_object_mut() else {
        return Err(vec![FieldError::new("", "the definition is not an object")]);
    };
    object.remove("parameters");
    let shared = object
        .entry("sharedState")
        .or_insert_with(|| Value::Object(Map::new()));
    merge_patch(shared, &Value::Object(parameters.clone()));
    for (key, value) in &start.overrides {
        object.insert(key.clone(), value.clone());
    }
    let mut context = SimpleContext::new();
    for (name, value) in &parameters {
        context.insert(name.clone(), template_value(value));
    }
    let mut errors = Vec::new();
    let mut expanded = Vec::new();
    for (pointer, text) in templated(&job) {
        let done = UriTemplateStr::new(text)
            .and_then(|t| t.expand::<UriSpec, _>(&context).map(|e| e.to_string()));
        match done {
            Ok(url) => expanded.push((pointer, url)),
            Err(e) => errors.push(FieldError::new(
                pointer,
                format!("could not be expanded with these parameters: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (pointer, url) in expanded {
        set_at(&mut job, &pointer, url);
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name() -> DefinitionName {
        DefinitionName::parse("booking").expect("a name")
    }

    fn pointers(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.pointer.as_str()).collect()
    }

    fn booking() -> Value {
        json!({
            "sharedState": {"channel": "web", "nights": 1},
            "parameters": {
                "type": "object",
                "required": ["hotel"],
                "properties": {
                    "hotel": {"type": "string", "pattern": "^[a-z]+$"},
                    "nights": {"type": "integer", "minimum": 1, "default": 2},
                    "guests": {"type": "array", "items": {"type": "string"}},
                },
            },
            "tasks": [
                {"taskID": "room", "taskURL": "http://hotel.test/{hotel}/rooms{?nights,guests}"},
                {"taskID": "pay", "confirmURL": "http://pay.test/confirm/{hotel}", "cancelURL": "http://pay.test/cancel"},
            ],
        })
    }

    fn start(parameters: Value) -> Start {
        parse_start(&json!({"parameters": parameters})).expect("a start")
    }

    #[test]
    fn a_start_expands_the_templates_and_merges_the_parameters_with_their_defaults() {
        let job = instantiate(
            &booking(),
            &start(json!({"hotel": "seaside", "guests": ["ann", "bo b"]})),
        )
        .expect("a job document");
        assert_eq!(
            job["tasks"][0]["taskURL"],
            "http://hotel.test/seaside/rooms?nights=2&guests=ann,bo%20b"
        );
        assert_eq!(
            job["tasks"][1]["confirmURL"],
            "http://pay.test/confirm/seaside"
        );
        assert_eq!(job["tasks"][1]["cancelURL"], "http://pay.test/cancel");
        assert_eq!(
            job["sharedState"],
            json!({"channel": "web", "nights": 2, "hotel": "seaside", "guests": ["ann", "bo b"]})
        );
        assert!(
            job.get("parameters").is_none(),
            "the schema is not part of the job"
        );
    }

    #[test]
    fn refused_parameters_are_named_under_parameters() {
        let errors = instantiate(&booking(), &start(json!({"nights": 0}))).expect_err("refused");
        let mut got = pointers(&errors);
        got.sort();
        assert_eq!(
            got,
            ["/parameters/hotel", "/parameters/nights"],
            "{errors:?}"
        );
        let errors = instantiate(
            &booking(),
            &start(json!({"hotel": "Sea Side", "guests": [1]})),
        )
        .expect_err("refused");
        let mut got = pointers(&errors);
        got.sort();
        assert_eq!(
            got,
            ["/parameters/guests/0", "/parameters/hotel"],
            "{errors:?}"
        );
    }

    #[test]
    fn a_start_takes_only_its_own_members() {
        let errors = parse_start(&json!({"parameters": [], "version": 0, "tasks": [], "a/b": 1}))
            .expect_err("refused");
        assert_eq!(
            pointers(&errors),
            ["/parameters", "/version", "/tasks", "/a~1b"]
        );
        let s = parse_start(&json!({"version": 2, "autoConfirm": false, "tags": ["x"]}))
            .expect("a start");
        assert_eq!(s.version, Some(2));
        assert_eq!(s.overrides.len(), 2);
        let job = instantiate(
            &booking(),
            &Start {
                parameters: json!({"hotel": "a"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..s
            },
        )
        .expect("a job");
        assert_eq!(job["autoConfirm"], false);
        assert_eq!(job["tags"], json!(["x"]));
    }

    fn checked(doc: &Value) -> Result<Value, Vec<FieldError>> {
        check_document(&name(), doc, |_| Ok(()))
    }

    #[test]
    fn a_definition_is_checked_where_it_is_wrong() {
        let mut doc = booking();
        doc["parameters"]["properties"]["nights"]["minimum"] = json!("one");
        doc["tasks"][0]["taskURL"] = json!("http://hotel.test/{hotel");
        let errors = checked(&doc).expect_err("refused");
        assert_eq!(
            pointers(&errors),
            ["/parameters/properties/nights/minimum", "/tasks/0/taskURL"],
            "{errors:?}"
        );
        assert_eq!(
            pointers(&checked(&json!({"parameters": true})).expect_err("refused")),
            ["/parameters"]
        );
        assert_eq!(
            pointers(&checked(&json!({"name": "other"})).expect_err("refused")),
            ["/name"]
        );
    }

    #[test]
    fn a_representation_put_back_loses_its_read_only_members() {
        let mut doc = booking();
        for (k, v) in [
            ("name", json!("booking")),
            ("version", json!(3)),
            ("latestVersion", json!(4)),
            ("retired", json!(false)),
            ("dateCreated", json!("2026-01-01T00:00:00.000Z")),
            ("dateUpdated", json!("2026-01-01T00:00:00.000Z")),
            ("versionCreated", json!("2026-01-01T00:00:00.000Z")),
            ("_links", json!({})),
        ] {
            doc[k] = v;
        }
        assert_eq!(checked(&doc).expect("taken"), booking());
    }

    #[test]
    fn the_job_rules_see_the_templates_filled_with_samples() {
        let mut seen = Value::Null;
        let mut doc = booking();
        doc["parameters"]["properties"]["hotel"]["examples"] = json!(["lakeside"]);
        check_document(&name(), &doc, |job| {
            seen = job.clone();
            Ok(())
        })
        .expect("taken");
        assert_eq!(
            seen["tasks"][0]["taskURL"],
            "http://hotel.test/lakeside/rooms?nights=2&guests=x"
        );
        assert!(seen.get("parameters").is_none());
        // What the job rules refuse in a template says how it was filled.
        let errors = check_document(&name(), &doc, |_| {
            Err(vec![FieldError::new(
                "/tasks/0/taskURL",
                "must be an http(s) URL",
            )])
        })
        .expect_err("refused");
        assert!(errors[0].detail.contains("each variable"), "{errors:?}");
    }
}
