//! Housekeeping: the gauges read from the database, and the retention sweep's deletes.

use super::*;

/// Per non-terminal status: how many jobs, and the age in seconds of the oldest: since its
/// creation while undecided, since the decision while confirming or canceling (so that "a job
/// confirming for 5 minutes" means 5 minutes of confirming, not a long reservation before it).
///
/// Read by a plain scan of the status index, not a bitmap scan: the index holds an entry for
/// every version of a job's row that had an active status (each job passes through them), and
/// until a vacuum removes them a bitmap scan visits every such row, long ended, on each read —
/// under load the whole recent table every few seconds, evicting the writers' pages. A plain
/// index scan marks each entry whose row is dead as it passes it, and the next read skips it:
/// each read visits only what changed since the last.
pub async fn active_stats(client: &mut impl GenericClient) -> Result<Vec<(JobStatus, i64, f64)>> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL enable_bitmapscan = off")
        .await?;
    let rows = tx
        .query(
            "SELECT status, count(*),
                    extract(epoch FROM now() - min(CASE WHEN status IN ('confirming', 'canceling')
                        THEN coalesce(decided_at, created_at) ELSE created_at END))::float8
             FROM jobs
             WHERE status IN ('pending', 'trying', 'reserved', 'confirming', 'canceling')
             GROUP BY status",
            &[],
        )
        .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            let s: String = r.try_get(0)?;
            Ok((s.parse().map_err(corrupt)?, r.try_get(1)?, r.try_get(2)?))
        })
        .collect()
}

/// Heuristic jobs no operator has resolved yet (`tcc_heuristic_unresolved`).
pub async fn count_heuristic(client: &impl GenericClient) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE status = 'heuristic' AND resolution IS NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Delete at most `batch` finished jobs older than `retention`, with their tasks, events and
/// notifications; returns how many. Unresolved heuristic jobs are kept (somebody still has to
/// look at them), and so is every active job. Rows another sweeper holds are skipped.
pub async fn purge_finished(
    client: &impl GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64> {
    Ok(client
        .execute(
            "WITH d AS (
                DELETE FROM jobs WHERE id IN (
                    SELECT id FROM jobs
                    WHERE finished_at < now() - make_interval(secs => $1)
                      AND (status IN ('completed', 'failed', 'canceled')
                           OR (status = 'heuristic' AND resolution IS NOT NULL))
                    ORDER BY finished_at
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)
                RETURNING id
             ), e AS (
                DELETE FROM job_events WHERE job_id IN (SELECT id FROM d)
             ), n AS (
                DELETE FROM notifications WHERE job_id IN (SELECT id FROM d)
             )
             SELECT 1 FROM d",
            &[&retention.as_secs_f64(), &batch],
        )
        .await?)
}
