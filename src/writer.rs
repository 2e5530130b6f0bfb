//! The one writer of WebSocket sessions and SSE streams: how the messages
//! queued for a connection leave its [`Inbox`], in batches.
//!
//! A transport wakes on the first queued message (`Inbox::recv` in its
//! `select!`) and hands it to a [`WriteBatch`]. The batch takes whatever
//! else is queued with one [`Inbox::take`] — one lock per batch, not per
//! event — once the first message is framed; drops the history events a
//! subscribe already replayed ([`wanted`], against the engine's [`Skip`]);
//! turns each message into the transport's frame with its [`Framer`]; and
//! keeps the batch's [`Tally`]: frames and bytes counted once per batch,
//! and one publish-to-write latency sample, from the batch's oldest
//! message when it is an event. The transports supply only the framing and
//! where the frames go: WebSocket text frames fed to the socket
//! (`session`), SSE frames with the resume cursor joined into one body
//! chunk (`transport::sse`).
//!
//! Order is the queue's: the batch is drained in order, and a transport
//! drains each batch before it waits again (what a batch leaves behind
//! comes first at the next `take`, and `recv` does not see it; only a
//! connection that ends stops part-way).
//!
//! Write coalescing under overload happens before this point: the
//! [`Pacer`](crate::pacing::Pacer) parks the wake-ups, and the writer takes
//! what is queued when it runs.
//!
//! Federation links do not use it: their queue is a tokio `mpsc` of frames
//! serialized when queued (interest, adverts, tasks and events, counted
//! per link), with no skip filter, no per-transport counters and a
//! slow-peer policy of its own (`federation::link`).

use std::time::Instant;

use crate::engine::Skip;
use crate::metrics::{Metrics, Transport};
use crate::pacing::Pacer;
use crate::router::manager::{Batch, Inbox, Outbound};

/// How one transport turns a queued message into what it writes.
pub(crate) trait Framer {
    /// One message's frame.
    type Frame;

    /// Whose traffic counters the batches count in.
    const TRANSPORT: Transport;

    /// Whether a written batch adds a `publish_to_write` sample.
    const SAMPLES_LATENCY: bool;

    /// The frame of `out`, or `None` when this transport does not carry
    /// such messages (not counted).
    fn frame(&mut self, out: Outbound) -> Option<Self::Frame>;

    /// The bytes `frame` puts on the wire, for the traffic counters.
    fn len(frame: &Self::Frame) -> usize;
}

/// Whether a queued message is to be written: false for a history event
/// at or before where its channel's live delivery starts (cluster mode).
/// The first later event of the channel ends its entry, so `skip` is empty
/// (one check per message) once live delivery has caught up.
pub(crate) fn wanted(skip: &mut Skip, out: &Outbound) -> bool {
    if skip.is_empty() {
        return true;
    }
    let Outbound::Event(event) = out else {
        return true;
    };
    let Some(position) = &event.position else {
        return true;
    };
    match skip.get(&event.channel) {
        Some(&upto) if position.offset <= upto => false,
        Some(_) => {
            skip.remove(&event.channel);
            true
        }
        None => true,
    }
}

/// What one batch wrote, counted once per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Frames produced.
    frames: u64,
    /// Their bytes.
    bytes: u64,
    /// When the batch's first message was published, if it is an event:
    /// the one latency sample of the batch.
    published: Option<Instant>,
}

impl Tally {
    /// Adds the batch to `transport`'s traffic and, when it was `written`,
    /// tells the pacer how late its oldest event went out (and, on a
    /// transport that `samples`, adds that latency to the metrics).
    fn record(
        &self,
        metrics: &Metrics,
        pacer: &Pacer,
        transport: Transport,
        written: bool,
        samples: bool,
    ) {
        metrics.sent(transport, self.frames, self.bytes);
        if let (true, Some(published)) = (written, self.published) {
            let age = published.elapsed();
            pacer.wrote(age);
            if samples {
                metrics.publish_to_write.record(age);
            }
        }
    }
}

/// One write batch: an iterator over the frames of the message that woke
/// the transport and of up to `max - 1` more queued ones, skipped messages
/// left out. [`finish`](Self::finish) counts it.
pub(crate) struct WriteBatch<'a, F: Framer> {
    /// The message that woke the transport, until it is framed.
    first: Option<Outbound>,
    /// The inbox, until the batch is taken from it: after the first
    /// message is framed (a WebSocket may have waited to write it, and
    /// what was queued meanwhile joins the batch).
    inbox: Option<&'a mut Inbox>,
    /// The rest of the batch, once taken.
    rest: Option<Batch<'a>>,
    /// Most messages in the batch, `first` included.
    max: usize,
    /// History events to drop; see [`wanted`].
    skip: &'a mut Skip,
    /// The transport's framing.
    framer: &'a mut F,
    /// What the batch produced so far.
    tally: Tally,
}

