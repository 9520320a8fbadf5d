//! Input types and their translation into service patches. Validation itself lives in the
//! service layer, so every entry point shares it.

use async_graphql::{InputObject, MaybeUndefined, OneofObject};
use chrono::{DateTime, Utc};

use super::types::{DestinationStatus, EventsPolicy, Level, PayloadFormat, SigningScheme};
use crate::service::destinations::{
    DestinationFilter as ServiceFilter, DestinationPatch, Header, HttpAuth, InitialSubscription,
};
use crate::service::subscriptions::SubscriptionPatch;

#[derive(InputObject, Clone)]
pub struct HeaderInput {
    pub name: String,
    pub value: String,
}

#[derive(InputObject, Clone)]
pub struct BasicAuthInput {
    pub username: String,
    pub password: String,
}

#[derive(InputObject, Clone)]
pub struct BearerAuthInput {
    pub token: String,
}

/// Exactly one of `basic` or `bearer`.
#[derive(OneofObject, Clone)]
pub enum HttpAuthInput {
    Basic(BasicAuthInput),
    Bearer(BearerAuthInput),
}

impl From<HttpAuthInput> for HttpAuth {
    fn from(v: HttpAuthInput) -> Self {
        match v {
            HttpAuthInput::Basic(b) => HttpAuth::Basic {
                username: b.username,
                password: b.password,
            },
            HttpAuthInput::Bearer(b) => HttpAuth::Bearer { token: b.token },
        }
    }
}

#[derive(InputObject)]
pub struct CreateDestinationInput {
    /// 1–128 characters, unique among the tenant's destinations.
    pub name: String,
    /// http(s) URL, at most 2 048 characters.
    pub url: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    #[graphql(default = true)]
    pub enabled: bool,
    /// Creates the first subscription with these patterns (default: every event, `*`).
    pub event_types: Option<Vec<String>>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
    pub signing_scheme: Option<SigningScheme>,
    pub signature_header: Option<String>,
    /// Generated when absent. STANDARD_WEBHOOKS needs `whsec_<base64>`.
    pub signing_secret: Option<String>,
    pub http_auth: Option<HttpAuthInput>,
    pub headers: Option<Vec<HeaderInput>>,
    /// 1 000–60 000, default 10 000.
    pub timeout_ms: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    /// jq program over `{id type level createdAt data}`; its first output is the request
    /// body (signed as sent). Needs `batchSize` 1.
    pub transform: Option<String>,
    pub batch_size: Option<i32>,
    pub batch_window_ms: Option<i32>,
    pub rate_limit_per_sec: Option<i32>,
    pub max_in_flight: Option<i32>,
    pub ordered: Option<bool>,
    /// Seconds before each retry, e.g. `[5, 30, 120]`.
    pub retry_schedule: Option<Vec<i32>>,
    pub max_attempts: Option<i32>,
    pub discard_after_secs: Option<i32>,
    pub lossy: Option<bool>,
    pub tls_verify: Option<bool>,
}

impl CreateDestinationInput {
    pub fn into_parts(self) -> (DestinationPatch, InitialSubscription) {
        let patch = DestinationPatch {
            name: Some(self.name),
            url: Some(self.url),
            display_name: self.display_name.map(Some),
            description: self.description.map(Some),
            enabled: Some(self.enabled),
            signing_scheme: self.signing_scheme.map(Into::into),
            signature_header: self.signature_header.map(Some),
            signing_secret: self.signing_secret,
            http_auth: self.http_auth.map(|a| Some(a.into())),
            headers: self.headers.map(headers),
            timeout_ms: self.timeout_ms,
            payload_format: self.payload_format.map(Into::into),
            transform: self.transform.map(Some),
            batch_size: self.batch_size,
            batch_window_ms: self.batch_window_ms,
            rate_limit_per_sec: self.rate_limit_per_sec.map(Some),
            max_in_flight: self.max_in_flight,
            ordered: self.ordered,
            retry_schedule: self.retry_schedule,
            max_attempts: self.max_attempts,
            discard_after_secs: self.discard_after_secs.map(|v| Some(v.into())),
            lossy: self.lossy,
            tls_verify: self.tls_verify,
        };
        let first = InitialSubscription {
            event_types: self.event_types,
            events_policy: self.events_policy.map(Into::into),
            min_level: self.min_level.map(Into::into),
        };
        (patch, first)
    }
}

/// Every field optional; `null` clears the nullable ones.
#[derive(InputObject, Default)]
pub struct UpdateDestinationInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub display_name: MaybeUndefined<String>,
    pub description: MaybeUndefined<String>,
    pub enabled: Option<bool>,
    pub signing_scheme: Option<SigningScheme>,
    pub signature_header: MaybeUndefined<String>,
    pub signing_secret: Option<String>,
    /// `null` removes authentication.
    pub http_auth: MaybeUndefined<HttpAuthInput>,
    pub headers: Option<Vec<HeaderInput>>,
    pub timeout_ms: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    /// jq program whose first output is the body; `null` removes it.
    pub transform: MaybeUndefined<String>,
    pub batch_size: Option<i32>,
    pub batch_window_ms: Option<i32>,
    pub rate_limit_per_sec: MaybeUndefined<i32>,
    pub max_in_flight: Option<i32>,
    pub ordered: Option<bool>,
    pub retry_schedule: Option<Vec<i32>>,
    pub max_attempts: Option<i32>,
    pub discard_after_secs: MaybeUndefined<i32>,
    pub lossy: Option<bool>,
    pub tls_verify: Option<bool>,
    /// When given and stale, the update fails with CONFLICT and changes nothing.
    pub expected_version: Option<i32>,
}

fn maybe<T, U>(v: MaybeUndefined<T>, f: impl FnOnce(T) -> U) -> Option<Option<U>> {
    match v {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(f(v))),
    }
}

