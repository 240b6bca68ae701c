-- The job's event log (GET /jobs/{id}/events). Events are written in the same statement as the
-- state change they describe; `seq` is gapless per job: jobs.event_seq is the last one given.
-- No foreign key: checking one would cost a lookup per event on the engine's hot path; the
-- retention purge deletes a job's events with the job.
ALTER TABLE jobs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE job_events (
    job_id      text NOT NULL,
    seq         bigint NOT NULL,
    at          timestamptz NOT NULL,
    -- status | call | task | action (src/domain/event.rs)
    type        text NOT NULL,
    task_id     text,
    op          text,
    attempt     integer,
    http_status integer,
    duration_ms integer,
    -- The job's status for a status event, the task's for the others.
    status      text,
    reason      text,
    action      text,
    actor       text,
    message     text,
    PRIMARY KEY (job_id, seq)
);

-- Jobs accepted before the log existed start it at 1 with their current status.
INSERT INTO job_events (job_id, seq, at, type, status, reason, message)
SELECT id, 1, updated_at, 'status', status, failure_reason, 'the log starts here (older job)'
FROM jobs;
UPDATE jobs SET event_seq = 1;
