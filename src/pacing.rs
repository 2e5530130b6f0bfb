//! Write coalescing under overload (`websocket.coalesce_interval`).
//!
//! A connection is normally woken the moment an event lands in its empty
//! queue and writes it at once: one task wake-up and one `send` per write.
//! When every event goes to a different connection (thousands of sessions,
//! each on its own channel), that is a wake-up and a system call per
//! delivery, and once the hub's threads are busy all the time the publishes
//! it has not read yet pile up in its sockets.
//!
//! The pacer ticks every interval and reads from the runtime how much of
//! the last interval its worker threads spent running tasks. At 95 % or
//! more the hub is saturated, and one write per event is most of what it
//! does; from then on an event that lands in an empty queue does not wake
//! its connection: the pacer wakes every such connection once per *batch*,
//! and each writes everything queued meanwhile at once. The batch starts at
//! [`MIN_BATCH`] and adapts each interval to the load: doubled (up to the
//! interval) while the threads are still [`BATCH_MORE_PERCENT`] busy,
//! halved below [`BATCH_LESS_PERCENT`], ended below [`MIN_BATCH`]. The
//! load a batch carries falls as the batch grows (fewer wake-ups and
//! `send`s per event), so it settles at the shortest batch that leaves the
//! core some room: 1 → 1,000 fan-out at 2M deliveries/s on one core runs
//! at ~66 % busy with 8–16 ms batches instead of 99 % with one write per
//! event, and an event waits at most one batch.
//!
//! Batching is for a hub that keeps up. One that falls behind holds
//! instead, for whole intervals: the ticker also learns whether anything
//! waited at least one interval — an event written that long after it was
//! published (the writers tell it), the ticker itself run that long after
//! it was due (then every task woken meanwhile waits as long), or a read
//! that filled a connection's whole read-ahead buffer (a publisher's frames
//! wait unread; the transport tells it). Saturated *and* late, judged over
//! the last two intervals, at three ticks in a row (a wave of connections
//! authenticating saturates one or two; within a second after holding
//! ended, one is enough), the hub is falling behind, and until ten ticks
//! pass below 95 % the pacer wakes parked connections only at its ticks.
//! Then batching takes over again from [`MIN_BATCH`], and connections are
//! woken at once when the load is gone.
//!
//! Only events wait; direct messages (task assignments, results) and
//! replies never do, and a connection woken for another reason (a request
//! of its own, a direct message) writes what is queued right then. Events
//! waiting for a tick stay in the connection's queue, in order, and count
//! against `limits.outbound_queue` as before; a queue half full wakes its
//! connection at once, so a client that reads is never dropped for a
//! wake-up put off here.
//!
//! An idle hub must not wake the machine 1/interval times a second for
//! nothing (a desktop sidecar keeps a laptop out of deep sleep that way).
//! After [`IDLE_TICKS`] intervals in which no event was delivered, with
//! the verdict calm (not holding or batching, not settling, holding long
//! over), the ticker sleeps; the next delivery wakes it. From that calm state the
//! ticks it skips would have changed nothing but the two-interval average
//! (which restarts from the first interval after waking, as at start) and
//! a saturated streak: a runtime saturated by work that delivers nothing
//! (a flood of HTTP requests) is measured from the first delivery on, so
//! holding can start up to [`ENTER_TICKS`] intervals later than if the
//! ticker had run all along. Under delivery load it never sleeps. The
//! delivery path pays one relaxed atomic load for this while the ticker
//! runs ([`Pacer::delivering`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Percentage of an interval the runtime's workers ran tasks from which
/// the hub counts as saturated.
const SATURATED_PERCENT: u128 = 95;

/// Consecutive saturated intervals that start coalescing.
const ENTER_TICKS: u64 = 3;

/// Within this many intervals after coalescing ended, one saturated
/// interval starts it again.
const RECENT_TICKS: u64 = 20;

/// Intervals connections keep coalescing after the last saturated one.
const HOLD_TICKS: u32 = 10;

/// The shortest batch: a busy hub that keeps up starts batching with it.
const MIN_BATCH: Duration = Duration::from_millis(2);

