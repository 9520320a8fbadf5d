//! Delivery features: batching, FIFO, rate limits, idempotent publish, the target guard,
//! lossy and discardAfter, test events, and two dispatchers sharing one PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::both;
use crate::harness::*;

const T: Duration = Duration::from_secs(15);

both!(batching_groups_events, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "batchSize": 3, "batchWindowMs": 500}),
    )
    .await;
    let (a, b, c) = tokio::join!(
        publish(&s, &tok, "batch.a", json!({"n": 1})),
        publish(&s, &tok, "batch.b", json!({"n": 2})),
        publish(&s, &tok, "batch.c", json!({"n": 3})),
    );
    let got = rx.wait_for(1, T).await;
    let ds = wait_status(&s, &tok, &dest, 3, "SUCCEEDED", T).await;
    assert_eq!(rx.count(), 1, "one request for the three events");
    let body = got[0].json();
    let events = body["events"].as_array().expect("batch envelope");
    assert_eq!(events.len(), 3, "{body:#}");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str(), c.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for e in events {
        let mut keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["createdAt", "data", "id", "type"]);
        let n = e["data"]["n"].as_i64().unwrap();
        assert_eq!(e["type"], ["batch.a", "batch.b", "batch.c"][n as usize - 1]);
    }
    assert_eq!(body.as_object().unwrap().len(), 1);
    // Every delivery records the attempt, all with the same request id.
    let request_ids: HashSet<String> = ds
        .iter()
        .map(|d| {
            assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
            d["attempts"][0]["requestId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(request_ids.len(), 1, "{ds:#?}");
    assert!(got[0].header("webhook-id").is_some());
});

both!(
    ordered_destination_is_fifo_under_failures,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        rx.status(500);
        let dest = create_destination(
            &s,
            &tok,
            json!({"url": rx.url(), "ordered": true, "retrySchedule": [1]}),
        )
        .await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(publish(&s, &tok, "seq.step", json!({"i": i})).await);
        }
        rx.wait_for(1, T).await;
        rx.status(200);
        wait_status(&s, &tok, &dest, 3, "SUCCEEDED", T).await;
        let seq: Vec<String> = rx
            .received()
            .iter()
            .map(|r| r.header("webhook-id").unwrap())
            .collect();
        assert_eq!(seq[0], ids[0]);
        assert_eq!(
            seq[1], ids[0],
            "e1 is retried before anything else: {seq:?}"
        );
        let mut distinct: Vec<String> = Vec::new();
        for id in &seq {
            if distinct.last() != Some(id) {
                assert!(!distinct.contains(id), "out of order: {seq:?}");
                distinct.push(id.clone());
            }
        }
        assert_eq!(distinct, ids);
    }
);

both!(rate_limit_is_respected, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(&s, &tok, json!({"url": rx.url(), "rateLimitPerSec": 5})).await;
    let mut pubs = Vec::new();
    for i in 0..10 {
        pubs.push(publish(&s, &tok, "tick", json!({"i": i})));
    }
    futures_util::future::join_all(pubs).await;
    let got = rx.wait_for(10, T).await;
    let span = got[9].at - got[0].at;
    // The first request takes the bucket's only token; the nine others need 1.8 s of refill
    // at 5 per second, however the deliveries were claimed.
    assert!(span >= Duration::from_millis(1600), "{span:?}");
    assert!(span < Duration::from_secs(8), "{span:?}");
    wait_status(&s, &tok, &dest, 10, "SUCCEEDED", T).await;
});

both!(idempotent_publish, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
    let input = json!({"type": "order.created", "payload": {"n": 1}, "idempotencyKey": "ord-1"});
    let first = publish_input(&s, &tok, input.clone()).await;
    let second = publish_input(&s, &tok, input).await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["idempotencyKey"], "ord-1");
    rx.wait_for(1, T).await;
    wait_status(&s, &tok, &dest, 1, "SUCCEEDED", T).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx.count(), 1);
    assert_eq!(
        rx.received()[0].header("webhook-id").as_deref(),
        first["id"].as_str()
    );
});

