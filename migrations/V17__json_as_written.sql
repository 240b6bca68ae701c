-- The tasks' specifications and states in a job's row (V15, V16) and the event log's batches
-- (V7) are kept as the coordinator writes them, `json` instead of `jsonb`: PostgreSQL never
-- looks inside them on the hot path, and taking in `jsonb` cost it a parse into a tree, a sort
-- of every object's keys and a conversion, for every job written (about a sixth of its CPU per
-- job; `json` is only checked to be JSON), and a conversion back to text for every read. A save
-- that writes every task's state replaces the stored states as they are; one that writes some
-- merges them over the stored ones key by key as before (through `jsonb`), and so do the rarer
-- writers (a registration, an operator's change, a driver's failure). `fields` stays `jsonb`:
-- an index looks inside it (V13). docs/performance.md, "JSON kept as written".
ALTER TABLE jobs
    ALTER COLUMN task_state DROP DEFAULT,
    ALTER COLUMN task_specs DROP DEFAULT;
ALTER TABLE jobs
    ALTER COLUMN task_state TYPE json USING task_state::json,
    ALTER COLUMN task_specs TYPE json USING task_specs::json;
ALTER TABLE jobs
    ALTER COLUMN task_state SET DEFAULT '{}',
    ALTER COLUMN task_specs SET DEFAULT '{}';
ALTER TABLE job_events ALTER COLUMN events TYPE json USING events::json;
