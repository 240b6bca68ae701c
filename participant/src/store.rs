//! The reservations' table: every decision is one transaction, with the service's writes, under
//! the reservation's row lock, timed by the database's clock.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use crate::answer::rfc3339;
use crate::{
    Answer, Error, Participant, RESERVATIONS, Refusal, Release, Reservation, SWEEPER_RELEASES,
    Service, Swept, TryCall, TryRequest,
};

/// Run `once` until it gives a result: again when the database asked for a retry (a
/// serialization failure, a deadlock) or a concurrent call won a race (`Ok(None)`), at most
/// `attempts` times; each run within `db_timeout`. A run that fails leaves nothing: its
/// transaction is rolled back when it is dropped.
async fn retrying<S, T, F, Fut>(p: &Participant<S>, mut once: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Error>>,
{
    let config = &p.inner.config;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let run = match tokio::time::timeout(config.db_timeout, once()).await {
            Ok(run) => run,
            Err(_) => Err(Error(
                format!("the database did not answer within {:?}", config.db_timeout),
                false,
            )),
        };
        match run {
            Ok(Some(done)) => return Ok(done),
            Ok(None) if attempt < config.attempts.max(1) * 2 => {}
            Err(e) if e.retryable() && attempt < config.attempts.max(1) => {}
            Ok(None) => {
                return Err(Error(
                    "concurrent calls kept racing for this request".into(),
                    false,
                ));
            }
            Err(e) => return Err(e),
        }
        // A short, random pause, so that racing calls do not meet again.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
        tokio::time::sleep(Duration::from_millis((5 + jitter) * u64::from(attempt))).await;
    }
}

/// `retrying`, answered: a failure is 503.
async fn answered<S, F, Fut>(p: &Participant<S>, once: F) -> Answer
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Answer>, Error>>,
{
    match retrying(p, once).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "a participant call failed; answered 503");
            Answer::unavailable()
        }
    }
}

/// A transaction at the configured isolation.
async fn begin<'c, S>(
    p: &Participant<S>,
    client: &'c mut deadpool_postgres::Client,
) -> Result<crate::Transaction<'c>, Error> {
    Ok(client
        .build_transaction()
        .isolation_level(p.inner.config.isolation)
        .start()
        .await?)
}

/// A new link's id: a random UUID's 122 random bits, unguessable.
fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What a repeat must match: the subject and the body, its members in any order.
fn request_hash(subject: &str, body: &Value) -> String {
    let mut text = format!("{}:{subject}\n", subject.len());
    canonical(body, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `v` as JSON with every object's members sorted by name.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The longest `correlation-id` or `request-id` taken (the pair is a unique key).
const MAX_ID: usize = 256;
/// The longest subject taken.
const MAX_SUBJECT: usize = 1024;

/// Whether a string anywhere in `v` (a key or a value) holds U+0000, which PostgreSQL's `jsonb`
/// cannot store.
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn refused(message: &str) -> Answer {
    Answer::problem(409, "Refused", message)
}

/// The Try: checked, then decided in one transaction (see the crate's documentation).
pub(crate) async fn try_reserve<S: Service>(p: &Participant<S>, call: TryCall<'_>) -> Answer {
    let needed = |value: Option<&str>, name: &str| match value.map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(Answer::problem(
            400,
            "Bad request",
            format!(
                "a Try needs the header {name}: it identifies the request, so that a repeat is answered as the first"
            ),
        )),
    };
    let ids = needed(call.correlation_id, "correlation-id")
        .and_then(|c| needed(call.request_id, "request-id").map(|r| (c, r)));
    let (correlation_id, request_id) = match ids {
        Ok(ids) => ids,
        Err(answer) => return answer,
    };
    let deadline = match call.deadline.map(str::trim) {
        None => None,
        Some(d) => match DateTime::parse_from_rfc3339(d) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                return Answer::problem(
                    400,
                    "Bad request",
                    format!("the header tcc-deadline is not an RFC 3339 time ({e}): {d}"),
                );
            }
        },
    };
    let body: Value = match serde_json::from_slice(call.body) {
        Ok(v) => v,
        Err(e) => {
            return Answer::problem(400, "Bad request", format!("the body is not JSON: {e}"));
        }
    };
    // What the database could not store would fail every repeat the same way: refused here.
    for (what, value, max) in [
        ("the header correlation-id", correlation_id.as_str(), MAX_ID),
        ("the header request-id", request_id.as_str(), MAX_ID),
        ("the Try's subject", call.subject, MAX_SUBJECT),
    ] {
        if value.len() > max || value.contains('\0') {
            return Answer::problem(
                400,
                "Bad request",
                format!("{what} must be at most {max} bytes, without NUL characters"),
            );
        }
    }
    if holds_nul(&body) {
        return Answer::problem(
            400,
            "Bad request",
            "the body holds a NUL character (\\u0000), which cannot be stored",
        );
    }
    let hash = request_hash(call.subject, &body);
    let request = TryRequest {
        correlation_id,
        request_id,
        subject: call.subject.to_string(),
        body,
    };
    answered(p, || try_once(p, &request, &hash, deadline)).await
}

