//! Live streams over `/graphql/ws`, filtered by the caller's tenant and the arguments.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_graphql::{Context, ID, Result, SimpleObject, Subscription as SubscriptionDerive};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use uuid::Uuid;

use super::delivery_types::{AttemptOutcome, Delivery, DeliveryAttempt, Related};
use super::loaders::ById;
use super::types::DestinationStatus;
use super::{BudgetGuard, SubscriptionBudget, parse_id, require, state};
use crate::auth::Scope;
use crate::error::AppError;
use crate::live::{Kind, LiveAttempt, LiveEvent, LiveReceiver, RecvError, Route};

pub struct Subscription;

#[derive(SimpleObject, Clone, Debug)]
pub struct DestinationStatusChange {
    pub destination_id: ID,
    pub status: DestinationStatus,
    pub enabled: bool,
    pub at: DateTime<Utc>,
}

/// Turns the caller's route of the bus into a stream of the items `pick` selects. Ends with an
/// error when the token expires, or when the subscriber fell too far behind to be complete
/// (it is told how many items it missed rather than silently skipping them).
fn live_stream<T: Send + 'static>(
    budget: Option<BudgetGuard>,
    rx: LiveReceiver,
    tenant: String,
    expires_at: i64,
    pick: impl Fn(&LiveEvent) -> Option<T> + Send + 'static,
) -> impl Stream<Item = Result<T>> {
    struct St<F> {
        _budget: Option<BudgetGuard>,
        rx: LiveReceiver,
        tenant: String,
        expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
        pick: F,
        done: bool,
    }
    let st = St {
        _budget: budget,
        rx,
        tenant,
        expiry: Box::pin(tokio::time::sleep(expiry_in(expires_at))),
        pick,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            tokio::select! {
                _ = &mut st.expiry => {
                    st.done = true;
                    let e = AppError::Unauthenticated("token expired".into());
                    return Some((Err(e.into()), st));
                }
                msg = st.rx.recv() => match msg {
                    Ok(ev) => {
                        // The bus routes by tenant already; this keeps isolation local.
                        if ev.tenant() != st.tenant {
                            continue;
                        }
                        if let Some(item) = (st.pick)(&ev) {
                            return Some((Ok(item), st));
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        st.done = true;
                        tracing::info!(missed = n, "a live subscriber fell behind; its stream ends");
                        let e = AppError::Unavailable(format!(
                            "subscriber fell behind and missed {n} items; resubscribe and query to catch up"
                        ));
                        return Some((Err(e.into_graphql()), st));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// The most attempts of a live stream whose relations are loaded together.
const PRELOAD_BATCH: usize = 256;

/// Which relations of `deliveryAttempts` the subscription's selection asks for.
#[derive(Clone, Copy)]
struct Relations {
    delivery: bool,
    event: bool,
    destination: bool,
}

impl Relations {
    fn asked(ctx: &Context<'_>) -> Self {
        let d = ctx.look_ahead().field("delivery");
        Relations {
            delivery: d.exists(),
            event: d.field("event").exists(),
            destination: d.field("destination").exists(),
        }
    }

    /// Resolves the asked-for relations of a batch, within the caller's tenant. The
    /// delivery and event of an attempt made here came with it; the rest (destinations,
    /// and what other instances' attempts need) is one query per relation for the batch.
    /// If loading fails, the items go out as they are and their resolvers load the rest.
    async fn load(
        self,
        db: crate::db::Db,
        tenant: String,
        batch: Vec<Result<Arc<LiveAttempt>>>,
    ) -> Vec<Result<DeliveryAttempt>> {
        if !self.delivery {
            return batch
                .into_iter()
                .map(|r| r.map(|a| DeliveryAttempt::from(a.attempt.clone())))
                .collect();
        }
        let (deliveries, events, dests) = match self.fetch(&db, &tenant, &batch).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "loading a live batch's relations");
                Default::default()
            }
        };
        batch
            .into_iter()
            .map(|r| {
                r.map(|a| {
                    let d = a
                        .delivery
                        .as_ref()
                        .filter(|d| d.tenant_id == tenant)
                        .or_else(|| deliveries.get(&a.attempt.delivery_id))
                        .map(|d| {
                            let event = match (&a.event, self.event) {
                                (Some(e), true) if e.id == d.event_id && e.tenant_id == tenant => {
                                    Some(e.clone())
                                }
                                (_, true) => events.get(&d.event_id).cloned(),
                                _ => None,
                            };
                            let destination = dests.get(&d.destination_id).cloned();
                            Delivery(d.clone(), Related { event, destination })
                        });
                    DeliveryAttempt(a.attempt.clone(), d)
                })
            })
            .collect()
    }

    /// What the batch's attempts did not bring along: one primary-key query per relation
    /// (the loaders' own), keeping only the caller's tenant's rows.
    async fn fetch(
        self,
        db: &crate::db::Db,
        tenant: &str,
        batch: &[Result<Arc<LiveAttempt>>],
    ) -> Result<Found, Arc<sea_orm::DbErr>> {
        use entity::{delivery, destination, event};
        let attempts: Vec<&LiveAttempt> = batch.iter().flatten().map(|a| &**a).collect();
        let missing = attempts
            .iter()
            .filter(|a| a.delivery.is_none())
            .map(|a| a.attempt.delivery_id);
        let deliveries = by_id::<delivery::Entity>(db, missing, |d| d.tenant_id == tenant).await?;
        let mut events = HashMap::new();
        if self.event {
            let ids = attempts
                .iter()
                .filter(|a| a.event.is_none())
                .map(|a| a.attempt.event_id)
                .chain(deliveries.values().map(|d| d.event_id));
            events = by_id::<event::Entity>(db, ids, |e| e.tenant_id == tenant).await?;
        }
        let mut dests = HashMap::new();
        if self.destination {
            let ids = attempts
                .iter()
                .filter_map(|a| a.delivery.as_ref())
                .chain(deliveries.values())
                .map(|d| d.destination_id);
            dests = by_id::<destination::Entity>(db, ids, |d| d.tenant_id == tenant).await?;
        }
        Ok((deliveries, shared(events), shared(dests)))
    }
}

fn shared<V>(m: HashMap<Uuid, V>) -> HashMap<Uuid, Arc<V>> {
    m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// Rows of `E` by id (none asked, no query), those `keep` accepts.
async fn by_id<E>(
    db: &crate::db::Db,
    ids: impl Iterator<Item = Uuid>,
    keep: impl Fn(&E::Model) -> bool,
) -> Result<HashMap<Uuid, E::Model>, Arc<sea_orm::DbErr>>
where
    ById<E>: async_graphql::dataloader::Loader<Uuid, Value = E::Model, Error = Arc<sea_orm::DbErr>>,
    E: sea_orm::EntityTrait,
{
    use async_graphql::dataloader::Loader;
    let ids: Vec<Uuid> = ids.collect::<HashSet<_>>().into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut rows = ById::<E>::new(db.clone()).load(&ids).await?;
    rows.retain(|_, m| keep(m));
    Ok(rows)
}

type Found = (
    HashMap<Uuid, entity::delivery::Model>,
    HashMap<Uuid, Arc<entity::event::Model>>,
    HashMap<Uuid, Arc<entity::destination::Model>>,
);

/// Over WebSocket, each subscription takes a slot of the connection's budget.
fn budget(ctx: &Context<'_>) -> Result<Option<BudgetGuard>, AppError> {
    ctx.data_opt::<SubscriptionBudget>()
        .map(|b| b.take())
        .transpose()
}

fn expiry_in(expires_at: i64) -> std::time::Duration {
    let secs = expires_at - chrono::Utc::now().timestamp();
    std::time::Duration::from_secs(secs.clamp(0, 10 * 365 * 86400) as u64)
}

#[SubscriptionDerive]
impl Subscription {
    /// Every finished attempt in your tenant as it commits, optionally narrowed.
    async fn delivery_attempts(
        &self,
        ctx: &Context<'_>,
        destination_id: Option<ID>,
        event_type: Option<String>,
        outcome: Option<AttemptOutcome>,
    ) -> Result<impl Stream<Item = Result<DeliveryAttempt>>> {
        let p = require(ctx, Scope::Read)?;
        let only = destination_id
            .map(|id| parse_id("destinationId", &id))
            .transpose()?;
        let want = outcome.map(|o| match o {
            AttemptOutcome::Success => "SUCCESS",
            AttemptOutcome::Failure => "FAILURE",
        });
        let budget = budget(ctx)?;
        let st = state(ctx)?;
        let rx = st.live.subscribe_to(Route {
            tenant: p.tenant.clone(),
            kind: Kind::Attempts,
            destination: only,
        });
        let with = Relations::asked(ctx);
        let (db, tenant) = (st.db.clone(), p.tenant.clone());
        let attempts = live_stream(
            budget,
            rx,
            p.tenant.clone(),
            p.expires_at,
            move |ev| match ev {
                LiveEvent::Attempt(a)
                    if only.is_none_or(|id| id == a.attempt.destination_id)
                        && event_type
                            .as_deref()
                            .is_none_or(|t| t == a.attempt.event_type)
                        && want.is_none_or(|o| o == a.attempt.outcome) =>
                {
                    Some(a.clone())
                }
                _ => None,
            },
        );
        // What has arrived meanwhile is resolved together: the relations the selection asks
        // for cost one query each per batch instead of one per attempt (each item of a
        // subscription executes on its own, so DataLoaders cannot batch across items).
        Ok(attempts
            .ready_chunks(PRELOAD_BATCH)
            .then(move |batch| with.load(db.clone(), tenant.clone(), batch))
            .flat_map(futures_util::stream::iter))
    }

    /// Every health or enabled change of your destinations (or of one).
    async fn destination_status_changed(
        &self,
        ctx: &Context<'_>,
        destination_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<DestinationStatusChange>>> {
        let p = require(ctx, Scope::Read)?;
        let only = destination_id
            .map(|id| parse_id("destinationId", &id))
            .transpose()?;
        let budget = budget(ctx)?;
        let rx = state(ctx)?.live.subscribe_to(Route {
            tenant: p.tenant.clone(),
            kind: Kind::Status,
            destination: only,
        });
        Ok(live_stream(
            budget,
            rx,
            p.tenant.clone(),
            p.expires_at,
            move |ev| match ev {
                LiveEvent::Status(s) if only.is_none_or(|id| id == s.destination_id) => {
                    Some(DestinationStatusChange {
                        destination_id: ID(s.destination_id.to_string()),
                        status: DestinationStatus::from_stored(&s.status),
                        enabled: s.enabled,
                        at: s.at,
                    })
                }
                _ => None,
            },
        ))
    }
}
