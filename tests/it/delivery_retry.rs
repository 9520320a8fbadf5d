//! Failure handling: retries, exhaustion, timeouts, Retry-After, 410 Gone and the circuit
//! breaker.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both;
use crate::harness::*;

const T: Duration = Duration::from_secs(15);

/// The distinct `webhook-id`s the receiver got from its `from`-th request on, sorted.
fn received_ids(rx: &Receiver, from: usize) -> Vec<String> {
    let mut ids: Vec<String> = rx.received()[from..]
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A destination (settings `extra` over a 1 s retry schedule) whose receiver answers 500, with
/// its circuit opened by five failed deliveries. Returns the destination and the events.
async fn failing_destination(
    s: &Server,
    tok: &str,
    rx: &Receiver,
    extra: serde_json::Value,
) -> (String, Vec<String>) {
    rx.status(500);
    let mut input = json!({"url": rx.url(), "retrySchedule": [1], "maxAttempts": 20});
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    let dest = create_destination(s, tok, input).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(s, tok, "job.done", json!({"i": i})).await);
    }
    eventually(T, "circuit open", || async {
        let st = destination_state(s, tok, &dest).await;
        (st["status"] == "FAILING").then_some(())
    })
    .await;
    (dest, ids)
}

both!(retries_until_success, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.status(500);
    let dest =
        create_destination(&s, &tok, json!({"url": rx.url(), "retrySchedule": [1, 1]})).await;
    let ev = publish(&s, &tok, "order.created", json!({"n": 1})).await;
    rx.wait_for(1, T).await;
    rx.status(200);

    let d = wait_status(&s, &tok, &dest, 1, "SUCCEEDED", T)
        .await
        .remove(0);
    assert_eq!(d["eventId"], ev.as_str());
    assert_eq!(d["attemptCount"], 2);
    assert_eq!(d["lastStatusCode"], 200);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d:#}");
    assert_eq!(attempts[0]["attemptNumber"], 1);
    assert_eq!(attempts[0]["outcome"], "FAILURE");
    assert_eq!(attempts[0]["responseStatus"], 500);
    assert_eq!(attempts[0]["errorKind"], "HTTP_STATUS");
    assert!(!attempts[0]["nextAttemptAt"].is_null());
    assert_eq!(attempts[1]["attemptNumber"], 2);
    assert_eq!(attempts[1]["outcome"], "SUCCESS");
    assert_eq!(attempts[1]["responseStatus"], 200);
    assert!(attempts[1]["errorKind"].is_null());

    let got = rx.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    // One second, ±20 % jitter, plus polling slack.
    assert!(gap >= Duration::from_millis(750), "{gap:?}");
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id").as_deref() == Some(ev.as_str()))
    );
    let state = destination_state(&s, &tok, &dest).await;
    assert_eq!(state["status"], "ACTIVE");
    assert_eq!(state["failureDetails"]["consecutiveFailures"], 0);
    assert!(!state["failureDetails"]["lastSuccessfulAt"].is_null());
});

both!(exhaustion_fails_delivery, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.status(500);
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "retrySchedule": [1, 1], "maxAttempts": 2}),
    )
    .await;
    publish(&s, &tok, "order.created", json!({})).await;

    let d = wait_status(&s, &tok, &dest, 1, "FAILED", T).await.remove(0);
    assert_eq!(d["attemptCount"], 2);
    assert_eq!(d["lastStatusCode"], 500);
    assert!(!d["completedAt"].is_null());
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attemptNumber"], i + 1);
        assert_eq!(a["outcome"], "FAILURE");
        assert_eq!(a["responseStatus"], 500);
        assert_eq!(a["errorKind"], "HTTP_STATUS");
    }
    assert!(
        attempts[1]["nextAttemptAt"].is_null(),
        "no retry after the last"
    );

    let state = eventually(T, "RETRY_LIMIT_REACHED", || async {
        let st = destination_state(&s, &tok, &dest).await;
        (st["status"] == "RETRY_LIMIT_REACHED").then_some(st)
    })
    .await;
    let f = &state["failureDetails"];
    assert_eq!(f["consecutiveFailures"], 2);
    assert_eq!(f["lastFailedStatusCode"], 500);
    assert!(!f["lastFailedAt"].is_null());
    assert!(f["lastSuccessfulAt"].is_null());
    assert!(f["lastFailedReason"].as_str().unwrap().contains("500"));
    assert_eq!(state["enabled"], true);
    // Nothing more is sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), 2);
});

