//! The task queue in Redis: every transition of a task is one Lua script
//! (see `tasks.lua` for the keys), so two nodes never both take a task, a
//! lease is either held or expired, and attempts and dedup keys stay
//! consistent whatever the nodes do concurrently. The node-side half
//! (workers, events, messages) is the cluster task service in `tasks/`.
//!
//! A submit is idempotent: the task's id comes with it, and a task that
//! exists already is the answer. So a submit Redis ran but never answered
//! (it froze, the connection dropped) is sent again with the same id once
//! Redis answers, and queues nothing twice. A new task is *staged*: it
//! becomes claimable only when its node releases it ([`RedisEngine::
//! task_enqueue`]), after its `task:queued` event; a staged task its node
//! never released (the node died) is released by any node's reaper after
//! [`RedisEngine::stage_for`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::{Failed, RedisEngine, unavailable};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::tasks::TaskView;

/// The helpers every task script starts with.
const COMMON: &str = include_str!("tasks.lua");

/// ARGV: P, id, record JSON, type, priority, timeout, max attempts, dedup
/// key or '', submitted by, submitter, max queued, now, stage ms. A task
/// with this id exists already: this submit ran before (its reply was
/// lost), so it is the answer.
const SUBMIT: &str = r#"
if redis.call('EXISTS', P .. 'task:' .. ARGV[2]) == 1 then return {ARGV[2], 0} end
local dk = ARGV[8]
if dk ~= '' then
  local existing = redis.call('GET', P .. 'dedup:' .. dk)
  if existing then return {existing, 1} end
end
if tonumber(redis.call('GET', P .. 'waiting') or '0') >= tonumber(ARGV[11]) then
  return redis.error_reply('queue_full')
end
local seq = redis.call('INCR', P .. 'seq')
local score = (9 - tonumber(ARGV[5])) * 10000000000000 + seq
local tkey = P .. 'task:' .. ARGV[2]
redis.call('HSET', tkey, 'v', ARGV[3], 'type', ARGV[4], 'timeout', ARGV[6], 'max', ARGV[7],
  'dedup', dk, 'sub', ARGV[9], 'submitter', ARGV[10], 'score', score, 'attempt', 0,
  'state', 'queued', 'updated', ARGV[12], 'node', '', 'worker', '')
if dk ~= '' then redis.call('SET', P .. 'dedup:' .. dk, ARGV[2]) end
redis.call('ZADD', P .. 'staged', now_ms() + tonumber(ARGV[13]), ARGV[2])
redis.call('INCR', P .. 'waiting')
return {ARGV[2], 0}
"#;

/// ARGV: P, id. Its node releases a staged task to the queue (a no-op
/// when it is not staged: released already, or cancelled).
const ENQUEUE: &str = r#"
return unstage(ARGV[2])
"#;

/// ARGV: P, node, worker, now, then the types the worker can take. Takes
/// the best queued task among them (priority, then age) under a lease. A
/// task whose lease this worker just let expire (`prev`) is passed over
/// once, so another worker that can take it gets it first, as on the
/// memory engine; the next claim by anyone may take it.
const CLAIM: &str = r#"
local best, best_score, best_kind = nil, nil, nil
local me = ARGV[2] .. '|' .. ARGV[3]
for i = 5, #ARGV do
  local head = redis.call('ZRANGE', P .. 'q:' .. ARGV[i], 0, 1, 'WITHSCORES')
  local j = 1
  if head[1] and redis.call('HGET', P .. 'task:' .. head[1], 'prev') == me then
    redis.call('HDEL', P .. 'task:' .. head[1], 'prev')
    j = 3
  end
  if head[j] and (not best_score or tonumber(head[j + 1]) < best_score) then
    best, best_score, best_kind = head[j], tonumber(head[j + 1]), ARGV[i]
  end
