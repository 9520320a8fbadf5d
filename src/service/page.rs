//! Keyset pagination over time-ordered UUID primary keys (Relay `first/after`, `last/before`).

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, Order, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};
use uuid::Uuid;

use crate::error::{AppError, AppResult};

#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub first: Option<i32>,
    pub after: Option<Uuid>,
    pub last: Option<i32>,
    pub before: Option<Uuid>,
}

#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_next: bool,
    pub has_previous: bool,
}

/// Which way a listing runs: newest first suits events and deliveries, oldest first suits
/// configuration objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    OldestFirst,
    NewestFirst,
}

impl PageRequest {
    /// The page size, validated against the configured maximum, and whether the page is
    /// read backwards.
    pub fn size(&self, max: u64) -> AppResult<(u64, bool)> {
        if self.first.is_some() && self.last.is_some() {
            return Err(AppError::bad_input(
                "last",
                "pass either `first` or `last`, not both",
            ));
        }
        let (field, n, backward) = match (self.first, self.last) {
            (_, Some(n)) => ("last", n, true),
            (Some(n), None) => ("first", n, false),
            (None, None) => ("first", 20.min(max as i32), self.before.is_some()),
        };
        if n < 0 || n as u64 > max {
            return Err(AppError::bad_input(
                field,
                format!("must be between 0 and {max}, got {n}"),
            ));
        }
        Ok((n as u64, backward))
    }
}

/// Runs one page of `select` (already filtered by tenant and filters). Costs one query.
pub async fn paginate<E, C>(
    db: &C,
    select: Select<E>,
    id: E::Column,
    direction: Direction,
    req: &PageRequest,
    max: u64,
) -> AppResult<Page<E::Model>>
where
    E: EntityTrait,
    E::Column: ColumnTrait,
    C: ConnectionTrait,
{
    let (q, n, backward) = page_query(select, id, direction, req, max)?;
    Ok(page_of(q.all(db).await?, n, backward, req))
}

/// The page in the rows [`page_query`]'s statement returned (one more than the page when
/// another page follows).
pub fn page_of<T>(mut items: Vec<T>, n: u64, backward: bool, req: &PageRequest) -> Page<T> {
    let more = items.len() as u64 > n;
    items.truncate(n as usize);
    if backward {
        items.reverse();
        Page {
            items,
            has_next: req.before.is_some(),
            has_previous: more,
        }
    } else {
        Page {
            items,
            has_next: more,
            has_previous: req.after.is_some(),
        }
    }
}

/// The statement [`paginate`] runs: `select` bounded by the cursors, in id order, one row
/// more than the page (which tells whether another page follows). Also the page size and
/// whether it is read backwards.
pub fn page_query<E>(
    select: Select<E>,
    id: E::Column,
    direction: Direction,
    req: &PageRequest,
    max: u64,
) -> AppResult<(Select<E>, u64, bool)>
where
    E: EntityTrait,
    E::Column: ColumnTrait,
{
    let (n, backward) = req.size(max)?;
    let ascending = (direction == Direction::OldestFirst) != backward;
    let mut q = select;
    // "after" lies behind us in reading order, "before" ahead; which comparison that is
    // depends on the listing's direction.
    let forward_gt = direction == Direction::OldestFirst;
    if let Some(after) = req.after {
        q = if forward_gt {
            q.filter(id.gt(after))
        } else {
            q.filter(id.lt(after))
        };
    }
    if let Some(before) = req.before {
        q = if forward_gt {
            q.filter(id.lt(before))
        } else {
            q.filter(id.gt(before))
        };
    }
    let order = if ascending { Order::Asc } else { Order::Desc };
    Ok((q.order_by(id, order).limit(n + 1), n, backward))
}

/// `totalCount` for a connection: the same filters, no paging.
pub async fn count<E, C>(db: &C, select: Select<E>) -> AppResult<u64>
where
    E: EntityTrait,
    E::Model: Sync,
    C: ConnectionTrait,
{
    Ok(select.count(db).await?)
}
