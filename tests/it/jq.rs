//! jq filters on subscriptions and transforms on destinations, through the real server and
//! real receivers.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

const T: Duration = Duration::from_secs(15);

const SUBS: &str = "query($id: ID!) {
  eventSubscriptions(destinationId: $id) { id eventTypes payloadFilter filter updatedAt }
}";

const CREATE_SUB: &str = "mutation($input: CreateEventSubscriptionInput!) {
  createEventSubscription(input: $input) { id filter payloadFilter }
}";

const UPDATE_SUB: &str = "mutation($id: ID!, $input: UpdateEventSubscriptionInput!) {
  updateEventSubscription(id: $id, input: $input) { id filter }
}";

async fn subscriptions(s: &Server, tok: &str, dest: &str) -> Value {
    s.ok(tok, SUBS, json!({"id": dest})).await["eventSubscriptions"].clone()
}

/// The destination's only subscription (the one `createDestination` made).
async fn only_subscription(s: &Server, tok: &str, dest: &str) -> String {
    let subs = subscriptions(s, tok, dest).await;
    assert_eq!(subs.as_array().map(Vec::len), Some(1), "{subs:#}");
    subs[0]["id"].as_str().unwrap().to_string()
}

const PAID: &str = r#".data.amount >= 100 and .data.currency == "EUR""#;

both!(filter_delivers_only_matching_events, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "eventTypes": ["order.*"]}),
    )
    .await;
    let sub = only_subscription(&s, &tok, &dest).await;
    let r = s
        .ok(
            &tok,
            UPDATE_SUB,
            json!({"id": sub, "input": {"filter": PAID}}),
        )
        .await;
    assert_eq!(r["updateEventSubscription"]["filter"], PAID);

    let events = [
        (json!({"amount": 150, "currency": "EUR"}), true),
        (json!({"amount": 50, "currency": "EUR"}), false),
        (json!({"amount": 500, "currency": "USD"}), false),
        (json!({"currency": "EUR"}), false),
        (json!("not an object"), false),
        (json!({"amount": 100, "currency": "EUR", "n": 2}), true),
    ];
    let mut wanted = Vec::new();
    for (payload, want) in &events {
        let id = publish(&s, &tok, "order.paid", payload.clone()).await;
        if *want {
            wanted.push(id);
        }
    }
    // Deliveries are planned when the event is published: the refused events have none.
    let got = rx.wait_for(2, T).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default())
        .collect();
    ids.sort();
    wanted.sort();
    assert_eq!(ids, wanted);
    wait_status(&s, &tok, &dest, 2, "SUCCEEDED", T).await;
    // The filter sees the whole event: type and level, not only the payload.
    s.ok(
        &tok,
        UPDATE_SUB,
        json!({"id": sub, "input": {"filter": r#".type == "order.refunded" and .level == "WARN""#}}),
    )
    .await;
    publish_input(
        &s,
        &tok,
        json!({"type": "order.refunded", "payload": {}, "level": "INFO"}),
    )
    .await;
    let warn = publish_input(
        &s,
        &tok,
        json!({"type": "order.refunded", "payload": {}, "level": "WARN"}),
    )
    .await;
    let got = rx.wait_for(3, T).await;
    assert_eq!(got[2].header("webhook-id").as_deref(), warn["id"].as_str());
    assert_eq!(deliveries_of(&s, &tok, &dest).await.len(), 3);
    // Removing the filter lets everything through again.
    s.ok(
        &tok,
        UPDATE_SUB,
        json!({"id": sub, "input": {"filter": null}}),
    )
    .await;
    publish(&s, &tok, "order.paid", json!({"amount": 1})).await;
    rx.wait_for(4, T).await;
});

both!(filter_syntax_error_is_refused, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write");
    let dest = create_destination(&s, &tok, json!({"url": "http://127.0.0.1:9/x"})).await;
    let sub = only_subscription(&s, &tok, &dest).await;
    let before = subscriptions(&s, &tok, &dest).await;
    for (filter, position) in [
        (".data.amount >=", "line 1, column 16"),
        (".data |\n  nosuch(1)", "line 2, column 3"),
        ("{a:", "line 1"),
        ("", "empty"),
    ] {
        let (code, e) = s
            .err_code(
                Some(&tok),
                UPDATE_SUB,
                json!({"id": sub, "input": {"filter": filter}}),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "{filter}: {e}");
        assert_eq!(e["extensions"]["field"], "filter", "{filter}: {e}");
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(msg.contains(position), "{filter}: {msg}");
        let (code, e) = s
            .err_code(
                Some(&tok),
                CREATE_SUB,
                json!({"input": {"destinationId": dest, "eventTypes": ["*"], "filter": filter}}),
            )
            .await;
        assert_eq!(code, "BAD_USER_INPUT", "{filter}: {e}");
        assert_eq!(e["extensions"]["field"], "filter", "{filter}: {e}");
    }
    // Nothing was written: neither the update nor a new subscription.
    assert_eq!(subscriptions(&s, &tok, &dest).await, before);
});

both!(payload_filter_works_beside_filter, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "eventTypes": ["nothing.here"]}),
    )
    .await;
    let r = s
        .ok(
            &tok,
            CREATE_SUB,
            json!({"input": {"destinationId": dest, "eventTypes": ["user.*"],
                   "payloadFilter": {"kind": "vip"}, "filter": ".data.age >= 18"}}),
        )
        .await;
    assert_eq!(r["createEventSubscription"]["filter"], ".data.age >= 18");
    let mut wanted = Vec::new();
    for (payload, want) in [
        (json!({"kind": "vip", "age": 30}), true),
        (json!({"kind": "vip", "age": 10}), false),
        (json!({"kind": "basic", "age": 30}), false),
    ] {
        let id = publish(&s, &tok, "user.created", payload).await;
        if want {
            wanted.push(id);
        }
    }
    // payloadFilter alone still filters as before.
    let other = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "eventTypes": ["nothing.here"]}),
    )
    .await;
    s.ok(
        &tok,
        CREATE_SUB,
        json!({"input": {"destinationId": other, "eventTypes": ["team.*"],
               "payloadFilter": {"kind": "vip"}}}),
    )
    .await;
    wanted.push(publish(&s, &tok, "team.created", json!({"kind": "vip"})).await);
    publish(&s, &tok, "team.created", json!({"kind": "basic"})).await;
    let got = rx.wait_for(2, T).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default())
        .collect();
    ids.sort();
    wanted.sort();
    assert_eq!(ids, wanted);
    assert_eq!(deliveries_of(&s, &tok, &dest).await.len(), 1);
    assert_eq!(deliveries_of(&s, &tok, &other).await.len(), 1);
});
