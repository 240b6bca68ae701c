//! Jobs: storing new ones (one statement for a batch), reading one, the drivers' fenced saves
//! (one statement for a batch), and the list behind `GET /jobs`.

use super::*;

/// What `insert_job` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new job, claimed by the inserting instance at lease generation 1, as given.
    Created,
    /// The idempotency key was used before, for this job; `same_request` tells whether with the
    /// same document and by the same key holder, `another_holder` whether by another API key.
    Replay {
        id: JobId,
        same_request: bool,
        another_holder: bool,
    },
}

/// A new job to store: the submission, and what the accepting instance adds to it.
#[derive(Debug, Clone)]
pub struct NewJobRow {
    pub submission: Submission,
    /// The accepting instance, which holds the job's first lease.
    pub owner: String,
    pub lease_ttl: Duration,
    /// When the job's first Tries answered before it was stored (`Engine::accept`): the calls
    /// and the changes they made, the events after its first two (accepted, trying). Empty
    /// otherwise.
    pub answered: Vec<Event>,
}

/// A new job as accepted, before the engine planned anything (`Job::new`): `pending`, claimed by
/// the inserting instance at lease generation 1. The engine may plan its first steps on it before
/// it is stored (`insert_job`).
pub fn initial_record(row: &NewJobRow) -> JobRecord {
    JobRecord {
        job: Job::new(
            &row.submission.job,
            &row.submission.id,
            row.submission.created_at,
            row.submission.traceparent.clone(),
        ),
        fields: row.submission.job.fields.clone(),
        updated_at: row.submission.created_at,
        wake_seq: 0,
        retry_seq: 0,
        state_seq: 0,
        lease_owner: Some(row.owner.clone()),
        lease_generation: 1,
        resolution: None,
        notifications: Vec::new(),
    }
}

/// Store a new job and its tasks in one statement, claimed by `owner`, exactly as `record` holds
/// it (`initial_record`, perhaps with its first Tries planned): what the API answers with and what
/// the new job's driver starts from, without reading it back.
pub async fn insert_job(
    client: &impl GenericClient,
    row: &NewJobRow,
    record: &JobRecord,
) -> Result<Inserted> {
    insert_many(client, &[(row, record)])
        .await?
        .pop()
        .ok_or_else(|| corrupt("one new job written, no outcome"))?
}

/// `insert_many`'s statement: the jobs, their tasks (in their rows) and their first events, in
/// one.
const INSERT_MANY: &str = "WITH j AS (
            INSERT INTO jobs (id, source, status, fields, correlation_id, tags, auto_confirm,
                retry_policy, shared_state, task_count, created_at, updated_at, deadline,
                lease_owner, lease_expires, lease_generation, next_wake, idempotency_key,
                request_hash, traceparent, event_seq, key_holder, task_state, task_specs,
                failure_reason, decided_at)
            SELECT n.id, n.source, n.status, n.fields, n.correlation_id,
                ($5::text[])[n.tags_from:n.tags_to], n.auto_confirm, n.retry_policy,
                n.shared_state, n.task_count, n.created_at, n.created_at, n.deadline,
                n.owner, now() + make_interval(secs => n.ttl), 1, n.created_at, n.key,
                n.hash, n.traceparent, n.n_events,
                n.holder, n.task_state, n.task_specs, n.reason,
                CASE WHEN n.decided THEN now() END
            FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $6::text[],
                $7::int[], $8::int[], $9::bool[], $10::jsonb[], $11::jsonb[], $12::int[],
                $13::timestamptz[], $14::timestamptz[], $15::text[], $16::float8[],
                $17::text[], $18::text[], $19::text[], $20::text[], $21::json[],
                $22::json[], $24::text[], $25::bool[], $26::bigint[])
                AS n(id, source, status, fields, correlation_id, tags_from, tags_to,
                     auto_confirm, retry_policy, shared_state, task_count, created_at,
                     deadline, owner, ttl, key, hash, traceparent, holder, task_state,
                     task_specs, reason, decided, n_events)
            ON CONFLICT (source, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING id, event_seq
         ), e AS (
            -- Its first events (`first_events`), numbered up to the event_seq given above.
            INSERT INTO job_events (job_id, last_seq, events)
            SELECT j.id, j.event_seq, x.events
            FROM j JOIN unnest($1::text[], $23::json[]) AS x(id, events) ON x.id = j.id
         )
         SELECT id FROM j";

