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
