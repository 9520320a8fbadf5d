//! The publisher's rules: each tenant's subscriptions and destinations, kept between publish
//! groups, and how a kept copy is known to be current (`Hub::rules_generation` in-process,
//! the `rules_epoch` row on PostgreSQL).

use std::collections::HashMap;
use std::sync::Arc;

use entity::destination;
use sea_orm::{ConnectionTrait, DbBackend};
use uuid::Uuid;

use crate::dispatch::hub::Hub;
use crate::error::AppResult;
use crate::service::subscriptions::{Rule, active_rules};

/// A tenant's rules and destinations, and the PostgreSQL rules epoch they were read at.
pub(super) struct Routes {
    pub rules: Vec<Rule>,
    pub dests: HashMap<Uuid, Arc<destination::Model>>,
    pub epoch: i64,
}

/// Each tenant's rules, kept between groups and read again only when they may have changed.
///
/// Every change made through this instance bumps [`Hub::rules_generation`] once committed.
/// SQLite serves one instance, so that is all there is. PostgreSQL may be shared: a change
/// made elsewhere bumps the tenant's `rules_epoch` row (triggers, in the changing
/// transaction; see migration `m20261124_000003_rules_epoch`), and every group's insert
/// checks, in the same statement, that the epochs its rules were read at are still current —
/// if one is not, nothing is written and the group is planned again from fresh rules. So an
/// event is never routed by rules older than the snapshot of the statement that commits it,
/// as when the rules were read for every group, without that read.
#[derive(Default)]
pub(super) struct RulesCache {
    tenants: HashMap<String, (u64, Arc<Routes>)>,
}

impl RulesCache {
    /// Tenants kept at most; past that the cache starts over.
    const TENANTS: usize = 1024;

    /// Forgets a tenant's rules: the next group reads them again.
    pub fn forget(&mut self, tenant: &str) {
        self.tenants.remove(tenant);
    }
}

/// The tenant's rules: from the cache when no rule changed since they were read.
pub(super) async fn routes_of(
    db: &impl ConnectionTrait,
    hub: &Hub,
    cache: &mut RulesCache,
    tenant: &str,
) -> AppResult<Arc<Routes>> {
    // Read before the query: a change that commits meanwhile bumps past it, so what the
    // query returns is never kept under a generation newer than the data it saw. The epoch
    // likewise: read before the rules, it can only be older than them (the insert's check
    // then fails once and they are read again), never newer.
    let generation = hub.rules_generation();
    if let Some((g, routes)) = cache.tenants.get(tenant)
        && *g == generation
    {
        return Ok(routes.clone());
    }
    let epoch = rules_epoch(db, tenant).await?;
    let (rules, dests) = active_rules(db, tenant).await?;
    let routes = Arc::new(Routes {
        rules,
        dests,
        epoch,
    });
    if cache.tenants.len() >= RulesCache::TENANTS {
        cache.tenants.clear();
    }
    cache
        .tenants
        .insert(tenant.to_string(), (generation, routes.clone()));
    Ok(routes)
}

/// PostgreSQL: the tenant's rules epoch (0 before its first change). SQLite: always 0.
async fn rules_epoch(db: &impl ConnectionTrait, tenant: &str) -> AppResult<i64> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT COALESCE((SELECT epoch FROM rules_epoch WHERE tenant_id = $1), 0) AS epoch",
            [tenant.into()],
        ))
        .await?;
    Ok(match row {
        Some(r) => r.try_get::<i64>("", "epoch")?,
        None => 0,
    })
}
