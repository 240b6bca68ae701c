-- What changes in a task after it is stored (its status, link, attempts, times, last message,
-- Try answer) lives in its job's row, as an object keyed by the task's index; the task's row
-- keeps what never changes (its id, description, Try specification, own URLs). A save of a job
-- is then one row written, where it was the job's row and one per changed task: task rows were
-- the largest part of PostgreSQL's work per job (docs/performance.md, "Where a job's
-- PostgreSQL work goes"). The state is merged key by key (`||`), as rows were updated one by one.
ALTER TABLE jobs ADD COLUMN task_state jsonb NOT NULL DEFAULT '{}';

UPDATE jobs j SET task_state = s.state
FROM (
    -- A task without a kept Try answer has none in its object (an answer of JSON null is one).
    SELECT job_id, jsonb_object_agg(idx::text, jsonb_build_object(
            'status', status, 'link_uri', link_uri, 'link_expires', link_expires,
            'attempts', attempts, 'next_attempt_at', next_attempt_at, 'refused', refused,
            'confirm_pending', confirm_pending, 'confirm_unknown', confirm_unknown,
            'start_time', start_time, 'end_time', end_time, 'last_message', last_message,
            'callbacks_until', callbacks_until)
        || CASE WHEN try_response IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('try_response', try_response) END) AS state
    FROM tasks
    GROUP BY job_id
) s
WHERE s.job_id = j.id;

-- The checks on these columns go with them; the program checks a task's state as it reads it
-- (store::rows::task_from_row).
ALTER TABLE tasks
    DROP COLUMN status,
    DROP COLUMN link_uri,
    DROP COLUMN link_expires,
    DROP COLUMN attempts,
    DROP COLUMN next_attempt_at,
    DROP COLUMN refused,
    DROP COLUMN confirm_pending,
    DROP COLUMN confirm_unknown,
    DROP COLUMN start_time,
    DROP COLUMN end_time,
    DROP COLUMN last_message,
    DROP COLUMN try_response,
    DROP COLUMN callbacks_until;

-- Task rows are no longer updated: no room kept for new versions of them.
ALTER TABLE tasks SET (fillfactor = 100);
