//! The completion writer: finished attempts, delivery state changes, destination health and
//! the per-minute rollups are gathered and written in one transaction per flush — never a
//! round trip per row on the hot path. After each commit the attempts and status changes go
//! on the live bus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, destination};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::circuit::Health;
use super::rollup::RollupBook;
use crate::live::{LiveBus, LiveEvent, StatusChange};
use crate::service::{bulk, now};

/// A delivery's new state after an attempt, a release or a discard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryUpdate {
    pub id: Uuid,
    pub status: &'static str,
    /// Absolute, so re-applying an update is harmless.
    pub attempt_count: Option<i32>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub completed: bool,
}

/// A destination's health after the attempts of this instance.
#[derive(Clone, Debug)]
pub struct HealthUpdate {
    pub destination_id: Uuid,
    pub tenant_id: String,
    pub health: Health,
    pub consecutive_failures: u32,
    pub gate: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failed_status_code: Option<i32>,
    pub last_failed_reason: Option<String>,
    /// 410 Gone: the destination is switched off.
    pub disable: bool,
    /// Whether the status differs from before (goes on the live bus).
    pub changed: bool,
    /// A probe closed the circuit: the deliveries the open circuit held back (due at most
    /// this late) are due now instead of waiting out the probe's reservation.
    pub release_held_until: Option<DateTime<Utc>>,
}

pub enum WriterMsg {
    Attempt(Box<delivery_attempt::Model>, DeliveryUpdate),
    Delivery(DeliveryUpdate),
    Health(Box<HealthUpdate>),
    /// Answered once everything sent before it has committed.
    Barrier(oneshot::Sender<()>),
    /// Flush what came before, answer, and stop.
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

impl Writer {
    pub fn start(
        db: DatabaseConnection,
        live: LiveBus,
        instance_id: Arc<str>,
        hub: Arc<super::hub::Hub>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(db, live, instance_id, hub, rx));
        Self { tx }
    }

    pub fn send(&self, msg: WriterMsg) {
        // Only fails after `close`, when the process is stopping and leases cover the rest.
        let _ = self.tx.send(msg);
    }

    /// Waits until everything sent so far is committed. False if the writer has stopped.
    pub async fn barrier(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(WriterMsg::Barrier(tx));
        rx.await.is_ok()
    }

    /// Flushes and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(WriterMsg::Close(tx));
        let _ = rx.await;
    }
}

const MAX_FLUSH: usize = 2000;
/// How long the writer gathers on PostgreSQL before a flush.
const GATHER: Duration = Duration::from_millis(5);
/// On SQLite a flush occupies the one writer connection that publishes wait for: fewer,
/// larger flushes leave it free more of the time.
const GATHER_SQLITE: Duration = Duration::from_millis(2);

