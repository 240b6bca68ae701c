//! Representations: the job document, tasks, progress, summaries and their hypermedia links, as
//! typed structs that serialize to the API's JSON. The JSON answers are built from these types
//! only, so that other renderings (an OpenAPI description, HTML pages) can use the same ones.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::definition::DefinitionRef;
use crate::domain::request::Contact;
use crate::domain::retry::RetryPolicyPatch;
use crate::domain::{FailureReason, JobStatus, Resolution, Task, TaskStatus, rfc3339};
use crate::store::{DefinitionRecord, JobRecord, JobSummary};

/// A timestamp as the API writes it: RFC 3339, UTC, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC, milliseconds"))
            .into()
    }
}

impl ToSchema for Timestamp {}

fn ts(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(Timestamp)
}

/// One HAL link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LinkRepr {
    pub href: String,
    pub method: &'static str,
    pub title: &'static str,
}

/// HAL `_links`: relation → link, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links(pub Vec<(&'static str, LinkRepr)>);

impl Links {
    pub fn add(
        &mut self,
        rel: &'static str,
        href: String,
        method: &'static str,
        title: &'static str,
    ) {
        self.0.push((
            rel,
            LinkRepr {
                href,
                method,
                title,
            },
        ));
    }

    /// A page of a list: `self`, and `next` when there is more.
    pub fn page(self_href: String, next: Option<String>) -> Links {
        let mut links = Links::default();
        links.add("self", self_href, "GET", "This page");
        if let Some(next) = next {
            links.add("next", next, "GET", "The next page");
        }
        links
    }

    pub fn get(&self, rel: &str) -> Option<&LinkRepr> {
        self.0.iter().find(|(r, _)| *r == rel).map(|(_, l)| l)
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.get(rel).is_some()
    }

    /// The same relations as a `Link` header value.
    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(rel, l)| format!("<{}>; rel=\"{rel}\"", l.href))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Serialize for Links {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (rel, l) in &self.0 {
            m.serialize_entry(rel, l)?;
        }
        m.end()
    }
}

impl PartialSchema for Links {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "HAL links: relation → link. Actions appear only while the state allows them.",
            ))
            .additional_properties(Some(LinkRepr::schema()))
            .into()
    }
}

impl ToSchema for Links {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((LinkRepr::name().into(), LinkRepr::schema()));
    }
}

/// The `_links` of a job: navigation always, and the actions its state allows now, exactly
/// those (`domain::actions`, which the endpoints' refusals come from too).
pub fn job_links(base: &str, r: &JobRecord) -> Links {
    use crate::domain::actions::{self, Action};
    let id = r.job.id.as_str();
    let job = format!("{base}/jobs/{id}");
    let mut l = Links::default();
    l.add("self", job.clone(), "GET", "This job");
    l.add("collection", format!("{base}/jobs"), "GET", "All jobs");
    l.add(
        "progress",
        format!("{job}/progress"),
        "GET",
        "Progress of this job",
    );
    l.add(
        "shared-state",
        format!("{job}/shared-state"),
        "GET",
        "The job's shared state",
    );
    l.add("tasks", format!("{job}/tasks"), "GET", "The job's tasks");
    l.add(
        "events",
        format!("{job}/events"),
        "GET",
        "What happened to this job, in order (text/event-stream: live)",
    );
    if let Some(d) = &r.fields.definition {
        l.add(
            "definition",
            version_href(base, &d.name, d.version),
            "GET",
            "The job definition (the version) this job was started from",
        );
    }
    for action in actions::allowed(&r.job, r.resolution.is_some(), chrono::Utc::now()) {
        let title = match action {
            Action::Confirm => "Confirm every task",
            Action::Cancel => "Cancel every task",
            Action::Participants => "Register a participant link",
            Action::Continue => {
                "Retry the confirms now (heuristic: those whose link has not expired)"
            }
            Action::Resolve => "Record the manual fix of this heuristic outcome (body {\"note\"})",
            Action::Restart => "Start a new attempt of this job",
        };
        l.add(
            action.rel(),
            format!("{job}/{}", action.rel()),
            "POST",
            title,
        );
    }
    l
}

/// One notification of the job (a callback, webhook or email) and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRepr<'a> {
    pub channel: &'a str,
    pub target: String,
    pub event: &'a str,
    pub status: &'a str,
    pub attempts: i32,
    pub last_attempt: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// What the operators' webhook is shown as: its URL may carry a token, and a job's