end
if not best then return false end
local q = P .. 'q:' .. best_kind
redis.call('ZREM', q, best)
if redis.call('ZCARD', q) == 0 then redis.call('SREM', P .. 'types', best_kind) end
redis.call('DECR', P .. 'waiting')
local tkey = P .. 'task:' .. best
local lease = now_ms() + tonumber(redis.call('HGET', tkey, 'timeout'))
redis.call('HINCRBY', tkey, 'attempt', 1)
redis.call('HSET', tkey, 'state', 'assigned', 'node', ARGV[2], 'worker', ARGV[3],
  'updated', ARGV[4], 'lease', lease)
redis.call('ZADD', P .. 'leases', lease, best)
return redis.call('HGETALL', tkey)
"#;

/// ARGV: P, id, node, worker, progress or '', has message '1'/'0',
/// message, now. Extends the lease.
const PROGRESS: &str = r#"
local tkey = P .. 'task:' .. ARGV[2]
if not held(tkey, ARGV[3], ARGV[4]) then return redis.error_reply('not_assigned') end
if ARGV[5] ~= '' then redis.call('HSET', tkey, 'progress', ARGV[5]) end
if ARGV[6] == '1' then redis.call('HSET', tkey, 'message', ARGV[7]) end
local lease = now_ms() + tonumber(redis.call('HGET', tkey, 'timeout'))
redis.call('HSET', tkey, 'updated', ARGV[8], 'lease', lease)
redis.call('ZADD', P .. 'leases', lease, ARGV[2])
return redis.call('HGETALL', tkey)
"#;

/// ARGV: P, id, node, worker, result JSON, now, retention ms. A task this
/// holder completed already answers `completed_by_holder`: the reply to
/// that first complete may have been lost (Redis went away after running
/// it), and the node decides whether the worker was told.
const COMPLETE: &str = r#"
local tkey = P .. 'task:' .. ARGV[2]
if not held(tkey, ARGV[3], ARGV[4]) then
  if redis.call('HGET', tkey, 'state') == 'completed'
    and redis.call('HGET', tkey, 'node') == ARGV[3]
    and redis.call('HGET', tkey, 'worker') == ARGV[4] then
    return redis.error_reply('completed_by_holder')
  end
  return redis.error_reply('not_assigned')
end
redis.call('HSET', tkey, 'result', ARGV[5], 'progress', 100)
finish(tkey, ARGV[2], 'completed', ARGV[6], ARGV[7])
return redis.call('HGETALL', tkey)
"#;

/// ARGV: P, id, node, worker, error JSON, retryable '1'/'0', now,
/// backoff ms, retention ms. A task this holder's error dead-lettered
/// already answers `failed_by_holder` (see `COMPLETE`); `closer` records
/// who did.
const FAIL: &str = r#"
local tkey = P .. 'task:' .. ARGV[2]
if not held(tkey, ARGV[3], ARGV[4]) then
  if redis.call('HGET', tkey, 'state') == 'dead'
    and redis.call('HGET', tkey, 'closer') == ARGV[3] .. '|' .. ARGV[4] then
    return redis.error_reply('failed_by_holder')
  end
  return redis.error_reply('not_assigned')
end
redis.call('HSET', tkey, 'error', ARGV[5])
redis.call('ZREM', P .. 'leases', ARGV[2])
local attempt = tonumber(redis.call('HGET', tkey, 'attempt'))
if ARGV[6] == '1' and attempt < tonumber(redis.call('HGET', tkey, 'max')) then
  redis.call('HSET', tkey, 'state', 'failed', 'updated', ARGV[7], 'node', '', 'worker', '')
  redis.call('ZADD', P .. 'delayed', now_ms() + tonumber(ARGV[8]), ARGV[2])
  redis.call('INCR', P .. 'waiting')
else
  finish(tkey, ARGV[2], 'dead', ARGV[7], ARGV[9])
  redis.call('HSET', tkey, 'closer', ARGV[3] .. '|' .. ARGV[4])
end
return redis.call('HGETALL', tkey)
"#;

