//! What every client saw, in one place: the publish log (per publisher
//! connection and channel, when each sequence number was sent and
//! acknowledged), the per-subscriber results, the task records from the
//! submitters', workers' and watcher's side, and counters of everything
//! unexpected. The checks at the end read only this.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Channels the publishers use: `soak:c:0` … `soak:c:63`.
pub(crate) const CHANNELS: u16 = 64;

/// One publish, by sequence number (index = seq − 1).
#[derive(Debug, Clone, Copy)]
struct PubRec {
    /// Just before the frame was written: the hub cannot have handled it earlier.
    sent: Instant,
    /// When the publisher read its `published`: the event was queued to every
    /// matching subscriber before this.
    acked: Option<Instant>,
}

/// The events one publisher connection sent to one channel.
#[derive(Debug)]
struct Stream {
    /// The publisher connection (unique across the run).
    publisher: u32,
    recs: Vec<PubRec>,
}

/// What one subscriber connection received of one (publisher, channel) stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) first: u32,
    pub(crate) last: u32,
}

/// A subscriber connection's view, handed in when it ends.
pub(crate) struct SubscriberView {
    /// When its `subscribed` arrived.
    pub(crate) subscribed: Instant,
    /// When it decided to leave (or was closed): events acknowledged to their
    /// publisher by then must have arrived.
    pub(crate) until: Instant,
    /// Channels (indexes) its patterns match.
    pub(crate) channels: Vec<u16>,
    /// (publisher, channel) → first and last sequence number received.
    pub(crate) received: HashMap<(u32, u16), Received>,
    /// Whether completeness is checked (not for slow readers, whose queue
    /// the hub drops on purpose).
    pub(crate) check_complete: bool,
}

/// Outcome of one task, from every side.
#[derive(Debug, Default, Clone)]
pub(crate) struct TaskRec {
    /// `task:accepted` (not deduplicated) seen by its submitter.
    pub(crate) accepted: u32,
    /// `task:accepted` with `deduplicated: true` (keys are unique: never expected).
    pub(crate) deduplicated: u32,
    /// `task:result` with state `completed` on the submitting connection.
    pub(crate) result_completed: u32,
    /// `task:result` with another state.
    pub(crate) result_other: u32,
    /// `task:completed` events seen by the watcher.
    pub(crate) ev_completed: u32,
    /// `task:dead` / `task:cancelled` events seen by the watcher.
    pub(crate) ev_dead: u32,
    pub(crate) ev_cancelled: u32,
    /// `task:assign`s received by workers.
    pub(crate) assigns: u32,
    /// `task:ack` `completed` received by workers.
    pub(crate) worker_acks: u32,
    /// Deliveries dropped by a killed worker.
    pub(crate) killed_holding: u32,
}

/// Named counters, printed in the summary.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sessions: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) graceful_leaves: AtomicU64,
    pub(crate) abrupt_leaves: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_acked: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) events_received: AtomicU64,
    pub(crate) unexpected_events: AtomicU64,
    pub(crate) subscriber_sessions: AtomicU64,
    pub(crate) required: AtomicU64,
    pub(crate) missing: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) submits: AtomicU64,
    pub(crate) submit_refused: AtomicU64,
    pub(crate) submits_unanswered: AtomicU64,
    pub(crate) worker_kills: AtomicU64,
    pub(crate) worker_kills_holding: AtomicU64,
    pub(crate) not_assigned: AtomicU64,
    pub(crate) task_cancels_to_worker: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) stall_closed_4008: AtomicU64,
    pub(crate) stall_closed_other: AtomicU64,
    pub(crate) stall_dropped_no_frame: AtomicU64,
    pub(crate) stall_not_closed: AtomicU64,
    pub(crate) flood_events: AtomicU64,
    pub(crate) other_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The shared record of the run.
pub(crate) struct Ledger {
    /// Per channel, the streams published to it (one lock per channel).
    streams: Vec<Mutex<Vec<Stream>>>,
    /// Publisher connection → channel → index in `streams[channel]`.
    stream_index: Mutex<HashMap<(u32, u16), usize>>,
    pub(crate) tasks: Mutex<HashMap<String, TaskRec>>,
    pub(crate) counters: Counters,
    /// Closes by the hub that nobody asked for, by code (0 = no close frame).
    pub(crate) unexpected_closes: Mutex<BTreeMap<u16, u64>>,
    /// First few unexpected things, for the report.
    pub(crate) notes: Mutex<Vec<String>>,
    /// Publish → receive latency, µs.
    pub(crate) latency: Mutex<Histogram<u64>>,
    /// Origin of the `t` stamp in event payloads.
    pub(crate) epoch: Instant,
}

