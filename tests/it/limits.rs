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
    let (code, e) = s.err_code(Some(&t), deep, json!({})).await;
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{e:#}");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("nested too deep: 15 levels of fields, the limit is 12"),
        "{e:#}"
    );
    assert_eq!(
        (&e["extensions"]["depth"], &e["extensions"]["maxDepth"]),
        (&json!(15), &json!(12))
    );
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

/// A `read` token's request is bounded by its cost, which counts every row it can return:
/// connections four deep are refused naming the cost and the limit, before any statement
/// runs, while the pages the dashboard asks for pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_cost_counts_the_rows_pages_can_return() {
    let s = Server::start(Backend::Sqlite).await;
    let admin = token("cost", "admin");
    let receiver = Receiver::start().await;
    let dest = create_destination(&s, &admin, json!({"url": receiver.url()})).await;
    publish(&s, &admin, "cost.e", json!({})).await;
    let t = token("cost", "read");
    let four_deep = [
        // Defaults: 20 rows a page.
        "{ destinations { nodes { deliveries { nodes { event { deliveries { nodes { \
         destination { deliveries { nodes { id } } } } } } } } } } }",
        // Small pages still multiply: 10 × 10 × 10 × 10.
        "{ events(first: 10) { nodes { deliveries(first: 10) { nodes { destination { \
         deliveries(first: 10) { nodes { event { deliveries(first: 10) { nodes { id } } } } } } } } } } }",
        // Attempts count as a page too.
        "{ deliveries(first: 12) { nodes { attempts(first: 12) { delivery { event { \
         deliveries(first: 12) { nodes { attempts(first: 12) { id } } } } } } } } }",
    ];
    for q in four_deep {
        let (code, e) = s.err_code(Some(&t), q, json!({})).await;
        assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{e:#}");
        let cost = e["extensions"]["cost"].as_u64().unwrap();
        assert!(cost > 20_000, "{e:#}");
        assert_eq!(e["extensions"]["maxCost"], 20_000, "{e:#}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("Query costs {cost}")) && msg.contains("limit of 20000"),
            "{msg}"
        );
    }
    // Two 100-row pages nested are 10 000 rows of two values: refused too.
    let wide = "{ destinations(first: 100) { nodes { deliveries(first: 100) { nodes { id } } } } }";
    let (code, _) = s.err_code(Some(&t), wide, json!({})).await;
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED");
    // Variables count like literals.
    let q = "query($n: Int) { destinations(first: $n) { nodes { deliveries(first: $n) { nodes { id } } } } }";
    let (code, e) = s.err_code(Some(&t), q, json!({"n": 100})).await;
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{e:#}");
    let ok = s.ok(&t, q, json!({"n": 10})).await;
    assert_eq!(
        ok["destinations"]["nodes"][0]["deliveries"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Payloads weigh 100 each: 100 events with payloads fit, 200 (two pages) do not.
    let p = "{ events(first: 100) { nodes { id payload } } }";
    s.ok(&t, p, json!({})).await;
    let two = "{ a: events(first: 100) { nodes { payload } } b: events(first: 100) { nodes { payload } } }";
    assert_eq!(
        s.err_code(Some(&t), two, json!({})).await.0,
        "GRAPHQL_VALIDATION_FAILED"
    );
    // The dashboard's destination page: 25 deliveries with their attempts, stats and charts.
    let page = include_str!("../../ui/js/pages/destination.js");
    let start = page.find("query Destination(").unwrap();
    let end = start + page[start..].find("}`;").unwrap() + 1;
    let since = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let r = s
        .ok(
            &t,
            &page[start..end],
            json!({"id": dest, "since": since.to_rfc3339(), "statsSince": since.to_rfc3339(),
                   "bucket": "MINUTE", "first": 25}),
        )
        .await;
    assert_eq!(r["destination"]["id"], dest);
}

/// The introspection query standard tools send is answered in full, but introspection's
/// lists cannot be nested to multiply its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_has_its_own_bounds() {
    let s = Server::start(Backend::Sqlite).await;
    let t = token("intro", "read");
    // `ofType` nested far past the user depth limit (12): one row per level, answered.
    let mut of_type = "name".to_string();
    for _ in 0..14 {
        of_type = format!("kind name ofType {{ {of_type} }}");
    }
    let q = format!("{{ __schema {{ types {{ fields {{ type {{ {of_type} }} }} }} }} }}");
    let r = s.ok(&t, &q, json!({})).await;
    assert!(r["__schema"]["types"].as_array().unwrap().len() > 20);
    // Lists three deep multiply: refused, as graphql-js' MaxIntrospectionDepthRule does.
    let q = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
    let (code, e) = s.err_code(Some(&t), q, json!({})).await;
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{e:#}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Maximum introspection depth exceeded"),
        "{e:#}"
    );
    // Hidden behind fragments, the same.
    let q = "{ __type(name: \"Query\") { ...A } } fragment A on __Type { fields { type { ...B } } } \
             fragment B on __Type { interfaces { possibleTypes { name } } }";
    assert_eq!(
        s.err_code(Some(&t), q, json!({})).await.0,
        "GRAPHQL_VALIDATION_FAILED"
    );
    // User data next to introspection keeps its own depth limit.
    let deep = "{ __typename deliveries(first: 1) { nodes { destination { deliveries(first: 1) { nodes { \
                event { deliveries(first: 1) { nodes { destination { deliveries(first: 1) { \
                nodes { event { deliveries(first: 1) { nodes { id } } } } } } } } } } } } } } }";
    let (code, e) = s.err_code(Some(&t), deep, json!({})).await;
    assert_eq!(code, "GRAPHQL_VALIDATION_FAILED", "{e:#}");
    assert_eq!(e["extensions"]["maxDepth"], 12, "{e:#}");
}
