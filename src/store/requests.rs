//! Client requests the engine must act on (confirm, cancel, a participant's registration), and
//! the wake-up channel that tells the driving instance of them.

use super::*;

/// The answer to a client's confirm or cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Recorded; the engine acts on it.
    Accepted,
    NotFound,
    /// Nothing was written: the job as the guarded write found it, for the domain to say why
    /// (`domain::actions::client_refusal`), or for a repeat to be answered as the first.
    Unchanged(Gate),
}

/// The job's row as a client request is decided on.
async fn gate(client: &impl GenericClient, id: &str) -> Result<Option<Gate>> {
    let row = client
        .query_opt(
            "SELECT status, failure_reason, task_count, confirm_requested, cancel_requested
             FROM jobs WHERE id = $1",
            &[&id],
        )
        .await?;
    row.map(|r| gate_of(&r)).transpose()
}

/// A `Gate` from a row with `status`, `failure_reason`, `task_count`, `confirm_requested` and
/// `cancel_requested`.
fn gate_of(r: &tokio_postgres::Row) -> Result<Gate> {
    Ok(Gate {
        state: state_from_row(r, "status")?,
        requested: Requested::from_flags(
            r.try_get("confirm_requested")?,
            r.try_get("cancel_requested")?,
        ),
        has_tasks: r.try_get::<_, i32>("task_count")? > 0,
    })
}

/// A job found by its source's idempotency key (a DTM global transaction by its gid).
#[derive(Debug, Clone)]
pub struct Keyed {
    pub id: JobId,
    pub shared_state: Value,
    /// What a client's request on it is decided on.
    pub gate: Gate,
}

/// The job a source's idempotency key names, if any: one read, without its tasks.
pub async fn find_by_key(
    client: &impl GenericClient,
    source: JobSource,
    key: &str,
) -> Result<Option<Keyed>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, shared_state, status, failure_reason, task_count, confirm_requested,
                cancel_requested
             FROM jobs WHERE source = $1::text AND idempotency_key = $2::text",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&source.as_str(), &key]).await?;
    row.map(|r| {
        Ok(Keyed {
            id: stored_id(&r, "id")?,
            shared_state: r.try_get("shared_state")?,
            gate: gate_of(&r)?,
        })
    })
    .transpose()
}

/// How a request names its job: by id, or by its source's idempotency key (a DTM gid).
#[derive(Debug, Clone, Copy)]
pub enum JobRef<'a> {
    Id(&'a JobId),
    Key(JobSource, &'a str),
}

/// A client's request about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRequest {
    Confirm,
    Cancel,
}

/// Record a client's request for the engine, with its event (`actor` asked). Another instance
/// that drives the job is woken by a notification; this one (`me`), or none, by the caller's
/// `Engine::wake`: a notification serializes every commit that sends one, so it is sent only
/// where it is needed. Written only where `domain::actions::client_refusal` allows the
/// request, or it repeats the one recorded: before the decision; a confirm never after a cancel
/// request, nor for a job with no task; a cancel never after a confirm request.
pub async fn request(
    client: &impl GenericClient,
    id: &JobId,
    what: ClientRequest,
    actor: &str,
    me: &str,
) -> Result<RequestOutcome> {
    let id = id.as_str();
    let confirm = what == ClientRequest::Confirm;
    let event = [Event::action(
        Utc::now(),
        if confirm {
            ActionKind::Confirm
        } else {
            ActionKind::Cancel
        },
        actor,
        None,
    )];
    let mut events = EventColumns::default();
    events.push(id, &event);
    let stmt = client
        .prepare_cached(&format!(
            "WITH u AS (
                UPDATE jobs SET confirm_requested = confirm_requested OR $4,
                    cancel_requested = cancel_requested OR NOT $4,
                    wake_seq = wake_seq + 1, next_wake = now(), updated_at = now(),
                    event_seq = event_seq + 1
                WHERE id = $5 AND status IN ('pending', 'trying', 'reserved')
                  AND (NOT $4 OR (task_count > 0 AND NOT cancel_requested))
                  AND ($4 OR NOT confirm_requested)
                RETURNING id, event_seq - 1 AS event_base, lease_owner
             ), e AS ({})
             SELECT CASE WHEN lease_owner <> $6 THEN pg_notify('tcc_wake', id)::text END
             FROM u",
            insert_events(1, "u")
        ))
        .await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = events.params().to_vec();
    params.push(&confirm);
    params.push(&id);
    params.push(&me);
    if client.execute(&stmt, &params).await? == 1 {
        return Ok(RequestOutcome::Accepted);
    }
    Ok(match gate(client, id).await? {
        None => RequestOutcome::NotFound,
        Some(g) => RequestOutcome::Unchanged(g),
    })
}

