//! SQLite only: parked deliveries leave `idx_delivery_parked`; each destination gets a mark,
//! `parked_from`, at or below the id of every delivery it has parked (NULL: none), and they are
//! found as the range from it in `idx_delivery_tenant_dest_id`. A partial index lists the
//! marked destinations for the recovery sweep.
//!
//! Every publish beside a destination whose circuit is open parks a delivery; on SQLite's one
//! writer the parked index's entry is a page of every such commit, ≈ 11 % of the healthy
//! publishes' p99 in `backlog` (BENCHMARKS.md, "SQLite finds parked deliveries from a mark"). What keeps the mark exact is in
//! `hookline::service::parked`. PostgreSQL, shared by several instances, keeps the index: this
//! migration does nothing there.
//!
//! The marks are set from the parked index before it is dropped: one read of each
//! destination's parked entries.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 4] = [
    "ALTER TABLE destination ADD COLUMN parked_from BLOB",
    "UPDATE destination SET parked_from = (SELECT MIN(p.id) FROM delivery AS p \
     INDEXED BY idx_delivery_parked WHERE p.destination_id = destination.id \
     AND p.next_attempt_at IS NULL AND p.completed_at IS NULL)",
    "CREATE INDEX idx_destination_parked ON destination (id) WHERE parked_from IS NOT NULL",
    "DROP INDEX idx_delivery_parked",
];
const DOWN: [&str; 3] = [
    "CREATE INDEX idx_delivery_parked ON delivery (destination_id) \
     WHERE next_attempt_at IS NULL AND completed_at IS NULL",
    "DROP INDEX idx_destination_parked",
    "ALTER TABLE destination DROP COLUMN parked_from",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        crate::execute_all(manager, &UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        crate::execute_all(manager, &DOWN).await
    }
}
