//! Claiming due deliveries: one statement takes a batch and leases it to this instance.
//! PostgreSQL skips rows other instances hold (`FOR UPDATE SKIP LOCKED`); SQLite has a single
//! writer, so the same statement without the locking clause is already exclusive.
//!
//! A claim moves `next_attempt_at` to the lease's end: if this instance dies, the delivery
//! simply becomes due again when the lease runs out, and any instance picks it up.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{delivery, destination, event};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    Statement, Value,
};
use uuid::Uuid;

#[derive(Clone, Debug, FromQueryResult)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant_id: String,
    pub event_id: Uuid,
    pub destination_id: Uuid,
    pub event_type: String,
    pub attempt_count: i32,
    pub created_at: DateTime<Utc>,
}

impl Claimed {
    /// A delivery row the caller has leased itself (at publish, or a test event).
    pub fn of(d: &delivery::Model) -> Self {
        Claimed {
            id: d.id,
            tenant_id: d.tenant_id.clone(),
            event_id: d.event_id,
            destination_id: d.destination_id,
            event_type: d.event_type.clone(),
            attempt_count: d.attempt_count,
            created_at: d.created_at,
        }
    }

    /// The status to go back to when released without an attempt.
    pub fn waiting_status(&self) -> &'static str {
        if self.attempt_count > 0 {
            "AWAITING_RETRY"
        } else {
            "PENDING"
        }
    }
}

