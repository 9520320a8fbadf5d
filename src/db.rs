//! Database connections. PostgreSQL: one pool. SQLite: a pool of readers plus a single writer
//! connection, so writes never contend with each other inside the process and readers never
//! wait for writers (WAL).

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::PgSslMode;
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

    /// Connections open to the database: PostgreSQL's one pool, or SQLite's readers and
    /// its writer.
    pub fn open_connections(&self) -> u32 {
        if self.is_postgres() {
            return self.write.get_postgres_connection_pool().size();
        }
        self.read.get_sqlite_connection_pool().size()
            + self.write.get_sqlite_connection_pool().size()
    }

    pub async fn ping(&self) -> Result<(), DbErr> {
        self.read.ping().await
    }

    /// Closes the pools at shutdown, each connection with a proper goodbye (PostgreSQL logged
    /// "Connection reset by peer" for every connection a stopped server left open). Bounded:
    /// a connection still held elsewhere after `within` is left to the process exit.
    pub async fn close(&self, within: std::time::Duration) {
        let both = async {
            for c in [&self.write, &self.read] {
                if let Err(e) = c.close_by_ref().await {
                    tracing::debug!(error = %e, "closing a database pool");
                }
            }
        };
        if tokio::time::timeout(within, both).await.is_err() {
            tracing::debug!("database pools still busy at shutdown; leaving them to the exit");
        }
    }
}

/// Settings of every PostgreSQL session Hookline opens (sent with the connection's startup
/// packet: no round trip).
///
/// `enable_seqscan = off`: every statement Hookline runs on its own is written to be an index
/// lookup or an index range. Each is prepared once per connection, and PostgreSQL keeps the
/// generic plan it settles on after five executions for as long as the connection lives (or
/// until the table is next analyzed). Tables start empty, and at a few hundred rows a
/// sequential scan is the cheaper generic plan for the completion writer's update and for
/// the claim's lookup of the rows it picked. Kept, such a plan reads the whole `delivery`
/// table on every flush or claim: 150–200 ms a flush once the table holds 100 000 rows,
/// doubling PostgreSQL's CPU for the whole run in about two `backlog` runs out of five
/// (BENCHMARKS.md, "PostgreSQL sessions price out sequential scans"). With sequential scans
/// priced out the planner takes the index
/// at any size; a table without a usable index is still read sequentially.
pub const SESSION_SETTINGS: [(&str, &str); 1] = [("enable_seqscan", "off")];

pub async fn connect(cfg: &Config) -> Result<Db, DbErr> {
    if cfg.is_postgres() {
        let mut opts = ConnectOptions::new(cfg.database_url.clone());
        let port = url::Url::parse(&cfg.database_url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(5432);
        let plain = loopback_without_sslmode(&cfg.database_url);
        // See `config::default_db_max_connections`.
        opts.max_connections(cfg.db_max_connections)
            .min_connections(2.min(cfg.db_max_connections))
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            // SeaORM's default pings a connection every time it leaves the pool: a round trip
            // before every statement. Only one idle long enough to have been dropped is pinged.
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            .sqlx_logging(false)
            .map_sqlx_postgres_opts(move |o| {
                // See `SESSION_SETTINGS`.
                let o = o.options(SESSION_SETTINGS);
                if plain {
                    o.ssl_mode(PgSslMode::Disable)
                } else {
                    o
                }
            })
            .map_sqlx_postgres_pool_opts(move |p| {
                p.after_connect(move |_, _| {
                    Box::pin(async move {
                        nodelay::to_port(port);
                        Ok(())
                    })
                })
            });
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
            // A file in this process cannot hang up: no ping (a hand-off to SQLite's thread)
            // each time a connection leaves the pool.
            .test_before_acquire(false)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .create_if_missing(true)
                    // Checkpoints run in the background (`spawn_sqlite_checkpointer`); a
                    // connection runs one by itself only past this backstop.
                    .pragma("wal_autocheckpoint", SQLITE_WAL_BACKSTOP_PAGES.to_string())
            });
        opts
    };
    // The writer connects first so that the file and WAL mode exist before readers open it.
    let write = Database::connect(sqlite(1)).await?;
    let read = Database::connect(sqlite(8)).await?;
    Ok(Db { read, write })
}

