//! Destinations: create, update (optimistic concurrency), soft delete, enable/disable, secret
//! rotation, listing. Every function is tenant-scoped.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entity::{delivery, destination, subscription};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, Select, SqlErr, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::matching::{EventsPolicy, Level};
use super::page::{Direction, Page, PageRequest, paginate};
use super::validate::{self, FieldError};
use super::{new_id, now, subscriptions};
use crate::auth::Principal;
use crate::crypto::Cipher;
use crate::dispatch::circuit::Health;
use crate::dispatch::payload::PayloadFormat;
use crate::dispatch::retry;
use crate::dispatch::signing::{self, SigningScheme};
use crate::error::{AppError, AppResult};

pub const DEFAULT_TIMEOUT_MS: i32 = 10_000;
pub const DEFAULT_MAX_IN_FLIGHT: i32 = 32;
pub const DEFAULT_ROTATION_GRACE_SECS: i64 = 24 * 3600;
pub const MAX_ROTATION_GRACE_SECS: i64 = 7 * 24 * 3600;

/// Credentials the destination's receiver expects. Never returned by the API, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            HttpAuth::Bearer { .. } => f.write_str("Bearer(***)"),
        }
    }
}

impl HttpAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpAuth::Basic { .. } => "BASIC",
            HttpAuth::Bearer { .. } => "BEARER",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Every destination setting, each optional: creation applies it over the defaults, an update
/// over the stored row. One validation path for both.
#[derive(Clone, Debug, Default)]
pub struct DestinationPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub display_name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub signing_scheme: Option<SigningScheme>,
    pub signature_header: Option<Option<String>>,
    pub signing_secret: Option<String>,
    /// `Some(None)` removes authentication.
    pub http_auth: Option<Option<HttpAuth>>,
    pub headers: Option<Vec<Header>>,
    pub timeout_ms: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    pub batch_size: Option<i32>,
    pub batch_window_ms: Option<i32>,
    pub rate_limit_per_sec: Option<Option<i32>>,
    pub max_in_flight: Option<i32>,
    pub ordered: Option<bool>,
    pub retry_schedule: Option<Vec<i32>>,
    pub max_attempts: Option<i32>,
    pub discard_after_secs: Option<Option<i64>>,
    pub lossy: Option<bool>,
    pub tls_verify: Option<bool>,
}

/// The first subscription, created inline with the destination.
#[derive(Clone, Debug, Default)]
pub struct InitialSubscription {
    pub event_types: Option<Vec<String>>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
}

#[derive(Clone, Debug, Default)]
pub struct DestinationFilter {
    pub enabled: Option<bool>,
    pub status: Option<Health>,
    pub name_contains: Option<String>,
    pub created_since: Option<DateTime<Utc>>,
    pub created_until: Option<DateTime<Utc>>,
}

/// Decoded JSON columns of a destination row.
pub fn headers_of(m: &destination::Model) -> Vec<Header> {
    serde_json::from_str(&m.headers).unwrap_or_default()
}