/// One run of the Try. A repeat is answered from the stored row; a new request claims its ids
/// with its row first (a concurrent repeat waits on it, then replays it), then the service
/// reserves, after a savepoint, so that a refusal undoes the service's writes and keeps the row.
async fn try_once<S: Service>(
    p: &Participant<S>,
    request: &TryRequest,
    hash: &str,
    deadline: Option<DateTime<Utc>>,
) -> Result<Option<Answer>, Error> {
    let config = &p.inner.config;
    let mut client = p.inner.pool.get().await.map_err(Error::pool)?;
    let tx = begin(p, &mut client).await?;
    let found = tx
        .query_one(
            "SELECT now() AS now, r.id, r.body_hash, r.state, r.refusal, r.expires_at
             FROM (SELECT 1) AS one LEFT JOIN tcc_reservations r
               ON r.correlation_id = $1 AND r.request_id = $2",
            &[&request.correlation_id, &request.request_id],
        )
        .await?;
    if let Some(id) = found.try_get::<_, Option<String>>("id")? {
        return replay(p, &found, &id, hash).map(Some);
    }
    let now: DateTime<Utc> = found.try_get("now")?;
    let id = token();
    let inserted = tx
        .query_opt(
            "INSERT INTO tcc_reservations (id, correlation_id, request_id, subject, body_hash,
                 body, state, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'reserved', now(),
                 date_trunc('milliseconds', now() + make_interval(secs => $7)))
             ON CONFLICT (correlation_id, request_id) DO NOTHING
             RETURNING expires_at",
            &[
                &id,
                &request.correlation_id,
                &request.request_id,
                &request.subject,
                &hash,
                &request.body,
                &config.hold.as_secs_f64(),
            ],
        )
        .await?;
    // A concurrent repeat claimed the ids first: run again, to answer as it did.
    let Some(inserted) = inserted else {
        return Ok(None);
    };
    // Late, now that the ids are ours (a repeat racing a first Try in time replays that one):
    // dropped, the transaction takes the claim back; nothing is kept.
    if let Some(d) = deadline
        && now >= d
    {
        metrics::counter!(RESERVATIONS, "outcome" => "late").increment(1);
        return Ok(Some(Answer::problem(
            409,
            "Too late",
            format!(
                "the Try arrived after its tcc-deadline ({}): the coordinator no longer acts on its answer, so nothing was reserved",
                rfc3339(d)
            ),
        )));
    }
    let expires: DateTime<Utc> = inserted.try_get("expires_at")?;
    tx.batch_execute("SAVEPOINT tcc_reserve").await?;
    match p.inner.service.reserve(&tx, request).await {
        Ok(data) => {
            tx.execute(
                "UPDATE tcc_reservations SET data = $2 WHERE id = $1",
                &[&id, &data],
            )
            .await?;
            tx.commit().await?;
            metrics::counter!(RESERVATIONS, "outcome" => "reserved").increment(1);
            Ok(Some(Answer::reserved(p.link(&id), expires)))
        }
        Err(Refusal::Refused(message)) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT tcc_reserve")
                .await?;
            tx.execute(
                "UPDATE tcc_reservations SET state = 'refused', refusal = $2,
                     expires_at = NULL, settled_at = now()
                 WHERE id = $1",
                &[&id, &message],
            )
            .await?;
            tx.commit().await?;
            metrics::counter!(RESERVATIONS, "outcome" => "refused").increment(1);
            Ok(Some(refused(&message)))
        }
        // Dropped: the transaction, the row with it, is rolled back.
        Err(Refusal::Invalid(message)) => {
            Ok(Some(Answer::problem(422, "Unprocessable Try", message)))
        }
        Err(Refusal::Database(e)) => Err(e.into()),
    }
}

