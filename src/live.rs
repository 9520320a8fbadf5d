//! The live bus: finished attempts and destination status changes, published after their rows
//! commit, fanned out to GraphQL subscriptions. In-process it is a broadcast channel; a slow
//! subscriber lags (and is told) instead of slowing the publisher.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, event};
use tokio::sync::broadcast;
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

#[derive(Clone, Debug)]
pub struct LiveBus {
    tx: broadcast::Sender<LiveEvent>,
}

impl LiveBus {
    /// `capacity` items may queue per subscriber before it lags.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }

    /// Never blocks; with no subscriber the event is simply dropped.
    pub fn publish(&self, ev: LiveEvent) {
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
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
    /// PostgreSQL caps a payload at 8000 bytes; 150 ids stay well inside it.
    const IDS_PER_NOTIFY: usize = 150;

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

    async fn notify(db: &impl ConnectionTrait, channel: &str, payload: &str) -> Result<(), DbErr> {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [channel.into(), payload.into()],
        ))
        .await
        .map(|_| ())
    }

    /// Inside the publishing transaction: wake the other instances' dispatchers on commit.
    pub async fn wake_others(db: &impl ConnectionTrait) -> Result<(), DbErr> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        notify(db, WAKE, "").await
    }

    /// Inside the completion transaction: announce attempts and status changes on commit.
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
        let mut chunks: Vec<&[Uuid]> = attempts.chunks(IDS_PER_NOTIFY).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, ids) in chunks.into_iter().enumerate() {
            let msg = Message {
                o: instance.to_string(),
                a: ids.to_vec(),
                s: if i == 0 {
                    statuses
                        .iter()
                        .map(|s| Status {
                            t: s.tenant_id.clone(),
                            d: s.destination_id,
                            s: s.status.clone(),
                            e: s.enabled,
                            at: s.at,
                        })
                        .collect()
                } else {
                    vec![]
                },
            };
            let text = serde_json::to_string(&msg).map_err(|e| DbErr::Custom(e.to_string()))?;
            notify(db, LIVE, &text).await?;
        }
        Ok(())
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
}
