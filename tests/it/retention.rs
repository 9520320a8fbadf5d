//! Retention: finished history older than the retention goes, unfinished work and what it
//! needs stays. Time is moved by purging "as of" a later instant.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::both;
use crate::harness::*;

async fn payload_of(s: &Server, t: &str, event: &str) -> serde_json::Value {
    s.ok(
        t,
        "query($id: ID!) { event(id: $id) { payload } }",
        json!({"id": event}),
    )
    .await["event"]["payload"]
        .clone()
}

const DAY: Duration = Duration::from_secs(86400);

both!(purge_keeps_unfinished_work, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("ret", "admin");
    let ok = Receiver::start().await;
    let down = Receiver::start().await;
    down.status(500);
    let done_dest =
        create_destination(&s, &t, json!({"url": ok.url(), "eventTypes": ["done.*"]})).await;
    let wait_dest = create_destination(
        &s,
        &t,
        json!({"url": down.url(), "eventTypes": ["wait.*"], "retrySchedule": [3600]}),
    )
    .await;
    for i in 0..5 {
        publish(&s, &t, "done.e", json!({"i": i})).await;
    }
    let waiting_event = publish(&s, &t, "wait.e", json!({"keep": "me"})).await;
    wait_status(&s, &t, &done_dest, 5, "SUCCEEDED", Duration::from_secs(10)).await;
    wait_status(
        &s,
        &t,
        &wait_dest,
        1,
        "AWAITING_RETRY",
        Duration::from_secs(10),
    )
    .await;

    let db = sea_orm::Database::connect(&s.db.url).await.unwrap();
    // 31 days from now, with payloads kept 2 days: nothing is old enough yet at "now + 1 day".
    let early = hookline::retention::purge(&db, 30 * DAY, 2 * DAY, Utc::now() + TimeDelta::days(1))
        .await
        .unwrap();
    assert_eq!(early, hookline::retention::Purged::default());
    // At +3 days finished payloads are blanked, metadata stays.
    let mid = hookline::retention::purge(&db, 30 * DAY, 2 * DAY, Utc::now() + TimeDelta::days(3))
        .await
        .unwrap();
    assert_eq!(mid.payloads, 5, "{mid:?}");
    assert_eq!((mid.attempts, mid.deliveries, mid.events), (0, 0, 0));
    assert_eq!(
        payload_of(&s, &t, &waiting_event).await,
        json!({"keep": "me"}),
        "a pending event keeps its payload"
    );
    // At +31 days finished history goes; the waiting delivery, its event and its attempt stay.
    let late = hookline::retention::purge(&db, 30 * DAY, 2 * DAY, Utc::now() + TimeDelta::days(31))
        .await
        .unwrap();
    assert_eq!(late.deliveries, 5, "{late:?}");
    assert_eq!(late.events, 5, "{late:?}");
    assert!(late.attempts >= 5, "{late:?}");
    let left = deliveries_of(&s, &t, &wait_dest).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["status"], "AWAITING_RETRY");
    assert!(deliveries_of(&s, &t, &done_dest).await.is_empty());
    assert_eq!(
        payload_of(&s, &t, &waiting_event).await,
        json!({"keep": "me"})
    );
});
