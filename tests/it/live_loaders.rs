//! DataLoaders: a page of deliveries with their events, destinations and attempts costs the
//! same number of SQL statements whatever the page size. Counted with SeaORM's metric
//! callback on the read connection the schema's resolvers use.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::{Request, Variables};
use futures_util::StreamExt;
use hookline::auth::Principal;
use hookline::graphql::{AppSchema, Caller, build_schema};
use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

async fn exec(schema: &AppSchema, p: &Principal, query: &str, vars: Value) -> Value {
    let r = schema
        .execute(
            Request::new(query)
                .variables(Variables::from_json(vars))
                .data(Caller(Ok(p.clone()))),
        )
        .await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    r.data.into_json().unwrap()
}

/// A page of deliveries with their event, destination and attempts.
const PAGE: &str = "query($n: Int!) { deliveries(first: $n) { edges { node {
  id status
  event { id type }
  destination { id name }
  attempts { id outcome }
} } } }";

/// A page of destinations with their subscriptions and statistics.
const DESTS: &str = "query($n: Int!) { destinations(first: $n) { edges { node {
  id name
  eventSubscriptions { id eventTypes }
  stats { totalAttempts successRate pendingDeliveries }
} } } }";

/// Destinations with their own pages of deliveries.
const DEST_DELIVERIES: &str = "query($n: Int!) {
  destinations(first: $n) { edges { node { id name
    deliveries(first: 3) { edges { cursor node { id destinationId } } pageInfo { hasNextPage } }
  } } }
}";

/// Events with their own pages of deliveries.
const EVENT_DELIVERIES: &str = "query($n: Int!) {
  events(first: $n) { edges { node { id
    deliveries { edges { node { id eventId } } }
  } } }
}";