/// representation goes to its client and to the job's own contact webhook.
pub const OPERATORS_WEBHOOK: &str = "TCC_HEURISTIC_WEBHOOK";

impl<'a> NotificationRepr<'a> {
    /// `contact_webhook`: the job's own; any other webhook is the operators'.
    pub fn new(n: &'a crate::store::Notification, contact_webhook: Option<&str>) -> Self {
        let operators = n.channel == "webhook" && contact_webhook != Some(n.target.as_str());
        let shown = |text: &str| {
            if operators {
                text.replace(n.target.as_str(), OPERATORS_WEBHOOK)
            } else {
                text.to_string()
            }
        };
        NotificationRepr {
            channel: &n.channel,
            target: shown(&n.target),
            event: &n.event,
            status: &n.status,
            attempts: n.attempts,
            last_attempt: ts(n.last_attempt),
            last_error: n.last_error.as_deref().map(shown),
        }
    }
}

/// An operator's resolution, as shown.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolutionRepr<'a> {
    pub note: &'a str,
    pub resolved_at: Timestamp,
    pub resolved_by: &'a str,
}

impl<'a> ResolutionRepr<'a> {
    pub fn new(r: &'a Resolution) -> Self {
        ResolutionRepr {
            note: &r.note,
            resolved_at: Timestamp(r.resolved_at),
            resolved_by: &r.resolved_by,
        }
    }
}

/// A JSON Pointer mapping, in the client's order, as an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a>(&'a [(String, String)]);

impl Serialize for Mapping<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl PartialSchema for Mapping<'_> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("JSON Pointer → JSON Pointer (RFC 6901)"))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .into()
    }
}

impl ToSchema for Mapping<'_> {}

/// A participant link as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LinkValue<'a> {
    pub uri: &'a str,
    pub expires: Timestamp,
}

/// A task (`GET /jobs/{id}/tasks/{taskID}`, and each of a job's `tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRepr<'a> {
    #[serde(rename = "taskID")]
    pub task_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_description: Option<&'a str>,
    #[serde(rename = "taskURL", skip_serializing_if = "Option::is_none")]
    pub task_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_mapping: Option<Mapping<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_mapping: Option<Mapping<'a>>,
    #[serde(rename = "taskMaxTTL", skip_serializing_if = "Option::is_none")]
    pub task_max_ttl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<&'a RetryPolicyPatch>,
    /// Where the coordinator confirms the task (a task with its own URLs).
    #[serde(rename = "confirmURL", skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri")]
    pub confirm_url: Option<&'a str>,
    /// Where the coordinator cancels the task (a task with its own URLs).
    #[serde(rename = "cancelURL", skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri")]
    pub cancel_url: Option<&'a str>,
    /// The DTM branch this task is (a job of a DTM global transaction).
    #[serde(rename = "dtmBranchID", skip_serializing_if = "Option::is_none")]
    pub dtm_branch_id: Option<&'a str>,
    pub task_status: TaskStatus,
    pub participant_link: Option<LinkValue<'a>>,
    pub attempts: i32,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    pub last_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub try_response: Option<&'a Value>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> TaskRepr<'a> {
    pub fn new(base: &str, job_id: &str, t: &'a Task) -> Self {
        let spec = t.try_spec.as_deref();
        let own = t.callbacks.as_deref();
        let mapping = |pairs: &'a [(String, String)]| (!pairs.is_empty()).then_some(Mapping(pairs));
        let mut links = Links::default();
        links.add(
            "self",
            format!("{base}/jobs/{job_id}/tasks/{}", t.task_id),
            "GET",
            "This task",
        );
        links.add("job", format!("{base}/jobs/{job_id}"), "GET", "The job");
        TaskRepr {
            task_id: &t.task_id,
            task_description: t.description.as_deref(),
            task_url: spec.map(|s| s.task_url.as_str()),
            body: spec
                .and_then(|s| s.body.as_ref())
                .or_else(|| own.and_then(|c| c.body.as_ref())),
            input_mapping: spec.and_then(|s| mapping(&s.input_mapping)),
            output_mapping: spec.and_then(|s| mapping(&s.output_mapping)),
            task_max_ttl: spec.map(|s| s.task_max_ttl),
            retry_policy: spec
                .and_then(|s| s.retry_policy.as_ref())
                .or_else(|| own.and_then(|c| c.retry_policy.as_ref())),
            confirm_url: own.map(|c| c.confirm_url.as_str()),
            cancel_url: own.map(|c| c.cancel_url.as_str()),
            dtm_branch_id: own
                .and_then(|c| c.dtm.as_ref())
                .map(|d| d.branch_id.as_str()),
            task_status: t.status,
            participant_link: t.link.as_ref().map(|l| LinkValue {
                uri: &l.uri,
                expires: Timestamp(l.expires),
            }),
            attempts: t.attempts,
            start_time: ts(t.start_time),
            end_time: ts(t.end_time),
            last_message: t.last_message.as_deref(),
            try_response: t.try_response.as_deref(),
            links,
        }
    }
}

