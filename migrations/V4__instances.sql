-- Instances that drive jobs. Each live instance holds a session-level advisory lock on its id
-- (store::instances); a row whose lock nobody holds is an instance whose process ended, and its
-- leases are freed at once instead of lapsing (takeover in seconds, not after the lease).
CREATE TABLE instances (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- How often a driver of the job failed (panicked or met an illegal transition); the next try
-- waits a backoff that doubles with each (store::record_driver_failure).
ALTER TABLE jobs ADD COLUMN driver_failures integer NOT NULL DEFAULT 0;
