//! The console's pages. Each is filled from the representation the same URL answers as JSON
//! (`repr`), and its forms from the job's `_links` (`repr::job_links`), so a page shows what the
//! API says and offers exactly what the API allows.

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};

use super::super::app::AppState;
use super::super::db::{db, load, within};
use super::super::error::ApiError;
use super::super::repr::{self, EventRepr, JobRepr, TaskRepr};
use super::render;
use crate::domain::{JobStatus, TaskStatus, rfc3339};
use crate::store::{self, JobFilter, JobRecord, JobSummary, StoredEvent};

/// How many events the job page shows (the oldest; the rest are a link away).
const TIMELINE: i64 = 500;

/// A moment as shown: to the second, in UTC.
pub(super) fn shown(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago, roughly.
fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    duration((now - t).num_seconds())
}

/// A span of seconds, roughly.
fn duration(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// One job in a list.
struct JobRow {
    id: String,
    href: String,
    status: &'static str,
    reason: Option<&'static str>,
    correlation_id: String,
    description: Option<String>,
    created: String,
    created_at: String,
    age: String,
    task_count: i32,
    percent: u32,
}

impl JobRow {
    fn new(
        base: &str,
        s: &JobSummary,
        tasks: Option<&Vec<TaskStatus>>,
        now: DateTime<Utc>,
    ) -> Self {
        let tasks = tasks.map(Vec::as_slice).unwrap_or_default();
        JobRow {
            id: s.id.clone(),
            href: format!("{base}/jobs/{}", s.id),
            status: s.status.as_str(),
            reason: s.failure_reason.map(|r| r.as_str()),
            correlation_id: s.correlation_id.clone(),
            description: s.fields.description.clone(),
            created: shown(s.created_at),
            created_at: rfc3339(s.created_at),
            age: age(s.created_at, now),
            task_count: s.task_count,
            percent: repr::percent_complete(s.status, tasks.iter().copied()),
        }
    }
}

async fn job_rows(
    state: &AppState,
    base: &str,
    jobs: &[JobSummary],
) -> Result<Vec<JobRow>, ApiError> {
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let tasks = {
        let client = db(state).await?;
        within(state, store::task_statuses(&client, &ids)).await?
    };
    let now = Utc::now();
    Ok(jobs
        .iter()
        .map(|j| JobRow::new(base, j, tasks.get(&j.id), now))
        .collect())
}

/// An action the job's state allows, as a form.
struct ActionForm {
    href: String,
    rel: &'static str,
    label: &'static str,
    title: &'static str,
    /// A destructive action: the box to tick, saying what it does.
    confirm: Option<&'static str>,
}

/// The forms for the actions in a job's `_links` (all but registering a participant, which a
/// participant service does, with a link to give).
fn action_forms(links: &repr::Links) -> Vec<ActionForm> {
    links
        .0
        .iter()
        .filter(|(rel, l)| l.method == "POST" && *rel != "participants")
        .map(|(rel, l)| ActionForm {
            href: l.href.clone(),
            rel,
            label: match *rel {
                "confirm" => "Confirm",
                "cancel" => "Cancel",
                "continue" => "Continue",
                "restart" => "Restart",
                "resolve" => "Resolve",
                other => other,
            },
            title: l.title,
            confirm: confirmation(rel),
        })
        .collect()
}

/// One line of a job's timeline.
struct EventRow {
    seq: i64,
    at: String,
    kind: &'static str,
    text: String,
}

impl EventRow {
    fn new(s: &StoredEvent) -> Self {
        let e = EventRepr::new(s);
        let task = e.task_id.map(|t| format!("task {t}: ")).unwrap_or_default();
        let mut text = match e.kind {
            "status" => format!(
                "job {}{}",
                e.job_status.unwrap_or("?"),
                e.failure_reason
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            "call" => {
                let mut t = format!("{task}{}", e.op.unwrap_or("call"));
                if let Some(a) = e.attempt {
                    t.push_str(&format!(", attempt {a}"));
                }
                match e.http_status {
                    Some(h) => t.push_str(&format!(": HTTP {h}")),
                    None => t.push_str(": no answer"),
                }
                if let Some(ms) = e.duration_ms {
                    t.push_str(&format!(" in {ms} ms"));
                }
                if let Some(s) = e.task_status {
                    t.push_str(&format!(", task {s}"));
                }
                t
            }
            "task" => format!("{task}{}", e.task_status.unwrap_or("changed")),
            _ => format!(
                "{task}{} by {}",
                e.action.unwrap_or("action"),
                e.actor.unwrap_or("?")
            ),
        };
        if let Some(m) = e.message {
            text.push_str(" — ");
            text.push_str(m);
        }
        EventRow {
            seq: s.seq,
            at: shown(s.event.at),
            kind: e.kind,
            text,
        }
    }
}

struct TaskRow {
    id: String,
    href: String,
    status: &'static str,
    attempts: i32,
    link: Option<String>,
    expires: Option<String>,
    expires_at: Option<String>,
    last_message: Option<String>,
}

impl TaskRow {
    fn new(t: &TaskRepr<'_>) -> Self {
        TaskRow {
            id: t.task_id.to_string(),
            href: t
                .links
                .0
                .iter()
                .find(|(rel, _)| *rel == "self")
                .map(|(_, l)| l.href.clone())
                .unwrap_or_default(),
            status: t.task_status.as_str(),
            attempts: t.attempts,
            link: t
                .participant_link
                .as_ref()
                .map(|l| l.uri.to_string())
                .or_else(|| {
                    t.confirm_url
                        .zip(t.cancel_url)
                        .map(|(c, x)| format!("confirm {c}, cancel {x}"))
                }),
            expires: t.participant_link.as_ref().map(|l| shown(l.expires.0)),
            expires_at: t.participant_link.as_ref().map(|l| rfc3339(l.expires.0)),
            last_message: t.last_message.map(str::to_string),
        }
    }
}

struct NotificationRow {
    channel: String,
    target: String,
    event: String,
    status: String,
    attempts: i32,
    last_error: String,
}

/// What an action refused, shown at the top of the job's page.
pub struct Refusal {
    pub title: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    base: String,
    href: String,
    id: String,
    status: &'static str,
    terminal: bool,
    reason: Option<&'static str>,
    description: Option<String>,
    correlation_id: String,
    tags: String,
    /// The definition it was started from: its name and version, and the definition's page
    /// (where its form is).
    definition: Option<(String, i32, String)>,
    created: String,
    deadline: String,
    deadline_at: String,
    attempt: i32,
    percent: u32,
    tasks: Vec<TaskRow>,
    shared_state: String,
    notifications: Vec<NotificationRow>,
    resolution: Option<(String, String, String)>,
    actions: Vec<ActionForm>,
    events: Vec<EventRow>,
    more_events: bool,
    events_href: String,
    last_seq: i64,
    refused: Option<Refusal>,
}

/// The job's page; with `refused`, as the answer to an action that was refused (its status).
pub async fn job(
    state: &AppState,
    base: &str,
    record: &JobRecord,
    refused: Option<(StatusCode, Refusal)>,
) -> Result<Response, ApiError> {
    let id = &record.job.id;
    let events = {
        let client = db(state).await?;
        within(state, store::list_events(&client, id, 0, TIMELINE))
            .await?
            .map(|(_, events)| events)
            .unwrap_or_default()
    };
    // The record again, read after the events: it is at least as new as they are (a status is
    // written with its event), so the page never shows a job behind its own timeline, and the
    // live script follows from the last event shown. (The record first read may be older: a
    // job moves on between two reads.)
    let record = &load(state, id).await?;
    let r = JobRepr::new(base, record);
    let href = format!("{base}/jobs/{id}");
    let page = JobPage {
        base: base.to_string(),
        href: href.clone(),
        id: id.to_string(),
        status: r.job_status.as_str(),
        terminal: r.job_status.is_terminal(),
        reason: r.failure_reason.map(|f| f.as_str()),
        description: r.description.map(str::to_string),
        correlation_id: r.correlation_id.to_string(),
        tags: r.tags.join(", "),
        definition: r.definition.map(|d| {
            (
                d.name.to_string(),
                d.version,
                repr::definition_href(base, &d.name),
            )
        }),
        created: shown(r.date_created.0),
        deadline: shown(r.deadline.0),
        deadline_at: rfc3339(r.deadline.0),
        attempt: r.attempt,
        percent: repr::ProgressRepr::new(base, record).percent_complete,
        tasks: r.tasks.iter().map(TaskRow::new).collect(),
        shared_state: serde_json::to_string_pretty(r.shared_state).unwrap_or_default(),
        notifications: r
            .notifications
            .iter()
            .map(|n| NotificationRow {
                channel: n.channel.to_string(),
                target: n.target.to_string(),
                event: n.event.to_string(),
                status: n.status.to_string(),
                attempts: n.attempts,
                last_error: n.last_error.clone().unwrap_or_default(),
            })
            .collect(),
        resolution: r.resolution.as_ref().map(|res| {
            (
                res.note.to_string(),
                res.resolved_by.to_string(),
                shown(res.resolved_at.0),
            )
        }),
        actions: action_forms(&r.links),
        more_events: events.len() as i64 == TIMELINE,
        last_seq: events.last().map(|e| e.seq).unwrap_or(0),
        events: events.iter().map(EventRow::new).collect(),
        events_href: format!("{href}/events"),
        refused: refused.as_ref().map(|(_, r)| Refusal {
            title: r.title.clone(),
            detail: r.detail.clone(),
        }),
    };
    let status = refused.map(|(s, _)| s).unwrap_or(StatusCode::OK);
    render(status, &page)
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    base: String,
    job_id: String,
    job_href: String,
    job_status: &'static str,
    task: TaskRow,
    description: Option<String>,
    task_url: Option<String>,
    confirm_url: Option<String>,
    cancel_url: Option<String>,
    start: Option<String>,
    end: Option<String>,
    try_response: Option<String>,
}

/// A task's page.
pub fn task(base: &str, record: &JobRecord, t: &crate::domain::Task) -> Result<Response, ApiError> {
    let id = record.job.id.as_str();
    let r = TaskRepr::new(base, id, t);
    let page = TaskPage {
        base: base.to_string(),
        job_id: id.to_string(),
        job_href: format!("{base}/jobs/{id}"),
        job_status: record.job.status().as_str(),
        task: TaskRow::new(&r),
        description: r.task_description.map(str::to_string),
        task_url: r.task_url.map(str::to_string),
        confirm_url: r.confirm_url.map(str::to_string),
        cancel_url: r.cancel_url.map(str::to_string),
        start: r.start_time.map(|t| shown(t.0)),
        end: r.end_time.map(|t| shown(t.0)),
        try_response: r
            .try_response
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default()),
    };
    render(StatusCode::OK, &page)
}

/// The job list's filters, as the form shows them.
struct Filter {
    status: String,
    correlation_id: String,
    tag: String,
    definition: String,
    created_after: String,
    created_before: String,
}

/// A browser's form leaves empty fields in the query, and `datetime-local` inputs send
/// `2026-12-02T10:30` (no seconds, no offset): drop the empty ones and read such times as UTC,
/// so the query means what the form says. Anything else is left for the list's own checks.
pub fn form_query(raw: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| {
            let v = v.trim();
            let v = if matches!(k.as_ref(), "createdAfter" | "createdBefore") {
                local_as_utc(v).unwrap_or_else(|| v.to_string())
            } else {
                v.to_string()
            };
            (k.into_owned(), v)
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

fn local_as_utc(v: &str) -> Option<String> {
    let t = chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M"))
        .ok()?;
    Some(rfc3339(t.and_utc()))
}

/// A time from the query as a `datetime-local` value.
fn as_local(v: &str) -> String {
    DateTime::parse_from_rfc3339(v)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct ListPage {
    base: String,
    rows: Vec<JobRow>,
    filter: Filter,
    statuses: Vec<&'static str>,
    next: Option<String>,
    first: Option<String>,
}

/// The job list: the filters as a form, newest first, a link to the next page.
pub async fn job_list(
    state: &AppState,
    base: &str,
    query: Option<&str>,
    jobs: &[JobSummary],
    next: Option<String>,
) -> Result<Response, ApiError> {
    let mut filter = Filter {
        status: String::new(),
        correlation_id: String::new(),
        tag: String::new(),
        definition: String::new(),
        created_after: String::new(),
        created_before: String::new(),
    };
    let mut paged = false;
    let mut kept = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "status" => filter.status = v.to_string(),
            "correlationID" => filter.correlation_id = v.to_string(),
            "tag" => filter.tag = v.to_string(),
            "definition" => filter.definition = v.to_string(),
            "createdAfter" => filter.created_after = as_local(&v),
            "createdBefore" => filter.created_before = as_local(&v),
            "cursor" => {
                paged = true;
                continue;
            }
            _ => {}
        }
        kept.push((k.into_owned(), v.into_owned()));
    }
    let first = paged.then(|| {
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish();
        format!("{base}/jobs?{qs}")
    });
    let mut statuses = vec!["working"];
    statuses.extend(JobStatus::ALL.iter().map(|s| s.as_str()));
    let page = ListPage {
        base: base.to_string(),
        rows: job_rows(state, base, jobs).await?,
        filter,
        statuses,
        next,
        first,
    };
    render(StatusCode::OK, &page)
}

/// What an operator checks for a task of a heuristic job.
fn what_to_check(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Confirmed => {
            "Confirmed: the participant kept its side. Leave it, or undo it by hand if the whole job must not happen."
        }
        TaskStatus::Expired | TaskStatus::Canceled => {
            "Not confirmed: its reservation lapsed or was canceled before the confirm. Do this part by hand, or undo the confirmed ones."
        }
        _ => {
            "Not confirmed, or not known to be: its confirm was refused or never answered (the last message says which). Ask the participant, at its link, what it did."
        }
    }
}

struct OutcomeRow {
    task_id: String,
    status: &'static str,
    link: Option<String>,
    last_message: Option<String>,
    check: &'static str,
}

struct HeuristicRow {
    id: String,
    href: String,
    correlation_id: String,
    description: Option<String>,
    created: String,
    updated: String,
    tasks: Vec<OutcomeRow>,
    resolve: Option<ActionForm>,
}

impl HeuristicRow {
    fn new(base: &str, r: &JobRecord) -> Self {
        let h = repr::HeuristicRepr::new(base, r);
        HeuristicRow {
            id: h.job_id.to_string(),
            href: format!("{base}/jobs/{}", h.job_id),
            correlation_id: h.correlation_id.to_string(),
            description: h.description.map(str::to_string),
            created: shown(h.date_created.0),
            updated: shown(h.date_updated.0),
            tasks: h
                .tasks
                .iter()
                .map(|t| OutcomeRow {
                    task_id: t.task_id.to_string(),
                    status: t.task_status.as_str(),
                    link: t.participant_link.map(str::to_string),
                    last_message: t.last_message.map(str::to_string),
                    check: what_to_check(t.task_status),
                })
                .collect(),
            resolve: action_forms(&repr::job_links(base, r))
                .into_iter()
                .find(|a| a.rel == "resolve"),
        }
    }
}

#[derive(Template)]
#[template(path = "heuristics.html")]
struct HeuristicsPage {
    base: String,
    rows: Vec<HeuristicRow>,
    next: Option<String>,
}

/// Unresolved heuristic jobs, oldest first, each with what to check and its resolve form.
pub fn heuristics(
    base: &str,
    jobs: &[JobRecord],
    next: Option<String>,
) -> Result<Response, ApiError> {
    let page = HeuristicsPage {
        base: base.to_string(),
        rows: jobs.iter().map(|r| HeuristicRow::new(base, r)).collect(),
        next,
    };
    render(StatusCode::OK, &page)
}

struct StatusCount {
    status: &'static str,
    count: i64,
    oldest: String,
    href: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    base: String,
    version: &'static str,
    unresolved: i64,
    heuristics: Vec<HeuristicRow>,
    counts: Vec<StatusCount>,
    /// The newest jobs.
    rows: Vec<JobRow>,
}

/// How many unresolved heuristic jobs the overview lists (the rest are on `/heuristics`).
const OVERVIEW_HEURISTICS: i64 = 5;
/// How many of the newest jobs the overview lists.
const OVERVIEW_RECENT: i64 = 10;

/// `/`: unresolved heuristics first, then what is running by status, then the newest jobs.
pub async fn overview(state: &AppState, base: &str) -> Result<Response, ApiError> {
    let (active, unresolved, heuristics, recent) = {
        let mut client = db(state).await?;
        let active = within(state, store::active_stats(&mut client)).await?;
        let unresolved = within(state, store::count_heuristic(&client)).await?;
        let heuristics = within(
            state,
            store::unresolved_heuristics(&client, None, OVERVIEW_HEURISTICS),
        )
        .await?;
        let filter = JobFilter {
            limit: OVERVIEW_RECENT,
            ..Default::default()
        };
        let recent = within(state, store::list_jobs(&client, &filter)).await?;
        (active, unresolved, heuristics, recent)
    };
    let counts = JobStatus::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| {
            let found = active.iter().find(|(a, _, _)| a == s);
            StatusCount {
                status: s.as_str(),
                count: found.map(|(_, n, _)| *n).unwrap_or(0),
                oldest: found
                    .map(|(_, _, secs)| duration(*secs as i64))
                    .unwrap_or_default(),
                href: format!("{base}/jobs?status={}", s.as_str()),
            }
        })
        .collect();
    let page = Overview {
        base: base.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        unresolved,
        heuristics: heuristics
            .iter()
            .map(|r| HeuristicRow::new(base, r))
            .collect(),
        counts,
        rows: job_rows(state, base, &recent).await?,
    };
    render(StatusCode::OK, &page)
}