both!(timeout_is_classified, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.set(Behavior {
        delay: Duration::from_secs(2),
        ..Behavior::default()
    });
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "timeoutMs": 1000, "maxAttempts": 1}),
    )
    .await;
    publish(&s, &tok, "slow.thing", json!({})).await;
    let d = wait_status(&s, &tok, &dest, 1, "FAILED", T).await.remove(0);
    let a = &d["attempts"][0];
    assert_eq!(a["outcome"], "FAILURE");
    assert_eq!(a["errorKind"], "TIMEOUT", "{d:#}");
    assert!(a["responseStatus"].is_null());
});

both!(retry_after_is_honoured, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.set(Behavior {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
        ..Behavior::default()
    });
    let dest = create_destination(&s, &tok, json!({"url": rx.url(), "retrySchedule": [30]})).await;
    publish(&s, &tok, "rate.limited", json!({})).await;
    rx.wait_for(1, T).await;
    rx.set(Behavior::default());
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
    assert!(
        gap < Duration::from_secs(6),
        "Retry-After, not the 30 s schedule: {gap:?}"
    );
    let d = wait_status(&s, &tok, &dest, 1, "SUCCEEDED", T)
        .await
        .remove(0);
    assert_eq!(d["attempts"][0]["responseStatus"], 429);
    assert_eq!(d["attemptCount"], 2);
});

both!(gone_disables_destination, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.status(410);
    let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
    publish(&s, &tok, "user.deleted", json!({})).await;

    let d = wait_status(&s, &tok, &dest, 1, "FAILED", T).await.remove(0);
    assert_eq!(d["attemptCount"], 1);
    assert_eq!(d["attempts"][0]["responseStatus"], 410);
    let state = eventually(T, "destination disabled", || async {
        let st = destination_state(&s, &tok, &dest).await;
        (st["enabled"] == false).then_some(st)
    })
    .await;
    assert_eq!(state["status"], "DISABLED");
    assert_eq!(state["failureDetails"]["lastFailedStatusCode"], 410);

    // Later events do not reach a disabled destination.
    rx.status(200);
    publish(&s, &tok, "user.deleted", json!({})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.count(), 1);
});

both!(circuit_opens_and_closes, |backend| async move {
    let started = Instant::now();
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    // Five deliveries fail at once: five consecutive failures open the circuit.
    let (dest, mut ids) = failing_destination(&s, &tok, &rx, json!({})).await;
    let state = destination_state(&s, &tok, &dest).await;
    let opened = Instant::now();
    assert!(
        state["failureDetails"]["consecutiveFailures"]
            .as_i64()
            .unwrap()
            >= 5
    );
    assert!(!state["failureDetails"]["nextAttemptAt"].is_null());
    // While open, new and retried deliveries wait: nothing reaches the receiver.
    ids.push(publish(&s, &tok, "job.done", json!({"i": 5})).await);
    let at_open = rx.count();
    assert!(at_open >= 5, "{at_open}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rx.count(),
        at_open,
        "deliveries wait while the circuit is open"
    );

    // The receiver recovers; the probe (5 s after opening) closes the circuit and the waiting
    // deliveries go.
    rx.status(200);
    let ok_from = rx.count();
    wait_status(&s, &tok, &dest, 6, "SUCCEEDED", Duration::from_secs(12)).await;
    let closed = opened.elapsed();
    assert!(closed >= Duration::from_millis(3500), "{closed:?}");
    let state = destination_state(&s, &tok, &dest).await;
    assert_eq!(state["status"], "ACTIVE");
    assert_eq!(state["failureDetails"]["consecutiveFailures"], 0);
    ids.sort();
    assert_eq!(received_ids(&rx, ok_from), ids);
    eprintln!("circuit test took {:?}", started.elapsed());
});

