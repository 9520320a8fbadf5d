//! The delivery engine. The loop here only moves data: it claims due deliveries (and takes
//! fresh ones the publisher hands over in memory, see [`hub`]), groups them by destination,
//! passes each group through the gates (deleted, disabled, expired, circuit, batching window,
//! FIFO), sends, and hands the results to the completion writer. While a destination's circuit
//! is open its deliveries are parked; the loop takes each due probe from the database.
//! Decisions are pure functions in [`retry`], [`circuit`], [`signing`] and [`payload`].

pub mod circuit;
pub mod claim;
pub mod guard;
pub mod hub;
pub mod payload;
pub mod retry;
pub mod rollup;
pub mod runtime;
pub mod sender;
pub mod signing;
mod store;
pub use store::update_json_sql;
mod preview;
pub use preview::{Preview, preview_delivery};
mod test_event;
pub mod threads;
mod unit;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{destination, event};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::service::now;
use crate::state::AppState;
use claim::Claimed;
use hub::{Handover, Hub};
use writer::{DeliveryUpdate, WriterMsg};

pub use test_event::send_test_event;

/// Shared by the claim loop and the tasks it starts.
pub(crate) struct Engine {
    pub state: AppState,
    /// Runtimes, counters and leases shared with the publisher's hand-over.
    pub hub: Arc<Hub>,
    /// Bounds concurrent outgoing requests across all destinations.
    pub global: Arc<Semaphore>,
}

impl Engine {
    fn writer(&self) -> &writer::Writer {
        &self.state.writer
    }

    /// Gives a claimed delivery back without an attempt, due again at `at` (None: parked
    /// until the destination is enabled again).
    pub fn release(&self, c: &Claimed, at: Option<DateTime<Utc>>) {
        self.forget(c.id);
        self.writer().send(WriterMsg::Delivery(DeliveryUpdate {
            id: c.id,
            status: c.waiting_status(),
            attempt_count: None,
            next_attempt_at: at,
            last_status_code: None,
            last_error: None,
            completed: false,
        }));
    }

    pub fn discard(&self, c: &Claimed, reason: &str) {
        self.end(c, "DISCARDED", reason);
    }

    /// Ends the delivery as `FAILED` without an attempt: it cannot be sent by anyone.
    pub fn fail(&self, c: &Claimed, reason: &str) {
        self.end(c, "FAILED", reason);
    }

    fn end(&self, c: &Claimed, status: &'static str, reason: &str) {
        self.forget(c.id);
        self.writer().send(WriterMsg::Delivery(DeliveryUpdate {
            id: c.id,
            status,
            attempt_count: None,
            next_attempt_at: None,
            last_status_code: None,
            last_error: Some(reason.to_string()),
            completed: true,
        }));
    }

