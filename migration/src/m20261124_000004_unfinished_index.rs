//! `idx_delivery_dest_status` (every delivery, by destination and status) becomes
//! `idx_delivery_dest_unfinished`: the same keys, only for deliveries not yet finished
//! (`completed_at IS NULL`).
//!
//! Every query that looks deliveries up by destination and status asks for unfinished ones:
//! pending counts, discarding on delete, unparking, releasing leases. Finished deliveries —
//! almost all of them, in time — only made the index grow, and every completion (a non-HOT
//! update of the row) inserted one more entry into it. Now a completion inserts none there,
//! and the index holds the queue, not the history. Listing or replaying deliveries by status
//! goes through `idx_delivery_tenant_dest_created` / `idx_delivery_tenant_created`, which
//! those queries narrow by tenant, destination and time anyway.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Partial indexes have no portable sea-query form; this SQL is valid on SQLite and PostgreSQL.
const UP: [&str; 2] = [
    "DROP INDEX idx_delivery_dest_status",
    "CREATE INDEX idx_delivery_dest_unfinished ON delivery (destination_id, status) \
     WHERE completed_at IS NULL",
];
const DOWN: [&str; 2] = [
    "DROP INDEX idx_delivery_dest_unfinished",
    "CREATE INDEX idx_delivery_dest_status ON delivery (destination_id, status)",
];

sql_migration!(UP, DOWN);
