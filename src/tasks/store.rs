//! The durable task store: one redb table of task records in
//! `<data_dir>/tasks.redb`.
//!
//! Writes go through one writer thread that commits everything queued since
//! its last commit in a single transaction (group commit), so a burst of
//! submits costs one fsync, not one each. Each queued change gets a ticket
//! (1, 2, 3, … in queue order); after each commit the writer publishes the
//! highest ticket it made durable ([`Commits`]), so whatever must wait for
//! a change — `task:accepted`, a `task:ack`, `task:assign`, the events —
//! waits for its ticket.
//!
//! A failed commit (a full disk, an I/O error) loses nothing: the changes
//! stay with the writer, which reopens the database (redb refuses every
//! commit after an I/O error until then) and retries them every
//! [`RETRY_AFTER`], and with every later batch, until a commit succeeds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use super::StoredTask;

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// How long the writer waits before retrying changes a failed commit left.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("task store: {0}")]
pub(crate) struct StoreError(String);

impl StoreError {
    fn from<E: std::fmt::Display>(err: E) -> Self {
        StoreError(err.to_string())
    }
}

/// One change for the writer thread.
enum Op {
    /// Insert or replace a task record (boxed: records are large, the
    /// other ops small), with its ticket.
    Put(u64, Box<StoredTask>),
    /// Drop a purged task, with its ticket.
    Remove(u64, String),
    /// Resolves once every earlier op is committed.
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// How far the writer got, by ticket: what the tasks waiting for a commit
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Commits {
    /// Every change up to this ticket is on disk.
    pub(crate) durable: u64,
    /// A commit that held every change up to this ticket failed (they are
    /// kept and retried; `durable` passes it once a retry succeeds).
    pub(crate) failed: u64,
}

impl Commits {
    /// What became of the change with `ticket`: `Some(true)` on disk,
    /// `Some(false)` its commit failed, `None` not tried yet.
    pub(crate) fn outcome(&self, ticket: u64) -> Option<bool> {
        if self.durable >= ticket {
            Some(true)
        } else if self.failed >= ticket {
            Some(false)
        } else {
            None
        }
    }
}

/// The sending end, with the last ticket given out: a ticket and its op
/// enter the queue together, so tickets follow the queue order.
struct Sender {
    ops: mpsc::Sender<Op>,
    last: u64,
}

/// Handle to the writer thread.
pub(crate) struct Store {
    /// Ops in order; the thread drains it in batches.
    sender: Mutex<Sender>,
    /// What the writer made durable so far.
    commits: watch::Receiver<Commits>,
    /// While true the writer commits nothing (tests: a stalled disk).
    #[cfg(any(test, feature = "test-hooks"))]
    held: Held,
}

/// A flag the writer waits on before each commit while it is set.
type Held = Arc<(Mutex<bool>, Condvar)>;

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
        let (tx, rx) = mpsc::channel();
        let (commits, commits_rx) = watch::channel(Commits::default());
        let held = Held::default();
        let writer = Writer::new(path.to_path_buf(), db, commits, Arc::clone(&held));
        thread::Builder::new()
            .name("chanhub-store".into())
            .spawn(move || writer.run(&rx))
            .map_err(StoreError::from)?;
        Ok((Store::new(tx, commits_rx, held), stored))
    }

    fn new(ops: mpsc::Sender<Op>, commits: watch::Receiver<Commits>, held: Held) -> Store {
        #[cfg(not(any(test, feature = "test-hooks")))]
        drop(held);
        Store {
            sender: Mutex::new(Sender { ops, last: 0 }),
            commits,
            #[cfg(any(test, feature = "test-hooks"))]
            held,
        }
    }

    /// Holds every commit from now on (`true`) until released (`false`):
    /// what a stalled disk does, for tests.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn hold_commits(&self, hold: bool) {
        let (flag, changed) = &*self.held;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = hold;
        changed.notify_all();
    }

    fn sender(&self) -> MutexGuard<'_, Sender> {
        self.sender.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write (committed with the next batch); returns its ticket.
    pub(crate) fn put(&self, task: StoredTask) -> u64 {
        let mut sender = self.sender();
        sender.last += 1;
        let _ = sender.ops.send(Op::Put(sender.last, Box::new(task)));
        sender.last
    }

    /// Queues a removal; returns its ticket.
    pub(crate) fn remove(&self, task_id: String) -> u64 {
        let mut sender = self.sender();
        sender.last += 1;
        let _ = sender.ops.send(Op::Remove(sender.last, task_id));
        sender.last
    }

    /// The ticket of the last change queued (0 before any).
    pub(crate) fn last_ticket(&self) -> u64 {
        self.sender().last
    }

    /// How far the writer got now. If the writer thread is gone (it
    /// cannot be, short of a bug), every change counts as failed.
    pub(crate) fn commits(&self) -> Commits {
        let mut commits = *self.commits.borrow();
        if self.commits.has_changed().is_err() {
            commits.failed = u64::MAX;
        }
        commits
    }

    /// A receiver told after each commit, successful or not.
    pub(crate) fn watch_commits(&self) -> watch::Receiver<Commits> {
        self.commits.clone()
    }

    /// Waits until the change with `ticket` (and every earlier one) is on
    /// disk; an error when the commit that held it failed.
    pub(crate) async fn committed(&self, ticket: u64) -> Result<(), StoreError> {
        let mut commits = self.commits.clone();
        loop {
            match commits.borrow_and_update().outcome(ticket) {
                Some(true) => return Ok(()),
                Some(false) => return Err(StoreError("the commit failed".into())),
                None => {}
            }
            commits
                .changed()
                .await
                .map_err(|_| StoreError("writer thread stopped".into()))?;
        }
    }

    /// Waits until everything queued so far is on disk, trying a failed
    /// commit again at once.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.sender()
            .ops
            .send(Op::Barrier(tx))
            .map_err(|_| StoreError("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| StoreError("writer thread stopped".into()))?
            .map_err(StoreError)
    }
}

