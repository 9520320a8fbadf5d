//! Bulk writes on the hot paths (the completion writer; SQLite's publisher too — PostgreSQL's
//! publisher sends binary arrays, see `service::publisher`), with statement text that does not
//! depend on the number of rows.
//!
//! PostgreSQL gets the rows as one JSON document: `INSERT INTO t SELECT * FROM
//! json_populate_recordset(NULL::t, $1)`. One bind value instead of up to 8 500, and one
//! statement text per table, so the server parses and plans it once per connection instead
//! of once per distinct row count (what multi-row `VALUES` lists cost — see BENCHMARKS.md).
//! SQLite runs in-process, where statements are cheap: it keeps multi-row `VALUES` inserts.

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityName, EntityTrait, ModelTrait, QueryTrait,
};
use serde::Serialize;

use crate::error::{AppError, AppResult};

/// Rows per multi-row INSERT on SQLite: well under its bind-parameter limit.
const SQLITE_CHUNK: usize = 500;
/// Rows per JSON document on PostgreSQL: bounds the size of one statement.
const PG_CHUNK: usize = 5000;

/// Inserts `rows` in as few statements as the backend allows.
pub async fn insert<M, A>(db: &impl ConnectionTrait, rows: Vec<M>) -> AppResult<()>
where
    M: ModelTrait + Serialize,
    A: ActiveModelTrait<Entity = <M as ModelTrait>::Entity> + From<M> + Send,
{
    if rows.is_empty() {
        return Ok(());
    }
    if db.get_database_backend() == DbBackend::Postgres {
        let table = <M as ModelTrait>::Entity::default().table_name();
        let sql = format!(
            "INSERT INTO \"{table}\" SELECT * FROM json_populate_recordset(NULL::\"{table}\", $1::json)"
        );
        for chunk in rows.chunks(PG_CHUNK) {
            let json = serde_json::to_string(chunk)
                .map_err(|e| AppError::internal("encode rows for insert", e))?;
            db.execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql.clone(),
                [json.into()],
            ))
            .await?;
        }
        return Ok(());
    }
    for stmt in sqlite_inserts::<M, A>(rows) {
        db.execute_raw(stmt).await?;
    }
    Ok(())
}

/// SQLite: the statements that insert `rows` (for [`crate::db::sqlite_script`], or to run one
/// by one).
pub fn sqlite_inserts<M, A>(rows: Vec<M>) -> Vec<sea_orm::Statement>
where
    M: ModelTrait,
    A: ActiveModelTrait<Entity = <M as ModelTrait>::Entity> + From<M> + Send,
{
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(SQLITE_CHUNK).map(A::from).collect();
        out.push(<M as ModelTrait>::Entity::insert_many(chunk).build(DbBackend::Sqlite));
    }
    out
}