// While a circuit is open its deliveries are parked (not due: nothing claims them until a probe
// succeeds), new ones are parked as they are published, and a restarted server — which has
// no memory of the circuit — still probes it from the database and delivers everything.
both!(
    open_circuit_parks_deliveries_across_a_restart,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let cfg = test_config(&db);
        let s = Server::start_on(db, cfg.clone()).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let (dest, mut ids) = failing_destination(&s, &tok, &rx, json!({})).await;
        for i in 5..8 {
            ids.push(publish(&s, &tok, "job.done", json!({"i": i})).await);
        }
        // Every unfinished delivery ends up parked: waiting, and due at no particular time.
        let q = "query($f: DeliveryFilter) { deliveries(first: 100, filter: $f) {
               nodes { status nextAttemptAt } } }";
        eventually(T, "all parked", || async {
            let d = s.ok(&tok, q, json!({"f": {"destinationId": dest}})).await;
            let nodes = d["deliveries"]["nodes"].as_array().unwrap().clone();
            let parked = nodes.len() == 8
                && nodes.iter().all(|n| {
                    n["nextAttemptAt"].is_null()
                        && matches!(n["status"].as_str(), Some("PENDING" | "AWAITING_RETRY"))
                });
            parked.then_some(())
        })
        .await;
        let before = rx.count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rx.count(), before, "a parked delivery was sent");

        // The receiver recovers while the server is down; the new process probes and delivers.
        rx.status(200);
        let ok_from = rx.count();
        let db = s.stop().await;
        let s = Server::start_on(db, cfg).await;
        wait_status(&s, &tok, &dest, 8, "SUCCEEDED", Duration::from_secs(20)).await;
        let state = destination_state(&s, &tok, &dest).await;
        assert_eq!(state["status"], "ACTIVE");
        ids.sort();
        assert_eq!(received_ids(&rx, ok_from), ids);
    }
);

// Parked deliveries are still pending: `pendingDeliveries` counts them, and deleting their
// destination discards them too, though nothing will ever make them due.
both!(
    parked_deliveries_are_pending_and_discarded_with_their_destination,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let (dest, mut ids) = failing_destination(&s, &tok, &rx, json!({})).await;
        for i in 5..7 {
            ids.push(publish(&s, &tok, "job.done", json!({"i": i})).await);
        }
        let q = "query($id: ID!, $f: DeliveryFilter) {
               destination(id: $id) { stats { pendingDeliveries } }
               deliveries(first: 100, filter: $f) { nodes { nextAttemptAt completedAt } } }";
        let d = eventually(T, "all parked", || async {
            let d = s
                .ok(&tok, q, json!({"id": dest, "f": {"destinationId": dest}}))
                .await;
            let nodes = d["deliveries"]["nodes"].as_array().unwrap().clone();
            let parked = nodes.len() == 7
                && nodes
                    .iter()
                    .all(|n| n["nextAttemptAt"].is_null() && n["completedAt"].is_null());
            parked.then_some(d)
        })
        .await;
        assert_eq!(d["destination"]["stats"]["pendingDeliveries"], 7, "{d}");

        s.ok(
            &tok,
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": dest}),
        )
        .await;
        for ev in &ids {
            let r = s
                .ok(
                    &tok,
                    "query($id: ID!) { event(id: $id) { deliveries { nodes {
                       status completedAt lastError } } } }",
                    json!({"id": ev}),
                )
                .await;
            let n = &r["event"]["deliveries"]["nodes"][0];
            assert_eq!(n["status"], "DISCARDED", "{r}");
            assert!(!n["completedAt"].is_null(), "{r}");
            assert_eq!(n["lastError"], "destination deleted", "{r}");
        }
    }
);