/// ARGV: P, id, node, worker, why, now, retention ms. The holder gave the
/// task up (its connection ended).
const RELEASE: &str = r#"
local tkey = P .. 'task:' .. ARGV[2]
if not held(tkey, ARGV[3], ARGV[4]) then return false end
release(tkey, ARGV[2], ARGV[5], ARGV[6], ARGV[7])
return redis.call('HGETALL', tkey)
"#;

/// ARGV: P, now (for records), retention ms. Expired leases (by Redis's
/// clock) back to the queue (or dead), staged tasks past their time and
/// finished backoffs to the queue; returns {old node, old worker, record}
/// for each.
const REAP: &str = r#"
local out = {}
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local tkey = P .. 'task:' .. id
  if redis.call('HGET', tkey, 'state') == 'assigned' then
    local node = redis.call('HGET', tkey, 'node')
    local worker = redis.call('HGET', tkey, 'worker')
    redis.call('HSET', tkey, 'prev', node .. '|' .. worker)
    release(tkey, id, 'lease expired', ARGV[2], ARGV[3])
    table.insert(out, {node, worker, redis.call('HGETALL', tkey)})
  else
    redis.call('ZREM', P .. 'leases', id)
  end
end
local staged = redis.call('ZRANGEBYSCORE', P .. 'staged', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(staged) do
  if unstage(id) == 1 then
    table.insert(out, {'', '', redis.call('HGETALL', P .. 'task:' .. id)})
  end
end
local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', P .. 'delayed', id)
  local tkey = P .. 'task:' .. id
  if redis.call('HGET', tkey, 'state') == 'failed' then
    redis.call('DECR', P .. 'waiting')
    requeue(tkey, id, ARGV[2])
    table.insert(out, {'', '', redis.call('HGETALL', tkey)})
  end
end
return out
"#;

/// ARGV: P, id, by (submitter's sub, '' for an admin), now, retention ms.
/// Returns {old node, old worker, record}.
const CANCEL: &str = r#"
local tkey = P .. 'task:' .. ARGV[2]
if redis.call('EXISTS', tkey) == 0 then return redis.error_reply('not_found') end
if ARGV[3] ~= '' and redis.call('HGET', tkey, 'sub') ~= ARGV[3] then
  return redis.error_reply('forbidden')
end
local state = redis.call('HGET', tkey, 'state')
if state == 'completed' or state == 'dead' or state == 'cancelled' then
  return redis.error_reply('invalid_state ' .. state)
end
local node, worker = '', ''
if state == 'queued' then
  local q = P .. 'q:' .. redis.call('HGET', tkey, 'type')
  redis.call('ZREM', P .. 'staged', ARGV[2])
  redis.call('ZREM', q, ARGV[2])
  if redis.call('ZCARD', q) == 0 then redis.call('SREM', P .. 'types', redis.call('HGET', tkey, 'type')) end
  redis.call('DECR', P .. 'waiting')
elseif state == 'failed' then
  redis.call('ZREM', P .. 'delayed', ARGV[2])
  redis.call('DECR', P .. 'waiting')
else
  node = redis.call('HGET', tkey, 'node')
  worker = redis.call('HGET', tkey, 'worker')
end
finish(tkey, ARGV[2], 'cancelled', ARGV[4], ARGV[5])
return {node, worker, redis.call('HGETALL', tkey)}
"#;

/// A task as Redis holds it.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    /// The record as the API and events show it.
    pub view: TaskView,
    /// Who submitted it: (node id, connection id), for `task:result`.
    pub submitter: Option<(u64, u64)>,
    /// The lease end of the current assignment (ms since the Unix epoch).
    pub lease: u64,
    /// Submission order across the cluster (from the queue score).
    pub seq: u64,
}

