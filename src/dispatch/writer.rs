//! The completion writer: finished attempts, delivery state changes, destination health and
//! the per-minute rollups are gathered and written in one transaction per flush — never a
//! round trip per row on the hot path. After each commit the attempts and status changes go
//! on the live bus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt, event};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::circuit::Health;
use super::claim::Claimed;
use super::rollup::RollupBook;
use crate::live::{LiveAttempt, LiveBus, LiveEvent, StatusChange};
use crate::service::{bulk, now};

/// A delivery's new state after an attempt, a release or a discard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryUpdate {
    pub id: Uuid,
    pub status: &'static str,
    /// Absolute, so re-applying an update is harmless.
    pub attempt_count: Option<i32>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub completed: bool,
}

/// A destination's health after the attempts of this instance.
#[derive(Clone, Debug)]
pub struct HealthUpdate {
    pub destination_id: Uuid,
    pub tenant_id: String,
    pub health: Health,
    pub consecutive_failures: u32,
    pub gate: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failed_status_code: Option<i32>,
    pub last_failed_reason: Option<String>,
    /// 410 Gone: the destination is switched off.
    pub disable: bool,
    /// Whether the status differs from before (goes on the live bus).
    pub changed: bool,
    /// A probe closed the circuit: the deliveries the open circuit held back (due at most
    /// this late) are due now instead of waiting out the probe's reservation.
    pub release_held_until: Option<DateTime<Utc>>,
}

/// A finished attempt: its row, its delivery's new state, and what the unit knew of the
/// delivery and its event (they go on the live bus with the attempt).
pub struct Finished {
    pub attempt: delivery_attempt::Model,
    pub update: DeliveryUpdate,
    pub claimed: Claimed,
    pub event: Option<Arc<event::Model>>,
}

impl Finished {
    /// The delivery row as this flush leaves it (the same rules as `store::write_deliveries`
    /// for an attempt's update; a claimed delivery has no `completed_at` before).
    fn delivery(&self, t: DateTime<Utc>) -> delivery::Model {
        let (c, u) = (&self.claimed, &self.update);
        delivery::Model {
            id: c.id,
            tenant_id: c.tenant_id.clone(),
            event_id: c.event_id,
            destination_id: c.destination_id,
            event_type: c.event_type.clone(),
            status: u.status.to_string(),
            attempt_count: u.attempt_count.unwrap_or(c.attempt_count),
            next_attempt_at: u.next_attempt_at,
            lease_until: None,
            lease_owner: None,
            last_status_code: u.last_status_code,
            last_error: u.last_error.clone(),
            created_at: c.created_at,
            completed_at: u.completed.then_some(t),
        }
    }
}

pub enum WriterMsg {
    Attempt(Box<Finished>),
    Delivery(DeliveryUpdate),
    Health(Box<HealthUpdate>),
    /// Answered once everything sent before it has committed.
    Barrier(oneshot::Sender<()>),
    /// Flush what came before, answer, and stop.
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

impl Writer {
    /// Starts the writer task on `rt` (the delivery runtime, see [`super::threads`]).
    pub fn start(
        rt: &tokio::runtime::Handle,
        db: DatabaseConnection,
        live: LiveBus,
        instance_id: Arc<str>,
        hub: Arc<super::hub::Hub>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(run(db, live, instance_id, hub, rx));
        Self { tx }
    }

    pub fn send(&self, msg: WriterMsg) {
        // Only fails after `close`, when the process is stopping and leases cover the rest.
        let _ = self.tx.send(msg);
    }

    /// Waits until everything sent so far is committed. False if the writer has stopped.
    pub async fn barrier(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(WriterMsg::Barrier(tx));
        rx.await.is_ok()
    }

    /// Flushes and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(WriterMsg::Close(tx));
        let _ = rx.await;
    }
}

