-- `continue` on a confirming job: the confirms waiting for their backoff are sent now. The
-- request is counted here, so that the driving instance, which holds the job in memory, hears of
-- it on its next look (as wake_seq tells it of other requests).
ALTER TABLE jobs ADD COLUMN retry_seq bigint NOT NULL DEFAULT 0;

-- Every write of the shared state counts one here, the engine's output mappings and the
-- clients' PUT and PATCH alike. Each writer writes only over the version it read (compare and
-- set on this counter) and, when another came first, takes that one in and writes again: no
-- write is ever silently lost.
ALTER TABLE jobs ADD COLUMN state_seq bigint NOT NULL DEFAULT 0;
