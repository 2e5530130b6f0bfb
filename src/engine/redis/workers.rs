//! The cluster's workers: each node keeps a snapshot of its own workers
//! (a JSON array) in `<prefix>workers:<node>`, expiring after
//! `redis.presence_ttl` unless the node renews it, so `GET /api/workers` on
//! any node lists every live node's workers, and a node that dies drops
//! out of the list within that time.

use super::RedisEngine;
use crate::error::RequestError;

impl RedisEngine {
    fn workers_key(&self, node: &str) -> String {
        format!("{}workers:{node}", self.config.key_prefix)
    }

    /// Replaces this node's snapshot (in order with the node's other
    /// writes); false when it could not be queued.
    pub(crate) fn store_workers(&self, snapshot: String) -> bool {
        let mut set = redis::cmd("SET");
        set.arg(self.workers_key(&self.node_id()))
            .arg(snapshot)
            .arg("PX")
            .arg(self.config.presence_ttl.as_millis().max(1) as u64);
        self.send_command(set)
    }

    /// Removes this node's snapshot (graceful shutdown).
    pub(crate) fn forget_workers(&self) {
        let mut del = redis::cmd("DEL");
        del.arg(self.workers_key(&self.node_id()));
        self.send_command(del);
    }

    /// How often a node renews its snapshot: well within its TTL.
    pub(crate) fn workers_refresh(&self) -> std::time::Duration {
        self.config.presence_ttl / 3
    }

    /// The snapshots of the other live nodes.
    pub(crate) async fn other_workers(&self) -> Result<Vec<String>, RequestError> {
        let own = self.workers_key(&self.node_id());
        let mut keys = self.scan_keys("workers:*").await?;
        keys.retain(|k| *k != own);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&keys);
        let (snapshots,): (Vec<Option<String>>,) = self.read(&pipe).await?;
        Ok(snapshots.into_iter().flatten().collect())
    }
}