impl TaskRecord {
    /// Builds a record from a task hash (`HGETALL` as a flat list).
    fn parse(flat: Vec<String>) -> Option<TaskRecord> {
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            fields.insert(k, v);
        }
        let get = |k: &str| fields.get(k).filter(|v| !v.is_empty());
        let mut view: TaskView = serde_json::from_str(get("v")?).ok()?;
        view.state = get("state")?.parse().ok()?;
        view.attempt = get("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
        // In a cluster a worker is named by its node and its connection:
        // connection ids count from 1 on every node.
        let node = get("node");
        view.worker_id = get("worker").map(|worker| match node {
            Some(node) => worker_id(node, worker),
            None => worker.clone(),
        });
        view.hub = node.map(|node| node.as_str().into());
        view.progress = get("progress").and_then(|p| p.parse().ok());
        view.message = get("message").cloned();
        view.result = get("result").and_then(|r| serde_json::from_str::<Value>(r).ok());
        view.error = get("error").and_then(|e| serde_json::from_str::<Value>(e).ok());
        if let Some(updated) = get("updated").and_then(|u| u.parse().ok()) {
            view.updated_at = updated;
        }
        let submitter = get("submitter").and_then(|s| {
            let (node, conn) = s.split_once('|')?;
            Some((u64::from_str_radix(node, 16).ok()?, conn.parse().ok()?))
        });
        let lease = get("lease").and_then(|l| l.parse().ok()).unwrap_or(0);
        // score = (9 - priority) * 1e13 + seq
        let seq = get("score")
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |score| (score as u64) % 10_000_000_000_000);
        Some(TaskRecord {
            view,
            submitter,
            lease,
            seq,
        })
    }
}

/// A record that lost its holder, with that holder.
#[derive(Debug)]
pub(crate) struct Released {
    /// The previous holder (node, worker), if it was assigned.
    pub holder: Option<(u64, u64)>,
    /// The task now.
    pub record: TaskRecord,
}

impl Released {
    fn parse((node, worker, flat): (String, String, Vec<String>)) -> Option<Released> {
        let holder = u64::from_str_radix(&node, 16).ok().zip(worker.parse().ok());
        Some(Released {
            holder,
            record: TaskRecord::parse(flat)?,
        })
    }
}

/// What submitting gave: the task id, and whether it was a duplicate.
#[derive(Debug)]
pub(crate) struct Submitted {
    /// The new task's id, or the unfinished one with the same dedup key.
    pub task_id: String,
    /// True when `task_id` is an existing task.
    pub deduplicated: bool,
}

/// A submit's fields.
pub(crate) struct NewTask<'a> {
    /// The record at submit.
    pub view: &'a TaskView,
    /// `<node hex>|<conn>` of the submitting connection, or ''.
    pub submitter: String,
    /// `tasks.max_queued`.
    pub max_queued: usize,
}

impl RedisEngine {
    /// The cluster-wide worker id of this node's connection `conn`.
    pub(crate) fn worker_id(&self, conn: u64) -> String {
        worker_id(&self.node_id(), conn)
    }

