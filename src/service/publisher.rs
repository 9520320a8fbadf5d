//! Publishing: fan-out to matching destinations and group commit — concurrent publishes are
//! gathered into one transaction and each caller is answered after that commit, so an
//! accepted event is always durable. Deliveries this instance has room for are handed to its
//! dispatcher in memory (see `dispatch::hub`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{delivery, event};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Select};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::events::{NewEvent, Published};
use super::subscriptions::Rule;
use super::{bulk, new_id, now};
use crate::auth::Principal;
use crate::db::Db;
use crate::dispatch::claim::Claimed;
use crate::dispatch::hub::{Handover, Hub, Route};
use crate::dispatch::runtime::DestRuntime;
use crate::error::{AppError, AppResult};

mod rules;
use rules::{Routes, RulesCache, routes_of};

/// Publishes gathered into one transaction at most.
const MAX_GROUP: usize = 256;

/// PostgreSQL: how often a group is planned again because the rules changed under it
/// before the publishes give up (each try reads them afresh; it takes a change committed
/// between every read and the insert that follows it).
const STALE_RULES_RETRIES: usize = 5;

struct Job {
    tenant: String,
    event: NewEvent,
    reply: oneshot::Sender<AppResult<Published>>,
}

/// Handle to the group-commit writer tasks.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Job>,
}

/// Group transactions in flight at once on PostgreSQL: while one waits for its commit, the
/// next gathers the publishes that arrive meanwhile. SQLite has one writer connection: one.
const PG_WRITERS: usize = 4;

impl Publisher {
    /// Starts the writers. `wake` is notified after each commit that queued deliveries for the
    /// claim loop; deliveries handed to this instance's dispatcher go through `hub`.
    pub fn start(db: Db, wake: Arc<Notify>, hub: Arc<Hub>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let writers = if db.is_postgres() { PG_WRITERS } else { 1 };
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(writer(db.clone(), rx.clone(), wake.clone(), hub.clone()));
        }
        Self { tx }
    }

    pub async fn publish(&self, p: &Principal, event: NewEvent) -> AppResult<Published> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                tenant: p.tenant.clone(),
                event,
                reply,
            })
            .await
            .map_err(|_| AppError::Unavailable("the server is shutting down".into()))?;
        rx.await
            .map_err(|_| AppError::Unavailable("the server is shutting down".into()))?
    }
}

async fn writer(
    db: Db,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    wake: Arc<Notify>,
    hub: Arc<Hub>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    // Each writer keeps the rules it read between groups (see `RulesCache`).
    let mut cache = RulesCache::default();
    loop {
        // The lock is held only while gathering, never across a commit.
        if rx.lock().await.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        let jobs = std::mem::take(&mut group);
        let queued = commit_group(&db, &hub, &mut cache, jobs).await;
        if queued > 0 {
            wake.notify_one();
        }
    }
}

/// What one job will write, decided before the transaction.
struct Plan {
    event: Arc<event::Model>,
    deliveries: Vec<delivery::Model>,
    /// Per delivery: the runtime reserved for handing it over, or None (it goes to the queue).
    handed: Vec<Option<Arc<DestRuntime>>>,
}

/// What a committed group leaves to do.
struct Written {
    results: Vec<Published>,
    /// Deliveries left for the claim loop (it is woken when there are any).
    queued: usize,
}

