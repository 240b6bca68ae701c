//! The job's event log: the columns a batch of events is written as (inside the statements that
//! make the changes they describe), and the reads behind `GET /jobs/{id}/events`.

use super::*;
use crate::domain::{Event, EventKind, Op};

/// A batch of events as the parallel arrays a statement unnests: for each event its job, its
/// place among that job's events in the batch (1-based; the job's `event_seq` before the write
/// plus this is its sequence number), and its fields.
#[derive(Default)]
pub(super) struct EventColumns<'a> {
    pub job: Vec<&'a str>,
    pub ord: Vec<i64>,
    pub at: Vec<DateTime<Utc>>,
    pub kind: Vec<&'static str>,
    pub task: Vec<Option<&'a str>>,
    pub op: Vec<Option<&'static str>>,
    pub attempt: Vec<Option<i32>>,
    pub http: Vec<Option<i32>>,
    pub duration: Vec<Option<i32>>,
    pub status: Vec<Option<&'a str>>,
    pub reason: Vec<Option<&'static str>>,
    pub action: Vec<Option<&'a str>>,
    pub actor: Vec<Option<&'a str>>,
    pub message: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    /// Add one job's events; returns how many.
    pub fn push(&mut self, job: &'a str, events: &'a [Event]) -> i64 {
        for (i, e) in events.iter().enumerate() {
            self.job.push(job);
            self.ord.push(i as i64 + 1);
            self.at.push(e.at);
            self.kind.push(e.kind.as_str());
            self.task.push(e.task_id.as_deref());
            self.op.push(e.op.map(Op::as_str));
            self.attempt.push(e.attempt);
            self.http.push(e.http_status);
            self.duration.push(e.duration_ms);
            self.status.push(e.status.as_deref());
            self.reason.push(e.reason.map(FailureReason::as_str));
            self.action.push(e.action.as_deref());
            self.actor.push(e.actor.as_deref());
            self.message.push(e.message.as_deref());
        }
        events.len() as i64
    }

    /// The arrays as statement parameters, in the order of `INSERT_FROM`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.job,
            &self.ord,
            &self.at,
            &self.kind,
            &self.task,
            &self.op,
            &self.attempt,
            &self.http,
            &self.duration,
            &self.status,
            &self.reason,
            &self.action,
            &self.actor,
            &self.message,
        ]
    }
}

/// The insert of an `EventColumns` batch whose parameters start at `$first`, each event
/// numbered from its job's `event_base` in the CTE `base` (`id`, `event_base`): only the events
/// of jobs that `base` holds are written.
pub(super) fn insert_events(first: usize, base: &str) -> String {
    let p: Vec<String> = (first..first + 14).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO job_events (job_id, seq, at, type, task_id, op, attempt, http_status,
            duration_ms, status, reason, action, actor, message)
         SELECT v.job_id, b.event_base + v.ord, v.at, v.type, v.task_id, v.op, v.attempt,
            v.http_status, v.duration_ms, v.status, v.reason, v.action, v.actor, v.message
         FROM unnest({}::text[], {}::bigint[], {}::timestamptz[], {}::text[], {}::text[],
            {}::text[], {}::int[], {}::int[], {}::int[], {}::text[], {}::text[], {}::text[],
            {}::text[], {}::text[])
            AS v(job_id, ord, at, type, task_id, op, attempt, http_status, duration_ms, status,
                 reason, action, actor, message)
         JOIN {base} b ON b.id = v.job_id",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13]
    )
}

/// One event as stored, with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: Event,
}

/// A page of a job's events after `after`, oldest first, and the job's status when they were
/// read (its events up to that status are all on this page or before, unless the page is full).
/// `None`: no such job.
pub async fn list_events(
    client: &impl GenericClient,
    id: &str,
    after: i64,
    limit: i64,
) -> Result<Option<(JobStatus, Vec<StoredEvent>)>> {
    // The status first: every event written with it or before is then visible to the second
    // read (read committed sees at least what the first read saw).
    let status = client
        .prepare_cached("SELECT status FROM jobs WHERE id = $1")
        .await?;
    let Some(row) = client.query_opt(&status, &[&id]).await? else {
        return Ok(None);
    };
    let status: JobStatus = row.try_get::<_, String>(0)?.parse().map_err(corrupt)?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, at, type, task_id, op, attempt, http_status, duration_ms, status, reason,
                    action, actor, message
             FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await?;
    let rows = client.query(&stmt, &[&id, &after, &limit]).await?;
    let events = rows
        .iter()
        .map(|r| {
            let kind: String = r.try_get("type")?;
            let op: Option<String> = r.try_get("op")?;
            let reason: Option<String> = r.try_get("reason")?;
            Ok(StoredEvent {
                seq: r.try_get("seq")?,
                event: Event {
                    task_id: r.try_get("task_id")?,
                    op: op
                        .map(|o| {
                            [Op::Try, Op::Confirm, Op::Cancel]
                                .into_iter()
                                .find(|x| x.as_str() == o)
                                .ok_or_else(|| corrupt(format!("an event with op {o:?}")))
                        })
                        .transpose()?,
                    attempt: r.try_get("attempt")?,
                    http_status: r.try_get("http_status")?,
                    duration_ms: r.try_get("duration_ms")?,
                    status: r.try_get("status")?,
                    reason: reason.map(|x| x.parse()).transpose().map_err(corrupt)?,
                    action: r.try_get("action")?,
                    actor: r.try_get("actor")?,
                    message: r.try_get("message")?,
                    ..Event::new(
                        r.try_get("at")?,
                        EventKind::parse(&kind)
                            .ok_or_else(|| corrupt(format!("an event of type {kind:?}")))?,
                    )
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((status, events)))
}

/// Log one action on a job by itself, in a statement of its own (for actions whose change is
/// not one statement). `false`: no such job.
pub async fn log_action(client: &impl GenericClient, id: &str, event: &Event) -> Result<bool> {
    let mut cols = EventColumns::default();
    cols.push(id, std::slice::from_ref(event));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $15
                RETURNING id, event_seq - 1 AS event_base
             ), e AS ({})
             SELECT 1 FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = cols.params().to_vec();
    params.push(&id);
    Ok(!client.query(&stmt, &params).await?.is_empty())
}
