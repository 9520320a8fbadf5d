//! Write side of the API. Each mutation returns the object it changed.

use async_graphql::{Context, ID, Object, Result};

use chrono::{DateTime, Utc};

use super::delivery_types::{Delivery, DeliveryAttempt, DeliveryStatus, Event};
use super::inputs::{
    CreateDestinationInput, CreateEventSubscriptionInput, PublishEventInput,
    UpdateDestinationInput, UpdateEventSubscriptionInput,
};
use super::types::{Destination, EventSubscription};
use super::{parse_id, principal, require, state};
use crate::auth::Scope;
use crate::error::AppError;
use crate::service::events::{self, NewEvent};
use crate::service::{deliveries, destinations, subscriptions};

pub struct Mutation;

#[Object]
impl Mutation {
    async fn create_destination(
        &self,
        ctx: &Context<'_>,
        input: CreateDestinationInput,
    ) -> Result<Destination> {
        let p = require(ctx, Scope::Write)?;
        let st = state(ctx)?;
        let (patch, first) = input.into_parts();
        jq_allowed(st, "transform", matches!(patch.transform, Some(Some(_))))?;
        Ok(Destination(
            destinations::create(
                &st.db.write,
                &st.cipher,
                p,
                patch,
                first,
                st.config.limits.max_destinations_per_tenant,
            )
            .await?,
        ))
    }

