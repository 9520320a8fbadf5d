//! Read side of the API.

use async_graphql::{Context, ID, Object, Result};

use chrono::{DateTime, Utc};

use super::connection::{self, Conn, CountQuery};
use super::delivery_types::{Delivery, Event, MetricsBucket, MetricsPoint, delivery_connection};
use super::inputs::{DeliveryFilter, DestinationFilter, EventFilter};
use super::preview::{DeliveryPreview, PreviewEventInput};
use super::types::{Destination, EventSubscription, Viewer};
use super::{parse_id, principal, require, state};
use crate::auth::Scope;
use crate::error::AppError;
use crate::service::stats::{self, Bucket};
use crate::service::{deliveries, destinations, events, subscriptions};

pub struct Query;

#[Object]
impl Query {
    /// Who the token says you are.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let p = principal(ctx)?;
        Ok(Viewer {
            tenant: p.tenant.clone(),
            subject: p.subject.clone(),
            scopes: p.scopes.names().into_iter().map(String::from).collect(),
        })
    }

    /// What the destination would do with this event: whether a subscription lets it
    /// through (and which, or why not) and the exact request (URL, headers with secrets
    /// masked, body after the transform, signature). Sends and stores nothing. Needs the
    /// `write` scope, since it shows the signed request.
    async fn preview_delivery(
        &self,
        ctx: &Context<'_>,
        destination_id: ID,
        event: PreviewEventInput,
    ) -> Result<DeliveryPreview> {
        let p = require(ctx, Scope::Write)?;
        let id = parse_id("destinationId", &destination_id)?;
        let st = state(ctx)?;
        let ev = event.into_event()?;
        Ok(crate::dispatch::preview_delivery(st, p, id, ev)
            .await?
            .into())
    }

    /// Null when no such destination exists in your tenant.
    async fn destination(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Destination>> {
        let p = require(ctx, Scope::Read)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        Ok(destinations::get(&st.db.read, p, id)
            .await?
            .map(Destination))
    }

    /// Oldest first. Page size at most 100.
    #[graphql(complexity = "super::limits::page_cost(first, last, child_complexity)")]
    async fn destinations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<DestinationFilter>,
    ) -> Result<Conn<Destination>> {
        let p = require(ctx, Scope::Read)?;
        let st = state(ctx)?;
        let req = connection::page_request(first, after, last, before)?;
        let filter = filter.unwrap_or_default().into();
        let page = destinations::list(
            &st.db.read,
            p,
            &filter,
            &req,
            st.config.limits.max_page_size,
        )
        .await?;
        Ok(connection::build(
            page,
            CountQuery::Destinations(destinations::filtered(p, &filter)),
            |m| m.id,
            Destination,
        ))
    }

    async fn event_subscriptions(
        &self,
        ctx: &Context<'_>,
        destination_id: ID,
    ) -> Result<Vec<EventSubscription>> {
        let p = require(ctx, Scope::Read)?;
        let id = parse_id("destinationId", &destination_id)?;
        let st = state(ctx)?;
        // An unknown or foreign destination has no subscriptions you can see.
        if destinations::get(&st.db.read, p, id).await?.is_none() {
            return Ok(vec![]);
        }
        Ok(subscriptions::list_for_destination(&st.db.read, p, id)
            .await?
            .into_iter()
            .map(EventSubscription)
            .collect())
    }

    /// Null when no such event exists in your tenant.
    async fn event(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Event>> {
        let p = require(ctx, Scope::Read)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        Ok(events::get(&st.db.read, p, id).await?.map(Event::from))
    }

    /// Newest first.
    #[graphql(complexity = "super::limits::page_cost(first, last, child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<EventFilter>,
    ) -> Result<Conn<Event>> {
        let p = require(ctx, Scope::Read)?;
        let st = state(ctx)?;
        let req = connection::page_request(first, after, last, before)?;
        let filter = filter.unwrap_or_default().into();
        let page = events::list(
            &st.db.read,
            p,
            &filter,
            &req,
            st.config.limits.max_page_size,
        )
        .await?;
        Ok(connection::build(
            page,
            CountQuery::Events(events::filtered(p, &filter)),
            |m| m.id,
            Event::from,
        ))
    }

    /// Null when no such delivery exists in your tenant.
    async fn delivery(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Delivery>> {
        let p = require(ctx, Scope::Read)?;
        let id = parse_id("id", &id)?;
        let st = state(ctx)?;
        Ok(deliveries::get(&st.db.read, p, id)
            .await?
            .map(Delivery::from))
    }

    /// Newest first.
    #[graphql(complexity = "super::limits::page_cost(first, last, child_complexity)")]
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<DeliveryFilter>,
    ) -> Result<Conn<Delivery>> {
        let filter = filter.unwrap_or_default().into_service()?;
        delivery_connection(ctx, filter, first, after, last, before).await
    }

    /// Attempts, successes, failures and latency percentiles per time bucket, for charts.
    async fn delivery_metrics(
        &self,
        ctx: &Context<'_>,
        destination_id: ID,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
        #[graphql(default_with = "MetricsBucket::Minute")] bucket: MetricsBucket,
    ) -> Result<Vec<MetricsPoint>> {
        let p = require(ctx, Scope::Read)?;
        let id = parse_id("destinationId", &destination_id)?;
        let st = state(ctx)?;
        destinations::get(&st.db.read, p, id)
            .await?
            .ok_or(AppError::NotFound("destination"))?;
        let bucket = match bucket {
            MetricsBucket::Minute => Bucket::Minute,
            MetricsBucket::Hour => Bucket::Hour,
            MetricsBucket::Day => Bucket::Day,
        };
        let until = until.unwrap_or_else(crate::service::now);
        let points = stats::metrics(&st.db.read, id, since, until, bucket).await?;
        Ok(points
            .iter()
            .map(|(t, totals)| MetricsPoint::new(*t, totals))
            .collect())
    }
}