/// The full job document (`GET /jobs/{id}`): the request's fields, the job's state, its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRepr<'a> {
    #[serde(rename = "jobID")]
    pub job_id: &'a str,
    pub job_status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    #[serde(rename = "correlationID")]
    pub correlation_id: &'a str,
    #[serde(rename = "jobMaxTTL")]
    pub job_max_ttl: f64,
    pub auto_confirm: bool,
    #[serde(rename = "jobSuccessURL", skip_serializing_if = "Option::is_none")]
    pub job_success_url: Option<&'a str>,
    #[serde(rename = "jobFailedURL", skip_serializing_if = "Option::is_none")]
    pub job_failed_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<&'a Contact>,
    /// The job definition (and version) the job was started from, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<&'a DefinitionRef>,
    pub tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<&'a RetryPolicyPatch>,
    pub shared_state: &'a Value,
    pub date_created: Timestamp,
    pub date_updated: Timestamp,
    pub deadline: Timestamp,
    pub attempt: i32,
    #[serde(rename = "sharedStateURL")]
    pub shared_state_url: String,
    #[serde(rename = "progressURL")]
    pub progress_url: String,
    /// An operator's resolution of a heuristic outcome.
    pub resolution: Option<ResolutionRepr<'a>>,
    /// Callback and contact deliveries (none yet).
    pub notifications: Vec<NotificationRepr<'a>>,
    pub tasks: Vec<TaskRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> JobRepr<'a> {
    pub fn new(base: &str, r: &'a JobRecord) -> Self {
        let j = &r.job;
        let f = &r.fields;
        JobRepr {
            job_id: &j.id,
            job_status: j.status(),
            failure_reason: j.failure_reason(),
            description: f.description.as_deref(),
            correlation_id: &j.correlation_id,
            job_max_ttl: f.job_max_ttl,
            auto_confirm: f.auto_confirm,
            job_success_url: f.job_success_url.as_deref(),
            job_failed_url: f.job_failed_url.as_deref(),
            contact: f.contact.as_ref(),
            definition: f.definition.as_ref(),
            tags: &f.tags,
            retry_policy: f.retry_policy.as_ref(),
            shared_state: &j.shared_state,
            date_created: Timestamp(j.created_at),
            date_updated: Timestamp(r.updated_at),
            deadline: Timestamp(j.deadline),
            attempt: r.job.attempt,
            shared_state_url: format!("{base}/jobs/{}/shared-state", j.id),
            progress_url: format!("{base}/jobs/{}/progress", j.id),
            resolution: r.resolution.as_ref().map(ResolutionRepr::new),
            notifications: {
                let contact = r.fields.contact.as_ref().and_then(|c| c.webhook.as_deref());
                r.notifications
                    .iter()
                    .map(|n| NotificationRepr::new(n, contact))
                    .collect()
            },
            tasks: j
                .tasks
                .iter()
                .map(|t| TaskRepr::new(base, &j.id, t))
                .collect(),
            links: job_links(base, r),
        }
    }
}

/// How far a task has come, for `percentComplete`.
/// How far a job is, 0–100: 100 once terminal, else the mean of its tasks' weights (at most 99).
pub fn percent_complete(
    status: JobStatus,
    tasks: impl ExactSizeIterator<Item = TaskStatus>,
) -> u32 {
    let n = tasks.len() as u32;
    if status.is_terminal() {
        return 100;
    }
    tasks
        .map(task_weight)
        .sum::<u32>()
        .checked_div(n)
        .map_or(0, |p| p.min(99))
}

fn task_weight(s: TaskStatus) -> u32 {
    match s {
        TaskStatus::Pending => 0,
        TaskStatus::Trying => 10,
        TaskStatus::Reserved => 50,
        TaskStatus::Confirming | TaskStatus::Canceling => 60,
        _ => 100,
    }
}

/// One task in a progress report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress<'a> {
    #[serde(rename = "taskID")]
    pub task_id: &'a str,
    pub task_status: TaskStatus,
    pub attempts: i32,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    pub last_message: Option<&'a str>,
}