/// Commits a group; answers every job. Returns how many deliveries were queued for the claim
/// loop. If the group's transaction fails (a racing idempotency key, say), each job is retried
/// alone so one bad job never fails the others.
async fn commit_group(db: &Db, hub: &Hub, cache: &mut RulesCache, jobs: Vec<Job>) -> usize {
    match plan_and_write(db, hub, cache, &jobs).await {
        Ok(w) => {
            for (job, res) in jobs.into_iter().zip(w.results) {
                let _ = job.reply.send(Ok(res));
            }
            w.queued
        }
        Err(_) if jobs.len() > 1 => {
            let mut n = 0;
            for job in jobs {
                let res = plan_and_write(db, hub, cache, std::slice::from_ref(&job)).await;
                let res = match res {
                    Ok(mut w) => {
                        n += w.queued;
                        Ok(w.results.remove(0))
                    }
                    Err(e) => Err(e),
                };
                let _ = job.reply.send(res);
            }
            n
        }
        Err(e) => {
            for job in jobs {
                // A lone job that lost an idempotency race returns the winner's event.
                let res = match (&e, &job.event.idempotency_key) {
                    (AppError::Conflict(_), Some(key)) => {
                        existing_by_keys(&db.write, &job.tenant, std::slice::from_ref(key))
                            .await
                            .and_then(|mut m| {
                                m.remove(key).ok_or_else(|| {
                                    AppError::Internal("idempotency race lost the winner".into())
                                })
                            })
                            .map(|event| Published {
                                event,
                                created: false,
                                deliveries: 0,
                            })
                    }
                    _ => Err(clone_err(&e)),
                };
                let _ = job.reply.send(res);
            }
            0
        }
    }
}

fn clone_err(e: &AppError) -> AppError {
    match e {
        AppError::Conflict(m) => AppError::Conflict(m.clone()),
        AppError::Unavailable(m) => AppError::Unavailable(m.clone()),
        other => AppError::Internal(other.detail()),
    }
}

/// The events of `tenant` published with one of `keys`: a lookup in `ux_event_tenant_idem`,
/// which holds keyed events only (`IN` implies its `idempotency_key IS NOT NULL`).
pub fn events_with_keys(tenant: &str, keys: &[String]) -> Select<event::Entity> {
    event::Entity::find()
        .filter(event::Column::TenantId.eq(tenant))
        .filter(event::Column::IdempotencyKey.is_in(keys.iter().cloned()))
}

async fn existing_by_keys(
    db: &impl ConnectionTrait,
    tenant: &str,
    keys: &[String],
) -> AppResult<HashMap<String, event::Model>> {
    let rows = events_with_keys(tenant, keys).all(db).await?;
    Ok(rows
        .into_iter()
        .filter_map(|e| e.idempotency_key.clone().map(|k| (k, e)))
        .collect())
}

async fn plan_and_write(
    db: &Db,
    hub: &Hub,
    cache: &mut RulesCache,
    jobs: &[Job],
) -> AppResult<Written> {
    // The rules and idempotency keys are read before the write, outside its transaction (the
    // same as inside it under READ COMMITTED; a racing idempotency key still meets the unique
    // index): on SQLite the single writer connection then only writes. PostgreSQL writes a
    // group in one statement, atomic by itself, which checks the rules epochs.
    if db.is_postgres() {
        for _ in 0..STALE_RULES_RETRIES {
            let group = plan_group(&db.read, hub, cache, jobs).await?;
            let wake = group.written.queued > 0;
            match insert_plans_pg(&db.write, &group.plans, &group.routes, wake).await {
                Ok(false) => {
                    // Rules changed elsewhere since they were read: nothing was written.
                    for tenant in group.routes.keys() {
                        cache.forget(tenant);
                    }
                    group.unreserve(hub);
                }
                res => return finish(hub, group, res.map(|_| ())),
            }
        }
        return Err(AppError::Unavailable(
            "the destinations changed on every try; publish again".into(),
        ));
    }
    let group = plan_group(&db.read, hub, cache, jobs).await?;
    let res = crate::db::sqlite_script(&db.write, sqlite_inserts(&group.plans))
        .await
        .map_err(AppError::from);
    finish(hub, group, res)
}

/// A group planned: what to write, where its deliveries go, what to answer.
struct Group<'a> {
    routes: HashMap<&'a str, Arc<Routes>>,
    plans: Vec<Plan>,
    written: Written,
}

/// After the write: hand over what was leased here, or give the reservations back.
fn finish(hub: &Hub, group: Group<'_>, res: AppResult<()>) -> AppResult<Written> {
    if let Err(e) = res {
        group.unreserve(hub);
        return Err(e);
    }
    hand_over(hub, &group.routes, group.plans);
    Ok(group.written)
}

impl Group<'_> {
    /// Gives back the room reserved for deliveries that were not written after all.
    fn unreserve(&self, hub: &Hub) {
        for p in &self.plans {
            let cost = crate::dispatch::hub::cost(p.event.payload.len());
            for rt in p.handed.iter().flatten() {
                hub.unreserve(rt, 1, cost);
            }
        }
    }
}