/// Changes not yet on disk, by task id (`None`: remove). Only the last
/// change to a task matters, so a long outage holds one entry per task.
type Pending = HashMap<String, Option<Box<StoredTask>>>;

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    /// `None` after a failure, until it is reopened.
    db: Option<Database>,
    pending: Pending,
    /// The last commit failed.
    failing: bool,
    /// The highest ticket received: a successful commit makes every
    /// change up to it durable (pending holds all that are not yet).
    received: u64,
    /// Where the outcome of each commit is published.
    commits: watch::Sender<Commits>,
    /// Set while commits are held ([`Store::hold_commits`]).
    held: Held,
}

impl Writer {
    fn new(path: PathBuf, db: Database, commits: watch::Sender<Commits>, held: Held) -> Writer {
        Writer {
            path,
            db: Some(db),
            pending: HashMap::new(),
            failing: false,
            received: 0,
            commits,
            held,
        }
    }

    /// Returns once commits are not held.
    fn wait_while_held(&self) {
        let (flag, changed) = &*self.held;
        let mut held = flag.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = changed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Batches everything available, commits once, then answers the
    /// barriers in the batch. Ends when every `Store` handle is dropped.
    fn run(mut self, ops: &mpsc::Receiver<Op>) {
        loop {
            let first = if self.pending.is_empty() {
                match ops.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                }
            } else {
                match ops.recv_timeout(RETRY_AFTER) {
                    Ok(op) => Some(op),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        // Last chance for what is still pending.
                        let _ = self.commit();
                        return;
                    }
                }
            };
            self.wait_while_held();
            let mut barriers = Vec::new();
            for op in first.into_iter().chain(ops.try_iter()) {
                match op {
                    Op::Put(ticket, task) => {
                        self.received = ticket;
                        self.pending.insert(task.task.id.clone(), Some(task));
                    }
                    Op::Remove(ticket, id) => {
                        self.received = ticket;
                        self.pending.insert(id, None);
                    }
                    Op::Barrier(tx) => barriers.push(tx),
                }
            }
            let result = self.commit();
            let received = self.received;
            self.commits.send_if_modified(|commits| {
                let before = *commits;
                match result {
                    Ok(()) => commits.durable = received,
                    Err(_) => commits.failed = received,
                }
                *commits != before
            });
            for barrier in barriers {
                let _ = barrier.send(result.clone());
            }
        }
    }

    /// Commits every pending change in one transaction; on failure keeps
    /// them and drops the database so the next attempt reopens it.
    fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = reopen(&mut self.db, &self.path).and_then(|db| write(db, &self.pending));
        match &result {
            Ok(()) => {
                if self.failing {
                    tracing::info!(
                        written = self.pending.len(),
                        "task store commits again; the kept changes are on disk"
                    );
                }
                self.failing = false;
                self.pending.clear();
            }
            Err(e) => {
                self.failing = true;
                tracing::error!(
                    error = %e,
                    pending = self.pending.len(),
                    "task store commit failed; keeping the changes and retrying"
                );
                self.db = None;
            }
        }
        result
    }
}

