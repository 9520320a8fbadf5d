//! The completion writer's statements: delivery updates, destination health, and what a
//! closing circuit makes due again. PostgreSQL gets each kind as one statement with its rows
//! as a JSON document; SQLite, in-process, gets plain grouped statements.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{delivery, destination};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect,
    QueryTrait,
};
use uuid::Uuid;

use super::writer::{DeliveryUpdate, HealthUpdate};
use crate::service::now;

/// Writes the delivery updates of one flush. An update never reopens a delivery that is
/// already finished — its destination was deleted while the attempt was in flight, or its
/// lease lapsed and another instance finished it — except to record a success, which is what
/// happened: a late failure or release must not send it again.
///
/// PostgreSQL: one statement for all of them, the rows passed as one JSON document. SQLite:
/// updates with the same values share one statement (`WHERE id IN (...)`): the successes of
/// a flush, and the releases of a destination whose circuit is open, which would otherwise
/// cost one statement each. Either way, a delivery updated twice in one flush (its lease
/// lapsed and it was claimed again) gets one statement per update, in order, so the later
/// update wins (unless the earlier one finished it, as above).
///
/// With `want_applied`, returns for each update whether it was applied (the guard above did
/// not skip it and the row exists), so that the live stream shows only states the database
/// has; otherwise an empty vector. PostgreSQL reports it through `RETURNING`; SQLite, whose
/// one writer is this transaction, reads which rows are finished before updating them.
pub(super) async fn write_deliveries(
    db: &impl ConnectionTrait,
    ups: &[DeliveryUpdate],
    t: DateTime<Utc>,
    want_applied: bool,
) -> Result<Vec<bool>, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        let (once, in_order) = by_repeats(ups);
        let mut applied_once = HashSet::new();
        for chunk in once.chunks(5000) {
            applied_once.extend(update_json(db, chunk, t, want_applied).await?);
        }
        // Per update of a delivery updated more than once, in order.
        let mut applied_in_order = Vec::with_capacity(in_order.len());
        for u in &in_order {
            applied_in_order.push(!update_json(db, &[*u], t, want_applied).await?.is_empty());
        }
        if !want_applied {
            return Ok(Vec::new());
        }
        let in_order_ids: HashSet<Uuid> = in_order.iter().map(|u| u.id).collect();
        let mut in_order = applied_in_order.into_iter();
        return Ok(ups
            .iter()
            .map(|u| {
                if !in_order_ids.contains(&u.id) {
                    applied_once.contains(&u.id)
                } else {
                    in_order.next().unwrap_or(false)
                }
            })
            .collect());
    }
    let applied = if want_applied {
        applied_in_sqlite(db, ups).await?
    } else {
        Vec::new()
    };
    for stmt in sqlite_delivery_updates(ups, t) {
        db.execute_raw(stmt).await?;
    }
    Ok(applied)
}

/// The updates of deliveries updated once in `ups`, and (in order) those of deliveries
/// updated more than once.
fn by_repeats(ups: &[DeliveryUpdate]) -> (Vec<&DeliveryUpdate>, Vec<&DeliveryUpdate>) {
    let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(ups.len());
    for u in ups {
        *seen.entry(u.id).or_default() += 1;
    }
    ups.iter().partition(|u| seen[&u.id] == 1)
}

/// SQLite: the statements of [`write_deliveries`] (for [`crate::db::sqlite_script`], or to
/// run one by one).
pub(super) fn sqlite_delivery_updates(
    ups: &[DeliveryUpdate],
    t: DateTime<Utc>,
) -> Vec<sea_orm::Statement> {
    type Key<'a> = (
        &'static str,
        Option<i32>,
        Option<DateTime<Utc>>,
        Option<i32>,
        Option<&'a str>,
        bool,
    );
    let (once, in_order) = by_repeats(ups);
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
    let mut stmts = Vec::new();
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
            stmts.push(
                update(&u)
                    .filter(delivery::Column::Id.is_in(chunk.iter().copied()))
                    .build(DbBackend::Sqlite),
            );
        }
    }
    for u in in_order {
        stmts.push(
            update(u)
                .filter(delivery::Column::Id.eq(u.id))
                .build(DbBackend::Sqlite),
        );
    }
    // What these park lowers its destination's mark, in the same transaction
    // (`service::parked`). An update the finished-guard skips lowers it too: a mark below what
    // is parked costs a longer read once, never a lost delivery.
    let parking: Vec<Uuid> = ups
        .iter()
        .filter(|u| u.next_attempt_at.is_none() && !u.completed)
        .map(|u| u.id)
        .collect();
    stmts.extend(crate::service::parked::lower_for(&parking));
    stmts
}

