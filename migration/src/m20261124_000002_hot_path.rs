//! The delivery hot path: no foreign-key checks on PostgreSQL, and an index of parked
//! deliveries.
//!
//! `idx_delivery_parked`: deliveries not due until something happens (their destination is
//! disabled, or its circuit is open) have `next_attempt_at` NULL. Finding them per destination
//! (unparking) must not scan the destination's history; the index holds only those rows.
//!
//! `delivery → event`, `delivery → destination` and `delivery_attempt → delivery` cost a
//! trigger and a lookup (with a row lock on the parent) for every row the publisher and the
//! completion writer insert: a quarter of PostgreSQL's CPU in the `fanout` benchmark
//! (BENCHMARKS.md). The references hold by construction instead: a delivery is written in the
//! transaction that writes its event, destinations are only ever soft-deleted, attempts are
//! written for deliveries that exist, and retention deletes children before parents (an
//! event only once no delivery refers to it). `subscription → destination` stays.
//!
//! SQLite cannot drop a constraint without rebuilding the table; its checks are in-process
//! index lookups and stay.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const DROP: [(&str, &str); 3] = [
    ("delivery_attempt", "fk_delivery_attempt_delivery"),
    ("delivery", "fk_delivery_event"),
    ("delivery", "fk_delivery_destination"),
];

// Partial indexes have no portable sea-query form; this SQL is valid on SQLite and PostgreSQL.
const IDX_DELIVERY_PARKED: &str = "CREATE INDEX idx_delivery_parked ON delivery (destination_id) \
     WHERE next_attempt_at IS NULL AND completed_at IS NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(IDX_DELIVERY_PARKED).await?;
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        for (table, name) in DROP {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX idx_delivery_parked")
            .await?;
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        db.execute_unprepared(
            "ALTER TABLE delivery_attempt ADD CONSTRAINT fk_delivery_attempt_delivery \
             FOREIGN KEY (delivery_id) REFERENCES delivery (id) ON DELETE CASCADE",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE delivery ADD CONSTRAINT fk_delivery_event \
             FOREIGN KEY (event_id) REFERENCES event (id)",
        )
        .await?;
        db.execute_unprepared(
            "ALTER TABLE delivery ADD CONSTRAINT fk_delivery_destination \
             FOREIGN KEY (destination_id) REFERENCES destination (id)",
        )
        .await?;
        Ok(())
    }
}
