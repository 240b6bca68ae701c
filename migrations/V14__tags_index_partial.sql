-- Most jobs carry no tag, yet the GIN index on tags held an entry for every version of every
-- job row (an empty array is indexed too): each save of a job, which is never a HOT update (its
-- status is indexed), added one to the index's pending list, and a backend now and then merged
-- the list into the index. Only tagged jobs are indexed now; GET /jobs?tag= says tags <> '{}'
-- beside its containment test, so that this index is the one it uses.
DROP INDEX jobs_tags;
CREATE INDEX jobs_tags ON jobs USING gin (tags) WHERE tags <> '{}';