/// Prepare (or find prepared) on this connection the two statements of a group-commit batch,
/// so that pipelining them in one transaction sends them in order, with nothing to wait for.
pub async fn prepare_batch(client: &impl GenericClient) -> Result<()> {
    client.prepare_cached(&SAVE_MANY).await?;
    client.prepare_cached(INSERT_MANY).await?;
    Ok(())
}

/// A new job's first row of the event log: accepted (`pending`) when it was created; then,
/// unless it is stored pending, the status it is stored in (`trying` when its first Tries
/// answered before it was stored), then the events their answers brought (`NewJobRow::answered`).
#[derive(Debug)]
struct FirstEvents<'a> {
    head: Vec<Event>,
    answered: &'a [Event],
}

impl<'a> FirstEvents<'a> {
    fn of(row: &'a NewJobRow, status: JobStatus) -> Self {
        use chrono::SubsecRound;
        // As the job's row stores its creation (microseconds).
        let at = row.submission.created_at.trunc_subsecs(6);
        let mut head = vec![Event::job_status(at, JobStatus::Pending, None)];
        if status != JobStatus::Pending {
            let stored = if row.answered.is_empty() {
                status
            } else {
                JobStatus::Trying
            };
            head.push(Event::job_status(at, stored, None));
        }
        FirstEvents {
            head,
            answered: &row.answered,
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.answered.len()
    }
}

impl serde::Serialize for FirstEvents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.head.iter().chain(self.answered))
    }
}

