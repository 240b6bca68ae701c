-- Jobs and their tasks. Statuses mirror the enums in src/domain/status.rs.

CREATE TABLE jobs (
    id                text PRIMARY KEY,
    source            text NOT NULL DEFAULT 'jcl' CHECK (source IN ('jcl', 'atomikos')),
    status            text NOT NULL CHECK (status IN
                        ('pending', 'trying', 'reserved', 'confirming', 'cancelling',
                         'completed', 'failed', 'canceled', 'heuristic')),
    failure_reason    text CHECK (failure_reason IN
                        ('try-failed', 'expiring', 'confirm-refused', 'timeout', 'client')),
    -- The job-level request fields as accepted (description, contact, callbacks, tags, ...).
    fields            jsonb NOT NULL,
    correlation_id    text NOT NULL,
    tags              text[] NOT NULL DEFAULT '{}',
    auto_confirm      boolean NOT NULL,
    retry_policy      jsonb,
    shared_state      jsonb NOT NULL DEFAULT '{}',
    -- Client requests the engine has to act on; wake_seq counts them so that a driver can tell
    -- whether it has seen the latest.
    confirm_requested boolean NOT NULL DEFAULT false,
    cancel_requested  boolean NOT NULL DEFAULT false,
    wake_seq          bigint NOT NULL DEFAULT 0,
    task_count        integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    deadline          timestamptz NOT NULL,
    decided_at        timestamptz,
    finished_at       timestamptz,
    attempt           integer NOT NULL DEFAULT 1,
    -- The lease: which instance drives the job, until when, and a fencing generation.
    lease_owner       text,
    lease_expires     timestamptz,
    lease_generation  bigint NOT NULL DEFAULT 0,
    -- When the engine must look at the job again; NULL once there is nothing left to do.
    next_wake         timestamptz,
    -- The W3C traceparent of the request that created the job, passed on to participants.
    traceparent       text,
    idempotency_key   text UNIQUE,
    request_hash      text,
    CHECK ((status IN ('failed', 'canceled')) = (failure_reason IS NOT NULL)
           OR status = 'cancelling')
);

CREATE INDEX jobs_due ON jobs (next_wake) WHERE next_wake IS NOT NULL;
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_correlation ON jobs (correlation_id, created_at DESC);
CREATE INDEX jobs_tags ON jobs USING gin (tags);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE tasks (
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx             integer NOT NULL,
    task_id         text NOT NULL,
    description     text,
    -- The Try to send (taskURL, body, mappings, taskMaxTTL, retryPolicy); NULL for a task
    -- registered with a link.
    try_spec        jsonb,
    status          text NOT NULL CHECK (status IN
                      ('pending', 'trying', 'reserved', 'confirming', 'confirmed',
                       'cancelling', 'cancelled', 'expired', 'failed', 'heuristic')),
    link_uri        text,
    link_expires    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    refused         boolean NOT NULL DEFAULT false,
    -- A confirm was sent and its answer not yet recorded / some confirm may have been applied
    -- unheard (see domain::job::Task).
    confirm_pending boolean NOT NULL DEFAULT false,
    confirm_unknown boolean NOT NULL DEFAULT false,
    start_time      timestamptz,
    end_time        timestamptz,
    last_message    text,
    try_response    jsonb,
    PRIMARY KEY (job_id, idx),
    UNIQUE (job_id, task_id),
    CHECK ((link_uri IS NULL) = (link_expires IS NULL)),
    CHECK (try_spec IS NOT NULL OR link_uri IS NOT NULL)
);

CREATE INDEX tasks_link ON tasks (job_id, link_uri) WHERE link_uri IS NOT NULL;