pub fn http_auth_of(m: &destination::Model) -> Option<HttpAuth> {
    m.http_auth
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

pub fn retry_schedule_of(m: &destination::Model) -> Vec<u32> {
    serde_json::from_str(&m.retry_schedule).unwrap_or_else(|_| retry::DEFAULT_SCHEDULE.to_vec())
}

/// Opens the sealed columns in place (signing secrets, HTTP auth).
pub fn unseal(m: &mut destination::Model, c: &Cipher) -> AppResult<()> {
    let open = |v: &str| {
        c.open(v)
            .map_err(|e| AppError::internal("open destination secret", e))
    };
    m.signing_secret = open(&m.signing_secret)?;
    if let Some(v) = &m.previous_secret {
        m.previous_secret = Some(open(v)?);
    }
    if let Some(v) = &m.http_auth {
        m.http_auth = Some(open(v)?);
    }
    Ok(())
}

/// Seals the secret columns for storage.
pub fn seal(m: &mut destination::Model, c: &Cipher) {
    m.signing_secret = c.seal(&m.signing_secret);
    m.previous_secret = m.previous_secret.as_deref().map(|v| c.seal(v));
    m.http_auth = m.http_auth.as_deref().map(|v| c.seal(v));
}

/// Re-seals, under the current key, every destination row sealed with an older key (or not
/// at all). Runs at start-up; touches neither `version` nor `updated_at`.
pub async fn reseal_all(db: &DatabaseConnection, c: &Cipher) -> AppResult<u64> {
    let mut done = 0;
    let rows = destination::Entity::find().all(db).await?;
    for mut m in rows {
        let stale = c.needs_reseal(&m.signing_secret)
            || m.previous_secret
                .as_deref()
                .is_some_and(|v| c.needs_reseal(v))
            || m.http_auth.as_deref().is_some_and(|v| c.needs_reseal(v));
        if !stale {
            continue;
        }
        unseal(&mut m, c)?;
        seal(&mut m, c);
        destination::Entity::update_many()
            .col_expr(
                destination::Column::SigningSecret,
                Expr::value(m.signing_secret),
            )
            .col_expr(
                destination::Column::PreviousSecret,
                Expr::value(m.previous_secret),
            )
            .col_expr(destination::Column::HttpAuth, Expr::value(m.http_auth))
            .filter(destination::Column::Id.eq(m.id))
            .exec(db)
            .await?;
        done += 1;
    }
    Ok(done)
}

fn defaults(p: &Principal, name: String, url: String) -> destination::Model {
    let t = now();
    destination::Model {
        id: new_id(),
        tenant_id: p.tenant.clone(),
        name,
        display_name: None,
        description: None,
        url,
        enabled: true,
        status: Health::Active.as_str().to_string(),
        signing_scheme: SigningScheme::StandardWebhooks.as_str().to_string(),
        signature_header: None,
        signing_secret: String::new(),
        previous_secret: None,
        previous_secret_expires_at: None,
        http_auth: None,
        headers: "[]".into(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        payload_format: PayloadFormat::Envelope.as_str().to_string(),
        batch_size: 1,
        batch_window_ms: 0,
        rate_limit_per_sec: None,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        ordered: false,
        retry_schedule: json(&retry::DEFAULT_SCHEDULE),
        max_attempts: retry::DEFAULT_MAX_ATTEMPTS as i32,
        discard_after_secs: None,
        lossy: false,
        tls_verify: true,
        consecutive_failures: 0,
        last_success_at: None,
        last_failure_at: None,
        last_failed_status_code: None,
        last_failed_reason: None,
        next_attempt_at: None,
        version: 1,
        created_at: t,
        updated_at: t,
        updated_by: p.subject.clone(),
        deleted_at: None,
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Validates every present field of `patch` and writes it into `m`. Secrets are checked
/// against the scheme that will be in force after the patch.
fn apply(m: &mut destination::Model, patch: DestinationPatch) -> Result<(), FieldError> {
    if let Some(name) = patch.name {
        validate::name(&name)?;
        m.name = name;
    }
    if let Some(url) = patch.url {
        validate::url(&url)?;
        m.url = url;
    }
    if let Some(v) = patch.display_name {
        validate::optional_text("displayName", v.as_deref(), validate::MAX_DISPLAY_NAME_LEN)?;
        m.display_name = v;
    }
    if let Some(v) = patch.description {
        validate::optional_text("description", v.as_deref(), validate::MAX_DESCRIPTION_LEN)?;
        m.description = v;
    }
    if let Some(v) = patch.enabled {
        m.enabled = v;
        m.status = if v {
            Health::Active.as_str().into()
        } else {
            Health::Disabled.as_str().into()
        };
    }
    let scheme_changed = patch
        .signing_scheme
        .is_some_and(|s| s.as_str() != m.signing_scheme);
    if let Some(s) = patch.signing_scheme {
        m.signing_scheme = s.as_str().into();
    }
    if let Some(h) = patch.signature_header {
        if let Some(h) = &h {
            validate::signature_header(h)?;
        }
        m.signature_header = h;
    }
    let scheme = SigningScheme::parse(&m.signing_scheme).unwrap_or(SigningScheme::StandardWebhooks);
    match patch.signing_secret {
        Some(secret) => {
            signing::validate_secret(scheme, &secret).map_err(|message| FieldError {
                field: "signingSecret",
                message,
            })?;
            m.signing_secret = secret;
        }
        None if m.signing_secret.is_empty() => m.signing_secret = signing::generate_secret(),
        None if scheme_changed => {
            // A secret made for one scheme may be malformed for another: Standard Webhooks
            // needs a `whsec_` key.
            signing::validate_secret(scheme, &m.signing_secret).map_err(|message| FieldError {
                field: "signingSecret",
                message: format!("the current secret does not suit the new scheme: {message}"),
            })?;
        }
        None => {}
    }
    if let Some(auth) = patch.http_auth {
        match &auth {
            Some(HttpAuth::Basic { username, password }) => {
                validate::basic_auth(username, password)?
            }
            Some(HttpAuth::Bearer { token }) => validate::bearer_token(token)?,
            None => {}
        }
        m.http_auth = auth.as_ref().map(json);
    }
    if let Some(headers) = patch.headers {
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        validate::headers(&pairs)?;
        m.headers = json(&headers);
    }
    if let Some(v) = patch.timeout_ms {
        validate::timeout_ms(v)?;
        m.timeout_ms = v;
    }
    if let Some(v) = patch.payload_format {
        m.payload_format = v.as_str().into();
    }
    if let Some(v) = patch.batch_size {
        validate::batch_size(v)?;
        m.batch_size = v;
    }
    if let Some(v) = patch.batch_window_ms {
        validate::batch_window_ms(v)?;
        m.batch_window_ms = v;
    }
    if let Some(v) = patch.rate_limit_per_sec {
        if let Some(v) = v {
            validate::rate_limit_per_sec(v)?;
        }
        m.rate_limit_per_sec = v;
    }
    if let Some(v) = patch.max_in_flight {
        validate::max_in_flight(v)?;
        m.max_in_flight = v;
    }
    if let Some(v) = patch.ordered {
        m.ordered = v;
    }
    if let Some(v) = patch.retry_schedule {
        m.retry_schedule = json(&validate::retry_schedule(&v)?);
    }
    if let Some(v) = patch.max_attempts {
        validate::max_attempts(v)?;
        m.max_attempts = v;
    }
    if let Some(v) = patch.discard_after_secs {
        if let Some(v) = v {
            validate::discard_after_secs(v)?;
        }
        m.discard_after_secs = v;
    }
    if let Some(v) = patch.lossy {
        m.lossy = v;
    }
    if let Some(v) = patch.tls_verify {
        m.tls_verify = v;
    }
    Ok(())
}

fn name_conflict(name: &str) -> impl Fn(DbErr) -> AppError + '_ {
    move |e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => {
            AppError::Conflict(format!("a destination named {name:?} already exists"))
        }
        _ => e.into(),
    }
}

fn live(tenant: &str) -> Select<destination::Entity> {
    destination::Entity::find()
        .filter(destination::Column::TenantId.eq(tenant))
        .filter(destination::Column::DeletedAt.is_null())
}

pub async fn get<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    id: Uuid,
) -> AppResult<Option<destination::Model>> {
    Ok(live(&p.tenant)
        .filter(destination::Column::Id.eq(id))
        .one(db)
        .await?)
}

pub async fn get_required<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    id: Uuid,
) -> AppResult<destination::Model> {
    get(db, p, id)
        .await?
        .ok_or(AppError::NotFound("destination"))
}

