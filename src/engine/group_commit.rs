//! Group commit: the writes of many drivers go to PostgreSQL together, one transaction and one
//! commit for a batch, instead of one transaction each.
//!
//! No task of its own: a driver that has a write queues it and, if a writer slot is free, becomes
//! a writer itself, writing whatever is queued (its own write and others') until the queue is
//! empty. At most `writers` batches are in flight; while they run, the next writes gather into the
//! next batch. One or two writes are sent as they are (pipelined, each its own commit).

use std::sync::Mutex;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, oneshot};

use crate::store::{self, Save, Saved, StoreError};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 64;
/// The fewest writes worth one transaction.
const MIN_TRANSACTION: usize = 3;

type Reply = oneshot::Sender<Result<Saved, StoreError>>;

pub struct GroupCommit {
    queue: Mutex<Vec<(Save, Reply)>>,
    writers: Semaphore,
}

impl GroupCommit {
    pub fn new(writers: usize) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            writers: Semaphore::new(writers.max(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Save, Reply)>> {
        // A poisoned queue only means a writer panicked while pushing or taking; it is valid.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write `save` with whatever else is waiting, and return its outcome.
    pub async fn save(&self, pool: &Pool, save: Save) -> Result<Saved, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.lock().push((save, tx));
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
                let batch: Vec<(Save, Reply)> = {
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

async fn write(pool: &Pool, batch: Vec<(Save, Reply)>) {
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    if batch.len() < MIN_TRANSACTION {
        // Too few for a transaction's two extra round trips to pay: pipelined, each its own
        // commit (PostgreSQL still flushes concurrent commits together).
        let results =
            futures::future::join_all(batch.iter().map(|(save, _)| store::save(&client, save)))
                .await;
        for (result, (_, reply)) in results.into_iter().zip(batch) {
            let _ = reply.send(result);
        }
        return;
    }
    let (saves, replies): (Vec<Save>, Vec<Reply>) = batch.into_iter().unzip();
    match store::save_batch(&mut client, &saves).await {
        Ok(results) => {
            for (result, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(_) => {
            // Nothing of the batch was committed (or, if the commit itself failed, its fate is
            // unknown and writing again is harmless: every write is fenced and states the
            // whole row). Write each on its own, so that one bad write fails only itself.
            for (save, reply) in saves.iter().zip(replies) {
                let _ = reply.send(store::save(&client, save).await);
            }
        }
    }
}
