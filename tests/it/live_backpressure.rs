//! Back-pressure on the live plane: a subscriber that stops reading slows neither delivery
//! nor the other subscribers, and one that falls too far behind is told what it missed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::Request;
use futures_util::StreamExt;
use hookline::graphql::{Caller, build_schema};
use hookline::live::{LiveEvent, StatusChange};
use serde_json::json;

use crate::both;
use crate::harness::*;
use crate::live_ws::subscribe;
use crate::ws::{Incoming, Proto, WsClient};

/// Bulky items (each carries its event's payload), so a stalled reader fills its socket.
const BULKY: &str = "subscription($d: ID) {
  deliveryAttempts(destinationId: $d) {
    id eventId outcome delivery { id status event { id payload } }
  }
}";

const LEAN: &str = "subscription($d: ID) { deliveryAttempts(destinationId: $d) { eventId } }";

const EVENTS: usize = 300;

both!(
    stalled_subscriber_does_not_delay_delivery,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let d = create_destination(&s, &tok, json!({"url": ok.url()})).await;

        // Stalled: a tiny TCP receive window and four bulky subscriptions, never read from.
        let mut stalled = WsClient::open(s.addr, Proto::Transport, Some(4096)).await;
        stalled.authenticate(&tok).await;
        let stalled_ids = ["s1", "s2", "s3", "s4"];
        for id in stalled_ids {
            stalled.subscribe(id, BULKY, json!({"d": d})).await;
        }
        stalled.sync().await;

        // Reading: takes its items as they come, in a task of its own.
        let mut reader = subscribe(s.addr, Proto::Transport, &tok, LEAN, json!({"d": d})).await;
        let reading = tokio::spawn(async move {
            let items = reader.take("1", EVENTS, Duration::from_secs(90)).await;
            (items, Instant::now())
        });

        let started = Instant::now();
        let filler = "x".repeat(8 * 1024);
        let published: BTreeSet<String> = futures_util::stream::iter(0..EVENTS)
            .map(|i| publish(&s, &tok, "load.test", json!({"n": i, "filler": filler})))
            .buffer_unordered(16)
            .collect()
            .await;
        assert_eq!(published.len(), EVENTS);
        ok.wait_for(EVENTS, Duration::from_secs(60)).await;
        let delivered_in = started.elapsed();
        assert!(
            delivered_in < Duration::from_secs(30),
            "{EVENTS} deliveries took {delivered_in:?} with a stalled subscriber"
        );

        let (items, done_at) = reading.await.expect("reader");
        let seen: BTreeSet<String> = items
            .iter()
            .map(|v| {
                v["deliveryAttempts"]["eventId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(seen, published, "the reading subscriber missed items");
        let read_in = done_at - started;
        assert!(
            read_in < Duration::from_secs(35),
            "the reading subscriber needed {read_in:?}"
        );

        // The stalled subscriber, once it reads, gets every item or is told what it missed:
        // never a silent gap.
        let mut got: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut lagged = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while stalled_ids
            .iter()
            .any(|id| !lagged.contains(*id) && got.get(*id).map_or(0, BTreeSet::len) < EVENTS)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match stalled.recv(left).await {
                Some(Incoming::Next { id, payload }) => {
                    if let Some(e) = payload.get("errors") {
                        assert!(e.to_string().contains("missed"), "{id}: {payload}");
                        lagged.insert(id);
                        continue;
                    }
                    let a = &payload["data"]["deliveryAttempts"];
                    assert_eq!(a["delivery"]["event"]["payload"]["filler"], filler.as_str());
                    got.entry(id)
                        .or_default()
                        .insert(a["eventId"].as_str().unwrap().to_string());
                }
                other => panic!("stalled subscriber: unexpected {other:?}"),
            }
        }
        for id in stalled_ids {
            if !lagged.contains(id) {
                assert_eq!(got[id], published, "{id} silently missed items");
            }
        }
    }
);

/// Polls `stream` once more, for at most `d`.
async fn next_within<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    d: Duration,
) -> Option<Option<S::Item>> {
    tokio::time::timeout(d, stream.next()).await.ok()
}

const STATUS_Q: &str = "subscription { destinationStatusChanged { destinationId status } }";

fn change(tenant: &str) -> LiveEvent {
    LiveEvent::Status(Arc::new(StatusChange {
        tenant_id: tenant.into(),
        destination_id: uuid::Uuid::now_v7(),
        status: "ACTIVE".into(),
        enabled: true,
        at: chrono::Utc::now(),
    }))
}