/// Percentage of an interval the runtime's workers ran tasks above which a
/// batching hub doubles its batch (up to the interval).
const BATCH_MORE_PERCENT: u128 = 70;

/// Percentage below which a batching hub halves its batch (and below
/// [`MIN_BATCH`] stops batching).
const BATCH_LESS_PERCENT: u128 = 55;

/// Saturation is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Intervals after coalescing ended that are not judged.
const SETTLE_TICKS: u8 = 2;

/// Intervals without a delivery after which a calm ticker sleeps until the
/// next one (a steady trickle of events keeps it ticking).
const IDLE_TICKS: u32 = 4;

/// What the ticker remembers from tick to tick.
#[derive(Debug)]
struct Judge {
    /// The previous interval: (busy, capacity) in nanoseconds.
    prev: (u128, u128),
    /// An event was written late in the previous interval.
    prev_late: bool,
    /// Saturated intervals in a row.
    streak: u64,
    /// Intervals since coalescing last ended (since start: very many).
    calm: u64,
    /// Intervals still not judged.
    settling: u8,
    /// Intervals left to coalesce.
    left: u32,
    /// When saturation was last logged (at most once a minute).
    logged_at: Option<Instant>,
}

/// The hub's write pacing; one per hub.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// `websocket.coalesce_interval`; zero: never hold.
    interval: Duration,
    /// The ticker runs (a parked connection is always woken).
    ticking: AtomicBool,
    /// An event was delivered since the ticker last looked; set by the
    /// delivery path, taken by every tick.
    delivered: AtomicBool,
    /// The ticker sleeps until the next delivery; cleared by whoever wakes
    /// it (see [`Pacer::wake`]).
    asleep: AtomicBool,
    /// Wakes the sleeping ticker.
    wakeup: Notify,
    /// Tells whoever waits in [`until_woken`](Self::until_woken) that the
    /// ticker woke.
    woke: Notify,
    /// Events landing in an empty queue wait for the next tick.
    overloaded: AtomicBool,
    /// While the hub batches, how long an event landing in an empty queue
    /// waits for its connection to be woken, in nanoseconds (between
    /// [`MIN_BATCH`] and the interval); zero while it does not.
    batch: AtomicU64,
    /// What the ticker remembers from tick to tick.
    judge: Mutex<Judge>,
    /// Connections to wake at the next tick.
    parked: Mutex<Vec<Waker>>,
    /// Wake-ups put off to a tick (`chanhub_coalesced_wakeups_total`).
    held: AtomicU64,
    /// Since the ticker last looked, an event was written at least one
    /// interval after it was published, or a read found more input than
    /// its buffer holds.
    late: AtomicBool,
}

