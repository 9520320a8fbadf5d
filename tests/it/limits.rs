//! Every configurable limit answers with a clear error naming it, and nothing is written.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::*;
use crate::ws::{Incoming, Proto, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_per_tenant_answers_rate_limited_with_a_hint() {
    let s = Server::start_with(Backend::Sqlite, |c| c.limits.publish_rate_per_tenant = 2.0).await;
    let t = token("busy", "admin");
    let mut limited: Option<Value> = None;
    let mut accepted = 0;
    for i in 0..10 {
        let r = s
            .gql(
                Some(&t),
                PUBLISH,
                json!({"input": {"type": "rate.e", "payload": {"i": i}}}),
            )
            .await;
        match r.get("errors") {
            None => accepted += 1,
            Some(e) => limited = Some(e[0].clone()),
        }
    }
    let e = limited.expect("some publishes were limited");
    assert_eq!(e["extensions"]["code"], "RATE_LIMITED", "{e:#}");
    assert!(e["extensions"]["retryAfterSeconds"].as_u64().unwrap() >= 1);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("HOOKLINE_PUBLISH_RATE_PER_TENANT")
    );
    // Limited publishes wrote nothing: only the accepted ones exist.
    let n = s
        .ok(&t, "{ events(first: 100) { totalCount } }", json!({}))
        .await;
    assert_eq!(n["events"]["totalCount"], accepted);
    assert!(accepted < 10);
    // Another tenant has its own bucket.
    let other = token("calm", "admin");
    publish(&s, &other, "rate.e", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_per_tenant_are_capped() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.max_destinations_per_tenant = 2
    })
    .await;
    let t = token("cap", "admin");
    create_destination(&s, &t, json!({"url": "https://example.com/a"})).await;
    create_destination(&s, &t, json!({"url": "https://example.com/b"})).await;
    let (code, e) = s
        .err_code(
            Some(&t),
            CREATE_DEST,
            json!({"input": {"name": "third", "url": "https://example.com/c"}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("HOOKLINE_MAX_DESTINATIONS_PER_TENANT"),
        "{e:#}"
    );
    let n = s
        .ok(&t, "{ destinations(first: 10) { totalCount } }", json!({}))
        .await;
    assert_eq!(n["destinations"]["totalCount"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_body_depth_page_and_batch_limits() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_payload_bytes = 16 * 1024;
    })
    .await;
    let t = token("lim", "admin");
    // Body over the limit: 413, before any GraphQL work.
    let big = "x".repeat(100 * 1024);
    let r = s
        .http
        .post(s.url("/graphql"))
        .bearer_auth(&t)
        .json(&json!({"query": PUBLISH, "variables": {"input": {"type": "a.b", "payload": big}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // The unread body leaves the connection unusable: the server says so, and the client's
    // next request (below) goes on a fresh connection instead of one being closed.
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close"),
        "{:?}",
        r.headers()
    );
    // Payload over its own limit: BAD_USER_INPUT naming the field.
    let (code, e) = s
        .err_code(
            Some(&t),
            PUBLISH,
            json!({"input": {"type": "a.b", "payload": "y".repeat(20 * 1024)}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert_eq!(e["extensions"]["field"], "payload");
    // Too deep a query is refused by the schema's depth limit.
    let deep = "{ deliveries(first: 1) { nodes { destination { deliveries(first: 1) { nodes { \
                event { deliveries(first: 1) { nodes { destination { deliveries(first: 1) { \
                nodes { event { deliveries(first: 1) { nodes { id } } } } } } } } } } } } } } }";
    let r = s.gql(Some(&t), deep, json!({})).await;
    let msg = r["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(msg.contains("nested too deep"), "{r:#}");
    // Page size.
    let (code, e) = s
        .err_code(Some(&t), "{ events(first: 101) { totalCount } }", json!({}))
        .await;
    assert_eq!(
        (code.as_str(), &e["extensions"]["field"]),
        ("BAD_USER_INPUT", &json!("first"))
    );
    // A batch (JSON array) of operations is not accepted.
    let r = s
        .http
        .post(s.url("/graphql"))
        .bearer_auth(&t)
        .json(&json!([{"query": "{ viewer { tenant } }"}, {"query": "{ viewer { tenant } }"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_and_subscriptions_are_bounded() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.max_ws_connections = 1;
        c.limits.max_subscriptions_per_connection = 2;
    })
    .await;
    let t = token("ws", "read");
    let mut first = WsClient::connect(s.addr, Proto::Transport, &t).await;
    // A second connection is refused while the first is open.
    let mut req = format!("ws://{}/graphql/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("second connection should be refused: {other:?}"),
    }
    // Two subscriptions fit on the connection; the third is refused with the limit named.
    let q = "subscription { deliveryAttempts { id } }";
    first.subscribe("a", q, json!({})).await;
    first.subscribe("b", q, json!({})).await;
    first.subscribe("c", q, json!({})).await;
    // Subscriptions start concurrently, so whichever comes third is the one refused.
    let refused = loop {
        match first.recv(Duration::from_secs(5)).await {
            Some(Incoming::Error { payload, .. }) => break payload,
            Some(Incoming::Next { payload, .. }) if payload.get("errors").is_some() => {
                break payload;
            }
            None => panic!("no subscription was refused"),
            _ => continue,
        }
    };
    assert!(
        refused
            .to_string()
            .contains("at most 2 subscriptions per connection"),
        "{refused:#}"
    );
}