/// SQLite: which of `ups` the statements above will apply, worked out from the rows as they
/// are before them — exact, because nothing else writes while this transaction does.
async fn applied_in_sqlite(
    db: &impl ConnectionTrait,
    ups: &[DeliveryUpdate],
) -> Result<Vec<bool>, DbErr> {
    let mut ids: Vec<Uuid> = ups.iter().map(|u| u.id).collect();
    ids.sort_unstable();
    ids.dedup();
    // Per existing delivery: finished already?
    let mut finished: HashMap<Uuid, bool> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let rows: Vec<(Uuid, Option<DateTime<Utc>>)> = delivery::Entity::find()
            .select_only()
            .column(delivery::Column::Id)
            .column(delivery::Column::CompletedAt)
            .filter(delivery::Column::Id.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        for (id, completed_at) in rows {
            finished.insert(id, completed_at.is_some());
        }
    }
    Ok(ups
        .iter()
        .map(|u| match finished.get_mut(&u.id) {
            None => false,
            Some(done) if *done && u.status != "SUCCEEDED" => false,
            Some(done) => {
                *done |= u.completed;
                true
            }
        })
        .collect())
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
macro_rules! update_json_sql {
    () => {
        "UPDATE delivery AS d SET status = u.status, \
         next_attempt_at = u.next_attempt_at, lease_until = NULL, lease_owner = NULL, \
         attempt_count = COALESCE(u.attempt_count, d.attempt_count), \
         last_status_code = CASE WHEN u.attempt_count IS NULL THEN d.last_status_code \
           ELSE u.last_status_code END, \
         last_error = CASE WHEN u.attempt_count IS NULL AND u.last_error IS NULL THEN d.last_error \
           ELSE u.last_error END, \
         completed_at = CASE WHEN u.completed THEN $2 ELSE d.completed_at END \
         FROM json_to_recordset($1::json) AS u(id uuid, status text, attempt_count int4, \
           next_attempt_at timestamptz, last_status_code int4, last_error text, completed bool) \
         WHERE d.id = u.id AND d.id = ANY(string_to_array($3, ',')::uuid[]) \
         AND (d.completed_at IS NULL OR u.status = 'SUCCEEDED')"
    };
}
const UPDATE_JSON: &str = update_json_sql!();

/// The completion writer's update of deliveries on PostgreSQL, for tests of its plan.
pub fn update_json_sql() -> &'static str {
    UPDATE_JSON
}

/// [`UPDATE_JSON`] reporting the ids it updated.
const UPDATE_JSON_RETURNING: &str = concat!(update_json_sql!(), " RETURNING d.id");

/// Applies `ups`; with `want_applied`, returns the ids of the rows it updated.
async fn update_json(
    db: &impl ConnectionTrait,
    ups: &[&DeliveryUpdate],
    t: DateTime<Utc>,
    want_applied: bool,
) -> Result<Vec<Uuid>, DbErr> {
    let json = serde_json::to_string(ups).map_err(|e| DbErr::Custom(e.to_string()))?;
    let values = [
        json.into(),
        t.into(),
        id_list(ups.iter().map(|u| u.id)).into(),
    ];
    if !want_applied {
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            UPDATE_JSON,
            values,
        ))
        .await?;
        return Ok(Vec::new());
    }
    db.query_all_raw(sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        UPDATE_JSON_RETURNING,
        values,
    ))
    .await?
    .iter()
    .map(|r| r.try_get::<Uuid>("", "id"))
    .collect()
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

pub(super) async fn write_health_all(
    db: &impl ConnectionTrait,
    all: &HashMap<Uuid, HealthUpdate>,
) -> Result<(), DbErr> {
    if all.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() != DbBackend::Postgres {
        for stmt in sqlite_health(all) {
            db.execute_raw(stmt).await?;
        }
        return Ok(());
    }
    {
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
            for q in release_held(DbBackend::Postgres, h.destination_id, until) {
                db.execute_raw(q).await?;
            }
        }
    }
    Ok(())
}

/// SQLite: the statements of [`write_health_all`] (for [`crate::db::sqlite_script`], or to run
/// one by one).
pub(super) fn sqlite_health(all: &HashMap<Uuid, HealthUpdate>) -> Vec<sea_orm::Statement> {
    let mut stmts: Vec<_> = all
        .values()
        .map(|h| health(h).build(DbBackend::Sqlite))
        .collect();
    stmts.extend(all.values().flat_map(|h| {
        h.release_held_until
            .into_iter()
            .flat_map(|until| release_held(DbBackend::Sqlite, h.destination_id, until))
    }));
    stmts
}

/// SQLite: one destination's health.
fn health(h: &HealthUpdate) -> sea_orm::UpdateMany<destination::Entity> {
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
}

/// A probe closed the circuit: what the open circuit held back is due now — the deliveries
/// parked while it was open ([`crate::service::parked::release`]: found through their own
/// index on PostgreSQL, from the destination's mark on SQLite, which follows), and those given
/// back until the probe's reservation ended (in `idx_delivery_dest_queued`, migration 6). One
/// statement per index.
fn release_held(
    backend: DbBackend,
    destination_id: Uuid,
    until: DateTime<Utc>,
) -> Vec<sea_orm::Statement> {
    let t = now();
    let mut stmts = crate::service::parked::release(backend, destination_id, t);
    stmts.push(
        delivery::Entity::update_many()
            .col_expr(delivery::Column::NextAttemptAt, Expr::value(t))
            .filter(delivery::Column::DestinationId.eq(destination_id))
            .filter(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY"]))
            .filter(delivery::Column::CompletedAt.is_null())
            .filter(delivery::Column::NextAttemptAt.gt(t))
            .filter(delivery::Column::NextAttemptAt.lte(until))
            .build(backend),
    );
    stmts
}
