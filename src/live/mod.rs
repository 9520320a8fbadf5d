//! The live bus: finished attempts and destination status changes, published after their rows
//! commit, fanned out to GraphQL subscriptions. In-process it is a registry of bounded
//! per-subscriber queues routed by tenant, kind and destination; a slow subscriber lags (and
//! is told) instead of slowing the publisher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, event};
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub enum LiveEvent {
    Attempt(Arc<LiveAttempt>),
    Status(Arc<StatusChange>),
}

/// A finished attempt, with its delivery (as this attempt left it) and its event when the
/// instance that made it still had them in memory; subscribers asking for those relations
/// then need no query. Attempts from other instances come without them.
#[derive(Clone, Debug)]
pub struct LiveAttempt {
    pub attempt: delivery_attempt::Model,
    pub delivery: Option<delivery::Model>,
    pub event: Option<Arc<event::Model>>,
}

impl LiveAttempt {
    pub fn bare(attempt: delivery_attempt::Model) -> Self {
        LiveAttempt {
            attempt,
            delivery: None,
            event: None,
        }
    }
}

impl LiveEvent {
    pub fn tenant(&self) -> &str {
        match self {
            LiveEvent::Attempt(a) => &a.attempt.tenant_id,
            LiveEvent::Status(s) => &s.tenant_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub tenant_id: String,
    pub destination_id: Uuid,
    pub status: String,
    pub enabled: bool,
    pub at: DateTime<Utc>,
}

/// Which stream of the bus a subscriber reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Attempts,
    Status,
}

/// What one subscriber receives: one tenant's items of one kind, optionally only one
/// destination's. Publishing reaches only the subscribers whose route matches, so a tenant's
/// idle subscribers cost nothing while another tenant is busy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub tenant: String,
    pub kind: Kind,
    pub destination: Option<Uuid>,
}

/// The in-process bus. Each subscriber has a bounded queue of its own (allocated as items
/// arrive, not up front, so thousands of idle subscribers hold little memory); the registry
/// routes by tenant, kind and destination, so publishing costs one lookup plus one push per
/// matching subscriber. A subscriber whose queue is full misses the item, and is told how
/// many it missed on its next receive, instead of slowing the publisher.
#[derive(Clone)]
pub struct LiveBus {
    inner: Arc<Registry>,
}

impl std::fmt::Debug for LiveBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBus")
            .field("capacity", &self.inner.capacity)
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

struct Registry {
    capacity: usize,
    next_id: AtomicU64,
    count: AtomicUsize,
    routes: RwLock<Routes>,
}

#[derive(Default)]
struct Routes {
    /// Subscribers of every item of every tenant (in-process consumers and tests).
    everything: Subs,
    /// Entries exist only while they have subscribers.
    tenants: HashMap<String, TenantRoutes>,
}

#[derive(Default)]
struct TenantRoutes {
    attempts: KindRoutes,
    status: KindRoutes,
}

impl TenantRoutes {
    fn kind(&mut self, kind: Kind) -> &mut KindRoutes {
        match kind {
            Kind::Attempts => &mut self.attempts,
            Kind::Status => &mut self.status,
        }
    }

    fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.status.is_empty()
    }
}

#[derive(Default)]
struct KindRoutes {
    all: Subs,
    by_destination: HashMap<Uuid, Subs>,
}

impl KindRoutes {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_destination.is_empty()
    }
}

type Subs = HashMap<u64, Sub>;

struct Sub {
    tx: mpsc::Sender<LiveEvent>,
    missed: Arc<AtomicU64>,
}

