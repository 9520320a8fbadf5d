//! Health checks shared by `/readyz` and `hookline doctor`: database reachable and migrated,
//! clock agreement with the database, queue lag, and leases nobody renews (a dead
//! dispatcher).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend};
use serde::Serialize;

use crate::db::{Db, is_migrated, raw};
use crate::service::now;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

/// Runs every check. A failing database makes the later checks moot, so they are skipped.
pub async fn run(db: &Db) -> Vec<Check> {
    let mut out = Vec::new();
    if let Err(e) = db.ping().await {
        out.push(check("database", Level::Fail, format!("unreachable: {e}")));
        return out;
    }
    out.push(check(
        "database",
        Level::Ok,
        format!("{:?} reachable", db.backend()),
    ));
    match is_migrated(db).await {
        Ok(true) => out.push(check("migrations", Level::Ok, "all applied")),
        Ok(false) => {
            out.push(check(
                "migrations",
                Level::Fail,
                "pending: run `hookline migrate`",
            ));
            return out;
        }
        Err(e) => {
            out.push(check(
                "migrations",
                Level::Fail,
                format!("cannot read: {e}"),
            ));
            return out;
        }
    }
    if db.backend() == DbBackend::Postgres {
        out.push(match db_now(db).await {
            Ok(t) => {
                let skew = (now() - t).num_milliseconds().abs();
                let level = if skew > 5_000 { Level::Warn } else { Level::Ok };
                check("clock", level, format!("{skew} ms from the database clock"))
            }
            Err(e) => check(
                "clock",
                Level::Warn,
                format!("cannot read database time: {e}"),
            ),
        });
    }
    out.extend(queue_checks(db).await);
    out
}

async fn db_now(db: &Db) -> Result<DateTime<Utc>, sea_orm::DbErr> {
    let row = db
        .read
        .query_one_raw(raw(DbBackend::Postgres, "SELECT now() AS t", vec![]))
        .await?;
    row.ok_or_else(|| sea_orm::DbErr::Custom("no row".into()))?
        .try_get("", "t")
}

async fn queue_checks(db: &Db) -> Vec<Check> {
    let t = now();
    let sql = "SELECT \
        (SELECT COUNT(*) FROM delivery WHERE next_attempt_at <= $1 AND status <> 'DELIVERING') AS due, \
        (SELECT MIN(next_attempt_at) FROM delivery WHERE next_attempt_at <= $1 AND status <> 'DELIVERING') AS oldest, \
        (SELECT COUNT(*) FROM delivery WHERE status = 'DELIVERING' AND completed_at IS NULL \
         AND lease_until < $2) AS stale";
    let stale_before = t - chrono::TimeDelta::seconds(60);
    let row = db
        .read
        .query_one_raw(raw(db.backend(), sql, vec![t.into(), stale_before.into()]))
        .await;
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => return vec![],
        Err(e) => return vec![check("queue", Level::Warn, format!("cannot read: {e}"))],
    };
    let due: i64 = row.try_get("", "due").unwrap_or(0);
    let oldest: Option<DateTime<Utc>> = row.try_get("", "oldest").ok().flatten();
    let stale: i64 = row.try_get("", "stale").unwrap_or(0);
    let lag = oldest.map(|o| (t - o).num_seconds().max(0)).unwrap_or(0);
    let lag_level = if lag > 60 { Level::Warn } else { Level::Ok };
    let stale_level = if stale > 0 { Level::Warn } else { Level::Ok };
    vec![
        check(
            "queue",
            lag_level,
            format!("{due} deliveries due; the oldest has waited {lag} s"),
        ),
        check(
            "dispatcher",
            stale_level,
            if stale > 0 {
                format!("{stale} leases expired over a minute ago: is any dispatcher running?")
            } else {
                "no abandoned leases".to_string()
            },
        ),
    ]
}