// In-process, no socket: a subscriber that is not polled while more than the bus capacity
// (4096) of its tenant's items goes by ends with an error naming how many items it missed;
// one that keeps up gets everything. Other tenants' items never reach its queue.
both!(
    lagging_subscriber_is_told_what_it_missed,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let (state, _) = hookline::server::prepare(test_config(&db))
            .await
            .expect("prepare");
        let schema = build_schema(state.clone());
        let principal = state.keys.verify(&token("acme", "read")).expect("token");
        let open =
            || schema.execute_stream(Request::new(STATUS_Q).data(Caller(Ok(principal.clone()))));
        let mut slow = open();
        let mut fast = open();
        // The first poll runs the resolvers, which join the bus; nothing is there yet.
        assert!(
            next_within(&mut slow, Duration::from_millis(200))
                .await
                .is_none()
        );
        assert!(
            next_within(&mut fast, Duration::from_millis(200))
                .await
                .is_none()
        );
        assert_eq!(state.live.subscriber_count(), 2);

        const SENT: usize = 5000;
        const CAPACITY: usize = 4096;
        for chunk in 0..SENT / 1000 {
            for i in 0..1000 {
                let tenant = if (chunk * 1000 + i) % 10 == 0 {
                    "rival"
                } else {
                    "acme"
                };
                state.live.publish(change(tenant));
            }
            for _ in 0..900 {
                let r = next_within(&mut fast, Duration::from_secs(5))
                    .await
                    .expect("fast subscriber item")
                    .expect("stream open");
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                assert_eq!(
                    r.data.into_json().unwrap()["destinationStatusChanged"]["status"],
                    "ACTIVE"
                );
            }
        }
        assert!(
            next_within(&mut fast, Duration::from_millis(100))
                .await
                .is_none(),
            "the fast subscriber got another tenant's item"
        );

        let r = next_within(&mut slow, Duration::from_secs(5))
            .await
            .expect("slow subscriber is told")
            .expect("stream open");
        let v = serde_json::to_value(&r).unwrap();
        let e = &v["errors"][0];
        // Only acme's items (nine in ten) were queued for it.
        let missed = SENT * 9 / 10 - CAPACITY;
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains(&format!("missed {missed} items")),
            "{v}"
        );
        assert_eq!(e["extensions"]["code"], "UNAVAILABLE", "{v}");
        // ... and the stream ends there rather than carrying on with a gap.
        assert!(matches!(
            next_within(&mut slow, Duration::from_secs(5)).await,
            Some(None)
        ));
    }
);

// Routing: 20 000 items of a busy tenant (five times a queue's capacity) pass an idle
// tenant's subscribers, which stay empty and in step (no lag) and still get their own; a
// subscriber of one destination gets only that destination's. The routes go with the last
// subscriber.
both!(
    idle_tenants_subscribers_are_not_touched_by_a_busy_tenant,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let (state, _) = hookline::server::prepare(test_config(&db))
            .await
            .expect("prepare");
        let schema = build_schema(state.clone());
        let caller = |t: &str| Caller(Ok(state.keys.verify(&token(t, "read")).expect("token")));
        let mine = uuid::Uuid::now_v7();
        let by_dest = "subscription($d: ID) {
          destinationStatusChanged(destinationId: $d) { destinationId } }";
        let mut idle = schema.execute_stream(Request::new(STATUS_Q).data(caller("acme")));
        let mut idle_dest = schema.execute_stream(
            Request::new(by_dest)
                .variables(async_graphql::Variables::from_json(
                    json!({"d": mine.to_string()}),
                ))
                .data(caller("acme")),
        );
        for s in [&mut idle, &mut idle_dest] {
            assert!(next_within(s, Duration::from_millis(200)).await.is_none());
        }
        assert_eq!(state.live.subscriber_count(), 2);

        for _ in 0..20_000 {
            state.live.publish(change("rival"));
        }
        // acme's other destinations: the unfiltered subscriber gets them, the other not.
        for _ in 0..5_000 {
            state.live.publish(change("acme"));
        }
        let mut own = StatusChange {
            tenant_id: "acme".into(),
            destination_id: mine,
            status: "FAILING".into(),
            enabled: true,
            at: chrono::Utc::now(),
        };
        state.live.publish(LiveEvent::Status(Arc::new(own.clone())));
        let r = next_within(&mut idle_dest, Duration::from_secs(5))
            .await
            .expect("its own item")
            .expect("stream open");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            r.data.into_json().unwrap()["destinationStatusChanged"]["destinationId"],
            mine.to_string()
        );
        assert!(
            next_within(&mut idle_dest, Duration::from_millis(200))
                .await
                .is_none(),
            "the destination's subscriber got another destination's item"
        );
        // The unfiltered one lagged on acme's own 5 001 (more than it can queue) — never on
        // the rival's 20 000.
        let r = next_within(&mut idle, Duration::from_secs(5))
            .await
            .expect("told")
            .expect("stream open");
        let v = serde_json::to_value(&r).unwrap();
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("missed 905 items"),
            "{v}"
        );
        drop(idle);
        drop(idle_dest);
        own.status = "ACTIVE".into();
        state.live.publish(LiveEvent::Status(Arc::new(own)));
        assert_eq!(state.live.subscriber_count(), 0);
    }
);
