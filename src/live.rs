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

/// Cross-instance transport over PostgreSQL LISTEN/NOTIFY. A NOTIFY sent inside a
/// transaction is delivered only if that transaction commits, which is exactly the "after its
/// row commits" rule; payloads carry ids, and each receiving instance loads the rows.
pub mod pg {
    use std::sync::Arc;
    use std::time::Duration;

    use entity::delivery_attempt;
    use sea_orm::{
        ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
        QueryFilter, Statement,
    };
    use serde::{Deserialize, Serialize};
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    use super::{LiveAttempt, LiveBus, LiveEvent, StatusChange};

    pub const WAKE: &str = "hookline_wake";
    pub const LIVE: &str = "hookline_live";
    /// PostgreSQL refuses a NOTIFY payload of this many bytes or more.
    const PAYLOAD_LIMIT: usize = 8000;

    #[derive(Serialize, Deserialize)]
    struct Message {
        /// The sending instance, which already published locally.
        o: String,
        #[serde(default)]
        a: Vec<Uuid>,
        #[serde(default)]
        s: Vec<Status>,
    }

    #[derive(Serialize, Deserialize)]
    struct Status {
        t: String,
        d: Uuid,
        s: String,
        e: bool,
        at: chrono::DateTime<chrono::Utc>,
    }

