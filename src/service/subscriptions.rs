//! Event subscriptions: which events reach a destination (patterns, include/exclude, minimum
//! level, optional payload filter, optional jq filter).

use std::collections::HashMap;
use std::sync::Arc;

use entity::{destination, subscription};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use super::matching::{self, EventsPolicy, Level};
use super::validate;
use super::{destinations, new_id, now};
use crate::auth::Principal;
use crate::error::{AppError, AppResult};
use crate::jq;

/// At most this many subscriptions per destination.
pub const MAX_PER_DESTINATION: u64 = 50;

#[derive(Clone, Debug, Default)]
pub struct SubscriptionPatch {
    pub event_types: Option<Vec<String>>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
    /// `Some(None)` removes the filter.
    pub payload_filter: Option<Option<serde_json::Value>>,
    /// jq program; `Some(None)` removes it.
    pub filter: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// A subscription as the matcher needs it, decoded once.
#[derive(Clone, Debug)]
pub struct Rule {
    pub destination_id: Uuid,
    pub patterns: Vec<String>,
    pub policy: EventsPolicy,
    pub min_level: Level,
    pub payload_filter: Option<serde_json::Value>,
    /// Compiled once per rules load; `None` (no filter) costs nothing per event. A stored
    /// filter that no longer compiles (a jaq upgrade) is `Err` and matches nothing rather
    /// than everything.
    pub filter: Option<Result<Arc<jq::Program>, ()>>,
}

impl Rule {
    pub fn from_model(m: &subscription::Model) -> Self {
        Rule {
            destination_id: m.destination_id,
            patterns: patterns_of(m),
            policy: EventsPolicy::parse(&m.events_policy).unwrap_or(EventsPolicy::Include),
            min_level: Level::parse(&m.min_level).unwrap_or(Level::Debug),
            payload_filter: m
                .payload_filter
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            filter: m.filter.as_deref().map(compile_stored_filter),
        }
    }

    /// `payload` and `input` are asked for only when a payload filter or a jq filter needs
    /// them, so the caller can build each once per event and only if some rule wants it.
    pub fn accepts(
        &self,
        event_type: &str,
        level: Level,
        payload: impl FnOnce() -> Option<serde_json::Value>,
        input: impl FnOnce() -> jaq_json::Val,
    ) -> bool {
        self.verdict(event_type, level, payload, input).is_ok()
    }

    /// Like [`Rule::accepts`], saying which check refused the event.
    pub fn verdict(
        &self,
        event_type: &str,
        level: Level,
        payload: impl FnOnce() -> Option<serde_json::Value>,
        input: impl FnOnce() -> jaq_json::Val,
    ) -> Result<(), Refusal> {
        // The level test is cheap, so it goes first.
        if level < self.min_level {
            return Err(Refusal::Level);
        }
        if !matching::subscription_accepts(
            &self.patterns,
            self.policy,
            self.min_level,
            event_type,
            level,
        ) {
            return Err(Refusal::EventType);
        }
        if let Some(f) = &self.payload_filter
            && !payload().is_some_and(|p| matching::payload_filter_accepts(Some(f), &p))
        {
            return Err(Refusal::PayloadFilter);
        }
        match &self.filter {
            Some(Ok(f)) if !f.accepts(input()) => Err(Refusal::Filter),
            Some(Err(())) => Err(Refusal::Filter),
            _ => Ok(()),
        }
    }
}

/// Which check of a subscription refused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Level,
    EventType,
    PayloadFilter,
    Filter,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Level => "the event's level is below minLevel",
            Refusal::EventType => "the event type is not subscribed",
            Refusal::PayloadFilter => "payloadFilter does not match",
            Refusal::Filter => "filter did not output true",
        }
    }
}

fn compile_stored_filter(code: &str) -> Result<Arc<jq::Program>, ()> {
    jq::compile_stored(code).map_err(|e| {
        tracing::warn!(error = %e, "subscription filter matches nothing");
    })
}

/// Compiles a filter before it is stored: a syntax error is `BAD_USER_INPUT` on `filter`.
pub fn check_jq_filter(code: &str) -> AppResult<()> {
    jq::compile(code)
        .map(|_| ())
        .map_err(|m| AppError::bad_input("filter", m))
}

pub fn patterns_of(m: &subscription::Model) -> Vec<String> {
    serde_json::from_str(&m.event_types).unwrap_or_default()
}

fn check_filter(f: &serde_json::Value) -> AppResult<()> {
    matching::validate_payload_filter(f).map_err(|m| AppError::bad_input("payloadFilter", m))
}

/// A new subscription's optional filters: the payload's equality paths and a jq program.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub payload_filter: Option<serde_json::Value>,
    pub filter: Option<String>,
}