both!(private_targets_blocked_by_default, |backend| async move {
    let s = Server::start_with(backend, |cfg| cfg.allow_private_targets = false).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let by_ip = create_destination(&s, &tok, json!({"url": rx.url(), "maxAttempts": 1})).await;
    // A host name resolving to loopback is refused by the resolver, not the URL check.
    let by_name = create_destination(
        &s,
        &tok,
        json!({"url": format!("http://localhost:{}/hook", rx.addr.port()), "maxAttempts": 1}),
    )
    .await;
    publish(&s, &tok, "user.created", json!({})).await;
    for dest in [&by_ip, &by_name] {
        let d = wait_status(&s, &tok, dest, 1, "FAILED", T).await.remove(0);
        let a = &d["attempts"][0];
        assert_eq!(a["outcome"], "FAILURE");
        assert_eq!(a["errorKind"], "BLOCKED_TARGET", "{d:#}");
        assert!(a["responseStatus"].is_null());
    }
    assert_eq!(rx.count(), 0, "nothing reached the private address");
});

both!(private_targets_allowed_with_flag, |backend| async move {
    // The harness allows private targets, as HOOKLINE_ALLOW_PRIVATE_TARGETS=true does.
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let by_ip = create_destination(&s, &tok, json!({"url": rx.url()})).await;
    let by_name = create_destination(
        &s,
        &tok,
        json!({"url": format!("http://localhost:{}/hook", rx.addr.port())}),
    )
    .await;
    publish(&s, &tok, "user.created", json!({})).await;
    rx.wait_for(2, T).await;
    wait_status(&s, &tok, &by_ip, 1, "SUCCEEDED", T).await;
    wait_status(&s, &tok, &by_name, 1, "SUCCEEDED", T).await;
});

both!(lossy_and_discard_after, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    rx.status(500);
    let lossy = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "lossy": true, "retrySchedule": [1]}),
    )
    .await;
    // The next retry (2 s) would be past discardAfterSecs (1 s): discarded instead.
    let aging = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "discardAfterSecs": 1, "retrySchedule": [2]}),
    )
    .await;
    publish(&s, &tok, "metrics.sample", json!({"v": 1})).await;
    for dest in [&lossy, &aging] {
        let d = wait_status(&s, &tok, dest, 1, "DISCARDED", T)
            .await
            .remove(0);
        assert_eq!(d["attemptCount"], 1, "{d:#}");
        assert_eq!(d["attempts"][0]["responseStatus"], 500);
        assert!(d["attempts"][0]["nextAttemptAt"].is_null());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), 2, "one attempt each, no retries");
});

both!(send_test_event_returns_attempt, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
    let secret = destination_state(&s, &tok, &dest).await["signingSecret"]
        .as_str()
        .unwrap()
        .to_string();
    let d = s
        .ok(
            &tok,
            "mutation($id: ID!) { sendTestEvent(destinationId: $id) {
               outcome responseStatus eventType eventId destinationId attemptNumber errorKind } }",
            json!({"id": dest}),
        )
        .await;
    let a = &d["sendTestEvent"];
    assert_eq!(a["outcome"], "SUCCESS", "{a:#}");
    assert_eq!(a["responseStatus"], 200);
    assert_eq!(a["eventType"], "hookline.test");
    assert_eq!(a["destinationId"], dest.as_str());
    assert_eq!(a["attemptNumber"], 1);
    // Synchronous: the receiver already has it.
    assert_eq!(rx.count(), 1);
    let r = &rx.received()[0];
    assert_eq!(r.json()["type"], "hookline.test");
    assert_eq!(r.header("webhook-id").as_deref(), a["eventId"].as_str());
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .expect("test events are signed too");

    // A failing receiver: the attempt says so.
    rx.status(503);
    let d = s
        .ok(
            &tok,
            "mutation($id: ID!) { sendTestEvent(destinationId: $id) {
               outcome responseStatus errorKind } }",
            json!({"id": dest}),
        )
        .await;
    assert_eq!(d["sendTestEvent"]["outcome"], "FAILURE");
    assert_eq!(d["sendTestEvent"]["responseStatus"], 503);
    assert_eq!(d["sendTestEvent"]["errorKind"], "HTTP_STATUS");
});

/// A receiver that notices a webhook-id arriving while the same id is still being answered.
#[derive(Default)]
struct DupState {
    in_flight: Mutex<HashSet<String>>,
    seen: Mutex<HashMap<String, usize>>,
    concurrent_dups: Mutex<Vec<String>>,
}

