-- The job's event log (GET /jobs/{id}/events). Events are written in the same statement as the
-- state change they describe, each statement's events of one job as one row (a JSON array, in
-- order): one row per write instead of one per event keeps the log cheap on the engine's hot
-- path. Sequence numbers are gapless per job: jobs.event_seq is the last one given, and a row
-- holds the events last_seq - (its length) + 1 .. last_seq.
-- No foreign key: checking one would cost a lookup per row; the retention purge deletes a job's
-- events with the job.
ALTER TABLE jobs ADD COLUMN event_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE job_events (
    job_id   text NOT NULL,
    last_seq bigint NOT NULL,
    -- [{at, type, taskID, op, attempt, httpStatus, durationMs, status, reason, action, actor,
    --   message}, ...] (src/domain/event.rs)
    events   jsonb NOT NULL,
    PRIMARY KEY (job_id, last_seq)
);

-- Jobs accepted before the log existed start it with their current status.
INSERT INTO job_events (job_id, last_seq, events)
SELECT id, 1, jsonb_build_array(jsonb_build_object(
    'at', updated_at, 'type', 'status', 'status', status, 'reason', failure_reason,
    'message', 'the log starts here (the job is older than the log)'))
FROM jobs;
UPDATE jobs SET event_seq = 1;