pub fn filtered(p: &Principal, f: &DestinationFilter) -> Select<destination::Entity> {
    let mut q = live(&p.tenant);
    if let Some(e) = f.enabled {
        q = q.filter(destination::Column::Enabled.eq(e));
    }
    if let Some(s) = f.status {
        q = q.filter(destination::Column::Status.eq(s.as_str()));
    }
    if let Some(n) = f.name_contains.as_deref().filter(|n| !n.is_empty()) {
        q = q.filter(destination::Column::Name.contains(n));
    }
    if let Some(t) = f.created_since {
        q = q.filter(destination::Column::CreatedAt.gte(t));
    }
    if let Some(t) = f.created_until {
        q = q.filter(destination::Column::CreatedAt.lt(t));
    }
    q
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    f: &DestinationFilter,
    page: &PageRequest,
    max_page: u64,
) -> AppResult<Page<destination::Model>> {
    paginate(
        db,
        filtered(p, f),
        destination::Column::Id,
        Direction::OldestFirst,
        page,
        max_page,
    )
    .await
}

pub async fn create(
    db: &DatabaseConnection,
    cipher: &Cipher,
    p: &Principal,
    mut patch: DestinationPatch,
    first: InitialSubscription,
    max_per_tenant: u64,
) -> AppResult<destination::Model> {
    let name = patch
        .name
        .take()
        .ok_or_else(|| AppError::bad_input("name", "is required"))?;
    let url = patch
        .url
        .take()
        .ok_or_else(|| AppError::bad_input("url", "is required"))?;
    validate::name(&name)?;
    validate::url(&url)?;
    let mut m = defaults(p, name, url);
    apply(&mut m, patch)?;
    seal(&mut m, cipher);
    // A destination created without event types hears every event, as in Svix.
    let sub = subscriptions::new_model(
        p,
        m.id,
        first.event_types.unwrap_or_else(|| vec!["*".into()]),
        first.events_policy.unwrap_or(EventsPolicy::Include),
        first.min_level.unwrap_or(Level::Debug),
        None,
        true,
    )?;
    let live_count = live(&p.tenant).count(db).await?;
    if live_count >= max_per_tenant {
        return Err(AppError::bad_input(
            "input",
            format!(
                "this tenant already has {live_count} destinations; the limit is {max_per_tenant} \
                 (HOOKLINE_MAX_DESTINATIONS_PER_TENANT)"
            ),
        ));
    }
    let txn = db.begin().await?;
    let name = m.name.clone();
    let am: destination::ActiveModel = m.into();
    let saved = am.insert(&txn).await.map_err(name_conflict(&name))?;
    subscription::ActiveModel::from(sub).insert(&txn).await?;
    txn.commit().await?;
    Ok(saved)
}

