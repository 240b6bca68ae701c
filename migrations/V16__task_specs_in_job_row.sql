-- What never changes in a task (its id, description, Try specification, own URLs) lives in its
-- job's row too, as an object keyed by the task's index beside `task_state` (V15): a new job is
-- then one row written, where it was the job's row and one per task, and a task's row was
-- inserted, checked against its job (the foreign key) and entered in two indexes for what the
-- job's row now carries (docs/performance.md, "A task's specification in its job's row"). A
-- save leaves the column as it is (a large one stays in its TOAST table, not copied). The
-- program checks what the table checked (store::rows::task_of): a task has a Try, a link or its
-- own URLs; task ids are unique in a job (the document's parser, and the registration under
-- the job's row lock).
ALTER TABLE jobs ADD COLUMN task_specs jsonb NOT NULL DEFAULT '{}';

UPDATE jobs j SET task_specs = s.specs
FROM (
    -- Absent, not null, what a task has not got (a Try body's own nulls are kept).
    SELECT job_id, jsonb_object_agg(idx::text, jsonb_build_object('task_id', task_id)
        || CASE WHEN description IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('description', description) END
        || CASE WHEN try_spec IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('try_spec', try_spec) END
        || CASE WHEN callbacks IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('callbacks', callbacks) END) AS specs
    FROM tasks
    GROUP BY job_id
) s
WHERE s.job_id = j.id;

DROP TABLE tasks;
