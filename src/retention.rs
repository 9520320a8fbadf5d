//! Retention: finished deliveries, their attempts and orphaned events older than the
//! retention period are deleted in small batches in the background; payloads can be blanked
//! earlier than metadata. Batches are short so the purge never holds up dispatch (on SQLite
//! it shares the single writer).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use uuid::Uuid;

use crate::db::raw;
use crate::service::{now, uuid_floor};
use crate::state::AppState;

const BATCH: i64 = 1000;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub attempts: u64,
    pub deliveries: u64,
    pub events: u64,
    pub payloads: u64,
}

/// Runs one full purge pass in batches.
pub async fn purge(
    db: &DatabaseConnection,
    keep: Duration,
    keep_payloads: Duration,
    at: DateTime<Utc>,
) -> Result<Purged, DbErr> {
    let cutoff = uuid_floor(at - TimeDelta::from_std(keep).unwrap_or(TimeDelta::days(30)));
    let payload_cutoff =
        uuid_floor(at - TimeDelta::from_std(keep_payloads).unwrap_or(TimeDelta::days(30)));
    let attempts = batches(
        db,
        "DELETE FROM delivery_attempt WHERE id IN \
         (SELECT id FROM delivery_attempt WHERE id < $1 LIMIT $2)",
        cutoff,
    )
    .await?;
    let deliveries = batches(
        db,
        "DELETE FROM delivery WHERE id IN (SELECT id FROM delivery WHERE id < $1 \
         AND status IN ('SUCCEEDED', 'FAILED', 'DISCARDED') LIMIT $2)",
        cutoff,
    )
    .await?;
    let events = batches(
        db,
        "DELETE FROM event WHERE id IN (SELECT e.id FROM event e WHERE e.id < $1 \
         AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.event_id = e.id) LIMIT $2)",
        cutoff,
    )
    .await?;
    // A payload is blanked only once nothing still needs to send it.
    let payloads = batches(
        db,
        "UPDATE event SET payload = 'null' WHERE id IN (SELECT e.id FROM event e \
         WHERE e.id < $1 AND e.payload <> 'null' AND NOT EXISTS (SELECT 1 FROM delivery d \
         WHERE d.event_id = e.id AND d.status NOT IN ('SUCCEEDED', 'FAILED', 'DISCARDED')) \
         LIMIT $2)",
        payload_cutoff,
    )
    .await?;
    Ok(Purged {
        attempts,
        deliveries,
        events,
        payloads,
    })
}

async fn batches(db: &DatabaseConnection, sql: &str, cutoff: Uuid) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let mut total = 0;
    loop {
        let res = db
            .execute_raw(raw(backend, sql, vec![cutoff.into(), BATCH.into()]))
            .await?;
        total += res.rows_affected();
        if res.rows_affected() < BATCH as u64 {
            return Ok(total);
        }
        // Let the dispatcher's writes in between batches.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Purges every `every` until shutdown.
pub fn spawn(st: AppState) {
    let Some(keep) = st.config.retention.keep else {
        return;
    };
    let keep_payloads = st.config.retention.keep_payloads.unwrap_or(keep).min(keep);
    let every = st.config.retention.every;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = st.shutdown.cancelled() => return,
            }
            match purge(&st.db.write, keep, keep_payloads, now()).await {
                Ok(p) if p != Purged::default() => tracing::info!(?p, "retention purge"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention purge failed"),
            }
        }
    });
}
