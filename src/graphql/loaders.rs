//! DataLoaders: the relations a list can ask for cost one query per relation per request,
//! not one per row. Keys are ids already vetted for the caller's tenant by the parent query.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, destination, event, subscription};
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
        let delay = std::time::Duration::from_millis(
            std::env::var("HL_DELAY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        );
        Self {
            subscriptions: DataLoader::new(SubscriptionsByDestination(db.clone()), tokio::spawn)
                .delay(delay),
            events: DataLoader::new(ById::new(db.clone()), tokio::spawn).delay(delay),
            destinations: DataLoader::new(ById::new(db.clone()), tokio::spawn).delay(delay),
            deliveries: DataLoader::new(ById::new(db.clone()), tokio::spawn).delay(delay),
            attempts: DataLoader::new(AttemptsByDelivery(db.clone()), tokio::spawn).delay(delay),
            stats: DataLoader::new(StatsLoader(db), tokio::spawn).delay(delay),
        }
    }
}

/// Rows of one table by primary key.
pub struct ById<E> {
    db: Db,
    _e: std::marker::PhantomData<fn() -> E>,
}

impl<E> ById<E> {
    fn new(db: Db) -> Self {
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