#[derive(Debug, Clone)]
pub enum Registered {
    Created {
        job: JobId,
        task: Task,
    },
    /// The same link was registered before.
    Existing(Task),
    NotFound,
    /// The domain refuses a participant now (the decision was taken, or a cancel requested).
    Refused(Refusal),
    TaskIdTaken(String),
    TooMany(usize),
}

/// Add a participant's link (or its own URLs) to a job that has no decision yet, with its event
/// (`actor` registered it). Another instance that drives the job is notified (see `request`).
/// `closed_by_request`: a client's confirm or cancel request, recorded and not acted on yet,
/// closes the job to participants too (DTM's rule; the JCL takes them until the decision).
pub async fn register(
    client: &mut deadpool_postgres::Client,
    job: JobRef<'_>,
    reg: &Registration,
    max_tasks: usize,
    actor: &str,
    me: &str,
    closed_by_request: bool,
) -> Result<Registered> {
    let tx = client.transaction().await?;
    const COLUMNS: &str = "id, status, failure_reason, task_count, confirm_requested, \
        cancel_requested, lease_owner, task_specs, task_state";
    let row = match job {
        JobRef::Id(id) => {
            let lock = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE"
                ))
                .await?;
            tx.query_opt(&lock, &[&id.as_str()]).await?
        }
        JobRef::Key(source, key) => {
            let lock = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM jobs
                     WHERE source = $1::text AND idempotency_key = $2::text FOR UPDATE"
                ))
                .await?;
            tx.query_opt(&lock, &[&source.as_str(), &key]).await?
        }
    };
    let Some(row) = row else {
        return Ok(Registered::NotFound);
    };
    let job_id = stored_id(&row, "id")?;
    let id = job_id.as_str();
    let gate = gate_of(&row)?;
    match gate.requested {
        Requested::Confirm if closed_by_request => {
            return Ok(Registered::Refused(Refusal::ConfirmRequested));
        }
        Requested::Cancel if closed_by_request => {
            return Ok(Registered::Refused(Refusal::CancelRequested));
        }
        _ => {}
    }
    let count: i32 = row.try_get("task_count")?;
    let owner: Option<String> = row.try_get("lease_owner")?;
    let task_id = match &reg.task_id {
        Some(t) => t.to_string(),
        None => format!("participant-{}", count + 1),
    };
    // The same link, or the same own URLs with the same body, registered again is the same
    // participant; another under the task id is not.
    let tasks = tasks_of(&row, 0)?;
    let same = |t: &&Task| match &reg.hold {
        Hold::Link(l) => t.link.as_ref().is_some_and(|k| k.uri == l.uri),
        Hold::Callbacks(c) => t.callbacks.as_deref() == Some(c),
    };
    if let Some(same) = tasks.iter().find(same) {
        return Ok(Registered::Existing(same.clone()));
    }
    if let Some(refusal) = client_refusal(&gate, Action::Participants) {
        return Ok(Registered::Refused(refusal));
    }
    if count as usize >= max_tasks {
        return Ok(Registered::TooMany(max_tasks));
    }
    if tasks.iter().any(|t| t.task_id.as_str() == task_id) {
        return Ok(Registered::TaskIdTaken(task_id));
    }
    let event = [Event {
        at: Utc::now(),
        what: What::Action {
            task_id: Some(task_id.clone()),
            action: ActionKind::Register,
            actor: actor.to_string(),
            message: Some(format!("registered {}", reg.hold.describe())),
        },
    }];
    let mut events = EventColumns::default();
    events.push(id, &event);
    let task = Task::registered(
        count,
        crate::domain::TaskId::try_from(task_id).map_err(corrupt)?,
        reg.description.clone(),
        &reg.hold,
        Utc::now(),
    );
    let spec = tokio_postgres::types::Json(TaskSpecs::of([&task]));
    let state = tokio_postgres::types::Json(TaskStates::of([&task]));
    let mut params: Vec<&(dyn ToSql + Sync)> = events.params().to_vec();
    params.extend([&id as &(dyn ToSql + Sync), &spec, &state]);
    // The task, its state, the job's count and wake, and the event, in one statement.
    let insert = tx
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET task_count = task_count + 1, wake_seq = wake_seq + 1,
                    next_wake = now(), updated_at = now(), event_seq = event_seq + 1,
                    task_specs = (task_specs::jsonb || $5::jsonb)::json,
                    task_state = (task_state::jsonb || $6::jsonb)::json
                WHERE id = $4
                RETURNING id, event_seq - 1 AS event_base
             ), e AS ({})
             SELECT id FROM b",
            insert_events(1, "b")
        ))
        .await?;
    tx.query_one(&insert, &params).await?;
    if owner.is_some_and(|o| o != me) {
        tx.execute("SELECT pg_notify('tcc_wake', $1)", &[&id])
            .await?;
    }
    tx.commit().await?;
    Ok(Registered::Created { job: job_id, task })
}

