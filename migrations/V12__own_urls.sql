-- Tasks with their own confirm and cancel URLs (docs/api.md, "Tasks with confirm and cancel
-- URLs"): where and how they are settled, written once with the task; and until when their
-- current confirm or cancel is retried (the decision plus TCC_CALLBACK_HORIZON), as they have no
-- expiry.
ALTER TABLE tasks
    ADD COLUMN callbacks jsonb,
    ADD COLUMN callbacks_until timestamptz;

-- DTM's global transactions are jobs of their own source (docs/dtm.md).
ALTER DOMAIN job_source DROP CONSTRAINT job_source_check;
ALTER DOMAIN job_source ADD CONSTRAINT job_source_check
    CHECK (VALUE IN ('jcl', 'atomikos', 'dtm'));
