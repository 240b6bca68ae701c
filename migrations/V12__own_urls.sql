-- Tasks with their own confirm and cancel URLs (docs/api.md, "Tasks with confirm and cancel
-- URLs"): where and how they are settled, written once with the task; and until when their
-- current confirm or cancel is retried (the decision plus TCC_CALLBACK_HORIZON), as they have no
-- expiry.
ALTER TABLE tasks
    ADD COLUMN callbacks jsonb,
    ADD COLUMN callbacks_until timestamptz;
-- A task is tried by the coordinator, holds a link, or has its own URLs.
ALTER TABLE tasks DROP CONSTRAINT tasks_try_or_link_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_try_or_link_check
    CHECK (try_spec IS NOT NULL OR link_uri IS NOT NULL OR callbacks IS NOT NULL);

-- DTM's global transactions are jobs of their own source (docs/dtm.md).
ALTER DOMAIN job_source DROP CONSTRAINT job_source_check;
ALTER DOMAIN job_source ADD CONSTRAINT job_source_check
    CHECK (VALUE IN ('jcl', 'atomikos', 'dtm'));
