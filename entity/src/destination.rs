//! A tenant's webhook endpoint: target URL, signing, batching, retry policy and health state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "destination")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub display_name: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub url: String,
    pub enabled: bool,
    /// ACTIVE, AWAITING_RETRY, FAILING, RETRY_LIMIT_REACHED, DISABLED
    pub status: String,
    /// STANDARD_WEBHOOKS, HMAC_SHA256_HEX, HMAC_SHA256_BASE64
    pub signing_scheme: String,
    pub signature_header: Option<String>,
    pub signing_secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTimeUtc>,
    /// JSON text.
    #[sea_orm(column_type = "Text", nullable)]
    pub http_auth: Option<String>,
    /// JSON text: array of `{name, value}`.
    #[sea_orm(column_type = "Text")]
    pub headers: String,
    pub timeout_ms: i32,
    /// ENVELOPE, RAW
    pub payload_format: String,
    /// jq program over `{id type level createdAt data}`; its output is the request body.
    #[sea_orm(column_type = "Text", nullable)]
    pub transform: Option<String>,
    pub batch_size: i32,
    pub batch_window_ms: i32,
    pub rate_limit_per_sec: Option<i32>,
    pub max_in_flight: i32,
    pub ordered: bool,
    /// JSON text: array of seconds.
    #[sea_orm(column_type = "Text")]
    pub retry_schedule: String,
    pub max_attempts: i32,
    pub discard_after_secs: Option<i64>,
    pub lossy: bool,
    pub tls_verify: bool,
    pub consecutive_failures: i32,
    pub last_success_at: Option<DateTimeUtc>,
    pub last_failure_at: Option<DateTimeUtc>,
    pub last_failed_status_code: Option<i32>,
    pub last_failed_reason: Option<String>,
    /// Destination-level gate: circuit probe time / ordered head retry time.
    pub next_attempt_at: Option<DateTimeUtc>,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub updated_by: String,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::subscription::Entity")]
    Subscription,
    #[sea_orm(has_many = "super::delivery::Entity")]
    Delivery,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl Related<super::delivery::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Delivery.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
