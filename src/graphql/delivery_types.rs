//! Output types of the delivery side: events, deliveries, attempts, statistics.

use async_graphql::{ComplexObject, Context, Enum, ID, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use std::sync::Arc;

use entity::{delivery, delivery_attempt, destination, event};

use super::connection::{self, Conn, CountQuery};
use super::loaders::{AttemptsKey, DeliveriesKey, Loaders, Parent, StatsKey};
use super::types::{Destination, Level};
use super::{principal, state};
use crate::error::AppError;
use crate::service::deliveries::{self, DeliveryFilter};
use crate::service::page::page_of;
use crate::service::stats::Totals;

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivering,
    Succeeded,
    AwaitingRetry,
    Failed,
    Discarded,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "PENDING",
            DeliveryStatus::Delivering => "DELIVERING",
            DeliveryStatus::Succeeded => "SUCCEEDED",
            DeliveryStatus::AwaitingRetry => "AWAITING_RETRY",
            DeliveryStatus::Failed => "FAILED",
            DeliveryStatus::Discarded => "DISCARDED",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "DELIVERING" => DeliveryStatus::Delivering,
            "SUCCEEDED" => DeliveryStatus::Succeeded,
            "AWAITING_RETRY" => DeliveryStatus::AwaitingRetry,
            "FAILED" => DeliveryStatus::Failed,
            "DISCARDED" => DeliveryStatus::Discarded,
            _ => DeliveryStatus::Pending,
        }
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    Failure,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttemptErrorKind {
    Timeout,
    Connect,
    Tls,
    Dns,
    HttpStatus,
    BlockedTarget,
    InvalidResponse,
    /// The destination's transform failed on this event; nothing was sent.
    Transform,
}

impl AttemptErrorKind {
    fn from_stored(s: &str) -> Option<Self> {
        Some(match s {
            "TIMEOUT" => Self::Timeout,
            "CONNECT" => Self::Connect,
            "TLS" => Self::Tls,
            "DNS" => Self::Dns,
            "HTTP_STATUS" => Self::HttpStatus,
            "BLOCKED_TARGET" => Self::BlockedTarget,
            "INVALID_RESPONSE" => Self::InvalidResponse,
            "TRANSFORM" => Self::Transform,
            _ => return None,
        })
    }
}

fn loaders<'a>(ctx: &Context<'a>) -> Result<&'a Loaders> {
    ctx.data::<Loaders>()
}

fn load_err(e: std::sync::Arc<sea_orm::DbErr>) -> AppError {
    AppError::internal("loader", e)
}

pub struct Event {
    row: event::Model,
    /// Set by `publishEvent`: whether the idempotency key matched an event already stored.
    replayed: Option<bool>,
    /// Only the id and type are shown: a replay answered to a caller without `read`, who
    /// must not learn what another publish with the same key stored.
    withheld: bool,
}

impl From<event::Model> for Event {
    fn from(row: event::Model) -> Self {
        Event {
            row,
            replayed: None,
            withheld: false,
        }
    }
}

impl Event {
    /// What `publishEvent` answers: the new event, or on a replay the stored one, whose data
    /// beyond id and type only a caller with `read` sees.
    pub fn published(row: event::Model, replayed: bool, caller_reads: bool) -> Self {
        Event {
            row,
            replayed: Some(replayed),
            withheld: replayed && !caller_reads,
        }
    }

    fn shown(&self) -> Option<&event::Model> {
        (!self.withheld).then_some(&self.row)
    }
}

#[Object]
impl Event {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.row.event_type
    }
    /// Null only in a `publishEvent` replay answered to a caller without `read`.
    async fn level(&self) -> Option<Level> {
        self.shown().map(|e| Level::from_stored(&e.level))
    }
    /// Null only in a `publishEvent` replay answered to a caller without `read`. Counts 100
    /// toward a query's cost: payloads are the largest values a query returns.
    #[graphql(complexity = "super::limits::PAYLOAD_COST")]
    async fn payload(&self) -> Option<Json<serde_json::Value>> {
        self.shown()
            .map(|e| Json(serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null)))
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.row.idempotency_key.as_deref()
    }
    /// Null only in a `publishEvent` replay answered to a caller without `read`.
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        self.shown().map(|e| e.created_at)
    }
    /// In `publishEvent`'s answer: true when the idempotency key matched an event already
    /// stored, so nothing new was written or delivered. Null elsewhere.
    async fn replayed(&self) -> Option<bool> {
        self.replayed
    }
    /// This event's deliveries, one per destination it reached.
    #[graphql(complexity = "super::limits::page_cost(first, None, child_complexity)")]
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Delivery>> {
        parent_deliveries(ctx, Parent::Event(self.row.id), None, first, after).await
    }
}

