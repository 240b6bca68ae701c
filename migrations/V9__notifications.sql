-- The outbox of notifications (callbacks, the contact's webhook and email, the operators'
-- webhook): written in the same statement as the state change that causes them, delivered at
-- least once by whichever instance claims them (lease_until, FOR UPDATE SKIP LOCKED), retried
-- with backoff until TCC_NOTIFY_MAX_AGE after created_at.
CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    job_id          text NOT NULL,
    -- callback | webhook | email
    channel         text NOT NULL,
    target          text NOT NULL,
    -- job.completed | job.failed | job.canceled | job.heuristic
    event           text NOT NULL,
    -- pending | delivered | failed
    status          text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_attempt    timestamptz,
    last_error      text
);

CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_job ON notifications (job_id);
