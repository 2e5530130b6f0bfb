//! One connection's outbound queue: many producers (publishes, the task
//! dispatcher), one consumer (the connection's task).
//!
//! A `VecDeque` behind a mutex and an [`AtomicWaker`]. Compared with a
//! general channel (flume before this) it allocates nothing while idle,
//! nothing per wait (flume allocated a waiting hook on every wait and took
//! its lock twice more to remove it), and gives a burst's buffer back once
//! the burst is written, so a connection that once fell behind does not
//! keep 16 KiB of slots for the rest of its life.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;

/// Slots kept after the queue drains; a larger buffer is freed.
pub(super) const KEEP_SLOTS: usize = 64;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PushError<T> {
    /// The queue holds its capacity: the consumer is not keeping up.
    Full(T),
    /// The consumer is gone.
    Closed(T),
}

/// A bounded multi-producer, single-consumer queue.
#[derive(Debug)]
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// The consumer's task while it waits.
    waker: AtomicWaker,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The consumer's waker while its wake-up is parked (see
    /// [`Queue::push_parked`]): for waking it early.
    parked: Option<Waker>,
}

impl<T> Queue<T> {
    /// A queue that holds at most `capacity` items (at least one).
    pub(super) fn new(capacity: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                parked: None,
            }),
            capacity: capacity.max(1),
            waker: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `item`, and wakes the consumer if the queue was empty; never
    /// waits.
    ///
    /// A push onto a non-empty queue wakes nobody: the consumer was woken
    /// by the push that made the queue non-empty, or has not yet looked
    /// (it registers before its last look, see [`poll_pop`]), and either
    /// way it drains the queue before it sleeps. Under load most pushes
    /// land on a non-empty queue, and skip the wake-up. The exception is a
    /// consumer whose wake-up a [`push_parked`](Self::push_parked) put off:
    /// this push wakes it now.
    ///
    /// Returns whether the queue is now at least half full (its consumer
    /// is falling behind whoever pushes).
    ///
    /// [`poll_pop`]: Self::poll_pop
    pub(super) fn push(&self, item: T) -> Result<bool, PushError<T>> {
        let (len, parked) = {
            let mut state = self.add(item)?;
            (state.items.len(), state.parked.take())
        };
        let was_empty = len == 1;
        // A parked consumer is woken now too: only events wait.
        if let Some(waker) = parked {
            waker.wake();
        } else if was_empty {
            self.waker.wake();
        }
        Ok(self.half_full(len))
    }

    /// Whether `len` items fill at least half the queue.
    fn half_full(&self, len: usize) -> bool {
        len >= self.capacity.div_ceil(2)
    }

    /// Like [`push`](Self::push), but a consumer to wake is handed to
    /// `park` instead, to be woken later (with whatever queued meanwhile).
    /// Once the queue is half full it is woken at once all the same, so a
    /// consumer that keeps up is never dropped for a wake-up put off here.
    /// Returns whether the queue is now at least half full.
    pub(super) fn push_parked(
        &self,
        item: T,
        park: impl FnOnce(Waker),
    ) -> Result<bool, PushError<T>> {
        let (len, to_park, to_wake) = {
            let mut state = self.add(item)?;
            let len = state.items.len();
            let (to_park, to_wake) = if len == 1 {
                match self.waker.take() {
                    Some(waker) => {
                        state.parked = Some(waker.clone());
                        (Some(waker), None)
                    }
                    None => (None, None),
                }
            } else if self.half_full(len) {
                (None, state.parked.take())
            } else {
                (None, None)
            };
            (len, to_park, to_wake)
        };
        if let Some(waker) = to_park {
            park(waker);
        }
        if let Some(waker) = to_wake {
            waker.wake();
        }
        Ok(self.half_full(len))
    }

    /// Appends `item`; returns the locked state.
    fn add(&self, item: T) -> Result<MutexGuard<'_, State<T>>, PushError<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(item));
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        state.items.push_back(item);
        Ok(state)
    }

    /// The oldest item, if any.
    pub(super) fn try_pop(&self) -> Option<T> {
        let mut state = self.lock();
        // The consumer is awake.
        state.parked = None;
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            state.items = VecDeque::new();
        }
        item
    }

    /// Moves up to `max` of the oldest items to the back of `batch`, under
    /// one lock. Only the consumer may call this.
    ///
    /// When everything queued fits and `batch` is empty the two buffers
    /// trade places, so a drained batch's buffer becomes the queue's and
    /// the items move without a copy. Compared with a [`try_pop`] per
    /// item, a burst of *n* costs one lock instead of *n*.
    ///
    /// [`try_pop`]: Self::try_pop
    pub(super) fn pop_batch(&self, batch: &mut VecDeque<T>, max: usize) {
        let mut state = self.lock();
        // The consumer is awake.
        state.parked = None;
        let len = state.items.len();
        if len == 0 {
            return;
        }
        if len <= max && batch.is_empty() {
            std::mem::swap(&mut state.items, batch);
            if state.items.capacity() > KEEP_SLOTS {
                state.items = VecDeque::new();
            }
        } else {
            batch.extend(state.items.drain(..len.min(max)));
        }
    }

    /// The oldest item, waiting for one. Only the consumer may call this
    /// (one waker is kept).
    pub(super) async fn pop(&self) -> T {
        poll_fn(|cx| self.poll_pop(cx)).await
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(item) = self.try_pop() {
            return Poll::Ready(item);
        }
        // Registered before the second look, so a push in between wakes us.
        self.waker.register(cx.waker());
        match self.try_pop() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// The consumer is gone: later pushes are refused and what is queued
    /// is dropped.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items = VecDeque::new();
        state.parked = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn items_leave_in_order_and_a_full_queue_refuses() {
        let queue = Queue::new(3);
        // Half full from the second item on (half of 3, rounded up).
        for (n, half_full) in [(0, false), (1, true), (2, true)] {
            assert_eq!(queue.push(n), Ok(half_full));
        }
        assert_eq!(queue.push(3), Err(PushError::Full(3)));
        assert_eq!(queue.try_pop(), Some(0));
        assert_eq!(queue.push(4), Ok(true));
        let rest: Vec<_> = std::iter::from_fn(|| queue.try_pop()).collect();
        assert_eq!(rest, [1, 2, 4]);
        assert!(queue.lock().items.is_empty());
    }

    #[test]
    fn a_closed_queue_refuses_and_drops_what_it_held() {
        let queue = Queue::new(8);
        queue.push(1).expect("room");
        queue.close();
        assert!(queue.lock().items.is_empty());
        assert_eq!(queue.push(2), Err(PushError::Closed(2)));
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let queue = Queue::new(4096);
        for n in 0..1000 {
            queue.push(n).expect("room");
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().items.capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn a_batch_takes_the_oldest_items_in_order_under_its_limit() {
        let queue = Queue::new(16);
        let mut batch = VecDeque::new();
        queue.pop_batch(&mut batch, 4);
        assert!(batch.is_empty(), "nothing queued, nothing taken");
        for n in 0..6 {
            queue.push(n).expect("room");
        }
        queue.pop_batch(&mut batch, 4);
        assert_eq!(batch, [0, 1, 2, 3]);
        // Items left in the batch stay ahead of what is taken next.
        queue.push(6).expect("room");
        queue.pop_batch(&mut batch, 10);
        assert_eq!(batch, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(queue.try_pop(), None);
        // What was taken is no longer counted against the capacity.
        for n in 0..16 {
            queue.push(n).expect("room");
        }
        assert_eq!(queue.push(16), Err(PushError::Full(16)));
    }

    #[test]
    fn a_whole_queue_trades_buffers_with_an_empty_batch() {
        let queue = Queue::new(4096);
        let mut batch = VecDeque::new();
        for n in 0..1000 {
            queue.push(n).expect("room");
        }
        queue.pop_batch(&mut batch, 4096);
        assert_eq!(batch.len(), 1000);
        assert!(batch.iter().copied().eq(0..1000));
        // The queue got the batch's empty buffer, not the burst's.
        assert!(queue.lock().items.capacity() <= KEEP_SLOTS);
        batch.clear();
        // A burst's buffer handed back is not kept either.
        queue.push(1).expect("room");
        queue.pop_batch(&mut batch, 4096);
        assert_eq!(batch, [1]);
        assert!(queue.lock().items.capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn a_batch_wakes_a_parked_consumer_no_more() {
        let queue = Queue::new(8);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(queue.poll_pop(&mut cx), Poll::Pending);
        let mut parked = Vec::new();
        queue.push_parked(1, |w| parked.push(w)).expect("room");
        assert!(queue.lock().parked.is_some());
        let mut batch = VecDeque::new();
        queue.pop_batch(&mut batch, 8);
        assert_eq!(batch, [1]);
        assert!(queue.lock().parked.is_none(), "the consumer is awake");
    }

    /// Counts wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl futures::task::ArcWake for Count {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_parked_push_hands_the_waiting_consumer_over_instead_of_waking_it() {
        let woken = Arc::new(Count(Default::default()));
        let waker = futures::task::waker(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let queue = Queue::new(8);
        assert_eq!(queue.poll_pop(&mut cx), Poll::Pending);
        let mut parked = Vec::new();
        queue.push_parked(1, |w| parked.push(w)).expect("room");
        // The queue was not empty any more: nobody to hand over.
        queue.push_parked(2, |w| parked.push(w)).expect("room");
        assert_eq!(parked.len(), 1);
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        parked.pop().expect("parked").wake();
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(queue.poll_pop(&mut cx), Poll::Ready(1));
        assert_eq!(queue.try_pop(), Some(2));
    }

    /// A consumer whose wake-up is parked, with its wake-up count.
    fn parked_consumer(queue: &Queue<u32>) -> Arc<Count> {
        let woken = Arc::new(Count(Default::default()));
        let waker = futures::task::waker(Arc::clone(&woken));
        assert_eq!(
            queue.poll_pop(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        queue.push_parked(0, drop).expect("room");
        woken
    }

    #[test]
    fn a_parked_consumer_is_woken_once_its_queue_is_half_full() {
        let queue = Queue::new(8);
        let woken = parked_consumer(&queue);
        for n in 1..3 {
            queue
                .push_parked(n, |_| panic!("parked twice"))
                .expect("room");
        }
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        queue
            .push_parked(3, |_| panic!("parked twice"))
            .expect("room");
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        queue
            .push_parked(4, |_| panic!("parked twice"))
            .expect("room");
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_plain_push_wakes_a_parked_consumer_at_once() {
        let queue = Queue::new(8);
        let woken = parked_consumer(&queue);
        queue.push(1).expect("room");
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let rest: Vec<_> = std::iter::from_fn(|| queue.try_pop()).collect();
        assert_eq!(rest, [0, 1]);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push_from_another_task() {
        let queue = Arc::new(Queue::new(8));
        let consumer = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move {
                let mut got = Vec::new();
                for _ in 0..100 {
                    got.push(queue.pop().await);
                }
                got
            }
        });
        for n in 0..100 {
            // Pushes interleave with the consumer's waits.
            while let Err(PushError::Full(_)) = queue.push(n) {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), consumer)
            .await
            .expect("the consumer was woken for every item")
            .expect("consumer task");
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