/// The largest event payload an attempt carries on the live bus. The bus keeps its last 4 096
/// messages for subscribers that lag, so with payloads of up to 256 KiB on board it could hold
/// 1 GiB; at 8 KiB it holds at most 32 MiB of them. A subscriber that asks for a larger event
/// gets it loaded, as for attempts made by other instances.
pub const LIVE_EVENT_INLINE_MAX: usize = 8 * 1024;

const MAX_FLUSH: usize = 2000;
/// How long the writer gathers on PostgreSQL before a flush.
const GATHER: Duration = Duration::from_millis(5);
/// A flush that has gathered fewer messages than [`SPARSE`] after [`GATHER`] (PostgreSQL) or
/// [`GATHER_SQLITE`] keeps gathering until this much time has passed. A flush costs
/// PostgreSQL mostly per flush, not per message: a transaction of five statements and a WAL
/// flush. At 500 attempts/s a 5-ms gather alone makes ≈ 125 flushes a second of about four
/// attempts each, more statements than the publishes themselves. At high rates batches fill
/// within `GATHER` and nothing changes, so `fanout` keeps its short gather (a long one for
/// every flush costs it ≈ 10 %; BENCHMARKS.md, "Completions are written in batched flushes").
const GATHER_SPARSE: Duration = Duration::from_millis(20);
const SPARSE: usize = 16;
/// On SQLite a flush occupies the one writer connection that publishes wait for: fewer,
/// larger flushes leave it free more of the time. A sparse batch gathers until
/// [`GATHER_SPARSE`] there too: each flush appends every page it touches to the WAL however
/// few attempts it holds, and at 500 attempts/s the 2-ms gather alone flushes one or two at a
/// time.
const GATHER_SQLITE: Duration = Duration::from_millis(2);