impl<'a, F: Framer> WriteBatch<'a, F> {
    /// A batch that starts with `first` (just received from `inbox`).
    pub(crate) fn new(
        first: Outbound,
        inbox: &'a mut Inbox,
        max: usize,
        skip: &'a mut Skip,
        framer: &'a mut F,
    ) -> Self {
        let published = match &first {
            Outbound::Event(event) => Some(event.published_at),
            Outbound::Direct(_) => None,
        };
        WriteBatch {
            first: Some(first),
            inbox: Some(inbox),
            rest: None,
            max,
            skip,
            framer,
            tally: Tally {
                published,
                ..Tally::default()
            },
        }
    }

    /// What the batch produced so far.
    #[cfg(test)]
    fn tally(&self) -> Tally {
        self.tally
    }

    /// Counts the batch in the metrics, its latency only when its frames
    /// were `written` (a failed write samples nothing).
    pub(crate) fn finish(self, metrics: &Metrics, pacer: &Pacer, written: bool) {
        self.tally
            .record(metrics, pacer, F::TRANSPORT, written, F::SAMPLES_LATENCY);
    }

    /// The next message of the batch, taking the rest from the inbox the
    /// first time it is needed.
    fn next_message(&mut self) -> Option<Outbound> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if let Some(inbox) = self.inbox.take() {
            self.rest = Some(inbox.take(self.max.saturating_sub(1)));
        }
        self.rest.as_mut()?.next()
    }
}