/// Builds (and validates) a new subscription row without writing it.
pub fn new_model(
    p: &Principal,
    destination_id: Uuid,
    event_types: Vec<String>,
    policy: EventsPolicy,
    min_level: Level,
    filters: Filters,
    enabled: bool,
) -> AppResult<subscription::Model> {
    let Filters {
        payload_filter,
        filter,
    } = filters;
    validate::event_type_patterns(&event_types)?;
    if let Some(f) = &payload_filter {
        check_filter(f)?;
    }
    if let Some(f) = &filter {
        check_jq_filter(f)?;
    }
    let t = now();
    Ok(subscription::Model {
        id: new_id(),
        tenant_id: p.tenant.clone(),
        destination_id,
        event_types: serde_json::to_string(&event_types)
            .map_err(|e| AppError::internal("encode event types", e))?,
        events_policy: policy.as_str().into(),
        min_level: min_level.as_str().into(),
        payload_filter: payload_filter.map(|f| f.to_string()),
        filter,
        enabled,
        created_at: t,
        updated_at: t,
    })
}

pub async fn list_for_destination<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    destination_id: Uuid,
) -> AppResult<Vec<subscription::Model>> {
    Ok(subscription::Entity::find()
        .filter(subscription::Column::TenantId.eq(&p.tenant))
        .filter(subscription::Column::DestinationId.eq(destination_id))
        .order_by_asc(subscription::Column::Id)
        .all(db)
        .await?)
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    destination_id: Uuid,
    patch: SubscriptionPatch,
) -> AppResult<subscription::Model> {
    // Also proves the destination is the caller's and alive.
    destinations::get_required(db, p, destination_id).await?;
    let existing = subscription::Entity::find()
        .filter(subscription::Column::DestinationId.eq(destination_id))
        .count(db)
        .await?;
    if existing >= MAX_PER_DESTINATION {
        return Err(AppError::bad_input(
            "destinationId",
            format!("a destination has at most {MAX_PER_DESTINATION} subscriptions"),
        ));
    }
    let m = new_model(
        p,
        destination_id,
        patch
            .event_types
            .ok_or_else(|| AppError::bad_input("eventTypes", "is required"))?,
        patch.events_policy.unwrap_or(EventsPolicy::Include),
        patch.min_level.unwrap_or(Level::Debug),
        Filters {
            payload_filter: patch.payload_filter.flatten(),
            filter: patch.filter.flatten(),
        },
        patch.enabled.unwrap_or(true),
    )?;
    Ok(subscription::ActiveModel::from(m).insert(db).await?)
}

async fn get_required<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    id: Uuid,
) -> AppResult<subscription::Model> {
    // A subscription of a deleted destination is as gone as its destination.
    let found = subscription::Entity::find_by_id(id)
        .filter(subscription::Column::TenantId.eq(&p.tenant))
        .find_also_related(destination::Entity)
        .one(db)
        .await?;
    match found {
        Some((s, Some(d))) if d.deleted_at.is_none() => Ok(s),
        _ => Err(AppError::NotFound("event subscription")),
    }
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    id: Uuid,
    patch: SubscriptionPatch,
) -> AppResult<subscription::Model> {
    let mut m = get_required(db, p, id).await?;
    if let Some(types) = patch.event_types {
        validate::event_type_patterns(&types)?;
        m.event_types = serde_json::to_string(&types)
            .map_err(|e| AppError::internal("encode event types", e))?;
    }
    if let Some(v) = patch.events_policy {
        m.events_policy = v.as_str().into();
    }
    if let Some(v) = patch.min_level {
        m.min_level = v.as_str().into();
    }
    if let Some(f) = patch.payload_filter {
        if let Some(f) = &f {
            check_filter(f)?;
        }
        m.payload_filter = f.map(|f| f.to_string());
    }
    if let Some(f) = patch.filter {
        if let Some(f) = &f {
            check_jq_filter(f)?;
        }
        m.filter = f;
    }
    if let Some(v) = patch.enabled {
        m.enabled = v;
    }
    m.updated_at = now();
    let am = subscription::ActiveModel::from(m).reset_all();
    Ok(am.update(db).await?)
}

pub async fn delete<C: ConnectionTrait>(db: &C, p: &Principal, id: Uuid) -> AppResult<Uuid> {
    get_required(db, p, id).await?;
    subscription::Entity::delete_many()
        .filter(subscription::Column::Id.eq(id))
        .filter(subscription::Column::TenantId.eq(&p.tenant))
        .exec(db)
        .await?;
    Ok(id)
}

/// Every enabled subscription of the tenant's live, enabled destinations (the matcher's
/// input), with those destinations' rows (what the publisher hands to the dispatcher).
pub async fn active_rules<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
) -> AppResult<(Vec<Rule>, HashMap<Uuid, Arc<destination::Model>>)> {
    let rows = subscription::Entity::find()
        .find_also_related(destination::Entity)
        .filter(subscription::Column::TenantId.eq(tenant))
        .filter(subscription::Column::Enabled.eq(true))
        .filter(destination::Column::Enabled.eq(true))
        .filter(destination::Column::DeletedAt.is_null())
        .all(db)
        .await?;
    let mut dests = HashMap::new();
    let mut rules = Vec::with_capacity(rows.len());
    for (s, d) in rows {
        rules.push(Rule::from_model(&s));
        if let Some(d) = d {
            dests.entry(d.id).or_insert_with(|| Arc::new(d));
        }
    }
    Ok((rules, dests))
}
