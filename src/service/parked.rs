//! Where a destination's parked deliveries are found: those waiting with no time
//! (`next_attempt_at IS NULL`, not completed) because its circuit is open or it is disabled.
//!
//! **PostgreSQL** keeps them in the partial index `idx_delivery_parked` (destination).
//!
//! **SQLite** has no index of parked rows (migration 7). Each publish beside an open circuit
//! writes one parked delivery, and on SQLite's single writer every index page a commit touches
//! is a WAL frame that the healthy publishes queued behind it wait for: an entry in an index of
//! parked rows costs ≈ 11 % of the healthy p99 in `backlog` (BENCHMARKS.md, "SQLite finds
//! parked deliveries from a mark"). Instead each
//! destination carries a mark, `destination.parked_from`: an id at or below the id of every
//! parked delivery it has, NULL when it has none. Its parked deliveries are then the range
//! `(tenant, destination, id >= parked_from)` of `idx_delivery_tenant_dest_id`, which every
//! delivery is in anyway, filtered on the row.
//!
//! The mark stays exact because SQLite runs one write transaction at a time, each seeing every
//! one committed before it:
//! - whatever parks a delivery lowers the mark to its id **in the same transaction**
//!   ([`lower`] for a publish's inserts, [`lower_for`] for the writer's updates);
//! - [`tighten`] moves the mark up to the first parked delivery from it, or to NULL, in one
//!   statement: it runs after a release and before the probe's claim, so a mark left low by a
//!   delivery that has since finished is read past once, not on every probe.
//!
//! On PostgreSQL, shared by several instances, transactions run side by side: a release that
//! does not yet see a concurrent publish's parked delivery could move the mark past it for
//! good, unless every publish that parks locked the destination's row. It keeps the index.

use chrono::{DateTime, Utc};
use entity::delivery;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, DbBackend, EntityTrait, QueryFilter, QueryTrait, Statement};
use uuid::Uuid;

/// Rows waiting for no time and not finished: parked (the predicate of `idx_delivery_parked`).
pub fn parked() -> Condition {
    Condition::all()
        .add(delivery::Column::NextAttemptAt.is_null())
        .add(delivery::Column::CompletedAt.is_null())
}

/// The parked deliveries of `destination_id`, as a condition on `delivery` that its backend
/// answers from an index: `idx_delivery_parked` on PostgreSQL, the mark's range of
/// `idx_delivery_tenant_dest_id` on SQLite.
pub fn of_destination(backend: DbBackend, destination_id: Uuid) -> Condition {
    let c = parked().add(delivery::Column::DestinationId.eq(destination_id));
    if backend != DbBackend::Sqlite {
        return c;
    }
    c.add(Expr::cust_with_values(
        "\"delivery\".\"tenant_id\" = (SELECT m.tenant_id FROM destination AS m WHERE m.id = ?)",
        [destination_id],
    ))
    .add(Expr::cust_with_values(
        "\"delivery\".\"id\" >= (SELECT m.parked_from FROM destination AS m WHERE m.id = ?)",
        [destination_id],
    ))
}

/// What an open circuit (or a disabled destination) parked becomes due at `t`, and on SQLite
/// the mark follows.
pub fn release(backend: DbBackend, destination_id: Uuid, t: DateTime<Utc>) -> Vec<Statement> {
    let mut stmts = vec![
        delivery::Entity::update_many()
            .col_expr(delivery::Column::NextAttemptAt, Expr::value(t))
            .filter(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY"]))
            .filter(of_destination(backend, destination_id))
            .build(backend),
    ];
    if backend == DbBackend::Sqlite {
        stmts.push(tighten(destination_id));
    }
    stmts
}

/// SQLite: the first parked delivery of a destination at or after its mark, `d` being the
/// destination's row (a correlated subquery).
const FIRST_FROM_MARK: &str = "SELECT x.id FROM delivery AS x INDEXED BY idx_delivery_tenant_dest_id \
     WHERE x.tenant_id = d.tenant_id AND x.destination_id = d.id AND x.id >= d.parked_from \
     AND x.next_attempt_at IS NULL AND x.completed_at IS NULL ORDER BY x.id LIMIT 1";

/// SQLite: moves the destination's mark up to its first parked delivery, or to NULL when it has
/// none. One statement, so no park can come between the read and the write.
pub fn tighten(destination_id: Uuid) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!(
            "UPDATE destination AS d SET parked_from = ({FIRST_FROM_MARK}) \
             WHERE d.id = ? AND d.parked_from IS NOT NULL"
        ),
        [destination_id.into()],
    )
}