/// Writes `m` (already changed in memory) if nobody else changed the row in between.
async fn save_versioned<C: ConnectionTrait>(
    db: &C,
    p: &Principal,
    mut m: destination::Model,
    read_version: i32,
) -> AppResult<destination::Model> {
    m.version = read_version + 1;
    m.updated_at = now();
    m.updated_by = p.subject.clone();
    let name = m.name.clone();
    let id = m.id;
    let mut am = destination::ActiveModel::from(m.clone()).reset_all();
    am.id = sea_orm::ActiveValue::NotSet;
    am.tenant_id = sea_orm::ActiveValue::NotSet;
    am.created_at = sea_orm::ActiveValue::NotSet;
    let res = destination::Entity::update_many()
        .set(am)
        .filter(destination::Column::Id.eq(id))
        .filter(destination::Column::TenantId.eq(&p.tenant))
        .filter(destination::Column::DeletedAt.is_null())
        .filter(destination::Column::Version.eq(read_version))
        .exec(db)
        .await
        .map_err(name_conflict(&name))?;
    if res.rows_affected == 0 {
        return match get(db, p, id).await? {
            None => Err(AppError::NotFound("destination")),
            Some(_) => Err(AppError::Conflict(
                "the destination was changed concurrently; read it again and retry".into(),
            )),
        };
    }
    Ok(m)
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    cipher: &Cipher,
    p: &Principal,
    id: Uuid,
    patch: DestinationPatch,
    expected_version: Option<i32>,
) -> AppResult<destination::Model> {
    let mut m = get_required(db, p, id).await?;
    if let Some(v) = expected_version
        && v != m.version
    {
        return Err(AppError::Conflict(format!(
            "expectedVersion {v} is stale: the destination is at version {}",
            m.version
        )));
    }
    let was_enabled = m.enabled;
    let read_version = m.version;
    unseal(&mut m, cipher)?;
    apply(&mut m, patch)?;
    seal(&mut m, cipher);
    if m.enabled && !was_enabled {
        reset_health(&mut m);
    }
    let saved = save_versioned(db, p, m, read_version).await?;
    if saved.enabled && !was_enabled {
        unpark(db, saved.id).await?;
    }
    Ok(saved)
}

fn reset_health(m: &mut destination::Model) {
    m.status = Health::Active.as_str().into();
    m.consecutive_failures = 0;
    m.next_attempt_at = None;
}

