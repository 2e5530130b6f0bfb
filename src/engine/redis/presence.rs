//! Presence across nodes: one hash per channel, a field per member
//! (`<node>:<connection>` → its `PresenceInfo`), written in order with the
//! node's other writes. Every node renews its heartbeat key
//! (`<prefix>alive:<node>`, TTL `redis.presence_ttl`) with each health
//! check, and lists itself in `<prefix>nodes`; a read skips the members of
//! nodes whose heartbeat expired, so a node that dies leaves every
//! channel's presence within the TTL.
//!
//! Each node also keeps the channels it ever had members in
//! (`<prefix>pchan:<node>`). Every live node sweeps now and then: one
//! script, atomically, finds the listed nodes whose heartbeat expired and
//! removes their members, so exactly one live node gets each dead member
//! and sends its `leave` (on `join_leave` channels) to every node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RedisEngine;
use crate::channels::{ChannelName, NameLimits};
use crate::error::RequestError;
use crate::protocol::history::PresenceInfo;
use crate::router::manager::ChannelManager;
use crate::router::membership_frame;

/// Removes the members of every listed node whose heartbeat expired (but
/// the caller's). ARGV: prefix, the caller's node. Returns channel, member
/// JSON, channel, member JSON, ...
const SWEEP: &str = r#"
local P = ARGV[1]
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', P .. 'alive:' .. node) == 0 then
    redis.call('SREM', P .. 'nodes', node)
    local index = P .. 'pchan:' .. node
    local mark = node .. ':'
    for _, channel in ipairs(redis.call('SMEMBERS', index)) do
      local key = P .. 'pres:' .. channel
      local fields = redis.call('HGETALL', key)
      for i = 1, #fields, 2 do
        if string.sub(fields[i], 1, #mark) == mark then
          redis.call('HDEL', key, fields[i])
          table.insert(out, channel)
          table.insert(out, fields[i + 1])
        end
      end
    end
    redis.call('DEL', index)
  end
end
return out
"#;

/// How long a presence hash outlives its last join.
const PRESENCE_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

impl RedisEngine {
    fn presence_key(&self, channel: &ChannelName) -> String {
        format!("{}pres:{channel}", self.config.key_prefix)
    }

    pub(super) fn alive_key(&self, node: u64) -> String {
        format!("{}alive:{node:016x}", self.config.key_prefix)
    }

    /// The set of nodes that ever sent a heartbeat (until swept).
    pub(super) fn nodes_key(&self) -> String {
        format!("{}nodes", self.config.key_prefix)
    }

    /// The channels this node ever had members in.
    fn member_channels_key(&self) -> String {
        format!("{}pchan:{}", self.config.key_prefix, self.node_id())
    }

    /// Connection `conn` of this node joined `channel`.
    pub(crate) fn presence_join(&self, channel: &ChannelName, conn: u64, info: &PresenceInfo) {
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
        let index = self.member_channels_key();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&index).arg(channel.as_str());
        let mut expire_index = redis::cmd("PEXPIRE");
        expire_index
            .arg(&index)
            .arg(PRESENCE_KEY_TTL.as_millis() as u64);
        if !(self.send_command(hset)
            && self.send_command(expire)
            && self.send_command(sadd)
            && self.send_command(expire_index))
        {
            tracing::warn!(%channel, "presence join not recorded: Redis queue full");
        }
    }

    /// Connection `conn` of this node left `channel`.
    pub(crate) fn presence_leave(&self, channel: &ChannelName, conn: u64) {
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(self.presence_key(channel))
            .arg(format!("{:016x}:{conn}", self.node));
        self.send_command(hdel);
    }

    /// The members of `channel` on every live node, oldest first.
    pub(crate) async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceInfo>, RequestError> {
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
        // Members of dead nodes are skipped; the sweep removes them (and
        // sends their `leave`).
        let mut members = Vec::with_capacity(fields.len());
        for (field, json) in fields {
            let node = field
                .split_once(':')
                .and_then(|(node, _)| u64::from_str_radix(node, 16).ok());
            if node.is_some_and(|node| alive.contains(&node)) {
                if let Ok(info) = serde_json::from_str::<PresenceInfo>(&json) {
                    members.push(info);
                }
            }
        }
        members.sort_by(|a, b| (a.connected_at, &a.client_id).cmp(&(b.connected_at, &b.client_id)));
        Ok(members)
    }

    /// (connections, distinct subs) in `channel` on every live node.
    pub(crate) async fn presence_stats(
        &self,
        channel: &ChannelName,
    ) -> Result<(usize, usize), RequestError> {
        let members = self.presence(channel).await?;
        let subs: BTreeSet<&str> = members.iter().map(|m| m.sub.as_str()).collect();
        Ok((members.len(), subs.len()))
    }
}