/// A repeat's answer: the first one's, whatever happened since; 422 for another request.
fn replay<S: Service>(
    p: &Participant<S>,
    row: &Row,
    id: &str,
    hash: &str,
) -> Result<Answer, Error> {
    let stored: String = row.try_get("body_hash")?;
    if stored != hash {
        return Ok(Answer::problem(
            422,
            "Another request under the same ids",
            "this correlation-id and request-id were used for another Try (another body or subject); a repeat must be the same request, a new request needs a new request-id",
        ));
    }
    let state: String = row.try_get("state")?;
    if state == "refused" {
        let message: Option<String> = row.try_get("refusal")?;
        return Ok(refused(message.as_deref().unwrap_or_default()));
    }
    let expires: Option<DateTime<Utc>> = row.try_get("expires_at")?;
    match expires {
        Some(expires) => Ok(Answer::reserved(p.link(id), expires)),
        None => Err(Error(format!("reservation {id} has no expiry"), false)),
    }
}

/// What a link's call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Confirm,
    Cancel,
}

const RESERVATION_COLUMNS: &str = "id, correlation_id, request_id, subject, body, data, expires_at";

fn reservation(row: &Row) -> Result<Reservation, Error> {
    let expires: Option<DateTime<Utc>> = row.try_get("expires_at")?;
    Ok(Reservation {
        id: row.try_get("id")?,
        correlation_id: row.try_get("correlation_id")?,
        request_id: row.try_get("request_id")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        data: row
            .try_get::<_, Option<Value>>("data")?
            .unwrap_or(Value::Null),
        expires: expires.unwrap_or_default(),
    })
}

fn not_found(detail: impl Into<String>) -> Answer {
    Answer::problem(404, "Not found", detail)
}

/// `PUT` or `DELETE` on a link.
pub(crate) async fn settle<S: Service>(p: &Participant<S>, id: &str, what: Settle) -> Answer {
    answered(p, || settle_once(p, id, what)).await
}

/// One run of a confirm or a cancel, under the reservation's row lock: whichever of confirm,
/// cancel and expiry takes the lock first decides, the others see what it decided.
async fn settle_once<S: Service>(
    p: &Participant<S>,
    id: &str,
    what: Settle,
) -> Result<Option<Answer>, Error> {
    let mut client = p.inner.pool.get().await.map_err(Error::pool)?;
    let tx = begin(p, &mut client).await?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT now() AS now, state, {RESERVATION_COLUMNS}
                 FROM tcc_reservations WHERE id = $1 FOR UPDATE"
            ),
            &[&id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Some(not_found("no reservation has this link")));
    };
    let state: String = row.try_get("state")?;
    let now: DateTime<Utc> = row.try_get("now")?;
    let r = reservation(&row)?;
    let expired = |at: DateTime<Utc>| {
        not_found(format!(
            "the reservation expired at {}: nothing is held",
            rfc3339(at)
        ))
    };
    let answer = match (state.as_str(), what) {
        ("reserved", _) if r.expires <= now => {
            // Lapsed, not yet swept: released now, in this transaction.
            p.inner.service.release(&tx, &r, Release::Expired).await?;
            mark(&tx, id, "expired").await?;
            tx.commit().await?;
            metrics::counter!(RESERVATIONS, "outcome" => "expired").increment(1);
            expired(r.expires)
        }
        ("reserved", Settle::Confirm) => {
            p.inner.service.confirm(&tx, &r).await?;
            mark(&tx, id, "confirmed").await?;
            tx.commit().await?;
            metrics::counter!(RESERVATIONS, "outcome" => "confirmed").increment(1);
            Answer::done()
        }
        ("reserved", Settle::Cancel) => {
            p.inner.service.release(&tx, &r, Release::Canceled).await?;
            mark(&tx, id, "canceled").await?;
            tx.commit().await?;
            metrics::counter!(RESERVATIONS, "outcome" => "canceled").increment(1);
            Answer::done()
        }
        ("confirmed", Settle::Confirm) | ("canceled", Settle::Cancel) => Answer::done(),
        ("confirmed", Settle::Cancel) => Answer::problem(
            409,
            "Already confirmed",
            "the reservation is confirmed: it cannot be canceled",
        ),
        ("canceled", Settle::Confirm) => not_found("the reservation was canceled: nothing is held"),
        ("expired", _) => expired(r.expires),
        _ => not_found("no reservation has this link"),
    };
    Ok(Some(answer))
}

async fn mark(tx: &crate::Transaction<'_>, id: &str, state: &str) -> Result<(), Error> {
    tx.execute(
        "UPDATE tcc_reservations SET state = $2, settled_at = now() WHERE id = $1",
        &[&id, &state],
    )
    .await?;
    Ok(())
}

