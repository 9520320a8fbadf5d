//! PostgreSQL: a per-tenant counter of changes to the publish rules (`rules_epoch`), kept by
//! triggers, so a publisher may keep a tenant's destinations and subscriptions in memory and
//! still never route an event by rules older than its own insert statement sees.
//!
//! Every committed change that can alter where an event goes or how it is sent — a
//! subscription inserted, updated or deleted; a destination inserted or deleted, or updated
//! in a way that moves its `version` (every user change does), its `enabled` or `deleted_at`,
//! or its sealed secrets (re-sealing under a new key) — bumps the tenant's epoch in the same
//! transaction. The publisher's insert carries the epoch its rules were read at and writes
//! nothing when the tenant's epoch has moved (`service::publisher`): it then reads the rules
//! again. Health updates of the completion writer (status, failures, probe time) leave the
//! epoch alone: they are read from the dispatcher's memory, not from the cached rows.
//!
//! SQLite serves one instance, whose publisher hears of every change in-process
//! (`Hub::rules_generation`): no table there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE rules_epoch (
    tenant_id text PRIMARY KEY,
    epoch bigint NOT NULL
);

CREATE FUNCTION hookline_bump_rules_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rules_epoch AS r (tenant_id, epoch)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET epoch = r.epoch + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscription_rules_epoch
    AFTER INSERT OR UPDATE OR DELETE ON subscription
    FOR EACH ROW EXECUTE FUNCTION hookline_bump_rules_epoch();

CREATE TRIGGER destination_rules_epoch_insert_delete
    AFTER INSERT OR DELETE ON destination
    FOR EACH ROW EXECUTE FUNCTION hookline_bump_rules_epoch();

CREATE TRIGGER destination_rules_epoch_update
    AFTER UPDATE ON destination
    FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version
       OR OLD.enabled IS DISTINCT FROM NEW.enabled
       OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
       OR OLD.signing_secret IS DISTINCT FROM NEW.signing_secret
       OR OLD.previous_secret IS DISTINCT FROM NEW.previous_secret
       OR OLD.http_auth IS DISTINCT FROM NEW.http_auth)
    EXECUTE FUNCTION hookline_bump_rules_epoch();
"#;

const DOWN: &str = r#"
DROP TRIGGER destination_rules_epoch_update ON destination;
DROP TRIGGER destination_rules_epoch_insert_delete ON destination;
DROP TRIGGER subscription_rules_epoch ON subscription;
DROP FUNCTION hookline_bump_rules_epoch();
DROP TABLE rules_epoch;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