// A lossy destination is never parked: while its circuit is open, what it is sent is
// discarded at once instead of waiting for the probe.
both!(
    lossy_destination_discards_while_failing,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let (dest, _) = failing_destination(&s, &tok, &rx, json!({"lossy": true})).await;
        for i in 5..7 {
            publish(&s, &tok, "job.done", json!({"i": i})).await;
        }
        let ds = wait_status(&s, &tok, &dest, 7, "DISCARDED", T).await;
        let skipped = ds
            .iter()
            .filter(|d| d["attemptCount"] == 0)
            .map(|d| d["lastError"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>();
        assert_eq!(
            skipped,
            vec!["lossy destination is failing"; 2],
            "{:#}",
            serde_json::Value::from(ds.clone())
        );
    }
);

// A failing destination with nothing left to probe: once its probe time has passed, the next
// event is sent at once as the probe (it is not parked until some later probe pass).
both!(
    sparse_traffic_probes_with_the_next_event,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let (dest, _) = failing_destination(&s, &tok, &rx, json!({"maxAttempts": 1})).await;
        let opened = Instant::now();
        wait_status(&s, &tok, &dest, 5, "FAILED", T).await;
        rx.status(200);
        // The first probe time is 5 s after the circuit opened.
        tokio::time::sleep(Duration::from_millis(6000).saturating_sub(opened.elapsed())).await;
        let before = rx.count();
        publish(&s, &tok, "job.done", json!({"i": 5})).await;
        rx.wait_for(before + 1, Duration::from_secs(5)).await;
        eventually(T, "circuit closed", || async {
            let st = destination_state(&s, &tok, &dest).await;
            (st["status"] == "ACTIVE").then_some(())
        })
        .await;
    }
);

