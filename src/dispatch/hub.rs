//! What the publisher and the dispatcher share: the per-destination runtimes, the count of
//! deliveries held in memory, the leases being renewed, and the hand-over of freshly published
//! deliveries.
//!
//! Hand-over: when a destination has room, the publisher inserts its new deliveries already
//! leased to this instance (`DELIVERING`, lease as a claim would set it) and, once the
//! transaction has committed, passes them to the dispatcher in memory. That saves the claim
//! (an UPDATE of every row), the reload of events and destinations, and the wake-up round trip
//! — a third of the queue's row writes on PostgreSQL. Nothing is lost if the process dies in
//! between: the rows are leased like claimed ones, so they come back when the lease lapses
//! (or at the next start, on SQLite). Destinations that must keep their order or batch, or
//! whose queue here is full, go through the queue; a destination whose circuit is
//! open gets its new deliveries parked.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entity::{destination, event};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use super::circuit::Health;
use super::claim::Claimed;
use super::runtime::{DestRuntime, Runtimes};
use crate::service::now;

/// What the deliveries held in memory (claimed or handed over, not yet finished) may add up to,
/// in bytes. Each is counted with its event's whole payload and [`DELIVERY_OVERHEAD`], although
/// the deliveries of one event share its payload: a bound, not an estimate. The window in
/// deliveries (`max_in_memory`) can then be wide for the common small events — fewer
/// deliveries go through the queue and its claim — while 256 KiB events still cannot fill
/// gigabytes. A claim may pass the budget by its last batch (payload sizes are known only
/// once the events are loaded); hand-overs never do.
pub const WINDOW_BYTES: usize = 128 << 20;

/// What a delivery held in memory is counted as beside its event's payload: its claim, its
/// lease entry and its waiting send task. Measured: `fanout`'s peak RSS grows by ≈ 1.7 KiB for
/// every delivery the window holds more (BENCHMARKS.md, "The in-memory window is bounded in
/// bytes").
pub const DELIVERY_OVERHEAD: usize = 2048;

/// The bytes a delivery of an event with `payload_len` bytes is counted as.
pub fn cost(payload_len: usize) -> usize {
    payload_len + DELIVERY_OVERHEAD
}

/// The bytes `items` are counted as (a delivery whose event is gone: the overhead alone).
pub fn cost_of(items: &[(Claimed, Option<Arc<event::Model>>)]) -> usize {
    items
        .iter()
        .map(|(_, e)| cost(e.as_ref().map_or(0, |e| e.payload.len())))
        .sum()
}

/// Deliveries of one destination, committed and leased to this instance.
pub struct Handover {
    pub destination: destination::Model,
    /// The runtime whose counters [`Hub::route`] raised.
    pub runtime: Arc<DestRuntime>,
    pub items: Vec<(Claimed, Option<Arc<event::Model>>)>,
}

/// Where the publisher puts a new delivery.
pub enum Route {
    /// Leased to this instance and handed to its dispatcher after the commit.
    Handover(Arc<DestRuntime>),
    /// Due now, for whichever instance claims it.
    Queue,
    /// The destination's circuit is open: not due until a probe succeeds.
    Park,
}

pub struct Hub {
    pub runtimes: Runtimes,
    /// Claimed or handed-over deliveries not yet finished, across destinations.
    pub in_memory: AtomicUsize,
    /// What they are counted as in bytes (see [`WINDOW_BYTES`]).
    pub in_memory_bytes: AtomicUsize,
    pub finished: Notify,
    /// Ids of the deliveries this instance is working on: only these leases are renewed, so a
    /// claim whose answer was lost (a dropped connection) lapses and returns.
    pub held: Mutex<HashSet<Uuid>>,
    /// Upper bound of `in_memory` (claims and hand-overs stop there).
    pub max_in_memory: usize,
    /// Upper bound of `in_memory_bytes` (likewise).
    pub max_in_memory_bytes: usize,
    pub lease: Duration,
    pub instance_id: Arc<str>,
    /// True while a dispatcher runs here and takes hand-overs.
    accepting: AtomicBool,
    /// Bumped after every committed change that can alter which destinations an event
    /// reaches or how (destinations, subscriptions; see `graphql::RulesChanged`). The
    /// publisher keeps rules read at the current generation (SQLite only: one instance).
    rules_generation: std::sync::atomic::AtomicU64,
    inbox: mpsc::UnboundedSender<Handover>,
    inbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Handover>>>,
}

impl Hub {
    pub fn new(
        max_in_memory: usize,
        max_in_memory_bytes: usize,
        lease: Duration,
        instance_id: Arc<str>,
    ) -> Self {
        let (inbox, rx) = mpsc::unbounded_channel();
        Self {
            runtimes: Runtimes::default(),
            in_memory: AtomicUsize::new(0),
            in_memory_bytes: AtomicUsize::new(0),
            max_in_memory_bytes,
            finished: Notify::new(),
            held: Mutex::new(HashSet::new()),
            max_in_memory,
            lease,
            instance_id,
            accepting: AtomicBool::new(false),
            rules_generation: Default::default(),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
        }
    }

