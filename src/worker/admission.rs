//! Admission: how many messages the worker receives, and when an object
//! may start. One unit owns both counts: the object slots (at most
//! `worker.concurrency` objects at once) and the messages held (being
//! worked on, or received ahead and waiting for a slot).
//!
//! Receiving only when a slot is free leaves every slot idle for a whole
//! ReceiveMessage round trip after each object, which for small files is
//! most of the time. So the worker keeps a few messages waiting. But a
//! waiting message is hidden from every other worker, and from the queue
//! depth that scales the service; for large files it should wait for no
//! one. The buffer therefore holds only what the slots would start within
//! about [`TARGET_WAIT`], judged from the recent object times: many
//! messages for 10 KiB files, none for files that take minutes. Until an
//! object has finished, nothing is received ahead.
//!
//! Receives come in batches: once the buffer is in use, the worker waits
//! until a whole receive's worth (`max_messages`) has room, because each
//! request costs the same whether it returns one message or ten.
//!
//! The mean is a guess from past objects: after many small files, a run
//! of hour-long ones would hold the buffer hidden behind them. So a
//! message waits for a slot at most [`MAX_UNSTARTED_WAIT`] (a few seconds
//! beyond the buffer's [`TARGET_WAIT`]); then the worker hands it back to
//! the queue for other workers, and takes the wait as evidence that
//! objects are slow now, which stops receiving ahead until quick objects
//! bring the mean down again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use crate::telemetry;

/// A received message should wait about this long, at most, for a slot.
const TARGET_WAIT: Duration = Duration::from_secs(1);

/// The longest a received message waits for a slot before it is handed
/// back: the buffer's target plus a margin for the estimate being rough.
pub const MAX_UNSTARTED_WAIT: Duration = Duration::from_secs(TARGET_WAIT.as_secs() + 5);

/// Weight of the newest object time in the running mean.
const MEAN_WEIGHT: f64 = 0.2;

pub struct Admission {
    /// One permit per object being worked on.
    pub(super) slots: Semaphore,
    concurrency: usize,
    max_messages: usize,
    max_prefetch: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Received and not yet finished: being worked on or waiting for a slot.
    held: usize,
    /// Of `held`, objects whose rows wait in a group for its commit: they
    /// need no slot, so they do not stop receives (their number is bounded
    /// by the groups' size and age).
    parked: usize,
    /// Running mean of the time one object spends in a slot.
    mean_object_secs: Option<f64>,
}

/// One message's place in the worker; dropping it frees the place.
pub struct HeldMessage {
    admission: Arc<Admission>,
}

impl Drop for HeldMessage {
    fn drop(&mut self) {
        self.admission.update(|state| state.held -= 1);
    }
}

/// An object waiting in a group; dropping it ends the wait.
pub struct ParkedObject {
    admission: Arc<Admission>,
}

impl Drop for ParkedObject {
    fn drop(&mut self) {
        self.admission.update(|state| state.parked -= 1);
    }
}

impl Admission {
    pub fn new(concurrency: usize, max_messages: usize, max_prefetch: usize) -> Admission {
        Admission {
            slots: Semaphore::new(concurrency),
            concurrency,
            max_messages: max_messages.max(1),
            max_prefetch,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// Waits until a receive is due, then says how many messages to ask for.
    pub async fn wait_for_room(&self) -> usize {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change in between still wakes us.
            changed.as_mut().enable();
            let due = {
                let state = self.state.lock().unwrap();
                receive_size(
                    state.held.saturating_sub(state.parked),
                    self.concurrency,
                    self.max_messages,
                    self.prefetch(&state),
                )
            };
            if let Some(count) = due {
                return count;
            }
            changed.await;
        }
    }

    /// Takes a place for each of `count` received messages.
    pub fn hold(self: &Arc<Self>, count: usize) -> Vec<HeldMessage> {
        self.update(|state| state.held += count);
        (0..count)
            .map(|_| HeldMessage {
                admission: self.clone(),
            })
            .collect()
    }

    /// Counts an object as parked in a group until the guard is dropped.
    pub fn park(self: &Arc<Self>) -> ParkedObject {
        self.update(|state| state.parked += 1);
        ParkedObject {
            admission: self.clone(),
        }
    }

    /// Waits for an object slot, at most [`MAX_UNSTARTED_WAIT`]; `None`
    /// when that passed (the message should go back to the queue).
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        match tokio::time::timeout(MAX_UNSTARTED_WAIT, self.slots.acquire()).await {
            Ok(permit) => Some(permit.expect("the semaphore is never closed")),
            Err(_) => {
                self.waited_too_long(MAX_UNSTARTED_WAIT);
                None
            }
        }
    }

    /// No slot freed within `waited`: objects take at least that long now,
    /// whatever the mean says; receive ahead no more than that allows.
    fn waited_too_long(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        self.update(|state| {
            state.mean_object_secs = Some(state.mean_object_secs.unwrap_or(0.0).max(seconds));
        });
    }

    /// Records how long one object spent in a slot.
    pub fn object_finished(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.update(|state| {
            state.mean_object_secs = Some(match state.mean_object_secs {
                Some(mean) => mean + MEAN_WEIGHT * (seconds - mean),
                None => seconds,
            });
        });
    }

    /// Messages received ahead of free slots right now.
    #[cfg(test)]
    fn current_prefetch(&self) -> usize {
        self.prefetch(&self.state.lock().unwrap())
    }

    fn prefetch(&self, state: &State) -> usize {
        prefetch_for(state.mean_object_secs, self.concurrency, self.max_prefetch)
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let (held, parked, prefetch) = {
            let mut state = self.state.lock().unwrap();
            change(&mut state);
            (
                state.held.saturating_sub(state.parked),
                state.parked,
                self.prefetch(&state),
            )
        };
        telemetry::messages_held(held, prefetch);
        telemetry::objects_parked(parked);
        self.changed.notify_waiters();
    }
}