/// Reads the rules and idempotency keys and plans every job: the events, their deliveries
/// and each delivery's route (reserving room here for those handed over).
async fn plan_group<'a>(
    db: &impl ConnectionTrait,
    hub: &Hub,
    cache: &mut RulesCache,
    jobs: &'a [Job],
) -> AppResult<Group<'a>> {
    // Rules and existing idempotency keys, one query each per tenant in the group.
    let mut routes: HashMap<&str, Arc<Routes>> = HashMap::new();
    let mut existing: HashMap<(&str, String), event::Model> = HashMap::new();
    for job in jobs {
        if !routes.contains_key(job.tenant.as_str()) {
            let r = routes_of(db, hub, cache, &job.tenant).await?;
            routes.insert(&job.tenant, r);
            let keys: Vec<String> = jobs
                .iter()
                .filter(|j| j.tenant == job.tenant)
                .filter_map(|j| j.event.idempotency_key.clone())
                .collect();
            if !keys.is_empty() {
                for (k, e) in existing_by_keys(db, &job.tenant, &keys).await? {
                    existing.insert((&job.tenant, k), e);
                }
            }
        }
    }
    let t = now();
    let lease = t + TimeDelta::from_std(hub.lease).unwrap_or(TimeDelta::seconds(30));
    let mut results = Vec::with_capacity(jobs.len());
    let mut plans: Vec<Plan> = Vec::new();
    for job in jobs {
        if let Some(key) = &job.event.idempotency_key
            && let Some(e) = existing.get(&(job.tenant.as_str(), key.clone()))
        {
            results.push(Published {
                event: e.clone(),
                created: false,
                deliveries: 0,
            });
            continue;
        }
        let r = &*routes[job.tenant.as_str()];
        let mut plan = plan(&job.tenant, &job.event, &r.rules, t);
        // Deliveries the dispatcher here has room for are leased to it now, each counted
        // against its window as the event it will carry (what `unreserve` and the
        // dispatcher's `hub::cost_of` give back).
        let payload_len = plan.event.payload.len();
        for dl in &mut plan.deliveries {
            let route = r
                .dests
                .get(&dl.destination_id)
                .map_or(Route::Queue, |d| hub.route(d, payload_len));
            let handed = match route {
                Route::Handover(rt) => {
                    dl.status = "DELIVERING".into();
                    dl.next_attempt_at = Some(lease);
                    dl.lease_until = Some(lease);
                    dl.lease_owner = Some(hub.instance_id.to_string());
                    Some(rt)
                }
                Route::Park => {
                    dl.next_attempt_at = None;
                    None
                }
                Route::Queue => None,
            };
            plan.handed.push(handed);
        }
        if let Some(key) = &job.event.idempotency_key {
            // A second publish with the same key in this very group gets the first's event.
            existing.insert((job.tenant.as_str(), key.clone()), (*plan.event).clone());
        }
        results.push(Published {
            event: (*plan.event).clone(),
            created: true,
            deliveries: plan.deliveries.len(),
        });
        plans.push(plan);
    }
    let queued = plans
        .iter()
        .flat_map(|p| p.deliveries.iter().zip(&p.handed))
        .filter(|(dl, h)| h.is_none() && dl.next_attempt_at.is_some())
        .count();
    Ok(Group {
        routes,
        plans,
        written: Written { results, queued },
    })
}

/// Passes the committed deliveries that were leased to this instance to its dispatcher, one
/// hand-over per destination.
fn hand_over(hub: &Hub, routes: &HashMap<&str, Arc<Routes>>, plans: Vec<Plan>) {
    let mut by_dest: HashMap<Uuid, Handover> = HashMap::new();
    for p in plans {
        for (dl, rt) in p.deliveries.iter().zip(p.handed) {
            let Some(rt) = rt else { continue };
            let Some(d) = routes
                .get(dl.tenant_id.as_str())
                .and_then(|r| r.dests.get(&dl.destination_id))
            else {
                // Cannot happen (the route was chosen from this row); if it did, the lease
                // would bring the delivery back.
                hub.unreserve(&rt, 1, crate::dispatch::hub::cost(p.event.payload.len()));
                continue;
            };
            by_dest
                .entry(dl.destination_id)
                .or_insert_with(|| Handover {
                    destination: (**d).clone(),
                    runtime: rt,
                    items: Vec::new(),
                })
                .items
                .push((Claimed::of(dl), Some(p.event.clone())));
        }
    }
    for h in by_dest.into_values() {
        hub.hand_over(h);
    }
}

