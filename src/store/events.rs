//! The job's event log: the columns a batch of events is written as (inside the statements that
//! make the changes they describe), and the reads behind `GET /jobs/{id}/events`.

use super::*;
use crate::domain::Event;
use tokio_postgres::types::Json;

/// A batch of events as the parallel arrays a statement unnests: per job, how many events and
/// the events themselves as one JSON array.
#[derive(Default)]
pub(super) struct EventColumns<'a> {
    pub job: Vec<&'a str>,
    pub count: Vec<i64>,
    pub events: Vec<Json<&'a [Event]>>,
}

impl<'a> EventColumns<'a> {
    /// Add one job's events (none: nothing); returns how many.
    pub fn push(&mut self, job: &'a str, events: &'a [Event]) -> i64 {
        if !events.is_empty() {
            self.job.push(job);
            self.count.push(events.len() as i64);
            self.events.push(Json(events));
        }
        events.len() as i64
    }

    /// The arrays as statement parameters, in the order of `insert_events`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.job, &self.count, &self.events]
    }
}

/// The insert of an `EventColumns` batch whose three parameters start at `$first`: each job's
/// row is numbered from its `event_base` in the CTE `base` (`id`, `event_base`, the job's
/// `event_seq` before the write), and only jobs that `base` holds are written.
pub(super) fn insert_events(first: usize, base: &str) -> String {
    let (a, b, c) = (first, first + 1, first + 2);
    format!(
        "INSERT INTO job_events (job_id, last_seq, events)
         SELECT v.job_id, b.event_base + v.n, v.events
         FROM unnest(${a}::text[], ${b}::bigint[], ${c}::json[]) AS v(job_id, n, events)
         JOIN {base} b ON b.id = v.job_id"
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
    id: &JobId,
    after: i64,
    limit: i64,
) -> Result<Option<(JobStatus, Vec<StoredEvent>)>> {
    let id = id.as_str();
    // The status first: every event written with it or before is then visible to the second
    // read (read committed sees at least what the first read saw).
    let status = client
        .prepare_cached("SELECT status FROM jobs WHERE id = $1")
        .await?;
    let Some(row) = client.query_opt(&status, &[&id]).await? else {
        return Ok(None);
    };
    let status: JobStatus = row.try_get::<_, String>(0)?.parse().map_err(corrupt)?;
    // The rows that hold an event after `after`: the one that holds `after + 1` and the rest.
    let stmt = client
        .prepare_cached(
            "SELECT last_seq, events FROM job_events
             WHERE job_id = $1 AND last_seq > $2 ORDER BY last_seq LIMIT $3",
        )
        .await?;
    let rows = client.query(&stmt, &[&id, &after, &limit]).await?;
    let mut events = Vec::new();
    for r in &rows {
        let last: i64 = r.try_get("last_seq")?;
        let batch: Vec<Event> = r
            .try_get::<_, Json<Vec<Event>>>("events")
            .map_err(|e| corrupt(format!("the events of job {id}: {e}")))?
            .0;
        let first = last - batch.len() as i64 + 1;
        for (seq, event) in (first..).zip(batch) {
            if seq > after && (events.len() as i64) < limit {
                events.push(StoredEvent { seq, event });
            }
        }
    }
    Ok(Some((status, events)))
}

/// Log one action on a job by itself, in a statement of its own (for actions whose change is
/// not one statement). `false`: no such job.
pub async fn log_action(client: &impl GenericClient, id: &JobId, event: &Event) -> Result<bool> {
    let id = id.as_str();
    let mut cols = EventColumns::default();
    cols.push(id, std::slice::from_ref(event));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $4
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