/// Listen on the wake-up channel: every client request that the driver of a job must see is
/// announced there (by `request` and `register`), whichever instance
/// received it. Calls `on_listening` once listening (wake-ups sent before were missed), then
/// `on_wake` with each job id; returns when the connection ends.
pub async fn listen_wakes(
    config: &tokio_postgres::Config,
    on_listening: impl FnOnce(),
    mut on_wake: impl FnMut(&str),
) -> Result<()> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = client.batch_execute("LISTEN tcc_wake");
    tokio::pin!(listen);
    let mut listening = false;
    let mut on_listening = Some(on_listening);
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                if let Some(f) = on_listening.take() {
                    f();
                }
            }
            msg = messages.next() => match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => on_wake(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StoreError::Unavailable("the wake-up connection closed".into())),
            },
        }
    }
}

/// What came of an operator's resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// Recorded now.
    Done(Resolution),
    /// Resolved before (by this same request repeated, or by another).
    Already(Resolution),
    /// Only a heuristic job can be resolved.
    NotHeuristic(JobStatus),
    NotFound,
}

/// Record an operator's resolution of a heuristic job: it leaves `/heuristics` and the
/// unresolved gauge. A job already resolved keeps its first resolution.
pub async fn resolve(
    client: &impl GenericClient,
    id: &JobId,
    resolution: &Resolution,
) -> Result<Resolved> {
    let id = id.as_str();
    let value = serde_json::to_value(resolution).map_err(corrupt)?;
    let event = [Event::action(
        resolution.resolved_at,
        ActionKind::Resolve,
        &resolution.resolved_by,
        Some(resolution.note.clone()),
    )];
    let mut events = EventColumns::default();
    events.push(id, &event);
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET resolution = $5::jsonb, updated_at = now(),
                    event_seq = event_seq + 1
                WHERE id = $4 AND status = 'heuristic' AND resolution IS NULL
                RETURNING id, event_seq - 1 AS event_base
             ), e AS ({})
             SELECT 1 FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = events.params().to_vec();
    params.push(&id);
    params.push(&value);
    if client.execute(&stmt, &params).await? == 1 {
        return Ok(Resolved::Done(resolution.clone()));
    }
    let Some(row) = client
        .query_opt("SELECT status, resolution FROM jobs WHERE id = $1", &[&id])
        .await?
    else {
        return Ok(Resolved::NotFound);
    };
    let status: JobStatus = row.try_get::<_, String>(0)?.parse().map_err(corrupt)?;
    let existing: Option<Value> = row.try_get(1)?;
    Ok(match existing {
        Some(v) => Resolved::Already(serde_json::from_value(v).map_err(corrupt)?),
        None => Resolved::NotHeuristic(status),
    })
}

/// Unresolved heuristic jobs, oldest first, after `after` (a keyset cursor), at most `limit`.
pub async fn unresolved_heuristics(
    client: &impl GenericClient,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<JobRecord>> {
    // No cursor: from before any job (PostgreSQL's timestamps do not reach chrono's minimum).
    let (at, from) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, String::new()));
    let stmt = client
        .prepare_cached(
            "SELECT id FROM jobs
             WHERE status = 'heuristic' AND resolution IS NULL
               AND (created_at, id) > ($1::timestamptz, $2::text)
             ORDER BY created_at, id LIMIT $3",
        )
        .await?;
    let ids: Vec<JobId> = client
        .query(&stmt, &[&at, &from, &limit])
        .await?
        .iter()
        .map(|r| stored_id(r, "id"))
        .collect::<Result<_>>()?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        // Resolved or deleted between the two reads: no longer on the list.
        if let Some(j) = load_job(client, &id).await?
            && j.resolution.is_none()
        {
            jobs.push(j);
        }
    }
    Ok(jobs)
}

