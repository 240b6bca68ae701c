-- A task row referenced its job through a foreign key: every task inserted ran the key's check,
-- a query of its own that locked the job's row (one more WAL record each), in the statement that
-- had just inserted that very job. Every write of tasks already has its job in hand (inserted in
-- the same statement, or locked first by a registration), and the retention sweep deletes a
-- job's tasks with the job (store::purge_finished), as it does its events and notifications.
ALTER TABLE tasks DROP CONSTRAINT tasks_job_id_fkey;