/// Deliveries parked while the destination was disabled become due again.
async fn unpark<C: ConnectionTrait>(db: &C, destination_id: Uuid) -> AppResult<()> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now()))
        .filter(delivery::Column::DestinationId.eq(destination_id))
        .filter(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY"]))
        .filter(delivery::Column::NextAttemptAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

pub async fn set_enabled<C: ConnectionTrait>(
    db: &C,
    cipher: &Cipher,
    p: &Principal,
    id: Uuid,
    enabled: bool,
) -> AppResult<destination::Model> {
    update(
        db,
        cipher,
        p,
        id,
        DestinationPatch {
            enabled: Some(enabled),
            ..Default::default()
        },
        None,
    )
    .await
}

/// Soft delete: the row stays for history, disappears from reads, frees its name; its
/// unfinished deliveries are discarded.
pub async fn delete(db: &DatabaseConnection, p: &Principal, id: Uuid) -> AppResult<Uuid> {
    let txn = db.begin().await?;
    let t = now();
    let res = destination::Entity::update_many()
        .col_expr(destination::Column::DeletedAt, Expr::value(t))
        .col_expr(destination::Column::Enabled, Expr::value(false))
        .col_expr(destination::Column::UpdatedAt, Expr::value(t))
        .col_expr(
            destination::Column::UpdatedBy,
            Expr::value(p.subject.clone()),
        )
        .col_expr(
            destination::Column::Version,
            Expr::col(destination::Column::Version).add(1),
        )
        .filter(destination::Column::Id.eq(id))
        .filter(destination::Column::TenantId.eq(&p.tenant))
        .filter(destination::Column::DeletedAt.is_null())
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        return Err(AppError::NotFound("destination"));
    }
    delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value("DISCARDED"))
        .col_expr(
            delivery::Column::NextAttemptAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(delivery::Column::CompletedAt, Expr::value(t))
        .col_expr(
            delivery::Column::LastError,
            Expr::value("destination deleted"),
        )
        .filter(delivery::Column::DestinationId.eq(id))
        .filter(delivery::Column::Status.is_in(["PENDING", "AWAITING_RETRY", "DELIVERING"]))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(id)
}

/// New secret now; the previous one keeps signing (as a second signature) for the grace
/// period so receivers can switch without dropping a request.
pub async fn rotate_secret<C: ConnectionTrait>(
    db: &C,
    cipher: &Cipher,
    p: &Principal,
    id: Uuid,
    grace_seconds: Option<i64>,
    new_secret: Option<String>,
) -> AppResult<destination::Model> {
    let grace = grace_seconds.unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
    if !(0..=MAX_ROTATION_GRACE_SECS).contains(&grace) {
        return Err(AppError::bad_input(
            "graceSeconds",
            format!("must be between 0 and {MAX_ROTATION_GRACE_SECS}, got {grace}"),
        ));
    }
    let mut m = get_required(db, p, id).await?;
    unseal(&mut m, cipher)?;
    let scheme = SigningScheme::parse(&m.signing_scheme).unwrap_or(SigningScheme::StandardWebhooks);
    let secret = match new_secret {
        Some(s) => {
            signing::validate_secret(scheme, &s)
                .map_err(|message| AppError::bad_input("secret", message))?;
            s
        }
        None => signing::generate_secret(),
    };
    let read_version = m.version;
    let old = std::mem::replace(&mut m.signing_secret, secret);
    if grace > 0 {
        m.previous_secret = Some(old);
        m.previous_secret_expires_at = Some(now() + ChronoDuration::seconds(grace));
    } else {
        m.previous_secret = None;
        m.previous_secret_expires_at = None;
    }
    seal(&mut m, cipher);
    save_versioned(db, p, m, read_version).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;

    fn principal() -> Principal {
        Principal {
            tenant: "t".into(),
            subject: "s".into(),
            scopes: Scopes::parse("admin"),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn apply_validates_and_generates_secret() {
        let mut m = defaults(&principal(), "n".into(), "https://example.com/h".into());
        apply(&mut m, DestinationPatch::default()).unwrap();
        assert!(m.signing_secret.starts_with("whsec_"));
        let err = apply(
            &mut m,
            DestinationPatch {
                timeout_ms: Some(10),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.field, "timeoutMs");
        let err = apply(
            &mut m,
            DestinationPatch {
                signing_secret: Some("short".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.field, "signingSecret");
    }

    #[test]
    fn http_auth_debug_is_redacted() {
        let a = HttpAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let b = HttpAuth::Bearer {
            token: "tok-secret".into(),
        };
        assert!(!format!("{b:?}").contains("tok-secret"));
    }
}
