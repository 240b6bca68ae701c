//! Group commit: the writes of many jobs go to PostgreSQL together, one transaction and one
//! commit for a batch, instead of one transaction each. Both kinds of hot-path write take part:
//! new jobs being accepted and drivers' saves.
//!
//! No task of its own: whoever has a write queues it and, if a writer slot is free, becomes a
//! writer itself, writing whatever is queued (its own write and others') until the queue is
//! empty. At most `writers` batches are in flight; while they run, the next writes gather into
//! the next batch. One or two writes are sent as they are (pipelined, each its own commit).

use std::sync::Mutex;

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{Semaphore, oneshot};

use crate::store::{self, Inserted, JobRecord, NewJobRow, Save, Saved, StoreError};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 64;
/// The fewest writes worth one transaction (whose BEGIN and COMMIT are two more round trips).
const MIN_TRANSACTION: usize = 3;

/// One queued write and where its outcome goes.
enum Write {
    Save(Save, oneshot::Sender<Result<Saved, StoreError>>),
    Insert(
        Box<(NewJobRow, JobRecord)>,
        oneshot::Sender<Result<Inserted, StoreError>>,
    ),
}

/// A write's outcome.
enum Outcome {
    Saved(Saved),
    Inserted(Inserted),
}

impl Write {
    async fn run(
        &self,
        client: &impl GenericClient,
        durable: Option<bool>,
    ) -> Result<Outcome, StoreError> {
        match self {
            Write::Save(save, _) => {
                let durable = durable.unwrap_or(save.durable);
                store::save_as(client, save, durable)
                    .await
                    .map(Outcome::Saved)
            }
            Write::Insert(new, _) => store::insert_job(client, &new.0, &new.1)
                .await
                .map(Outcome::Inserted),
        }
    }

    /// Must the commit carrying this write be synchronous? A new job always.
    fn durable(&self) -> bool {
        match self {
            Write::Save(save, _) => save.durable,
            Write::Insert(..) => true,
        }
    }

    fn reply(self, outcome: Result<Outcome, StoreError>) {
        match (self, outcome) {
            (Write::Save(_, tx), Ok(Outcome::Saved(s))) => {
                let _ = tx.send(Ok(s));
            }
            (Write::Insert(_, tx), Ok(Outcome::Inserted(i))) => {
                let _ = tx.send(Ok(i));
            }
            (Write::Save(_, tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Write::Insert(_, tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Write::Save(_, tx), Ok(_)) => {
                let _ = tx.send(Err(StoreError::Corrupt(
                    "a save answered as an insert".into(),
                )));
            }
            (Write::Insert(_, tx), Ok(_)) => {
                let _ = tx.send(Err(StoreError::Corrupt(
                    "an insert answered as a save".into(),
                )));
            }
        }
    }
}

pub struct GroupCommit {
    queue: Mutex<Vec<Write>>,
    writers: Semaphore,
}

impl GroupCommit {
    pub fn new(writers: usize) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            writers: Semaphore::new(writers.max(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Write>> {
        // A poisoned queue only means a writer panicked while pushing or taking; it is valid.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a driver's `save` with whatever else is waiting, and return its outcome.
    pub async fn save(&self, pool: &Pool, save: Save) -> Result<Saved, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.lock().push(Write::Save(save, tx));
        self.drain(pool).await;
        rx.await
            .map_err(|_| StoreError::Unavailable("the write was abandoned".into()))?
    }

    /// Store a new job (`store::insert_job`) with whatever else is waiting; always committed
    /// synchronously.
    pub async fn insert(
        &self,
        pool: &Pool,
        row: NewJobRow,
        record: JobRecord,
    ) -> Result<Inserted, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.lock().push(Write::Insert(Box::new((row, record)), tx));
        self.drain(pool).await;
        rx.await
            .map_err(|_| StoreError::Unavailable("the write was abandoned".into()))?
    }

    /// Become a writer if a slot is free, and write batches until the queue is empty.
    async fn drain(&self, pool: &Pool) {
        loop {
            let Ok(slot) = self.writers.try_acquire() else {
                // Every slot is taken: a writer will find this write when it looks again.
                return;
            };
            loop {
                let batch: Vec<Write> = {
                    let mut q = self.lock();
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                write(pool, batch).await;
            }
            drop(slot);
            // A write queued between the last look and giving the slot back found no free
            // slot: look once more.
            if self.lock().is_empty() {
                return;
            }
        }
    }
}

async fn write(pool: &Pool, batch: Vec<Write>) {
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e).to_string();
            for w in batch {
                w.reply(Err(StoreError::Unavailable(e.clone())));
            }
            return;
        }
    };
    if batch.len() < MIN_TRANSACTION {
        // Pipelined, each its own commit (PostgreSQL still flushes concurrent commits together).
        let results = futures::future::join_all(batch.iter().map(|w| w.run(&client, None))).await;
        for (result, w) in results.into_iter().zip(batch) {
            w.reply(result);
        }
        return;
    }
    let durable = batch.iter().any(Write::durable);
    let together = async {
        let tx = client.transaction().await?;
        let results =
            futures::future::join_all(batch.iter().map(|w| w.run(&tx, Some(durable)))).await;
        let outcomes = results
            .into_iter()
            .collect::<Result<Vec<Outcome>, StoreError>>()?;
        tx.commit().await?;
        Ok::<_, StoreError>(outcomes)
    }
    .await;
    match together {
        Ok(outcomes) => {
            for (outcome, w) in outcomes.into_iter().zip(batch) {
                w.reply(Ok(outcome));
            }
        }
        Err(_) => {
            // Nothing of the batch was committed, so write each on its own: one bad write then
            // fails only itself. (Should the commit itself have failed on a lost connection, its
            // fate is unknown, as for any single write: a save written again is harmless, being
            // fenced and stating whole rows; a new job written again fails on its id, and its
            // client hears an error, as it would have without batching.)
            for w in batch {
                let result = w.run(&client, None).await;
                w.reply(result);
            }
        }
    }
}
