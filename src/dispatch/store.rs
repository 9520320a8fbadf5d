//! The completion writer's statements: attempts, delivery updates, destination health, and
//! what a closing circuit makes due again. PostgreSQL gets a whole flush as one statement
//! ([`write_flush_pg`]); SQLite, in-process, gets plain grouped statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{attempt_rollup, delivery, delivery_attempt, destination};
use sea_orm::sqlx::{self, PgPool};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::writer::{DeliveryUpdate, HealthUpdate};
use crate::service::now;

/// SQLite: writes the delivery updates of one flush (PostgreSQL: [`write_flush_pg`], with the
/// same rules). An update never reopens a delivery that is
/// already finished — its destination was deleted while the attempt was in flight, or its
/// lease lapsed and another instance finished it — except to record a success, which is what
/// happened: a late failure or release must not send it again.
///
/// Updates with the same values share one statement (`WHERE id IN (...)`): the successes of
/// a flush, and the releases of a destination whose circuit is open, which would otherwise
/// cost one statement each. Either way, a delivery updated twice in one flush (its lease
/// lapsed and it was claimed again) gets one statement per update, in order, so the later
/// update wins (unless the earlier one finished it, as above).
pub(super) async fn write_deliveries(
    db: &impl ConnectionTrait,
    ups: &[DeliveryUpdate],
    t: DateTime<Utc>,
) -> Result<(), DbErr> {
    type Key<'a> = (
        &'static str,
        Option<i32>,
        Option<DateTime<Utc>>,
        Option<i32>,
        Option<&'a str>,
        bool,
    );
    let (once, in_order) = split_repeated(ups);
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
        if u.status != "SUCCEEDED" {
            q = q.filter(delivery::Column::CompletedAt.is_null());
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

/// Splits a flush's delivery updates into those of deliveries updated once and, in order,
/// those of deliveries updated more than once (their lease lapsed and they were claimed
/// again): one statement cannot update a row twice, so these get a statement each.
fn split_repeated(ups: &[DeliveryUpdate]) -> (Vec<&DeliveryUpdate>, Vec<&DeliveryUpdate>) {
    let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(ups.len());
    for u in ups {
        *seen.entry(u.id).or_default() += 1;
    }
    ups.iter().partition(|u| seen[&u.id] == 1)
}

/// PostgreSQL: a whole completion flush in one statement — the attempts, the delivery
/// updates (distinct ids), the destinations' health, the rollups and the NOTIFYs for the
/// other instances' live streams — so that a flush is one round trip and, unless it needs
/// more statements, one commit with no `BEGIN`/`COMMIT` of its own.
///
/// The attempt and delivery rows travel as binary arrays (`unnest`), as the publisher's do:
/// PostgreSQL decodes a UUID or a timestamp from its bytes instead of parsing JSON text.
/// The few health and rollup rows stay JSON documents. The delivery update has the meaning
/// of [`write_deliveries`]: the attempt's facts only when an attempt was made, an error alone
/// when a discard gives one, `completed_at` when finished, and never a finished delivery
/// reopened except to record a success. `d.id = ANY($17)` gives the planner a primary-key
/// lookup whatever the table's size (joining the unnested rows alone leaves it free to hash
/// them against a sequential scan, and a prepared statement keeps the plan it chose while the
/// table was small). The health update never undoes a user's "disable" made while attempts
/// were in flight; a 410 Gone switches the destination off and bumps its version.
const FLUSH_PG: &str = "WITH a AS (INSERT INTO delivery_attempt \
       (id, tenant_id, delivery_id, destination_id, event_id, event_type, attempt_number, \
        request_id, started_at, duration_ms, response_status, response_body, error_kind, \
        error_message, outcome, next_attempt_at) \
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], \
         $6::text[], $7::int4[], $8::uuid[], $9::timestamptz[], $10::int4[], $11::int4[], \
         $12::text[], $13::text[], $14::text[], $15::text[], $16::timestamptz[])), \
     u AS (UPDATE delivery AS d SET status = u.status, \
       next_attempt_at = u.next_attempt_at, lease_until = NULL, lease_owner = NULL, \
       attempt_count = COALESCE(u.attempt_count, d.attempt_count), \
       last_status_code = CASE WHEN u.attempt_count IS NULL THEN d.last_status_code \
         ELSE u.last_status_code END, \
       last_error = CASE WHEN u.attempt_count IS NULL AND u.last_error IS NULL THEN d.last_error \
         ELSE u.last_error END, \
       completed_at = CASE WHEN u.completed THEN $24 ELSE d.completed_at END \
       FROM unnest($17::uuid[], $18::text[], $19::int4[], $20::timestamptz[], $21::int4[], \
         $22::text[], $23::bool[]) AS u(id, status, attempt_count, next_attempt_at, \
         last_status_code, last_error, completed) \
       WHERE d.id = u.id AND d.id = ANY($17::uuid[]) \
       AND (d.completed_at IS NULL OR u.status = 'SUCCEEDED')), \
     h AS (UPDATE destination AS d SET status = h.status, \
       consecutive_failures = h.consecutive_failures, next_attempt_at = h.gate, \
       last_success_at = COALESCE(h.last_success_at, d.last_success_at), \
       last_failure_at = COALESCE(h.last_failure_at, d.last_failure_at), \
       last_failed_status_code = CASE WHEN h.last_failure_at IS NULL \
         THEN d.last_failed_status_code ELSE h.last_failed_status_code END, \
       last_failed_reason = CASE WHEN h.last_failure_at IS NULL \
         THEN d.last_failed_reason ELSE h.last_failed_reason END, \
       enabled = NOT h.disable, \
       version = d.version + CASE WHEN h.disable THEN 1 ELSE 0 END, \
       updated_at = CASE WHEN h.disable THEN $24 ELSE d.updated_at END, \
       updated_by = CASE WHEN h.disable THEN 'hookline' ELSE d.updated_by END \
       FROM json_to_recordset($25::json) AS h(id uuid, status text, consecutive_failures int4, \
         gate timestamptz, last_success_at timestamptz, last_failure_at timestamptz, \
         last_failed_status_code int4, last_failed_reason text, disable bool) \
       WHERE d.id = h.id AND d.id = ANY($26::uuid[]) AND d.deleted_at IS NULL AND d.enabled), \
     r AS (INSERT INTO attempt_rollup \
       SELECT * FROM json_populate_recordset(NULL::attempt_rollup, $27::json) \
       ON CONFLICT (destination_id, bucket_start, instance_id) DO UPDATE SET \
       attempts = EXCLUDED.attempts, successes = EXCLUDED.successes, \
       failures = EXCLUDED.failures, duration_sum_ms = EXCLUDED.duration_sum_ms, \
       latency_hist = EXCLUDED.latency_hist) \
     SELECT pg_notify($28, m) FROM unnest($29::text[]) AS m";

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

/// What one completion flush writes (see [`write_flush_pg`]).
pub(super) struct FlushRows<'a> {
    pub attempts: Vec<&'a delivery_attempt::Model>,
    pub deliveries: &'a [DeliveryUpdate],
    pub health: &'a HashMap<Uuid, HealthUpdate>,
    pub rollups: &'a [attempt_rollup::Model],
    /// `completed_at` of what the flush completes.
    pub at: DateTime<Utc>,
    /// Payloads for the other instances' live streams, sent on commit.
    pub announcements: Vec<String>,
}

