//! Output types, written on purpose: each wraps an entity row and exposes chosen fields, so a
//! new column (a secret!) never reaches the API by accident.

use async_graphql::{Context, Enum, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{destination, subscription};

use super::{principal, state};
use crate::auth::Scope;
use crate::dispatch::circuit::Health;
use crate::dispatch::payload::PayloadFormat as DomainFormat;
use crate::dispatch::signing::SigningScheme as DomainScheme;
use crate::error::AppError;
use crate::service::destinations::{headers_of, http_auth_of, retry_schedule_of, unseal};
use crate::service::matching::{EventsPolicy as DomainPolicy, Level as DomainLevel};
use crate::service::subscriptions::patterns_of;

/// Maps a GraphQL enum to and from the domain enum (or stored string) of the same variants.
macro_rules! mirror_enum {
    ($(#[$meta:meta])* $name:ident <=> $domain:ident { $($v:ident $(= $n:literal)?),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[graphql(name = $n)])? $v),+ }
        impl From<$name> for $domain {
            fn from(v: $name) -> Self { match v { $($name::$v => $domain::$v),+ } }
        }
        impl From<$domain> for $name {
            fn from(v: $domain) -> Self { match v { $($domain::$v => $name::$v),+ } }
        }
        impl $name {
            /// Reads a stored value; unknown strings fall back to the first variant.
            #[allow(dead_code)]
            pub fn from_stored(s: &str) -> Self {
                $domain::parse(s).map(Into::into).unwrap_or(mirror_enum!(@first $($name::$v),+))
            }
        }
    };
    (@first $first:expr $(, $rest:expr)*) => { $first };
}

mirror_enum!(
    /// Health of a destination. `enabled` is the user's switch; this is what happened.
    DestinationStatus <=> Health { Active, AwaitingRetry, Failing, RetryLimitReached, Disabled }
);
mirror_enum!(SigningScheme <=> DomainScheme {
    StandardWebhooks,
    HmacSha256Hex = "HMAC_SHA256_HEX",
    HmacSha256Base64 = "HMAC_SHA256_BASE64",
});
mirror_enum!(PayloadFormat <=> DomainFormat { Envelope, Raw });
mirror_enum!(EventsPolicy <=> DomainPolicy { Include, Exclude });
mirror_enum!(Level <=> DomainLevel { Debug, Info, Warn, Error, Critical });

/// How the destination authenticates to its receiver. Credentials are write-only.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum HttpAuthKind {
    None,
    Basic,
    Bearer,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Header {
    pub name: String,
    /// Always null: header values often carry API keys, so like HTTP-auth credentials they
    /// are write-only (sealed at rest, sent only to the destination's origin).
    #[graphql(deprecation = "header values are write-only; this is always null")]
    pub value: Option<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Viewer {
    pub tenant: String,
    pub subject: String,
    pub scopes: Vec<String>,
}

/// What the last attempts did, as OpenMetadata reports it.
#[derive(SimpleObject, Clone, Debug)]
pub struct FailureDetails {
    pub consecutive_failures: i32,
    pub last_successful_at: Option<DateTime<Utc>>,
    pub last_failed_at: Option<DateTime<Utc>>,
    pub last_failed_status_code: Option<i32>,
    pub last_failed_reason: Option<String>,
    /// When the destination will next be tried (circuit probe or retry), if waiting.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

pub struct Destination(pub destination::Model);

#[Object]
impl Destination {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn display_name(&self) -> Option<&str> {
        self.0.display_name.as_deref()
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    async fn status(&self) -> DestinationStatus {
        DestinationStatus::from_stored(&self.0.status)
    }
    async fn signing_scheme(&self) -> SigningScheme {
        SigningScheme::from_stored(&self.0.signing_scheme)
    }
    /// The header carrying the signature for the HMAC schemes (their default when null).
    async fn signature_header(&self) -> Option<&str> {
        self.0.signature_header.as_deref()
    }
    /// Needs the `write` scope.
    async fn signing_secret(&self, ctx: &Context<'_>) -> Result<String> {
        principal(ctx)?.require(Scope::Write)?;
        Ok(state(ctx)?
            .cipher
            .open(&self.0.signing_secret)
            .map_err(|e| AppError::internal("open signing secret", e))?)
    }
    /// While a rotation's grace lasts, the previous secret also signs; this is when it stops.
    async fn previous_secret_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .previous_secret_expires_at
            .filter(|t| *t > crate::service::now())
    }
    async fn http_auth(&self, ctx: &Context<'_>) -> Result<HttpAuthKind> {
        let mut m = self.0.clone();
        unseal(&mut m, &state(ctx)?.cipher)?;
        Ok(match http_auth_of(&m).as_ref().map(|a| a.kind()) {
            Some("BASIC") => HttpAuthKind::Basic,
            Some("BEARER") => HttpAuthKind::Bearer,
            _ => HttpAuthKind::None,
        })
    }
    /// The extra request headers, by name.
    async fn headers(&self) -> Vec<Header> {
        headers_of(&self.0)
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: None,
            })
            .collect()
    }
    async fn timeout_ms(&self) -> i32 {
        self.0.timeout_ms
    }
    async fn payload_format(&self) -> PayloadFormat {
        PayloadFormat::from_stored(&self.0.payload_format)
    }
    /// jq program whose first output is the request body, if any.
    async fn transform(&self) -> Option<&str> {
        self.0.transform.as_deref()
    }
    async fn batch_size(&self) -> i32 {
        self.0.batch_size
    }
    async fn batch_window_ms(&self) -> i32 {
        self.0.batch_window_ms
    }
    async fn rate_limit_per_sec(&self) -> Option<i32> {
        self.0.rate_limit_per_sec
    }
    async fn max_in_flight(&self) -> i32 {
        self.0.max_in_flight
    }
    /// Strict FIFO: each delivery waits for the previous one to finish.
    async fn ordered(&self) -> bool {
        self.0.ordered
    }
    /// Seconds to wait before each retry.
    async fn retry_schedule(&self) -> Vec<i32> {
        retry_schedule_of(&self.0)
            .into_iter()
            .map(|s| s as i32)
            .collect()
    }
    async fn max_attempts(&self) -> i32 {
        self.0.max_attempts
    }
    async fn discard_after_secs(&self) -> Option<i32> {
        self.0.discard_after_secs.map(|v| v as i32)
    }
    async fn lossy(&self) -> bool {
        self.0.lossy
    }
    async fn tls_verify(&self) -> bool {
        self.0.tls_verify
    }
    async fn failure_details(&self) -> FailureDetails {
        FailureDetails {
            consecutive_failures: self.0.consecutive_failures,
            last_successful_at: self.0.last_success_at,
            last_failed_at: self.0.last_failure_at,
            last_failed_status_code: self.0.last_failed_status_code,
            last_failed_reason: self.0.last_failed_reason.clone(),
            next_attempt_at: self.0.next_attempt_at,
        }
    }
    async fn event_subscriptions(&self, ctx: &Context<'_>) -> Result<Vec<EventSubscription>> {
        principal(ctx)?;
        let loaders = ctx.data::<super::loaders::Loaders>()?;
        let subs = loaders
            .subscriptions
            .load_one(self.0.id)
            .await
            .map_err(|e| AppError::internal("load subscriptions", e))?
            .unwrap_or_default();
        Ok(subs.into_iter().map(EventSubscription).collect())
    }
    /// Attempts, success rate and latency over a window (default: all time), from per-minute
    /// rollups; `pendingDeliveries` is current.
    async fn stats(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<super::delivery_types::DestinationStats> {
        principal(ctx)?.require(Scope::Read)?;
        super::delivery_types::stats_for(
            ctx,
            super::loaders::StatsKey {
                destination_id: self.0.id,
                since,
                until,
            },
        )
        .await
    }
    /// This destination's deliveries, newest first.
    #[graphql(complexity = "super::limits::page_cost(first, None, child_complexity)")]
    async fn deliveries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<Vec<super::delivery_types::DeliveryStatus>>,
    ) -> Result<super::connection::Conn<super::delivery_types::Delivery>> {
        super::delivery_types::parent_deliveries(
            ctx,
            super::loaders::Parent::Destination(self.0.id),
            status,
            first,
            after,
        )
        .await
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The `sub` of the token that made the last change.
    async fn updated_by(&self) -> &str {
        &self.0.updated_by
    }
    async fn deleted_at(&self) -> Option<DateTime<Utc>> {
        self.0.deleted_at
    }
}

pub struct EventSubscription(pub subscription::Model);

#[Object]
impl EventSubscription {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn destination_id(&self) -> ID {
        ID(self.0.destination_id.to_string())
    }
    /// Exact names or patterns: `user.created`, `user.*`, `*`.
    async fn event_types(&self) -> Vec<String> {
        patterns_of(&self.0)
    }
    async fn events_policy(&self) -> EventsPolicy {
        EventsPolicy::from_stored(&self.0.events_policy)
    }
    async fn min_level(&self) -> Level {
        Level::from_stored(&self.0.min_level)
    }
    /// Dot-paths into the payload and the values they must equal.
    async fn payload_filter(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.0
            .payload_filter
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .map(async_graphql::Json)
    }
    /// jq program over `{id type level createdAt data}`; `true` delivers.
    async fn filter(&self) -> Option<&str> {
        self.0.filter.as_deref()
    }
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn destination(&self, ctx: &Context<'_>) -> Result<Option<Destination>> {
        let p = principal(ctx)?;
        let st = state(ctx)?;
        Ok(
            crate::service::destinations::get(&st.db.read, p, self.0.destination_id)
                .await?
                .map(Destination),
        )
    }
}