/// The box a destructive action's form has ticked, saying what the action does; `None`: not
/// destructive.
pub fn confirmation(rel: &str) -> Option<&'static str> {
    match rel {
        "cancel" => Some("Yes, cancel every task of this job"),
        "resolve" => Some("Yes, the outcome was fixed by hand as the note says"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forms_query_loses_its_empty_fields_and_reads_local_times_as_utc() {
        assert_eq!(form_query(None), None);
        assert_eq!(form_query(Some("status=&tag=&correlationID=")), None);
        assert_eq!(
            form_query(Some("status=reserved&tag=&createdAfter=2026-12-02T10%3A30")).as_deref(),
            Some("status=reserved&createdAfter=2026-12-02T10%3A30%3A00.000Z")
        );
        // Not a form's time: left as it is, for the list's own check to refuse.
        assert_eq!(
            form_query(Some("createdBefore=yesterday")).as_deref(),
            Some("createdBefore=yesterday")
        );
        assert_eq!(as_local("2026-12-02T10:30:00.000Z"), "2026-12-02T10:30:00");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(5), now), "5 s");
        assert_eq!(age(now - chrono::Duration::seconds(125), now), "2 min");
        assert_eq!(age(now - chrono::Duration::hours(5), now), "5 h");
        assert_eq!(age(now + chrono::Duration::seconds(5), now), "0 s");
    }
}