/// `GET /jobs/{id}/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRepr<'a> {
    #[serde(rename = "jobID")]
    pub job_id: &'a str,
    pub job_status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    pub percent_complete: u32,
    pub tasks: Vec<TaskProgress<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> ProgressRepr<'a> {
    pub fn new(base: &str, r: &'a JobRecord) -> Self {
        let j = &r.job;
        let percent = percent_complete(j.status(), j.tasks.iter().map(|t| t.status));
        let mut links = Links::default();
        links.add(
            "self",
            format!("{base}/jobs/{}/progress", j.id),
            "GET",
            "This progress",
        );
        links.add("job", format!("{base}/jobs/{}", j.id), "GET", "The job");
        ProgressRepr {
            job_id: &j.id,
            job_status: j.status(),
            failure_reason: j.failure_reason(),
            percent_complete: percent,
            tasks: j
                .tasks
                .iter()
                .map(|t| TaskProgress {
                    task_id: &t.task_id,
                    task_status: t.status,
                    attempts: t.attempts,
                    start_time: ts(t.start_time),
                    end_time: ts(t.end_time),
                    last_message: t.last_message.as_deref(),
                })
                .collect(),
            links,
        }
    }
}

/// One job in `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRepr<'a> {
    #[serde(rename = "jobID")]
    pub job_id: &'a str,
    pub job_status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    #[serde(rename = "correlationID")]
    pub correlation_id: &'a str,
    pub description: Option<&'a str>,
    pub tags: &'a [String],
    pub date_created: Timestamp,
    pub date_updated: Timestamp,
    pub deadline: Timestamp,
    pub task_count: i32,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> SummaryRepr<'a> {
    pub fn new(base: &str, s: &'a JobSummary) -> Self {
        let mut links = Links::default();
        links.add("self", format!("{base}/jobs/{}", s.id), "GET", "This job");
        SummaryRepr {
            job_id: &s.id,
            job_status: s.status,
            failure_reason: s.failure_reason,
            correlation_id: &s.correlation_id,
            description: s.fields.description.as_deref(),
            tags: &s.fields.tags,
            date_created: Timestamp(s.created_at),
            date_updated: Timestamp(s.updated_at),
            deadline: Timestamp(s.deadline),
            task_count: s.task_count,
            links,
        }
    }
}

/// `GET /jobs`: a page of summaries, with `self` and `next`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobListRepr<'a> {
    pub jobs: Vec<SummaryRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> JobListRepr<'a> {
    pub fn new(
        base: &str,
        rows: &'a [JobSummary],
        self_href: String,
        next: Option<String>,
    ) -> Self {
        let links = Links::page(self_href, next);
        JobListRepr {
            jobs: rows.iter().map(|r| SummaryRepr::new(base, r)).collect(),
            links,
        }
    }
}

/// `GET /jobs/{id}/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskListRepr<'a> {
    pub tasks: Vec<TaskRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> TaskListRepr<'a> {
    pub fn new(base: &str, r: &'a JobRecord) -> Self {
        let id = &r.job.id;
        let mut links = Links::default();
        links.add(
            "self",
            format!("{base}/jobs/{id}/tasks"),
            "GET",
            "The job's tasks",
        );
        links.add("job", format!("{base}/jobs/{id}"), "GET", "The job");
        TaskListRepr {
            tasks: r
                .job
                .tasks
                .iter()
                .map(|t| TaskRepr::new(base, id, t))
                .collect(),
            links,
        }
    }
}

/// One task's outcome, for the problem body of a confirm that did not complete.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutcome<'a> {
    #[serde(rename = "taskID")]
    pub task_id: &'a str,
    pub task_status: TaskStatus,
    pub participant_link: Option<&'a str>,
    pub last_message: Option<&'a str>,
}

/// An unresolved heuristic job on `GET /heuristics`: what it is, and each task's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeuristicRepr<'a> {
    #[serde(rename = "jobID")]
    pub job_id: &'a str,
    pub job_status: JobStatus,
    #[serde(rename = "correlationID")]
    pub correlation_id: &'a str,
    pub description: Option<&'a str>,
    pub date_created: Timestamp,
    pub date_updated: Timestamp,
    pub tasks: Vec<TaskOutcome<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> HeuristicRepr<'a> {
    pub fn new(base: &str, r: &'a JobRecord) -> Self {
        HeuristicRepr {
            job_id: r.job.id.as_str(),
            job_status: r.job.status(),
            correlation_id: &r.job.correlation_id,
            description: r.fields.description.as_deref(),
            date_created: Timestamp(r.job.created_at),
            date_updated: Timestamp(r.updated_at),
            tasks: task_outcomes(r),
            links: job_links(base, r),
        }
    }
}

