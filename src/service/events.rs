//! Events: what a publish carries and its validation, and reading events back. Writing them
//! (group commit, fan-out, hand-over) is [`super::publisher`].

use chrono::{DateTime, Utc};
use entity::event;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Select};
use uuid::Uuid;

use super::matching::Level;
use super::page::{Direction, Page, PageRequest, paginate};
use super::{id_window, validate};
use crate::auth::Principal;
use crate::error::{AppError, AppResult};

pub use super::publisher::{Publisher, new_delivery};

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_type: String,
    pub level: Level,
    /// The payload as JSON text (what RAW deliveries send byte for byte).
    pub payload: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug)]
pub struct Published {
    pub event: event::Model,
    /// False when an earlier event with the same idempotency key was returned instead.
    pub created: bool,
    pub deliveries: usize,
}

#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Checks an event before it is queued for the writer, so a bad one never joins a group.
pub fn validate(ev: &NewEvent, max_payload_bytes: usize) -> AppResult<()> {
    validate::event_type(&ev.event_type)?;
    if ev.payload.len() > max_payload_bytes {
        return Err(AppError::bad_input(
            "payload",
            format!(
                "is {} bytes; the limit is {max_payload_bytes}",
                ev.payload.len()
            ),
        ));
    }
    if let Some(k) = &ev.idempotency_key {
        validate::idempotency_key(k)?;
    }
    Ok(())
}

pub async fn get(
    db: &impl ConnectionTrait,
    p: &Principal,
    id: Uuid,
) -> AppResult<Option<event::Model>> {
    Ok(event::Entity::find_by_id(id)
        .filter(event::Column::TenantId.eq(&p.tenant))
        .one(db)
        .await?)
}

pub fn filtered(p: &Principal, f: &EventFilter) -> Select<event::Entity> {
    let mut q = event::Entity::find().filter(event::Column::TenantId.eq(&p.tenant));
    if let Some(t) = &f.event_type {
        q = q.filter(event::Column::EventType.eq(t.as_str()));
    }
    if let Some(t) = f.since {
        q = q.filter(event::Column::CreatedAt.gte(t));
    }
    if let Some(t) = f.until {
        q = q.filter(event::Column::CreatedAt.lt(t));
    }
    q.filter(id_window(event::Column::Id, f.since, f.until))
}

/// Newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    p: &Principal,
    f: &EventFilter,
    page: &PageRequest,
    max_page: u64,
) -> AppResult<Page<event::Model>> {
    paginate(
        db,
        filtered(p, f),
        event::Column::Id,
        Direction::NewestFirst,
        page,
        max_page,
    )
    .await
}