/// Store new jobs and their tasks in one statement (see `insert_job`), each job's outcome in the
/// order given. A job whose idempotency key was taken, before or earlier in the same list, is
/// not stored and answers `Replay` (or its own error, should the holder of the key not be read).
/// The statement is atomic: should any row be refused, none is stored, and that is the error.
pub async fn insert_many(
    client: &impl GenericClient,
    jobs: &[(&NewJobRow, &JobRecord)],
) -> Result<Vec<Result<Inserted>>> {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut job_statuses = Vec::with_capacity(n);
    let mut fields = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let (mut tags, mut tags_from, mut tags_to) =
        (Vec::new(), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut auto_confirms = Vec::with_capacity(n);
    let mut retry_policies: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut shared_states = Vec::with_capacity(n);
    let mut task_counts = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut deadlines = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut ttls = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut holders = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut traceparents = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut specs = Vec::with_capacity(n);
    let mut first_events = Vec::with_capacity(n);
    let mut event_counts = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut decided = Vec::with_capacity(n);
    for (row, record) in jobs {
        let job = &record.job;
        ids.push(row.submission.id.as_str());
        sources.push(row.submission.source.as_str());
        job_statuses.push(job.status().as_str());
        fields.push(tokio_postgres::types::Json(&record.fields));
        correlations.push(job.correlation_id.as_str());
        // Tags go as one flat array; each job takes its slice (1-based, bounds included).
        tags_from.push(tags.len() as i32 + 1);
        tags.extend(row.submission.job.fields.tags.iter().map(String::as_str));
        tags_to.push(tags.len() as i32);
        auto_confirms.push(job.auto_confirm);
        retry_policies.push(
            job.retry_policy
                .map(serde_json::to_value)
                .transpose()
                .map_err(corrupt)?,
        );
        shared_states.push(&job.shared_state);
        task_counts.push(job.tasks.len() as i32);
        created.push(row.submission.created_at);
        deadlines.push(job.deadline);
        owners.push(row.owner.as_str());
        ttls.push(row.lease_ttl.as_secs_f64());
        keys.push(row.submission.idempotency_key.as_deref());
        holders.push(row.submission.key_holder.as_deref());
        hashes.push(row.submission.request_hash.as_deref());
        traceparents.push(row.submission.traceparent.as_deref());
        states.push(tokio_postgres::types::Json(TaskStates::of(&job.tasks)));
        specs.push(tokio_postgres::types::Json(TaskSpecs::of(&job.tasks)));
        let first = FirstEvents::of(row, job.status());
        event_counts.push(first.len() as i64);
        first_events.push(tokio_postgres::types::Json(first));
        reasons.push(job.state.reason().map(|r| r.as_str()));
        decided.push(!job.status().is_undecided());
    }
    let stmt = client.prepare_cached(INSERT_MANY).await?;
    let params: [&(dyn ToSql + Sync); 26] = [
        &ids,
        &sources,
        &job_statuses,
        &fields,
        &tags,
        &correlations,
        &tags_from,
        &tags_to,
        &auto_confirms,
        &retry_policies,
        &shared_states,
        &task_counts,
        &created,
        &deadlines,
        &owners,
        &ttls,
        &keys,
        &hashes,
        &traceparents,
        &holders,
        &states,
        &specs,
        &first_events,
        &reasons,
        &decided,
        &event_counts,
    ];
    let stored = client.query(&stmt, &params).await?;
    let stored = stored
        .iter()
        .map(|r| r.try_get::<_, String>("id"))
        .collect::<std::result::Result<std::collections::HashSet<String>, _>>()?;
    let mut outcomes = Vec::with_capacity(n);
    for (row, _) in jobs {
        outcomes.push(if stored.contains(row.submission.id.as_str()) {
            Ok(Inserted::Created)
        } else {
            replay(client, row).await
        });
    }
    Ok(outcomes)
}

/// The job that holds the idempotency key a new job could not take (keys are per source: a
/// client's key never finds a job the coordinator stored under a key of its own).
async fn replay(client: &impl GenericClient, row: &NewJobRow) -> Result<Inserted> {
    let key = row
        .submission
        .idempotency_key
        .as_deref()
        .ok_or_else(|| corrupt("insert conflicted without an idempotency key"))?;
    let existing = client
        .query_one(
            "SELECT id, request_hash, key_holder FROM jobs
             WHERE source = $1 AND idempotency_key = $2",
            &[&row.submission.source.as_str(), &key],
        )
        .await?;
    let hash: Option<String> = existing.try_get("request_hash")?;
    // A job stored before holders were recorded (NULL) is anyone's, as it was then.
    let holder: Option<String> = existing.try_get("key_holder")?;
    let another_holder =
        holder.is_some_and(|h| row.submission.key_holder.as_deref() != Some(h.as_str()));
    Ok(Inserted::Replay {
        id: stored_id(&existing, "id")?,
        same_request: hash.is_some() && hash == row.submission.request_hash && !another_holder,
        another_holder,
    })
}

/// The job and its tasks, or `None`.
pub async fn load_job(client: &impl GenericClient, id: &JobId) -> Result<Option<JobRecord>> {
    // One row holds the job and its tasks, as one write left them.
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS}, {TASK_COLUMNS} FROM jobs j WHERE j.id = $1"
        ))
        .await?;
    match client.query_opt(&stmt, &[&id.as_str()]).await? {
        Some(row) => record_from_row(&row).map(Some),
        None => Ok(None),
    }
}

/// A job, with its tasks, from its row.
fn record_from_row(row: &tokio_postgres::Row) -> Result<JobRecord> {
    job_from_row(row, tasks_of(row, 0)?)
}

/// Several jobs, each as `load_job` reads it, in one statement (one snapshot); the jobs that
/// no longer exist are missing from the answer.
pub async fn load_jobs(
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, JobRecord>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS}, {TASK_COLUMNS} FROM jobs j WHERE j.id = ANY($1::text[])"
        ))
        .await?;
    let mut jobs = HashMap::new();
    for row in client.query(&stmt, &[&ids]).await? {
        let record = record_from_row(&row)?;
        jobs.insert(record.job.id.to_string(), record);
    }
    Ok(jobs)
}