/// SQLite: a delivery `id` of the destination is parked in this transaction.
pub fn lower(destination_id: Uuid, id: Uuid) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE destination SET parked_from = ? \
         WHERE id = ? AND (parked_from IS NULL OR parked_from > ?)",
        [id.into(), destination_id.into(), id.into()],
    )
}

/// SQLite: the deliveries `ids` (existing rows, of any destinations) are parked in this
/// transaction. One statement per 500.
pub fn lower_for(ids: &[Uuid]) -> Vec<Statement> {
    ids.chunks(500)
        .map(|chunk| {
            let marks = vec!["?"; chunk.len()].join(",");
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    "UPDATE destination SET parked_from = m.first FROM \
                     (SELECT destination_id AS dest, MIN(id) AS first FROM delivery \
                      WHERE id IN ({marks}) GROUP BY destination_id) AS m \
                     WHERE destination.id = m.dest \
                     AND (destination.parked_from IS NULL OR destination.parked_from > m.first)"
                ),
                chunk
                    .iter()
                    .map(|&id| id.into())
                    .collect::<Vec<sea_orm::Value>>(),
            )
        })
        .collect()
}

/// SQLite: per destination of `ids` that has a mark, how many unfinished deliveries are parked
/// from it. One statement; each count is a range of `idx_delivery_tenant_dest_id`.
pub fn counts_sqlite(ids: &[Uuid]) -> Statement {
    let marks = vec!["?"; ids.len()].join(",");
    Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!(
            "SELECT d.id AS destination_id, (SELECT COUNT(*) FROM delivery AS x \
               INDEXED BY idx_delivery_tenant_dest_id WHERE x.tenant_id = d.tenant_id \
               AND x.destination_id = d.id AND x.id >= d.parked_from \
               AND x.next_attempt_at IS NULL AND x.completed_at IS NULL \
               AND x.status IN ('PENDING', 'AWAITING_RETRY', 'DELIVERING')) AS n \
             FROM destination AS d WHERE d.id IN ({marks}) AND d.parked_from IS NOT NULL"
        ),
        ids.iter()
            .map(|&id| id.into())
            .collect::<Vec<sea_orm::Value>>(),
    )
}

/// SQLite: the destinations that have parked deliveries but are no longer failing (or are
/// ordered, which are never parked on purpose): those with a mark. For the recovery sweep.
pub const RECOVERED_SQLITE: &str = "SELECT d.id FROM destination AS d \
     INDEXED BY idx_destination_parked WHERE d.parked_from IS NOT NULL \
     AND d.enabled AND d.deleted_at IS NULL AND (d.status <> 'FAILING' OR d.ordered)";

/// SQLite: leases the first parked delivery from the destination's mark (`$1` the lease's end,
/// `$2` the owner, `$3` the destination). Run after [`tighten`], it finds it at the mark.
pub const CLAIM_SQLITE: &str = "UPDATE delivery SET status = 'DELIVERING', lease_until = $1, \
     next_attempt_at = $1, lease_owner = $2 WHERE id = (SELECT x.id FROM delivery AS x \
     INDEXED BY idx_delivery_tenant_dest_id \
     WHERE x.tenant_id = (SELECT m.tenant_id FROM destination AS m WHERE m.id = $3) \
     AND x.destination_id = $3 \
     AND x.id >= (SELECT m.parked_from FROM destination AS m WHERE m.id = $3) \
     AND x.next_attempt_at IS NULL AND x.completed_at IS NULL \
     AND x.status IN ('PENDING', 'AWAITING_RETRY') ORDER BY x.id LIMIT 1) \
     RETURNING id, tenant_id, event_id, destination_id, event_type, attempt_count, created_at";
