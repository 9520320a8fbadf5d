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
use crate::service::page::{Direction, PageRequest, page_query};
use crate::service::stats::{self, DestinationStats};

type LoadResult<V> = Result<HashMap<Uuid, V>, Arc<DbErr>>;

pub struct Loaders {
    pub subscriptions: DataLoader<SubscriptionsByDestination>,
    pub events: DataLoader<ById<event::Entity>>,
    pub destinations: DataLoader<ById<destination::Entity>>,
    pub deliveries: DataLoader<ById<delivery::Entity>>,
    pub attempts: DataLoader<AttemptsByDelivery>,
    pub stats: DataLoader<StatsLoader>,
    pub deliveries_of: DataLoader<DeliveriesOf>,
}

impl Loaders {
    pub fn new(db: Db, max_page: u64) -> Self {
        Self {
            deliveries_of: DataLoader::new(
                DeliveriesOf {
                    db: db.clone(),
                    max_page,
                },
                spawn_batch,
            ),
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

/// `Delivery.attempts(first)`: the first `first` attempts of a delivery, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttemptsKey {
    pub delivery_id: Uuid,
    pub first: i32,
}

pub struct AttemptsByDelivery(Db);

impl Loader<AttemptsKey> for AttemptsByDelivery {
    type Value = Vec<delivery_attempt::Model>;
    type Error = Arc<DbErr>;

    async fn load(
        &self,
        keys: &[AttemptsKey],
    ) -> Result<HashMap<AttemptsKey, Self::Value>, Self::Error> {
        let mut by_first: HashMap<i32, Vec<Uuid>> = HashMap::new();
        for k in keys {
            by_first.entry(k.first).or_default().push(k.delivery_id);
        }
        let mut out = HashMap::with_capacity(keys.len());
        for (first, ids) in by_first {
            // Attempts are numbered 1, 2, … per delivery, so the first `first` are those
            // numbered up to it: the index (delivery_id, attempt_number) reads only them.
            let rows = delivery_attempt::Entity::find()
                .filter(delivery_attempt::Column::DeliveryId.is_in(ids))
                .filter(delivery_attempt::Column::AttemptNumber.lte(first))
                .order_by_asc(delivery_attempt::Column::AttemptNumber)
                .all(&self.0.read)
                .await
                .map_err(Arc::new)?;
            for (delivery_id, mut v) in group(rows, |r| r.delivery_id) {
                v.truncate(usize::try_from(first).unwrap_or(0));
                out.insert(AttemptsKey { delivery_id, first }, v);
            }
        }
        Ok(out)
    }
}

/// Whose deliveries a nested connection lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parent {
    Destination(Uuid),
    Event(Uuid),
}

/// One page of `Destination.deliveries` or `Event.deliveries`, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeliveriesKey {
    pub tenant: String,
    pub parent: Parent,
    pub status: Option<Vec<String>>,
    pub page: (Option<i32>, Option<Uuid>),
}

impl DeliveriesKey {
    pub fn page_request(&self) -> PageRequest {
        PageRequest {
            first: self.page.0,
            after: self.page.1,
            ..Default::default()
        }
    }

    fn select(&self) -> sea_orm::Select<delivery::Entity> {
        let q = delivery::Entity::find().filter(delivery::Column::TenantId.eq(&self.tenant));
        let q = match self.parent {
            Parent::Destination(id) => q.filter(delivery::Column::DestinationId.eq(id)),
            Parent::Event(id) => q.filter(delivery::Column::EventId.eq(id)),
        };
        match &self.status {
            Some(s) => q.filter(delivery::Column::Status.is_in(s.iter().cloned())),
            None => q,
        }
    }
}

/// Pages of deliveries for many parents in one statement: each parent's page is its own
/// `ORDER BY id DESC LIMIT n + 1` (an index range scan, however many deliveries the parent
/// has), and the pages are joined with `UNION ALL`, each row tagged with its page.
pub struct DeliveriesOf {
    db: Db,
    max_page: u64,
}

/// Pages per statement (SQLite allows 500 members in a compound SELECT).
const PAGES_PER_STATEMENT: usize = 100;

impl Loader<DeliveriesKey> for DeliveriesOf {
    /// The rows of the page's statement: one more than the page when another follows.
    type Value = Vec<delivery::Model>;
    type Error = Arc<DbErr>;

    async fn load(
        &self,
        keys: &[DeliveriesKey],
    ) -> Result<HashMap<DeliveriesKey, Self::Value>, Self::Error> {
        use sea_orm::sea_query::{Alias, Asterisk, Expr, Query, UnionType};
        use sea_orm::{ConnectionTrait, FromQueryResult, QueryTrait};
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(PAGES_PER_STATEMENT) {
            let mut union: Option<sea_orm::sea_query::SelectStatement> = None;
            for (i, k) in chunk.iter().enumerate() {
                let (q, _, _) = page_query(
                    k.select(),
                    delivery::Column::Id,
                    Direction::NewestFirst,
                    &k.page_request(),
                    self.max_page,
                )
                .map_err(|e| Arc::new(DbErr::Custom(e.detail())))?;
                let mut page = q.into_query();
                page.expr_as(Expr::val(i as i64), Alias::new("page"));
                let page = Query::select()
                    .column(Asterisk)
                    .from_subquery(page, Alias::new(format!("p{i}")))
                    .to_owned();
                match union.as_mut() {
                    None => union = Some(page),
                    Some(u) => {
                        u.union(UnionType::All, page);
                    }
                }
            }
            let Some(union) = union else { continue };
            let rows = self.db.read.query_all(&union).await.map_err(Arc::new)?;
            let mut pages: Vec<Vec<delivery::Model>> = vec![Vec::new(); chunk.len()];
            for row in rows {
                let page: i64 = row.try_get("", "page").map_err(Arc::new)?;
                let m = delivery::Model::from_query_result(&row, "").map_err(Arc::new)?;
                if let Some(p) = usize::try_from(page).ok().and_then(|p| pages.get_mut(p)) {
                    p.push(m);
                }
            }
            for (k, mut rows) in chunk.iter().zip(pages) {
                // A UNION keeps no order across its members' rows.
                rows.sort_unstable_by_key(|d| std::cmp::Reverse(d.id));
                out.insert(k.clone(), rows);
            }
        }
        Ok(out)
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