/// What the engine must learn after a client request: the flags and tasks registered since.
pub struct Refresh {
    pub wake_seq: i64,
    pub retry_seq: i64,
    /// A client may change these before the decision (`PUT /jobs/{id}`).
    pub auto_confirm: bool,
    pub deadline: DateTime<Utc>,
    /// The shared state's version, and the state itself when it is not the version known.
    pub state_seq: i64,
    pub shared_state: Option<Value>,
    pub requested: Requested,
    pub new_tasks: Vec<Task>,
    pub still_ours: bool,
}

pub async fn refresh(
    client: &impl GenericClient,
    id: &JobId,
    fence: &Fence,
    known_tasks: usize,
    known_state: i64,
) -> Result<Refresh> {
    let id = id.as_str();
    let known = known_tasks as i32;
    // The tasks only when some were registered since (their states, the known ones' included,
    // come with them: the row is one value).
    let stmt = client
        .prepare_cached(
            "SELECT j.wake_seq, j.retry_seq, j.auto_confirm, j.deadline, j.confirm_requested,
                    j.cancel_requested,
                    (j.lease_owner = $2 AND j.lease_generation = $3) AS ours, j.state_seq,
                    CASE WHEN j.state_seq <> $4 THEN j.shared_state END AS shared_state,
                    CASE WHEN j.task_count > $5 THEN j.task_specs ELSE '{}' END AS task_specs,
                    CASE WHEN j.task_count > $5 THEN j.task_state ELSE '{}' END AS task_state
             FROM jobs j
             WHERE j.id = $1",
        )
        .await?;
    let job = client
        .query_opt(
            &stmt,
            &[&id, &fence.owner, &fence.generation, &known_state, &known],
        )
        .await?
        .ok_or_else(|| corrupt(format!("job {id} vanished while leased")))?;
    let ours: Option<bool> = job.try_get("ours")?;
    Ok(Refresh {
        wake_seq: job.try_get("wake_seq")?,
        retry_seq: job.try_get("retry_seq")?,
        auto_confirm: job.try_get("auto_confirm")?,
        deadline: job.try_get("deadline")?,
        state_seq: job.try_get("state_seq")?,
        shared_state: job.try_get("shared_state")?,
        requested: Requested::from_flags(
            job.try_get("confirm_requested")?,
            job.try_get("cancel_requested")?,
        ),
        new_tasks: tasks_of(&job, known)?,
        still_ours: ours.unwrap_or(false),
    })
}

/// One fenced write of a driver's progress.
/// One write of a driver: the job's status, the tasks whose state changed, and the lease.
#[derive(Debug, Clone)]
pub struct Save {
    pub id: String,
    pub state: JobState,
    pub fence: Fence,
    /// Tasks whose state differs from the last synchronous save: written into the job's row
    /// (`task_state`), each over its own key; all of the job's tasks replace the stored states
    /// as they are.
    pub tasks: Vec<Task>,
    /// The shared state, when it changed: written only over version `state_guard` (another
    /// writer came first otherwise, and the save answers `state_written: false`).
    pub shared_state: Option<Value>,
    pub state_guard: i64,
    /// Only write if no client request arrived since the driver last looked (`wake_seq`).
    pub guard_seq: Option<i64>,
    /// What the save does to the job's lease.
    pub lease: LeaseAfter,
    /// Commit synchronously (a decision, an end, or what precedes a confirm or cancel).
    pub durable: bool,
    pub lease_ttl: Duration,
    /// What happened since the last save, for the job's event log.
    pub events: Vec<Event>,
    /// Notifications the change calls for (the job ended): written to the outbox with it.
    pub notifications: Vec<crate::domain::notify::NewNotification>,
}

/// What a save does to the job's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAfter {
    /// The driver keeps the job.
    Keep,
    /// Given back: any instance takes the job up again at this time (its next retry or expiry,
    /// or at once).
    Release(DateTime<Utc>),
    /// Given back for good: the job ended.
    Ended,
}