    /// Where a new delivery of `d`, of an event with `payload_len` bytes, goes.
    /// [`Route::Handover`] raises the counters (undo with [`Hub::unreserve`] if the transaction
    /// fails).
    pub fn route(&self, d: &destination::Model, payload_len: usize) -> Route {
        if !d.enabled || d.deleted_at.is_some() {
            return Route::Queue;
        }
        let rt = self.runtimes.get(d);
        let h = rt.health();
        // An open circuit: parked until a probe closes it (see `probe_parked` in the claim
        // loop). Not for ordered destinations (their head waits in the queue) nor lossy ones
        // (the dispatcher discards what they are sent while they fail).
        if h.health == Health::Failing {
            // Once the probe is due and none is in flight, the next delivery may be it: due
            // now rather than parked until the next `take_probes` pass finds something.
            let probe_due =
                h.gate.is_none_or(|g| g <= now()) && !rt.probing.load(Ordering::Acquire);
            return if d.ordered || d.lossy || probe_due {
                Route::Queue
            } else {
                Route::Park
            };
        }
        if d.ordered
            || d.batch_size > 1
            || !self.accepting.load(Ordering::Acquire)
            || self.in_memory.load(Ordering::Relaxed) >= self.max_in_memory
            || self.in_memory_bytes.load(Ordering::Relaxed) + cost(payload_len)
                > self.max_in_memory_bytes
            || rt.waiting.load(Ordering::Relaxed) >= rt.waiting_cap()
            || h.gate.is_some_and(|g| g > now())
        {
            return Route::Queue;
        }
        self.reserve(&rt, 1, cost(payload_len));
        Route::Handover(rt)
    }

    pub fn rules_generation(&self) -> u64 {
        self.rules_generation.load(Ordering::Acquire)
    }

    /// Call after committing a change to destinations or subscriptions.
    pub fn rules_changed(&self) {
        self.rules_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts `n` deliveries of `rt`, `bytes` in all (see [`cost`]), as held in memory.
    pub fn reserve(&self, rt: &DestRuntime, n: usize, bytes: usize) {
        rt.waiting.fetch_add(n, Ordering::Relaxed);
        self.in_memory.fetch_add(n, Ordering::Relaxed);
        self.in_memory_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back what [`Hub::reserve`] counted: deliveries finished with, or not committed.
    pub fn unreserve(&self, rt: &DestRuntime, n: usize, bytes: usize) {
        rt.waiting.fetch_sub(n, Ordering::Relaxed);
        self.in_memory.fetch_sub(n, Ordering::Relaxed);
        self.in_memory_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.finished.notify_one();
    }

    /// Whether claims may take more deliveries: how many, at most.
    pub fn room(&self) -> usize {
        if self.in_memory_bytes.load(Ordering::Relaxed) >= self.max_in_memory_bytes {
            return 0;
        }
        self.max_in_memory
            .saturating_sub(self.in_memory.load(Ordering::Relaxed))
    }

    /// Passes committed, leased deliveries to the dispatcher. If it has stopped meanwhile,
    /// the leases bring them back (shutdown releases them, or they lapse).
    pub fn hand_over(&self, h: Handover) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(h.items.iter().map(|(c, _)| c.id));
        if let Err(mpsc::error::SendError(h)) = self.inbox.send(h) {
            self.forget_all(h.items.iter().map(|(c, _)| c.id));
            self.unreserve(&h.runtime, h.items.len(), cost_of(&h.items));
        }
    }

    pub fn forget_all(&self, ids: impl Iterator<Item = Uuid>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            held.remove(&id);
        }
    }

    /// The dispatcher takes the inbox once, when it starts.
    pub(super) fn open(&self) -> Option<mpsc::UnboundedReceiver<Handover>> {
        let rx = self
            .inbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.accepting.store(true, Ordering::Release);
        Some(rx)
    }

    /// No more hand-overs: new deliveries go through the queue.
    pub(super) fn close(&self) {
        self.accepting.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{DELIVERY_OVERHEAD, Hub, Route, cost};

    fn handed(r: Route) -> bool {
        matches!(r, Route::Handover(_))
    }

    #[test]
    fn hand_overs_stop_at_the_byte_budget_and_resume_when_it_is_given_back() {
        // Room for 100 deliveries, but only for three and a half of these in bytes.
        let payload = 2_500;
        let budget = 3 * cost(payload) + cost(payload) / 2;
        let hub = Hub::new(100, budget, Duration::from_secs(30), Arc::from("i"));
        let _inbox = hub.open().expect("inbox");
        let d = crate::service::test_destination();
        assert!(handed(hub.route(&d, payload)));
        assert!(handed(hub.route(&d, payload)));
        assert!(handed(hub.route(&d, payload)));
        assert_eq!(
            hub.in_memory_bytes.load(super::Ordering::Relaxed),
            3 * cost(payload)
        );
        // A fourth would pass the budget: the queue takes it. One that fills it exactly is
        // handed over, and then claims take nothing more.
        assert!(matches!(hub.route(&d, payload), Route::Queue));
        assert!(handed(
            hub.route(&d, budget - 3 * cost(payload) - DELIVERY_OVERHEAD)
        ));
        assert_eq!(hub.in_memory_bytes.load(super::Ordering::Relaxed), budget);
        assert_eq!(hub.room(), 0, "no claims while the byte budget is spent");
        let rt = hub.runtimes.get(&d);
        hub.unreserve(&rt, 2, 2 * cost(payload));
        assert!(hub.room() > 0);
        assert!(handed(hub.route(&d, payload)));
        assert_eq!(hub.in_memory.load(super::Ordering::Relaxed), 3);
        assert_eq!(rt.waiting.load(super::Ordering::Relaxed), 3);
    }

    #[test]
    fn the_count_still_bounds_small_deliveries() {
        let hub = Hub::new(2, 1 << 20, Duration::from_secs(30), Arc::from("i"));
        let _inbox = hub.open().expect("inbox");
        let d = crate::service::test_destination();
        assert!(handed(hub.route(&d, 10)));
        assert!(handed(hub.route(&d, 10)));
        assert!(matches!(hub.route(&d, 10), Route::Queue));
        assert_eq!(hub.room(), 0);
    }
}
