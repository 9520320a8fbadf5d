//! One event to one destination: the unit of queueing, leasing and retrying.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "delivery")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub event_id: Uuid,
    pub destination_id: Uuid,
    /// Denormalised from the event for filters and the live stream.
    pub event_type: String,
    /// PENDING, DELIVERING, SUCCEEDED, AWAITING_RETRY, FAILED, DISCARDED
    pub status: String,
    pub attempt_count: i32,
    /// The queue key; NULL once the delivery is finished.
    pub next_attempt_at: Option<DateTimeUtc>,
    pub lease_until: Option<DateTimeUtc>,
    /// Instance id holding the lease.
    pub lease_owner: Option<String>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::event::Entity",
        from = "Column::EventId",
        to = "super::event::Column::Id"
    )]
    Event,
    #[sea_orm(
        belongs_to = "super::destination::Entity",
        from = "Column::DestinationId",
        to = "super::destination::Column::Id"
    )]
    Destination,
    #[sea_orm(has_many = "super::delivery_attempt::Entity")]
    DeliveryAttempt,
}

impl Related<super::event::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Event.def()
    }
}

impl Related<super::destination::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Destination.def()
    }
}

impl Related<super::delivery_attempt::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::DeliveryAttempt.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
