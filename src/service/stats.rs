//! Statistics from the per-minute rollups (never a scan of attempt history): a destination's
//! totals and percentiles for a window, and time buckets for charts.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use entity::{attempt_rollup, delivery, destination};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use crate::dispatch::rollup::{Histogram, minute_of};
use crate::error::{AppError, AppResult};

#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    pub duration_sum_ms: i64,
    pub hist: Histogram,
}

impl Totals {
    fn add(&mut self, r: &attempt_rollup::Model) {
        self.attempts += r.attempts;
        self.successes += r.successes;
        self.failures += r.failures;
        self.duration_sum_ms += r.duration_sum_ms;
        self.hist.merge(&Histogram::parse(&r.latency_hist));
    }

    pub fn success_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.successes as f64 / self.attempts as f64)
    }

    pub fn average_ms(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.duration_sum_ms as f64 / self.attempts as f64)
    }
}

#[derive(Clone, Debug)]
pub struct DestinationStats {
    pub totals: Totals,
    pub pending: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    fn width(self) -> TimeDelta {
        match self {
            Bucket::Minute => TimeDelta::minutes(1),
            Bucket::Hour => TimeDelta::hours(1),
            Bucket::Day => TimeDelta::days(1),
        }
    }
}

/// Maximum number of buckets one metrics query may return.
pub const MAX_BUCKETS: i64 = 1500;

/// The window's rollup rows: the minutes that overlap `[since, until)` (`since` is rounded down
/// to its minute; the minute `until` falls in counts, so a window ending now includes it).
async fn rollups(
    db: &impl ConnectionTrait,
    destination_ids: &[Uuid],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> AppResult<Vec<attempt_rollup::Model>> {
    let mut q = attempt_rollup::Entity::find()
        .filter(attempt_rollup::Column::DestinationId.is_in(destination_ids.iter().copied()));
    if let Some(s) = since {
        q = q.filter(attempt_rollup::Column::BucketStart.gte(minute_of(s)));
    }
    if let Some(u) = until {
        q = q.filter(attempt_rollup::Column::BucketStart.lt(u));
    }
    Ok(q.all(db).await?)
}

/// Stats of several destinations at once (the DataLoader's batch). Destinations must
/// already be vetted for the caller's tenant.
pub async fn for_destinations(
    db: &impl ConnectionTrait,
    dests: &[destination::Model],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> AppResult<Vec<(Uuid, DestinationStats)>> {
    let ids: Vec<Uuid> = dests.iter().map(|d| d.id).collect();
    let rows = rollups(db, &ids, since, until).await?;
    let pending = pending_counts(db, &ids).await?;
    let mut out = Vec::with_capacity(dests.len());
    for d in dests {
        let mut totals = Totals::default();
        for r in rows.iter().filter(|r| r.destination_id == d.id) {
            totals.add(r);
        }
        let pending = pending.get(&d.id).copied().unwrap_or(0).max(0) as u64;
        out.push((
            d.id,
            DestinationStats {
                totals,
                pending,
                last_success_at: d.last_success_at,
                last_failure_at: d.last_failure_at,
            },
        ));
    }
    Ok(out)
}

#[derive(sea_orm::FromQueryResult)]
struct PendingRow {
    destination_id: Uuid,
    n: i64,
}

/// Unfinished deliveries per destination: one grouped query for those with a time to be
/// attempted at ([`super::deliveries::queued`]), one for the parked ones
/// ([`super::parked`]: their index on PostgreSQL, each marked destination's range on SQLite),
/// added up.
async fn pending_counts(
    db: &impl ConnectionTrait,
    ids: &[Uuid],
) -> AppResult<std::collections::HashMap<Uuid, i64>> {
    let mut counts = std::collections::HashMap::new();
    let grouped = |c: sea_orm::Condition| {
        delivery::Entity::find()
            .select_only()
            .column(delivery::Column::DestinationId)
            .column_as(delivery::Column::Id.count(), "n")
            .filter(delivery::Column::DestinationId.is_in(ids.iter().copied()))
            .filter(c)
            .group_by(delivery::Column::DestinationId)
            .into_model::<PendingRow>()
    };
    let mut rows = grouped(super::deliveries::queued()).all(db).await?;
    if db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        rows.extend(
            <PendingRow as sea_orm::FromQueryResult>::find_by_statement(
                super::parked::counts_sqlite(ids),
            )
            .all(db)
            .await?,
        );
    } else {
        let parked = super::deliveries::unfinished().add(super::parked::parked());
        rows.extend(grouped(parked).all(db).await?);
    }
    for r in rows {
        *counts.entry(r.destination_id).or_insert(0) += r.n;
    }
    Ok(counts)
}

/// Time buckets for charts, oldest first, empty buckets included.
pub async fn metrics(
    db: &impl ConnectionTrait,
    destination_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    bucket: Bucket,
) -> AppResult<Vec<(DateTime<Utc>, Totals)>> {
    if until <= since {
        return Err(AppError::bad_input("until", "must be after since"));
    }
    let width = bucket.width();
    let start = since.duration_trunc(width).unwrap_or(since);
    let n = (until - start).num_seconds() / width.num_seconds().max(1) + 1;
    if n > MAX_BUCKETS {
        return Err(AppError::bad_input(
            "bucket",
            format!(
                "{n} buckets requested; at most {MAX_BUCKETS} — use a wider bucket or a shorter window"
            ),
        ));
    }
    let rows = rollups(db, &[destination_id], Some(start), Some(until)).await?;
    let mut buckets: BTreeMap<DateTime<Utc>, Totals> = BTreeMap::new();
    let mut t = start;
    while t < until {
        buckets.insert(t, Totals::default());
        t += width;
    }
    for r in &rows {
        let key = r
            .bucket_start
            .duration_trunc(width)
            .unwrap_or(r.bucket_start);
        buckets.entry(key).or_default().add(r);
    }
    Ok(buckets.into_iter().collect())
}
