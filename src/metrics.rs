//! Prometheus metrics. The `metrics` facade is process-global by design, so the recorder is
//! installed once per process and every server in it (tests run several) shares it; gauges
//! that describe the database (queue depth, open circuits) are read at scrape time.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::service::now;
use crate::state::AppState;

fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &latency)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Installs the recorder (idempotent) and describes the metrics.
pub fn init() {
    if handle().is_none() {
        tracing::warn!("metrics recorder could not be installed; /metrics will be empty");
    }
    metrics::describe_counter!("hookline_attempts_total", "Delivery attempts by outcome");
    metrics::describe_counter!("hookline_events_published_total", "Events accepted");
    metrics::describe_counter!(
        "hookline_live_notify_failures_total",
        "Announcements to other instances (PostgreSQL NOTIFY) that failed"
    );
    metrics::describe_histogram!(
        "hookline_attempt_duration_seconds",
        "Time from sending a webhook to its answer"
    );
    metrics::describe_gauge!("hookline_in_flight", "Webhook requests in flight");
    metrics::describe_gauge!(
        "hookline_queue_due",
        "Deliveries due now and not yet claimed"
    );
    metrics::describe_gauge!("hookline_queue_scheduled", "Deliveries scheduled for later");
    metrics::describe_gauge!(
        "hookline_circuit_open_destinations",
        "Destinations whose circuit is open"
    );
    metrics::describe_gauge!(
        "hookline_live_subscribers",
        "Live bus subscribers in this process"
    );
    metrics::describe_histogram!(
        "hookline_graphql_request_duration_seconds",
        "GraphQL request latency"
    );
    metrics::describe_counter!("hookline_graphql_errors_total", "GraphQL errors by code");
    metrics::describe_gauge!(
        "hookline_db_connections",
        "Database connections open in this process"
    );
    metrics::describe_gauge!(
        "hookline_sqlite_wal_pending_pages",
        "SQLite: WAL pages the last background checkpoint could not copy yet (readers still used them)"
    );
}

/// The Prometheus text, with database gauges refreshed.
pub async fn render(st: &AppState) -> String {
    if let Err(e) = refresh_gauges(st).await {
        tracing::warn!(error = %e, "could not read queue gauges");
    }
    metrics::gauge!("hookline_live_subscribers").set(st.live.subscriber_count() as f64);
    metrics::gauge!("hookline_db_connections").set(f64::from(st.db.open_connections()));
    // The dispatcher's in-memory window (see `dispatch::hub::WINDOW_BYTES`).
    let hub = &st.hub;
    metrics::gauge!("hookline_window_deliveries")
        .set(hub.in_memory.load(std::sync::atomic::Ordering::Relaxed) as f64);
    metrics::gauge!("hookline_window_bytes").set(
        hub.in_memory_bytes
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    handle().map(|h| h.render()).unwrap_or_default()
}

async fn refresh_gauges(st: &AppState) -> Result<(), sea_orm::DbErr> {
    let db = &st.db.read;
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT \
             (SELECT COUNT(*) FROM delivery WHERE next_attempt_at <= $1 AND status <> 'DELIVERING') AS due, \
             (SELECT COUNT(*) FROM delivery WHERE next_attempt_at > $1) AS scheduled, \
             (SELECT COUNT(*) FROM destination WHERE status = 'FAILING' AND deleted_at IS NULL) AS open"
        }
        _ => {
            "SELECT \
             (SELECT COUNT(*) FROM delivery WHERE next_attempt_at <= ?1 AND status <> 'DELIVERING') AS due, \
             (SELECT COUNT(*) FROM delivery WHERE next_attempt_at > ?1) AS scheduled, \
             (SELECT COUNT(*) FROM destination WHERE status = 'FAILING' AND deleted_at IS NULL) AS open"
        }
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [now().into()]))
        .await?;
    if let Some(r) = row {
        let get = |c: &str| r.try_get::<i64>("", c).unwrap_or(0) as f64;
        metrics::gauge!("hookline_queue_due").set(get("due"));
        metrics::gauge!("hookline_queue_scheduled").set(get("scheduled"));
        metrics::gauge!("hookline_circuit_open_destinations").set(get("open"));
    }
    Ok(())
}
