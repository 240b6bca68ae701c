//! Leases: claiming due jobs, renewing, giving back, and recording a driver's failure. Every
//! write here but the claim is fenced by owner and generation.

use super::*;

/// A job claimed by this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: JobId,
    pub generation: i64,
}

/// Claim jobs that are due and not leased (or whose lease lapsed): up to `limit` of them, or only
/// job `only`. Jobs another instance is claiming at the same moment are skipped, not waited for.
async fn claim(
    client: &impl GenericClient,
    owner: &str,
    ttl: Duration,
    only: Option<&JobId>,
    limit: i64,
) -> Result<Vec<Claimed>> {
    // One text per shape: the pool's sessions plan a statement once, and claiming one job must
    // stay a primary-key lookup.
    let by_id = if only.is_some() { "AND id = $3" } else { "" };
    let limit_param = if only.is_some() { "$4" } else { "$3" };
    let stmt = client
        .prepare_cached(&format!(
            "WITH c AS (
                SELECT id FROM jobs
                WHERE next_wake <= now() AND (lease_owner IS NULL OR lease_expires < now())
                  {by_id}
                ORDER BY next_wake LIMIT {limit_param}
                FOR UPDATE SKIP LOCKED
             )
             UPDATE jobs SET lease_owner = $1, lease_expires = now() + make_interval(secs => $2),
                    lease_generation = lease_generation + 1
             FROM c WHERE jobs.id = c.id
             RETURNING jobs.id, jobs.lease_generation"
        ))
        .await?;
    let ttl = ttl.as_secs_f64();
    let rows = match only {
        Some(id) => {
            client
                .query(&stmt, &[&owner, &ttl, &id.as_str(), &limit])
                .await?
        }
        None => client.query(&stmt, &[&owner, &ttl, &limit]).await?,
    };
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: stored_id(r, "id")?,
                generation: r.try_get(1)?,
            })
        })
        .collect()
}

/// Claim up to `limit` due jobs.
pub async fn claim_due(
    client: &impl GenericClient,
    owner: &str,
    ttl: Duration,
    limit: i64,
) -> Result<Vec<Claimed>> {
    claim(client, owner, ttl, None, limit).await
}

/// Claim one job that has something to do, if nobody holds it.
pub async fn claim_one(
    client: &impl GenericClient,
    id: &JobId,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Claimed>> {
    Ok(claim(client, owner, ttl, Some(id), 1).await?.pop())
}

/// A driver of the job failed (a panic or an illegal transition): say so on its open tasks
/// (`message`) and give the lease back with the next look at the job after a backoff that
/// doubles with each failure (1 s to 5 min, with jitter). Fenced: a lost lease writes nothing.
pub async fn record_driver_failure(
    client: &impl GenericClient,
    id: &JobId,
    fence: &Fence,
    message: &str,
) -> Result<bool> {
    let id = id.as_str();
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL,
                driver_failures = driver_failures + 1,
                next_wake = now() + least(interval '5 min',
                    interval '1 s' * power(2, least(driver_failures, 20)))
                    * (0.5 + random() / 2),
                task_state = (task_state::jsonb || COALESCE((
                    SELECT jsonb_object_agg(k, v || jsonb_build_object('last_message', $4::text))
                    FROM jsonb_each(task_state::jsonb) AS s(k, v)
                    WHERE v ->> 'status' NOT IN
                        ('confirmed', 'canceled', 'expired', 'failed', 'heuristic')), '{}'))::json
             WHERE id = $1 AND lease_owner = $2 AND lease_generation = $3
             RETURNING 1",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&id, &fence.owner, &fence.generation, &message])
        .await?;
    Ok(!rows.is_empty())
}

/// Give a lease back without other changes (shutdown, or a job this instance cannot take now).
pub async fn release(client: &impl GenericClient, id: &JobId, fence: &Fence) -> Result<()> {
    let id = id.as_str();
    client
        .execute(
            "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL,
                    next_wake = COALESCE(next_wake, now())
             WHERE id = $1 AND lease_owner = $2 AND lease_generation = $3",
            &[&id, &fence.owner, &fence.generation],
        )
        .await?;
    Ok(())
}

/// Push the lease forward while a driver waits on calls. `false`: the lease is lost.
pub async fn renew(
    client: &impl GenericClient,
    id: &JobId,
    fence: &Fence,
    ttl: Duration,
) -> Result<bool> {
    let id = id.as_str();
    let n = client
        .execute(
            "UPDATE jobs SET lease_expires = now() + make_interval(secs => $4)
             WHERE id = $1 AND lease_owner = $2 AND lease_generation = $3",
            &[&id, &fence.owner, &fence.generation, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(n == 1)
}