impl Ledger {
    pub(crate) fn new() -> Ledger {
        Ledger {
            streams: (0..CHANNELS).map(|_| Mutex::new(Vec::new())).collect(),
            stream_index: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            unexpected_closes: Mutex::new(BTreeMap::new()),
            notes: Mutex::new(Vec::new()),
            latency: Mutex::new(histogram()),
            epoch: Instant::now(),
        }
    }

    /// Microseconds since the run began (stamped into event payloads).
    pub(crate) fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records that `publisher` is about to send `seq` on `channel`.
    pub(crate) fn pub_sent(&self, publisher: u32, channel: u16, seq: u32) {
        let now = Instant::now();
        let mut index = lock(&self.stream_index);
        let mut streams = lock(&self.streams[channel as usize]);
        let at = *index.entry((publisher, channel)).or_insert_with(|| {
            streams.push(Stream {
                publisher,
                recs: Vec::new(),
            });
            streams.len() - 1
        });
        let stream = &mut streams[at];
        debug_assert_eq!(stream.recs.len() + 1, seq as usize);
        stream.recs.push(PubRec {
            sent: now,
            acked: None,
        });
    }

    /// Records the `published` for `seq`.
    pub(crate) fn pub_acked(&self, publisher: u32, channel: u16, seq: u32) {
        let now = Instant::now();
        let at = lock(&self.stream_index).get(&(publisher, channel)).copied();
        let Some(at) = at else { return };
        let mut streams = lock(&self.streams[channel as usize]);
        if let Some(rec) = streams[at].recs.get_mut(seq as usize - 1) {
            rec.acked = Some(now);
        }
    }

    /// Checks a finished subscriber connection against the publish log:
    /// every event sent after its subscription was in place and
    /// acknowledged before it left must be in the received range.
    pub(crate) fn check_subscriber(&self, view: &SubscriberView) {
        let c = &self.counters;
        Counters::add(&c.subscriber_sessions, 1);
        if !view.check_complete {
            return;
        }
        let mut required = 0u64;
        let mut missing = 0u64;
        for &ch in &view.channels {
            let streams = lock(&self.streams[ch as usize]);
            for stream in streams.iter() {
                // Quick skip: nothing of this stream falls in the window.
                let Some(last) = stream.recs.last() else {
                    continue;
                };
                if last.sent < view.subscribed || stream.recs[0].sent > view.until {
                    continue;
                }
                let got = view.received.get(&(stream.publisher, ch));
                for (i, rec) in stream.recs.iter().enumerate() {
                    let seq = i as u32 + 1;
                    let must =
                        rec.sent >= view.subscribed && rec.acked.is_some_and(|a| a <= view.until);
                    if !must {
                        continue;
                    }
                    required += 1;
                    if !got.is_some_and(|r| (r.first..=r.last).contains(&seq)) {
                        missing += 1;
                    }
                }
            }
        }
        Counters::add(&c.required, required);
        Counters::add(&c.missing, missing);
        if missing > 0 {
            self.note(format!(
                "subscriber on {} channel(s) missed {missing} of {required} required events (subscribed {:?} before leaving)",
                view.channels.len(),
                view.until.saturating_duration_since(view.subscribed)
            ));
        }
    }

    /// Applies `f` to the record of `task_id`.
    pub(crate) fn task(&self, task_id: &str, f: impl FnOnce(&mut TaskRec)) {
        let mut tasks = lock(&self.tasks);
        f(tasks.entry(task_id.to_string()).or_default());
    }

    pub(crate) fn unexpected_close(&self, code: u16, who: &str) {
        *lock(&self.unexpected_closes).entry(code).or_default() += 1;
        self.note(format!("{who}: connection closed by the hub, code {code}"));
    }

    /// Keeps a note of something unexpected (the first 30).
    pub(crate) fn note(&self, text: String) {
        let mut notes = lock(&self.notes);
        if notes.len() < 30 {
            notes.push(text);
        }
    }

    pub(crate) fn merge_latency(&self, local: &Histogram<u64>) {
        let _ = lock(&self.latency).add(local);
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

pub(crate) fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(micros.clamp(1, 60_000_000));
}

/// A std mutex: nothing awaits while one is held, and a poisoned one (a
/// client task panicked) still holds usable counts.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