    fn script(&self, body: &str) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(format!("{COMMON}\n{body}"))
            .arg(0)
            .arg(&self.config.key_prefix);
        pipe
    }

    /// Runs a task script; maps its error replies to request errors.
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RequestError> {
        self.try_script(pipe).await.map_err(Failed::into_error)
    }

    /// Runs a task script, telling an error reply from no reply.
    async fn try_script<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Failed> {
        let mut conn = self.reader().await.map_err(Failed::Unanswered)?;
        match tokio::time::timeout(self.config.timeout, pipe.query_async::<(T,)>(&mut conn)).await {
            Ok(Ok((value,))) => Ok(value),
            // The connection failed: Redis is (for now) out of reach.
            Ok(Err(err)) if super::is_unanswered(&err) => {
                Err(Failed::Unanswered(self.lost(&err.to_string())))
            }
            // An error reply of the script (or of Redis about it); in a
            // pipeline it comes wrapped, without a top-level code.
            Ok(Err(err)) => Err(Failed::Answered(script_error(&err))),
            Err(_) => Err(Failed::Unanswered(self.lost("task command timed out"))),
        }
    }

    /// How long a new task stays staged before any node's reaper releases
    /// it: well beyond the time its own node may spend sending the submit
    /// again and then the release (see [`RedisEngine::retry_for`]).
    fn stage_for(&self) -> Duration {
        self.retry_for() * 3
    }

    /// Releases a staged task to the queue, behind everything this node
    /// published so far (its `task:queued` event), and tells every node.
    /// Not sent (Redis unreachable), it is released by a reaper later.
    pub(crate) fn task_enqueue(&self, task_id: &str) {
        let mut eval = redis::cmd("EVAL");
        eval.arg(format!("{COMMON}\n{ENQUEUE}"))
            .arg(0)
            .arg(&self.config.key_prefix)
            .arg(task_id);
        if self.send_command(eval) {
            self.announce_tasks();
        }
    }

    /// Queues a task (or finds the unfinished one with its dedup key).
    pub(crate) async fn task_submit(&self, task: NewTask<'_>) -> Result<Submitted, RequestError> {
        let view = task.view;
        let record = serde_json::to_string(view).map_err(|e| {
            RequestError::new(
                ErrorCode::BadRequest,
                format!("task does not serialize: {e}"),
            )
        })?;
        let mut pipe = self.script(SUBMIT);
        pipe.arg(&view.id)
            .arg(record)
            .arg(&view.kind)
            .arg(view.priority)
            .arg(view.timeout_ms)
            .arg(view.max_attempts)
            .arg(view.dedup_key.as_deref().unwrap_or(""))
            .arg(&view.submitted_by)
            .arg(task.submitter)
            .arg(task.max_queued)
            .arg(view.created_at)
            .arg(self.stage_for().as_millis() as u64);
        // Sent again with the same id while Redis may have run it without
        // answering: a no-op then, so the task is queued once.
        let deadline = tokio::time::Instant::now() + self.retry_for();
        let (task_id, dup): (String, u8) = loop {
            match self.try_script(&pipe).await {
                Ok(reply) => break reply,
                Err(Failed::Answered(err)) => return Err(err),
                Err(Failed::Unanswered(err)) => {
                    self.write_unanswered(super::Write::Submit);
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() || !self.wait_ready(left).await {
                        return Err(err);
                    }
                    tracing::info!(
                        task_id = view.id,
                        "a submit went unanswered; sending it again"
                    );
                }
            }
        };
        Ok(Submitted {
            task_id,
            deduplicated: dup == 1,
        })
    }

    /// Takes the best queued task of `kinds` for `worker` of this node.
    pub(crate) async fn task_claim(
        &self,
        worker: u64,
        kinds: &[String],
        now_ms: u64,
    ) -> Result<Option<TaskRecord>, RequestError> {
        let mut pipe = self.script(CLAIM);
        pipe.arg(self.node_id()).arg(worker).arg(now_ms);
        for kind in kinds {
            pipe.arg(kind);
        }
        let flat: Option<Vec<String>> = self.run_script(&pipe).await?;
        Ok(flat.and_then(TaskRecord::parse))
    }

    /// One task, if Redis still has it (finished ones until the retention
    /// ends).
    pub(crate) async fn task_get(&self, task_id: &str) -> Result<Option<TaskRecord>, RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(format!("{}task:{task_id}", self.config.key_prefix));
        let (flat,): (Vec<String>,) = self.read(&pipe).await?;
        Ok(TaskRecord::parse(flat))
    }

    /// Every task Redis holds (unfinished ones, and finished ones until the
    /// retention ends): a SCAN over the task keys, then their hashes. An
    /// operator's view, linear in the number of tasks.
    pub(crate) async fn task_list(&self) -> Result<Vec<TaskRecord>, RequestError> {
        let keys = self.scan_keys("task:*").await?;
        let mut records = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HGETALL").arg(key);
            }
            let flats: Vec<Vec<String>> = self.read(&pipe).await?;
            records.extend(flats.into_iter().filter_map(TaskRecord::parse));
        }
        Ok(records)
    }

    /// Tasks waiting for a worker or a retry, cluster-wide.
    pub(crate) async fn task_waiting(&self) -> Result<usize, RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(format!("{}waiting", self.config.key_prefix));
        let (waiting,): (Option<i64>,) = self.read(&pipe).await?;
        Ok(waiting.unwrap_or(0).max(0) as usize)
    }

    /// Types with queued tasks.
    pub(crate) async fn task_types(&self) -> Result<Vec<String>, RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS")
            .arg(format!("{}types", self.config.key_prefix));
        let (types,): (Vec<String>,) = self.read(&pipe).await?;
        Ok(types)
    }

    /// `task:progress` from `worker` of this node.
    pub(crate) async fn task_progress(
        &self,
        worker: u64,
        task_id: &str,
        progress: Option<u8>,
        message: Option<&str>,
        now_ms: u64,
    ) -> Result<TaskRecord, RequestError> {
        let mut pipe = self.script(PROGRESS);
        pipe.arg(task_id)
            .arg(self.node_id())
            .arg(worker)
            .arg(progress.map(|p| p.min(100).to_string()).unwrap_or_default())
            .arg(if message.is_some() { "1" } else { "0" })
            .arg(message.unwrap_or(""))
            .arg(now_ms);
        self.record(pipe).await
    }

    /// `task:complete` from `worker` of this node: the completed record,
    /// and whether an earlier complete of this worker had done it already
    /// (its reply was lost).
    pub(crate) async fn task_complete(
        &self,
        worker: u64,
        task_id: &str,
        result: &Value,
        now_ms: u64,
        retention: Duration,
    ) -> Result<(TaskRecord, bool), RequestError> {
        let mut pipe = self.script(COMPLETE);
        pipe.arg(task_id)
            .arg(self.node_id())
            .arg(worker)
            .arg(result.to_string())
            .arg(now_ms)
            .arg(retention.as_millis().max(1) as u64);
        self.record_or_again(pipe, task_id, COMPLETED_BY_HOLDER)
            .await
    }

    /// Runs a complete or fail script: its record, or — when it answers
    /// that this holder had finished the task already (`again`) — the
    /// record as it is, with `true`.
    async fn record_or_again(
        &self,
        pipe: redis::Pipeline,
        task_id: &str,
        again: &str,
    ) -> Result<(TaskRecord, bool), RequestError> {
        match self.record(pipe).await {
            Ok(record) => Ok((record, false)),
            Err(err) if err.message == again => {
                let record = self
                    .task_get(task_id)
                    .await?
                    .ok_or_else(|| RequestError::new(ErrorCode::NotFound, "no such task"))?;
                Ok((record, true))
            }
            Err(err) => Err(err),
        }
    }

    /// `task:error` from `worker` of this node: the record, and whether an
    /// earlier error of this worker had dead-lettered it already (its reply
    /// was lost).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn task_fail(
        &self,
        worker: u64,
        task_id: &str,
        error: &Value,
        retryable: bool,
        now_ms: u64,
        backoff: Duration,
        retention: Duration,
    ) -> Result<(TaskRecord, bool), RequestError> {
        let mut pipe = self.script(FAIL);
        pipe.arg(task_id)
            .arg(self.node_id())
            .arg(worker)
            .arg(error.to_string())
            .arg(if retryable { "1" } else { "0" })
            .arg(now_ms)
            .arg(backoff.as_millis() as u64)
            .arg(retention.as_millis().max(1) as u64);
        self.record_or_again(pipe, task_id, FAILED_BY_HOLDER).await
    }

    /// `worker` of this node is gone: its task goes back to the queue.
    pub(crate) async fn task_release(
        &self,
        worker: u64,
        task_id: &str,
        why: &str,
        now_ms: u64,
        retention: Duration,
    ) -> Result<Option<TaskRecord>, RequestError> {
        let mut pipe = self.script(RELEASE);
        pipe.arg(task_id)
            .arg(self.node_id())
            .arg(worker)
            .arg(why)
            .arg(now_ms)
            .arg(retention.as_millis().max(1) as u64);
        let flat: Option<Vec<String>> = self.run_script(&pipe).await?;
        Ok(flat.and_then(TaskRecord::parse))
    }

    /// Expired leases and finished backoffs, on any node's tasks.
    pub(crate) async fn task_reap(
        &self,
        now_ms: u64,
        retention: Duration,
    ) -> Result<Vec<Released>, RequestError> {
        let mut pipe = self.script(REAP);
        pipe.arg(now_ms).arg(retention.as_millis().max(1) as u64);
        let out: Vec<(String, String, Vec<String>)> = self.run_script(&pipe).await?;
        Ok(out.into_iter().filter_map(Released::parse).collect())
    }

    /// Cancels a task; `by` is the caller's `sub`, `None` for an admin.
    pub(crate) async fn task_cancel(
        &self,
        task_id: &str,
        by: Option<&str>,
        now_ms: u64,
        retention: Duration,
    ) -> Result<Released, RequestError> {
        let mut pipe = self.script(CANCEL);
        pipe.arg(task_id)
            .arg(by.unwrap_or(""))
            .arg(now_ms)
            .arg(retention.as_millis().max(1) as u64);
        let out: (String, String, Vec<String>) = self.run_script(&pipe).await?;
        Released::parse(out).ok_or_else(|| unavailable("a task record in Redis does not parse"))
    }

    async fn record(&self, pipe: redis::Pipeline) -> Result<TaskRecord, RequestError> {
        let flat: Vec<String> = self.run_script(&pipe).await?;
        TaskRecord::parse(flat).ok_or_else(|| unavailable("a task record in Redis does not parse"))
    }
}

