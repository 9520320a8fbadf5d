pub use sea_orm_migration::prelude::*;

/// `impl MigrationTrait for Migration` that runs `$up` (and `$down` to undo it), one SQL
/// statement after another.
macro_rules! sql_migration {
    ($up:expr, $down:expr) => {
        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                crate::execute_all(manager, &$up).await
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                crate::execute_all(manager, &$down).await
            }
        }
    };
}

mod m20261124_000001_initial;
mod m20261124_000002_hot_path;
mod m20261124_000003_rules_epoch;
mod m20261124_000004_unfinished_index;
mod m20261125_000005_id_keyed_indexes;
mod m20261207_000006_queued_index;
mod m20261207_000007_parked_mark;
mod m20261208_000008_key_check;
mod m20261208_000009_jq_programs;

pub struct Migrator;

/// Runs `sql`, one statement after another, on the migration's connection.
async fn execute_all(manager: &SchemaManager<'_>, sql: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for s in sql {
        db.execute_unprepared(s).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_initial::Migration),
            Box::new(m20261124_000002_hot_path::Migration),
            Box::new(m20261124_000003_rules_epoch::Migration),
            Box::new(m20261124_000004_unfinished_index::Migration),
            Box::new(m20261125_000005_id_keyed_indexes::Migration),
            Box::new(m20261207_000006_queued_index::Migration),
            Box::new(m20261207_000007_parked_mark::Migration),
            Box::new(m20261208_000008_key_check::Migration),
            Box::new(m20261208_000009_jq_programs::Migration),
        ]
    }
}
