pub use sea_orm_migration::prelude::*;

mod m20261124_000001_initial;
mod m20261124_000002_hot_path;
mod m20261124_000003_rules_epoch;
mod m20261124_000004_unfinished_index;
mod m20261125_000005_id_keyed_indexes;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_initial::Migration),
            Box::new(m20261124_000002_hot_path::Migration),
            Box::new(m20261124_000003_rules_epoch::Migration),
            Box::new(m20261124_000004_unfinished_index::Migration),
            Box::new(m20261125_000005_id_keyed_indexes::Migration),
        ]
    }
}
