//! `idx_delivery_dest_unfinished` (every unfinished delivery, by destination and status)
//! becomes `idx_delivery_dest_queued`: the same keys, only for unfinished deliveries that have a
//! time to be attempted at (`next_attempt_at IS NOT NULL`). Parked deliveries — a failing
//! destination's, waiting with no time until a probe closes its circuit — are left to
//! `idx_delivery_parked`, which already holds exactly them (`next_attempt_at IS NULL AND
//! completed_at IS NULL`) and is what the probe, the recovery sweep and unparking read.
//!
//! Every publish beside a destination whose circuit is open writes one parked delivery; on
//! SQLite's single writer each of its index entries in the middle of an index keyed by
//! destination costs the commit, and the healthy publishes' latency with it
//! (this entry costs ≈ 10 % of the healthy p99 in the `backlog` benchmark). The
//! two indexes together still hold every unfinished delivery once: pending counts and the
//! discards of a deleted destination read both (`stats::pending_counts`,
//! `destinations::delete`), and releasing what an open circuit held reads each in its own
//! statement (`dispatch::store::release_held`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Partial indexes have no portable sea-query form; this SQL is valid on SQLite and PostgreSQL.
const UP: [&str; 2] = [
    "DROP INDEX idx_delivery_dest_unfinished",
    "CREATE INDEX idx_delivery_dest_queued ON delivery (destination_id, status) \
     WHERE completed_at IS NULL AND next_attempt_at IS NOT NULL",
];
const DOWN: [&str; 2] = [
    "DROP INDEX idx_delivery_dest_queued",
    "CREATE INDEX idx_delivery_dest_unfinished ON delivery (destination_id, status) \
     WHERE completed_at IS NULL",
];

sql_migration!(UP, DOWN);