/// `Destination.deliveries` and `Event.deliveries`: the page comes from a DataLoader, so a
/// page of parents costs one statement for all their pages, not one per parent.
pub async fn parent_deliveries(
    ctx: &Context<'_>,
    parent: Parent,
    status: Option<Vec<DeliveryStatus>>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Conn<Delivery>> {
    let p = principal(ctx)?;
    p.require(crate::auth::Scope::Read)?;
    let st = state(ctx)?;
    let req = connection::page_request(first, after, None, None)?;
    let (n, backward) = req.size(st.config.limits.max_page_size)?;
    let status = status.map(|v| {
        let mut s: Vec<String> = v.into_iter().map(|s| s.as_str().to_string()).collect();
        s.sort_unstable();
        s.dedup();
        s
    });
    let key = DeliveriesKey {
        tenant: p.tenant.clone(),
        parent,
        status: status.clone(),
        page: (req.first, req.after),
    };
    let rows = loaders(ctx)?
        .deliveries_of
        .load_one(key)
        .await
        .map_err(load_err)?
        .unwrap_or_default();
    let (destination_id, event_id) = match parent {
        Parent::Destination(id) => (Some(id), None),
        Parent::Event(id) => (None, Some(id)),
    };
    let filter = DeliveryFilter {
        destination_id,
        event_id,
        status,
        ..Default::default()
    };
    Ok(connection::build(
        page_of(rows, n, backward, &req),
        CountQuery::Deliveries(deliveries::filtered(p, &filter)),
        |m| m.id,
        Delivery::from,
    ))
}

pub async fn delivery_connection(
    ctx: &Context<'_>,
    filter: DeliveryFilter,
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
) -> Result<Conn<Delivery>> {
    let p = principal(ctx)?;
    p.require(crate::auth::Scope::Read)?;
    let st = state(ctx)?;
    let req = connection::page_request(first, after, last, before)?;
    let page = deliveries::list(
        &st.db.read,
        p,
        &filter,
        &req,
        st.config.limits.max_page_size,
    )
    .await?;
    Ok(connection::build(
        page,
        CountQuery::Deliveries(deliveries::filtered(p, &filter)),
        |m| m.id,
        Delivery::from,
    ))
}

/// A delivery, with its event and destination when they were loaded along with it (a live
/// stream loads them for a whole batch of attempts at once; otherwise the loaders do).
pub struct Delivery(pub delivery::Model, pub Related);

/// Relations of a [`Delivery`] loaded with it.
#[derive(Clone, Default)]
pub struct Related {
    pub event: Option<Arc<event::Model>>,
    pub destination: Option<Arc<destination::Model>>,
}

impl From<delivery::Model> for Delivery {
    fn from(m: delivery::Model) -> Self {
        Delivery(m, Related::default())
    }
}

#[Object]
impl Delivery {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn status(&self) -> DeliveryStatus {
        DeliveryStatus::from_stored(&self.0.status)
    }
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }
    async fn destination_id(&self) -> ID {
        ID(self.0.destination_id.to_string())
    }
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn attempt_count(&self) -> i32 {
        self.0.attempt_count
    }
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.next_attempt_at
    }
    async fn last_status_code(&self) -> Option<i32> {
        self.0.last_status_code
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }
    async fn event(&self, ctx: &Context<'_>) -> Result<Option<Event>> {
        principal(ctx)?;
        if let Some(e) = &self.1.event {
            return Ok(Some(Event::from((**e).clone())));
        }
        let e = loaders(ctx)?
            .events
            .load_one(self.0.event_id)
            .await
            .map_err(load_err)?;
        Ok(e.map(Event::from))
    }
    /// The destination, even if it was deleted since (see its `deletedAt`).
    async fn destination(&self, ctx: &Context<'_>) -> Result<Option<Destination>> {
        principal(ctx)?;
        if let Some(d) = &self.1.destination {
            return Ok(Some(Destination((**d).clone())));
        }
        let d = loaders(ctx)?
            .destinations
            .load_one(self.0.destination_id)
            .await
            .map_err(load_err)?;
        Ok(d.map(Destination))
    }
    /// Oldest first: the first `first` attempts (default 10, at most the page size, 100);
    /// `attemptCount` says how many there are.
    #[graphql(
        complexity = "super::limits::rows_cost(first, super::limits::DEFAULT_ATTEMPTS, \
                            child_complexity)"
    )]
    async fn attempts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> Result<Vec<DeliveryAttempt>> {
        principal(ctx)?;
        let max = state(ctx)?.config.limits.max_page_size;
        let first = match first {
            None => super::limits::DEFAULT_ATTEMPTS as i32,
            Some(n) if n >= 0 && n as u64 <= max => n,
            Some(n) => {
                return Err(AppError::bad_input(
                    "first",
                    format!("must be between 0 and {max}, got {n}"),
                )
                .into());
            }
        };
        let a = loaders(ctx)?
            .attempts
            .load_one(AttemptsKey {
                delivery_id: self.0.id,
                first,
            })
            .await
            .map_err(load_err)?;
        Ok(a.unwrap_or_default()
            .into_iter()
            .map(DeliveryAttempt::from)
            .collect())
    }
}

