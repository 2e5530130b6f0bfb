//! One channel's history: a ring of its last events, their offsets and the
//! channel's epoch.
//!
//! Offsets count from 1 within an epoch. The epoch is random and names one
//! lifetime of the channel's history in this (memory) engine: a restart, or
//! the channel's state being dropped after it went quiet, starts a new epoch,
//! and positions of an older epoch can no longer be recovered.
//!
//! Pure data, no locks: the caller (the channel's state) holds the lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::namespace::HistoryLimits;
use crate::protocol::history::StreamPosition;
use crate::protocol::{Event, Position};

/// The last events of one channel.
#[derive(Debug)]
pub(crate) struct History {
    /// This lifetime's epoch.
    epoch: Arc<str>,
    /// Offset of the newest event ever published in this epoch (0: none).
    top: u64,
    /// Size and age bounds.
    limits: HistoryLimits,
    /// (when it was appended, event), oldest first; offsets are contiguous
    /// and end at `top`.
    events: VecDeque<(Instant, Arc<Event>)>,
}

/// The outcome of recovering from a position.
#[derive(Debug)]
pub(crate) enum Recovery {
    /// Every event after the position is still kept: these, oldest first.
    Continued(Vec<Arc<Event>>),
    /// The position is of another epoch, beyond the newest event, or older
    /// than the oldest kept event: the client must re-fetch.
    Lost,
}

/// A fresh random epoch: 16 hex digits.
pub(crate) fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

impl History {
    /// An empty history with a new epoch.
    pub(crate) fn new(limits: HistoryLimits) -> History {
        History::with_epoch(limits, new_epoch())
    }

    /// An empty history with the given epoch (tests).
    pub(crate) fn with_epoch(limits: HistoryLimits, epoch: Arc<str>) -> History {
        History {
            epoch,
            top: 0,
            limits,
            events: VecDeque::new(),
        }
    }

    /// Offset of the newest event (0: none yet).
    #[cfg(test)]
    pub(crate) fn top(&self) -> u64 {
        self.top
    }