async fn start_dup_receiver(delay: Duration) -> (SocketAddr, Arc<DupState>) {
    let st = Arc::new(DupState::default());
    let st2 = st.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let st = st2.clone();
        async move {
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !st.in_flight.lock().unwrap().insert(id.clone()) {
                st.concurrent_dups.lock().unwrap().push(id.clone());
            }
            *st.seen.lock().unwrap().entry(id.clone()).or_default() += 1;
            tokio::time::sleep(delay).await;
            st.in_flight.lock().unwrap().remove(&id);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_one_postgres() {
    if pg_available().is_none() {
        return;
    }
    let a = Server::start(Backend::Postgres).await;
    // A second instance on the same database (same JWT secret and sealing key, as the
    // harness configures every instance).
    let b = a.start_peer(|_| {}).await;
    let tok = token("t1", "read write publish");
    let (addr, st) = start_dup_receiver(Duration::from_millis(20)).await;
    create_destination(
        &a,
        &tok,
        json!({"url": format!("http://{addr}/hook"), "maxInFlight": 16}),
    )
    .await;

    const N: usize = 200;
    let mut published: Vec<String> = Vec::with_capacity(N);
    for chunk in 0..N / 20 {
        let mut pubs = Vec::new();
        for i in 0..20 {
            let n = chunk * 20 + i;
            let server = if n % 2 == 0 { &a } else { &b };
            pubs.push(publish(server, &tok, "load.item", json!({"n": n})));
        }
        published.extend(futures_util::future::join_all(pubs).await);
    }
    let want: HashSet<String> = published.into_iter().collect();
    assert_eq!(want.len(), N);
    eventually(Duration::from_secs(60), "all events delivered", || async {
        let seen = st.seen.lock().unwrap();
        want.iter().all(|id| seen.contains_key(id)).then_some(())
    })
    .await;
    // Let any straggling duplicate show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dups = st.concurrent_dups.lock().unwrap().clone();
    assert!(dups.is_empty(), "sent concurrently twice: {dups:?}");
    let seen = st.seen.lock().unwrap().clone();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.len(), N);
    // Both instances did part of the work (each keeps its own attempt rollup rows).
    let conn = sea_orm::Database::connect(&a.db.url).await.unwrap();
    let rows = eventually(T, "rollups of both instances", || async {
        use sea_orm::{ConnectionTrait, Statement};
        let row = conn
            .query_one_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT COUNT(DISTINCT instance_id) AS n, SUM(attempts)::bigint AS total \
                 FROM attempt_rollup",
            ))
            .await
            .unwrap()?;
        let n: i64 = row.try_get("", "n").ok()?;
        let total: i64 = row.try_get("", "total").ok()?;
        (total == N as i64).then_some((n, total))
    })
    .await;
    eprintln!("instances that delivered, attempts: {rows:?}");
    assert_eq!(rows.0, 2, "both dispatchers claimed deliveries");
    conn.close().await.ok();
    drop(b);
}

/// Narrows the destination's first event subscription to one event type pattern.
async fn narrow_first_subscription(s: &Server, tok: &str, dest: &str, types: &str) {
    let subs = s
        .ok(
            tok,
            "query($id: ID!) { destination(id: $id) { eventSubscriptions { id } } }",
            json!({"id": dest}),
        )
        .await;
    let sub = subs["destination"]["eventSubscriptions"][0]["id"].clone();
    s.ok(
        tok,
        "mutation($id: ID!, $types: [String!]!) { updateEventSubscription(id: $id, input: {eventTypes: $types}) { id } }",
        json!({"id": sub, "types": [types]}),
    )
    .await;
}

