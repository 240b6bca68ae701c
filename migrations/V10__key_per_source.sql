-- An idempotency key belongs to the source that gave it: a client's Idempotency-Key on
-- POST /jobs (source jcl) and the key the Atomikos endpoints derive from a link set (source
-- atomikos) live apart, so that no client can take a key the coordinator uses for itself.
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (source, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