impl Pacer {
    /// A pacer ticking every `interval`; `Duration::ZERO` turns holding off.
    pub(crate) fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            ticking: AtomicBool::new(false),
            delivered: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            wakeup: Notify::new(),
            woke: Notify::new(),
            overloaded: AtomicBool::new(false),
            batch: AtomicU64::new(0),
            judge: Mutex::new(Judge {
                prev: (0, 0),
                prev_late: false,
                streak: 0,
                calm: u64::MAX,
                settling: 0,
                left: 0,
                logged_at: None,
            }),
            parked: Mutex::new(Vec::new()),
            held: AtomicU64::new(0),
            late: AtomicBool::new(false),
        }
    }

    /// Whether connections are now woken at the next tick rather than at
    /// once.
    pub(crate) fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Connection wake-ups so far put off to a tick.
    pub(crate) fn held_wakeups(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether an event landing in an empty queue now waits for the next
    /// tick ([`park`](Self::park)) instead of waking its connection.
    pub(crate) fn holding(&self) -> bool {
        (self.overloaded.load(Ordering::Relaxed) || self.batch.load(Ordering::Relaxed) > 0)
            && self.ticking.load(Ordering::Relaxed)
    }

    /// While the hub batches (busy, keeping up), how often it wakes the
    /// connections whose events wait.
    pub(crate) fn batch(&self) -> Option<Duration> {
        match self.batch.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Notes that events are being delivered (every delivery, before
    /// [`holding`](Self::holding)): one relaxed load while the ticker runs;
    /// the first delivery of an interval also sets the flag, and wakes the
    /// ticker when it sleeps. (A load that still reads the flag a tick just
    /// took misses that wake-up; the next delivery makes it. Nothing parks
    /// meanwhile: a sleeping ticker means no holding.)
    #[inline]
    pub(crate) fn delivering(&self) {
        if !self.delivered.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Marks a delivery and wakes the ticker if it sleeps.
    ///
    /// With [`sleep`](Self::sleep) this is the store-then-load handshake
    /// (both sides `SeqCst`): this side stores `delivered` and then clears
    /// `asleep`, the ticker stores `asleep` and then loads `delivered`, so
    /// either the ticker sees the delivery and does not sleep, or this side
    /// sees it asleep and notifies (a `Notify` permit outlives a
    /// notification sent before the ticker waits).
    #[cold]
    fn wake(&self) {
        self.delivered.store(true, Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.wakeup.notify_one();
        }
    }

    /// Whether the ticker sleeps until the next delivery (tests).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// May the ticker sleep? Only from a verdict a skipped tick would not
    /// change: not holding, nothing parked, nothing settling, no saturated
    /// streak, and coalescing over long enough that one saturated interval
    /// no longer restarts it.
    fn may_sleep(&self) -> bool {
        let calm = {
            let judge = lock(&self.judge);
            judge.left == 0
                && self.batch().is_none()
                && judge.settling == 0
                && judge.streak == 0
                && judge.calm > RECENT_TICKS
        };
        calm && !self.overloaded() && lock(&self.parked).is_empty()
    }

    /// Sleeps until the next delivery or `shutdown`; returns false on
    /// shutdown. The intervals before say nothing about the load after.
    async fn sleep(&self, shutdown: &CancellationToken) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        // A delivery since the last tick, and nobody else cleared `asleep`:
        // stay awake (no notification comes).
        let raced =
            self.delivered.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst);
        if !raced {
            // Nothing delivered yet; or a delivery cleared `asleep` and
            // notifies: either way the wake-up comes through `wake`.
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = self.wakeup.notified() => {}
            }
        }
        {
            let mut judge = lock(&self.judge);
            judge.prev = (0, 0);
            judge.prev_late = false;
        }
        self.late.store(false, Ordering::Relaxed);
        self.woke.notify_waiters();
        true
    }

    /// Waits until the sleeping ticker wakes (events are delivered again)
    /// and returns true; false at once when it does not sleep now. Other
    /// periodic work that has nothing to do while nothing is delivered
    /// sleeps on this too (the dashboard's rate sampler).
    pub(crate) async fn until_woken(&self) -> bool {
        let woke = self.woke.notified();
        tokio::pin!(woke);
        // Registered before the check: a wake-up after it is not missed.
        woke.as_mut().enable();
        if !self.asleep.load(Ordering::SeqCst) {
            return false;
        }
        woke.await;
        true
    }

    /// Notes that a writer wrote an event `age` after it was published
    /// (the oldest of its batch): one comparison, and a store only for the
    /// first late one of an interval.
    #[inline]
    pub(crate) fn wrote(&self, age: Duration) {
        if age >= self.interval && !self.interval.is_zero() && !self.late.load(Ordering::Relaxed) {
            self.late.store(true, Ordering::Relaxed);
        }
    }

    /// Notes that a connection's read filled its whole buffer: more of its
    /// input waits unread (a publisher the hub reads slower than it sends).
    #[inline]
    pub(crate) fn input_waits(&self) {
        if !self.late.load(Ordering::Relaxed) {
            self.late.store(true, Ordering::Relaxed);
        }
    }

    /// Wakes `waker` at the next tick.
    pub(crate) fn park(&self, waker: Waker) {
        self.held.fetch_add(1, Ordering::Relaxed);
        lock(&self.parked).push(waker);
    }

    /// The batch after an interval in which the runtime's workers ran
    /// tasks for `busy` of `capacity` (nanoseconds): from
    /// none, saturated starts [`MIN_BATCH`]; a batching hub above
    /// [`BATCH_MORE_PERCENT`] doubles it (up to the interval), below
    /// [`BATCH_LESS_PERCENT`] halves it, and stops below [`MIN_BATCH`].
    /// Each event of a connection waits at most one batch, and each write
    /// carries what a batch brought: the batch grows until the hub has
    /// room to spare, and no longer than the load needs.
    fn next_batch(&self, busy: u128, capacity: u128, judged: bool) -> Duration {
        let batch = self.batch().unwrap_or_default();
        if capacity == 0 || !judged {
            return batch;
        }
        let above = |percent: u128| busy * 100 >= percent * capacity;
        if batch.is_zero() {
            if above(SATURATED_PERCENT) {
                MIN_BATCH.min(self.interval)
            } else {
                Duration::ZERO
            }
        } else if above(BATCH_MORE_PERCENT) {
            (batch * 2).min(self.interval)
        } else if above(BATCH_LESS_PERCENT) {
            batch
        } else if batch / 2 >= MIN_BATCH {
            batch / 2
        } else {
            Duration::ZERO
        }
    }

    /// One tick's verdict: the runtime's `workers` ran tasks for `busy` of
    /// the `elapsed` since the last tick, and an event was written `late`
    /// (at least one interval after it was published) meanwhile.
    fn observe(&self, busy: Duration, elapsed: Duration, workers: usize, late: bool) {
        let mut judge = lock(&self.judge);
        let (busy, capacity) = (busy.as_nanos(), elapsed.as_nanos() * workers.max(1) as u128);
        // Judged over the last two intervals: a tick's wave of wake-ups is
        // worked off partly in the next one, so single intervals alternate
        // between busy and quiet while holding.
        let (pair_busy, pair_capacity) = (busy + judge.prev.0, capacity + judge.prev.1);
        judge.prev = (busy, capacity);
        let pair_late = late || judge.prev_late;
        judge.prev_late = late;
        let holding = judge.left > 0;
        let judged = judge.settling == 0;
        judge.settling = judge.settling.saturating_sub(1);
        let saturated = judged
            && pair_late
            && pair_capacity > 0
            && pair_busy * 100 >= SATURATED_PERCENT * pair_capacity;
        judge.streak = if saturated { judge.streak + 1 } else { 0 };
        judge.calm = if holding {
            0
        } else {
            judge.calm.saturating_add(1)
        };
        // A burst (a wave of connections authenticating) saturates a tick
        // or two: from calm, only a longer stretch starts holding. Any
        // saturated tick keeps it going, or starts it again soon after it
        // ended (the load that needed it is likely still there).
        let starts = holding || judge.calm <= RECENT_TICKS || judge.streak >= ENTER_TICKS;
        judge.left = if saturated && starts {
            HOLD_TICKS
        } else {
            judge.left.saturating_sub(1)
        };
        let overloaded = judge.left > 0;
        if holding && !overloaded {
            // The intervals after the last held tick work off the wake-ups
            // it released: they say nothing about the load without holding.
            judge.settling = SETTLE_TICKS;
        }
        let batch = if overloaded {
            Duration::ZERO
        } else {
            // A tick right after the ticker started or woke measured too
            // short a time to say anything.
            let whole = elapsed >= self.interval / 2;
            self.next_batch(busy, capacity, judged && whole)
        };
        self.batch.store(batch.as_nanos() as u64, Ordering::Relaxed);
        let was = self.overloaded.swap(overloaded, Ordering::Relaxed);
        if overloaded && !was && judge.logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            judge.logged_at = Some(Instant::now());
            tracing::info!(
                busy_percent = pair_busy * 100 / pair_capacity.max(1),
                "hub saturated: connections coalesce their writes (websocket.coalesce_interval)"
            );
        }
    }

    /// Overloads the hub for the next `ticks` ticks, whatever the runtime
    /// says (tests).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn overload_for(&self, ticks: u32) {
        lock(&self.judge).left = ticks;
        self.overloaded.store(ticks > 0, Ordering::Relaxed);
        // A sleeping ticker would never release what parks now.
        self.wake();
    }

    /// Batches `batch` until the next tick, whatever the runtime says
    /// (tests).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn batch_for(&self, batch: Duration) {
        self.batch.store(batch.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Wakes every parked connection now, as a tick does.
    pub(crate) fn release(&self) {
        let mut wakers = std::mem::take(&mut *lock(&self.parked));
        for waker in wakers.drain(..) {
            waker.wake();
        }
        // Keep the list's buffer for the next tick.
        let mut parked = lock(&self.parked);
        if parked.is_empty() {
            *parked = wakers;
        }
    }

    /// Ticks every interval until `shutdown` (nothing when holding is off),
    /// sleeping while nothing is delivered.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let runtime = tokio::runtime::Handle::current().metrics();
        let workers = runtime.num_workers();
        let busy_total = || -> Duration {
            (0..workers)
                .map(|w| runtime.worker_total_busy_duration(w))
                .sum()
        };
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.ticking.store(true, Ordering::Relaxed);
        let (mut last_at, mut last_busy) = (Instant::now(), busy_total());
        let mut quiet = 0;
        loop {
            let batch = self.batch();
            let due = tokio::select! {
                _ = shutdown.cancelled() => break,
                due = every.tick() => due.into_std(),
                _ = tokio::time::sleep(batch.unwrap_or_default()), if batch.is_some() => {
                    self.release();
                    continue;
                }
            };
            let (at, busy_now) = (Instant::now(), busy_total());
            let (busy, elapsed) = (
                busy_now.saturating_sub(last_busy),
                at.saturating_duration_since(last_at),
            );
            // The ticker is a task like any other: when it runs an interval
            // after it was due, so does every task woken meanwhile (a
            // publisher's next frames wait unread).
            let ran_late = at.saturating_duration_since(due) >= self.interval;
            let wrote_late = self.late.swap(false, Ordering::Relaxed);
            self.observe(busy, elapsed, workers, wrote_late || ran_late);
            (last_at, last_busy) = (at, busy_now);
            self.release();
            quiet = if self.delivered.swap(false, Ordering::Relaxed) {
                0
            } else {
                quiet + 1
            };
            if quiet >= IDLE_TICKS && self.may_sleep() {
                if !self.sleep(&shutdown).await {
                    break;
                }
                quiet = 0;
                every.reset();
                (last_at, last_busy) = (Instant::now(), busy_total());
            }
        }
        // Nothing parks from now on; what did is woken.
        self.ticking.store(false, Ordering::Relaxed);
        self.release();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the value consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::FutureExt;

    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn ticking() -> Pacer {
        let pacer = Pacer::new(TICK);
        pacer.ticking.store(true, Ordering::Relaxed);
        pacer
    }

    /// A tick at which the runtime's workers were busy `percent` of it,
    /// with events written late (the hub falling behind when it is busy).
    fn tick(pacer: &Pacer, workers: usize, percent: u32) {
        pacer.observe(TICK * workers as u32 * percent / 100, TICK, workers, true);
    }

    /// Saturates `pacer` from calm: three ticks start holding.
    fn saturate(pacer: &Pacer) {
        for _ in 0..ENTER_TICKS {
            assert!(!pacer.overloaded());
            tick(pacer, 1, 100);
        }
        assert!(pacer.overloaded());
    }

    /// Ticks at `percent` until it is the two-interval average.
    fn steady(pacer: &Pacer, percent: u32) {
        tick(pacer, 1, percent);
        tick(pacer, 1, percent);
    }

    #[test]
    fn three_saturated_ticks_in_a_row_hold_wakeups_until_ten_quiet_ones() {
        let pacer = ticking();
        // A burst of two saturated intervals starts nothing ...
        tick(&pacer, 1, 100);
        tick(&pacer, 1, 100);
        steady(&pacer, 50);
        assert!(!pacer.overloaded());
        // ... nor does 94 % ...
        steady(&pacer, 94);
        tick(&pacer, 1, 94);
        assert!(!pacer.overloaded());
        // ... but three ticks averaging 95 % do (the first of these
        // averages 94.5 %).
        for _ in 0..ENTER_TICKS {
            tick(&pacer, 1, 95);
        }
        assert!(!pacer.overloaded());
        tick(&pacer, 1, 95);
        assert!(pacer.overloaded());
        for n in 1..HOLD_TICKS {
            tick(&pacer, 1, 50);
            assert!(pacer.overloaded(), "quiet tick {n}");
        }
        tick(&pacer, 1, 50);
        assert!(!pacer.overloaded());
        // The next two intervals work off the last release: not judged ...
        tick(&pacer, 1, 100);
        tick(&pacer, 1, 100);
        assert!(!pacer.overloaded());
        // ... and soon after, one saturated tick starts it again.
        tick(&pacer, 1, 100);
        assert!(pacer.overloaded());
    }

    #[test]
    fn intervals_alternating_busy_and_quiet_while_holding_average_out() {
        let pacer = ticking();
        saturate(&pacer);
        // A tick's wave of wake-ups fills one interval, the next is quiet:
        // 80 % on average, not saturated.
        for _ in 0..HOLD_TICKS / 2 + 1 {
            tick(&pacer, 1, 98);
            tick(&pacer, 1, 62);
        }
        assert!(!pacer.overloaded());
    }

    #[test]
    fn long_after_coalescing_ended_a_short_burst_starts_nothing() {
        let pacer = ticking();
        saturate(&pacer);
        for _ in 0..HOLD_TICKS + RECENT_TICKS as u32 {
            tick(&pacer, 1, 10);
        }
        assert!(!pacer.overloaded());
        for _ in 0..ENTER_TICKS {
            tick(&pacer, 1, 100);
        }
        assert!(!pacer.overloaded(), "the first of them averages 55 %");
        tick(&pacer, 1, 100);
        assert!(pacer.overloaded());
    }

    #[test]
    fn another_saturated_tick_while_holding_starts_the_count_again() {
        let pacer = ticking();
        saturate(&pacer);
        for _ in 2..HOLD_TICKS {
            tick(&pacer, 1, 10);
        }
        // The first of these averages 52.5 %: one tick left ...
        tick(&pacer, 1, 95);
        assert!(pacer.overloaded());
        // ... and this one averages 95 %.
        tick(&pacer, 1, 95);
        for _ in 1..HOLD_TICKS {
            tick(&pacer, 1, 10);
        }
        assert!(pacer.overloaded());
        tick(&pacer, 1, 10);
        assert!(!pacer.overloaded());
    }

    #[test]
    fn saturation_counts_every_worker() {
        // One of two workers busy the whole time: half the capacity.
        let half = ticking();
        for _ in 0..2 * ENTER_TICKS {
            half.observe(TICK, TICK, 2, true);
        }
        assert!(!half.overloaded());
        let both = ticking();
        for _ in 0..ENTER_TICKS {
            tick(&both, 2, 96);
        }
        assert!(both.overloaded());
    }

    #[test]
    fn a_busy_hub_that_writes_on_time_holds_nothing_for_an_interval() {
        let pacer = ticking();
        // Busy all the time, every event written within an interval: it
        // batches (below), but never holds for the whole interval.
        for _ in 0..10 * ENTER_TICKS {
            pacer.observe(TICK, TICK, 1, false);
        }
        assert!(!pacer.overloaded());
        assert_eq!(pacer.batch(), Some(TICK), "batching, as long as it may");
        // Late writes alone (a quiet hub with one slow client) neither.
        for _ in 0..10 * ENTER_TICKS {
            pacer.observe(TICK / 2, TICK, 1, true);
        }
        assert!(!pacer.overloaded());
        // Busy and late: falling behind (the first of these ticks
        // averages 75 % with the one before).
        for _ in 0..ENTER_TICKS {
            tick(&pacer, 1, 100);
        }
        assert!(!pacer.overloaded());
        tick(&pacer, 1, 100);
        assert!(pacer.overloaded());
    }

    #[test]
    fn a_write_one_interval_after_the_publish_is_late() {
        let pacer = ticking();
        pacer.wrote(TICK - Duration::from_millis(1));
        assert!(!pacer.late.load(Ordering::Relaxed));
        pacer.wrote(TICK);
        assert!(pacer.late.load(Ordering::Relaxed));
        // Off: nothing is ever late.
        let off = Pacer::new(Duration::ZERO);
        off.wrote(Duration::from_secs(5));
        assert!(!off.late.load(Ordering::Relaxed));
    }

    /// A tick at which the runtime's one worker was busy `percent` of it,
    /// every event written on time.
    fn on_time(pacer: &Pacer, percent: u32) {
        pacer.observe(TICK * percent / 100, TICK, 1, false);
    }

    #[test]
    fn a_busy_hub_that_keeps_up_batches_as_long_as_its_load_needs() {
        let pacer = ticking();
        let ms = Duration::from_millis;
        // Below saturation nothing batches, however long.
        for _ in 0..10 {
            on_time(&pacer, 94);
        }
        assert_eq!(pacer.batch(), None);
        assert!(!pacer.holding());
        // One saturated interval starts the shortest batch; events that
        // land in an empty queue now wait for it.
        on_time(&pacer, 99);
        assert_eq!(pacer.batch(), Some(MIN_BATCH));
        assert!(pacer.holding());
        assert!(!pacer.overloaded());
        // Still 70 % busy or more: twice as long each interval, up to the
        // interval.
        on_time(&pacer, 90);
        assert_eq!(pacer.batch(), Some(ms(4)));
        on_time(&pacer, 70);
        assert_eq!(pacer.batch(), Some(ms(8)));
        // Between 55 % and 70 %: the batch that got it there stays.
        for percent in [69, 55, 65, 60] {
            on_time(&pacer, percent);
            assert_eq!(pacer.batch(), Some(ms(8)), "at {percent} %");
        }
        for expected in [16, 32, 64, 100, 100] {
            on_time(&pacer, 95);
            assert_eq!(pacer.batch(), Some(ms(expected)));
        }
        // Below 55 %: half as long each interval, and off below 2 ms.
        for expected in [50, 25, 12, 6, 3] {
            on_time(&pacer, 54);
            assert_eq!(pacer.batch().map(|b| b.as_millis()), Some(expected));
        }
        on_time(&pacer, 30);
        assert_eq!(pacer.batch(), None);
        assert!(!pacer.holding());
    }

    #[test]
    fn falling_behind_holds_for_the_interval_instead_of_batching() {
        let pacer = ticking();
        on_time(&pacer, 100);
        assert_eq!(pacer.batch(), Some(MIN_BATCH));
        saturate(&pacer);
        assert!(pacer.overloaded());
        assert_eq!(pacer.batch(), None, "the interval's tick wakes everyone");
        assert!(!pacer.may_sleep());
        // Holding ends after ten quiet intervals and two not judged; a busy
        // hub that keeps up batches again from the shortest batch.
        for _ in 0..HOLD_TICKS + u32::from(SETTLE_TICKS) {
            on_time(&pacer, 50);
        }
        assert!(!pacer.overloaded());
        assert_eq!(pacer.batch(), None);
        on_time(&pacer, 100);
        assert_eq!(pacer.batch(), Some(MIN_BATCH));
        assert!(!pacer.may_sleep(), "batching");
    }

    #[tokio::test]
    async fn a_batching_ticker_wakes_parked_connections_between_its_ticks() {
        struct Count(AtomicUsize, Notify);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(this: &Arc<Self>) {
                this.0.fetch_add(1, Ordering::SeqCst);
                this.1.notify_one();
            }
        }
        // Ticks a minute apart: only the batch can wake a parked
        // connection within the test's time.
        let pacer = Arc::new(Pacer::new(Duration::from_secs(60)));
        pacer
            .batch
            .store(MIN_BATCH.as_nanos() as u64, Ordering::Relaxed);
        let shutdown = CancellationToken::new();
        let ticker = tokio::spawn(Arc::clone(&pacer).run(shutdown.clone()));
        while !pacer.holding() {
            tokio::task::yield_now().await;
        }
        let woken = Arc::new(Count(AtomicUsize::new(0), Notify::new()));
        for n in 1..=3 {
            pacer.park(futures::task::waker(Arc::clone(&woken)));
            tokio::time::timeout(Duration::from_secs(10), woken.1.notified())
                .await
                .expect("woken by the batch, long before the next tick");
            assert_eq!(woken.0.load(Ordering::SeqCst), n);
        }
        shutdown.cancel();
        ticker.await.expect("ticker");
    }

    #[test]
    fn nothing_is_held_when_off_or_without_a_ticker() {
        let off = Pacer::new(Duration::ZERO);
        off.overload_for(5);
        assert!(off.overloaded());
        assert!(!off.holding(), "off: no ticker runs");
        let idle = ticking();
        idle.observe(Duration::ZERO, Duration::ZERO, 1, false);
        assert!(!idle.holding(), "no time passed: not saturated");
    }

    #[test]
    fn only_a_calm_verdict_lets_the_ticker_sleep() {
        let pacer = ticking();
        assert!(pacer.may_sleep(), "from start");
        tick(&pacer, 1, 100);
        assert!(!pacer.may_sleep(), "a saturated streak is running");
        tick(&pacer, 1, 100);
        tick(&pacer, 1, 100);
        assert!(pacer.overloaded());
        assert!(!pacer.may_sleep(), "holding");
        for _ in 0..HOLD_TICKS {
            tick(&pacer, 1, 10);
        }
        assert!(!pacer.overloaded());
        assert!(!pacer.may_sleep(), "settling");
        for _ in 0..RECENT_TICKS {
            tick(&pacer, 1, 10);
        }
        assert!(
            !pacer.may_sleep(),
            "one saturated interval would start it again"
        );
        tick(&pacer, 1, 10);
        assert!(pacer.may_sleep());
        pacer.park(futures::task::noop_waker());
        assert!(!pacer.may_sleep(), "a connection waits for a tick");
        pacer.release();
        assert!(pacer.may_sleep());
    }

    #[tokio::test]
    async fn a_delivery_wakes_the_sleeping_ticker() {
        let pacer = Arc::new(ticking());
        let shutdown = CancellationToken::new();
        let sleeper = tokio::spawn({
            let (pacer, shutdown) = (Arc::clone(&pacer), shutdown.clone());
            async move { pacer.sleep(&shutdown).await }
        });
        while !pacer.asleep() {
            tokio::task::yield_now().await;
        }
        pacer.delivering();
        assert!(!pacer.asleep(), "the delivery clears it at once");
        assert!(sleeper.await.expect("sleeper"), "woken, not shut down");
        // The next delivery in the same interval only reads the flag.
        pacer.delivering();
        assert!(!pacer.asleep());
    }

    #[test]
    fn a_delivery_just_before_sleeping_keeps_the_ticker_awake() {
        let pacer = ticking();
        let shutdown = CancellationToken::new();
        pacer.delivering();
        assert_eq!(pacer.sleep(&shutdown).now_or_never(), Some(true));
        assert!(!pacer.asleep());
    }

    #[tokio::test]
    async fn shutdown_ends_the_sleep() {
        let pacer = ticking();
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!pacer.sleep(&shutdown).await);
    }

    #[test]
    fn a_tick_wakes_every_parked_connection_once() {
        struct Count(AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(this: &Arc<Self>) {
                this.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let pacer = ticking();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        for _ in 0..3 {
            pacer.park(futures::task::waker(Arc::clone(&woken)));
        }
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        pacer.release();
        assert_eq!(woken.0.load(Ordering::SeqCst), 3);
        pacer.release();
        assert_eq!(woken.0.load(Ordering::SeqCst), 3);
        assert_eq!(pacer.held_wakeups(), 3);
    }
}
