//! An event subscription (GraphQL `EventSubscription`): which events a destination receives.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscription")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub destination_id: Uuid,
    /// JSON text: array of event type patterns.
    #[sea_orm(column_type = "Text")]
    pub event_types: String,
    /// INCLUDE, EXCLUDE
    pub events_policy: String,
    /// DEBUG, INFO, WARN, ERROR, CRITICAL
    pub min_level: String,
    /// JSON text.
    #[sea_orm(column_type = "Text", nullable)]
    pub payload_filter: Option<String>,
    /// jq program over `{id type level createdAt data}`; the event passes when it yields `true`.
    #[sea_orm(column_type = "Text", nullable)]
    pub filter: Option<String>,
    pub enabled: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::destination::Entity",
        from = "Column::DestinationId",
        to = "super::destination::Column::Id",
        on_delete = "Cascade"
    )]
    Destination,
}

impl Related<super::destination::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Destination.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
