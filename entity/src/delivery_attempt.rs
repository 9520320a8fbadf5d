//! One HTTP attempt of a delivery, with its outcome (delivery history).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "delivery_attempt")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub delivery_id: Uuid,
    pub destination_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub attempt_number: i32,
    /// Shared by the deliveries of one batched request.
    pub request_id: Uuid,
    pub started_at: DateTimeUtc,
    pub duration_ms: i32,
    pub response_status: Option<i32>,
    /// First 4 KiB of the response body.
    #[sea_orm(column_type = "Text", nullable)]
    pub response_body: Option<String>,
    /// TIMEOUT, CONNECT, TLS, DNS, HTTP_STATUS, BLOCKED_TARGET, INVALID_RESPONSE
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// SUCCESS, FAILURE
    pub outcome: String,
    pub next_attempt_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::delivery::Entity",
        from = "Column::DeliveryId",
        to = "super::delivery::Column::Id",
        on_delete = "Cascade"
    )]
    Delivery,
}

impl Related<super::delivery::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Delivery.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
