//! jq programs: a subscription's `filter` (which events it lets through) and a destination's
//! `transform` (the request body it sends). Both are the program text as saved; NULL means
//! none. Plain nullable text columns, so adding them rewrites no rows on either database.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: [&str; 2] = [
    "ALTER TABLE subscription ADD COLUMN filter TEXT",
    "ALTER TABLE destination ADD COLUMN transform TEXT",
];
const DOWN: [&str; 2] = [
    "ALTER TABLE destination DROP COLUMN transform",
    "ALTER TABLE subscription DROP COLUMN filter",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, &UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, &DOWN).await
    }
}