/// Write an operator's change of a finished job (`continue` of a heuristic job, `restart` of a
/// failed or canceled one) as `job` holds it, with its events, and wake whichever instance is to
/// drive it. Only if the job is as the operator read it (`updated_at`) and nobody holds a live
/// lease on it; an expired lease is taken away (its holder's writes are fenced out). `false`:
/// nothing was written, the job changed or is being driven.
pub async fn rewrite_job(
    client: &impl GenericClient,
    job: &Job,
    read_at: DateTime<Utc>,
    events: &[Event],
) -> Result<bool> {
    let id = job.id.as_str();
    let mut cols = EventColumns::default();
    let n = cols.push(id, events);
    let tasks = tokio_postgres::types::Json(TaskStates::of(&job.tasks));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET status = $4::text, failure_reason = $5::text,
                    attempt = $6::int, deadline = $7::timestamptz,
                    confirm_requested = $8::bool, cancel_requested = $9::bool,
                    decided_at = CASE WHEN $10::bool THEN decided_at ELSE NULL END,
                    finished_at = NULL, lease_owner = NULL, lease_expires = NULL,
                    next_wake = now(), wake_seq = wake_seq + 1,
                    event_seq = event_seq + $13::bigint, updated_at = now(),
                    task_state = (task_state::jsonb || $14::jsonb)::json
                WHERE id = $11::text AND updated_at = $12::timestamptz
                  AND (lease_owner IS NULL OR lease_expires < now())
                RETURNING id, event_seq - $13::bigint AS event_base
             ), e AS ({})
             SELECT pg_notify('tcc_wake', id) FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let decided = !job.status().is_undecided();
    let (confirm_requested, cancel_requested) = job.requested.flags();
    let mut params: Vec<&(dyn ToSql + Sync)> = cols.params().to_vec();
    let job_status = job.status().as_str();
    let reason = job.failure_reason().map(FailureReason::as_str);
    params.extend([
        &job_status as &(dyn ToSql + Sync),
        &reason,
        &job.attempt,
        &job.deadline,
        &confirm_requested,
        &cancel_requested,
        &decided,
        &id,
        &read_at,
        &n,
        &tasks,
    ]);
    Ok(client.execute(&stmt, &params).await? == 1)
}

/// `continue` on a confirming job: every confirm waiting for its backoff is due now, here and
/// in the memory of whichever instance drives the job (it hears of it through `retry_seq`).
/// `false`: the job is not confirming.
pub async fn retry_now(client: &impl GenericClient, id: &JobId, event: &Event) -> Result<bool> {
    let id = id.as_str();
    let mut cols = EventColumns::default();
    cols.push(id, std::slice::from_ref(event));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET retry_seq = retry_seq + 1, wake_seq = wake_seq + 1,
                    next_wake = now(), event_seq = event_seq + 1, updated_at = now(),
                    task_state = (task_state::jsonb || COALESCE((
                        SELECT jsonb_object_agg(k, v - 'next_attempt_at')
                        FROM jsonb_each(task_state::jsonb) AS s(k, v)
                        WHERE v ->> 'status' = 'confirming'
                          AND (v ->> 'next_attempt_at')::timestamptz > now()), '{{}}'))::json
                WHERE id = $4 AND status = 'confirming'
                RETURNING id, event_seq - 1 AS event_base
             ), e AS ({})
             SELECT pg_notify('tcc_wake', id) FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = cols.params().to_vec();
    params.push(&id);
    Ok(client.execute(&stmt, &params).await? == 1)
}

/// What a `PUT /jobs/{id}` finds under its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredDocument {
    /// No job has the id.
    Absent,
    /// The hash of the document the job was created from with `PUT` (or last updated with).
    Hashed(String),
    /// A job created otherwise (`POST /jobs` without a key, the Atomikos endpoints).
    Unhashed,
}

