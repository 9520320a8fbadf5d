//! Initial schema: all six tables and their indexes.
//!
//! Deliberately independent of the `entity` crate so that later entity changes can't alter
//! what this migration does.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn uuid<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).uuid().not_null().to_owned()
}

fn uuid_pk<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .uuid()
        .not_null()
        .primary_key()
        .to_owned()
}

fn string<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).string().not_null().to_owned()
}

fn string_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).string().null().to_owned()
}

fn text<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).text().not_null().to_owned()
}

fn text_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).text().null().to_owned()
}

fn boolean<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().to_owned()
}

fn integer<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).integer().not_null().to_owned()
}

fn integer_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).integer().null().to_owned()
}

fn big_integer<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn big_integer_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

fn timestamp<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn timestamp_null<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

// Partial indexes have no portable sea-query form; this SQL is valid on SQLite and PostgreSQL.
const UX_DESTINATION_TENANT_NAME: &str = "CREATE UNIQUE INDEX ux_destination_tenant_name \
     ON destination (tenant_id, name) WHERE deleted_at IS NULL";
const IDX_DELIVERY_DUE: &str = "CREATE INDEX idx_delivery_due \
     ON delivery (next_attempt_at) WHERE next_attempt_at IS NOT NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();

        // destination
        manager
            .create_table(
                Table::create()
                    .table(Destination::Table)
                    .col(uuid_pk(Destination::Id))
                    .col(string(Destination::TenantId))
                    .col(string(Destination::Name))
                    .col(string_null(Destination::DisplayName))
                    .col(text_null(Destination::Description))
                    .col(string(Destination::Url))
                    .col(boolean(Destination::Enabled))
                    .col(string(Destination::Status))
                    .col(string(Destination::SigningScheme))
                    .col(string_null(Destination::SignatureHeader))
                    .col(string(Destination::SigningSecret))
                    .col(string_null(Destination::PreviousSecret))
                    .col(timestamp_null(Destination::PreviousSecretExpiresAt))
                    .col(text_null(Destination::HttpAuth))
                    .col(text(Destination::Headers))
                    .col(integer(Destination::TimeoutMs))
                    .col(string(Destination::PayloadFormat))
                    .col(integer(Destination::BatchSize))
                    .col(integer(Destination::BatchWindowMs))
                    .col(integer_null(Destination::RateLimitPerSec))
                    .col(integer(Destination::MaxInFlight))
                    .col(boolean(Destination::Ordered))
                    .col(text(Destination::RetrySchedule))
                    .col(integer(Destination::MaxAttempts))
                    .col(big_integer_null(Destination::DiscardAfterSecs))
                    .col(boolean(Destination::Lossy))
                    .col(boolean(Destination::TlsVerify))
                    .col(integer(Destination::ConsecutiveFailures))
                    .col(timestamp_null(Destination::LastSuccessAt))
                    .col(timestamp_null(Destination::LastFailureAt))
                    .col(integer_null(Destination::LastFailedStatusCode))
                    .col(string_null(Destination::LastFailedReason))
                    .col(timestamp_null(Destination::NextAttemptAt))
                    .col(integer(Destination::Version))
                    .col(timestamp(Destination::CreatedAt))
                    .col(timestamp(Destination::UpdatedAt))
                    .col(string(Destination::UpdatedBy))
                    .col(timestamp_null(Destination::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_destination_tenant_created")
                    .table(Destination::Table)
                    .col(Destination::TenantId)
                    .col(Destination::CreatedAt)
                    .col(Destination::Id)
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(UX_DESTINATION_TENANT_NAME).await?;

        // subscription
        manager
            .create_table(
                Table::create()
                    .table(Subscription::Table)
                    .col(uuid_pk(Subscription::Id))
                    .col(string(Subscription::TenantId))
                    .col(uuid(Subscription::DestinationId))
                    .col(text(Subscription::EventTypes))
                    .col(string(Subscription::EventsPolicy))
                    .col(string(Subscription::MinLevel))
                    .col(text_null(Subscription::PayloadFilter))
                    .col(boolean(Subscription::Enabled))
                    .col(timestamp(Subscription::CreatedAt))
                    .col(timestamp(Subscription::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_subscription_destination")
                            .from(Subscription::Table, Subscription::DestinationId)
                            .to(Destination::Table, Destination::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_subscription_destination")
                    .table(Subscription::Table)
                    .col(Subscription::DestinationId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_subscription_tenant")
                    .table(Subscription::Table)
                    .col(Subscription::TenantId)
                    .to_owned(),
            )
            .await?;

        // event
        manager
            .create_table(
                Table::create()
                    .table(Event::Table)
                    .col(uuid_pk(Event::Id))
                    .col(string(Event::TenantId))
                    .col(string(Event::EventType))
                    .col(string(Event::Level))
                    .col(text(Event::Payload))
                    .col(string_null(Event::IdempotencyKey))
                    .col(timestamp(Event::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_event_tenant_created")
                    .table(Event::Table)
                    .col(Event::TenantId)
                    .col(Event::CreatedAt)
                    .col(Event::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_event_tenant_idem")
                    .table(Event::Table)
                    .col(Event::TenantId)
                    .col(Event::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        // delivery
        manager
            .create_table(
                Table::create()
                    .table(Delivery::Table)
                    .col(uuid_pk(Delivery::Id))
                    .col(string(Delivery::TenantId))
                    .col(uuid(Delivery::EventId))
                    .col(uuid(Delivery::DestinationId))
                    .col(string(Delivery::EventType))
                    .col(string(Delivery::Status))
                    .col(integer(Delivery::AttemptCount))
                    .col(timestamp_null(Delivery::NextAttemptAt))
                    .col(timestamp_null(Delivery::LeaseUntil))
                    .col(string_null(Delivery::LeaseOwner))
                    .col(integer_null(Delivery::LastStatusCode))
                    .col(string_null(Delivery::LastError))
                    .col(timestamp(Delivery::CreatedAt))
                    .col(timestamp_null(Delivery::CompletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_delivery_event")
                            .from(Delivery::Table, Delivery::EventId)
                            .to(Event::Table, Event::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_delivery_destination")
                            .from(Delivery::Table, Delivery::DestinationId)
                            .to(Destination::Table, Destination::Id),
                    )
                    .to_owned(),
            )
            .await?;
        db.execute_unprepared(IDX_DELIVERY_DUE).await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_tenant_dest_created")
                    .table(Delivery::Table)
                    .col(Delivery::TenantId)
                    .col(Delivery::DestinationId)
                    .col(Delivery::CreatedAt)
                    .col(Delivery::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_event")
                    .table(Delivery::Table)
                    .col(Delivery::EventId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_tenant_created")
                    .table(Delivery::Table)
                    .col(Delivery::TenantId)
                    .col(Delivery::CreatedAt)
                    .col(Delivery::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_delivery_dest_status")
                    .table(Delivery::Table)
                    .col(Delivery::DestinationId)
                    .col(Delivery::Status)
                    .to_owned(),
            )
            .await?;

        // delivery_attempt
        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempt::Table)
                    .col(uuid_pk(DeliveryAttempt::Id))
                    .col(string(DeliveryAttempt::TenantId))
                    .col(uuid(DeliveryAttempt::DeliveryId))
                    .col(uuid(DeliveryAttempt::DestinationId))
                    .col(uuid(DeliveryAttempt::EventId))
                    .col(string(DeliveryAttempt::EventType))
                    .col(integer(DeliveryAttempt::AttemptNumber))
                    .col(uuid(DeliveryAttempt::RequestId))
                    .col(timestamp(DeliveryAttempt::StartedAt))
                    .col(integer(DeliveryAttempt::DurationMs))
                    .col(integer_null(DeliveryAttempt::ResponseStatus))
                    .col(text_null(DeliveryAttempt::ResponseBody))
                    .col(string_null(DeliveryAttempt::ErrorKind))
                    .col(string_null(DeliveryAttempt::ErrorMessage))
                    .col(string(DeliveryAttempt::Outcome))
                    .col(timestamp_null(DeliveryAttempt::NextAttemptAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_delivery_attempt_delivery")
                            .from(DeliveryAttempt::Table, DeliveryAttempt::DeliveryId)
                            .to(Delivery::Table, Delivery::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_attempt_delivery")
                    .table(DeliveryAttempt::Table)
                    .col(DeliveryAttempt::DeliveryId)
                    .col(DeliveryAttempt::AttemptNumber)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_attempt_dest_started")
                    .table(DeliveryAttempt::Table)
                    .col(DeliveryAttempt::DestinationId)
                    .col(DeliveryAttempt::StartedAt)
                    .to_owned(),
            )
            .await?;

        // attempt_rollup
        manager
            .create_table(
                Table::create()
                    .table(AttemptRollup::Table)
                    .col(uuid(AttemptRollup::DestinationId))
                    .col(timestamp(AttemptRollup::BucketStart))
                    .col(string(AttemptRollup::InstanceId))
                    .col(string(AttemptRollup::TenantId))
                    .col(big_integer(AttemptRollup::Attempts))
                    .col(big_integer(AttemptRollup::Successes))
                    .col(big_integer(AttemptRollup::Failures))
                    .col(big_integer(AttemptRollup::DurationSumMs))
                    .col(text(AttemptRollup::LatencyHist))
                    .primary_key(
                        Index::create()
                            .name("pk_attempt_rollup")
                            .col(AttemptRollup::DestinationId)
                            .col(AttemptRollup::BucketStart)
                            .col(AttemptRollup::InstanceId),
                    )
                    .to_owned(),
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping a table drops its indexes too, on SQLite and PostgreSQL alike.
        for table in [
            AttemptRollup::Table.into_iden(),
            DeliveryAttempt::Table.into_iden(),
            Delivery::Table.into_iden(),
            Event::Table.into_iden(),
            Subscription::Table.into_iden(),
            Destination::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Destination {
    Table,
    Id,
    TenantId,
    Name,
    DisplayName,
    Description,
    Url,
    Enabled,
    Status,
    SigningScheme,
    SignatureHeader,
    SigningSecret,
    PreviousSecret,
    PreviousSecretExpiresAt,
    HttpAuth,
    Headers,
    TimeoutMs,
    PayloadFormat,
    BatchSize,
    BatchWindowMs,
    RateLimitPerSec,
    MaxInFlight,
    Ordered,
    RetrySchedule,
    MaxAttempts,
    DiscardAfterSecs,
    Lossy,
    TlsVerify,
    ConsecutiveFailures,
    LastSuccessAt,
    LastFailureAt,
    LastFailedStatusCode,
    LastFailedReason,
    NextAttemptAt,
    Version,
    CreatedAt,
    UpdatedAt,
    UpdatedBy,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Subscription {
    Table,
    Id,
    TenantId,
    DestinationId,
    EventTypes,
    EventsPolicy,
    MinLevel,
    PayloadFilter,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

// `EventType` must be spelled this way to yield the `event_type` column.
#[allow(clippy::enum_variant_names)]
#[derive(DeriveIden)]
enum Event {
    Table,
    Id,
    TenantId,
    EventType,
    Level,
    Payload,
    IdempotencyKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Delivery {
    Table,
    Id,
    TenantId,
    EventId,
    DestinationId,
    EventType,
    Status,
    AttemptCount,
    NextAttemptAt,
    LeaseUntil,
    LeaseOwner,
    LastStatusCode,
    LastError,
    CreatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempt {
    Table,
    Id,
    TenantId,
    DeliveryId,
    DestinationId,
    EventId,
    EventType,
    AttemptNumber,
    RequestId,
    StartedAt,
    DurationMs,
    ResponseStatus,
    ResponseBody,
    ErrorKind,
    ErrorMessage,
    Outcome,
    NextAttemptAt,
}

#[derive(DeriveIden)]
enum AttemptRollup {
    Table,
    DestinationId,
    InstanceId,
    BucketStart,
    TenantId,
    Attempts,
    Successes,
    Failures,
    DurationSumMs,
    LatencyHist,
}
