-- tcc-participant: the reservations of a TCC participant, in the service's own database.
-- Idempotent: run it at every start (tcc_participant::migrate does), or copy it into the
-- service's own migrations.
CREATE TABLE IF NOT EXISTS tcc_reservations (
    -- The link's last segment: a random UUID (122 random bits), unguessable.
    id             text PRIMARY KEY,
    -- The Try's identity: its correlation-id and request-id headers.
    correlation_id text NOT NULL,
    request_id     text NOT NULL,
    -- What the Try was for (a path segment such as a SKU) and a hash of it and its body: a
    -- repeat under the same ids must carry the same.
    subject        text NOT NULL,
    body_hash      text NOT NULL,
    body           jsonb NOT NULL,
    -- What the service kept with the reservation (its answer to reserve).
    data           jsonb,
    state          text NOT NULL
                   CHECK (state IN ('reserved', 'refused', 'confirmed', 'canceled', 'expired')),
    -- The service's refusal, replayed on a repeat.
    refusal        text,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz,
    settled_at     timestamptz,
    UNIQUE (correlation_id, request_id),
    CHECK ((state = 'reserved') = (settled_at IS NULL)),
    CHECK ((state = 'refused') = (refusal IS NOT NULL))
);
-- The sweeper's work: held reservations by expiry.
CREATE INDEX IF NOT EXISTS tcc_reservations_held
    ON tcc_reservations (expires_at) WHERE state = 'reserved';
-- The purge's work: settled reservations by age.
CREATE INDEX IF NOT EXISTS tcc_reservations_settled
    ON tcc_reservations (settled_at) WHERE state <> 'reserved';
