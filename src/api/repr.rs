//! Representations: the job document, tasks, progress, summaries, and their hypermedia links.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::domain::{JobStatus, Task, TaskStatus, rfc3339};
use crate::store::{JobRecord, JobSummary};

/// One HAL link.
fn link(href: String, method: &str, title: &str) -> Value {
    json!({"href": href, "method": method, "title": title})
}

/// The `_links` of a job: navigation always, actions only when the job's state allows them.
pub fn job_links(base: &str, id: &str, status: JobStatus) -> Map<String, Value> {
    let job = format!("{base}/jobs/{id}");
    let mut l = Map::new();
    l.insert("self".into(), link(job.clone(), "GET", "This job"));
    l.insert(
        "collection".into(),
        link(format!("{base}/jobs"), "GET", "All jobs"),
    );
    l.insert(
        "progress".into(),
        link(format!("{job}/progress"), "GET", "Progress of this job"),
    );
    l.insert(
        "shared-state".into(),
        link(
            format!("{job}/shared-state"),
            "GET",
            "The job's shared state",
        ),
    );
    l.insert(
        "tasks".into(),
        link(format!("{job}/tasks"), "GET", "The job's tasks"),
    );
    if status.is_undecided() {
        l.insert(
            "confirm".into(),
            link(format!("{job}/confirm"), "POST", "Confirm every task"),
        );
        l.insert(
            "cancel".into(),
            link(format!("{job}/cancel"), "POST", "Cancel every task"),
        );
        l.insert(
            "participants".into(),
            link(
                format!("{job}/participants"),
                "POST",
                "Register a participant link",
            ),
        );
    }
    l
}