impl<F: Framer> Iterator for WriteBatch<'_, F> {
    type Item = F::Frame;

    fn next(&mut self) -> Option<F::Frame> {
        loop {
            let out = self.next_message()?;
            if !wanted(self.skip, &out) {
                continue;
            }
            if let Some(frame) = self.framer.frame(out) {
                self.tally.frames += 1;
                self.tally.bytes += F::len(&frame) as u64;
                return Some(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;
    use crate::channels::{ChannelName, NameLimits, Pattern};
    use crate::protocol::{Event, Position};
    use crate::router::manager::{ChannelManager, Subscriber, SubscriptionSet};

    /// Frames events as their id and direct messages as their text; drops
    /// direct messages that say "drop" (like SSE drops all of them).
    struct Ids;

    impl Framer for Ids {
        type Frame = String;
        const TRANSPORT: Transport = Transport::Ws;
        const SAMPLES_LATENCY: bool = true;

        fn frame(&mut self, out: Outbound) -> Option<String> {
            match out {
                Outbound::Event(event) => Some(event.id.clone()),
                Outbound::Direct(text) if text.as_str() == "drop" => None,
                Outbound::Direct(text) => Some(text.as_str().to_owned()),
            }
        }

        fn len(frame: &String) -> usize {
            frame.len()
        }
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, &NameLimits::default()).expect("channel")
    }

    fn direct(subscriber: &Subscriber, text: &str) {
        assert!(subscriber.send_direct(Utf8Bytes::from(text.to_owned())));
    }

    /// An inbox subscribed to `h:*`, and the manager that fills it.
    struct Fixture {
        manager: Arc<ChannelManager>,
        subscriber: Arc<Subscriber>,
        inbox: Inbox,
        _subs: SubscriptionSet,
    }

    impl Fixture {
        fn new() -> Fixture {
            let manager = Arc::new(ChannelManager::new(16));
            let (subscriber, inbox) = Subscriber::new(1, 1024);
            let mut subs = SubscriptionSet::new(Arc::clone(&manager), Arc::clone(&subscriber));
            let pattern = Pattern::parse("h:*", &NameLimits::default()).expect("pattern");
            assert!(subs.add(pattern));
            Fixture {
                manager,
                subscriber,
                inbox,
                _subs: subs,
            }
        }

        /// Queues an event `<channel>/<offset>` (offset 0: no history).
        fn event(&self, name: &str, offset: u64) {
            let id = format!("{name}/{offset}");
            let event = match offset {
                0 => Event::new(channel(name), json!(null), id, 0),
                _ => {
                    let position = Position {
                        offset,
                        epoch: Arc::from("e"),
                    };
                    Event::with_position(channel(name), json!(null), id, 0, position)
                }
            };
            assert_eq!(self.manager.deliver(&Arc::new(event)), 1);
        }

        fn direct(&self, text: &str) {
            direct(&self.subscriber, text);
        }

        /// One batch of at most `max`, as the transports run it: the first
        /// message received, then the batch.
        fn batch(&mut self, max: usize, skip: &mut Skip) -> (Vec<String>, Tally) {
            let first = self.inbox.try_recv().expect("a queued message");
            let mut ids = Ids;
            let mut batch = WriteBatch::new(first, &mut self.inbox, max, skip, &mut ids);
            let frames: Vec<String> = batch.by_ref().collect();
            (frames, batch.tally())
        }
    }

    #[test]
    fn a_batch_is_the_first_message_and_then_the_queue_in_order() {
        let mut f = Fixture::new();
        for n in 0..5 {
            f.direct(&n.to_string());
        }
        let mut skip = Skip::new();
        let (frames, tally) = f.batch(3, &mut skip);
        assert_eq!(frames, ["0", "1", "2"]);
        assert_eq!((tally.frames, tally.bytes), (3, 3));
        let (frames, _) = f.batch(3, &mut skip);
        assert_eq!(frames, ["3", "4"]);
        assert!(f.inbox.try_recv().is_none());
    }

    #[test]
    fn the_rest_is_taken_once_the_first_message_is_framed() {
        let mut f = Fixture::new();
        f.direct("a");
        let mut skip = Skip::new();
        let first = f.inbox.try_recv().expect("queued");
        let mut ids = Ids;
        let mut batch = WriteBatch::new(first, &mut f.inbox, 8, &mut skip, &mut ids);
        assert_eq!(batch.next().as_deref(), Some("a"));
        // Queued while the first frame was being written: same batch.
        direct(&f.subscriber, "b");
        direct(&f.subscriber, "c");
        assert_eq!(batch.collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn replayed_history_events_are_skipped_until_live_delivery_catches_up() {
        let mut f = Fixture::new();
        for offset in 1..=4 {
            f.event("h:1", offset);
        }
        f.event("h:2", 1);
        f.event("h:3", 0);
        f.event("h:1", 2);
        let mut skip = Skip::from([(channel("h:1"), 2), (channel("h:2"), 5)]);
        let (frames, tally) = f.batch(16, &mut skip);
        // h:1 up to 2 was replayed; the later "h:1/2" is after h:1/3 caught
        // up, so it is written; h:2/1 is still replayed; h:3 has no history.
        assert_eq!(frames, ["h:1/3", "h:1/4", "h:3/0", "h:1/2"]);
        assert_eq!(tally.frames, 4);
        assert_eq!(skip, Skip::from([(channel("h:2"), 5)]));
    }

    #[test]
    fn wanted_keeps_direct_messages_and_everything_when_nothing_is_skipped() {
        let direct = Outbound::Direct(Box::new(Utf8Bytes::from_static("x")));
        let mut skip = Skip::from([(channel("h:1"), 9)]);
        assert!(wanted(&mut skip, &direct));
        let event = Event::with_position(
            channel("h:1"),
            json!(null),
            "i".into(),
            0,
            Position {
                offset: 9,
                epoch: Arc::from("e"),
            },
        );
        let event = Outbound::Event(Arc::new(event));
        assert!(!wanted(&mut skip, &event));
        assert!(wanted(&mut Skip::new(), &event));
    }

    #[test]
    fn the_tally_counts_framed_messages_and_samples_the_first_event() {
        let mut f = Fixture::new();
        f.event("h:1", 0);
        f.direct("drop");
        f.direct("abc");
        let mut skip = Skip::new();
        let (frames, tally) = f.batch(16, &mut skip);
        assert_eq!(frames, ["h:1/0", "abc"]);
        // A message the framer leaves out is not counted.
        assert_eq!((tally.frames, tally.bytes), (2, 8));
        assert!(tally.published.is_some());

        // A batch that starts with a direct message has no sample, even
        // with events after it.
        f.direct("d");
        f.event("h:1", 0);
        let (frames, tally) = f.batch(16, &mut skip);
        assert_eq!(frames, ["d", "h:1/0"]);
        assert_eq!(tally.published, None);
    }

    #[test]
    fn finish_counts_the_batch_once_and_samples_only_written_batches() {
        let metrics = Metrics::default();
        let mut f = Fixture::new();
        let mut skip = Skip::new();
        for written in [true, false] {
            f.event("h:1", 0);
            f.event("h:1", 0);
            let first = f.inbox.try_recv().expect("queued");
            let mut ids = Ids;
            let mut batch = WriteBatch::new(first, &mut f.inbox, 16, &mut skip, &mut ids);
            assert_eq!(batch.by_ref().count(), 2);
            batch.finish(&metrics, &Pacer::new(Duration::ZERO), written);
        }
        assert_eq!(metrics.publish_to_write.snapshot().count, 1);
    }
}
