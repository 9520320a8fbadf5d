//! Operations: Prometheus metrics, `hookline doctor`, encryption-key rotation.

use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::harness::*;
use crate::plans::first_value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_deliveries_queue_and_errors() {
    let s = Server::start(Backend::Sqlite).await;
    let t = token("metrics", "admin");
    let r = Receiver::start().await;
    let dest = create_destination(&s, &t, json!({"url": r.url()})).await;
    publish(&s, &t, "m.e", json!({})).await;
    wait_status(&s, &t, &dest, 1, "SUCCEEDED", Duration::from_secs(10)).await;
    // A refused request shows up among errors by code.
    let _ = s
        .err_code(
            Some(&t),
            "{ destinations(first: 1000) { totalCount } }",
            json!({}),
        )
        .await;
    let text = eventually(
        Duration::from_secs(10),
        "metrics with the attempt",
        || async {
            let text = metrics_text(&s).await?;
            // SQLite's background checkpointer reports after its first pass (100 ms).
            (text.contains("hookline_attempts_total{outcome=\"success\"}")
                && text.contains("hookline_sqlite_wal_pending_pages"))
            .then_some(text)
        },
    )
    .await;
    for name in [
        "hookline_attempt_duration_seconds_bucket",
        "hookline_queue_due",
        "hookline_queue_scheduled",
        "hookline_circuit_open_destinations",
        "hookline_events_published_total",
        "hookline_graphql_request_duration_seconds_bucket",
        "hookline_graphql_errors_total{code=\"BAD_USER_INPUT\"}",
        "hookline_live_subscribers",
        "hookline_window_deliveries",
        "hookline_window_bytes",
        "hookline_db_connections",
        "hookline_sqlite_wal_pending_pages",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    // SQLite: the writer and at least one reader.
    let open = gauge(&text, "hookline_db_connections").expect("hookline_db_connections");
    assert!(open >= 2.0, "hookline_db_connections {open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_and_fails_on_an_unmigrated_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("d.db").display());
    let doctor = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .arg("doctor")
            .env("HOOKLINE_DATABASE_URL", &url)
            .env("HOOKLINE_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let before = doctor();
    assert!(!before.status.success(), "unmigrated database must fail");
    assert!(String::from_utf8_lossy(&before.stdout).contains("FAIL  migrations"));
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
        .arg("migrate")
        .env("HOOKLINE_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrate.status.success());
    let after = doctor();
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(after.status.success(), "{out}");
    for line in [
        "OK    database",
        "OK    migrations",
        "OK    queue",
        "OK    dispatcher",
    ] {
        assert!(out.contains(line), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_key_rotation_reseals_and_keeps_signing() {
    const NEW_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    let s = Server::start(Backend::Sqlite).await;
    let t = token("rot", "admin");
    let r = Receiver::start().await;
    let dest = create_destination(
        &s,
        &t,
        json!({"url": r.url(), "httpAuth": {"bearer": {"token": "bearer-under-rotation"}}}),
    )
    .await;
    let secret = destination_state(&s, &t, &dest).await["signingSecret"]
        .as_str()
        .unwrap()
        .to_string();
    let db = s.stop().await;
    let raw = |db: &TestDb| {
        let url = db.url.clone();
        async move {
            use sea_orm::ConnectionTrait;
            let conn = sea_orm::Database::connect(&url).await.unwrap();
            let row = conn
                .query_one_raw(sea_orm::Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT signing_secret, http_auth FROM destination",
                ))
                .await
                .unwrap()
                .unwrap();
            let a: String = row.try_get("", "signing_secret").unwrap();
            let b: String = row.try_get("", "http_auth").unwrap();
            (a, b)
        }
    };
    let (sealed_before, _) = raw(&db).await;
    assert!(sealed_before.starts_with("enc:v1:"));
    assert!(!sealed_before.contains(&secret[6..]));
    // Restart with a new key, the old one kept for opening.
    let mut cfg = test_config(&db);
    cfg.encryption_key = Some(NEW_KEY.into());
    cfg.encryption_keys_previous = vec![ENCRYPTION_KEY.into()];
    let s = Server::start_on(db, cfg).await;
    let (sealed_after, auth_after) = raw(&s.db).await;
    assert_ne!(
        sealed_after, sealed_before,
        "rows re-sealed under the new key"
    );
    assert_ne!(
        sealed_after.split(':').nth(2),
        sealed_before.split(':').nth(2),
        "a different key id"
    );
    assert!(auth_after.starts_with("enc:v1:"));
    // The secret reads the same and deliveries still carry the right signature and auth.
    assert_eq!(
        destination_state(&s, &t, &dest).await["signingSecret"],
        secret
    );
    publish(&s, &t, "rot.e", json!({"a": 1})).await;
    let got = r.wait_for(1, Duration::from_secs(10)).await;
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("signature verifies");
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer bearer-under-rotation")
    );
}

/// Whether the connection `conn` runs over TLS, as PostgreSQL sees it.
async fn on_tls(conn: &sea_orm::DatabaseConnection) -> bool {
    use sea_orm::ConnectionTrait;
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .unwrap()
        .expect("pg_stat_ssl has a row for every backend");
    row.try_get("", "ssl").unwrap()
}

/// A PostgreSQL on this machine, named by a URL without `sslmode`, is reached without TLS
/// (the default `prefer` would encrypt every batch for nothing); an explicit `sslmode` is
/// obeyed.
#[tokio::test]
async fn loopback_postgres_goes_without_tls_unless_the_url_asks() {
    if pg_available().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    assert!(
        !db.url.contains("sslmode"),
        "the test needs a URL without sslmode"
    );
    let mut cfg = test_config(&db);
    let plain = hookline::db::connect(&cfg).await.unwrap();

    // What `prefer` gets is the server's choice: TLS where `ssl = on` (Debian's package, as on
    // this machine), none where it is off.
    let server_ssl: bool = first_value(&plain.write, "SELECT current_setting('ssl') = 'on'")
        .await
        .unwrap();
    let host_is_local = ["@127.0.0.1", "@localhost", "@[::1]"]
        .iter()
        .any(|h| db.url.contains(h));
    if host_is_local {
        assert!(
            !on_tls(&plain.write).await,
            "a loopback URL without sslmode used TLS"
        );
    } else {
        // Another machine: `prefer` as ever.
        assert_eq!(on_tls(&plain.write).await, server_ssl);
    }
    let sep = if db.url.contains('?') { '&' } else { '?' };
    cfg.database_url = format!("{}{sep}sslmode=prefer", db.url);
    let asked = hookline::db::connect(&cfg).await.unwrap();
    assert_eq!(on_tls(&asked.write).await, server_ssl);
    plain.write.close_by_ref().await.ok();
    asked.write.close_by_ref().await.ok();
}

// SQLite checkpoints (copies the WAL into the database file) in the background, not inside
// the writer's commits: with SQLite's default of one checkpoint per 1 000 WAL pages, the commit
// that crosses the line runs it, and every publish queued behind that commit waits for the copy
// and two syncs. The database file itself must therefore catch up
// with what was committed while the writer never gets near its own, much higher, limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_its_wal_into_the_database_in_the_background() {
    let s = Server::start(Backend::Sqlite).await;
    // The writer's own checkpoints only past the backstop.
    let db = hookline::db::connect(&test_config(&s.db)).await.unwrap();
    let pages: i64 = first_value(&db.write, "PRAGMA wal_autocheckpoint")
        .await
        .unwrap();
    assert_eq!(pages, i64::from(hookline::db::SQLITE_WAL_BACKSTOP_PAGES));
    db.close(Duration::from_secs(2)).await;

    let t = token("ckpt", "admin");
    let r = Receiver::start().await;
    create_destination(&s, &t, json!({"url": r.url()})).await;
    const N: i64 = 60;
    for i in 0..N {
        publish(&s, &t, "c.e", json!({ "i": i })).await;
    }
    // Once the completion writer is done, nothing writes; the file copies below are whole.
    r.wait_for(N as usize, Duration::from_secs(20)).await;
    // A copy of the database file alone, without its WAL, holds every event.
    let main = s.db.dir.path().join("t.db");
    let scratch = tempfile::tempdir().unwrap();
    let events = eventually(
        Duration::from_secs(10),
        "the events in the database file",
        || async {
            let copy = scratch
                .path()
                .join(format!("{}.db", uuid::Uuid::new_v4().simple()));
            std::fs::copy(&main, &copy).ok()?;
            let url = format!("sqlite://{}?mode=rw", copy.display());
            let conn = sea_orm::Database::connect(&url).await.ok()?;
            let n: Option<i64> = first_value(&conn, "SELECT count(*) FROM event").await;
            conn.close().await.ok();
            n.filter(|n| *n == N)
        },
    )
    .await;
    assert_eq!(events, N);
}

/// The server's `/metrics` page, if it answers.
async fn metrics_text(s: &Server) -> Option<String> {
    s.http
        .get(s.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// One gauge's value in a Prometheus text page.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// The dispatcher's in-memory window counts deliveries and their payload bytes from the moment
// a publish hands them over or a claim takes them until they are finished with. Every path out
// — success, a failure that waits for its retry, a final failure — gives back exactly what was
// counted: after a run through hand-overs and claims, with payloads of different sizes, both
// counts are back at zero (a leak would leave them above; an excess would wrap them around).
// Claims are certain here: `maxConcurrency` 1 makes the window 128 deliveries and sends one
// request at a time, 5 ms each to the good receiver, while its 162 deliveries are published in
// one burst. (The metrics registry is the process's, shared by the tests' servers: each
// server sets these two gauges from its own window as it renders, and the test retries.)
both!(window_counts_return_to_zero, |backend| async move {
    let s = Server::start_with(backend, |cfg| cfg.dispatch.max_concurrency = 1).await;
    let t = s.token("window", "admin");
    let ok = Receiver::start().await;
    ok.set(Behavior {
        status: 204,
        delay: Duration::from_millis(5),
        ..Behavior::default()
    });
    let bad = Receiver::start().await;
    bad.status(500);
    create_destination(&s, &t, json!({"url": ok.url()})).await;
    // Two events, two attempts each: four failures, one short of opening its circuit.
    let failing = create_destination(
        &s,
        &t,
        json!({"url": bad.url(), "retrySchedule": [1], "maxAttempts": 2,
               "eventTypes": ["w.bad"]}),
    )
    .await;
    let mut pubs = Vec::new();
    for i in 0..162 {
        let blob = "x".repeat(if i % 2 == 0 { 50 } else { 20_000 });
        let ty = if i < 160 { "w.e" } else { "w.bad" };
        pubs.push(publish(&s, &t, ty, json!({"i": i, "blob": blob})));
    }
    futures_util::future::join_all(pubs).await;
    ok.wait_for(162, Duration::from_secs(30)).await;
    wait_status(&s, &t, &failing, 2, "FAILED", Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), "an empty window", || async {
        let text = metrics_text(&s).await?;
        (gauge(&text, "hookline_window_deliveries") == Some(0.0)
            && gauge(&text, "hookline_window_bytes") == Some(0.0))
        .then_some(())
    })
    .await;
});

// The PostgreSQL pool opens at most `HOOKLINE_DB_MAX_CONNECTIONS` connections, however many
// publishes arrive at once (32 concurrent publishers grow a 24-connection pool to 11 within a
// second), and nothing waits too long for one: everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_pool_stays_within_its_limit_under_a_burst() {
    use sea_orm::ConnectionTrait;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    if pg_available().is_none() {
        return;
    }
    let s = Server::start_with(Backend::Postgres, |c| c.db_max_connections = 3).await;
    let t = token("pool", "admin");
    let r = Receiver::start().await;
    create_destination(&s, &t, json!({"url": r.url()})).await;
    let (admin, name) = s.db.owned.clone().expect("a database of the test's own");
    let admin = sea_orm::Database::connect(&admin).await.expect("admin");
    // The most backends connected to the test's database at once, read every 5 ms.
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (most, done) = (most.clone(), done.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                let row = admin
                    .query_one_raw(sea_orm::Statement::from_sql_and_values(
                        sea_orm::DbBackend::Postgres,
                        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = $1",
                        [name.clone().into()],
                    ))
                    .await
                    .expect("pg_stat_activity")
                    .expect("a row");
                most.fetch_max(row.try_get::<i64>("", "n").unwrap(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            admin.close().await.ok();
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for c in 0..32 {
        let (http, url, t) = (s.http.clone(), s.url("/graphql"), t.clone());
        set.spawn(async move {
            for i in 0..10 {
                let body = json!({
                    "query": PUBLISH,
                    "variables": {"input": {"type": "pool.burst", "payload": {"c": c, "i": i}}},
                });
                let v: serde_json::Value = http
                    .post(&url)
                    .bearer_auth(&t)
                    .json(&body)
                    .send()
                    .await
                    .expect("publish")
                    .json()
                    .await
                    .expect("json");
                assert!(v["errors"].is_null(), "{v}");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("publisher");
    }
    r.wait_for(320, Duration::from_secs(30)).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&most),
        "{most} backends at once on the test's database"
    );
    let text = metrics_text(&s).await.expect("metrics");
    let open = gauge(&text, "hookline_db_connections").expect("hookline_db_connections");
    assert!(
        (1.0..=3.0).contains(&open),
        "hookline_db_connections {open}"
    );
}
