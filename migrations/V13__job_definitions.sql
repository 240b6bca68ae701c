-- Job definitions (docs/api.md, "Job definitions"): a name, its versions (each a job document
-- with its parameters' schema, never changed once written), and whether it is retired.
CREATE TABLE job_definitions (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._~-]{1,128}$'),
    latest int NOT NULL CHECK (latest >= 1),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    retired_at timestamptz
);

CREATE TABLE job_definition_versions (
    name text NOT NULL REFERENCES job_definitions (name),
    version int NOT NULL CHECK (version >= 1),
    -- json, not jsonb: kept as written, so that the form shows the parameters in their order.
    document json NOT NULL,
    -- SHA-256 of the document with its keys in order: the same document PUT again is no new version.
    document_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

-- A job started from a definition records it in its fields ({"definition": {"name", "version"}});
-- GET /jobs?definition= reads this index, newest first as the list is ordered. Only such jobs are
-- in it, and the drivers' saves never write fields, so it costs the job path nothing.
CREATE INDEX jobs_by_definition ON jobs ((fields #>> '{definition,name}'), created_at DESC, id DESC)
    WHERE fields ? 'definition';