/// The cluster-wide id of connection `conn` of node `node` (16 hex digits)
/// as a worker: `<node>-<conn>`.
pub(crate) fn worker_id(node: &str, conn: impl std::fmt::Display) -> String {
    format!("{node}-{conn}")
}

/// The message of a complete that found the task completed by the same
/// worker already.
const COMPLETED_BY_HOLDER: &str = "the task is already completed";

/// The message of an error that found the task dead-lettered by the same
/// worker already.
const FAILED_BY_HOLDER: &str = "the task is already dead";

/// A script's error reply as a request error.
fn script_error(err: &redis::RedisError) -> RequestError {
    let text = err.to_string();
    let (code, message) = if text.contains("completed_by_holder") {
        (ErrorCode::InvalidState, COMPLETED_BY_HOLDER.to_string())
    } else if text.contains("failed_by_holder") {
        (ErrorCode::InvalidState, FAILED_BY_HOLDER.to_string())
    } else if text.contains("queue_full") {
        (ErrorCode::QueueFull, "the task queue is full".to_string())
    } else if text.contains("not_assigned") {
        (
            ErrorCode::NotAssigned,
            "this connection does not hold that task".to_string(),
        )
    } else if text.contains("not_found") {
        (ErrorCode::NotFound, "no such task".to_string())
    } else if text.contains("forbidden") {
        (
            ErrorCode::Forbidden,
            "only the submitter or an admin may cancel this task".to_string(),
        )
    } else if let Some(rest) = text.split("invalid_state").nth(1) {
        // `invalid_state cancelled`, or `"invalid_state": cancelled)]`
        // when redis-rs reports it from a pipeline.
        let state = rest
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or("finished");
        (
            ErrorCode::InvalidState,
            format!("the task is already {state}"),
        )
    } else {
        (ErrorCode::EngineUnavailable, format!("Redis: {text}"))
    };
    RequestError::new(code, message)
}

/// `text` as a literal inside a Redis glob pattern.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
