//! History in Redis: a channel's epoch and newest offset in a hash, its
//! events in a stream whose entry ids are the offsets. Writes happen in the
//! publish script (see `fanout`); this module reads.

use std::sync::Arc;

use super::RedisEngine;
use super::fanout::parse_frame;
use crate::channels::ChannelName;
use crate::error::RequestError;
use crate::protocol::history::StreamPosition;
use crate::protocol::{Event, now_ms};
use crate::router::HistoryPage;
use crate::router::namespace::HistoryLimits;

/// Creates the channel's epoch if it has none (`HSETNX`: the epoch only
/// changes when Redis lost it) and returns the epoch and newest offset.
/// KEYS: meta. ARGV: a new epoch, meta TTL ms.
const POSITION: &str = r#"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('HSETNX', KEYS[1], 'top', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'epoch', 'top')
"#;

/// How long the epoch outlives the last read or publish.
const META_TTL_MS: u64 = 24 * 3600 * 1000;

/// A stream entry: id and its fields (`t` ts, `f` frame).
type Entry = (String, Vec<String>);

impl RedisEngine {
    /// The channel's position; creates its epoch when it has none.
    pub(crate) async fn position(
        &self,
        channel: &ChannelName,
    ) -> Result<StreamPosition, RequestError> {
        let mut pipe = redis::pipe();
        self.position_cmd(&mut pipe, channel);
        let ((epoch, top),): ((String, u64),) = self.read(&pipe).await?;
        Ok(StreamPosition { offset: top, epoch })
    }

    fn position_cmd(&self, pipe: &mut redis::Pipeline, channel: &ChannelName) {
        pipe.cmd("EVAL")
            .arg(POSITION)
            .arg(1)
            .arg(self.keys.meta(channel.as_str()))
            .arg(&*crate::router::history::new_epoch())
            .arg(META_TTL_MS);
    }

    /// Like [`ChannelManager::history`](crate::router::manager::ChannelManager::history),
    /// from Redis: with `since`, up to `limit` events after it and whether
    /// none is missing — when some are (another epoch, an offset older than
    /// the oldest kept event or beyond the newest), `recovered: false` and
    /// the oldest kept events, as in the memory engine; without `since`, the
    /// newest `limit`.
    pub(crate) async fn history(
        &self,
        channel: &ChannelName,
        limits: HistoryLimits,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, RequestError> {
        let stream = self.keys.stream(channel.as_str());
        let want = limit.unwrap_or(limits.size).min(limits.size);
        // At least one entry, to tell whether `since` is continued.
        let count = want.max(1);
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.position_cmd(&mut pipe, channel);
        match since {
            Some(since) => {
                pipe.cmd("XRANGE")
                    .arg(&stream)
                    .arg(format!("{}-0", since.offset.saturating_add(1)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count);
            }
            None => {
                pipe.cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count);
            }
        }
        let ((epoch, top), mut entries): ((String, u64), Vec<Entry>) = self.read(&pipe).await?;
        if since.is_none() {
            entries.reverse();
        }
        let oldest_ts = now_ms().saturating_sub(limits.ttl.as_millis() as u64);
        let mut events: Vec<(u64, Arc<Event>)> = Vec::with_capacity(entries.len());
        let mut expired_first = false;
        for entry in entries {
            match kept_event(entry, oldest_ts) {
                Some(event) => events.push(event),
                None => expired_first |= events.is_empty(),
            }
        }
        let position = StreamPosition { offset: top, epoch };
        let recovered = since.map(|since| {
            since.epoch == position.epoch
                && since.offset <= top
                && (since.offset == top
                    || (!expired_first
                        && events.first().map(|(o, _)| *o) == Some(since.offset + 1)))
        });
        let mut events: Vec<Arc<Event>> = match recovered {
            // Lost: like the memory engine, the oldest kept events.
            Some(false) => self.oldest(&stream, top, oldest_ts, want).await?,
            _ => events.into_iter().map(|(_, e)| e).collect(),
        };
        events.truncate(want);
        Ok(HistoryPage {
            position,
            recovered,
            events,
        })
    }

    /// Up to `want` of the oldest events of `stream` not older than
    /// `oldest_ts`, none above offset `top`. Expired entries come first
    /// (the stream is in publish order), so this pages past them.
    async fn oldest(
        &self,
        stream: &str,
        top: u64,
        oldest_ts: u64,
        want: usize,
    ) -> Result<Vec<Arc<Event>>, RequestError> {
        let mut events = Vec::with_capacity(want);
        let mut from = "-".to_string();
        while events.len() < want {
            let mut pipe = redis::pipe();
            pipe.cmd("XRANGE")
                .arg(stream)
                .arg(&from)
                .arg(top.to_string())
                .arg("COUNT")
                .arg(want);
            let (entries,): (Vec<Entry>,) = self.read(&pipe).await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            // The next page starts after the last offset read.
            let last = last
                .split_once('-')
                .and_then(|(offset, _)| offset.parse::<u64>().ok())
                .unwrap_or(top);
            from = format!("{}-0", last.saturating_add(1));
            let page = entries.len();
            events.extend(
                entries
                    .into_iter()
                    .filter_map(|entry| kept_event(entry, oldest_ts))
                    .map(|(_, event)| event),
            );
            if page < want {
                break;
            }
        }
        events.truncate(want);
        Ok(events)
    }
}

/// A stream entry as (offset, event), unless it is older than `oldest_ts`
/// (its TTL ran out) or does not parse.
fn kept_event((id, fields): Entry, oldest_ts: u64) -> Option<(u64, Arc<Event>)> {
    let offset = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or(0);
    let (ts, frame) = entry_fields(&fields);
    if ts < oldest_ts {
        return None;
    }
    let event = frame.and_then(parse_frame)?;
    Some((offset, Arc::new(event)))
}

/// (`t`, `f`) of a stream entry.
fn entry_fields(fields: &[String]) -> (u64, Option<&str>) {
    let mut ts = 0;
    let mut frame = None;
    for pair in fields.chunks(2) {
        match pair {
            [k, v] if k == "t" => ts = v.parse().unwrap_or(0),
            [k, v] if k == "f" => frame = Some(v.as_str()),
            _ => {}
        }
    }
    (ts, frame)
}