    /// Where live delivery continues: the newest offset and the epoch.
    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.to_string(),
        }
    }

    /// Whether no event is kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Number of events kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// The TTL, for the sweeper.
    pub(crate) fn ttl(&self) -> std::time::Duration {
        self.limits.ttl
    }

    /// The position the next event gets. Call [`History::push`] with the
    /// event built for it before anything else touches the history.
    pub(crate) fn next_position(&self) -> Position {
        Position {
            offset: self.top + 1,
            epoch: Arc::clone(&self.epoch),
        }
    }

    /// Appends the event built for [`History::next_position`], dropping the
    /// oldest beyond `history_size`.
    pub(crate) fn push(&mut self, now: Instant, event: Arc<Event>) {
        self.top += 1;
        debug_assert_eq!(
            event.position.as_ref().map(|p| p.offset),
            Some(self.top),
            "events are pushed in offset order"
        );
        self.events.push_back((now, event));
        while self.events.len() > self.limits.size {
            self.events.pop_front();
        }
    }

    /// Drops events older than `history_ttl`.
    pub(crate) fn trim(&mut self, now: Instant) {
        while let Some((at, _)) = self.events.front() {
            if now.saturating_duration_since(*at) < self.limits.ttl {
                break;
            }
            self.events.pop_front();
        }
    }

    /// The oldest kept offset (`top + 1` when nothing is kept).
    fn first_kept(&self) -> u64 {
        self.top + 1 - self.events.len() as u64
    }

    /// The events after `since`, if none of them was lost. Call
    /// [`History::trim`] first.
    pub(crate) fn recover(&self, since: &StreamPosition) -> Recovery {
        if *since.epoch != *self.epoch
            || since.offset > self.top
            || since.offset + 1 < self.first_kept()
        {
            return Recovery::Lost;
        }
        Recovery::Continued(self.after(since.offset, usize::MAX))
    }

    /// Up to `limit` kept events with an offset above `offset`, oldest first.
    pub(crate) fn after(&self, offset: u64, limit: usize) -> Vec<Arc<Event>> {
        let skip = offset.saturating_sub(self.first_kept() - 1);
        self.events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(_, e)| Arc::clone(e))
            .collect()
    }

    /// The newest `limit` kept events, oldest first.
    pub(crate) fn newest(&self, limit: usize) -> Vec<Arc<Event>> {
        let skip = self.events.len().saturating_sub(limit);
        self.events
            .iter()
            .skip(skip)
            .map(|(_, e)| Arc::clone(e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::channels::{ChannelName, NameLimits};

    fn history(size: usize, ttl_ms: u64) -> History {
        History::with_epoch(
            HistoryLimits {
                size,
                ttl: Duration::from_millis(ttl_ms),
            },
            "e1".into(),
        )
    }

    fn publish(h: &mut History, now: Instant, n: u64) {
        let channel = ChannelName::parse("c", &NameLimits::default()).expect("valid");
        let event = Event::with_position(
            channel,
            serde_json::json!(n),
            format!("id-{n}"),
            n,
            h.next_position(),
        );
        h.push(now, Arc::new(event));
    }

    fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.position.as_ref().expect("position").offset)
            .collect()
    }

    fn since(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    fn recovered(h: &History, offset: u64, epoch: &str) -> Option<Vec<u64>> {
        match h.recover(&since(offset, epoch)) {
            Recovery::Continued(events) => Some(offsets(&events)),
            Recovery::Lost => None,
        }
    }

    #[test]
    fn ring_keeps_the_last_n_in_offset_order() {
        let now = Instant::now();
        let mut h = history(3, 60_000);
        assert_eq!(h.top(), 0);
        for n in 1..=5 {
            publish(&mut h, now, n);
        }
        assert_eq!(h.top(), 5);
        assert_eq!(h.len(), 3);
        assert_eq!(offsets(&h.newest(10)), [3, 4, 5]);
        assert_eq!(offsets(&h.newest(2)), [4, 5]);
        assert_eq!(offsets(&h.after(3, 10)), [4, 5]);
        assert_eq!(offsets(&h.after(0, 2)), [3, 4]);
        assert_eq!(offsets(&h.after(5, 10)), Vec::<u64>::new());
    }

    #[test]
    fn recovery_within_the_window_continues() {
        let now = Instant::now();
        let mut h = history(3, 60_000);
        assert_eq!(recovered(&h, 0, "e1"), Some(vec![]));
        for n in 1..=5 {
            publish(&mut h, now, n);
        }
        assert_eq!(recovered(&h, 2, "e1"), Some(vec![3, 4, 5]));
        assert_eq!(recovered(&h, 4, "e1"), Some(vec![5]));
        assert_eq!(recovered(&h, 5, "e1"), Some(vec![]));
    }

    #[test]
    fn recovery_out_of_the_window_or_epoch_is_lost() {
        let now = Instant::now();
        let mut h = history(3, 60_000);
        for n in 1..=5 {
            publish(&mut h, now, n);
        }
        assert_eq!(recovered(&h, 1, "e1"), None, "offset 2 was dropped");
        assert_eq!(recovered(&h, 0, "e1"), None);
        assert_eq!(recovered(&h, 4, "e2"), None, "another epoch");
        assert_eq!(recovered(&h, 6, "e1"), None, "beyond the newest");
    }

    #[test]
    fn ttl_drops_old_events_but_keeps_the_offsets() {
        let start = Instant::now();
        let mut h = history(10, 100);
        publish(&mut h, start, 1);
        publish(&mut h, start + Duration::from_millis(60), 2);
        h.trim(start + Duration::from_millis(120));
        assert_eq!(offsets(&h.newest(10)), [2]);
        assert_eq!(recovered(&h, 1, "e1"), Some(vec![2]));
        assert_eq!(recovered(&h, 0, "e1"), None);
        h.trim(start + Duration::from_millis(200));
        assert!(h.is_empty());
        assert_eq!(h.top(), 2);
        // Nothing missed since offset 2: still a recovery.
        assert_eq!(recovered(&h, 2, "e1"), Some(vec![]));
        assert_eq!(recovered(&h, 1, "e1"), None);
        publish(&mut h, start + Duration::from_millis(300), 3);
        assert_eq!(h.next_position().offset, 4);
        assert_eq!(recovered(&h, 2, "e1"), Some(vec![3]));
    }

    #[test]
    fn epochs_are_random() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 16);
    }
}
