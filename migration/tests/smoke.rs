//! Runs the migrations up, down and up again on SQLite (always) and PostgreSQL (when
//! `HOOKLINE_TEST_PG_URL` is set, e.g. `postgres://postgres@127.0.0.1:5432/postgres`).

use migration::{Migrator, MigratorTrait};
use sea_orm::prelude::{ChronoUtc, DateTimeUtc, Uuid};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait,
    IntoActiveModel, Set, Statement,
};

const TABLES: [&str; 6] = [
    "destination",
    "subscription",
    "event",
    "delivery",
    "delivery_attempt",
    "attempt_rollup",
];

/// On both databases.
const INDEXES: [&str; 13] = [
    "idx_destination_tenant_created",
    "ux_destination_tenant_name",
    "idx_subscription_destination",
    "idx_subscription_tenant",
    "idx_event_tenant_id",
    "ux_event_tenant_idem",
    "idx_delivery_due",
    "idx_delivery_tenant_dest_id",
    "idx_delivery_event",
    "idx_delivery_tenant_id",
    "idx_delivery_dest_queued",
    "idx_attempt_delivery",
    "idx_attempt_dest_started",
];

/// Where parked deliveries are found (migration 7): their own index on PostgreSQL, the
/// destinations' marks on SQLite.
fn parked_index(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Sqlite => "idx_destination_parked",
        _ => "idx_delivery_parked",
    }
}