/// What is stored under job `id`, for a `PUT /jobs/{id}` to compare its document with.
pub async fn stored_document(client: &impl GenericClient, id: &JobId) -> Result<StoredDocument> {
    let id = id.as_str();
    let row = client
        .query_opt("SELECT request_hash FROM jobs WHERE id = $1", &[&id])
        .await?;
    Ok(match row {
        None => StoredDocument::Absent,
        Some(r) => match r.try_get::<_, Option<String>>(0)? {
            Some(hash) => StoredDocument::Hashed(hash),
            None => StoredDocument::Unhashed,
        },
    })
}

/// A client's update of a job before the decision (`PUT /jobs/{id}` with `If-Match`): its
/// fields, tags, `autoConfirm` and deadline (`created_at` + `jobMaxTTL`), the document's hash, and
/// the event; the driving instance is woken to take them in. Only if the job is as the client
/// saw it (`read_at`) and still undecided. `false`: nothing written.
pub async fn update_job(
    client: &impl GenericClient,
    id: &JobId,
    fields: &crate::domain::request::JobFields,
    request_hash: &str,
    read_at: DateTime<Utc>,
    event: &Event,
) -> Result<bool> {
    let id = id.as_str();
    let mut cols = EventColumns::default();
    cols.push(id, std::slice::from_ref(event));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET fields = $4::jsonb, tags = $5::text[], auto_confirm = $6::bool,
                    deadline = created_at + make_interval(secs => $7::float8),
                    request_hash = $8::text, wake_seq = wake_seq + 1, next_wake = now(),
                    event_seq = event_seq + 1, updated_at = now()
                WHERE id = $9::text AND updated_at = $10::timestamptz
                  AND status IN ('pending', 'trying', 'reserved') AND NOT cancel_requested
                RETURNING id, event_seq - 1 AS event_base
             ), e AS ({})
             SELECT pg_notify('tcc_wake', id) FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let json = tokio_postgres::types::Json(fields);
    let mut params: Vec<&(dyn ToSql + Sync)> = cols.params().to_vec();
    params.extend([
        &json as &(dyn ToSql + Sync),
        &fields.tags,
        &fields.auto_confirm,
        &fields.job_max_ttl,
        &request_hash,
        &id,
        &read_at,
    ]);
    Ok(client.execute(&stmt, &params).await? == 1)
}

/// A job's shared state and its version (`state_seq`); `None`: no such job.
pub async fn shared_state(client: &impl GenericClient, id: &JobId) -> Result<Option<(Value, i64)>> {
    let id = id.as_str();
    let stmt = client
        .prepare_cached("SELECT shared_state, state_seq FROM jobs WHERE id = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&id]).await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// What came of a client's write of the shared state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateWritten {
    /// Written: the new version.
    Done(i64),
    /// Another writer wrote first: the version is no longer the one given.
    Moved,
    NotFound,
}

/// A client's write of a job's shared state, over version `over` when given (compare and set),
/// with its event; the driving instance is woken to take it in before its next Try.
pub async fn write_shared_state(
    client: &impl GenericClient,
    id: &JobId,
    state: &Value,
    over: Option<i64>,
    event: &Event,
) -> Result<StateWritten> {
    let id = id.as_str();
    let mut cols = EventColumns::default();
    cols.push(id, std::slice::from_ref(event));
    let stmt = client
        .prepare_cached(&format!(
            "WITH b AS (
                UPDATE jobs SET shared_state = $4::jsonb, state_seq = state_seq + 1,
                    wake_seq = wake_seq + 1, event_seq = event_seq + 1, updated_at = now()
                WHERE id = $5::text AND ($6::bigint IS NULL OR state_seq = $6::bigint)
                RETURNING id, event_seq - 1 AS event_base, state_seq
             ), e AS ({})
             SELECT state_seq, pg_notify('tcc_wake', id)::text FROM b",
            insert_events(1, "b")
        ))
        .await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = cols.params().to_vec();
    params.extend([state as &(dyn ToSql + Sync), &id, &over]);
    if let Some(row) = client.query_opt(&stmt, &params).await? {
        return Ok(StateWritten::Done(row.try_get(0)?));
    }
    let exists = client
        .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id])
        .await?;
    Ok(if exists.is_some() {
        StateWritten::Moved
    } else {
        StateWritten::NotFound
    })
}
