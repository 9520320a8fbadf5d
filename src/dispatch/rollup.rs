//! Per-destination, per-minute attempt counters with a latency histogram, maintained
//! incrementally by the completion writer, so statistics and charts never scan attempt
//! history. Each instance owns its own rows (the key includes its instance id), so it can
//! write whole values without read-modify-write races; readers sum across instances.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use entity::{attempt_rollup, delivery_attempt};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QueryTrait};
use uuid::Uuid;

/// Upper bounds (ms, inclusive) of the latency buckets: about 25 % apart, so a percentile
/// read from them is within a quarter of the truth. The last bucket is open-ended.
pub const BOUNDS_MS: &[i64] = &[
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400,
    500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000,
    20000, 25000, 30000, 40000, 50000, 60000,
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram(pub Vec<i64>);

impl Histogram {
    pub fn bucket(ms: i64) -> usize {
        BOUNDS_MS.partition_point(|b| *b < ms)
    }

    pub fn add(&mut self, ms: i64) {
        let i = Self::bucket(ms);
        if self.0.len() <= BOUNDS_MS.len() {
            self.0.resize(BOUNDS_MS.len() + 1, 0);
        }
        self.0[i] += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    pub fn parse(text: &str) -> Self {
        Histogram(serde_json::from_str(text).unwrap_or_default())
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }

    /// The `q`-quantile (0..=1), interpolated inside its bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: i64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0i64;
        for (i, n) in self.0.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_MS[i - 1] } as f64;
                let hi = BOUNDS_MS.get(i).copied().unwrap_or(lo as i64 * 2) as f64;
                let within = (rank - seen as f64) / *n as f64;
                return Some(lo + (hi - lo) * within);
            }
            seen += n;
        }
        None
    }
}

pub fn minute_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

/// This instance's rollup rows for recent minutes, kept in memory so each flush writes
/// complete values.
pub struct RollupBook {
    instance_id: Arc<str>,
    rows: HashMap<(Uuid, DateTime<Utc>), (attempt_rollup::Model, Histogram, bool)>,
}

impl RollupBook {
    pub fn new(instance_id: Arc<str>) -> Self {
        Self {
            instance_id,
            rows: HashMap::new(),
        }
    }

    pub fn record(&mut self, a: &delivery_attempt::Model) {
        let minute = minute_of(a.started_at);
        let instance = self.instance_id.to_string();
        let entry = self
            .rows
            .entry((a.destination_id, minute))
            .or_insert_with(|| {
                (
                    attempt_rollup::Model {
                        destination_id: a.destination_id,
                        bucket_start: minute,
                        instance_id: instance,
                        tenant_id: a.tenant_id.clone(),
                        attempts: 0,
                        successes: 0,
                        failures: 0,
                        duration_sum_ms: 0,
                        latency_hist: String::new(),
                    },
                    Histogram::default(),
                    true,
                )
            });
        entry.0.attempts += 1;
        if a.outcome == "SUCCESS" {
            entry.0.successes += 1;
        } else {
            entry.0.failures += 1;
        }
        entry.0.duration_sum_ms += a.duration_ms as i64;
        entry.1.add(a.duration_ms as i64);
        entry.2 = true;
    }

    /// Rows changed since the last call; minutes long past are forgotten afterwards.
    pub fn take_dirty(&mut self) -> Vec<attempt_rollup::Model> {
        let mut out = Vec::new();
        for (row, hist, dirty) in self.rows.values_mut() {
            if *dirty {
                row.latency_hist = hist.to_text();
                out.push(row.clone());
                *dirty = false;
            }
        }
        let horizon = minute_of(Utc::now()) - TimeDelta::minutes(10);
        self.rows.retain(|(_, m), _| *m >= horizon);
        out
    }
}

const UPSERT_JSON: &str = "INSERT INTO attempt_rollup \
     SELECT * FROM json_populate_recordset(NULL::attempt_rollup, $1::json) \
     ON CONFLICT (destination_id, bucket_start, instance_id) DO UPDATE SET \
     attempts = EXCLUDED.attempts, successes = EXCLUDED.successes, \
     failures = EXCLUDED.failures, duration_sum_ms = EXCLUDED.duration_sum_ms, \
     latency_hist = EXCLUDED.latency_hist";

pub async fn upsert(
    db: &impl ConnectionTrait,
    rows: &[attempt_rollup::Model],
) -> Result<(), DbErr> {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // One statement text whatever the row count (see `service::bulk`).
        for chunk in rows.chunks(5000) {
            let json = serde_json::to_string(chunk).map_err(|e| DbErr::Custom(e.to_string()))?;
            db.execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                UPSERT_JSON,
                [json.into()],
            ))
            .await?;
        }
        return Ok(());
    }
    for stmt in sqlite_upserts(rows) {
        db.execute_raw(stmt).await?;
    }
    Ok(())
}

/// SQLite: the statements of [`upsert`] (for [`crate::db::sqlite_script`], or to run one by
/// one).
pub fn sqlite_upserts(rows: &[attempt_rollup::Model]) -> Vec<sea_orm::Statement> {
    use attempt_rollup::Column as C;
    rows.chunks(300)
        .map(|chunk| {
            let models: Vec<attempt_rollup::ActiveModel> =
                chunk.iter().cloned().map(Into::into).collect();
            attempt_rollup::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::columns([C::DestinationId, C::BucketStart, C::InstanceId])
                        .update_columns([
                            C::Attempts,
                            C::Successes,
                            C::Failures,
                            C::DurationSumMs,
                            C::LatencyHist,
                        ])
                        .to_owned(),
                )
                .build(sea_orm::DbBackend::Sqlite)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(1), 0);
        assert_eq!(Histogram::bucket(2), 1);
        assert_eq!(Histogram::bucket(7), 6);
        assert_eq!(Histogram::bucket(1_000_000), BOUNDS_MS.len());
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.add(ms);
        }
        let p50 = h.quantile(0.5).unwrap();
        let p95 = h.quantile(0.95).unwrap();
        assert!((40.0..=60.0).contains(&p50), "{p50}");
        assert!((80.0..=100.0).contains(&p95), "{p95}");
        let mut g = Histogram::default();
        g.merge(&h);
        g.merge(&h);
        assert_eq!(g.0.iter().sum::<i64>(), 200);
        assert_eq!(Histogram::parse(&g.to_text()), g);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