/// SQLite: the WAL pages after which a committing connection checkpoints by itself (≈ 40 MiB
/// at SQLite's 4 KiB pages). SQLite's default is 1 000, and its checkpoint runs inside the
/// commit that crosses the line: on the single writer, so that commit and every publish
/// queued behind it would wait while the WAL is copied into the database and both files are
/// synced (up to ten times a second under load). [`spawn_sqlite_checkpointer`] does that
/// work on a reader connection instead; this limit only bounds the WAL should it fall behind.
pub const SQLITE_WAL_BACKSTOP_PAGES: u32 = 10_000;

/// How often [`spawn_sqlite_checkpointer`] checkpoints. Often, so that each checkpoint is
/// short: while one copies and syncs, the publishes that commit meanwhile wait longer (on two
/// cores), and the longer it runs, the more of them do. Against 250 ms, every 100 ms takes
/// ≈ 20 % off the healthy p99 of `backlog` for ≈ 3 % more CPU; every second doubles it
/// (BENCHMARKS.md, "SQLite checkpoints in the background").
pub const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// SQLite: copies the WAL into the database every [`SQLITE_CHECKPOINT_EVERY`] from a reader
/// connection, until `shutdown`. A `PASSIVE` checkpoint never blocks the writer or the
/// readers: it copies what no reader still needs (the rest next time) and, with
/// `synchronous=NORMAL`, syncs the WAL before and the database after, as the writer's own
/// checkpoints did. `hookline_sqlite_wal_pending_pages` in `/metrics` shows what the last one
/// had to leave behind. Nothing to do on PostgreSQL.
pub fn spawn_sqlite_checkpointer(db: &Db, shutdown: tokio_util::sync::CancellationToken) {
    if db.is_postgres() {
        return;
    }
    let read = db.read.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SQLITE_CHECKPOINT_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            match sqlite_checkpoint(&read).await {
                Ok(pending) => {
                    metrics::gauge!("hookline_sqlite_wal_pending_pages").set(pending as f64)
                }
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed"),
            }
        }
    });
}

/// One `PASSIVE` checkpoint; returns the WAL pages it could not copy yet.
async fn sqlite_checkpoint(db: &DatabaseConnection) -> Result<i64, DbErr> {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".into()))?;
    // (busy, pages in the WAL, pages copied); -1 for both counts when not in WAL mode.
    let log: i64 = row.try_get_by_index(1)?;
    let copied: i64 = row.try_get_by_index(2)?;
    Ok((log - copied).max(0))
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

/// SQLite: runs `stmts` as one transaction in **one** call to the connection's thread —
/// `BEGIN; s1; s2; …; COMMIT` as a single script. Each statement otherwise costs a hand-off to
/// sqlx's SQLite thread and back, and the one writer connection sits idle, held, during every
/// hand-off: at 8 000 publishes/s the publishes would wait ≈ 1 ms per group for it
/// (BENCHMARKS.md, "SQLite runs each transaction as one script"). Only statements that return nothing belong here, with anonymous `?`
/// placeholders (SeaORM's builders write those; numbered `?N` ones would bind by absolute
/// position across the script and are refused).
///
/// If a statement fails, the script stops there and the transaction is rolled back before the
/// connection goes back to the pool; a connection that cannot say whether it rolled back, or
/// whose call is abandoned midway, is closed instead (closing rolls back).
pub async fn sqlite_script(
    db: &DatabaseConnection,
    stmts: Vec<sea_orm::Statement>,
) -> Result<(), DbErr> {
    use sea_orm::sqlx;
    if stmts.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("BEGIN;\n");
    let mut values = Vec::new();
    for s in stmts {
        if s.values.as_ref().is_some_and(|v| !v.0.is_empty()) && numbered_placeholder(&s.sql) {
            return Err(DbErr::Custom(format!(
                "a script statement uses numbered placeholders: {}",
                s.sql
            )));
        }
        sql.push_str(&s.sql);
        sql.push_str(";\n");
        values.extend(s.values.map(|v| v.0).unwrap_or_default());
    }
    sql.push_str("COMMIT;");
    let err = |e: sqlx::Error| DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)));
    let pool = db.get_sqlite_connection_pool();
    let mut conn = Armed(Some(pool.acquire().await.map_err(|e| {
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
    })?));
    let c = conn.0.as_mut().expect("armed");
    let res = sqlx::query_with(
        sqlx::AssertSqlSafe(sql),
        sea_query_sqlx::SqlxValues(sea_orm::sea_query::Values(values)),
    )
    .execute(&mut **c)
    .await;
    if let Err(e) = res {
        // Stopped inside the transaction (or before it began: then there is nothing to roll
        // back, which SQLite reports as an error of its own).
        match sqlx::query("ROLLBACK").execute(&mut **c).await {
            Ok(_) => {}
            Err(r) if r.to_string().contains("no transaction is active") => {}
            Err(_) => return Err(err(e)), // `conn` stays armed: closed on drop
        }
        conn.disarm();
        return Err(err(e));
    }
    conn.disarm();
    Ok(())
}

