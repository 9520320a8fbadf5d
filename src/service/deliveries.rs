//! Deliveries and their attempts: lookups, listings, manual retry and replay.

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Select};
use uuid::Uuid;

use super::page::{Direction, Page, PageRequest, paginate};
use super::{destinations, id_window, now};
use crate::auth::Principal;
use crate::error::{AppError, AppResult};

pub const ALL_STATUSES: &[&str] = &[
    "PENDING",
    "DELIVERING",
    "SUCCEEDED",
    "AWAITING_RETRY",
    "FAILED",
    "DISCARDED",
];
/// Statuses a delivery can be replayed from: finished ones.
pub const REPLAYABLE: &[&str] = &["SUCCEEDED", "FAILED", "DISCARDED"];

/// Unfinished deliveries (`status` included, so that a condition can be combined with
/// others on the same index).
pub fn unfinished() -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY", "DELIVERING"]))
        .add(delivery::Column::CompletedAt.is_null())
}

/// Unfinished deliveries with a time to be attempted at: the rows of `idx_delivery_dest_queued`
/// (migration 6). Add the destination term.
pub fn queued() -> sea_orm::Condition {
    unfinished().add(delivery::Column::NextAttemptAt.is_not_null())
}

/// A destination's unfinished deliveries, as one condition per place that holds them: those
/// with a time to be attempted at in `idx_delivery_dest_queued`, the parked ones (no time: a
/// failing or disabled destination's) where [`super::parked`] finds them. Each condition
/// implies its index's predicate, so a statement over all of them runs once per condition,
/// each on its index; `OR`ed, neither index could serve it.
pub fn unfinished_of(backend: sea_orm::DbBackend, destination_id: Uuid) -> [sea_orm::Condition; 2] {
    [
        queued().add(delivery::Column::DestinationId.eq(destination_id)),
        unfinished().add(super::parked::of_destination(backend, destination_id)),
    ]
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub destination_id: Option<Uuid>,
    pub event_id: Option<Uuid>,
    pub status: Option<Vec<String>>,
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub async fn get(
    db: &impl ConnectionTrait,
    p: &Principal,
    id: Uuid,
) -> AppResult<Option<delivery::Model>> {
    Ok(delivery::Entity::find_by_id(id)
        .filter(delivery::Column::TenantId.eq(&p.tenant))
        .one(db)
        .await?)
}

pub fn filtered(p: &Principal, f: &DeliveryFilter) -> Select<delivery::Entity> {
    let mut q = delivery::Entity::find().filter(delivery::Column::TenantId.eq(&p.tenant));
    if let Some(id) = f.destination_id {
        q = q.filter(delivery::Column::DestinationId.eq(id));
    }
    if let Some(id) = f.event_id {
        q = q.filter(delivery::Column::EventId.eq(id));
    }
    if let Some(s) = &f.status {
        q = q.filter(delivery::Column::Status.is_in(s.iter().cloned()));
    }
    if let Some(t) = &f.event_type {
        q = q.filter(delivery::Column::EventType.eq(t.as_str()));
    }
    if let Some(t) = f.since {
        q = q.filter(delivery::Column::CreatedAt.gte(t));
    }
    if let Some(t) = f.until {
        q = q.filter(delivery::Column::CreatedAt.lt(t));
    }
    q.filter(id_window(delivery::Column::Id, f.since, f.until))
}

/// Newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    p: &Principal,
    f: &DeliveryFilter,
    page: &PageRequest,
    max_page: u64,
) -> AppResult<Page<delivery::Model>> {
    paginate(
        db,
        filtered(p, f),
        delivery::Column::Id,
        Direction::NewestFirst,
        page,
        max_page,
    )
    .await
}

pub async fn attempts(
    db: &impl ConnectionTrait,
    p: &Principal,
    delivery_id: Uuid,
) -> AppResult<Vec<delivery_attempt::Model>> {
    Ok(delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::TenantId.eq(&p.tenant))
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::AttemptNumber)
        .all(db)
        .await?)
}

/// Makes a delivery due now, whatever its state (a delivery being sent right now is left
/// alone). Its attempt count carries on, so an exhausted delivery gets exactly one more try.
pub async fn retry(
    db: &impl ConnectionTrait,
    p: &Principal,
    id: Uuid,
) -> AppResult<delivery::Model> {
    let d = get(db, p, id)
        .await?
        .ok_or(AppError::NotFound("delivery"))?;
    if destinations::get(db, p, d.destination_id).await?.is_none() {
        return Err(AppError::Conflict(
            "the delivery's destination was deleted".into(),
        ));
    }
    if d.status == "DELIVERING" {
        return Err(AppError::Conflict(
            "the delivery is being sent right now".into(),
        ));
    }
    requeue(db, delivery::Column::Id.eq(id)).await?;
    get(db, p, id).await?.ok_or(AppError::NotFound("delivery"))
}

/// Re-queues a destination's finished deliveries created in `[since, until)` whose status
/// is among `statuses` (default: FAILED and DISCARDED). Returns how many.
pub async fn replay(
    db: &impl ConnectionTrait,
    p: &Principal,
    destination_id: Uuid,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    statuses: Option<Vec<String>>,
) -> AppResult<u64> {
    destinations::get_required(db, p, destination_id).await?;
    let statuses = statuses.unwrap_or_else(|| vec!["FAILED".into(), "DISCARDED".into()]);
    if let Some(bad) = statuses.iter().find(|s| !REPLAYABLE.contains(&s.as_str())) {
        return Err(AppError::bad_input(
            "statuses",
            format!(
                "{bad} deliveries are not finished; replay takes SUCCEEDED, FAILED or DISCARDED"
            ),
        ));
    }
    let mut cond = sea_orm::Condition::all()
        .add(delivery::Column::TenantId.eq(&p.tenant))
        .add(delivery::Column::DestinationId.eq(destination_id))
        .add(delivery::Column::Status.is_in(statuses))
        .add(delivery::Column::CreatedAt.gte(since))
        .add(id_window(delivery::Column::Id, Some(since), until));
    if let Some(u) = until {
        cond = cond.add(delivery::Column::CreatedAt.lt(u));
    }
    requeue(db, cond).await
}

async fn requeue(
    db: &impl ConnectionTrait,
    cond: impl sea_orm::sea_query::IntoCondition,
) -> AppResult<u64> {
    let res = delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::cust("CASE WHEN attempt_count > 0 THEN 'AWAITING_RETRY' ELSE 'PENDING' END"),
        )
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now()))
        .col_expr(
            delivery::Column::CompletedAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(cond)
        .filter(delivery::Column::Status.ne("DELIVERING"))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
