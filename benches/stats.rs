//! `Destination.stats` on a destination with a million attempts: the per-minute rollups
//! (maintained incrementally by the completion writer) against a scan of attempt history.
//!
//! `cargo bench --bench stats -- [--database sqlite|postgres] [--attempts N] [--runs R]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::Request;
use chrono::{TimeDelta, Utc};
use entity::{delivery, delivery_attempt, event};
use hookline::auth::{Principal, Scopes};
use hookline::config::Config;
use hookline::dispatch::rollup::{RollupBook, upsert};
use hookline::graphql::{Caller, build_schema};
use hookline::service::bulk;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

struct Args {
    database: String,
    attempts: usize,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        database: "sqlite".into(),
        attempts: 1_000_000,
        runs: 20,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--database" => a.database = next,
            "--attempts" => a.attempts = next.parse().expect("--attempts N"),
            "--runs" => a.runs = next.parse().expect("--runs N"),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::with_data_dir(dir.path());
    cfg.jwt_secret = Some("bench-secret-bench-secret-bench!".into());
    cfg.dispatch.enabled = false;
    let pg_admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let pg_name = format!("bench_stats_{}", uuid::Uuid::new_v4().simple());
    if a.database == "postgres" {
        let admin = sea_orm::Database::connect(pg_admin).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {pg_name}"))
            .await?;
        cfg.database_url = format!("postgres://postgres@127.0.0.1:5432/{pg_name}");
    }
    let (state, _) = hookline::server::prepare(cfg).await?;
    let schema = build_schema(state.clone());
    let principal = Principal {
        tenant: "bench".into(),
        subject: "bench".into(),
        scopes: Scopes::parse("admin"),
        expires_at: i64::MAX,
    };
    let run = |q: String| {
        let schema = schema.clone();
        let p = principal.clone();
        async move {
            let r = schema.execute(Request::new(q).data(Caller(Ok(p)))).await;
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            r.data.into_json().expect("json")
        }
    };
    let made = run(
        r#"mutation { createDestination(input: {name: "big", url: "https://example.com/h"}) { id } }"#
            .into(),
    )
    .await;
    let dest: uuid::Uuid = made["createDestination"]["id"].as_str().unwrap().parse()?;

    // History: one event, 1 000 deliveries, attempts spread evenly over the last 7 days.
    let t0 = Instant::now();
    let now = Utc::now();
    let ev = event::Model {
        id: uuid::Uuid::now_v7(),
        tenant_id: "bench".into(),
        event_type: "bench.e".into(),
        level: "INFO".into(),
        payload: "{}".into(),
        idempotency_key: None,
        created_at: now,
    };
    bulk::insert::<_, event::ActiveModel>(&state.db.write, vec![ev.clone()])
        .await
        .map_err(|e| anyhow::anyhow!(e.detail()))?;
    let deliveries: Vec<delivery::Model> = (0..1000)
        .map(|_| {
            let mut d = hookline::service::events::new_delivery(&ev, dest, now);
            d.status = "SUCCEEDED".into();
            d.next_attempt_at = None;
            d
        })
        .collect();
    bulk::insert::<_, delivery::ActiveModel>(&state.db.write, deliveries.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e.detail()))?;
    let mut book = RollupBook::new(Arc::from("bench-instance"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let span_ms = 7 * 86_400_000i64;
    let mut batch = Vec::with_capacity(5000);
    for i in 0..a.attempts {
        let d = &deliveries[i % deliveries.len()];
        let ok = rng.random_ratio(95, 100);
        let m = delivery_attempt::Model {
            id: uuid::Uuid::now_v7(),
            tenant_id: "bench".into(),
            delivery_id: d.id,
            destination_id: dest,
            event_id: ev.id,
            event_type: "bench.e".into(),
            attempt_number: (i / deliveries.len()) as i32 + 1,
            request_id: uuid::Uuid::now_v7(),
            started_at: now
                - TimeDelta::milliseconds(span_ms - span_ms * i as i64 / a.attempts as i64),
            duration_ms: rng.random_range(5..400),
            response_status: Some(if ok { 200 } else { 500 }),
            response_body: None,
            error_kind: (!ok).then(|| "HTTP_STATUS".to_string()),
            error_message: None,
            outcome: if ok { "SUCCESS" } else { "FAILURE" }.into(),
            next_attempt_at: None,
        };
        book.record(&m);
        batch.push(m);
        if batch.len() == 5000 {
            bulk::insert::<_, delivery_attempt::ActiveModel>(
                &state.db.write,
                std::mem::take(&mut batch),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.detail()))?;
        }
    }
    bulk::insert::<_, delivery_attempt::ActiveModel>(&state.db.write, batch)
        .await
        .map_err(|e| anyhow::anyhow!(e.detail()))?;
    let rollups = book.take_dirty();
    let txn_db = &state.db.write;
    upsert(txn_db, &rollups).await?;
    if a.database == "postgres" {
        txn_db.execute_unprepared("ANALYZE").await?;
    }
    println!(
        "seeded {} attempts ({} rollup rows) in {:.1?}",
        a.attempts,
        rollups.len(),
        t0.elapsed()
    );

    let since = (now - TimeDelta::days(7)).to_rfc3339();
    let q = format!(
        r#"{{ destination(id: "{dest}") {{ stats(since: "{since}") {{ totalAttempts successRate averageResponseTimeMs p95ResponseTimeMs pendingDeliveries }} }} }}"#
    );
    let first = run(q.clone()).await;
    let mut times = Vec::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        run(q.clone()).await;
        times.push(t.elapsed());
    }
    // The alternative the rollups avoid: aggregate and rank the attempt rows themselves.
    let backend = state.db.backend();
    let scan_sql = match backend {
        DbBackend::Postgres => {
            "SELECT COUNT(*) AS n, AVG(duration_ms) AS avg, \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 \
             FROM delivery_attempt WHERE destination_id = $1 AND started_at >= $2"
        }
        _ => {
            "SELECT COUNT(*) AS n, AVG(duration_ms) AS avg, \
             (SELECT duration_ms FROM delivery_attempt WHERE destination_id = ?1 \
              AND started_at >= ?2 ORDER BY duration_ms \
              LIMIT 1 OFFSET (SELECT CAST(COUNT(*) * 0.95 AS INTEGER) FROM delivery_attempt \
              WHERE destination_id = ?1 AND started_at >= ?2)) AS p95 \
             FROM delivery_attempt WHERE destination_id = ?1 AND started_at >= ?2"
        }
    };
    let mut scans = Vec::new();
    for _ in 0..a.runs.min(5) {
        let t = Instant::now();
        state
            .db
            .read
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                scan_sql,
                [dest.into(), (now - TimeDelta::days(7)).into()],
            ))
            .await?;
        scans.push(t.elapsed());
    }
    let stats = &first["destination"]["stats"];
    println!(
        "\nDestination.stats over 7 days, {} attempts, {}",
        a.attempts, a.database
    );
    println!("  result: {stats}");
    println!(
        "  rollups (GraphQL, in-process): p50 {:.2?}  p95 {:.2?}  ({} runs)",
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.95),
        a.runs
    );
    println!(
        "  scan of attempt rows (SQL only): p50 {:.2?}  ({} runs)",
        percentile(&mut scans, 0.5),
        scans.len()
    );
    if a.database == "postgres" {
        state.db.write.close_by_ref().await.ok();
        let admin = sea_orm::Database::connect(pg_admin).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}