impl LeaseAfter {
    pub fn releases(self) -> bool {
        self != LeaseAfter::Keep
    }

    /// When the job is to be looked at again, once given back.
    pub fn wake_at(self) -> Option<DateTime<Utc>> {
        match self {
            LeaseAfter::Release(at) => Some(at),
            LeaseAfter::Keep | LeaseAfter::Ended => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    Ok {
        wake_seq: i64,
        requested: Requested,
        /// The shared state's version after the write.
        state_seq: i64,
        /// The save's shared state is the job's now (none given counts as written).
        state_written: bool,
    },
    /// A client request arrived since `guard_seq`: nothing was written.
    Conflict,
    /// The lease is no longer ours: nothing was written; stop driving the job.
    LeaseLost,
}

/// Write one driver's changes, fenced by its lease; commits synchronously when `s.durable`.
pub async fn save(client: &impl GenericClient, s: &Save) -> Result<Saved> {
    save_many(client, &[s], s.durable)
        .await?
        .pop()
        .ok_or_else(|| corrupt("a save without an outcome"))
}

/// The statement of `save_many`, made once.
static SAVE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH cfg AS (SELECT set_config('synchronous_commit', $1, true) AS v),
             w AS (
                SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[],
                    $6::text[], $7::jsonb[], $8::bool[], $9::bool[], $10::bool[],
                    $11::float8[], $12::timestamptz[], $13::bigint[], $14::json[],
                    $15::bigint[], $19::bigint[], $24::int[])
                    AS w(id, owner, generation, status, reason, shared_state, decided,
                         finished, releasing, ttl, next_wake, guard, tasks, n_events,
                         state_guard, n_tasks)
             ), j AS (
                UPDATE jobs SET
                    status = w.status, failure_reason = w.reason,
                    shared_state = CASE WHEN w.shared_state IS NOT NULL
                        AND jobs.state_seq = w.state_guard THEN w.shared_state
                        ELSE jobs.shared_state END,
                    state_seq = CASE WHEN w.shared_state IS NOT NULL
                        AND jobs.state_seq = w.state_guard THEN jobs.state_seq + 1
                        ELSE jobs.state_seq END,
                    -- Every task's state written (as many as the job has): they replace
                    -- the stored ones as they are; some: each over its own key.
                    task_state = CASE WHEN w.tasks IS NULL THEN jobs.task_state
                        WHEN w.n_tasks = jobs.task_count THEN w.tasks
                        ELSE (jobs.task_state::jsonb || w.tasks::jsonb)::json END,
                    updated_at = now(),
                    decided_at = CASE WHEN w.decided THEN COALESCE(jobs.decided_at, now())
                                      ELSE jobs.decided_at END,
                    finished_at = CASE WHEN w.finished THEN COALESCE(jobs.finished_at, now())
                                       ELSE jobs.finished_at END,
                    lease_owner = CASE WHEN w.releasing THEN NULL ELSE jobs.lease_owner END,
                    lease_expires = CASE WHEN w.releasing THEN NULL
                                         ELSE now() + make_interval(secs => w.ttl) END,
                    next_wake = CASE WHEN w.releasing THEN w.next_wake ELSE jobs.next_wake END,
                    event_seq = jobs.event_seq + w.n_events
                FROM w
                WHERE jobs.id = w.id AND jobs.lease_owner = w.owner
                  AND jobs.lease_generation = w.generation
                  AND (w.guard IS NULL OR jobs.wake_seq = w.guard)
                RETURNING jobs.id, jobs.wake_seq, jobs.confirm_requested, jobs.cancel_requested,
                    jobs.event_seq - w.n_events AS event_base, jobs.state_seq,
                    (w.shared_state IS NULL OR jobs.shared_state = w.shared_state)
                        AS state_written
             ), e AS ({}), nt AS (
                INSERT INTO notifications (job_id, channel, target, event)
                SELECT v.job_id, v.channel, v.target, v.event
                FROM unnest($20::text[], $21::text[], $22::text[], $23::text[])
                    AS v(job_id, channel, target, event)
                WHERE v.job_id IN (SELECT id FROM j)
             )
             SELECT j.id, j.wake_seq, j.confirm_requested, j.cancel_requested, j.state_seq,
                    j.state_written, (SELECT v FROM cfg) AS sync
             FROM j",
        insert_events(16, "j")
    )
});

