//! Database connections. PostgreSQL: one pool. SQLite: a pool of readers plus a single writer
//! connection, so writes never contend with each other inside the process and readers never
//! wait for writers (WAL).

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct Db {
    /// Queries that only read.
    pub read: DatabaseConnection,
    /// Every write. On SQLite this is one connection: the single writer.
    pub write: DatabaseConnection,
}

impl Db {
    pub fn backend(&self) -> DbBackend {
        self.write.get_database_backend()
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    pub async fn ping(&self) -> Result<(), DbErr> {
        self.read.ping().await
    }
}

pub async fn connect(cfg: &Config) -> Result<Db, DbErr> {
    if cfg.is_postgres() {
        let mut opts = ConnectOptions::new(cfg.database_url.clone());
        opts.max_connections(24)
            .min_connections(2)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let pool = Database::connect(opts).await?;
        return Ok(Db {
            read: pool.clone(),
            write: pool,
        });
    }
    if let Some(path) = sqlite_path(&cfg.database_url)
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", parent.display())))?;
    }
    let synchronous = if cfg.sqlite_synchronous == "FULL" {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    let sqlite = |max: u32| {
        let mut opts = ConnectOptions::new(cfg.database_url.clone());
        opts.max_connections(max)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .create_if_missing(true)
            });
        opts
    };
    // The writer connects first so that the file and WAL mode exist before readers open it.
    let write = Database::connect(sqlite(1)).await?;
    let read = Database::connect(sqlite(8)).await?;
    Ok(Db { read, write })
}

pub async fn migrate(db: &Db) -> Result<(), DbErr> {
    Migrator::up(&db.write, None).await
}

/// Whether every migration this binary knows has been applied.
pub async fn is_migrated(db: &Db) -> Result<bool, DbErr> {
    Ok(Migrator::get_pending_migrations(&db.read).await?.is_empty())
}

fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A raw statement written with PostgreSQL's `$1, $2…` placeholders, rewritten to SQLite's
/// numbered `?1, ?2…` when needed: the SQL text stays one string for both backends.
pub fn raw(
    backend: sea_orm::DbBackend,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> sea_orm::Statement {
    let sql = if backend == DbBackend::Postgres {
        sql.to_string()
    } else {
        sql.replace('$', "?")
    };
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_path() {
        assert_eq!(
            super::sqlite_path("sqlite://data/h.db?mode=rwc"),
            Some("data/h.db")
        );
        assert_eq!(super::sqlite_path("sqlite::memory:"), None);
        assert_eq!(super::sqlite_path("postgres://x"), None);
    }
}