    /// Inside the publishing transaction: wake the other instances' dispatchers on commit.
    pub async fn wake_others(db: &impl ConnectionTrait) -> Result<(), DbErr> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, '')",
            [WAKE.into()],
        ))
        .await
        .map(|_| ())
    }

    /// Announces attempts and status changes to the other instances: inside a transaction
    /// they go out on its commit, outside one at once. However many there are, every
    /// payload fits PostgreSQL's limit ([`messages`]), and all of them go in one statement.
    /// A failure is counted (`hookline_live_notify_failures_total`).
    pub async fn announce(
        db: &impl ConnectionTrait,
        instance: &str,
        attempts: &[Uuid],
        statuses: &[StatusChange],
    ) -> Result<(), DbErr> {
        if db.get_database_backend() != DbBackend::Postgres
            || (attempts.is_empty() && statuses.is_empty())
        {
            return Ok(());
        }
        let texts = messages(instance, attempts, statuses);
        let all = serde_json::to_string(&texts).map_err(|e| DbErr::Custom(e.to_string()))?;
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, m) FROM json_array_elements_text($2::json) AS m",
            [LIVE.into(), all.into()],
        ))
        .await
        .map(|_| ())
        .inspect_err(|_| metrics::counter!("hookline_live_notify_failures_total").increment(1))
    }

    /// [`announce`] of rows already committed, best effort: a failure costs the other
    /// instances' subscribers these items and is logged; the rows stay as they are.
    pub async fn announce_committed(
        db: &impl ConnectionTrait,
        instance: &str,
        attempts: &[Uuid],
        statuses: &[StatusChange],
    ) {
        if let Err(e) = announce(db, instance, attempts, statuses).await {
            tracing::warn!(error = %e, "could not announce to other instances");
        }
    }

    /// The payloads announcing `attempts` and `statuses`: as few as fit, each below
    /// [`PAYLOAD_LIMIT`] bytes. Attempts come first; status changes fill up the last of
    /// their payloads and spread over more as needed. Each payload is a [`Message`] in JSON,
    /// put together from its items' own JSON so that its size is known before it is sent.
    fn messages(instance: &str, attempts: &[Uuid], statuses: &[StatusChange]) -> Vec<String> {
        let o = serde_json::Value::from(instance).to_string();
        let (head, mid, tail) = (format!("{{\"o\":{o},\"a\":["), "],\"s\":[", "]}");
        let empty = head.len() + mid.len() + tail.len();
        let mut out = Vec::new();
        let (mut a, mut s) = (Vec::<String>::new(), Vec::<String>::new());
        let mut size = empty;
        let items = attempts.iter().map(|id| (true, format!("\"{id}\""))).chain(
            statuses.iter().filter_map(|c| {
                let st = Status {
                    t: c.tenant_id.clone(),
                    d: c.destination_id,
                    s: c.status.clone(),
                    e: c.enabled,
                    at: c.at,
                };
                serde_json::to_string(&st).ok().map(|j| (false, j))
            }),
        );
        for (is_attempt, item) in items {
            // An item after the first of its list needs a comma.
            let cost = |a: &[String], s: &[String]| {
                let list = if is_attempt { a } else { s };
                item.len() + usize::from(!list.is_empty())
            };
            if empty + item.len() >= PAYLOAD_LIMIT {
                // Only a tenant name thousands of bytes long could do this; tokens allow 128.
                tracing::warn!(bytes = item.len(), "a live item too large to announce");
                continue;
            }
            if size + cost(&a, &s) >= PAYLOAD_LIMIT {
                out.push(format!("{head}{}{mid}{}{tail}", a.join(","), s.join(",")));
                (a, s, size) = (Vec::new(), Vec::new(), empty);
            }
            size += cost(&a, &s);
            if is_attempt {
                a.push(item)
            } else {
                s.push(item)
            }
        }
        if !a.is_empty() || !s.is_empty() {
            out.push(format!("{head}{}{mid}{}{tail}", a.join(","), s.join(",")));
        }
        out
    }

    /// Listens for the other instances until shutdown, reconnecting when the connection
    /// drops. Wake-ups go to `wake`; attempts and status changes onto the local bus.
    pub fn spawn_bridge(
        db: DatabaseConnection,
        instance: Arc<str>,
        bus: LiveBus,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        if db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while !shutdown.is_cancelled() {
                let res = tokio::select! {
                    r = listen(&db, &instance, &bus, &wake) => r,
                    _ = shutdown.cancelled() => return,
                };
                if let Err(e) = res {
                    tracing::warn!(error = %e, "live bridge lost its connection; reconnecting");
                    // Wake the dispatcher: notifications may have been missed meanwhile.
                    wake.notify_one();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                } else {
                    backoff = Duration::from_millis(100);
                }
            }
        });
    }

    async fn listen(
        db: &DatabaseConnection,
        instance: &str,
        bus: &LiveBus,
        wake: &Notify,
    ) -> Result<(), sea_orm::sqlx::Error> {
        let pool = db.get_postgres_connection_pool();
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen_all([WAKE, LIVE]).await?;
        loop {
            // `try_recv` reports a lost connection (None) instead of silently reconnecting,
            // so the loop above can wake the dispatcher for anything missed.
            let Some(n) = listener.try_recv().await? else {
                return Err(sea_orm::sqlx::Error::Protocol(
                    "listener connection lost".into(),
                ));
            };
            if n.channel() == WAKE {
                wake.notify_one();
                continue;
            }
            let Ok(msg) = serde_json::from_str::<Message>(n.payload()) else {
                continue;
            };
            if msg.o == instance {
                continue;
            }
            if !msg.a.is_empty() {
                match delivery_attempt::Entity::find()
                    .filter(delivery_attempt::Column::Id.is_in(msg.a.iter().copied()))
                    .all(db)
                    .await
                {
                    Ok(mut rows) => {
                        rows.sort_by_key(|r| r.id);
                        for r in rows {
                            bus.publish(LiveEvent::Attempt(Arc::new(LiveAttempt::bare(r))));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not load announced attempts"),
                }
            }
            for s in msg.s {
                bus.publish(LiveEvent::Status(Arc::new(StatusChange {
                    tenant_id: s.t,
                    destination_id: s.d,
                    status: s.s,
                    enabled: s.e,
                    at: s.at,
                })));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn change(tenant: &str) -> StatusChange {
            StatusChange {
                tenant_id: tenant.to_string(),
                destination_id: Uuid::now_v7(),
                status: "RETRY_LIMIT_REACHED".into(),
                enabled: true,
                at: chrono::Utc::now(),
            }
        }

        #[test]
        fn every_payload_fits_and_together_they_carry_everything_once() {
            // The longest tenant a token may name, and one that JSON must escape.
            for tenant in ["t".repeat(128), "\"é\\\n".repeat(32)] {
                for (na, ns) in [(0, 1), (1, 0), (500, 0), (0, 300), (200, 200), (3, 2)] {
                    let ids: Vec<Uuid> = (0..na).map(|_| Uuid::now_v7()).collect();
                    let changes: Vec<StatusChange> = (0..ns).map(|_| change(&tenant)).collect();
                    let texts = messages("instance-1", &ids, &changes);
                    let (mut a, mut s) = (Vec::new(), Vec::new());
                    for t in &texts {
                        assert!(t.len() < PAYLOAD_LIMIT, "{} bytes", t.len());
                        let m: Message = serde_json::from_str(t).expect("a Message");
                        assert_eq!(m.o, "instance-1");
                        assert!(!m.a.is_empty() || !m.s.is_empty(), "an empty payload");
                        a.extend(m.a);
                        s.extend(m.s.into_iter().map(|x| (x.d, x.t, x.s, x.e, x.at)));
                    }
                    assert_eq!(a, ids);
                    let want: Vec<_> = changes
                        .iter()
                        .map(|c| {
                            (
                                c.destination_id,
                                c.tenant_id.clone(),
                                c.status.clone(),
                                c.enabled,
                                c.at,
                            )
                        })
                        .collect();
                    assert_eq!(s, want);
                    // Filled, not split by a count: all but the last payload are nearly full.
                    let total: usize = texts.iter().map(String::len).sum();
                    assert!(
                        texts.len() <= total / (PAYLOAD_LIMIT - 400) + 1,
                        "{} payloads",
                        texts.len()
                    );
                }
            }
        }
    }
}