/// A pooled connection that is closed, not returned, unless disarmed: a script abandoned
/// midway (its future dropped) may have left a transaction open on it.
struct Armed(Option<sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::Sqlite>>);

impl Armed {
    fn disarm(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.close_on_drop();
        }
    }
}

/// Whether `sql` has a `?N` placeholder (outside quotes).
fn numbered_placeholder(sql: &str) -> bool {
    let mut quote = None;
    let b = sql.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match (quote, c) {
            (None, b'\'' | b'"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, b'?') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return true,
            _ => {}
        }
    }
    false
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

/// sqlx 0.9.0 leaves Nagle's algorithm on for its TCP connections (upstream
/// transact-rs/sqlx#4335, fixed after that release). A statement that leaves in two segments
/// then waits for the server's delayed ACK: 40 ms. The `single` benchmark on PostgreSQL showed
/// it as publish p90 53 ms against 11 ms over a Unix socket. Until sqlx sets TCP_NODELAY
/// itself, every new pool connection sets it on this process's TCP sockets to the database
/// port (on any other socket it would be harmless too: the HTTP clients set it already).
mod nodelay {
    #[cfg(target_os = "linux")]
    pub fn to_port(port: u16) {
        use std::os::fd::BorrowedFd;
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor is only borrowed for two socket options. If another
            // thread closes it meanwhile, the calls fail with EBADF (or, if the number was
            // reused at once, touch a socket for which TCP_NODELAY is harmless).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&fd);
            let to_db = sock
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.port() == port);
            if to_db {
                let _ = sock.set_tcp_nodelay(true);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn to_port(_port: u16) {}
}

/// A PostgreSQL URL whose host is this machine (`localhost`, 127.0.0.0/8, `::1`) and that
/// names no `sslmode`. Such connections go without TLS: the traffic never leaves the machine,
/// and the default (`prefer`) would encrypt every batch in both processes for nothing — most
/// distributions' PostgreSQL packages turn `ssl` on. An explicit `sslmode` is always obeyed.
fn loopback_without_sslmode(database_url: &str) -> bool {
    let Ok(u) = url::Url::parse(database_url) else {
        return false;
    };
    let loopback = match u.host() {
        // `postgres:` is not a special scheme to `url`: an IPv4 host arrives as a domain.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    loopback
        && !u
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("sslmode") || k.eq_ignore_ascii_case("ssl-mode"))
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
    use sea_orm::{Statement, Value};

    /// A one-connection SQLite pool, as the writer has, with a table `t (id PRIMARY KEY, v)`.
    async fn writer(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let mut opts = ConnectOptions::new(url);
        // As the writer's: no ping when a connection is taken from the pool.
        opts.max_connections(1)
            .test_before_acquire(false)
            .sqlx_logging(false);
        let db = Database::connect(opts).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .await
            .unwrap();
        db
    }

    fn insert(id: i64, v: &str) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, v) VALUES (?, ?)",
            [Value::from(id), Value::from(v)],
        )
    }

    async fn rows(db: &DatabaseConnection) -> Vec<(i64, String)> {
        db.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT id, v FROM t ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get("", "id").unwrap(), r.try_get("", "v").unwrap()))
        .collect()
    }

    #[tokio::test]
    async fn a_script_binds_each_statements_values_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let db = writer(&dir).await;
        let update = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "UPDATE t SET v = ? WHERE id = ?",
            [Value::from("b2"), Value::from(2i64)],
        );
        super::sqlite_script(
            &db,
            vec![insert(1, "a"), insert(2, "b"), update, insert(3, "c")],
        )
        .await
        .unwrap();
        assert_eq!(
            rows(&db).await,
            [(1, "a".into()), (2, "b2".into()), (3, "c".into())]
        );
    }

    #[tokio::test]
    async fn a_failing_script_writes_nothing_and_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = writer(&dir).await;
        super::sqlite_script(&db, vec![insert(1, "a")])
            .await
            .unwrap();
        // The third statement breaks the primary key: the two before it are rolled back.
        let err = super::sqlite_script(&db, vec![insert(2, "b"), insert(3, "c"), insert(1, "x")])
            .await
            .unwrap_err();
        assert!(
            matches!(
                crate::error::AppError::from(err),
                crate::error::AppError::Conflict(_)
            ),
            "a unique violation reads as a conflict, as from SeaORM's own statements"
        );
        assert_eq!(rows(&db).await, [(1, "a".into())]);
        // The one connection went back to the pool outside any transaction: a plain BEGIN
        // (SeaORM's) and another script both work on it.
        let txn = sea_orm::TransactionTrait::begin(&db).await.unwrap();
        txn.execute_raw(insert(4, "d")).await.unwrap();
        txn.commit().await.unwrap();
        super::sqlite_script(&db, vec![insert(5, "e")])
            .await
            .unwrap();
        assert_eq!(
            rows(&db).await,
            [(1, "a".into()), (4, "d".into()), (5, "e".into())]
        );
    }

    #[tokio::test]
    async fn numbered_placeholders_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = writer(&dir).await;
        let numbered = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            [Value::from(9i64), Value::from("z")],
        );
        let err = super::sqlite_script(&db, vec![insert(1, "a"), numbered])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("numbered placeholders"), "{err}");
        assert!(rows(&db).await.is_empty());
        assert!(!super::numbered_placeholder(
            "SELECT '?1' AS q, \"a?2\" FROM t WHERE x = ?"
        ));
        assert!(super::numbered_placeholder("SELECT 1 WHERE x = ?12"));
    }

    #[tokio::test]
    async fn an_abandoned_script_is_all_or_nothing_and_the_pool_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let db = writer(&dir).await;
        let many: Vec<Statement> = (0..2000).map(|i| insert(i, "x")).collect();
        let pool = db.get_sqlite_connection_pool();
        // The connection of the set-up goes back to the pool in a task of its own.
        for _ in 0..1000 {
            if pool.num_idle() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(pool.num_idle(), 1);
        {
            // Dropped after its first poll, while SQLite's thread runs it.
            let script = super::sqlite_script(&db, many);
            tokio::pin!(script);
            assert!(futures_util::poll!(script.as_mut()).is_pending());
            assert_eq!(pool.num_idle(), 0, "the script holds the connection");
        }
        super::sqlite_script(&db, vec![insert(5000, "after")])
            .await
            .unwrap();
        let got = rows(&db).await;
        assert!(
            got.len() == 1 || got.len() == 2001,
            "the abandoned script is whole or absent: {} rows",
            got.len()
        );
        assert_eq!(got.last().unwrap(), &(5000, "after".to_string()));
    }

    #[test]
    fn loopback_urls_without_sslmode_skip_tls() {
        use super::loopback_without_sslmode as plain;
        assert!(plain("postgres://postgres@127.0.0.1:5432/hookline"));
        assert!(plain("postgres://u:p@localhost/hookline"));
        assert!(plain(
            "postgresql://u@[::1]:5433/hookline?application_name=x"
        ));
        assert!(plain("postgres://u@127.0.0.2/hookline"));
        assert!(!plain("postgres://u@127.0.0.1/hookline?sslmode=require"));
        assert!(!plain("postgres://u@localhost/hookline?sslmode=prefer"));
        assert!(!plain("postgres://u@db.internal/hookline"));
        assert!(!plain("postgres://u@10.0.0.5/hookline"));
        assert!(!plain("not a url"));
    }

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