fn plan(tenant: &str, ev: &NewEvent, rules: &[Rule], t: DateTime<Utc>) -> Plan {
    let event = event::Model {
        id: new_id(),
        tenant_id: tenant.to_string(),
        event_type: ev.event_type.clone(),
        level: ev.level.as_str().to_string(),
        payload: ev.payload.clone(),
        idempotency_key: ev.idempotency_key.clone(),
        created_at: t,
    };
    // The payload is parsed only if some rule filters on it, and then only once; likewise
    // the input of jq filters.
    let mut parsed: Option<Option<serde_json::Value>> = None;
    let mut jq_input: Option<jaq_json::Val> = None;
    let mut seen: Vec<Uuid> = Vec::new();
    let mut deliveries = Vec::new();
    for rule in rules {
        if seen.contains(&rule.destination_id) {
            continue;
        }
        let accepts = rule.accepts(
            &ev.event_type,
            ev.level,
            || {
                parsed
                    .get_or_insert_with(|| serde_json::from_str(&ev.payload).ok())
                    .clone()
            },
            || {
                jq_input
                    .get_or_insert_with(|| crate::jq::event_of(&event))
                    .clone()
            },
        );
        if accepts {
            seen.push(rule.destination_id);
            deliveries.push(new_delivery(&event, rule.destination_id, t));
        }
    }
    Plan {
        event: Arc::new(event),
        handed: Vec::with_capacity(deliveries.len()),
        deliveries,
    }
}

pub fn new_delivery(ev: &event::Model, destination_id: Uuid, t: DateTime<Utc>) -> delivery::Model {
    delivery::Model {
        id: new_id(),
        tenant_id: ev.tenant_id.clone(),
        event_id: ev.id,
        destination_id,
        event_type: ev.event_type.clone(),
        status: "PENDING".into(),
        attempt_count: 0,
        next_attempt_at: Some(t),
        lease_until: None,
        lease_owner: None,
        last_status_code: None,
        last_error: None,
        created_at: t,
        completed_at: None,
    }
}