/// Write several drivers' changes in one statement, each fenced by its own lease, and return
/// each one's outcome in order. Commits synchronously when `durable` (a batch commits as its most
/// demanding write needs; inside a transaction, the setting holds for its commit).
pub async fn save_many(
    client: &impl GenericClient,
    saves: &[&Save],
    durable: bool,
) -> Result<Vec<Saved>> {
    let sync = if durable { "on" } else { "off" };
    let n = saves.len();
    let mut ids = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut generations = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut decided = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut releasing = Vec::with_capacity(n);
    let mut ttls = Vec::with_capacity(n);
    let mut next_wakes: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut guards = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    let mut task_counts = Vec::with_capacity(n);
    let mut events = EventColumns::default();
    let mut event_counts = Vec::with_capacity(n);
    let mut state_guards = Vec::with_capacity(n);
    let (mut n_job, mut n_channel, mut n_target, mut n_event) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in saves {
        event_counts.push(events.push(s.id.as_str(), &s.events));
        ids.push(s.id.as_str());
        owners.push(s.fence.owner.as_str());
        generations.push(s.fence.generation);
        statuses.push(s.state.status().as_str());
        reasons.push(s.state.reason().map(|r| r.as_str()));
        states.push(s.shared_state.as_ref());
        decided.push(!s.state.status().is_undecided());
        finished.push(s.state.status().is_terminal());
        releasing.push(s.lease.releases());
        ttls.push(s.lease_ttl.as_secs_f64());
        next_wakes.push(s.lease.wake_at());
        guards.push(s.guard_seq);
        state_guards.push(s.state_guard);
        for nt in &s.notifications {
            n_job.push(s.id.as_str());
            n_channel.push(nt.channel.as_str());
            n_target.push(nt.target.as_str());
            n_event.push(nt.event.as_str());
        }
        let changed = TaskStates::of(&s.tasks);
        task_counts.push(s.tasks.len() as i32);
        tasks.push((!changed.is_empty()).then_some(tokio_postgres::types::Json(changed)));
    }
    let stmt = client.prepare_cached(&SAVE_MANY).await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &sync,
        &ids,
        &owners,
        &generations,
        &statuses,
        &reasons,
        &states,
        &decided,
        &finished,
        &releasing,
        &ttls,
        &next_wakes,
        &guards,
        &tasks,
        &event_counts,
    ];
    params.extend(events.params());
    params.push(&state_guards);
    params.extend([
        &n_job as &(dyn ToSql + Sync),
        &n_channel,
        &n_target,
        &n_event,
        &task_counts,
    ]);
    let rows = client.query(&stmt, &params).await?;
    let mut written: HashMap<String, Saved> = HashMap::with_capacity(rows.len());
    for row in &rows {
        written.insert(
            row.try_get("id")?,
            Saved::Ok {
                wake_seq: row.try_get("wake_seq")?,
                requested: Requested::from_flags(
                    row.try_get("confirm_requested")?,
                    row.try_get("cancel_requested")?,
                ),
                state_seq: row.try_get("state_seq")?,
                state_written: row.try_get("state_written")?,
            },
        );
    }
    let mut outcomes = Vec::with_capacity(n);
    for s in saves {
        let outcome = match written.remove(&s.id) {
            Some(saved) => saved,
            None => {
                // Not written: the lease is gone, or (with a guard) a client request came.
                let ours = client
                    .query_opt(
                        "SELECT 1 FROM jobs WHERE id = $1 AND lease_owner = $2 AND lease_generation = $3",
                        &[&s.id, &s.fence.owner, &s.fence.generation],
                    )
                    .await?;
                if ours.is_some() && s.guard_seq.is_some() {
                    Saved::Conflict
                } else {
                    Saved::LeaseLost
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// One row of `GET /jobs`.
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub id: String,
    pub status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    pub correlation_id: String,
    pub fields: crate::domain::request::JobFields,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub task_count: i32,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub statuses: Vec<JobStatus>,
    pub correlation_id: Option<String>,
    pub tag: Option<String>,
    /// Only jobs started from this job definition.
    pub definition: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset: strictly older than this (created_at, id).
    pub before: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

pub async fn list_jobs(client: &impl GenericClient, f: &JobFilter) -> Result<Vec<JobSummary>> {
    let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
    // Only the filters given are in the text, so that each shape gets a plan fitting it (the
    // pool's sessions plan a prepared statement once).
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if !statuses.is_empty() {
        params.push(&statuses);
        conditions.push(format!("status = ANY(${}::text[])", params.len()));
    }
    if let Some(c) = &f.correlation_id {
        params.push(c);
        conditions.push(format!("correlation_id = ${}::text", params.len()));
    }
    if let Some(t) = &f.tag {
        params.push(t);
        // The predicate of the partial index `jobs_tags` (V14), so that the index is used.
        conditions.push(format!(
            "tags <> '{{}}' AND tags @> ARRAY[${}::text]",
            params.len()
        ));
    }
    if let Some(d) = &f.definition {
        params.push(d);
        // The predicate of the index `jobs_by_definition`, so that the index is used.
        conditions.push(format!(
            "fields ? 'definition' AND fields #>> '{{definition,name}}' = ${}::text",
            params.len()
        ));
    }
    if let Some(at) = &f.created_after {
        params.push(at);
        conditions.push(format!("created_at > ${}::timestamptz", params.len()));
    }
    if let Some(at) = &f.created_before {
        params.push(at);
        conditions.push(format!("created_at < ${}::timestamptz", params.len()));
    }
    if let Some((at, id)) = &f.before {
        params.push(at);
        params.push(id);
        conditions.push(format!(
            "(created_at, id) < (${}::timestamptz, ${}::text)",
            params.len() - 1,
            params.len()
        ));
    }
    params.push(&f.limit);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let stmt = client
        .prepare_cached(&format!(
            "SELECT id, status, failure_reason, correlation_id, fields, created_at, updated_at,
                    deadline, task_count
             FROM jobs {filter}
             ORDER BY created_at DESC, id DESC
             LIMIT ${}",
            params.len()
        ))
        .await?;
    let rows = client.query(&stmt, &params).await?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            let reason: Option<String> = r.try_get("failure_reason")?;
            Ok(JobSummary {
                id: r.try_get("id")?,
                status: status.parse().map_err(corrupt)?,
                failure_reason: reason.map(|r| r.parse()).transpose().map_err(corrupt)?,
                correlation_id: r.try_get("correlation_id")?,
                fields: fields_from_row(r)?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                deadline: r.try_get("deadline")?,
                task_count: r.try_get("task_count")?,
            })
        })
        .collect()
}

/// The tasks' statuses of each of these jobs, in task order (for the console's job list: its
/// progress bars). Jobs without tasks are absent.
pub async fn task_statuses(
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, Vec<TaskStatus>>> {
    let stmt = client
        .prepare_cached(
            "SELECT j.id, s.value ->> 'status'
             FROM jobs j, json_each(j.task_state) s
             WHERE j.id = ANY($1::text[]) ORDER BY j.id, s.key::int",
        )
        .await?;
    let mut out: std::collections::HashMap<String, Vec<TaskStatus>> = Default::default();
    for r in client.query(&stmt, &[&ids]).await? {
        let status: String = r.try_get(1)?;
        out.entry(r.try_get(0)?)
            .or_default()
            .push(status.parse().map_err(corrupt)?);
    }
    Ok(out)
}
