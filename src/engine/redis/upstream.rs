//! The Redis engine as the router's [`Upstream`]: what the fan-out path
//! hands on goes through Redis to every node.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::RedisEngine;
use crate::channels::ChannelName;
use crate::channels::Pattern;
use crate::protocol::Event;
use crate::protocol::history::PresenceInfo;
use crate::router::namespace::HistoryLimits;
use crate::router::upstream::Upstream;

impl Upstream for RedisEngine {
    fn publish(&self, event: &Arc<Event>, history: Option<HistoryLimits>) {
        self.publish_detached(event, history);
    }

    fn interest_changed(&self, pattern: &Pattern, added: bool) {
        RedisEngine::interest_changed(self, pattern, added);
    }

    fn member_joined(&self, channel: &ChannelName, conn: u64, info: &PresenceInfo) {
        self.presence_join(channel, conn, info);
    }

    fn member_left(&self, channel: &ChannelName, conn: u64) {
        self.presence_leave(channel, conn);
    }

    fn membership(&self, channel: &ChannelName, frame: &Utf8Bytes) -> bool {
        self.publish_membership(channel, frame)
    }
}
