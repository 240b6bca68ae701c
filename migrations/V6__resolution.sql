-- An operator's resolution of a heuristic outcome: {note, resolvedAt, resolvedBy}; NULL while
-- unresolved. The unresolved heuristic jobs, oldest first, are a page of their own and a gauge.
ALTER TABLE jobs ADD COLUMN resolution jsonb;
CREATE INDEX jobs_heuristic_unresolved ON jobs (created_at, id)
    WHERE status = 'heuristic' AND resolution IS NULL;
