//! Instance liveness: which instances hold leases, and whether their process still lives.
//!
//! A live instance keeps one database session open that holds a session-level advisory lock on
//! its id (namespace [`IDENTITY_LOCK`], key `hashtext(id)`), and a row in `instances`. When its
//! process ends, its sessions end and PostgreSQL frees the lock at once; any instance's scanner
//! then finds the row without a lock ([`reap_dead`]), frees that instance's leases and lets the
//! ordinary claim take its jobs, within a scan interval. An instance that is alive but cut off
//! keeps its session (and lock) until PostgreSQL notices, so the lease's expiry still bounds it.
//! Nothing here is on the hot path: one statement per scan.

use deadpool_postgres::GenericClient;

use super::Result;

/// The first key of the identity locks ("tcci"); the second is `hashtext(instance id)`.
/// Migrations lock a single bigint key, which cannot collide with a two-key lock.
pub const IDENTITY_LOCK: i32 = 0x7463_6369;

/// Try to take this instance's identity lock on `client`'s session. `false`: another live
/// session holds it (another instance with the same id, or this id's previous process whose
/// session has not ended yet).
pub async fn try_lock_identity(client: &tokio_postgres::Client, id: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&IDENTITY_LOCK, &id],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Register this instance (holding its lock) and free the leases that an earlier process under
/// the same id left behind: none of them is driven by this process yet. Returns how many were
/// freed.
pub async fn register_instance(client: &tokio_postgres::Client, id: &str) -> Result<u64> {
    client
        .execute(
            "INSERT INTO instances (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET started_at = now()",
            &[&id],
        )
        .await?;
    Ok(client.execute(FREE_LEASES_OF, &[&id]).await?)
}

/// Free every lease one owner holds, for the scanners to claim. Leased jobs always have a
/// `next_wake` (it is kept while a job is leased), so this reaches them through `jobs_due`.
const FREE_LEASES_OF: &str = "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL
     WHERE next_wake IS NOT NULL AND lease_owner = $1";

/// Forget this instance at a clean stop (its leases were released by its drivers).
pub async fn deregister_instance(client: &tokio_postgres::Client, id: &str) -> Result<()> {
    client
        .execute("DELETE FROM instances WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// Find the registered instances whose identity lock nobody holds (their process ended), forget
/// them and free their leases. Returns their ids. Several scanners may run it at once: the row
/// locks on `instances` let one of them do each. Runs every scan, so the common case (nobody
/// died) is one small statement over `instances` and `pg_locks`; the leases are looked for only
/// when someone did (freeing them walks the `jobs_due` index). Should this instance die between
/// the two statements, those leases lapse as any lease does.
pub async fn reap_dead(client: &impl GenericClient) -> Result<Vec<String>> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM instances i
             WHERE hashtext(i.id)::oid NOT IN (
                SELECT objid FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 2
                  AND classid = $1::int4::oid
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
             RETURNING i.id",
        )
        .await?;
    let dead = client
        .query(&stmt, &[&IDENTITY_LOCK])
        .await?
        .iter()
        .map(|r| r.try_get::<_, String>("id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if !dead.is_empty() {
        let free = client
            .prepare_cached(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL
                 WHERE next_wake IS NOT NULL AND lease_owner = ANY($1)",
            )
            .await?;
        client.execute(&free, &[&dead]).await?;
    }
    Ok(dead)
}