    /// The delivery's outcome is on its way to the writer: stop renewing its lease.
    pub fn forget(&self, id: uuid::Uuid) {
        self.hub
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Bookkeeping once claimed deliveries are finished with, whatever happened to them: `n`
    /// of them, counted as `bytes` (see [`hub::cost_of`]).
    pub fn done(&self, rt: &runtime::DestRuntime, n: usize, bytes: usize) {
        self.hub.unreserve(rt, n, bytes);
    }
}

pub struct Dispatcher {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Resolves once shutdown has drained in-flight work and released leases.
    pub async fn stopped(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// Starts the claim loop (unless disabled in the configuration).
pub fn spawn(state: AppState) -> Dispatcher {
    if !state.config.dispatch.enabled {
        return Dispatcher { task: None };
    }
    let engine = Arc::new(Engine {
        global: Arc::new(Semaphore::new(state.config.dispatch.max_concurrency)),
        hub: state.hub.clone(),
        state,
    });
    // Everything the loop spawns (sends, hand-overs, lease renewal) lands on the same runtime.
    let rt = engine.state.delivery_rt.clone();
    Dispatcher {
        task: Some(rt.handle().spawn(run(engine))),
    }
}

async fn run(engine: Arc<Engine>) {
    let st = engine.state.clone();
    let cfg = st.config.dispatch.clone();
    if !st.db.is_postgres() {
        // SQLite serves one instance: whatever was in flight when it last stopped is due now.
        if let Err(e) = release_leases(&st.db.write, None).await {
            tracing::error!(error = %e, "could not release stale leases");
        }
    }
    let renew = tokio::spawn(renew_leases(engine.clone()));
    let inbox = engine
        .hub
        .open()
        .map(|rx| tokio::spawn(take_handovers(engine.clone(), rx)));
    let mut groups = JoinSet::new();
    let hub = &engine.hub;
    let mut last_probe = std::time::Instant::now() - PROBE_CHECK_EVERY;
    let mut last_sweep = std::time::Instant::now();
    while !st.shutdown.is_cancelled() {
        while groups.try_join_next().is_some() {}
        if last_probe.elapsed() >= PROBE_CHECK_EVERY {
            last_probe = std::time::Instant::now();
            probe_parked(&engine, &mut groups).await;
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = std::time::Instant::now();
            match claim::unpark_recovered(&st.db.write).await {
                Ok(n) if n > 0 => tracing::info!(deliveries = n, "unparked after a recovery"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unparking recovered destinations failed"),
            }
        }
        let room = hub.room();
        if room == 0 {
            tokio::select! {
                _ = hub.finished.notified() => {}
                _ = st.shutdown.cancelled() => break,
            }
            continue;
        }
        let limit = (room as u64).min(cfg.claim_batch);
        let t = now();
        let lease = t + TimeDelta::from_std(cfg.lease).unwrap_or(TimeDelta::seconds(30));
        let skip = hub.runtimes.saturated();
        let claimed =
            match claim::claim(&st.db.write, &st.instance_id, t, lease, limit, &skip).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying");
                    sleep_or_shutdown(&st, Duration::from_secs(1)).await;
                    continue;
                }
            };
        metrics::counter!("hookline_claimed_total").increment(claimed.len() as u64);
        if claimed.is_empty() {
            idle(&st, cfg.poll_interval).await;
            continue;
        }
        let full = claimed.len() as u64 == limit;
        match claim::load_context(&st.db.read, &claimed).await {
            Ok((events, dests)) => start_groups(&engine, &mut groups, claimed, events, dests),
            Err(e) => {
                // The leases lapse and the rows come back; nothing is lost.
                tracing::warn!(error = %e, "loading claimed deliveries failed");
                sleep_or_shutdown(&st, Duration::from_secs(1)).await;
            }
        }
        if !full {
            // Let the batch start before looking again; new work wakes us.
            tokio::task::yield_now().await;
        }
    }
    // Shutdown: groups still waiting give their deliveries back; requests in flight finish.
    hub.close();
    while groups.join_next().await.is_some() {}
    if let Some(inbox) = inbox {
        let _ = inbox.await;
    }
    renew.abort();
    st.writer.close().await;
    if let Err(e) = release_leases(&st.db.write, Some(&st.instance_id)).await {
        tracing::error!(error = %e, "could not release leases at shutdown");
    }
}

fn start_groups(
    engine: &Arc<Engine>,
    groups: &mut JoinSet<()>,
    claimed: Vec<Claimed>,
    events: HashMap<uuid::Uuid, event::Model>,
    dests: HashMap<uuid::Uuid, destination::Model>,
) {
    let hub = &engine.hub;
    hub.held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(claimed.iter().map(|c| c.id));
    let events: HashMap<uuid::Uuid, Arc<event::Model>> = events
        .into_iter()
        .map(|(id, e)| (id, Arc::new(e)))
        .collect();
    let mut by_dest: HashMap<uuid::Uuid, Vec<unit::Item>> = HashMap::new();
    for c in claimed {
        let ev = events.get(&c.event_id).cloned();
        by_dest.entry(c.destination_id).or_default().push((c, ev));
    }
    for (dest_id, items) in by_dest {
        let Some(d) = dests.get(&dest_id).cloned() else {
            // The destination row vanished (cannot happen with soft deletes): give up on them.
            for (c, _) in &items {
                engine.discard(c, "destination no longer exists");
            }
            continue;
        };
        let rt = hub.runtimes.get(&d);
        hub.reserve(&rt, items.len(), hub::cost_of(&items));
        groups.spawn(unit::handle_group(engine.clone(), rt, d, items));
    }
}

/// How often the claim loop looks for open circuits whose probe time has come.
const PROBE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often deliveries parked for a circuit that has closed meanwhile are made due.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A destination whose circuit is open has its deliveries parked (not due): when its probe
/// time comes, one of them is claimed here and sent as the probe. Its success closes the
/// circuit and makes the others due (`writer::release_held`).
async fn probe_parked(engine: &Arc<Engine>, groups: &mut JoinSet<()>) {
    let st = &engine.state;
    let t = now();
    let reserve = t + unit::PROBE_RESERVATION;
    let dests = match claim::take_probes(&st.db.write, t, reserve).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "looking for due probes failed");
            return;
        }
    };
    for d in dests {
        let rt = engine.hub.runtimes.get(&d);
        if rt.probing.load(Ordering::Acquire) {
            continue;
        }
        // The database says the probe is due (another instance may have opened the circuit):
        // the next request of this destination here is that probe.
        let h = rt.health();
        rt.set_health(runtime::HealthState {
            health: circuit::Health::Failing,
            consecutive_failures: h
                .consecutive_failures
                .max(d.consecutive_failures.max(0) as u32),
            gate: None,
        });
        let lease =
            t + TimeDelta::from_std(st.config.dispatch.lease).unwrap_or(TimeDelta::seconds(30));
        let claimed = match claim::claim_parked(&st.db.write, &st.instance_id, d.id, lease).await {
            Ok(Some(c)) => vec![c],
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(destination = %d.id, error = %e, "claiming a probe failed");
                continue;
            }
        };
        match claim::load_context(&st.db.read, &claimed).await {
            Ok((events, dests)) => start_groups(engine, groups, claimed, events, dests),
            Err(e) => tracing::warn!(error = %e, "loading a probe's delivery failed"),
        }
    }
}