/// How many messages to hold beyond the slots: what the slots start within
/// `TARGET_WAIT` at the mean object time; none before the first object.
fn prefetch_for(mean_object_secs: Option<f64>, concurrency: usize, max_prefetch: usize) -> usize {
    let Some(mean) = mean_object_secs else {
        return 0;
    };
    let starts_within_target = concurrency as f64 * TARGET_WAIT.as_secs_f64() / mean.max(1e-3);
    (starts_within_target.floor() as usize).min(max_prefetch)
}

/// Whether to receive now, and how many: `None` while fewer places are
/// free than one receive should fill. Without prefetch that is one place
/// (receive as soon as a slot frees); with it, `prefetch` places up to a
/// full receive, so each request brings a batch while the slots stay busy.
fn receive_size(
    held: usize,
    concurrency: usize,
    max_messages: usize,
    prefetch: usize,
) -> Option<usize> {
    let room = (concurrency + prefetch).saturating_sub(held);
    let worth_a_receive = prefetch.clamp(1, max_messages);
    (room >= worth_a_receive).then(|| room.min(max_messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_prefetch_a_receive_fills_the_free_slots() {
        assert_eq!(receive_size(0, 4, 10, 0), Some(4));
        assert_eq!(receive_size(3, 4, 10, 0), Some(1));
        assert_eq!(receive_size(4, 4, 10, 0), None);
    }

    #[test]
    fn with_prefetch_a_receive_waits_for_a_full_batch() {
        // 4 slots + 20 ahead: receive 10 once 10 places are free, so 14
        // messages (4 working, 10 waiting) are still held meanwhile.
        assert_eq!(receive_size(0, 4, 10, 20), Some(10));
        assert_eq!(receive_size(14, 4, 10, 20), Some(10));
        assert_eq!(receive_size(15, 4, 10, 20), None);
        // A small buffer asks for what it has room for.
        assert_eq!(receive_size(4, 4, 10, 3), Some(3));
        assert_eq!(receive_size(5, 4, 10, 3), None);
    }

    #[test]
    fn prefetch_follows_the_object_time() {
        // Nothing known yet: receive only for free slots.
        assert_eq!(prefetch_for(None, 4, 20), 0);
        // 10 ms objects on 4 slots: 400 start per second; capped.
        assert_eq!(prefetch_for(Some(0.010), 4, 20), 20);
        // 500 ms objects: 8 start within a second.
        assert_eq!(prefetch_for(Some(0.5), 4, 20), 8);
        // Minutes per object: nobody should wait behind them.
        assert_eq!(prefetch_for(Some(120.0), 4, 20), 0);
        // Turned off.
        assert_eq!(prefetch_for(Some(0.010), 4, 0), 0);
    }

    #[tokio::test]
    async fn places_come_back_when_messages_finish() {
        let admission = Arc::new(Admission::new(2, 10, 20));
        assert_eq!(admission.wait_for_room().await, 2);
        let mut held = admission.hold(2);
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no place is free");
        // A fast object: from now on messages are received ahead.
        admission.object_finished(Duration::from_millis(10));
        assert_eq!(admission.current_prefetch(), 20);
        assert_eq!(waiting.await.unwrap(), 10);
        held.clear();
        assert_eq!(admission.state.lock().unwrap().held, 0);
    }

    #[tokio::test]
    async fn objects_parked_in_a_group_do_not_stop_receives() {
        let admission = Arc::new(Admission::new(2, 10, 0));
        let held = admission.hold(2);
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "both slots' messages are held");
        // Both objects' rows are in a group now: their messages stay held
        // (leased) until it commits, but two more may be received.
        let parked = [admission.park(), admission.park()];
        assert_eq!(waiting.await.unwrap(), 2);
        drop(parked);
        drop(held);
        let state = admission.state.lock().unwrap();
        assert_eq!((state.held, state.parked), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waits_for_a_slot_a_bounded_time_then_receiving_ahead_stops() {
        let admission = Admission::new(1, 10, 20);
        // Many small files: twenty messages may wait ahead of one slot.
        for _ in 0..20 {
            admission.object_finished(Duration::from_millis(10));
        }
        assert_eq!(admission.current_prefetch(), 20);
        // An hour-long object takes the slot.
        let busy = admission.slot().await.expect("a free slot");
        let started = tokio::time::Instant::now();
        assert!(admission.slot().await.is_none());
        let waited = started.elapsed();
        assert!(
            waited >= MAX_UNSTARTED_WAIT && waited < MAX_UNSTARTED_WAIT + Duration::from_secs(1),
            "{waited:?}"
        );
        // The wait says objects are slow now: nothing more is received ahead.
        assert_eq!(admission.current_prefetch(), 0);
        // A slot that frees within the bound is taken.
        let waiting = {
            let admission = Arc::new(Admission::new(0, 10, 20));
            let task = {
                let admission = admission.clone();
                tokio::spawn(async move { admission.slot().await.is_some() })
            };
            tokio::time::sleep(MAX_UNSTARTED_WAIT - Duration::from_secs(1)).await;
            admission.slots.add_permits(1);
            task
        };
        assert!(waiting.await.unwrap());
        drop(busy);
    }

    #[test]
    fn the_mean_object_time_moves_towards_recent_objects() {
        let admission = Admission::new(4, 10, 20);
        admission.object_finished(Duration::from_secs(60));
        assert_eq!(admission.current_prefetch(), 0);
        for _ in 0..40 {
            admission.object_finished(Duration::from_millis(20));
        }
        assert_eq!(admission.current_prefetch(), 20);
    }
}
