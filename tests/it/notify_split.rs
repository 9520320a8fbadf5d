//! PostgreSQL: a completion flush whose cross-instance announcement is far larger than one
//! NOTIFY payload (8 000 bytes) — many destinations of one tenant with a long name failing
//! together — is recorded once, and reaches the other instance's subscribers whole.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;

use crate::harness::*;
use crate::live_ws::{ATTEMPTS, STATUS, subscribe};
use crate::ws::Proto;

const DESTINATIONS: usize = 200;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_failures_of_one_tenant_are_recorded_once_and_announced_whole() {
    if pg_available().is_none() {
        return;
    }
    // A short lease: a flush that never commits lets the deliveries be claimed and sent again
    // within the test's patience, which the receiver's count would show.
    let a = Server::start_with(Backend::Postgres, |c| {
        c.dispatch.lease = Duration::from_secs(3);
    })
    .await;
    // B never dispatches: what its subscribers see crossed over from A.
    let b = a.start_peer(|c| c.dispatch.enabled = false).await;
    // The longest tenant a token may name: every status entry carries it.
    let tenant = "t".repeat(128);
    let tok = token(&tenant, "read write publish");
    let rx = Receiver::start().await;
    rx.status(500);
    let mut dests = HashSet::new();
    for _ in 0..DESTINATIONS {
        dests
            .insert(create_destination(&a, &tok, json!({"url": rx.url(), "maxAttempts": 1})).await);
    }
    let mut attempts_b = subscribe(b.addr, Proto::Transport, &tok, ATTEMPTS, json!({})).await;
    let mut status_b = subscribe(b.addr, Proto::Transport, &tok, STATUS, json!({})).await;

    let event = publish(&a, &tok, "bulk.failed", json!({"n": 1})).await;

    // Every delivery ends FAILED after its single attempt.
    let failed = eventually(WAIT, "every delivery recorded as FAILED", || async {
        let r = a
            .ok(
                &tok,
                "query($f: DeliveryFilter) { deliveries(first: 1, filter: $f) { totalCount } }",
                json!({"f": {"eventId": event, "status": "FAILED"}}),
            )
            .await;
        let n = r["deliveries"]["totalCount"].as_u64()?;
        (n == DESTINATIONS as u64).then_some(n)
    })
    .await;
    assert_eq!(failed, DESTINATIONS as u64);

    // Each attempt row exists once, one per delivery, and the receiver saw one request per
    // attempt. A finished delivery is never claimed again, so nothing can be added later.
    let conn = sea_orm::Database::connect(&a.db.url).await.unwrap();
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n, count(DISTINCT delivery_id) AS d, \
             max(attempt_number) AS hi FROM delivery_attempt",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    let distinct: i64 = row.try_get("", "d").unwrap();
    let hi: i32 = row.try_get("", "hi").unwrap();
    assert_eq!(
        (n, distinct, hi),
        (DESTINATIONS as i64, DESTINATIONS as i64, 1)
    );
    let got = rx.received();
    assert_eq!(got.len(), DESTINATIONS, "one request per delivery");
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id").as_deref() == Some(event.as_str()))
    );
    conn.close().await.ok();

    // B's subscribers got every attempt and every status change, each once.
    let seen = attempts_b.take("1", DESTINATIONS, WAIT).await;
    let on_b: HashSet<String> = seen
        .iter()
        .map(|v| {
            v["deliveryAttempts"]["destinationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(on_b, dests);
    assert!(
        seen.iter()
            .all(|v| v["deliveryAttempts"]["outcome"] == "FAILURE")
    );
    let changes = status_b.take("1", DESTINATIONS, WAIT).await;
    let changed: HashSet<String> = changes
        .iter()
        .map(|v| {
            assert_eq!(
                v["destinationStatusChanged"]["status"],
                "RETRY_LIMIT_REACHED"
            );
            v["destinationStatusChanged"]["destinationId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(changed, dests);
    attempts_b.expect_silence(Duration::from_millis(300)).await;
}

/// PostgreSQL: when every NOTIFY fails (here the server's role may not call `pg_notify`),
/// attempts are recorded all the same, once, and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_recorded_when_announcements_fail() {
    if pg_available().is_none() {
        return;
    }
    // The server connects as a role of its own that owns the test's database: no superuser,
    // so that taking `pg_notify` away from it holds.
    let db = TestDb::new(Backend::Postgres).await;
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let role = format!("{name}_r");
    let cluster = sea_orm::Database::connect(std::env::var("HOOKLINE_TEST_PG_URL").unwrap())
        .await
        .unwrap();
    cluster
        .execute_unprepared(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {name} OWNER TO {role}"
        ))
        .await
        .unwrap();
    let admin = sea_orm::Database::connect(&db.url).await.unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    let mut cfg = test_config(&db);
    cfg.database_url = url.to_string();
    let s = Server::start_on(db, cfg).await;
    let tok = token("acme", "read write publish");
    let rx = Receiver::start().await;
    // Long enough for the revocation below to land while the request is in flight.
    rx.set(Behavior {
        delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
    publish(&s, &tok, "job.done", json!({"n": 1})).await;
    admin
        .execute_unprepared("REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
        .await
        .unwrap();
    let done = wait_status(&s, &tok, &dest, 1, "SUCCEEDED", WAIT).await;
    assert_eq!(done[0]["attemptCount"], 1);
    assert_eq!(done[0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(rx.count(), 1);
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookline_live_notify_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{metrics}");
    admin.close().await.ok();
    // Dropping the server drops its database; then its role can go.
    drop(s);
    cluster
        .execute_unprepared(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
    cluster.close().await.ok();
}
