//! The notification outbox: rows written with the change that causes them (`save_many`), claimed
//! by one instance at a time for delivery (`FOR UPDATE SKIP LOCKED`, a lease so that a delivery
//! whose instance died goes out again), and each attempt's outcome.

use super::*;

/// One notification as the job's representation shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub channel: String,
    pub target: String,
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const COLUMNS: &str =
    "id, channel, target, event, status, attempts, created_at, last_attempt, last_error";

fn from_row(r: &tokio_postgres::Row) -> Result<Notification> {
    Ok(Notification {
        id: r.try_get("id")?,
        channel: r.try_get("channel")?,
        target: r.try_get("target")?,
        event: r.try_get("event")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        last_attempt: r.try_get("last_attempt")?,
        last_error: r.try_get("last_error")?,
    })
}

/// A job's notifications, oldest first.
pub async fn notifications_of(
    client: &impl GenericClient,
    job_id: &JobId,
) -> Result<Vec<Notification>> {
    let job_id = job_id.as_str();
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE job_id = $1 ORDER BY id"
        ))
        .await?;
    client
        .query(&stmt, &[&job_id])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// A job as its representation shows it: with its notifications.
pub async fn load_shown(client: &impl GenericClient, id: &JobId) -> Result<Option<JobRecord>> {
    let Some(mut record) = load_job(client, id).await? else {
        return Ok(None);
    };
    record.notifications = notifications_of(client, id).await?;
    Ok(Some(record))
}

/// Several jobs as their representations show them (`load_shown` for each), in two statements
/// sent together: what the notifier reads for a batch of claimed notifications.
pub async fn load_shown_many(
    client: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, JobRecord>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT job_id, {COLUMNS} FROM notifications WHERE job_id = ANY($1::text[])
             ORDER BY job_id, id"
        ))
        .await?;
    let (jobs, notifications) =
        futures::future::join(load_jobs(client, ids), client.query(&stmt, &[&ids])).await;
    let mut jobs = jobs?;
    for row in notifications? {
        let job_id: &str = row.try_get("job_id")?;
        if let Some(record) = jobs.get_mut(job_id) {
            record.notifications.push(from_row(&row)?);
        }
    }
    Ok(jobs)
}

/// A notification claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct ClaimedNotification {
    pub job_id: JobId,
    pub n: Notification,
}

/// Claim up to `limit` due notifications for `lease` (another instance skips them meanwhile;
/// after it they are due again, so that one whose instance died in the middle goes out again),
/// counting the attempt. Committed asynchronously: a claim the database loses only lets the
/// notification be delivered once more, which at-least-once allows.
pub async fn claim_notifications(
    client: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedNotification>> {
    let stmt = client
        .prepare_cached(&format!(
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE notifications SET lease_until = now() + make_interval(secs => $2),
                attempts = attempts + 1, last_attempt = now()
             WHERE (SELECT count(*) FROM cfg) = 1 AND id IN (
                SELECT id FROM notifications
                WHERE status = 'pending' AND next_attempt_at <= now()
                  AND (lease_until IS NULL OR lease_until < now())
                ORDER BY next_attempt_at LIMIT $1
                FOR UPDATE SKIP LOCKED)
             RETURNING job_id, {COLUMNS}"
        ))
        .await?;
    client
        .query(&stmt, &[&limit, &lease.as_secs_f64()])
        .await?
        .iter()
        .map(|r| {
            Ok(ClaimedNotification {
                job_id: stored_id(r, "job_id")?,
                n: from_row(r)?,
            })
        })
        .collect()
}

/// What came of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered,
    /// Try again after this long.
    Retry(Duration, String),
    /// Given up.
    Failed(String),
}

/// Record a batch of attempts' outcomes and give their claims back, in one statement committed
/// asynchronously: an outcome the database loses only lets the notification be delivered once
/// more.
pub async fn record_deliveries(
    client: &impl GenericClient,
    outcomes: &[(i64, Delivery)],
) -> Result<()> {
    let n = outcomes.len();
    let (mut ids, mut statuses, mut delays, mut errors) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, outcome) in outcomes {
        let (status, delay, error) = match outcome {
            Delivery::Delivered => ("delivered", 0.0, None),
            Delivery::Retry(d, e) => ("pending", d.as_secs_f64(), Some(e.as_str())),
            Delivery::Failed(e) => ("failed", 0.0, Some(e.as_str())),
        };
        ids.push(*id);
        statuses.push(status);
        delays.push(delay);
        errors.push(error);
    }
    let stmt = client
        .prepare_cached(
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE notifications SET status = u.status, lease_until = NULL,
                last_error = u.error, next_attempt_at = now() + make_interval(secs => u.delay)
             FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[])
                AS u(id, status, delay, error)
             WHERE notifications.id = u.id AND (SELECT count(*) FROM cfg) = 1",
        )
        .await?;
    client
        .execute(&stmt, &[&ids, &statuses, &delays, &errors])
        .await?;
    Ok(())
}