/// The open database, reopening it first after a failure.
fn reopen<'a>(db: &'a mut Option<Database>, path: &Path) -> Result<&'a Database, String> {
    if db.is_none() {
        let opened = Database::create(path).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), "task store reopened");
        *db = Some(opened);
    }
    Ok(db.as_ref().expect("just opened"))
}

/// Writes `pending` in one transaction.
fn write(db: &Database, pending: &Pending) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TASKS).map_err(|e| e.to_string())?;
        for (id, change) in pending {
            match change {
                Some(task) => {
                    let bytes = serde_json::to_vec(task).map_err(|e| e.to_string())?;
                    table
                        .insert(id.as_str(), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    table.remove(id.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> StoredTask {
        serde_json::from_value(serde_json::json!({"seq": 1, "task": {
            "id": id, "type": "job:x", "payload": {"n": 1}, "priority": 5,
            "state": "queued", "attempt": 0, "maxAttempts": 3, "timeoutMs": 30000,
            "submittedBy": "s", "createdAt": 1, "updatedAt": 1}}))
        .expect("a task record")
    }

    /// A commit that fails keeps its changes; once the disk works again
    /// the next commit writes them, through a reopened database.
    #[tokio::test]
    async fn a_failed_commit_keeps_its_changes_until_one_succeeds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The database's directory is a file for now: opening fails.
        let dir = tmp.path().join("data");
        std::fs::write(&dir, b"not a directory").expect("blocker");
        let path = dir.join("tasks.redb");
        let (ops, rx) = mpsc::channel();
        let (commits, commits_rx) = watch::channel(Commits::default());
        let writer = Writer {
            path: path.clone(),
            db: None,
            pending: HashMap::new(),
            failing: false,
            received: 0,
            commits,
            held: Held::default(),
        };
        let thread = thread::spawn(move || writer.run(&rx));
        let store = Store::new(ops, commits_rx, Held::default());

        store.put(task("kept"));
        let second = store.put(task("removed"));
        assert!(store.sync().await.is_err(), "the commit cannot succeed yet");
        assert!(store.committed(second).await.is_err(), "its commit failed");
        let removed = store.remove("removed".into());
        assert!(store.sync().await.is_err());
        assert_eq!(store.commits().outcome(removed), Some(false));

        std::fs::remove_file(&dir).expect("unblock");
        std::fs::create_dir(&dir).expect("data dir");
        store.sync().await.expect("commits once the disk works");
        store.committed(removed).await.expect("durable now");
        assert_eq!(store.last_ticket(), removed);
        drop(store);
        thread.join().expect("writer ends");

        let db = Database::create(&path).expect("reopen");
        let read = db.begin_read().expect("read");
        let table = read.open_table(TASKS).expect("table");
        let ids: Vec<String> = table
            .iter()
            .expect("iter")
            .map(|row| row.expect("row").0.value().to_string())
            .collect();
        assert_eq!(ids, vec!["kept".to_string()]);
    }
}
