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

const INDEXES: [&str; 14] = [
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
    "idx_delivery_parked",
    "idx_attempt_delivery",
    "idx_attempt_dest_started",
];

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
    for index in INDEXES {
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
        (TABLES.len() as i64, INDEXES.len() as i64)
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