async fn run(
    db: DatabaseConnection,
    live: LiveBus,
    instance_id: Arc<str>,
    hub: Arc<super::hub::Hub>,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
) {
    let mut book = RollupBook::new(instance_id.clone());
    let mut batch = Vec::with_capacity(MAX_FLUSH);
    let mut closing = None;
    // PostgreSQL: every commit waits for a WAL flush (fsync), and at moderate rates each flush
    // would hold one or two attempts. Gathering for a few milliseconds makes those commits
    // rarer, so the publishers' commits wait less behind them (`backlog` benchmark). SQLite
    // in WAL mode does not sync on commit.
    let gather = if db.get_database_backend() == DbBackend::Postgres {
        GATHER
    } else {
        GATHER_SQLITE
    };
    while closing.is_none() && rx.recv_many(&mut batch, MAX_FLUSH).await > 0 {
        if !gather.is_zero() && batch.len() < MAX_FLUSH {
            tokio::time::sleep(gather).await;
            while batch.len() < MAX_FLUSH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        }
        let msgs = std::mem::take(&mut batch);
        let mut acks = Vec::new();
        let flush = Flush::from(msgs, &mut book, &mut acks, &mut closing);
        let statuses: Vec<StatusChange> = flush
            .health
            .values()
            .filter(|h| h.changed || h.disable)
            .map(|h| StatusChange {
                tenant_id: h.tenant_id.clone(),
                destination_id: h.destination_id,
                status: h.health.as_str().to_string(),
                enabled: !h.disable,
                at: now(),
            })
            .collect();
        let mut backoff = Duration::from_millis(100);
        // Nothing finished is dropped: a failed flush is retried until the database is back.
        // (Leases may expire meanwhile; the receiver then sees a duplicate, never a loss.)
        loop {
            match flush.write(&db, &instance_id, &statuses).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "completion flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if flush.health.values().any(|h| h.disable) {
            // 410 Gone switched a destination off: it no longer takes events.
            hub.rules_changed();
        }
        metrics::counter!("hookline_attempts_total", "outcome" => "success")
            .increment(flush.successes);
        metrics::counter!("hookline_attempts_total", "outcome" => "failure")
            .increment(flush.attempts.len() as u64 - flush.successes);
        for a in flush.attempts {
            live.publish(LiveEvent::Attempt(Arc::new(a)));
        }
        for s in statuses {
            live.publish(LiveEvent::Status(Arc::new(s)));
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

struct Flush {
    attempts: Vec<delivery_attempt::Model>,
    successes: u64,
    deliveries: Vec<DeliveryUpdate>,
    health: HashMap<Uuid, HealthUpdate>,
    rollups: Vec<entity::attempt_rollup::Model>,
}

impl Flush {
    fn from(
        msgs: Vec<WriterMsg>,
        book: &mut RollupBook,
        acks: &mut Vec<oneshot::Sender<()>>,
        closing: &mut Option<oneshot::Sender<()>>,
    ) -> Self {
        let mut f = Flush {
            attempts: Vec::new(),
            successes: 0,
            deliveries: Vec::new(),
            health: HashMap::new(),
            rollups: Vec::new(),
        };
        for m in msgs {
            match m {
                WriterMsg::Attempt(a, d) => {
                    book.record(&a);
                    if a.outcome == "SUCCESS" {
                        f.successes += 1;
                    }
                    f.attempts.push(*a);
                    f.deliveries.push(d);
                }
                WriterMsg::Delivery(d) => f.deliveries.push(d),
                WriterMsg::Barrier(ack) => acks.push(ack),
                // Anything after Close in this batch was sent after close began; drop it.
                WriterMsg::Close(ack) => {
                    *closing = Some(ack);
                    break;
                }
                WriterMsg::Health(h) => {
                    let h = *h;
                    match f.health.get_mut(&h.destination_id) {
                        Some(prev) => merge_health(prev, h),
                        None => {
                            f.health.insert(h.destination_id, h);
                        }
                    }
                }
            }
        }
        f.rollups = book.take_dirty();
        f
    }

    async fn write(
        &self,
        db: &DatabaseConnection,
        instance_id: &str,
        statuses: &[StatusChange],
    ) -> Result<(), DbErr> {
        let txn = db.begin().await?;
        bulk::insert::<_, delivery_attempt::ActiveModel>(&txn, self.attempts.clone())
            .await
            .map_err(|e| DbErr::Custom(e.detail()))?;
        write_deliveries(&txn, &self.deliveries).await?;
        write_health_all(&txn, &self.health).await?;
        super::rollup::upsert(&txn, &self.rollups).await?;
        let ids: Vec<Uuid> = self.attempts.iter().map(|a| a.id).collect();
        crate::live::pg::announce(&txn, instance_id, &ids, statuses).await?;
        txn.commit().await
    }
}

/// Later updates win, but the "last success/failure" facts accumulate.
fn merge_health(prev: &mut HealthUpdate, next: HealthUpdate) {
    let changed = prev.changed || next.changed;
    let release_held_until = Ord::max(next.release_held_until, prev.release_held_until);
    let disable = prev.disable || next.disable;
    let last_success_at = next.last_success_at.or(prev.last_success_at);
    let (failed_at, code, reason) = if next.last_failure_at.is_some() {
        (
            next.last_failure_at,
            next.last_failed_status_code,
            next.last_failed_reason.clone(),
        )
    } else {
        (
            prev.last_failure_at,
            prev.last_failed_status_code,
            prev.last_failed_reason.take(),
        )
    };
    *prev = HealthUpdate {
        changed,
        release_held_until,
        disable,
        last_success_at,
        last_failure_at: failed_at,
        last_failed_status_code: code,
        last_failed_reason: reason,
        ..next
    };
}

/// Writes the delivery updates of one flush. PostgreSQL: one statement for all of them, the
/// rows passed as one JSON document. SQLite: updates with the same values share one statement
/// (`WHERE id IN (...)`): the successes of a flush, and the releases of a destination whose
/// circuit is open, which would otherwise cost one statement each. Either way, a delivery
/// updated twice in one flush (its lease lapsed and it was claimed again) gets one statement
/// per update, in order, so the later update wins.
async fn write_deliveries(db: &impl ConnectionTrait, ups: &[DeliveryUpdate]) -> Result<(), DbErr> {
    type Key<'a> = (
        &'static str,
        Option<i32>,
        Option<DateTime<Utc>>,
        Option<i32>,
        Option<&'a str>,
        bool,
    );
    let t = now();
    let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(ups.len());
    for u in ups {
        *seen.entry(u.id).or_default() += 1;
    }
    let (once, in_order): (Vec<&DeliveryUpdate>, Vec<&DeliveryUpdate>) =
        ups.iter().partition(|u| seen[&u.id] == 1);
    if db.get_database_backend() == DbBackend::Postgres {
        for chunk in once.chunks(5000) {
            update_json(db, chunk, t).await?;
        }
        for u in in_order {
            update_json(db, &[u], t).await?;
        }
        return Ok(());
    }
    let mut groups: HashMap<Key<'_>, Vec<Uuid>> = HashMap::new();
    for u in once {
        let key = (
            u.status,
            u.attempt_count,
            u.next_attempt_at,
            u.last_status_code,
            u.last_error.as_deref(),
            u.completed,
        );
        groups.entry(key).or_default().push(u.id);
    }
    let update = |u: &DeliveryUpdate| {
        let mut q = delivery::Entity::update_many()
            .col_expr(delivery::Column::Status, Expr::value(u.status))
            .col_expr(
                delivery::Column::NextAttemptAt,
                Expr::value(u.next_attempt_at),
            )
            .col_expr(
                delivery::Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                delivery::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            );
        if let Some(n) = u.attempt_count {
            q = q
                .col_expr(delivery::Column::AttemptCount, Expr::value(n))
                .col_expr(
                    delivery::Column::LastStatusCode,
                    Expr::value(u.last_status_code),
                )
                .col_expr(
                    delivery::Column::LastError,
                    Expr::value(u.last_error.clone()),
                );
        } else if u.last_error.is_some() {
            q = q.col_expr(
                delivery::Column::LastError,
                Expr::value(u.last_error.clone()),
            );
        }
        if u.completed {
            q = q.col_expr(delivery::Column::CompletedAt, Expr::value(t));
        }
        q
    };
    for ((status, attempt_count, next_attempt_at, last_status_code, last_error, completed), ids) in
        groups
    {
        let u = DeliveryUpdate {
            id: ids[0],
            status,
            attempt_count,
            next_attempt_at,
            last_status_code,
            last_error: last_error.map(str::to_string),
            completed,
        };
        for chunk in ids.chunks(500) {
            update(&u)
                .filter(delivery::Column::Id.is_in(chunk.iter().copied()))
                .exec(db)
                .await?;
        }
    }
    for u in in_order {
        update(u)
            .filter(delivery::Column::Id.eq(u.id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// The ids of a JSON update again, as `a,b,c` for `d.id = ANY(string_to_array($n, ',')::uuid[])`.
/// Joining the JSON rows alone leaves the planner free to hash them against a sequential scan
/// of the table — and a prepared statement keeps the plan it chose while the table was small,
/// so every flush would read the whole table. The id list gives it a primary-key lookup that
/// is the cheapest plan at any size.
fn id_list(ids: impl Iterator<Item = Uuid>) -> String {
    let mut s = String::new();
    for id in ids {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}

/// PostgreSQL: applies updates (distinct ids) in one statement, with the same meaning as the
/// SQLite statements above: the attempt's facts only when an attempt was made, an error alone
/// when a discard gives one, `completed_at` when finished.
const UPDATE_JSON: &str = "UPDATE delivery AS d SET status = u.status, \
     next_attempt_at = u.next_attempt_at, lease_until = NULL, lease_owner = NULL, \
     attempt_count = COALESCE(u.attempt_count, d.attempt_count), \
     last_status_code = CASE WHEN u.attempt_count IS NULL THEN d.last_status_code \
       ELSE u.last_status_code END, \
     last_error = CASE WHEN u.attempt_count IS NULL AND u.last_error IS NULL THEN d.last_error \
       ELSE u.last_error END, \
     completed_at = CASE WHEN u.completed THEN $2 ELSE d.completed_at END \
     FROM json_to_recordset($1::json) AS u(id uuid, status text, attempt_count int4, \
       next_attempt_at timestamptz, last_status_code int4, last_error text, completed bool) \
     WHERE d.id = u.id AND d.id = ANY(string_to_array($3, ',')::uuid[])";

async fn update_json(
    db: &impl ConnectionTrait,
    ups: &[&DeliveryUpdate],
    t: DateTime<Utc>,
) -> Result<(), DbErr> {
    let json = serde_json::to_string(ups).map_err(|e| DbErr::Custom(e.to_string()))?;
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        UPDATE_JSON,
        [
            json.into(),
            t.into(),
            id_list(ups.iter().map(|u| u.id)).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// PostgreSQL: the health of every destination in the flush in one statement, with the
/// meaning of [`write_health`].
const HEALTH_JSON: &str = "UPDATE destination AS d SET status = u.status, \
     consecutive_failures = u.consecutive_failures, next_attempt_at = u.gate, \
     last_success_at = COALESCE(u.last_success_at, d.last_success_at), \
     last_failure_at = COALESCE(u.last_failure_at, d.last_failure_at), \
     last_failed_status_code = CASE WHEN u.last_failure_at IS NULL \
       THEN d.last_failed_status_code ELSE u.last_failed_status_code END, \
     last_failed_reason = CASE WHEN u.last_failure_at IS NULL \
       THEN d.last_failed_reason ELSE u.last_failed_reason END, \
     enabled = NOT u.disable, \
     version = d.version + CASE WHEN u.disable THEN 1 ELSE 0 END, \
     updated_at = CASE WHEN u.disable THEN $2 ELSE d.updated_at END, \
     updated_by = CASE WHEN u.disable THEN 'hookline' ELSE d.updated_by END \
     FROM json_to_recordset($1::json) AS u(id uuid, status text, consecutive_failures int4, \
       gate timestamptz, last_success_at timestamptz, last_failure_at timestamptz, \
       last_failed_status_code int4, last_failed_reason text, disable bool) \
     WHERE d.id = u.id AND d.id = ANY(string_to_array($3, ',')::uuid[]) \
     AND d.deleted_at IS NULL AND d.enabled";

#[derive(serde::Serialize)]
struct HealthRow<'a> {
    id: Uuid,
    status: &'a str,
    consecutive_failures: i32,
    gate: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    last_failure_at: Option<DateTime<Utc>>,
    last_failed_status_code: Option<i32>,
    last_failed_reason: Option<&'a str>,
    disable: bool,
}

async fn write_health_all(
    db: &impl ConnectionTrait,
    all: &HashMap<Uuid, HealthUpdate>,
) -> Result<(), DbErr> {
    if all.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() != DbBackend::Postgres {
        for h in all.values() {
            write_health(db, h).await?;
        }
    } else {
        let rows: Vec<HealthRow<'_>> = all
            .values()
            .map(|h| HealthRow {
                id: h.destination_id,
                status: h.health.as_str(),
                consecutive_failures: h.consecutive_failures as i32,
                gate: h.gate,
                last_success_at: h.last_success_at,
                last_failure_at: h.last_failure_at,
                last_failed_status_code: h.last_failed_status_code,
                last_failed_reason: h.last_failed_reason.as_deref(),
                disable: h.disable,
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(|e| DbErr::Custom(e.to_string()))?;
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            HEALTH_JSON,
            [
                json.into(),
                now().into(),
                id_list(all.keys().copied()).into(),
            ],
        ))
        .await?;
    }
    for h in all.values() {
        if let Some(until) = h.release_held_until {
            release_held(db, h.destination_id, until).await?;
        }
    }
    Ok(())
}

/// SQLite: one destination's health.
async fn write_health(db: &impl ConnectionTrait, h: &HealthUpdate) -> Result<(), DbErr> {
    let mut q = destination::Entity::update_many()
        .col_expr(destination::Column::Status, Expr::value(h.health.as_str()))
        .col_expr(
            destination::Column::ConsecutiveFailures,
            Expr::value(h.consecutive_failures as i32),
        )
        .col_expr(destination::Column::NextAttemptAt, Expr::value(h.gate));
    if let Some(t) = h.last_success_at {
        q = q.col_expr(destination::Column::LastSuccessAt, Expr::value(t));
    }
    if let Some(t) = h.last_failure_at {
        q = q
            .col_expr(destination::Column::LastFailureAt, Expr::value(t))
            .col_expr(
                destination::Column::LastFailedStatusCode,
                Expr::value(h.last_failed_status_code),
            )
            .col_expr(
                destination::Column::LastFailedReason,
                Expr::value(h.last_failed_reason.clone()),
            );
    }
    if h.disable {
        // A user-visible change: bump the version so every instance reloads the destination.
        q = q
            .col_expr(destination::Column::Enabled, Expr::value(false))
            .col_expr(
                destination::Column::Version,
                Expr::col(destination::Column::Version).add(1),
            )
            .col_expr(destination::Column::UpdatedAt, Expr::value(now()))
            .col_expr(destination::Column::UpdatedBy, Expr::value("hookline"));
    }
    // A user's "disable" made while attempts were in flight must not be undone by them.
    q.filter(destination::Column::Id.eq(h.destination_id))
        .filter(destination::Column::DeletedAt.is_null())
        .filter(destination::Column::Enabled.eq(true))
        .exec(db)
        .await?;
    Ok(())
}

/// A probe closed the circuit: what the open circuit held back is due now — the deliveries
/// parked while it was open, and those given back until the probe's reservation ended.
async fn release_held(
    db: &impl ConnectionTrait,
    destination_id: Uuid,
    until: DateTime<Utc>,
) -> Result<(), DbErr> {
    let t = now();
    delivery::Entity::update_many()
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(t))
        .filter(delivery::Column::DestinationId.eq(destination_id))
        .filter(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY"]))
        .filter(delivery::Column::CompletedAt.is_null())
        .filter(
            sea_orm::Condition::any()
                .add(delivery::Column::NextAttemptAt.is_null())
                .add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::NextAttemptAt.gt(t))
                        .add(delivery::Column::NextAttemptAt.lte(until)),
                ),
        )
        .exec(db)
        .await?;
    Ok(())
}