fn offer(subs: &Subs, ev: &LiveEvent) {
    for sub in subs.values() {
        if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(ev.clone()) {
            sub.missed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LiveBus {
    /// `capacity` items may queue per subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Registry {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(0),
                count: AtomicUsize::new(0),
                routes: RwLock::new(Routes::default()),
            }),
        }
    }

    /// Never blocks; with no matching subscriber the event is simply dropped.
    pub fn publish(&self, ev: LiveEvent) {
        let routes = self.inner.read();
        offer(&routes.everything, &ev);
        let Some(tenant) = routes.tenants.get(ev.tenant()) else {
            return;
        };
        let (kind, destination) = match &ev {
            LiveEvent::Attempt(a) => (&tenant.attempts, a.attempt.destination_id),
            LiveEvent::Status(s) => (&tenant.status, s.destination_id),
        };
        offer(&kind.all, &ev);
        if let Some(subs) = kind.by_destination.get(&destination) {
            offer(subs, &ev);
        }
    }

    /// Every item of every tenant.
    pub fn subscribe(&self) -> LiveReceiver {
        self.join(None)
    }

    /// The items `route` selects.
    pub fn subscribe_to(&self, route: Route) -> LiveReceiver {
        self.join(Some(route))
    }

    fn join(&self, route: Option<Route>) -> LiveReceiver {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let missed = Arc::new(AtomicU64::new(0));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            tx,
            missed: missed.clone(),
        };
        let mut routes = self.inner.write();
        match &route {
            None => routes.everything.insert(id, sub),
            Some(r) => {
                let kind = routes
                    .tenants
                    .entry(r.tenant.clone())
                    .or_default()
                    .kind(r.kind);
                match r.destination {
                    None => kind.all.insert(id, sub),
                    Some(d) => kind.by_destination.entry(d).or_default().insert(id, sub),
                }
            }
        };
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        LiveReceiver {
            rx,
            missed,
            id,
            route,
            bus: self.inner.clone(),
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes a subscriber, and the routes it leaves empty.
    fn leave(&self, id: u64, route: Option<&Route>) {
        let mut routes = self.write();
        match route {
            None => {
                routes.everything.remove(&id);
            }
            Some(r) => {
                let Some(tenant) = routes.tenants.get_mut(&r.tenant) else {
                    return;
                };
                let kind = tenant.kind(r.kind);
                match r.destination {
                    None => {
                        kind.all.remove(&id);
                    }
                    Some(d) => {
                        if let Some(subs) = kind.by_destination.get_mut(&d) {
                            subs.remove(&id);
                            if subs.is_empty() {
                                kind.by_destination.remove(&d);
                            }
                        }
                    }
                }
                if tenant.is_empty() {
                    routes.tenants.remove(&r.tenant);
                }
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why [`LiveReceiver::recv`] returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The subscriber's queue was full and this many items went past it; its view has a gap.
    Lagged(u64),
    /// The bus is gone.
    Closed,
}

/// One subscriber's queue; leaves the bus when dropped.
pub struct LiveReceiver {
    rx: mpsc::Receiver<LiveEvent>,
    missed: Arc<AtomicU64>,
    id: u64,
    route: Option<Route>,
    bus: Arc<Registry>,
}

impl LiveReceiver {
    /// The next item, or the number of items missed as soon as there is a gap (the items
    /// still queued are older than the gap; a subscriber that needs completeness starts over).
    pub async fn recv(&mut self) -> Result<LiveEvent, RecvError> {
        self.lagged()?;
        let ev = self.rx.recv().await.ok_or(RecvError::Closed)?;
        self.lagged()?;
        Ok(ev)
    }

    /// Like [`LiveReceiver::recv`] without waiting: `Err(Closed)` also when nothing is queued.
    pub fn try_recv(&mut self) -> Result<LiveEvent, RecvError> {
        self.lagged()?;
        self.rx.try_recv().map_err(|_| RecvError::Closed)
    }

    fn lagged(&self) -> Result<(), RecvError> {
        match self.missed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(RecvError::Lagged(n)),
        }
    }
}

impl Drop for LiveReceiver {
    fn drop(&mut self) {
        self.bus.leave(self.id, self.route.as_ref());
    }
}

/// A status change made outside the completion writer (a user switching a destination on or
/// off), after its row committed: onto this instance's bus and, with PostgreSQL, to the other
/// instances. Best effort: a failed NOTIFY is logged and never fails the caller.
pub async fn status_changed(
    db: &sea_orm::DatabaseConnection,
    bus: &LiveBus,
    instance: &str,
    change: StatusChange,
) {
    if let Err(e) = pg::announce(db, instance, &[], std::slice::from_ref(&change)).await {
        tracing::warn!(error = %e, "could not announce a status change to other instances");
    }
    bus.publish(LiveEvent::Status(Arc::new(change)));
}

pub mod pg;
