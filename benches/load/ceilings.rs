//! `--scenario ceilings`: the machine's own ceilings, measured the way the reference figures in
//! BENCHMARKS.md state them, so that figures from machines of different speed can be set side by side. No Hookline code
//! runs here: these are what the hardware, the database and the HTTP stack allow at most.
//!
//! - `http`: a reqwest client (as the server's sender is built: rustls, pooled keep-alive
//!   connections) POSTs ~300-byte bodies to this bench's receiver (axum, answering 204) from
//!   64 tasks. The reference figure is against nginx; this receiver runs in the same process.
//! - PostgreSQL / SQLite: an event costs an insert of the event and its delivery, then an
//!   insert of an attempt and an update of the delivery (Hookline's minimum per delivered
//!   event), with primary keys only. `two commits per event`: each pair is its own
//!   transaction, from 32 connections (PostgreSQL) or the one writer connection (SQLite).
//!   `50 events per commit`: the same rows, 50 events per transaction, from 4 connections
//!   (PostgreSQL) or the one writer (SQLite, WAL, `synchronous=NORMAL`).
//!
//! Each figure is counted over a fixed time (`--duration`, default 5 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sea_orm::sqlx;
use uuid::Uuid;

use super::{Args, DbKind, Receiver, Res, Run};

const PAYLOAD: &str = r#"{"order":{"id":"ord_000000000000","customer":"cus_000000000000","currency":"EUR","total":12999,"items":[{"sku":"sku_00000001","qty":1,"price":4999},{"sku":"sku_00000002","qty":2,"price":4000}],"shipping":{"method":"express","country":"DE"},"note":"ceiling measurement"}}"#;
const BATCH: usize = 50;

/// Runs `work` on `tasks` concurrent tasks for `secs` seconds; each call returns how many
/// events it completed. Returns events per second.
async fn for_a_while<F, Fut>(tasks: usize, secs: f64, work: F) -> Res<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<u64>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                done.fetch_add(work(t).await?, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    // Count what finished within the window only.
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(n as f64 / elapsed)
}

async fn http(secs: f64) -> Res<f64> {
    let recv = Receiver::start(StatusCode::NO_CONTENT).await?;
    let url = recv.url(0);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    for_a_while(64, secs, move |_| {
        let req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(PAYLOAD);
        async move {
            let r = req.send().await.map_err(|e| format!("http ceiling: {e}"))?;
            if r.status() != StatusCode::NO_CONTENT {
                return Err(format!("http ceiling: receiver answered {}", r.status()));
            }
            Ok(1)
        }
    })
    .await
}

