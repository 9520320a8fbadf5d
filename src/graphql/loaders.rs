//! DataLoaders: the relations a list can ask for cost one query per relation per request,
//! not one per row. Keys are ids already vetted for the caller's tenant by the parent query.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_graphql::Response;
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, destination, event, subscription};
use futures_util::future::BoxFuture;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::db::Db;
use crate::service::stats::{self, DestinationStats};

type LoadResult<V> = Result<HashMap<Uuid, V>, Arc<DbErr>>;

pub struct Loaders {
    pub subscriptions: DataLoader<SubscriptionsByDestination>,
    pub events: DataLoader<ById<event::Entity>>,
    pub destinations: DataLoader<ById<destination::Entity>>,
    pub deliveries: DataLoader<ById<delivery::Entity>>,
    pub attempts: DataLoader<AttemptsByDelivery>,
    pub stats: DataLoader<StatsLoader>,
}

impl Loaders {
    pub fn new(db: Db) -> Self {
        Self {
            subscriptions: DataLoader::new(SubscriptionsByDestination(db.clone()), spawn_batch),
            events: DataLoader::new(ById::new(db.clone()), spawn_batch),
            destinations: DataLoader::new(ById::new(db.clone()), spawn_batch),
            deliveries: DataLoader::new(ById::new(db.clone()), spawn_batch),
            attempts: DataLoader::new(AttemptsByDelivery(db.clone()), spawn_batch),
            stats: DataLoader::new(StatsLoader(db), spawn_batch),
        }
    }
}

// A DataLoader starts its batch timer (1 ms) when the first key arrives. Resolving a page of
// 100 rows takes many polls of the request (async-graphql's field and list futures yield to
// the executor every couple of rows), and on a busy machine those polls can spread over more
// than that: the batch would leave with only the keys asked for so far, so bigger pages would
// cost more queries. So while a query executes, the batches it starts are held until the
// request stops making progress on its own (a poll ends without it having woken itself),
// i.e. until every resolver that can ask for a key has asked.
thread_local! {
    static HELD: std::cell::RefCell<Option<Vec<BoxFuture<'static, ()>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Consecutive self-woken polls after which held batches go anyway (a safety valve).
const MAX_HELD_POLLS: u32 = 10_000;

/// The loaders' spawner: holds the batch while a query is being polled on this thread.
fn spawn_batch(fut: BoxFuture<'static, ()>) {
    let fut = HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(held) => {
            held.push(fut);
            None
        }
        None => Some(fut),
    });
    if let Some(fut) = fut {
        tokio::spawn(fut);
    }
}

fn start_all(held: &mut Vec<BoxFuture<'static, ()>>) {
    if held.is_empty() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        for fut in held.drain(..) {
            rt.spawn(fut);
        }
    }
}

/// Executes queries and mutations with their batches held as described above.
pub struct HoldBatches;

impl ExtensionFactory for HoldBatches {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(HoldBatches)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for HoldBatches {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        Held {
            fut: Box::pin(next.run(ctx, operation_name)),
            held: Vec::new(),
            polls: 0,
        }
        .await
    }
}

struct Held<F> {
    fut: std::pin::Pin<Box<F>>,
    held: Vec<BoxFuture<'static, ()>>,
    polls: u32,
}

/// Remembers whether the request woke itself while being polled.
struct Woken {
    woken: std::sync::atomic::AtomicBool,
    waker: std::task::Waker,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake_by_ref();
    }
}

impl<F: Future> Future for Held<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts this request's held batches back in `out` even if the poll panics.
        struct Pass<'a> {
            prev: Option<Vec<BoxFuture<'static, ()>>>,
            out: &'a mut Vec<BoxFuture<'static, ()>>,
        }
        impl Drop for Pass<'_> {
            fn drop(&mut self) {
                let mine = HELD.with(|h| std::mem::replace(&mut *h.borrow_mut(), self.prev.take()));
                *self.out = mine.unwrap_or_default();
            }
        }
        let Held { fut, held, polls } = self.get_mut();
        let woken = Arc::new(Woken {
            woken: false.into(),
            waker: cx.waker().clone(),
        });
        let waker = std::task::Waker::from(woken.clone());
        let res = {
            let mine = std::mem::take(held);
            let _pass = Pass {
                prev: HELD.with(|h| h.borrow_mut().replace(mine)),
                out: held,
            };
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        };
        let again = woken.woken.load(std::sync::atomic::Ordering::Acquire);
        if res.is_ready() || !again || *polls >= MAX_HELD_POLLS {
            start_all(held);
            *polls = 0;
        } else if !held.is_empty() {
            *polls += 1;
        }
        res
    }
}