/// The same relations as a `Link` header value.
pub fn link_header(links: &Map<String, Value>) -> String {
    links
        .iter()
        .filter_map(|(rel, v)| {
            let href = v.get("href")?.as_str()?;
            Some(format!("<{href}>; rel=\"{rel}\""))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn mapping_object(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

pub fn task_repr(base: &str, job_id: &str, t: &Task) -> Value {
    let mut o = Map::new();
    o.insert("taskID".into(), t.task_id.clone().into());
    if let Some(d) = &t.description {
        o.insert("taskDescription".into(), d.clone().into());
    }
    if let Some(spec) = &t.try_spec {
        o.insert("taskURL".into(), spec.task_url.clone().into());
        if let Some(b) = &spec.body {
            o.insert("body".into(), b.clone());
        }
        if !spec.input_mapping.is_empty() {
            o.insert("inputMapping".into(), mapping_object(&spec.input_mapping));
        }
        if !spec.output_mapping.is_empty() {
            o.insert("outputMapping".into(), mapping_object(&spec.output_mapping));
        }
        o.insert("taskMaxTTL".into(), json!(spec.task_max_ttl));
        if let Some(p) = &spec.retry_policy {
            o.insert("retryPolicy".into(), json!(p));
        }
    }
    o.insert("taskStatus".into(), t.status.as_str().into());
    o.insert(
        "participantLink".into(),
        t.link.as_ref().map_or(
            Value::Null,
            |l| json!({"uri": l.uri, "expires": rfc3339(l.expires)}),
        ),
    );
    o.insert("attempts".into(), t.attempts.into());
    o.insert("startTime".into(), ts(t.start_time));
    o.insert("endTime".into(), ts(t.end_time));
    o.insert(
        "lastMessage".into(),
        t.last_message.clone().map_or(Value::Null, Value::String),
    );
    if let Some(r) = &t.try_response {
        o.insert("tryResponse".into(), Value::clone(r));
    }
    o.insert(
        "_links".into(),
        json!({
            "self": link(format!("{base}/jobs/{job_id}/tasks/{}", t.task_id), "GET", "This task"),
            "job": link(format!("{base}/jobs/{job_id}"), "GET", "The job"),
        }),
    );
    Value::Object(o)
}

/// The full job document (SPEC §4.2).
pub fn job_repr(base: &str, r: &JobRecord) -> Value {
    let j = &r.job;
    let mut o = Map::new();
    o.insert("jobID".into(), j.id.clone().into());
    o.insert("jobStatus".into(), j.status.as_str().into());
    o.insert(
        "failureReason".into(),
        j.failure_reason.map_or(Value::Null, |f| f.as_str().into()),
    );
    if let Some(fields) = r.fields.as_object() {
        for (k, v) in fields {
            o.insert(k.clone(), v.clone());
        }
    }
    o.insert("correlationID".into(), j.correlation_id.clone().into());
    o.insert("sharedState".into(), j.shared_state.clone());
    o.insert("dateCreated".into(), rfc3339(j.created_at).into());
    o.insert("dateUpdated".into(), rfc3339(r.updated_at).into());
    o.insert("deadline".into(), rfc3339(j.deadline).into());
    o.insert("attempt".into(), r.attempt.into());
    o.insert(
        "sharedStateURL".into(),
        format!("{base}/jobs/{}/shared-state", j.id).into(),
    );
    o.insert(
        "progressURL".into(),
        format!("{base}/jobs/{}/progress", j.id).into(),
    );
    o.insert("resolution".into(), Value::Null);
    o.insert("notifications".into(), json!([]));
    o.insert(
        "tasks".into(),
        Value::Array(j.tasks.iter().map(|t| task_repr(base, &j.id, t)).collect()),
    );
    o.insert(
        "_links".into(),
        Value::Object(job_links(base, &j.id, j.status)),
    );
    Value::Object(o)
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

pub fn progress_repr(base: &str, r: &JobRecord) -> Value {
    let j = &r.job;
    let percent = if j.status.is_terminal() {
        100
    } else if j.tasks.is_empty() {
        0
    } else {
        let sum: u32 = j.tasks.iter().map(|t| task_weight(t.status)).sum();
        (sum / j.tasks.len() as u32).min(99)
    };
    let tasks: Vec<Value> = j
        .tasks
        .iter()
        .map(|t| {
            json!({
                "taskID": t.task_id,
                "taskStatus": t.status.as_str(),
                "attempts": t.attempts,
                "startTime": ts(t.start_time),
                "endTime": ts(t.end_time),
                "lastMessage": t.last_message,
            })
        })
        .collect();
    json!({
        "jobID": j.id,
        "jobStatus": j.status.as_str(),
        "failureReason": j.failure_reason.map(|f| f.as_str()),
        "percentComplete": percent,
        "tasks": tasks,
        "_links": {
            "self": link(format!("{base}/jobs/{}/progress", j.id), "GET", "This progress"),
            "job": link(format!("{base}/jobs/{}", j.id), "GET", "The job"),
        },
    })
}

pub fn summary_repr(base: &str, s: &JobSummary) -> Value {
    let f = s.fields.as_object();
    let field = |k: &str| f.and_then(|f| f.get(k)).cloned().unwrap_or(Value::Null);
    json!({
        "jobID": s.id,
        "jobStatus": s.status.as_str(),
        "failureReason": s.failure_reason.map(|f| f.as_str()),
        "correlationID": s.correlation_id,
        "description": field("description"),
        "tags": field("tags"),
        "dateCreated": rfc3339(s.created_at),
        "dateUpdated": rfc3339(s.updated_at),
        "deadline": rfc3339(s.deadline),
        "taskCount": s.task_count,
        "_links": {"self": link(format!("{base}/jobs/{}", s.id), "GET", "This job")},
    })
}

/// Per-task outcomes, for the problem body of a confirm that did not complete.
pub fn task_outcomes(r: &JobRecord) -> Value {
    Value::Array(
        r.job
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "taskID": t.task_id,
                    "taskStatus": t.status.as_str(),
                    "participantLink": t.link.as_ref().map(|l| l.uri.clone()),
                    "lastMessage": t.last_message,
                })
            })
            .collect(),
    )
}

/// A strong ETag over the exact bytes of a representation.
pub fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
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
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": [ {"d":1,"c":2} ]}}"#)
            .unwrap_or_default();
        let b: Value = serde_json::from_str(r#"{"a": {"x": [ {"c":2,"d":1} ], "y": 2}, "b": 1}"#)
            .unwrap_or_default();
        assert_eq!(canonical(&a).to_string(), canonical(&b).to_string());
    }

    #[test]
    fn actions_only_before_the_decision() {
        let open = job_links("http://h", "j", JobStatus::Reserved);
        assert!(open.contains_key("confirm") && open.contains_key("participants"));
        let closed = job_links("http://h", "j", JobStatus::Confirming);
        assert!(!closed.contains_key("confirm") && !closed.contains_key("cancel"));
        assert!(closed.contains_key("self") && closed.contains_key("progress"));
    }
}