const PG_TABLES: &str = "
CREATE TABLE event (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, type text NOT NULL,
    payload jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE delivery (id uuid PRIMARY KEY, event_id uuid NOT NULL, status text NOT NULL,
    attempt_count int NOT NULL, created_at timestamptz NOT NULL, completed_at timestamptz);
CREATE TABLE attempt (id uuid PRIMARY KEY, delivery_id uuid NOT NULL, status int NOT NULL,
    duration_ms int NOT NULL, started_at timestamptz NOT NULL);";

/// A ceiling counts only work done: every delivery of the batch must have been updated.
fn all_updated(rows: u64, n: usize) -> Res<()> {
    if rows == n as u64 {
        Ok(())
    } else {
        Err(format!(
            "ceiling: the update reached {rows} of {n} deliveries"
        ))
    }
}

/// Rows for `n` events: (event ids, delivery ids, attempt ids).
fn ids(n: usize) -> (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) {
    let g = || (0..n).map(|_| Uuid::now_v7()).collect::<Vec<_>>();
    (g(), g(), g())
}

/// `insert` (which names the columns `a`, `b` and the time `$3`) over the pairs of `a` and `b`.
async fn insert_pairs(
    tx: &mut sqlx::PgConnection,
    insert: &'static str,
    a: &[Uuid],
    b: &[Uuid],
    now: chrono::DateTime<chrono::Utc>,
) -> Res<()> {
    let sql = format!("{insert} FROM unnest($1::uuid[], $2::uuid[]) AS x(a, b)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(a)
        .bind(b)
        .bind(now)
        .execute(tx)
        .await
        .map_err(|e| format!("PostgreSQL ceiling: {e}"))?;
    Ok(())
}

async fn pg_events(pool: &sqlx::PgPool, n: usize) -> Res<u64> {
    let tenant = Uuid::nil();
    let now = chrono::Utc::now();
    let (ev, dl, at) = ids(n);
    let payloads = vec![PAYLOAD.to_string(); n];
    let e = |e: sqlx::Error| format!("PostgreSQL ceiling: {e}");
    let mut tx = pool.begin().await.map_err(e)?;
    sqlx::query(
        "INSERT INTO event SELECT id, $2, 'order.created', p::jsonb, $3 FROM unnest($1::uuid[], $4::text[]) AS x(id, p)",
    )
    .bind(&ev)
    .bind(tenant)
    .bind(now)
    .bind(&payloads)
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    insert_pairs(
        &mut tx,
        "INSERT INTO delivery SELECT a, b, 'PENDING', 0, $3, NULL",
        &dl,
        &ev,
        now,
    )
    .await?;
    tx.commit().await.map_err(e)?;
    let mut tx = pool.begin().await.map_err(e)?;
    insert_pairs(
        &mut tx,
        "INSERT INTO attempt SELECT a, b, 204, 1, $3",
        &at,
        &dl,
        now,
    )
    .await?;
    let updated = sqlx::query(
        "UPDATE delivery SET status = 'SUCCEEDED', attempt_count = 1, completed_at = $2 WHERE id = ANY($1::uuid[])",
    )
    .bind(&dl)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(e)?;
    all_updated(updated.rows_affected(), n)?;
    tx.commit().await.map_err(e)?;
    Ok(n as u64)
}

async fn postgres(admin: &str, secs: f64, run: &mut Run) -> Res<()> {
    let name = format!("bench_ceil_{}", Uuid::new_v4().simple());
    super::pg_exec(admin, &format!("CREATE DATABASE {name}")).await?;
    let result = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(32)
            .connect(&super::db_url(admin, &name))
            .await
            .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
        sqlx::raw_sql(PG_TABLES)
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
        for (label, tasks, n) in [
            ("two commits per event", 32, 1),
            ("50 events per commit", 4, BATCH),
        ] {
            let p = pool.clone();
            let rate = for_a_while(tasks, secs, move |_| {
                let p = p.clone();
                async move { pg_events(&p, n).await }
            })
            .await?;
            run.put(&format!("PostgreSQL: events/s, {label}"), rate);
        }
        pool.close().await;
        Ok::<(), String>(())
    }
    .await;
    let dropped = super::pg_exec(
        admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
    result.and(dropped)
}

async fn sqlite_events(conn: &mut sqlx::SqliteConnection, n: usize) -> Res<u64> {
    use sqlx::Connection;
    let now = chrono::Utc::now().to_rfc3339();
    let (ev, dl, at) = ids(n);
    let e = |e: sqlx::Error| format!("SQLite ceiling: {e}");
    let rows = |cols: usize| {
        let one = format!("({})", vec!["?"; cols].join(","));
        vec![one; n].join(",")
    };
    let mut tx = conn.begin().await.map_err(e)?;
    let sql = format!("INSERT INTO event VALUES {}", rows(5));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in &ev {
        q = q
            .bind(*id)
            .bind(Uuid::nil())
            .bind("order.created")
            .bind(PAYLOAD)
            .bind(&now);
    }
    q.execute(&mut *tx).await.map_err(e)?;
    let sql = format!("INSERT INTO delivery VALUES {}", rows(6));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (d, ev) in dl.iter().zip(&ev) {
        q = q
            .bind(*d)
            .bind(*ev)
            .bind("PENDING")
            .bind(0)
            .bind(&now)
            .bind(None::<String>);
    }
    q.execute(&mut *tx).await.map_err(e)?;
    tx.commit().await.map_err(e)?;
    let mut tx = conn.begin().await.map_err(e)?;
    let sql = format!("INSERT INTO attempt VALUES {}", rows(5));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (a, d) in at.iter().zip(&dl) {
        q = q.bind(*a).bind(*d).bind(204).bind(1).bind(&now);
    }
    q.execute(&mut *tx).await.map_err(e)?;
    let sql = format!(
        "UPDATE delivery SET status = 'SUCCEEDED', attempt_count = 1, completed_at = ? WHERE id IN ({})",
        vec!["?"; n].join(",")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&now);
    for d in &dl {
        q = q.bind(*d);
    }
    let updated = q.execute(&mut *tx).await.map_err(e)?;
    all_updated(updated.rows_affected(), n)?;
    tx.commit().await.map_err(e)?;
    Ok(n as u64)
}

async fn sqlite(secs: f64, run: &mut Run) -> Res<()> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (label, n) in [
        ("two commits per event", 1),
        ("50 events per commit", BATCH),
    ] {
        let path = dir.path().join(format!("ceiling-{n}.db"));
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .connect()
            .await
            .map_err(|e| format!("SQLite {}: {e}", path.display()))?;
        sqlx::raw_sql(
            "CREATE TABLE event (id BLOB PRIMARY KEY, tenant_id BLOB NOT NULL, type TEXT NOT NULL, payload TEXT NOT NULL, created_at TEXT NOT NULL);
             CREATE TABLE delivery (id BLOB PRIMARY KEY, event_id BLOB NOT NULL, status TEXT NOT NULL, attempt_count INTEGER NOT NULL, created_at TEXT NOT NULL, completed_at TEXT);
             CREATE TABLE attempt (id BLOB PRIMARY KEY, delivery_id BLOB NOT NULL, status INTEGER NOT NULL, duration_ms INTEGER NOT NULL, started_at TEXT NOT NULL);",
        )
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        // One writer: a single task owns the connection.
        let conn = Arc::new(tokio::sync::Mutex::new(conn));
        let rate = for_a_while(1, secs, move |_| {
            let conn = conn.clone();
            async move { sqlite_events(&mut *conn.lock().await, n).await }
        })
        .await?;
        run.put(&format!("SQLite: events/s, {label}"), rate);
    }
    Ok(())
}

/// One run of the ceilings on `kind`'s database (and the HTTP ceiling with each).
pub(super) async fn run(kind: DbKind, args: &Args) -> Res<Run> {
    let secs = args.duration.unwrap_or(5.0);
    let mut run = Run::default();
    run.put(
        "HTTP: reqwest → local receiver, requests/s",
        http(secs).await?,
    );
    match kind {
        DbKind::Sqlite => sqlite(secs, &mut run).await?,
        DbKind::Postgres => postgres(&args.pg_url, secs, &mut run).await?,
    }
    Ok(run)
}