/// An attempt, with its delivery when that was loaded along with it (see [`Delivery`]).
pub struct DeliveryAttempt(pub delivery_attempt::Model, pub Option<Delivery>);

impl From<delivery_attempt::Model> for DeliveryAttempt {
    fn from(m: delivery_attempt::Model) -> Self {
        DeliveryAttempt(m, None)
    }
}

#[Object]
impl DeliveryAttempt {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn delivery_id(&self) -> ID {
        ID(self.0.delivery_id.to_string())
    }
    async fn destination_id(&self) -> ID {
        ID(self.0.destination_id.to_string())
    }
    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn attempt_number(&self) -> i32 {
        self.0.attempt_number
    }
    /// Shared by the deliveries that travelled in one batched request.
    async fn request_id(&self) -> ID {
        ID(self.0.request_id.to_string())
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn duration_ms(&self) -> i32 {
        self.0.duration_ms
    }
    async fn response_status(&self) -> Option<i32> {
        self.0.response_status
    }
    /// The first 4 KiB of the response body.
    async fn response_body(&self) -> Option<&str> {
        self.0.response_body.as_deref()
    }
    async fn error_kind(&self) -> Option<AttemptErrorKind> {
        self.0
            .error_kind
            .as_deref()
            .and_then(AttemptErrorKind::from_stored)
    }
    async fn error_message(&self) -> Option<&str> {
        self.0.error_message.as_deref()
    }
    async fn outcome(&self) -> AttemptOutcome {
        if self.0.outcome == "SUCCESS" {
            AttemptOutcome::Success
        } else {
            AttemptOutcome::Failure
        }
    }
    /// When the delivery will be tried again, if it will.
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.next_attempt_at
    }
    async fn delivery(&self, ctx: &Context<'_>) -> Result<Option<Delivery>> {
        principal(ctx)?;
        if let Some(Delivery(d, r)) = &self.1 {
            return Ok(Some(Delivery(d.clone(), r.clone())));
        }
        let d = loaders(ctx)?
            .deliveries
            .load_one(self.0.delivery_id)
            .await
            .map_err(load_err)?;
        Ok(d.map(Delivery::from))
    }
}

/// A destination's delivery statistics over a window (minute resolution).
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct DestinationStats {
    pub total_attempts: i64,
    pub successful_attempts: i64,
    pub failed_attempts: i64,
    /// Between 0 and 1; null without attempts.
    pub success_rate: Option<f64>,
    pub average_response_time_ms: Option<f64>,
    pub p95_response_time_ms: Option<f64>,
    /// Deliveries not finished yet (pending, delivering, awaiting retry), whatever the window.
    pub pending_deliveries: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    pub p50: Option<f64>,
}

#[ComplexObject]
impl DestinationStats {
    async fn p50_response_time_ms(&self) -> Option<f64> {
        self.p50
    }
}

impl DestinationStats {
    pub fn from_service(s: crate::service::stats::DestinationStats) -> Self {
        let t = &s.totals;
        DestinationStats {
            total_attempts: t.attempts,
            successful_attempts: t.successes,
            failed_attempts: t.failures,
            success_rate: t.success_rate(),
            average_response_time_ms: t.average_ms(),
            p95_response_time_ms: t.hist.quantile(0.95),
            p50: t.hist.quantile(0.5),
            pending_deliveries: s.pending,
            last_success_at: s.last_success_at,
            last_failure_at: s.last_failure_at,
        }
    }
}

pub async fn stats_for(ctx: &Context<'_>, key: StatsKey) -> Result<DestinationStats> {
    let s = loaders(ctx)?
        .stats
        .load_one(key)
        .await
        .map_err(load_err)?
        .ok_or(AppError::NotFound("destination"))?;
    Ok(DestinationStats::from_service(s))
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum MetricsBucket {
    Minute,
    Hour,
    Day,
}

/// One time bucket of a chart.
#[derive(SimpleObject, Clone, Debug)]
pub struct MetricsPoint {
    pub start: DateTime<Utc>,
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    pub p50_latency_ms: Option<f64>,
    pub p95_latency_ms: Option<f64>,
}

impl MetricsPoint {
    pub fn new(start: DateTime<Utc>, t: &Totals) -> Self {
        MetricsPoint {
            start,
            attempts: t.attempts,
            successes: t.successes,
            failures: t.failures,
            p50_latency_ms: t.hist.quantile(0.5),
            p95_latency_ms: t.hist.quantile(0.95),
        }
    }
}