// PostgreSQL: a publishing instance keeps the rules it read between publishes; a change made
// through another instance must still apply to its very next publish (the rules epoch that
// every group's insert checks). Eight concurrent publishes per step reach every one of the
// instance's group writers, each of which has read — and kept — the rules before the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_on_another_instance_apply_to_the_next_publish() {
    if pg_available().is_none() {
        return;
    }
    let a = Server::start(Backend::Postgres).await;
    let b = a.start_peer(|_| {}).await;
    let tok = token("rules-peer", "read write publish");
    let burst = |step: i64| {
        let (b, tok) = (&b, &tok);
        async move {
            let pubs =
                (0..8).map(|i| publish(b, tok, "order.created", json!({"step": step, "i": i})));
            futures_util::future::join_all(pubs).await
        }
    };
    let steps = |r: &Receiver| -> Vec<i64> {
        let mut v: Vec<i64> = r
            .received()
            .iter()
            .map(|x| x.json()["data"]["step"].as_i64().unwrap())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let r1 = Receiver::start().await;
    let d1 = create_destination(&a, &tok, json!({"url": r1.url()})).await;
    // Warm every writer of b: several rounds, so each has read the rules.
    for _ in 0..3 {
        burst(1).await;
    }
    r1.wait_for(24, Duration::from_secs(20)).await;

    // A destination created through a: b's next publishes reach it (and d1).
    let r2 = Receiver::start().await;
    let d2 = create_destination(&a, &tok, json!({"url": r2.url()})).await;
    burst(2).await;
    r2.wait_for(8, Duration::from_secs(20)).await;

    // d1's URL moved to r3 through a: b sends there, not to r1.
    let r3 = Receiver::start().await;
    a.ok(
        &tok,
        "mutation($id: ID!, $url: String!) { updateDestination(id: $id, input: {url: $url}) { id } }",
        json!({"id": d1, "url": r3.url()}),
    )
    .await;
    burst(3).await;
    r3.wait_for(8, Duration::from_secs(20)).await;

    // d2 disabled and d1's subscription narrowed through a: b's order events reach nobody.
    a.ok(
        &tok,
        "mutation($id: ID!) { disableDestination(id: $id) { id } }",
        json!({"id": d2}),
    )
    .await;
    narrow_first_subscription(&a, &tok, &d1, "user.*").await;
    let ids = burst(4).await;
    for id in &ids {
        let e = b
            .ok(
                &tok,
                "query($id: ID!) { event(id: $id) { deliveries { totalCount } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(
            e["event"]["deliveries"]["totalCount"], 0,
            "event {id} of step 4"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(steps(&r1), vec![1, 2], "r1 (d1 before its URL moved)");
    assert_eq!(steps(&r2), vec![2, 3], "r2 (d2 until disabled)");
    assert_eq!(
        steps(&r3),
        vec![3],
        "r3 (d1 after its URL moved, until narrowed)"
    );
    drop(b);
}

// Every change to the rules applies to the very next publish (SQLite keeps the rules between
// publishes and must drop them on each change): a new destination, a narrowed subscription,
// a disabled destination, and one switched off by a 410 Gone.
both!(
    rule_changes_apply_to_the_next_publish,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("rules", "read write publish");
        let a = Receiver::start().await;
        let da = create_destination(&s, &tok, json!({"url": a.url()})).await;
        publish(&s, &tok, "order.created", json!({"n": 1})).await;
        a.wait_for(1, Duration::from_secs(10)).await;

        // A destination created now gets the next event.
        let b = Receiver::start().await;
        let db = create_destination(&s, &tok, json!({"url": b.url()})).await;
        publish(&s, &tok, "order.created", json!({"n": 2})).await;
        b.wait_for(1, Duration::from_secs(10)).await;

        // Narrowing a's subscription: the next order event no longer reaches it.
        narrow_first_subscription(&s, &tok, &da, "user.*").await;
        // Disabling b: it gets nothing more either.
        s.ok(
            &tok,
            "mutation($id: ID!) { disableDestination(id: $id) { id } }",
            json!({"id": db}),
        )
        .await;
        publish(&s, &tok, "order.created", json!({"n": 3})).await;
        // A 410 from c switches c off; its next event goes nowhere.
        let c = Receiver::start().await;
        c.status(410);
        let dc = create_destination(&s, &tok, json!({"url": c.url()})).await;
        publish(&s, &tok, "user.created", json!({"n": 4})).await;
        eventually(Duration::from_secs(10), "c disabled by 410", || async {
            let st = destination_state(&s, &tok, &dc).await;
            (st["enabled"] == false).then_some(())
        })
        .await;
        publish(&s, &tok, "user.created", json!({"n": 5})).await;
        // a gets 1 and 2 (every event then), not 3 (narrowed to user.*), then 4 and 5.
        let got = a.wait_for(4, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ns = |r: &Receiver| -> Vec<i64> {
            r.received()
                .iter()
                .map(|x| x.json()["data"]["n"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(got.len(), 4);
        let mut na = ns(&a);
        na.sort();
        assert_eq!(na, vec![1, 2, 4, 5], "a");
        assert_eq!(ns(&b), vec![2], "b");
        assert_eq!(ns(&c), vec![4], "c");
        assert_eq!(
            deliveries_of(&s, &tok, &dc).await.len(),
            1,
            "c got a delivery after its 410"
        );
    }
);