    async fn update_destination(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateDestinationInput,
    ) -> Result<Destination> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        let (patch, expected) = input.into_patch();
        jq_allowed(st, "transform", matches!(patch.transform, Some(Some(_))))?;
        let (d, switched) =
            destinations::update(&st.db.write, &st.cipher, p, id, patch, expected).await?;
        if switched {
            enabled_changed(st, &d).await;
        }
        Ok(Destination(d))
    }

    /// Soft delete: hidden from reads, name freed, pending deliveries discarded. Returns the id.
    async fn delete_destination(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let p = require(ctx, Scope::Write)?;
        let uuid = parse_id("id", &id)?;
        let st = state(ctx)?;
        destinations::delete(&st.db.write, p, uuid).await?;
        Ok(id)
    }

    async fn enable_destination(&self, ctx: &Context<'_>, id: ID) -> Result<Destination> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        let (d, switched) =
            destinations::set_enabled(&st.db.write, &st.cipher, p, id, true).await?;
        if switched {
            enabled_changed(st, &d).await;
        }
        Ok(Destination(d))
    }

    async fn disable_destination(&self, ctx: &Context<'_>, id: ID) -> Result<Destination> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        let (d, switched) =
            destinations::set_enabled(&st.db.write, &st.cipher, p, id, false).await?;
        if switched {
            enabled_changed(st, &d).await;
        }
        Ok(Destination(d))
    }

    /// A new signing secret (generated unless given). The previous one keeps signing, as a
    /// second signature, for `graceSeconds` (default 86 400, at most 7 days).
    async fn rotate_destination_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
        grace_seconds: Option<i32>,
        secret: Option<String>,
    ) -> Result<Destination> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        Ok(Destination(
            destinations::rotate_secret(
                &st.db.write,
                &st.cipher,
                p,
                id,
                grace_seconds.map(i64::from),
                secret,
            )
            .await?,
        ))
    }

    async fn create_event_subscription(
        &self,
        ctx: &Context<'_>,
        input: CreateEventSubscriptionInput,
    ) -> Result<EventSubscription> {
        let p = require(ctx, Scope::Write)?;
        let dest = parse_id("destinationId", &input.destination_id)?;
        let st = state(ctx)?;
        let patch = input.patch();
        jq_allowed(st, "filter", matches!(patch.filter, Some(Some(_))))?;
        Ok(EventSubscription(
            subscriptions::create(&st.db.write, p, dest, patch).await?,
        ))
    }

    async fn update_event_subscription(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateEventSubscriptionInput,
    ) -> Result<EventSubscription> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        let patch: subscriptions::SubscriptionPatch = input.into();
        jq_allowed(st, "filter", matches!(patch.filter, Some(Some(_))))?;
        Ok(EventSubscription(
            subscriptions::update(&st.db.write, p, id, patch).await?,
        ))
    }

    /// Returns the id.
    async fn delete_event_subscription(&self, ctx: &Context<'_>, id: ID) -> Result<ID> {
        let p = require(ctx, Scope::Write)?;
        let uuid = parse_id("id", &id)?;
        let st = state(ctx)?;
        subscriptions::delete(&st.db.write, p, uuid).await?;
        Ok(id)
    }

    /// Needs the `publish` scope. Answers only after the event and its deliveries are
    /// committed: an accepted event is never lost. A retry with a stored idempotency key
    /// writes nothing and answers the stored event with `replayed: true`; without the `read`
    /// scope, only its id and type (level, payload and createdAt are null).
    async fn publish_event(&self, ctx: &Context<'_>, input: PublishEventInput) -> Result<Event> {
        let p = principal(ctx)?;
        p.require(Scope::Publish)?;
        let st = state(ctx)?;
        let payload = serde_json::to_string(&input.payload.0)
            .map_err(|e| AppError::bad_input("payload", e.to_string()))?;
        let ev = NewEvent {
            event_type: input.event_type,
            level: input.level.into(),
            payload,
            idempotency_key: input.idempotency_key,
        };
        events::validate(&ev, st.config.limits.max_payload_bytes)?;
        if let Err(wait) = st.publish_limiter.check(&p.tenant) {
            return Err(AppError::RateLimited {
                message: format!(
                    "this tenant publishes faster than {}/s (HOOKLINE_PUBLISH_RATE_PER_TENANT); retry in {} ms",
                    st.config.limits.publish_rate_per_tenant,
                    wait.as_millis().max(1)
                ),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
            .into());
        }
        let published = st.publisher.publish(p, ev).await?;
        metrics::counter!("hookline_events_published_total").increment(1);
        Ok(Event::published(
            published.event,
            !published.created,
            p.scopes.has(Scope::Read),
        ))
    }

    /// Queues the delivery for an attempt now. An exhausted delivery gets one more try.
    async fn retry_delivery(&self, ctx: &Context<'_>, id: ID) -> Result<Delivery> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        let d = deliveries::retry(&st.db.write, p, id).await?;
        st.wake.notify_one();
        Ok(Delivery::from(d))
    }

    /// Re-queues the destination's finished deliveries created in `[since, until)` with one
    /// of `statuses` (default FAILED and DISCARDED). Returns how many.
    async fn replay_deliveries(
        &self,
        ctx: &Context<'_>,
        destination_id: ID,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        statuses: Option<Vec<DeliveryStatus>>,
    ) -> Result<u64> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("destinationId", &destination_id)?;
        let st = state(ctx)?;
        let statuses = statuses.map(|v| v.into_iter().map(|s| s.as_str().to_string()).collect());
        let n = deliveries::replay(&st.db.write, p, id, since, until, statuses).await?;
        if n > 0 {
            st.wake.notify_one();
        }
        Ok(n)
    }

    /// Sends a `hookline.test` event to this destination now and returns the attempt.
    async fn send_test_event(
        &self,
        ctx: &Context<'_>,
        destination_id: ID,
    ) -> Result<DeliveryAttempt> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("destinationId", &destination_id)?;
        let st = state(ctx)?;
        Ok(DeliveryAttempt::from(
            crate::dispatch::send_test_event(st, p, id).await?,
        ))
    }
}

/// Live subscribers hear about a user switching a destination on or off (an `enabled` given
/// but unchanged is no switch), as they do about health changes.
async fn enabled_changed(st: &crate::state::AppState, d: &entity::destination::Model) {
    let change = crate::live::StatusChange {
        tenant_id: d.tenant_id.clone(),
        destination_id: d.id,
        status: d.status.clone(),
        enabled: d.enabled,
        at: crate::service::now(),
    };
    crate::live::status_changed(&st.db.write, &st.live, &st.instance_id, change).await;
}

/// Refuses a jq program unless the operator enabled them (`HOOKLINE_JQ_PROGRAMS`): a jq run
/// cannot be interrupted, so a program that computes forever would stall what runs it.
fn jq_allowed(
    st: &crate::state::AppState,
    field: &'static str,
    given: bool,
) -> Result<(), AppError> {
    if given && !st.config.jq_programs {
        return Err(AppError::bad_input(
            field,
            "jq programs are disabled on this server (HOOKLINE_JQ_PROGRAMS=true enables them)",
        ));
    }
    Ok(())
}
