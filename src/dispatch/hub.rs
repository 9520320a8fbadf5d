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
//! whose queue here is full, go through the queue as before; a destination whose circuit is
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
    pub finished: Notify,
    /// Ids of the deliveries this instance is working on: only these leases are renewed, so a
    /// claim whose answer was lost (a dropped connection) lapses and returns.
    pub held: Mutex<HashSet<Uuid>>,
    /// Upper bound of `in_memory` (claims and hand-overs stop there).
    pub max_in_memory: usize,
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
    pub fn new(max_in_memory: usize, lease: Duration, instance_id: Arc<str>) -> Self {
        let (inbox, rx) = mpsc::unbounded_channel();
        Self {
            runtimes: Runtimes::default(),
            in_memory: AtomicUsize::new(0),
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

    /// Where a new delivery of `d` goes. [`Route::Handover`] raises the counters (undo with
    /// [`Hub::unreserve`] if the transaction fails).
    pub fn route(&self, d: &destination::Model) -> Route {
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
            || rt.waiting.load(Ordering::Relaxed) >= rt.waiting_cap()
            || h.gate.is_some_and(|g| g > now())
        {
            return Route::Queue;
        }
        rt.waiting.fetch_add(1, Ordering::Relaxed);
        self.in_memory.fetch_add(1, Ordering::Relaxed);
        Route::Handover(rt)
    }

    pub fn rules_generation(&self) -> u64 {
        self.rules_generation.load(Ordering::Acquire)
    }

    /// Call after committing a change to destinations or subscriptions.
    pub fn rules_changed(&self) {
        self.rules_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives back reservations whose deliveries were not committed.
    pub fn unreserve(&self, rt: &DestRuntime, n: usize) {
        rt.waiting.fetch_sub(n, Ordering::Relaxed);
        self.in_memory.fetch_sub(n, Ordering::Relaxed);
        self.finished.notify_one();
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
            self.unreserve(&h.runtime, h.items.len());
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
