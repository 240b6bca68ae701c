//! Group commit: the writes of many jobs go to PostgreSQL together, a batch in two statements
//! and one commit, instead of a transaction each. Both kinds of hot-path write take part:
//! new jobs being accepted and drivers' saves.
//!
//! Whoever has a write queues it and, if no writer is writing, starts a writer task that writes
//! whatever is queued until the queue is empty, then ends. While a batch is being written the
//! next one gathers behind it; another writer starts only when `SPILL` writes wait, and at most
//! `writers` batches are in flight. Nobody who queues a write waits for more than the batch
//! being written and the one that carries it. All the saves of a batch are one statement
//! (`store::save_many`), all its new jobs another (`store::insert_many`); the two are pipelined
//! on one connection in one transaction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::{self, Inserted, JobRecord, NewJobRow, Save, Saved, StoreError};

/// The most writes one batch carries.
const MAX_BATCH: usize = 64;
/// While a batch is being written, another writer starts only when this many writes wait:
/// until then the next batch gathers behind the one in flight, and the fixed cost of its
/// statements and commit is shared by more writes.
const SPILL: usize = 32;

/// One queued write and where its outcome goes.
enum Write {
    Save(Box<Save>, oneshot::Sender<Result<Saved, StoreError>>),
    Insert(Box<(NewJobRow, JobRecord)>, InsertReply),
}

/// Told what became of a new job: whoever waits on it, or a callback the writer runs (so that
/// more than one party hears it without another task in between), which is handed back the
/// record it wrote.
pub enum InsertReply {
    Channel(oneshot::Sender<Result<Inserted, StoreError>>),
    Call(Box<dyn FnOnce(Result<Inserted, StoreError>, JobRecord) + Send>),
}

impl InsertReply {
    fn send(self, outcome: Result<Inserted, StoreError>, record: JobRecord) {
        match self {
            InsertReply::Channel(tx) => {
                let _ = tx.send(outcome);
            }
            InsertReply::Call(f) => f(outcome, record),
        }
    }
}

pub struct GroupCommit {
    queue: Mutex<Vec<Write>>,
    /// The most writes queued at once. Each driver has at most one save queued and each
    /// request at most one new job, so a bound of drivers + requests in flight is never reached
    /// in normal operation; past it a new job is refused (503), never queued.
    bound: usize,
    writers: Arc<Semaphore>,
    slots: usize,
    /// Whether the last batch was written as one, or a write failed since (a new job's Tries
    /// go before it is stored only while the database takes writes: `Engine::accept`).
    healthy: AtomicBool,
    /// The writer tasks are the engine's: awaited at shutdown.
    tracker: TaskTracker,
}

