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

pub async fn connect(cfg: &Config) -> Result<Db, DbErr> {
    if cfg.is_postgres() {
        let mut opts = ConnectOptions::new(cfg.database_url.clone());
        let port = url::Url::parse(&cfg.database_url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(5432);
        let plain = loopback_without_sslmode(&cfg.database_url);
        opts.max_connections(24)
            .min_connections(2)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false)
            .map_sqlx_postgres_opts(move |o| {
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