/// Runs the deliveries the publisher hands over. At shutdown the ones still arriving start
/// too: their units see the shutdown and give them back to the queue.
async fn take_handovers(engine: Arc<Engine>, mut rx: mpsc::UnboundedReceiver<Handover>) {
    let st = engine.state.clone();
    let mut groups = JoinSet::new();
    loop {
        let h = tokio::select! {
            h = rx.recv() => h,
            _ = st.shutdown.cancelled() => break,
        };
        let Some(h) = h else { break };
        while groups.try_join_next().is_some() {}
        groups.spawn(unit::handle_group(
            engine.clone(),
            h.runtime,
            h.destination,
            h.items,
        ));
    }
    rx.close();
    while let Some(h) = rx.recv().await {
        groups.spawn(unit::handle_group(
            engine.clone(),
            h.runtime,
            h.destination,
            h.items,
        ));
    }
    while groups.join_next().await.is_some() {}
}

async fn sleep_or_shutdown(st: &AppState, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = st.shutdown.cancelled() => {}
    }
}

/// Sleeps until woken by new work, the next scheduled delivery, the poll interval, or
/// shutdown — whichever is first.
async fn idle(st: &AppState, poll: Duration) {
    let until_due = match claim::next_due(&st.db.read).await {
        Ok(Some(t)) => (t - now()).to_std().unwrap_or(Duration::ZERO),
        _ => poll,
    };
    let wait = until_due.min(poll).max(Duration::from_millis(5));
    tokio::select! {
        _ = st.wake.notified() => {}
        _ = tokio::time::sleep(wait) => {}
        _ = st.shutdown.cancelled() => {}
    }
}

/// Keeps this instance's leases alive while it works on them; a dead instance stops
/// renewing and its deliveries come back within one lease.
async fn renew_leases(engine: Arc<Engine>) {
    use entity::delivery;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let st = &engine.state;
    let lease = st.config.dispatch.lease;
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = now() + TimeDelta::from_std(lease).unwrap_or(TimeDelta::seconds(30));
        let ids: Vec<uuid::Uuid> = engine
            .hub
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        for chunk in ids.chunks(500) {
            let res = delivery::Entity::update_many()
                .col_expr(delivery::Column::LeaseUntil, Expr::value(until))
                .col_expr(delivery::Column::NextAttemptAt, Expr::value(until))
                .filter(delivery::Column::Id.is_in(chunk.iter().copied()))
                .filter(delivery::Column::LeaseOwner.eq(st.instance_id.to_string()))
                .filter(delivery::Column::Status.eq("DELIVERING"))
                .exec(&st.db.write)
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "lease renewal failed");
            }
        }
    }
}

/// Makes leased deliveries due now: all of them (SQLite start-up) or one owner's (shutdown).
async fn release_leases(
    db: &sea_orm::DatabaseConnection,
    owner: Option<&str>,
) -> Result<(), sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let (p1, p2) = match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?1", "?2"),
    };
    let mut sql = format!(
        "UPDATE delivery SET status = CASE WHEN attempt_count > 0 THEN 'AWAITING_RETRY' \
         ELSE 'PENDING' END, next_attempt_at = {p1}, lease_until = NULL, lease_owner = NULL \
         WHERE status = 'DELIVERING' AND completed_at IS NULL"
    );
    let mut values: Vec<sea_orm::Value> = vec![now().into()];
    if let Some(o) = owner {
        sql.push_str(&format!(" AND lease_owner = {p2}"));
        values.push(o.into());
    }
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}
