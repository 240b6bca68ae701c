//! Group commit: the writes of many jobs go to PostgreSQL together, one transaction and one
//! commit for a batch, instead of one transaction each. Both kinds of hot-path write take part:
//! new jobs being accepted and drivers' saves.
//!
//! Whoever has a write queues it and, if a writer slot is free, starts a writer task that writes
//! whatever is queued until the queue is empty, then ends. At most `writers` batches are in
//! flight; while they run, the next writes gather into the next batch. Nobody who queues a write
//! waits for more than the batch that carries it. All the saves of a batch are one statement (`store::save_many`); each new job
//! is a statement of its own; a transaction binds them when there are three statements or more,
//! otherwise they are pipelined, each its own commit.

use std::sync::{Arc, Mutex};

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::store::{self, Inserted, JobRecord, NewJobRow, Save, Saved, StoreError};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 64;
/// The fewest statements worth one transaction (whose BEGIN and COMMIT are two more round
/// trips).
const MIN_TRANSACTION: usize = 3;

/// One queued write and where its outcome goes.
enum Write {
    Save(Save, oneshot::Sender<Result<Saved, StoreError>>),
    Insert(
        Box<(NewJobRow, JobRecord)>,
        oneshot::Sender<Result<Inserted, StoreError>>,
    ),
}

pub struct GroupCommit {
    queue: Mutex<Vec<Write>>,
    writers: Arc<Semaphore>,
}

impl GroupCommit {
    pub fn new(writers: usize) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            writers: Arc::new(Semaphore::new(writers.max(1))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Write>> {
        // A poisoned queue only means a writer panicked while pushing or taking; it is valid.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a driver's `save` with whatever else is waiting, and return its outcome.
    pub async fn save(self: &Arc<Self>, pool: &Pool, save: Save) -> Result<Saved, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.lock().push(Write::Save(save, tx));
        self.kick(pool);
        rx.await
            .map_err(|_| StoreError::Unavailable("the write was abandoned".into()))?
    }

    /// Store a new job (`store::insert_job`) with whatever else is waiting; always committed
    /// synchronously.
    pub async fn insert(
        self: &Arc<Self>,
        pool: &Pool,
        row: NewJobRow,
        record: JobRecord,
    ) -> Result<Inserted, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.lock().push(Write::Insert(Box::new((row, record)), tx));
        self.kick(pool);
        rx.await
            .map_err(|_| StoreError::Unavailable("the write was abandoned".into()))?
    }

    /// Start a writer if a slot is free. Otherwise every slot is taken, and a running writer
    /// finds the queued write when it looks again.
    fn kick(self: &Arc<Self>, pool: &Pool) {
        if let Ok(slot) = self.writers.clone().try_acquire_owned() {
            let (this, pool) = (self.clone(), pool.clone());
            tokio::spawn(async move { this.drain(slot, pool).await });
        }
    }

    /// Write batches until the queue is empty.
    async fn drain(self: Arc<Self>, mut slot: OwnedSemaphorePermit, pool: Pool) {
        loop {
            loop {
                let batch: Vec<Write> = {
                    let mut q = self.lock();
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                write(&pool, batch).await;
            }
            drop(slot);
            // A write queued between the last look and giving the slot back found no free
            // slot: look once more.
            if self.lock().is_empty() {
                return;
            }
            slot = match self.writers.clone().try_acquire_owned() {
                Ok(s) => s,
                // Another writer took the slot and will find it.
                Err(_) => return,
            };
        }
    }
}

async fn write(pool: &Pool, batch: Vec<Write>) {
    let mut saves = Vec::new();
    let (mut new_jobs, mut job_replies) = (Vec::new(), Vec::new());
    for w in batch {
        match w {
            Write::Save(save, reply) => saves.push((save, reply)),
            Write::Insert(new, reply) => {
                new_jobs.push(*new);
                job_replies.push(reply);
            }
        }
    }
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e).to_string();
            for (_, reply) in saves {
                let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
            }
            for reply in job_replies {
                let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
            }
            return;
        }
    };
    let save_refs: Vec<&Save> = saves.iter().map(|(s, _)| s).collect();
    // All saves go in one statement; each new job is a statement of its own.
    let statements = new_jobs.len() + usize::from(!saves.is_empty());
    let together = if statements < MIN_TRANSACTION {
        // No transaction: pipelined, each statement its own commit (a statement is atomic; a
        // new job is committed synchronously, the saves as the most demanding of them needs).
        let durable = save_refs.iter().any(|s| s.durable);
        let (saved, inserted) = statements_of(&client, &save_refs, &new_jobs, durable).await;
        // Inserts answer on their own; only the saves' statement can fall back.
        for (result, reply) in inserted.into_iter().zip(job_replies.drain(..)) {
            let _ = reply.send(result);
        }
        saved
    } else {
        // One transaction, synchronous commit (it carries new jobs, or enough saves to be worth
        // it; a new job always needs it, and a batch commits as its most demanding write).
        let durable = !new_jobs.is_empty() || save_refs.iter().any(|s| s.durable);
        async {
            let tx = client.transaction().await?;
            let (saved, inserted) = statements_of(&tx, &save_refs, &new_jobs, durable).await;
            let saved = saved?;
            let inserted = inserted.into_iter().collect::<Result<Vec<Inserted>, _>>()?;
            tx.commit().await?;
            for (result, reply) in inserted.into_iter().zip(job_replies.drain(..)) {
                let _ = reply.send(Ok(result));
            }
            Ok::<_, StoreError>(saved)
        }
        .await
    };
    match together {
        Ok(saved) if saved.len() == saves.len() => {
            for (result, (_, reply)) in saved.into_iter().zip(saves) {
                let _ = reply.send(Ok(result));
            }
        }
        _ => {
            // Nothing of the failed statement or transaction was committed, so write each on
            // its own: one bad write then fails only itself. (Should a commit itself have failed
            // on a lost connection, its fate is unknown, as for any single write: a save written
            // again is harmless, being fenced and stating whole rows; a new job written again
            // fails on its id, and its client hears an error, as it would have without
            // batching.)
            for (save, reply) in saves {
                let _ = reply.send(store::save(&client, &save).await);
            }
            // New jobs already answered (left out of `job_replies`) are not written again.
            for ((row, record), reply) in new_jobs.iter().zip(job_replies) {
                let _ = reply.send(store::insert_job(&client, row, record).await);
            }
        }
    }
}

/// A batch's statements, pipelined on one connection: every save in one statement, each new job
/// in its own. Returns the saves' outcomes and each new job's.
async fn statements_of(
    client: &impl GenericClient,
    saves: &[&Save],
    new_jobs: &[(NewJobRow, JobRecord)],
    durable: bool,
) -> (
    Result<Vec<Saved>, StoreError>,
    Vec<Result<Inserted, StoreError>>,
) {
    futures::future::join(
        async {
            if saves.is_empty() {
                Ok(Vec::new())
            } else {
                store::save_many(client, saves, durable).await
            }
        },
        futures::future::join_all(
            new_jobs
                .iter()
                .map(|(row, record)| store::insert_job(client, row, record)),
        ),
    )
    .await
}