fn headers(v: Vec<HeaderInput>) -> Vec<Header> {
    v.into_iter()
        .map(|h| Header {
            name: h.name,
            value: h.value,
        })
        .collect()
}

impl UpdateDestinationInput {
    pub fn into_patch(self) -> (DestinationPatch, Option<i32>) {
        let patch = DestinationPatch {
            name: self.name,
            url: self.url,
            display_name: maybe(self.display_name, |v| v),
            description: maybe(self.description, |v| v),
            enabled: self.enabled,
            signing_scheme: self.signing_scheme.map(Into::into),
            signature_header: maybe(self.signature_header, |v| v),
            signing_secret: self.signing_secret,
            http_auth: maybe(self.http_auth, Into::into),
            headers: self.headers.map(headers),
            timeout_ms: self.timeout_ms,
            payload_format: self.payload_format.map(Into::into),
            transform: maybe(self.transform, |v| v),
            batch_size: self.batch_size,
            batch_window_ms: self.batch_window_ms,
            rate_limit_per_sec: maybe(self.rate_limit_per_sec, |v| v),
            max_in_flight: self.max_in_flight,
            ordered: self.ordered,
            retry_schedule: self.retry_schedule,
            max_attempts: self.max_attempts,
            discard_after_secs: maybe(self.discard_after_secs, i64::from),
            lossy: self.lossy,
            tls_verify: self.tls_verify,
        };
        (patch, self.expected_version)
    }
}

#[derive(InputObject, Default)]
pub struct DestinationFilter {
    pub enabled: Option<bool>,
    pub status: Option<DestinationStatus>,
    /// Case-sensitive substring of the name.
    pub name_contains: Option<String>,
    /// Created at or after (the seed APIs' `initialDate`).
    pub created_since: Option<DateTime<Utc>>,
    /// Created before (the seed APIs' `finalDate`).
    pub created_until: Option<DateTime<Utc>>,
}

impl From<DestinationFilter> for ServiceFilter {
    fn from(f: DestinationFilter) -> Self {
        ServiceFilter {
            enabled: f.enabled,
            status: f.status.map(Into::into),
            name_contains: f.name_contains,
            created_since: f.created_since,
            created_until: f.created_until,
        }
    }
}

#[derive(InputObject)]
pub struct CreateEventSubscriptionInput {
    pub destination_id: async_graphql::ID,
    pub event_types: Vec<String>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
    pub payload_filter: Option<async_graphql::Json<serde_json::Value>>,
    /// jq program over `{id type level createdAt data}`; the event is delivered only when
    /// its first output is `true`.
    pub filter: Option<String>,
    pub enabled: Option<bool>,
}

impl CreateEventSubscriptionInput {
    pub fn patch(self) -> SubscriptionPatch {
        SubscriptionPatch {
            event_types: Some(self.event_types),
            events_policy: self.events_policy.map(Into::into),
            min_level: self.min_level.map(Into::into),
            payload_filter: self.payload_filter.map(|j| Some(j.0)),
            filter: self.filter.map(Some),
            enabled: self.enabled,
        }
    }
}

#[derive(InputObject)]
pub struct UpdateEventSubscriptionInput {
    pub event_types: Option<Vec<String>>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
    pub payload_filter: MaybeUndefined<async_graphql::Json<serde_json::Value>>,
    /// jq filter; `null` removes it.
    pub filter: MaybeUndefined<String>,
    pub enabled: Option<bool>,
}

impl From<UpdateEventSubscriptionInput> for SubscriptionPatch {
    fn from(v: UpdateEventSubscriptionInput) -> Self {
        SubscriptionPatch {
            event_types: v.event_types,
            events_policy: v.events_policy.map(Into::into),
            min_level: v.min_level.map(Into::into),
            payload_filter: maybe(v.payload_filter, |j| j.0),
            filter: maybe(v.filter, |f| f),
            enabled: v.enabled,
        }
    }
}

#[derive(InputObject, Default)]
pub struct EventFilter {
    #[graphql(name = "type")]
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl From<EventFilter> for crate::service::events::EventFilter {
    fn from(f: EventFilter) -> Self {
        Self {
            event_type: f.event_type,
            since: f.since,
            until: f.until,
        }
    }
}

#[derive(InputObject, Default)]
pub struct DeliveryFilter {
    pub destination_id: Option<async_graphql::ID>,
    pub event_id: Option<async_graphql::ID>,
    /// Any of these statuses.
    pub status: Option<Vec<super::delivery_types::DeliveryStatus>>,
    pub event_type: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

impl DeliveryFilter {
    pub fn into_service(
        self,
    ) -> Result<crate::service::deliveries::DeliveryFilter, crate::error::AppError> {
        Ok(crate::service::deliveries::DeliveryFilter {
            destination_id: self
                .destination_id
                .map(|id| super::parse_id("destinationId", &id))
                .transpose()?,
            event_id: self
                .event_id
                .map(|id| super::parse_id("eventId", &id))
                .transpose()?,
            status: self
                .status
                .map(|v| v.into_iter().map(|s| s.as_str().to_string()).collect()),
            event_type: self.event_type,
            since: self.since,
            until: self.until,
        })
    }
}

#[derive(InputObject)]
pub struct PublishEventInput {
    /// Dot-separated, e.g. `user.created`.
    #[graphql(name = "type")]
    pub event_type: String,
    /// Any JSON; at most 256 KiB serialized (configurable).
    pub payload: async_graphql::Json<serde_json::Value>,
    #[graphql(default_with = "Level::Info")]
    pub level: Level,
    /// A second publish with the same key returns the first event and creates nothing.
    pub idempotency_key: Option<String>,
}
