//! Query plans in tests: PostgreSQL's `EXPLAIN (ANALYZE, FORMAT JSON)` (which runs the
//! statement, so a plan's rows are rows read) and SQLite's `EXPLAIN QUERY PLAN`.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;

/// A statement's plan: PostgreSQL's top plan node, or the steps of SQLite's query plan.
pub enum Plan {
    Pg(Value),
    Sqlite(Vec<String>),
}

pub async fn explain(db: &impl ConnectionTrait, sql: &str, values: Vec<sea_orm::Value>) -> Plan {
    let be = db.get_database_backend();
    if be == DbBackend::Postgres {
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let row = db
            .query_one_raw(hookline::db::raw(be, &explain, values))
            .await
            .unwrap()
            .unwrap();
        let plan: Value = row.try_get("", "QUERY PLAN").unwrap();
        Plan::Pg(plan[0]["Plan"].clone())
    } else {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let rows = db
            .query_all_raw(hookline::db::raw(be, &explain, values))
            .await
            .unwrap();
        Plan::Sqlite(
            rows.iter()
                .map(|r| r.try_get::<String>("", "detail").unwrap())
                .collect(),
        )
    }
}

/// [`explain`] of a statement SeaORM built.
pub async fn explain_stmt(db: &impl ConnectionTrait, stmt: Statement) -> Plan {
    let values = stmt.values.map(|v| v.0).unwrap_or_default();
    explain(db, &stmt.sql, values).await
}

/// Every PostgreSQL plan node, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    for p in plan["Plans"].as_array().into_iter().flatten() {
        out.extend(nodes(p));
    }
    out
}

/// The rows every scan of `table` in a PostgreSQL plan produced plus the rows it read and
/// threw away.
pub fn rows_read(plan: &Value, table: &str) -> f64 {
    nodes(plan)
        .into_iter()
        .filter(|n| n["Relation Name"] == table)
        .map(|n| {
            let loops = n["Actual Loops"].as_f64().unwrap_or(1.0);
            let rows: f64 = [
                "Actual Rows",
                "Rows Removed by Filter",
                "Rows Removed by Join Filter",
            ]
            .iter()
            .map(|k| n[k].as_f64().unwrap_or(0.0))
            .sum();
            rows * loops
        })
        .sum()
}

/// How many nodes of `kind` (`"Seq Scan"`, `"Sort"`, …) on `table` (any table: `None`) a
/// PostgreSQL plan holds.
pub fn count_nodes(plan: &Value, kind: &str, table: Option<&str>) -> usize {
    nodes(plan)
        .into_iter()
        .filter(|n| n["Node Type"] == kind && table.is_none_or(|t| n["Relation Name"] == t))
        .count()
}

/// The indexes a PostgreSQL plan scans.
pub fn indexes_used(plan: &Value) -> Vec<String> {
    nodes(plan)
        .into_iter()
        .filter_map(|n| n["Index Name"].as_str().map(str::to_owned))
        .collect()
}

/// The first column of the first row of a query without parameters, if the query succeeds,
/// returns a row, and the value is a `T`.
pub async fn first_value<T: sea_orm::TryGetable>(
    db: &impl ConnectionTrait,
    sql: &str,
) -> Option<T> {
    let be = db.get_database_backend();
    let row = db
        .query_one_raw(hookline::db::raw(be, sql, vec![]))
        .await
        .ok()??;
    row.try_get_by_index(0).ok()
}

/// The one value of a one-row, one-column query without parameters, as an integer.
pub async fn scalar(db: &impl ConnectionTrait, sql: &str) -> i64 {
    first_value(db, sql)
        .await
        .unwrap_or_else(|| panic!("no integer from {sql}"))
}