impl GroupCommit {
    pub fn new(writers: usize, bound: usize, tracker: TaskTracker) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            bound: bound.max(1),
            writers: Arc::new(Semaphore::new(writers.max(1))),
            slots: writers.max(1),
            healthy: AtomicBool::new(true),
            tracker,
        }
    }

    /// Whether the last batch was written (false after a failed write, until one succeeds).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Write>> {
        // A poisoned queue only means a writer panicked while pushing or taking; it is valid.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a driver's `save` with whatever else is waiting, and return its outcome.
    pub async fn save(self: &Arc<Self>, pool: &Pool, save: Save) -> Result<Saved, StoreError> {
        let (tx, rx) = oneshot::channel();
        let queued = {
            let mut q = self.lock();
            q.push(Write::Save(Box::new(save), tx));
            q.len()
        };
        self.kick(pool, queued);
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
        self.insert_then(pool, row, record, InsertReply::Channel(tx));
        rx.await
            .map_err(|_| StoreError::Unavailable("the write was abandoned".into()))?
    }

    /// Queue a new job (as `insert`); `reply` hears its outcome, from the writer.
    pub fn insert_then(
        self: &Arc<Self>,
        pool: &Pool,
        row: NewJobRow,
        record: JobRecord,
        reply: InsertReply,
    ) {
        let queued = {
            let mut q = self.lock();
            if q.len() >= self.bound {
                drop(q);
                reply.send(
                    Err(StoreError::Overloaded("the accept queue is full")),
                    record,
                );
                return;
            }
            q.push(Write::Insert(Box::new((row, record)), reply));
            q.len()
        };
        self.kick(pool, queued);
    }

    /// Start a writer if none is writing, or if `queued` writes are enough to spill over to
    /// another free slot. Otherwise a running writer finds the queued write when it looks again
    /// (a writer looks once more after giving its slot back).
    fn kick(self: &Arc<Self>, pool: &Pool, queued: usize) {
        let writing = self.slots - self.writers.available_permits();
        if writing > 0 && queued < SPILL {
            return;
        }
        if let Ok(slot) = self.writers.clone().try_acquire_owned() {
            let (this, pool) = (self.clone(), pool.clone());
            self.tracker
                .spawn(async move { this.drain(slot, pool).await });
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
                write(&pool, batch, &self.healthy).await;
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

async fn write(pool: &Pool, batch: Vec<Write>, healthy: &AtomicBool) {
    let mut saves = Vec::new();
    let (mut new_jobs, mut job_replies) = (Vec::new(), Vec::new());
    for w in batch {
        match w {
            Write::Save(save, reply) => saves.push((*save, reply)),
            Write::Insert(new, reply) => {
                new_jobs.push(*new);
                job_replies.push(reply);
            }
        }
    }
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            healthy.store(false, Ordering::Relaxed);
            let e = StoreError::from(e).to_string();
            for (_, reply) in saves {
                let _ = reply.send(Err(StoreError::Unavailable(e.clone())));
            }
            for ((_, record), reply) in new_jobs.into_iter().zip(job_replies) {
                reply.send(Err(StoreError::Unavailable(e.clone())), record);
            }
            return;
        }
    };
    let save_refs: Vec<&Save> = saves.iter().map(|(s, _)| s).collect();
    let job_refs: Vec<(&NewJobRow, &JobRecord)> = new_jobs.iter().map(|(r, j)| (r, j)).collect();
    // Two statements at most, pipelined in one transaction and one commit when the batch has
    // both kinds (new jobs are always committed synchronously, so then the saves are too);
    // otherwise the one statement is its own transaction, synchronous if any save needs it.
    let both = !save_refs.is_empty() && !job_refs.is_empty();
    let durable = both || save_refs.iter().any(|s| s.durable);
    // Prepared first, so that nothing in either statement waits after BEGIN has gone: they go
    // in the order they are polled, and the COMMIT after them.
    let prepared = if both {
        store::prepare_batch(&client).await
    } else {
        Ok(())
    };
    let both = both && prepared.is_ok();
    let (begun, saved, inserted, committed) = futures::future::join4(
        async {
            if both {
                client.batch_execute("BEGIN").await
            } else {
                Ok(())
            }
        },
        async {
            if save_refs.is_empty() {
                Ok(Vec::new())
            } else {
                store::save_many(&client, &save_refs, durable).await
            }
        },
        async {
            if job_refs.is_empty() {
                Ok(Vec::new())
            } else {
                store::insert_many(&client, &job_refs).await
            }
        },
        async {
            if both {
                client.batch_execute("COMMIT").await
            } else {
                Ok(())
            }
        },
    )
    .await;
    // A statement that failed committed nothing of its writes, and in one transaction took the
    // other's with it (the COMMIT of a failed transaction rolls it back): they are written again
    // below, each on its own, so that one bad write fails only itself. (Should a commit itself
    // have failed on a lost connection, its fate is unknown, as for any single write: a save
    // written again is harmless, being fenced and stating whole rows; a new job written again
    // fails on its id, and its client hears an error, as it would have without batching.)
    healthy.store(
        begun.is_ok() && committed.is_ok() && saved.is_ok() && inserted.is_ok(),
        Ordering::Relaxed,
    );
    let (saved, inserted) =
        if both && (begun.is_err() || committed.is_err() || saved.is_err() || inserted.is_err()) {
            (
                Err(StoreError::Unavailable("the batch was rolled back".into())),
                Err(StoreError::Unavailable("the batch was rolled back".into())),
            )
        } else {
            (saved, inserted)
        };
    match saved {
        Ok(saved) if saved.len() == saves.len() => {
            for (result, (_, reply)) in saved.into_iter().zip(saves) {
                let _ = reply.send(Ok(result));
            }
        }
        _ => {
            for (save, reply) in saves {
                let _ = reply.send(store::save(&client, &save).await);
            }
        }
    }
    match inserted {
        // The statement committed: each job has its outcome (a replay whose key holder could
        // not be read has its own error, and is not written again).
        Ok(inserted) if inserted.len() == new_jobs.len() => {
            for ((result, (_, record)), reply) in
                inserted.into_iter().zip(new_jobs).zip(job_replies)
            {
                reply.send(result, record);
            }
        }
        _ => {
            for ((row, record), reply) in new_jobs.into_iter().zip(job_replies) {
                let outcome = store::insert_job(&client, &row, &record).await;
                reply.send(outcome, record);
            }
        }
    }
}