async fn count(db: &DatabaseConnection, sql: String) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn count_tables(db: &DatabaseConnection) -> i64 {
    let mut n = 0;
    for table in TABLES {
        let sql = match db.get_database_backend() {
            DbBackend::Sqlite => format!(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
            _ => format!(
                "SELECT count(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
        };
        n += count(db, sql).await;
    }
    n
}

async fn count_indexes(db: &DatabaseConnection) -> i64 {
    let mut n = 0;
    let parked = parked_index(db.get_database_backend());
    for index in INDEXES.iter().copied().chain([parked]) {
        let sql = match db.get_database_backend() {
            DbBackend::Sqlite => format!(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'index' AND name = '{index}'"
            ),
            _ => format!(
                "SELECT count(*) AS n FROM pg_indexes \
                 WHERE schemaname = current_schema() AND indexname = '{index}'"
            ),
        };
        n += count(db, sql).await;
    }
    n
}

async fn assert_schema(db: &DatabaseConnection, present: bool) {
    let (tables, indexes) = if present {
        (TABLES.len() as i64, INDEXES.len() as i64 + 1)
    } else {
        (0, 0)
    };
    assert_eq!(count_tables(db).await, tables);
    assert_eq!(count_indexes(db).await, indexes);
}

async fn up_down_up(db: &DatabaseConnection) {
    Migrator::up(db, None).await.unwrap();
    assert_schema(db, true).await;
    Migrator::down(db, None).await.unwrap();
    assert_schema(db, false).await;
    Migrator::up(db, None).await.unwrap();
    assert_schema(db, true).await;
}

async fn destination_round_trip(db: &DatabaseConnection) {
    use entity::destination;

    // PostgreSQL keeps microseconds; truncate so the read-back compares equal.
    let now = DateTimeUtc::from_timestamp_micros(ChronoUtc::now().timestamp_micros()).unwrap();
    let id = Uuid::now_v7();
    let model = destination::Model {
        id,
        tenant_id: "t1".into(),
        name: "orders".into(),
        display_name: Some("Orders".into()),
        description: None,
        url: "https://example.com/hook".into(),
        enabled: true,
        status: "ACTIVE".into(),
        signing_scheme: "STANDARD_WEBHOOKS".into(),
        signature_header: None,
        signing_secret: "whsec_x".into(),
        previous_secret: None,
        previous_secret_expires_at: None,
        http_auth: None,
        headers: "[]".into(),
        timeout_ms: 10_000,
        payload_format: "ENVELOPE".into(),
        transform: Some(r#"{text: .data.name}"#.into()),
        batch_size: 1,
        batch_window_ms: 0,
        rate_limit_per_sec: Some(5),
        max_in_flight: 4,
        ordered: false,
        retry_schedule: "[5,30]".into(),
        max_attempts: 3,
        discard_after_secs: Some(86_400),
        lossy: false,
        tls_verify: true,
        consecutive_failures: 0,
        last_success_at: None,
        last_failure_at: None,
        last_failed_status_code: None,
        last_failed_reason: None,
        next_attempt_at: Some(now),
        version: 1,
        created_at: now,
        updated_at: now,
        updated_by: "test".into(),
        deleted_at: None,
    };
    model
        .clone()
        .into_active_model()
        .reset_all()
        .insert(db)
        .await
        .unwrap();

    let got = entity::prelude::Destination::find_by_id(id)
        .one(db)
        .await
        .unwrap()
        .expect("destination row");
    assert_eq!(got, model);

    // The partial unique index allows one live row per (tenant_id, name), any number of deleted.
    let mut dup = model.clone().into_active_model().reset_all();
    dup.id = Set(Uuid::now_v7());
    assert!(dup.clone().insert(db).await.is_err());
    dup.deleted_at = Set(Some(now));
    dup.insert(db).await.unwrap();
}

#[tokio::test]
async fn sqlite_up_down_up() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    up_down_up(&db).await;
    destination_round_trip(&db).await;
}

/// Migration 7 on SQLite: each destination's mark is its first parked delivery, set from the
/// parked index before it goes; a destination with nothing parked has none.
#[tokio::test]
async fn sqlite_marks_from_parked_deliveries() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    Migrator::up(&db, Some(6)).await.unwrap();
    let exec = |sql: &str, values: Vec<sea_orm::Value>| {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
    };
    let (parked_dest, other_dest, event) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for d in [parked_dest, other_dest] {
        exec(
            "INSERT INTO destination (id, tenant_id, name, url, enabled, status, signing_scheme, \
             signing_secret, headers, timeout_ms, payload_format, batch_size, batch_window_ms, \
             max_in_flight, ordered, retry_schedule, max_attempts, lossy, tls_verify, \
             consecutive_failures, version, created_at, updated_at, updated_by) \
             VALUES (?, 't', ?, 'https://example.com', 1, 'FAILING', 'STANDARD_WEBHOOKS', 's', \
             '[]', 1000, 'ENVELOPE', 1, 0, 1, 0, '[]', 3, 0, 1, 0, 1, \
             '2026-01-01', '2026-01-01', 'test')",
            vec![d.into(), d.to_string().into()],
        )
        .await
        .unwrap();
    }
    exec(
        "INSERT INTO event (id, tenant_id, event_type, level, payload, created_at) \
         VALUES (?, 't', 'x', 'INFO', '{}', '2026-01-01')",
        vec![event.into()],
    )
    .await
    .unwrap();
    // Three parked deliveries (the second the first by id), one due, one finished.
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let rows = [
        (ids[1], parked_dest, None, None),
        (ids[0], parked_dest, None, None),
        (ids[2], parked_dest, None, None),
        (ids[3], other_dest, Some("2026-01-01"), None),
        (ids[4], other_dest, None, Some("2026-01-01")),
    ];
    for (id, dest, next, done) in rows {
        exec(
            "INSERT INTO delivery (id, tenant_id, event_id, destination_id, event_type, status, \
             attempt_count, next_attempt_at, created_at, completed_at) \
             VALUES (?, 't', ?, ?, 'x', 'PENDING', 0, ?, '2026-01-01', ?)",
            vec![
                id.into(),
                event.into(),
                dest.into(),
                next.map(str::to_string).into(),
                done.map(str::to_string).into(),
            ],
        )
        .await
        .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();
    let mark = |d: Uuid| {
        let db = &db;
        async move {
            db.query_one_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT parked_from FROM destination WHERE id = ?",
                [d.into()],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<Option<Uuid>>("", "parked_from")
            .unwrap()
        }
    };
    assert_eq!(mark(parked_dest).await, Some(ids[0]));
    assert_eq!(mark(other_dest).await, None);
}

#[tokio::test]
async fn postgres_up_down_up() {
    let Ok(admin_url) = std::env::var("HOOKLINE_TEST_PG_URL") else {
        // CI must run it; only a developer without PostgreSQL may skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but HOOKLINE_TEST_PG_URL is not"
        );
        eprintln!("HOOKLINE_TEST_PG_URL not set; skipping PostgreSQL smoke test");
        return;
    };
    let admin = Database::connect(&admin_url).await.unwrap();
    let name = format!("mig_smoke_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();

    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("url with a database path");
    let db = Database::connect(format!("{base}/{name}")).await.unwrap();
    up_down_up(&db).await;
    destination_round_trip(&db).await;
    db.close().await.unwrap();

    admin
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .unwrap();
}