/// `GET /heuristics`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HeuristicListRepr<'a> {
    pub jobs: Vec<HeuristicRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

/// One entry of a job's event log (`GET /jobs/{id}/events`). Only the fields its `type` has are
/// present.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRepr<'a> {
    pub seq: i64,
    pub at: Timestamp,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "taskID", skip_serializing_if = "Option::is_none")]
    pub task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
}

impl<'a> EventRepr<'a> {
    pub fn new(s: &'a crate::store::StoredEvent) -> Self {
        use crate::domain::What;
        let e = &s.event;
        let mut r = EventRepr {
            seq: s.seq,
            at: Timestamp(e.at),
            kind: e.kind().as_str(),
            task_id: e.what.task_id(),
            job_status: None,
            failure_reason: None,
            task_status: None,
            op: None,
            attempt: None,
            http_status: None,
            duration_ms: None,
            action: None,
            actor: None,
            message: e.what.message(),
        };
        match &e.what {
            What::Status { status, reason } => {
                r.job_status = Some(status.as_str());
                r.failure_reason = reason.map(FailureReason::as_str);
            }
            What::Call {
                op,
                attempt,
                http_status,
                duration_ms,
                status,
                ..
            } => {
                r.op = Some(op.as_str());
                r.attempt = Some(*attempt);
                r.http_status = *http_status;
                r.duration_ms = Some(*duration_ms);
                r.task_status = Some(status.as_str());
            }
            What::Task { status, .. } => r.task_status = Some(status.as_str()),
            What::Action { action, actor, .. } => {
                r.action = Some(action.as_str());
                r.actor = Some(actor);
            }
        }
        r
    }
}

/// `GET /jobs/{id}/events`: a page of the log, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventListRepr<'a> {
    #[serde(rename = "jobID")]
    pub job_id: &'a str,
    #[serde(rename = "jobStatus")]
    pub job_status: &'static str,
    pub events: Vec<EventRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

pub fn task_outcomes(r: &JobRecord) -> Vec<TaskOutcome<'_>> {
    r.job
        .tasks
        .iter()
        .map(|t| TaskOutcome {
            task_id: &t.task_id,
            task_status: t.status,
            participant_link: t.link.as_ref().map(|l| l.uri.as_str()),
            last_message: t.last_message.as_deref(),
        })
        .collect()
}

/// Where a job definition is (its latest version).
pub fn definition_href(base: &str, name: &str) -> String {
    format!("{base}/job-definitions/{name}")
}

/// Where one version of a job definition is.
pub fn version_href(base: &str, name: &str, version: i32) -> String {
    format!("{}/versions/{version}", definition_href(base, name))
}

/// A job definition's links: where it is, its versions and jobs, and `start` unless retired.
fn definition_links(base: &str, d: &DefinitionRecord, version: bool) -> Links {
    let href = definition_href(base, &d.name);
    let mut l = Links::default();
    if version {
        l.add(
            "self",
            version_href(base, &d.name, d.version),
            "GET",
            "This version of the job definition",
        );
        l.add(
            "latest",
            href.clone(),
            "GET",
            "The definition's latest version",
        );
    } else {
        l.add(
            "self",
            href.clone(),
            "GET",
            "This job definition (its latest version)",
        );
    }
    l.add(
        "collection",
        format!("{base}/job-definitions"),
        "GET",
        "All job definitions",
    );
    l.add(
        "versions",
        format!("{href}/versions"),
        "GET",
        "Every version of this definition",
    );
    l.add(
        "jobs",
        format!("{base}/jobs?definition={}", d.name),
        "GET",
        "The jobs started from this definition",
    );
    if crate::domain::actions::start_refusal(d.retired_at).is_none() {
        l.add(
            "start",
            format!("{href}/jobs"),
            "POST",
            "Start a job (body {\"parameters\": {...}})",
        );
    }
    l
}