async fn run(
    db: DatabaseConnection,
    live: LiveBus,
    instance_id: Arc<str>,
    hub: Arc<super::hub::Hub>,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
) {
    let mut book = RollupBook::new(instance_id.clone());
    let mut batch = Vec::with_capacity(MAX_FLUSH);
    let mut closing = None;
    // PostgreSQL: every commit waits for a WAL flush (fsync), and at moderate rates each flush
    // would hold one or two attempts. Gathering for a few milliseconds makes those commits
    // rarer, so the publishers' commits wait less behind them (`backlog` benchmark). SQLite in
    // WAL mode does not sync on commit, but every flush occupies its one writer and appends
    // the pages it touches to the WAL. On both, a sparse batch gathers longer (see
    // `GATHER_SPARSE`).
    let (gather, sparse_extra) = gathers(db.get_database_backend());
    while closing.is_none() && gather_batch(&mut rx, &mut batch, gather, sparse_extra).await {
        let msgs = std::mem::take(&mut batch);
        let mut acks = Vec::new();
        let flush = Flush::from(msgs, &mut book, &mut acks, &mut closing);
        let statuses: Vec<StatusChange> = flush
            .health
            .values()
            .filter(|h| h.changed || h.disable)
            .map(|h| StatusChange {
                tenant_id: h.tenant_id.clone(),
                destination_id: h.destination_id,
                status: h.health.as_str().to_string(),
                enabled: !h.disable,
                at: now(),
            })
            .collect();
        let mut backoff = Duration::from_millis(100);
        // Which delivery updates took effect matters only to the live stream. (A subscriber
        // arriving during the flush gets its attempts as the updates would leave them.)
        let want_applied = live.subscriber_count() > 0;
        let attempt_ids: Vec<Uuid> = flush.finished.iter().map(|f| f.attempt.id).collect();
        // The announcement to other instances rides in the flush's transaction, which sends
        // it on commit at no extra cost. Should the flush fail with it, it is written again at
        // once without it, and announced after that commit (best effort): whatever PostgreSQL
        // thinks of a notification (its queue full, say, which it reports only at commit),
        // the recording of attempts never waits on it.
        let mut announce = Announce::InFlush;
        // Nothing finished is dropped: a failed flush is retried until the database is back.
        // (Leases may expire meanwhile; the receiver then sees a duplicate, never a loss.)
        let applied = loop {
            let with = (announce == Announce::InFlush).then_some((
                &*instance_id,
                attempt_ids.as_slice(),
                statuses.as_slice(),
            ));
            match flush.write(&db, with, want_applied).await {
                Ok(applied) => break applied,
                Err(e)
                    if announce == Announce::InFlush
                        && db.get_database_backend() == DbBackend::Postgres =>
                {
                    tracing::warn!(error = %e, "completion flush failed; writing it again with its announcement after the commit");
                    announce = Announce::AfterCommit;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "completion flush failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        if announce == Announce::AfterCommit {
            crate::live::pg::announce_committed(&db, &instance_id, &attempt_ids, &statuses).await;
        }
        if flush.health.values().any(|h| h.disable) {
            // 410 Gone switched a destination off: it no longer takes events.
            hub.rules_changed();
        }
        metrics::counter!("hookline_attempts_total", "outcome" => "success")
            .increment(flush.successes);
        metrics::counter!("hookline_attempts_total", "outcome" => "failure")
            .increment(flush.finished.len() as u64 - flush.successes);
        // Nobody subscribed here: the bus would drop them, so do not build them.
        if live.subscriber_count() > 0 {
            for (f, i) in flush.finished.into_iter().zip(flush.update_of) {
                // The delivery as this attempt left it — unless the guard kept the update out
                // (the delivery was finished meanwhile): then subscribers load it as it is.
                let delivery = applied
                    .get(i)
                    .is_none_or(|a| *a)
                    .then(|| f.delivery(flush.at));
                live.publish(LiveEvent::Attempt(Arc::new(LiveAttempt {
                    attempt: f.attempt,
                    delivery,
                    event: f.event.filter(|e| e.payload.len() <= LIVE_EVENT_INLINE_MAX),
                })));
            }
        }
        for s in statuses {
            live.publish(LiveEvent::Status(Arc::new(s)));
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

/// How long a flush gathers on `backend`, and how much longer when it is sparse.
fn gathers(backend: DbBackend) -> (Duration, Duration) {
    let gather = if backend == DbBackend::Postgres {
        GATHER
    } else {
        GATHER_SQLITE
    };
    (gather, GATHER_SPARSE - gather)
}

/// Waits for a message, then gathers for `gather`, and for `sparse_extra` more when what it
/// has gathered [`is_sparse`]. False once every sender is gone and nothing is left.
async fn gather_batch(
    rx: &mut mpsc::UnboundedReceiver<WriterMsg>,
    batch: &mut Vec<WriterMsg>,
    gather: Duration,
    sparse_extra: Duration,
) -> bool {
    if rx.recv_many(batch, MAX_FLUSH).await == 0 {
        return false;
    }
    if !gather.is_zero() && batch.len() < MAX_FLUSH {
        tokio::time::sleep(gather).await;
        drain(rx, batch);
        if !sparse_extra.is_zero() && is_sparse(batch) {
            tokio::time::sleep(sparse_extra).await;
            drain(rx, batch);
        }
    }
    true
}

/// Moves what is waiting into `batch`, up to [`MAX_FLUSH`] messages.
fn drain(rx: &mut mpsc::UnboundedReceiver<WriterMsg>, batch: &mut Vec<WriterMsg>) {
    while batch.len() < MAX_FLUSH {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}

/// Whether a gathered batch is worth gathering longer (see [`GATHER_SPARSE`]): few messages,
/// and nobody waiting for this flush (a barrier, as `sendTestEvent` uses, or shutdown).
fn is_sparse(batch: &[WriterMsg]) -> bool {
    batch.len() < SPARSE
        && !batch
            .iter()
            .any(|m| matches!(m, WriterMsg::Barrier(_) | WriterMsg::Close(_)))
}

struct Flush {
    /// When the flush was gathered: the `completed_at` of what it completes.
    at: DateTime<Utc>,
    finished: Vec<Finished>,
    /// Per finished attempt: the index of its update in `deliveries`.
    update_of: Vec<usize>,
    successes: u64,
    deliveries: Vec<DeliveryUpdate>,
    health: HashMap<Uuid, HealthUpdate>,
    rollups: Vec<entity::attempt_rollup::Model>,
}

impl Flush {
    fn from(
        msgs: Vec<WriterMsg>,
        book: &mut RollupBook,
        acks: &mut Vec<oneshot::Sender<()>>,
        closing: &mut Option<oneshot::Sender<()>>,
    ) -> Self {
        let mut f = Flush {
            at: now(),
            finished: Vec::new(),
            update_of: Vec::new(),
            successes: 0,
            deliveries: Vec::new(),
            health: HashMap::new(),
            rollups: Vec::new(),
        };
        for m in msgs {
            match m {
                WriterMsg::Attempt(a) => {
                    book.record(&a.attempt);
                    if a.attempt.outcome == "SUCCESS" {
                        f.successes += 1;
                    }
                    f.update_of.push(f.deliveries.len());
                    f.deliveries.push(a.update.clone());
                    f.finished.push(*a);
                }
                WriterMsg::Delivery(d) => f.deliveries.push(d),
                WriterMsg::Barrier(ack) => acks.push(ack),
                // Anything after Close in this batch was sent after close began; drop it.
                WriterMsg::Close(ack) => {
                    *closing = Some(ack);
                    break;
                }
                WriterMsg::Health(h) => {
                    let h = *h;
                    match f.health.get_mut(&h.destination_id) {
                        Some(prev) => merge_health(prev, h),
                        None => {
                            f.health.insert(h.destination_id, h);
                        }
                    }
                }
            }
        }
        f.rollups = book.take_dirty();
        f
    }

    /// Writes the flush in one transaction; on PostgreSQL with `announce`, which attempts and
    /// status changes this instance announces to the others on commit.
    async fn write(
        &self,
        db: &DatabaseConnection,
        announce: Option<(&str, &[Uuid], &[StatusChange])>,
        want_applied: bool,
    ) -> Result<Vec<bool>, DbErr> {
        let attempts: Vec<delivery_attempt::Model> =
            self.finished.iter().map(|f| f.attempt.clone()).collect();
        if db.get_database_backend() == DbBackend::Sqlite && !want_applied {
            // The whole flush in one call to SQLite's thread (see `db::sqlite_script`).
            let mut stmts = bulk::sqlite_inserts::<_, delivery_attempt::ActiveModel>(attempts);
            stmts.extend(super::store::sqlite_delivery_updates(
                &self.deliveries,
                self.at,
            ));
            stmts.extend(super::store::sqlite_health(&self.health));
            stmts.extend(super::rollup::sqlite_upserts(&self.rollups));
            crate::db::sqlite_script(db, stmts).await?;
            return Ok(Vec::new());
        }
        let txn = db.begin().await?;
        bulk::insert::<_, delivery_attempt::ActiveModel>(&txn, attempts)
            .await
            .map_err(|e| DbErr::Custom(e.detail()))?;
        let applied =
            super::store::write_deliveries(&txn, &self.deliveries, self.at, want_applied).await?;
        super::store::write_health_all(&txn, &self.health).await?;
        super::rollup::upsert(&txn, &self.rollups).await?;
        if let Some((instance_id, attempts, statuses)) = announce {
            crate::live::pg::announce(&txn, instance_id, attempts, statuses).await?;
        }
        txn.commit().await?;
        Ok(applied)
    }
}

/// Where a flush's announcement to other instances goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// In the flush's transaction: sent on its commit.
    InFlush,
    /// Apart, after the flush committed without it.
    AfterCommit,
}

/// Later updates win, but the "last success/failure" facts accumulate.
fn merge_health(prev: &mut HealthUpdate, next: HealthUpdate) {
    let changed = prev.changed || next.changed;
    let release_held_until = Ord::max(next.release_held_until, prev.release_held_until);
    let disable = prev.disable || next.disable;
    let last_success_at = next.last_success_at.or(prev.last_success_at);
    let (failed_at, code, reason) = if next.last_failure_at.is_some() {
        (
            next.last_failure_at,
            next.last_failed_status_code,
            next.last_failed_reason.clone(),
        )
    } else {
        (
            prev.last_failure_at,
            prev.last_failed_status_code,
            prev.last_failed_reason.take(),
        )
    };
    *prev = HealthUpdate {
        changed,
        release_held_until,
        disable,
        last_success_at,
        last_failure_at: failed_at,
        last_failed_status_code: code,
        last_failed_reason: reason,
        ..next
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> WriterMsg {
        WriterMsg::Delivery(DeliveryUpdate {
            id: Uuid::now_v7(),
            status: "SUCCEEDED",
            attempt_count: Some(1),
            next_attempt_at: None,
            last_status_code: Some(204),
            last_error: None,
            completed: true,
        })
    }

    /// Sends `n` updates at `at` (time is paused: the test decides when things happen).
    fn send_at(tx: &mpsc::UnboundedSender<WriterMsg>, at: Duration, n: usize) {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            for _ in 0..n {
                let _ = tx.send(update());
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_sparse_batch_keeps_gathering_until_the_longer_gather() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        send_at(&tx, Duration::ZERO, 2);
        send_at(&tx, Duration::from_millis(12), 3);
        send_at(&tx, Duration::from_millis(25), 1);
        let (g, x) = gathers(DbBackend::Postgres);
        let t0 = tokio::time::Instant::now();
        let mut batch = Vec::new();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        // The updates sent at 12 ms joined the first two; the one at 25 ms waits.
        assert_eq!(batch.len(), 5);
        assert_eq!(t0.elapsed(), GATHER_SPARSE);
        batch.clear();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!(batch.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_or_a_barrier_is_flushed_after_the_short_gather() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        send_at(&tx, Duration::ZERO, SPARSE);
        let (g, x) = gathers(DbBackend::Postgres);
        let t0 = tokio::time::Instant::now();
        let mut batch = Vec::new();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!((batch.len(), t0.elapsed()), (SPARSE, GATHER));
        batch.clear();
        // One update and a barrier: whoever waits on the barrier is not kept 20 ms.
        let (ack, _answered) = oneshot::channel();
        tx.send(update()).unwrap();
        tx.send(WriterMsg::Barrier(ack)).unwrap();
        send_at(&tx, Duration::from_millis(7), 1);
        let t1 = tokio::time::Instant::now();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!((batch.len(), t1.elapsed()), (2, GATHER));
    }

    #[tokio::test(start_paused = true)]
    async fn sqlite_gathers_briefly_and_longer_only_when_sparse() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (g, x) = gathers(DbBackend::Sqlite);
        // A full batch is written after the short gather.
        send_at(&tx, Duration::ZERO, SPARSE);
        let t0 = tokio::time::Instant::now();
        let mut batch = Vec::new();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!((batch.len(), t0.elapsed()), (SPARSE, GATHER_SQLITE));
        // A sparse one keeps gathering until the longer gather, as on PostgreSQL.
        batch.clear();
        send_at(&tx, Duration::ZERO, 1);
        send_at(&tx, Duration::from_millis(3), 1);
        send_at(&tx, Duration::from_millis(25), 1);
        let t1 = tokio::time::Instant::now();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!((batch.len(), t1.elapsed()), (2, GATHER_SPARSE));
        drop(tx);
        batch.clear();
        assert!(gather_batch(&mut rx, &mut batch, g, x).await);
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(!gather_batch(&mut rx, &mut batch, g, x).await);
    }
}