/// Claims up to `limit` deliveries due at `now`, oldest due first.
pub async fn claim(
    db: &impl ConnectionTrait,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u64,
    skip_destinations: &[Uuid],
) -> Result<Vec<Claimed>, DbErr> {
    let backend = db.get_database_backend();
    let sql = claim_sql(backend, skip_destinations.len());
    // SQLite numbers `?` by position, so the lease value is bound twice there.
    let mut values: Vec<Value> = match backend {
        DbBackend::Postgres => vec![lease_until.into(), owner.into(), now.into()],
        _ => vec![
            lease_until.into(),
            lease_until.into(),
            owner.into(),
            now.into(),
        ],
    };
    let skip_values = skip_destinations.iter().map(|id| Value::from(*id));
    if backend == DbBackend::Postgres {
        values.push((limit as i64).into());
        values.extend(skip_values);
    } else {
        // Positional `?`: the skip list comes before LIMIT in the text.
        values.extend(skip_values);
        values.push((limit as i64).into());
    }
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let mut out = rows
        .iter()
        .map(|r| Claimed::from_query_result(r, ""))
        .collect::<Result<Vec<_>, _>>()?;
    // RETURNING order is unspecified; FIFO destinations need publish order.
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// [`claim`]'s statement on `backend`, leaving `skip` destinations out. PostgreSQL: `$1` the
/// lease's end, `$2` the owner, `$3` now, `$4` the limit, then the destinations.
pub fn claim_sql(backend: DbBackend, skip: usize) -> String {
    // The only backend difference: PostgreSQL must skip rows other instances are claiming.
    let (p, lock) = match backend {
        DbBackend::Postgres => (["$1", "$2", "$3", "$4"], " FOR UPDATE SKIP LOCKED"),
        _ => (["?", "?", "?", "?"], ""),
    };
    // Destinations with a full waiting queue here are left for later (or other instances).
    let skip = if skip == 0 {
        String::new()
    } else {
        let first = if backend == DbBackend::Postgres { 5 } else { 6 };
        let marks: Vec<String> = (0..skip)
            .map(|i| match backend {
                DbBackend::Postgres => format!("${}", first + i),
                _ => "?".to_string(),
            })
            .collect();
        format!(" AND destination_id NOT IN ({})", marks.join(", "))
    };
    // PostgreSQL: `id = ANY(ARRAY(subquery))` makes the chosen ids one value that the outer
    // UPDATE looks up through the primary key. With `id IN (subquery)` the planner often
    // picks a hash join over a sequential scan of the whole queue (always, before the table
    // has statistics), so every claim would cost O(queue size).
    let (open, close) = match backend {
        DbBackend::Postgres => ("= ANY(ARRAY(", "))"),
        _ => ("IN (", ")"),
    };
    format!(
        "UPDATE delivery SET status = 'DELIVERING', lease_until = {lease}, \
         next_attempt_at = {lease}, lease_owner = {owner} \
         WHERE id {open}SELECT id FROM delivery WHERE next_attempt_at <= {now}{skip} \
         ORDER BY next_attempt_at, id LIMIT {limit}{lock}{close} \
         RETURNING id, tenant_id, event_id, destination_id, event_type, attempt_count, created_at",
        lease = p[0],
        owner = p[1],
        now = p[2],
        limit = p[3],
    )
}

/// Destinations whose circuit is open and whose probe time has come. Each is reserved for one
/// probe in the same statement (its gate moves to `reserve_until`), so two instances never
/// probe it at once; the probe's outcome writes the next gate.
pub async fn take_probes(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    reserve_until: DateTime<Utc>,
) -> Result<Vec<destination::Model>, DbErr> {
    use sea_orm::sea_query::Expr;
    destination::Entity::update_many()
        .col_expr(
            destination::Column::NextAttemptAt,
            Expr::value(reserve_until),
        )
        .filter(destination::Column::Status.eq("FAILING"))
        .filter(destination::Column::Enabled.eq(true))
        .filter(destination::Column::Ordered.eq(false))
        .filter(destination::Column::DeletedAt.is_null())
        .filter(
            sea_orm::Condition::any()
                .add(destination::Column::NextAttemptAt.is_null())
                .add(destination::Column::NextAttemptAt.lte(now)),
        )
        .exec_with_returning(db)
        .await
}

/// Leases one parked delivery of a destination (for its probe), if it has any.
pub async fn claim_parked(
    db: &impl ConnectionTrait,
    owner: &str,
    destination_id: Uuid,
    lease_until: DateTime<Utc>,
) -> Result<Option<Claimed>, DbErr> {
    let backend = db.get_database_backend();
    if backend == DbBackend::Sqlite {
        // Up to the first parked delivery, where the claim below then finds it.
        db.execute_raw(crate::service::parked::tighten(destination_id))
            .await?;
    }
    let row = db
        .query_one_raw(crate::db::raw(
            backend,
            &claim_parked_sql(backend),
            vec![lease_until.into(), owner.into(), destination_id.into()],
        ))
        .await?;
    row.map(|r| Claimed::from_query_result(&r, "")).transpose()
}

/// [`claim_parked`]'s statement; `$1` the lease's end, `$2` the owner, `$3` the destination.
///
/// PostgreSQL: the parked delivery is looked up in `idx_delivery_parked` whatever the planner
/// believes. With `destination_id = $3 … LIMIT 1`, PostgreSQL on fresh statistics that show a
/// failing destination's parked rows as many bets on a sequential scan meeting one early, and
/// reads every finished delivery stored before them first (a table of months of history on a
/// real installation), on every probe. Written as a range
/// of one value in index order, the sequential scan would have to sort what it finds, so the
/// index is the cheaper plan, custom or generic. SQLite has no parked index: the first parked
/// delivery from the destination's mark ([`crate::service::parked::CLAIM_SQLITE`]).
pub fn claim_parked_sql(backend: DbBackend) -> String {
    if backend == DbBackend::Sqlite {
        return crate::service::parked::CLAIM_SQLITE.to_string();
    }
    "UPDATE delivery SET status = 'DELIVERING', lease_until = $1, next_attempt_at = $1, \
     lease_owner = $2 WHERE id = (SELECT id FROM delivery \
     WHERE destination_id >= $3 AND destination_id <= $3 \
     AND next_attempt_at IS NULL AND completed_at IS NULL \
     AND status IN ('PENDING', 'AWAITING_RETRY') ORDER BY destination_id LIMIT 1 \
     FOR UPDATE SKIP LOCKED) \
     RETURNING id, tenant_id, event_id, destination_id, event_type, attempt_count, created_at"
        .to_string()
}

/// Deliveries parked for an open circuit whose destination is no longer failing become due.
/// The probe that closes a circuit does this for its destination; this catches the parks that
/// raced with it (a publish that saw the circuit open and committed after it closed).
///
/// Runs every 5 s (`SWEEP_EVERY` of the claim loop), beside a failing destination's parked
/// backlog, so its cost must not grow with that backlog whatever the planner believes about the
/// table. See [`parked_destinations_sql`].
pub async fn unpark_recovered(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            parked_destinations_sql(backend),
        ))
        .await?;
    let mut n = 0;
    for r in rows {
        let id: Uuid = r.try_get("", "id")?;
        n += crate::service::destinations::unpark(db, id)
            .await
            .map_err(|e| DbErr::Custom(e.detail()))?;
    }
    Ok(n)
}

