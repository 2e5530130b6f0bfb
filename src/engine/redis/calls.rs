//! The cluster's call servers: each node keeps what its connections serve
//! (a JSON object of method patterns and total concurrency) in
//! `<prefix>calls:<node>`, expiring after `redis.presence_ttl` unless the
//! node renews it, so a node that dies stops being a server of anything
//! within that time. Nodes are found through the heartbeat's node set.

use std::time::Duration;

use super::RedisEngine;
use crate::error::RequestError;

impl RedisEngine {
    fn calls_key(&self, node: &str) -> String {
        format!("{}calls:{node}", self.config.key_prefix)
    }

    /// Stores this node's servers, and returns the ids of the other nodes
    /// (to tell them). Waits for Redis: a `serve` is acknowledged once any
    /// node can route to it.
    pub(crate) async fn store_call_servers(
        &self,
        snapshot: &str,
    ) -> Result<Vec<u64>, RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.calls_key(&self.node_id()))
            .arg(snapshot)
            .arg("PX")
            .arg(self.config.presence_ttl.as_millis().max(1) as u64)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.nodes_key())
            .arg(self.node_id())
            .ignore();
        pipe.cmd("SMEMBERS").arg(self.nodes_key());
        let (nodes,): (Vec<String>,) = self.read(&pipe).await?;
        Ok(nodes
            .iter()
            .filter_map(|n| u64::from_str_radix(n, 16).ok())
            .filter(|n| *n != self.node)
            .collect())
    }

    /// The other nodes' servers: `(node, snapshot)` for every node in the
    /// node set whose snapshot has not expired.
    pub(crate) async fn call_servers(&self) -> Result<Vec<(u64, String)>, RequestError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.nodes_key());
        let (nodes,): (Vec<String>,) = self.read(&pipe).await?;
        let nodes: Vec<(u64, String)> = nodes
            .into_iter()
            .filter_map(|n| Some((u64::from_str_radix(&n, 16).ok()?, n)))
            .filter(|(id, _)| *id != self.node)
            .collect();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|(_, n)| self.calls_key(n)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&keys);
        let (snapshots,): (Vec<Option<String>>,) = self.read(&pipe).await?;
        Ok(nodes
            .into_iter()
            .zip(snapshots)
            .filter_map(|((id, _), snapshot)| Some((id, snapshot?)))
            .collect())
    }

    /// Removes this node's servers (graceful shutdown).
    pub(crate) fn forget_call_servers(&self) {
        let mut del = redis::cmd("DEL");
        del.arg(self.calls_key(&self.node_id()));
        self.send_command(del);
    }

    /// How often a node renews its servers and re-reads the others': well
    /// within their TTL, and at least once per health check period.
    pub(crate) fn call_servers_refresh(&self) -> Duration {
        self.config
            .health_interval
            .min(self.config.presence_ttl / 3)
    }
}
