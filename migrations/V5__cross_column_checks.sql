-- The cross-column rules V2 dropped for speed, back in the schema: measured with the batched
-- statements of today's engine, they cost less than the 3 % of 2-task throughput we allow for
-- them (docs/performance.md, "Cross-column CHECK constraints"). The program still checks them
-- where rows are read.
ALTER TABLE jobs ADD CONSTRAINT jobs_reason_check
    CHECK ((status IN ('failed', 'canceled')) = (failure_reason IS NOT NULL)
           OR status = 'canceling');
ALTER TABLE tasks ADD CONSTRAINT tasks_link_check
    CHECK ((link_uri IS NULL) = (link_expires IS NULL));
ALTER TABLE tasks ADD CONSTRAINT tasks_try_or_link_check
    CHECK (try_spec IS NOT NULL OR link_uri IS NOT NULL);