/// The destinations that have parked deliveries but are no longer failing (or are ordered,
/// which are never parked on purpose).
///
/// PostgreSQL: written as a skip scan of `idx_delivery_parked`: each step is one descent of
/// that index to the next destination that has a parked delivery, so the statement costs one
/// index probe per such destination, never a pass over any destination's parked rows. The
/// shape matters. A correlated `EXISTS (… WHERE p.destination_id = d.id …)` leaves the choice
/// of join to the planner: with statistics taken while the table was small it reads the whole
/// parked index of a failing destination on every sweep, and with fresh statistics a
/// correlated `LIMIT 1` probe can become a sequential scan that hopes to meet a match early. An ordered `LIMIT 1` on the indexed
/// column leaves PostgreSQL no cheaper path than the index.
///
/// SQLite: the destinations with a mark ([`crate::service::parked::RECOVERED_SQLITE`]), through
/// the partial index of marked destinations; a mark left on a destination with nothing parked
/// any more is cleared by the unpark that follows.
pub fn parked_destinations_sql(backend: DbBackend) -> String {
    if backend == DbBackend::Sqlite {
        return crate::service::parked::RECOVERED_SQLITE.to_string();
    }
    "WITH RECURSIVE t(id) AS (\
       SELECT (SELECT p.destination_id FROM delivery AS p \
         WHERE p.next_attempt_at IS NULL AND p.completed_at IS NULL \
         ORDER BY p.destination_id LIMIT 1) \
       UNION ALL \
       SELECT (SELECT p.destination_id FROM delivery AS p \
         WHERE p.destination_id > t.id AND p.next_attempt_at IS NULL \
         AND p.completed_at IS NULL ORDER BY p.destination_id LIMIT 1) \
       FROM t WHERE t.id IS NOT NULL) \
     SELECT d.id FROM t JOIN destination d ON d.id = t.id \
     WHERE d.enabled AND d.deleted_at IS NULL AND (d.status <> 'FAILING' OR d.ordered)"
        .to_string()
}

/// The earliest time any delivery becomes due, for sleeping until then.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>, DbErr> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT MIN(next_attempt_at) AS t FROM delivery WHERE next_attempt_at IS NOT NULL",
        ))
        .await?;
    Ok(row.and_then(|r| r.try_get::<Option<DateTime<Utc>>>("", "t").ok().flatten()))
}

/// The events and destinations of a claimed batch: one query each.
pub async fn load_context(
    db: &impl ConnectionTrait,
    claimed: &[Claimed],
) -> Result<
    (
        HashMap<Uuid, event::Model>,
        HashMap<Uuid, destination::Model>,
    ),
    DbErr,
> {
    let mut event_ids: Vec<Uuid> = claimed.iter().map(|c| c.event_id).collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    let mut dest_ids: Vec<Uuid> = claimed.iter().map(|c| c.destination_id).collect();
    dest_ids.sort_unstable();
    dest_ids.dedup();
    let mut events = HashMap::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(500) {
        for e in event::Entity::find()
            .filter(event::Column::Id.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            events.insert(e.id, e);
        }
    }
    let mut dests = HashMap::with_capacity(dest_ids.len());
    for chunk in dest_ids.chunks(500) {
        for d in destination::Entity::find()
            .filter(destination::Column::Id.is_in(chunk.iter().copied()))
            .all(db)
            .await?
        {
            dests.insert(d.id, d);
        }
    }
    Ok((events, dests))
}