/// PostgreSQL: writes one completion flush atomically, as [`FLUSH_PG`] — one statement unless
/// a delivery is updated twice or a closing circuit releases what it held, which take a
/// transaction around it and a statement each.
pub(super) async fn write_flush_pg(pool: &PgPool, f: FlushRows<'_>) -> Result<(), DbErr> {
    let (once, in_order) = split_repeated(f.deliveries);
    let health: Vec<HealthRow<'_>> = f
        .health
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
    let health = serde_json::to_string(&health).map_err(|e| DbErr::Custom(e.to_string()))?;
    let rollups = serde_json::to_string(f.rollups).map_err(|e| DbErr::Custom(e.to_string()))?;
    let releases: Vec<(Uuid, DateTime<Utc>)> = f
        .health
        .values()
        .filter_map(|h| Some((h.destination_id, h.release_held_until?)))
        .collect();
    let main = flush_query(
        &f.attempts,
        &once,
        f.at,
        health,
        f.health.keys().copied().collect(),
        rollups,
        f.announcements,
    );
    if in_order.is_empty() && releases.is_empty() {
        main.execute(pool).await.map_err(crate::db::sqlx_err)?;
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(crate::db::sqlx_err)?;
    main.execute(&mut *tx).await.map_err(crate::db::sqlx_err)?;
    for u in in_order {
        let q = flush_query(&[], &[u], f.at, "[]".into(), vec![], "[]".into(), vec![]);
        q.execute(&mut *tx).await.map_err(crate::db::sqlx_err)?;
    }
    for (destination_id, until) in releases {
        sqlx::query(RELEASE_HELD_PG)
            .bind(destination_id)
            .bind(now())
            .bind(until)
            .execute(&mut *tx)
            .await
            .map_err(crate::db::sqlx_err)?;
    }
    tx.commit().await.map_err(crate::db::sqlx_err)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn flush_query<'q>(
    attempts: &[&'q delivery_attempt::Model],
    ups: &[&'q DeliveryUpdate],
    t: DateTime<Utc>,
    health: String,
    health_ids: Vec<Uuid>,
    rollups: String,
    announcements: Vec<String>,
) -> PgQuery<'q> {
    use crate::service::publisher::column;
    sqlx::query(FLUSH_PG)
        .bind(column(attempts, |a| a.id))
        .bind(column(attempts, |a| a.tenant_id.as_str()))
        .bind(column(attempts, |a| a.delivery_id))
        .bind(column(attempts, |a| a.destination_id))
        .bind(column(attempts, |a| a.event_id))
        .bind(column(attempts, |a| a.event_type.as_str()))
        .bind(column(attempts, |a| a.attempt_number))
        .bind(column(attempts, |a| a.request_id))
        .bind(column(attempts, |a| a.started_at))
        .bind(column(attempts, |a| a.duration_ms))
        .bind(column(attempts, |a| a.response_status))
        .bind(column(attempts, |a| a.response_body.as_deref()))
        .bind(column(attempts, |a| a.error_kind.as_deref()))
        .bind(column(attempts, |a| a.error_message.as_deref()))
        .bind(column(attempts, |a| a.outcome.as_str()))
        .bind(column(attempts, |a| a.next_attempt_at))
        .bind(column(ups, |u| u.id))
        .bind(column(ups, |u| u.status))
        .bind(column(ups, |u| u.attempt_count))
        .bind(column(ups, |u| u.next_attempt_at))
        .bind(column(ups, |u| u.last_status_code))
        .bind(column(ups, |u| u.last_error.as_deref()))
        .bind(column(ups, |u| u.completed))
        .bind(t)
        .bind(health)
        .bind(health_ids)
        .bind(rollups)
        .bind(crate::live::pg::LIVE)
        .bind(announcements)
}

/// PostgreSQL form of [`release_held`].
const RELEASE_HELD_PG: &str = "UPDATE delivery SET next_attempt_at = $2 \
     WHERE destination_id = $1 AND status IN ('PENDING', 'AWAITING_RETRY') \
     AND completed_at IS NULL \
     AND (next_attempt_at IS NULL OR (next_attempt_at > $2 AND next_attempt_at <= $3))";

/// SQLite: the health of every destination in the flush, and what closing circuits release
/// (PostgreSQL: [`write_flush_pg`]).
pub(super) async fn write_health_all(
    db: &impl ConnectionTrait,
    all: &HashMap<Uuid, HealthUpdate>,
) -> Result<(), DbErr> {
    for h in all.values() {
        write_health(db, h).await?;
    }
    for h in all.values() {
        if let Some(until) = h.release_held_until {
            release_held(db, h.destination_id, until).await?;
        }
    }
    Ok(())
}

/// SQLite: one destination's health (never undoing a user's "disable" made while attempts
/// were in flight; a 410 Gone switches it off and bumps its version).
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
