//! Destinations: create, update (optimistic concurrency), soft delete, enable/disable, secret
//! rotation, listing. Every function is tenant-scoped.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entity::{delivery, destination, subscription};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, Select, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use super::matching::{EventsPolicy, Level};
use super::page::{Direction, Page, PageRequest, paginate};
use super::validate;
use super::{now, subscriptions};
use crate::auth::Principal;
use crate::crypto::Cipher;
use crate::dispatch::circuit::Health;
use crate::dispatch::signing::{self, SigningScheme};
use crate::error::{AppError, AppResult};

pub use super::destination_secrets::*;
pub use super::destination_settings::*;
use super::destination_settings::{apply, defaults};
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
        subscriptions::Filters::default(),
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

/// The saved destination, and whether `enabled` changed (a user switched it on or off).
pub async fn update<C: ConnectionTrait>(
    db: &C,
    cipher: &Cipher,
    p: &Principal,
    id: Uuid,
    patch: DestinationPatch,
    expected_version: Option<i32>,
) -> AppResult<(destination::Model, bool)> {
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
    let switched = saved.enabled != was_enabled;
    Ok((saved, switched))
}

fn reset_health(m: &mut destination::Model) {
    m.status = Health::Active.as_str().into();
    m.consecutive_failures = 0;
    m.next_attempt_at = None;
}

/// Parked deliveries of the destination (while it was disabled, or its circuit open) become
/// due now. Returns how many.
pub(crate) async fn unpark<C: ConnectionTrait>(db: &C, destination_id: Uuid) -> AppResult<u64> {
    let mut stmts = super::parked::release(db.get_database_backend(), destination_id, now());
    let released = db.execute_raw(stmts.remove(0)).await?.rows_affected();
    for s in stmts {
        db.execute_raw(s).await?;
    }
    Ok(released)
}

pub async fn set_enabled<C: ConnectionTrait>(
    db: &C,
    cipher: &Cipher,
    p: &Principal,
    id: Uuid,
    enabled: bool,
) -> AppResult<(destination::Model, bool)> {
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
    // One statement per index that holds unfinished deliveries.
    let backend = txn.get_database_backend();
    for unfinished in super::deliveries::unfinished_of(backend, id) {
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
            .filter(unfinished)
            .exec(&txn)
            .await?;
    }
    if backend == sea_orm::DbBackend::Sqlite {
        txn.execute_raw(super::parked::tighten(id)).await?;
    }
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
