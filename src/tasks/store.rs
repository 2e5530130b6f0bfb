//! The durable task store: one redb table of task records in
//! `<data_dir>/tasks.redb`.
//!
//! Writes go through one writer thread that commits everything queued since
//! its last commit in a single transaction (group commit), so a burst of
//! submits costs one fsync, not one each. A submit waits for the commit that
//! contains it before `task:accepted` is sent.

use std::path::Path;
use std::thread;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::StoredTask;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("task store: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn from<E: std::fmt::Display>(err: E) -> Self {
        StoreError(err.to_string())
    }
}

/// One change for the writer thread.
enum Op {
    /// Insert or replace a task record (boxed: records are large, the
    /// other ops small).
    Put(Box<StoredTask>),
    /// Drop a purged task.
    Remove(String),
    /// Resolves once every earlier op is committed.
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// Handle to the writer thread.
#[derive(Clone)]
pub(crate) struct Store {
    /// Ops in order; the thread drains it in batches.
    ops: mpsc::UnboundedSender<Op>,
}

impl Store {
    /// Opens (or creates) the database and returns the stored tasks.
    pub(crate) fn open(path: &Path) -> Result<(Store, Vec<StoredTask>), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::from)?;
        }
        let db = Database::create(path).map_err(StoreError::from)?;
        let txn = db.begin_write().map_err(StoreError::from)?;
        txn.open_table(TASKS).map_err(StoreError::from)?;
        txn.commit().map_err(StoreError::from)?;
        let mut stored = Vec::new();
        {
            let read = db.begin_read().map_err(StoreError::from)?;
            let table = read.open_table(TASKS).map_err(StoreError::from)?;
            for row in table.iter().map_err(StoreError::from)? {
                let (key, value) = row.map_err(StoreError::from)?;
                match serde_json::from_slice::<StoredTask>(value.value()) {
                    Ok(task) => stored.push(task),
                    Err(e) => {
                        tracing::error!(task_id = key.value(), error = %e, "unreadable task record skipped")
                    }
                }
            }
        }
        stored.sort_by_key(|t| t.seq);
        let (tx, rx) = mpsc::unbounded_channel();
        thread::Builder::new()
            .name("chanhub-store".into())
            .spawn(move || writer(db, rx))
            .map_err(StoreError::from)?;
        Ok((Store { ops: tx }, stored))
    }

    /// Queues a write (committed with the next batch).
    pub(crate) fn put(&self, task: StoredTask) {
        let _ = self.ops.send(Op::Put(Box::new(task)));
    }

    /// Queues a removal.
    pub(crate) fn remove(&self, task_id: String) {
        let _ = self.ops.send(Op::Remove(task_id));
    }

    /// Waits until everything queued so far is on disk.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Barrier(tx))
            .map_err(|_| StoreError("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError("writer thread stopped".into()))?
            .map_err(StoreError)
    }
}

/// The writer thread: batch everything available, commit once, then answer
/// the barriers in the batch. Ends when every `Store` handle is dropped.
fn writer(db: Database, mut ops: mpsc::UnboundedReceiver<Op>) {
    while let Some(first) = ops.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(op) = ops.try_recv() {
            batch.push(op);
        }
        let mut barriers = Vec::new();
        let result = commit(&db, &mut batch, &mut barriers);
        if let Err(e) = &result {
            tracing::error!(error = %e, "task store commit failed");
        }
        for barrier in barriers {
            let _ = barrier.send(result.clone());
        }
    }
}

fn commit(
    db: &Database,
    batch: &mut Vec<Op>,
    barriers: &mut Vec<oneshot::Sender<Result<(), String>>>,
) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TASKS).map_err(|e| e.to_string())?;
        for op in batch.drain(..) {
            match op {
                Op::Put(task) => {
                    let bytes = serde_json::to_vec(&task).map_err(|e| e.to_string())?;
                    table
                        .insert(task.task.id.as_str(), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Op::Remove(id) => {
                    table.remove(id.as_str()).map_err(|e| e.to_string())?;
                }
                Op::Barrier(tx) => barriers.push(tx),
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}
