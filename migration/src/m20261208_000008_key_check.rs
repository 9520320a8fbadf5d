//! `key_check`: one row per key that seals secrets in this database — its id (the first four
//! bytes of the key's SHA-256, as in every sealed value) and a known text sealed with it. An
//! instance that cannot open every row lacks a key the database's secrets may be sealed with,
//! and refuses to start (`hookline::crypto::check_keys`): before any destination exists, the
//! row is the only trace of the key the first instance chose.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

sql_migration!(
    ["CREATE TABLE key_check (key_id TEXT PRIMARY KEY, sealed TEXT NOT NULL)"],
    ["DROP TABLE key_check"]
);