impl<F> Drop for Held<F> {
    fn drop(&mut self) {
        // Other requests' keys may have joined these batches.
        start_all(&mut self.held);
    }
}

/// Rows of one table by primary key.
pub struct ById<E> {
    db: Db,
    _e: std::marker::PhantomData<fn() -> E>,
}

impl<E> ById<E> {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            _e: std::marker::PhantomData,
        }
    }
}

/// Tables whose primary key is a single UUID `id`.
pub trait UuidKeyed: EntityTrait {
    fn id_col() -> Self::Column;
    fn id_of(m: &Self::Model) -> Uuid;
}

macro_rules! uuid_keyed {
    ($($m:ident),+) => {$(
        impl UuidKeyed for $m::Entity {
            fn id_col() -> Self::Column { $m::Column::Id }
            fn id_of(m: &Self::Model) -> Uuid { m.id }
        }
    )+};
}
uuid_keyed!(event, destination, delivery);

impl<E> Loader<Uuid> for ById<E>
where
    E: UuidKeyed + Send + Sync + 'static,
    E::Model: Clone + Send + Sync + 'static,
{
    type Value = E::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> LoadResult<E::Model> {
        let rows = E::find()
            .filter(E::id_col().is_in(keys.iter().copied()))
            .all(&self.db.read)
            .await
            .map_err(Arc::new)?;
        Ok(rows.into_iter().map(|m| (E::id_of(&m), m)).collect())
    }
}

fn group<V>(rows: Vec<V>, key: impl Fn(&V) -> Uuid) -> HashMap<Uuid, Vec<V>> {
    let mut map: HashMap<Uuid, Vec<V>> = HashMap::new();
    for r in rows {
        map.entry(key(&r)).or_default().push(r);
    }
    map
}

pub struct SubscriptionsByDestination(Db);

impl Loader<Uuid> for SubscriptionsByDestination {
    type Value = Vec<subscription::Model>;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> LoadResult<Self::Value> {
        let rows = subscription::Entity::find()
            .filter(subscription::Column::DestinationId.is_in(keys.iter().copied()))
            .order_by_asc(subscription::Column::Id)
            .all(&self.0.read)
            .await
            .map_err(Arc::new)?;
        Ok(group(rows, |r| r.destination_id))
    }
}

pub struct AttemptsByDelivery(Db);

impl Loader<Uuid> for AttemptsByDelivery {
    type Value = Vec<delivery_attempt::Model>;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> LoadResult<Self::Value> {
        let rows = delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::DeliveryId.is_in(keys.iter().copied()))
            .order_by_asc(delivery_attempt::Column::AttemptNumber)
            .all(&self.0.read)
            .await
            .map_err(Arc::new)?;
        Ok(group(rows, |r| r.delivery_id))
    }
}

/// `Destination.stats(since, until)`: destinations asking for the same window share a query.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub destination_id: Uuid,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub struct StatsLoader(Db);

impl Loader<StatsKey> for StatsLoader {
    type Value = DestinationStats;
    type Error = Arc<DbErr>;

    async fn load(
        &self,
        keys: &[StatsKey],
    ) -> Result<HashMap<StatsKey, DestinationStats>, Self::Error> {
        let windows = group_windows(keys);
        let mut out = HashMap::with_capacity(keys.len());
        for ((since, until), ids) in windows {
            let dests = destination::Entity::find()
                .filter(destination::Column::Id.is_in(ids.iter().copied()))
                .all(&self.0.read)
                .await
                .map_err(Arc::new)?;
            let stats = stats::for_destinations(&self.0.read, &dests, since, until)
                .await
                .map_err(|e| Arc::new(DbErr::Custom(e.detail())))?;
            for (id, s) in stats {
                out.insert(
                    StatsKey {
                        destination_id: id,
                        since,
                        until,
                    },
                    s,
                );
            }
        }
        Ok(out)
    }
}

type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn group_windows(keys: &[StatsKey]) -> HashMap<Window, Vec<Uuid>> {
    let mut map: HashMap<Window, Vec<Uuid>> = HashMap::new();
    for k in keys {
        map.entry((k.since, k.until))
            .or_default()
            .push(k.destination_id);
    }
    map
}
