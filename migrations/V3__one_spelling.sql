-- One spelling for every status, the JCL's: canceling, canceled (jobs already said canceled;
-- tasks and the canceling job status said cancelling/cancelled). Rows are rewritten, then the
-- domains allow only the new spelling.

ALTER DOMAIN job_status DROP CONSTRAINT job_status_check;
ALTER DOMAIN task_status DROP CONSTRAINT task_status_check;

UPDATE jobs SET status = 'canceling' WHERE status = 'cancelling';
UPDATE tasks SET status = 'canceling' WHERE status = 'cancelling';
UPDATE tasks SET status = 'canceled' WHERE status = 'cancelled';

ALTER DOMAIN job_status ADD CONSTRAINT job_status_check CHECK (VALUE IN
    ('pending', 'trying', 'reserved', 'confirming', 'canceling',
     'completed', 'failed', 'canceled', 'heuristic'));
ALTER DOMAIN task_status ADD CONSTRAINT task_status_check CHECK (VALUE IN
    ('pending', 'trying', 'reserved', 'confirming', 'confirmed',
     'canceling', 'canceled', 'expired', 'failed', 'heuristic'));