both!(
    a_page_of_deliveries_costs_constant_statements,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let (state, _) = hookline::server::prepare(test_config(&db))
            .await
            .expect("prepare");
        let dispatcher = hookline::dispatch::spawn(state.clone());
        let schema = build_schema(state.clone());
        let p = state
            .keys
            .verify(&token("acme", "read write publish"))
            .unwrap();

        // Seed through the real paths: two destinations, 50 events each, delivered; then B's 50
        // replayed, so B's deliveries have two attempts each.
        let (ok_a, ok_b) = (Receiver::start().await, Receiver::start().await);
        let mut dests = Vec::new();
        for (name, r) in [("a", &ok_a), ("b", &ok_b)] {
            let d = exec(
                &schema,
                &p,
                CREATE_DEST,
                json!({"input": {"name": name, "url": r.url()}}),
            )
            .await;
            dests.push(d["createDestination"]["id"].as_str().unwrap().to_string());
        }
        let since = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        let published: Vec<Value> = futures_util::stream::iter(0..50)
            .map(|i| {
                exec(
                    &schema,
                    &p,
                    PUBLISH,
                    json!({"input": {"type": format!("t.{}", i % 3), "payload": {"n": i}}}),
                )
            })
            .buffer_unordered(8)
            .collect()
            .await;
        assert_eq!(published.len(), 50);
        ok_a.wait_for(50, Duration::from_secs(30)).await;
        ok_b.wait_for(50, Duration::from_secs(30)).await;
        // Replay once B's first attempts are committed (only finished deliveries replay).
        let succeeded = "query($d: ID!) { deliveries(first: 100, filter: {destinationId: $d, status: SUCCEEDED}) { edges { cursor } } }";
        eventually(
            Duration::from_secs(30),
            "B's deliveries to succeed",
            || async {
                let d = exec(&schema, &p, succeeded, json!({"d": dests[1]})).await;
                (d["deliveries"]["edges"].as_array().unwrap().len() == 50).then_some(())
            },
        )
        .await;
        let n = exec(
        &schema,
        &p,
        "mutation($d: ID!, $s: DateTime!) { replayDeliveries(destinationId: $d, since: $s, statuses: [SUCCEEDED]) }",
        json!({"d": dests[1], "s": since.to_rfc3339()}),
    )
    .await;
        assert_eq!(n["replayDeliveries"], 50);
        ok_b.wait_for(100, Duration::from_secs(30)).await;
        eventually(
            Duration::from_secs(30),
            "150 committed attempts",
            || async {
                let d = exec(&schema, &p, PAGE, json!({"n": 100})).await;
                let edges = d["deliveries"]["edges"].as_array().unwrap().clone();
                let attempts: usize = edges
                    .iter()
                    .map(|e| e["node"]["attempts"].as_array().unwrap().len())
                    .sum();
                let done = edges.iter().all(|e| e["node"]["status"] == "SUCCEEDED");
                (attempts == 150 && done).then_some(())
            },
        )
        .await;
        // Nothing else touches the database while counting.
        state.shutdown.cancel();
        dispatcher.stopped().await;

        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut counted = state.clone();
        let sink = log.clone();
        counted
            .db
            .read
            .set_metric_callback(move |info| sink.lock().unwrap().push(info.statement.sql.clone()));
        let counted = build_schema(counted);
        let statements = |query: &'static str, n: usize| {
            let (counted, p, log) = (&counted, &p, log.clone());
            async move {
                log.lock().unwrap().clear();
                let d = exec(counted, p, query, json!({"n": n})).await;
                let statements = log.lock().unwrap().clone();
                (d, statements)
            }
        };

        // Deliveries with their events, destinations and attempts.
        for n in [100, 10, 1] {
            let (d, sql) = statements(PAGE, n).await;
            let edges = d["deliveries"]["edges"].as_array().unwrap().clone();
            assert_eq!(edges.len(), n);
            for e in &edges {
                let node = &e["node"];
                assert!(node["event"]["id"].is_string(), "{node}");
                assert!(node["event"]["type"].is_string(), "{node}");
                let dest = node["destination"]["name"].as_str().unwrap();
                let want = if dest == "a" { 1 } else { 2 };
                assert_eq!(node["attempts"].as_array().unwrap().len(), want, "{node}");
            }
            // The page itself, then one statement per relation, whatever the page size.
            assert_eq!(sql.len(), 4, "{n} deliveries: {sql:#?}");
        }

        // Destinations with their subscriptions and statistics: twelve of them.
        for i in 0..10 {
            exec(
                &schema,
                &p,
                CREATE_DEST,
                json!({"input": {"name": format!("idle-{i}"), "url": ok_a.url()}}),
            )
            .await;
        }
        for n in [12, 5, 1] {
            let (d, sql) = statements(DESTS, n).await;
            let edges = d["destinations"]["edges"].as_array().unwrap().clone();
            assert_eq!(edges.len(), n);
            for e in &edges {
                let node = &e["node"];
                assert_eq!(
                    node["eventSubscriptions"][0]["eventTypes"],
                    json!(["*"]),
                    "{node}"
                );
                let total = match node["name"].as_str().unwrap() {
                    "a" => 50,
                    "b" => 100,
                    _ => 0,
                };
                assert_eq!(node["stats"]["totalAttempts"], total, "{node}");
                assert_eq!(node["stats"]["pendingDeliveries"], 0, "{node}");
            }
            // The page, the subscriptions, and the statistics (the destinations, their
            // rollups, their pending counts: queued and parked, one statement per index).
            assert_eq!(sql.len(), 6, "{n} destinations: {sql:#?}");
        }

        // Each destination's and each event's own page of deliveries: one statement for all
        // the parents' pages (a UNION ALL of per-parent pages), whatever their number.
        for n in [12, 5, 1] {
            let (d, sql) = statements(DEST_DELIVERIES, n).await;
            let dests = d["destinations"]["edges"].as_array().unwrap().clone();
            assert_eq!(dests.len(), n);
            for e in &dests {
                let node = &e["node"];
                let page = &node["deliveries"];
                let rows = page["edges"].as_array().unwrap();
                let (want, more) = match node["name"].as_str().unwrap() {
                    "a" | "b" => (3, true),
                    _ => (0, false),
                };
                assert_eq!(rows.len(), want, "{node}");
                assert_eq!(page["pageInfo"]["hasNextPage"], more, "{node}");
                for r in rows {
                    assert_eq!(r["node"]["destinationId"], node["id"], "{node}");
                }
                // Newest first, as the top-level listing.
                let ids: Vec<&str> = rows.iter().map(|r| r["cursor"].as_str().unwrap()).collect();
                let mut sorted = ids.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                assert_eq!(ids, sorted, "{node}");
            }
            // The page of destinations, then one statement for all their pages.
            assert_eq!(sql.len(), 2, "{n} destinations: {sql:#?}");
            let (d, sql) = statements(EVENT_DELIVERIES, n).await;
            let events = d["events"]["edges"].as_array().unwrap().clone();
            assert_eq!(events.len(), n);
            for e in &events {
                let node = &e["node"];
                let rows = node["deliveries"]["edges"].as_array().unwrap();
                assert_eq!(rows.len(), 2, "{node}");
                for r in rows {
                    assert_eq!(r["node"]["eventId"], node["id"], "{node}");
                }
            }
            // The page of events, then one statement for all their pages.
            assert_eq!(sql.len(), 2, "{n} events: {sql:#?}");
        }
    }
);
