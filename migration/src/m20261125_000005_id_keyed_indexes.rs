//! Listing indexes keyed the way listings read, and an idempotency index of keyed events only.
//!
//! Events and deliveries are listed newest first by id (UUIDv7: id order is creation order),
//! per tenant and optionally per destination, `LIMIT` a page (`service::page`). The indexes
//! that served them were keyed `(tenant_id, [destination_id,] created_at, id)`: in that order
//! an `ORDER BY id` is not index order, so PostgreSQL either read and sorted every row of the
//! tenant or destination for one page, or walked the primary key backwards filtering out
//! other tenants' rows; SQLite sorted in a temporary B-tree. Keyed `(tenant_id,
//! [destination_id,] id)` they hand back a page in order and stop, and each entry is 8 bytes
//! narrower. The `since`/`until` filters on `created_at` become id ranges on the same keys
//! (`service::id_window`), so a time window stays an index range.
//!
//! `ux_event_tenant_idem` held one entry per event, `(tenant_id, NULL)` for every event
//! published without an idempotency key. Only keyed events can conflict or be looked up by
//! key, so the index now holds only those: a keyless publish inserts one index entry less.
//! A lookup (`idempotency_key IN (...)`) implies the index's `idempotency_key IS NOT NULL`
//! on both databases, and uniqueness among keyed events is enforced as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// Partial indexes have no portable sea-query form; this SQL is valid on SQLite and PostgreSQL.
const UP: [&str; 8] = [
    "DROP INDEX ux_event_tenant_idem",
    "CREATE UNIQUE INDEX ux_event_tenant_idem ON event (tenant_id, idempotency_key) \
     WHERE idempotency_key IS NOT NULL",
    "DROP INDEX idx_event_tenant_created",
    "CREATE INDEX idx_event_tenant_id ON event (tenant_id, id)",
    "DROP INDEX idx_delivery_tenant_created",
    "CREATE INDEX idx_delivery_tenant_id ON delivery (tenant_id, id)",
    "DROP INDEX idx_delivery_tenant_dest_created",
    "CREATE INDEX idx_delivery_tenant_dest_id ON delivery (tenant_id, destination_id, id)",
];
const DOWN: [&str; 8] = [
    "DROP INDEX idx_delivery_tenant_dest_id",
    "CREATE INDEX idx_delivery_tenant_dest_created \
     ON delivery (tenant_id, destination_id, created_at, id)",
    "DROP INDEX idx_delivery_tenant_id",
    "CREATE INDEX idx_delivery_tenant_created ON delivery (tenant_id, created_at, id)",
    "DROP INDEX idx_event_tenant_id",
    "CREATE INDEX idx_event_tenant_created ON event (tenant_id, created_at, id)",
    "DROP INDEX ux_event_tenant_idem",
    "CREATE UNIQUE INDEX ux_event_tenant_idem ON event (tenant_id, idempotency_key)",
];

sql_migration!(UP, DOWN);
