//! Presence across nodes: one hash per channel, a field per member
//! (`<node>:<connection>` → its `PresenceInfo`), written in order with the
//! node's other writes. Every node renews its heartbeat key
//! (`<prefix>alive:<node>`, TTL `redis.presence_ttl`) with each health
//! check; a read drops the members of nodes whose heartbeat expired, so a
//! node that dies leaves every channel's presence within the TTL.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::RedisEngine;
use crate::channels::ChannelName;
use crate::error::RequestError;
use crate::protocol::history::PresenceInfo;

/// How long a presence hash outlives its last join.
const PRESENCE_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

impl RedisEngine {
    fn presence_key(&self, channel: &ChannelName) -> String {
        format!("{}pres:{channel}", self.config.key_prefix)
    }

    pub(super) fn alive_key(&self, node: u64) -> String {
        format!("{}alive:{node:016x}", self.config.key_prefix)
    }

    /// Connection `conn` of this node joined `channel`.
    pub fn presence_join(&self, channel: &ChannelName, conn: u64, info: &PresenceInfo) {
        let Ok(json) = serde_json::to_string(info) else {
            return;
        };
        let key = self.presence_key(channel);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg(format!("{:016x}:{conn}", self.node))
            .arg(json);
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(PRESENCE_KEY_TTL.as_millis() as u64);
        if !(self.send_command(hset) && self.send_command(expire)) {
            tracing::warn!(%channel, "presence join not recorded: Redis queue full");
        }
    }

    /// Connection `conn` of this node left `channel`.
    pub fn presence_leave(&self, channel: &ChannelName, conn: u64) {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(self.presence_key(channel))
            .arg(format!("{:016x}:{conn}", self.node));
        self.send_command(hdel);
    }

    /// The members of `channel` on every live node, oldest first.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceInfo>, RequestError> {
        let key = self.presence_key(channel);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&key);
        let (fields,): (HashMap<String, String>,) = self.read(&pipe).await?;
        let nodes: BTreeSet<u64> = fields
            .keys()
            .filter_map(|f| f.split_once(':'))
            .filter_map(|(node, _)| u64::from_str_radix(node, 16).ok())
            .filter(|node| *node != self.node)
            .collect();
        let mut alive: BTreeSet<u64> = BTreeSet::from([self.node]);
        if !nodes.is_empty() {
            let mut pipe = redis::pipe();
            for node in &nodes {
                pipe.cmd("EXISTS").arg(self.alive_key(*node));
            }
            let exists: Vec<bool> = self.read(&pipe).await?;
            alive.extend(
                nodes
                    .iter()
                    .zip(exists)
                    .filter(|(_, e)| *e)
                    .map(|(n, _)| *n),
            );
        }
        let mut members = Vec::with_capacity(fields.len());
        let mut gone = Vec::new();
        for (field, json) in fields {
            let node = field
                .split_once(':')
                .and_then(|(node, _)| u64::from_str_radix(node, 16).ok());
            match node {
                Some(node) if alive.contains(&node) => {
                    if let Ok(info) = serde_json::from_str::<PresenceInfo>(&json) {
                        members.push(info);
                    }
                }
                _ => gone.push(field),
            }
        }
        if !gone.is_empty() {
            // Members of dead nodes: cleaned up on the way.
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(&key).arg(gone);
            self.send_command(hdel);
        }
        members.sort_by(|a, b| (a.connected_at, &a.client_id).cmp(&(b.connected_at, &b.client_id)));
        Ok(members)
    }

    /// (connections, distinct subs) in `channel` on every live node.
    pub async fn presence_stats(
        &self,
        channel: &ChannelName,
    ) -> Result<(usize, usize), RequestError> {
        let members = self.presence(channel).await?;
        let subs: BTreeSet<&str> = members.iter().map(|m| m.sub.as_str()).collect();
        Ok((members.len(), subs.len()))
    }
}
