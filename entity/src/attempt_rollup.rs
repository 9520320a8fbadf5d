//! Per-destination, per-minute attempt counters, so stats and metrics don't scan attempt history.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "attempt_rollup")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub destination_id: Uuid,
    /// Start of the minute.
    #[sea_orm(primary_key, auto_increment = false)]
    pub bucket_start: DateTimeUtc,
    /// The instance that counted these attempts: each writes only its own rows.
    #[sea_orm(primary_key, auto_increment = false)]
    pub instance_id: String,
    pub tenant_id: String,
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    pub duration_sum_ms: i64,
    /// JSON text: array of counters per latency bucket (see `dispatch::rollup::BOUNDS_MS`).
    #[sea_orm(column_type = "Text")]
    pub latency_hist: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