/// PostgreSQL: a group's events and deliveries in one statement (one round trip, one commit),
/// waking the other instances in it when some deliveries are left for the queue — provided
/// every tenant's rules epoch is still the one its rules were read at (see [`RulesCache`]).
/// Returns false, having written nothing, when one has moved.
///
/// The rows travel as one array per column in sqlx's binary encoding (`unnest`): PostgreSQL
/// decodes a UUID or a timestamp from its 16 or 8 bytes instead of lexing a JSON document
/// and parsing every field from text — a `fanout` group carries 50 delivery rows per event.
async fn insert_plans_pg(
    db: &sea_orm::DatabaseConnection,
    plans: &[Plan],
    routes: &HashMap<&str, Arc<Routes>>,
    wake: bool,
) -> AppResult<bool> {
    use sea_orm::sqlx;
    const SQL: &str = "WITH g AS (SELECT COALESCE(bool_and(COALESCE(r.epoch, 0) = x.epoch), true) AS ok \
           FROM unnest($1::text[], $2::int8[]) AS x(tenant_id, epoch) \
           LEFT JOIN rules_epoch r ON r.tenant_id = x.tenant_id), \
         e AS (INSERT INTO \"event\" \
           (id, tenant_id, event_type, level, payload, idempotency_key, created_at) \
           SELECT * FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::timestamptz[]) \
           WHERE (SELECT ok FROM g)), \
         d AS (INSERT INTO delivery \
           (id, tenant_id, event_id, destination_id, event_type, status, attempt_count, \
            next_attempt_at, lease_until, lease_owner, created_at) \
           SELECT * FROM unnest($10::uuid[], $11::text[], $12::uuid[], $13::uuid[], $14::text[], \
             $15::text[], $16::int4[], $17::timestamptz[], $18::timestamptz[], $19::text[], \
             $20::timestamptz[]) \
           WHERE (SELECT ok FROM g)) \
         SELECT ok, CASE WHEN ok AND $22 THEN pg_notify($21, '') END AS woke FROM g";
    let (tenants, epochs): (Vec<&str>, Vec<i64>) =
        routes.iter().map(|(t, r)| (*t, r.epoch)).unzip();
    let ev: Vec<&event::Model> = plans.iter().map(|p| &*p.event).collect();
    let dl: Vec<&delivery::Model> = plans.iter().flat_map(|p| &p.deliveries).collect();
    // What the statement leaves to the column defaults (NULL) is what a new delivery has.
    debug_assert!(dl.iter().all(|d| {
        d.last_status_code.is_none() && d.last_error.is_none() && d.completed_at.is_none()
    }));
    let row = sqlx::query(SQL)
        .bind(tenants)
        .bind(epochs)
        .bind(column(&ev, |e| e.id))
        .bind(column(&ev, |e| e.tenant_id.as_str()))
        .bind(column(&ev, |e| e.event_type.as_str()))
        .bind(column(&ev, |e| e.level.as_str()))
        .bind(column(&ev, |e| e.payload.as_str()))
        .bind(column(&ev, |e| e.idempotency_key.as_deref()))
        .bind(column(&ev, |e| e.created_at))
        .bind(column(&dl, |d| d.id))
        .bind(column(&dl, |d| d.tenant_id.as_str()))
        .bind(column(&dl, |d| d.event_id))
        .bind(column(&dl, |d| d.destination_id))
        .bind(column(&dl, |d| d.event_type.as_str()))
        .bind(column(&dl, |d| d.status.as_str()))
        .bind(column(&dl, |d| d.attempt_count))
        .bind(column(&dl, |d| d.next_attempt_at))
        .bind(column(&dl, |d| d.lease_until))
        .bind(column(&dl, |d| d.lease_owner.as_deref()))
        .bind(column(&dl, |d| d.created_at))
        .bind(crate::live::pg::WAKE)
        .bind(wake)
        .fetch_one(db.get_postgres_connection_pool())
        .await
        .map_err(|e| match e {
            // As SeaORM reports them for its own statements (see `AppError::from(DbErr)`).
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                AppError::Unavailable("database unreachable".into())
            }
            e => DbErr::Query(sea_orm::RuntimeErr::SqlxError(Arc::new(e))).into(),
        })?;
    use sqlx::Row;
    row.try_get::<bool, _>("ok")
        .map_err(|e| AppError::internal("publish statement", e))
}

/// One column of `rows`, for binding as a PostgreSQL array.
fn column<'a, T, U>(rows: &[&'a T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(|r| f(r)).collect()
}

/// SQLite: a group's events and deliveries, for one script (see [`crate::db::sqlite_script`]).
fn sqlite_inserts(plans: &[Plan]) -> Vec<sea_orm::Statement> {
    let events: Vec<event::Model> = plans.iter().map(|p| (*p.event).clone()).collect();
    let deliveries: Vec<delivery::Model> = plans
        .iter()
        .flat_map(|p| p.deliveries.iter().cloned())
        .collect();
    // Each destination a delivery is parked for: its mark goes down to the first of them, in
    // this transaction (`super::parked`).
    let mut parked: Vec<(Uuid, Uuid)> = deliveries
        .iter()
        .filter(|d| d.next_attempt_at.is_none())
        .map(|d| (d.destination_id, d.id))
        .collect();
    parked.sort_unstable();
    parked.dedup_by_key(|(dest, _)| *dest);
    let mut stmts = bulk::sqlite_inserts::<_, event::ActiveModel>(events);
    stmts.extend(bulk::sqlite_inserts::<_, delivery::ActiveModel>(deliveries));
    stmts.extend(
        parked
            .into_iter()
            .map(|(dest, id)| super::parked::lower(dest, id)),
    );
    stmts
}