// The completion writer, driven directly on the server's database after it stopped: updates
// of one delivery arriving together (its lease lapsed and it was claimed again) apply in
// order, a finished delivery is not reopened by a later release, and the flush that carries
// them also applies the updates of other deliveries. One statement cannot update a row twice,
// so the store gives repeated updates a statement each; the writer retries a failed flush
// forever, so a broken statement shows here as a barrier that never answers.
both!(
    one_flush_updating_a_delivery_twice_applies_in_order,
    |backend| async move {
        use std::sync::Arc;

        use hookline::dispatch::{
            claim::Claimed,
            writer::{DeliveryUpdate, Finished, WriterMsg},
        };
        use hookline::live::LiveEvent;
        use sea_orm::EntityTrait;

        let w = Waiting::three(backend).await;
        let ids = w.ids.clone();
        let db = w.s.stop().await;
        let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
        let live = hookline::live::LiveBus::new(16);
        let mut stream = live.subscribe();
        let writer = test_writer(&conn, &live);
        // Whole microseconds, which both databases store exactly.
        let later = chrono::Utc::now() + chrono::TimeDelta::hours(2);
        let later = chrono::DateTime::from_timestamp_micros(later.timestamp_micros()).unwrap();
        let release = |id| DeliveryUpdate {
            id,
            status: "AWAITING_RETRY",
            attempt_count: None,
            next_attempt_at: Some(later),
            last_status_code: None,
            last_error: None,
            completed: false,
        };
        let fail = |id| DeliveryUpdate {
            id,
            status: "FAILED",
            attempt_count: Some(4),
            next_attempt_at: None,
            last_status_code: Some(503),
            last_error: Some("gave up".into()),
            completed: true,
        };
        // An attempt's update, with the attempt: it goes on the live bus with its delivery.
        let mut rows = Vec::new();
        for id in &ids {
            rows.push(
                entity::delivery::Entity::find_by_id(*id)
                    .one(&conn.read)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // The attempts' events as the dispatcher holds them: ids[0]'s too large to ride the live
        // bus, ids[1]'s small enough.
        let event_of = |i: usize, payload_len: usize| {
            let d = &rows[i];
            Arc::new(entity::event::Model {
                id: d.event_id,
                tenant_id: d.tenant_id.clone(),
                event_type: d.event_type.clone(),
                level: "INFO".into(),
                payload: format!("\"{}\"", "x".repeat(payload_len - 2)),
                idempotency_key: None,
                created_at: d.created_at,
            })
        };
        let events = [
            event_of(0, hookline::dispatch::writer::LIVE_EVENT_INLINE_MAX + 1),
            event_of(1, 100),
        ];
        let attempt = |i: usize, update: DeliveryUpdate| {
            let d = &rows[i];
            WriterMsg::Attempt(Box::new(Finished {
                attempt: entity::delivery_attempt::Model {
                    id: uuid::Uuid::now_v7(),
                    tenant_id: d.tenant_id.clone(),
                    delivery_id: d.id,
                    destination_id: d.destination_id,
                    event_id: d.event_id,
                    event_type: d.event_type.clone(),
                    attempt_number: 2,
                    request_id: uuid::Uuid::now_v7(),
                    started_at: chrono::Utc::now(),
                    duration_ms: 1,
                    response_status: update.last_status_code,
                    response_body: None,
                    error_kind: Some("HTTP_STATUS".into()),
                    error_message: None,
                    outcome: "FAILURE".into(),
                    next_attempt_at: update.next_attempt_at,
                },
                update,
                claimed: Claimed::of(d),
                event: Some(events[i].clone()),
            }))
        };
        // ids[0]: released, then failed by an attempt: failed. ids[1]: failed, then an
        // attempt's retry: stays failed, and the stream must not say otherwise. ids[2]: one
        // update only.
        for m in [
            WriterMsg::Delivery(release(ids[0])),
            attempt(0, fail(ids[0])),
            WriterMsg::Delivery(fail(ids[1])),
            attempt(1, release(ids[1])),
            WriterMsg::Delivery(release(ids[2])),
        ] {
            writer.send(m);
        }
        let flushed = tokio::time::timeout(T, writer.barrier()).await;
        assert!(matches!(flushed, Ok(true)), "the flush never committed");
        for (i, (status, done, attempts, code)) in [
            ("FAILED", true, 4, Some(503)),
            ("FAILED", true, 4, Some(503)),
            ("AWAITING_RETRY", false, 1, Some(500)),
        ]
        .into_iter()
        .enumerate()
        {
            let row = entity::delivery::Entity::find_by_id(ids[i])
                .one(&conn.read)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.status, status, "delivery {i}: {row:?}");
            assert_eq!(row.completed_at.is_some(), done, "delivery {i}: {row:?}");
            assert_eq!(row.attempt_count, attempts, "delivery {i}: {row:?}");
            assert_eq!(row.last_status_code, code, "delivery {i}: {row:?}");
            let due = (!done).then_some(later.timestamp_micros());
            assert_eq!(
                row.next_attempt_at.map(|t| t.timestamp_micros()),
                due,
                "delivery {i}: {row:?}"
            );
        }
        // On the live bus: ids[0]'s attempt with the failed delivery it left; ids[1]'s without
        // a delivery (the guard kept its update out; subscribers load the row as it is).
        let mut live_copies = std::collections::HashMap::new();
        let mut live_events = std::collections::HashMap::new();
        while let Ok(ev) = stream.try_recv() {
            if let LiveEvent::Attempt(a) = ev {
                live_copies.insert(a.attempt.delivery_id, a.delivery.clone());
                live_events.insert(a.attempt.delivery_id, a.event.is_some());
            }
        }
        // Only the small event rides along (`LIVE_EVENT_INLINE_MAX`); subscribers load the other.
        assert!(!live_events[&ids[0]], "a large event rode the live bus");
        assert!(
            live_events[&ids[1]],
            "a small event was left off the live bus"
        );
        assert_eq!(live_copies.len(), 2, "{live_copies:?}");
        let d0 = live_copies[&ids[0]].as_ref().expect("ids[0] was applied");
        assert_eq!(d0.status, "FAILED");
        assert!(d0.completed_at.is_some());
        assert!(live_copies[&ids[1]].is_none(), "{:?}", live_copies[&ids[1]]);
        writer.close().await;
    }
);