/// `GET` on a link: the reservation as it stands (a lapsed one not yet swept shows `expired`).
pub(crate) async fn state<S: Service>(p: &Participant<S>, id: &str) -> Answer {
    answered(p, || async {
        let client = p.inner.pool.get().await.map_err(Error::pool)?;
        let row = client
            .query_opt(
                "SELECT now() AS now, state, correlation_id, request_id, subject, created_at,
                     expires_at, settled_at
                 FROM tcc_reservations WHERE id = $1 AND state <> 'refused'",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Some(not_found("no reservation has this link")));
        };
        let now: DateTime<Utc> = row.try_get("now")?;
        let expires: Option<DateTime<Utc>> = row.try_get("expires_at")?;
        let mut state: String = row.try_get("state")?;
        if state == "reserved" && expires.is_some_and(|e| e <= now) {
            state = "expired".into();
        }
        let settled: Option<DateTime<Utc>> = row.try_get("settled_at")?;
        let created: DateTime<Utc> = row.try_get("created_at")?;
        Ok(Some(Answer::json(json!({
            "state": state,
            "expires": expires.map(rfc3339),
            "correlationID": row.try_get::<_, String>("correlation_id")?,
            "requestID": row.try_get::<_, String>("request_id")?,
            "subject": row.try_get::<_, String>("subject")?,
            "created": rfc3339(created),
            "settled": settled.map(rfc3339),
        }))))
    })
    .await
}

/// The sweeper's run: expire in batches until none is left, then purge the same way.
pub(crate) async fn sweep<S: Service>(p: &Participant<S>) -> Result<Swept, Error> {
    let batch = p.inner.config.batch.max(1);
    let mut swept = Swept::default();
    // Expiry, then the purge even when expiry failed; the first failure is the run's.
    let mut failed = None;
    loop {
        match retrying(p, || expire_batch(p, batch)).await {
            Ok((n, taken)) => {
                swept.expired += n;
                // Done when the batch was not full, or nothing in it could be released.
                if taken < batch as u64 || n == 0 {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let retention = p.inner.config.retention.as_secs_f64();
    loop {
        let n = retrying(p, || async {
            let client = p.inner.pool.get().await.map_err(Error::pool)?;
            let n = client
                .execute(
                    "DELETE FROM tcc_reservations WHERE id IN (
                         SELECT id FROM tcc_reservations
                         WHERE state <> 'reserved'
                           AND settled_at < now() - make_interval(secs => $1)
                         ORDER BY settled_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    &[&retention, &batch],
                )
                .await?;
            Ok(Some(n))
        })
        .await?;
        swept.purged += n;
        if n < batch as u64 {
            break;
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(swept),
    }
}

/// One batch of lapsed reservations, released and marked expired in one transaction; rows
/// another replica's sweeper (or a confirm, a cancel) holds are skipped. Each row's release is
/// behind a savepoint: a row the service fails to release is logged and left for the next run,
/// and the others are expired all the same. (Released, expired, taken.)
async fn expire_batch<S: Service>(
    p: &Participant<S>,
    batch: i64,
) -> Result<Option<(u64, u64)>, Error> {
    let mut client = p.inner.pool.get().await.map_err(Error::pool)?;
    let tx = begin(p, &mut client).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {RESERVATION_COLUMNS} FROM tcc_reservations
                 WHERE state = 'reserved' AND expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            &[&batch],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let r = reservation(row)?;
        tx.batch_execute("SAVEPOINT tcc_release").await?;
        match p.inner.service.release(&tx, &r, Release::Expired).await {
            Ok(()) => ids.push(r.id),
            Err(e) => {
                let e = Error::from(e);
                if e.retryable() {
                    return Err(e);
                }
                tracing::warn!(reservation = %r.id, error = %e, "releasing a lapsed reservation failed; it is tried again at the next run");
                tx.batch_execute("ROLLBACK TO SAVEPOINT tcc_release")
                    .await?;
            }
        }
    }
    if !ids.is_empty() {
        tx.execute(
            "UPDATE tcc_reservations SET state = 'expired', settled_at = now()
             WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    }
    tx.commit().await?;
    let n = ids.len() as u64;
    metrics::counter!(RESERVATIONS, "outcome" => "expired").increment(n);
    metrics::counter!(SWEEPER_RELEASES).increment(n);
    Ok(Some((n, rows.len() as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_matches_whatever_the_order_of_its_members() {
        let a = json!({"quantity": 2, "note": {"x": 1, "y": [1, {"b": 2, "a": 1}]}});
        let b = json!({"note": {"y": [1, {"a": 1, "b": 2}], "x": 1}, "quantity": 2});
        assert_eq!(request_hash("sku-1", &a), request_hash("sku-1", &b));
        assert_ne!(request_hash("sku-2", &a), request_hash("sku-1", &a));
        assert_ne!(
            request_hash("sku-1", &json!({"quantity": 3})),
            request_hash("sku-1", &json!({"quantity": 2}))
        );
    }
}