/// A job definition: one version's document (a job document with its `parameters` schema), its
/// name and version, whether the definition is retired, and its links. The document's own
/// members are at the top level, so that the representation can be PUT back as it is.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionRepr<'a> {
    pub name: &'a str,
    pub version: i32,
    pub latest_version: i32,
    pub retired: bool,
    /// When the definition was first PUT.
    pub date_created: Timestamp,
    /// When it last changed: a new version, a retire, or back again.
    pub date_updated: Timestamp,
    /// When this version was PUT.
    pub version_created: Timestamp,
    /// The document's members: a job document (`tasks`, `sharedState`, ...) and `parameters`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub document: &'a Value,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> DefinitionRepr<'a> {
    /// `version`: shown as one of its versions (`/versions/{n}`), else as the definition.
    pub fn new(base: &str, d: &'a DefinitionRecord, version: bool) -> Self {
        DefinitionRepr {
            name: &d.name,
            version: d.version,
            latest_version: d.latest,
            retired: d.retired_at.is_some(),
            date_created: Timestamp(d.created_at),
            date_updated: Timestamp(d.updated_at),
            version_created: Timestamp(d.version_created_at),
            document: &d.document,
            links: definition_links(base, d, version),
        }
    }
}

/// One definition in `GET /job-definitions`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionSummaryRepr<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub version: i32,
    pub retired: bool,
    pub date_created: Timestamp,
    pub date_updated: Timestamp,
    #[serde(rename = "_links")]
    pub links: Links,
}

/// `GET /job-definitions`: a page of definitions by name, with `self` and `next`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DefinitionListRepr<'a> {
    pub definitions: Vec<DefinitionSummaryRepr<'a>>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl<'a> DefinitionListRepr<'a> {
    pub fn new(
        base: &str,
        rows: &'a [DefinitionRecord],
        self_href: String,
        next: Option<String>,
    ) -> Self {
        let links = Links::page(self_href, next);
        DefinitionListRepr {
            definitions: rows
                .iter()
                .map(|d| {
                    let mut links = Links::default();
                    links.add(
                        "self",
                        definition_href(base, &d.name),
                        "GET",
                        "This job definition",
                    );
                    DefinitionSummaryRepr {
                        name: &d.name,
                        description: d.description(),
                        version: d.latest,
                        retired: d.retired_at.is_some(),
                        date_created: Timestamp(d.created_at),
                        date_updated: Timestamp(d.updated_at),
                        links,
                    }
                })
                .collect(),
            links,
        }
    }
}

/// One version in `GET /job-definitions/{name}/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummaryRepr {
    pub version: i32,
    pub date_created: Timestamp,
    #[serde(rename = "_links")]
    pub links: Links,
}

/// `GET /job-definitions/{name}/versions`: every version, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VersionListRepr {
    pub versions: Vec<VersionSummaryRepr>,
    #[serde(rename = "_links")]
    pub links: Links,
}

impl VersionListRepr {
    pub fn new(base: &str, name: &str, versions: &[(i32, DateTime<Utc>)]) -> Self {
        let href = definition_href(base, name);
        let mut links = Links::default();
        links.add("self", format!("{href}/versions"), "GET", "This list");
        links.add("up", href.clone(), "GET", "The job definition");
        VersionListRepr {
            versions: versions
                .iter()
                .map(|(v, at)| {
                    let mut links = Links::default();
                    links.add("self", version_href(base, name, *v), "GET", "This version");
                    VersionSummaryRepr {
                        version: *v,
                        date_created: Timestamp(*at),
                        links,
                    }
                })
                .collect(),
            links,
        }
    }
}

/// A strong ETag over the exact bytes of a representation.
pub fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut tag = String::with_capacity(34);
    tag.push('"');
    push_hex(&mut tag, &digest[..16]);
    tag.push('"');
    tag
}

/// `bytes` in lowercase hex, two digits each, appended to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The same JSON with object keys sorted at every level: equal documents hash equal whatever the
/// order their client wrote the keys in.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    push_hex(&mut hex, &Sha256::digest(bytes));
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_the_first_half_of_the_sha256_in_lowercase_hex_quoted() {
        assert_eq!(etag(b""), "\"e3b0c44298fc1c149afbf4c8996fb924\"");
        assert_eq!(etag(b"abc"), "\"ba7816bf8f01cfea414140de5dae2223\"");
    }

    #[test]
    fn a_sha256_hex_is_the_whole_digest_in_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn canonical_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": [ {"d":1,"c":2} ]}}"#)
            .unwrap_or_default();
        let b: Value = serde_json::from_str(r#"{"a": {"x": [ {"c":2,"d":1} ], "y": 2}, "b": 1}"#)
            .unwrap_or_default();
        assert_eq!(canonical(&a).to_string(), canonical(&b).to_string());
    }
}