impl RedisEngine {
    /// Sweeps the members of dead nodes every half `redis.presence_ttl`,
    /// and writes this node's members again each time Redis is back (or
    /// this node's heartbeat had expired), until `shutdown`.
    pub(super) async fn run_presence_sweep(
        self: Arc<Self>,
        channels: Arc<ChannelManager>,
        shutdown: CancellationToken,
    ) {
        let every = (self.config.presence_ttl / 2).max(self.config.health_interval);
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_ready = false;
        let mut swept_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ready = self.is_ready();
            if ready && (!was_ready || self.heartbeat_lost.swap(false, Ordering::AcqRel)) {
                self.restore_members(&channels).await;
            }
            was_ready = ready;
            if ready && swept_at.is_none_or(|at| at.elapsed() >= every) {
                swept_at = Some(tokio::time::Instant::now());
                self.sweep_presence(&channels).await;
            }
        }
    }

    /// After an outage: Redis may have lost this node's members (a restart
    /// without persistence), or another node may have swept them (this
    /// node's heartbeat expired meanwhile). Writes each again where it is
    /// missing, and sends its `join` again (on `join_leave` channels) — a
    /// subscriber may so get a `join` for a member it knew, never miss one.
    async fn restore_members(&self, channels: &ChannelManager) {
        let members = channels.local_members();
        if members.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        for entry in &members {
            let (channel, join_leave) = (&entry.channel, entry.join_leave);
            let key = self.presence_key(channel);
            for (conn, info) in &entry.members {
                let Ok(json) = serde_json::to_string(info) else {
                    continue;
                };
                pipe.cmd("HSETNX")
                    .arg(&key)
                    .arg(format!("{:016x}:{conn}", self.node))
                    .arg(json);
                sent.push((channel, join_leave, info));
            }
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(PRESENCE_KEY_TTL.as_millis() as u64)
                .ignore();
            pipe.cmd("SADD")
                .arg(self.member_channels_key())
                .arg(channel.as_str())
                .ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(self.member_channels_key())
            .arg(PRESENCE_KEY_TTL.as_millis() as u64)
            .ignore();
        let Ok(created) = self.read::<Vec<bool>>(&pipe).await else {
            return;
        };
        let mut restored = 0;
        for ((channel, join_leave, info), created) in sent.into_iter().zip(created) {
            if !created {
                continue;
            }
            restored += 1;
            if join_leave {
                let frame = membership_frame(true, channel, info);
                if !self.publish_membership(channel, &frame) {
                    channels.send_to_subscribers(channel, &frame);
                }
            }
        }
        if restored > 0 {
            tracing::info!(restored, "presence members written to Redis again");
        }
    }

    /// One sweep: removes the dead nodes' members and sends their `leave`.
    async fn sweep_presence(&self, channels: &ChannelManager) {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(SWEEP)
            .arg(0)
            .arg(&self.config.key_prefix)
            .arg(self.node_id());
        let Ok((gone,)) = self.read::<(Vec<String>,)>(&pipe).await else {
            return;
        };
        for pair in gone.chunks(2) {
            let [channel, json] = pair else { continue };
            let (Ok(channel), Ok(info)) = (
                ChannelName::parse(channel, &NameLimits::UNBOUNDED),
                serde_json::from_str::<PresenceInfo>(json),
            ) else {
                continue;
            };
            tracing::info!(%channel, client_id = %info.client_id, "member of a dead node removed");
            let join_leave = channels
                .namespaces()
                .resolve(&channel)
                .is_some_and(|ns| ns.join_leave);
            if join_leave {
                let frame = membership_frame(false, &channel, &info);
                if !self.publish_membership(&channel, &frame) {
                    channels.send_to_subscribers(&channel, &frame);
                }
            }
        }
    }
}
