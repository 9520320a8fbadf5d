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

/// A server that accepts jq programs (`HOOKLINE_JQ_PROGRAMS`; off by default).
async fn jq_server(backend: Backend) -> Server {
    Server::start_with(backend, |c| c.jq_programs = true).await
}

both!(jq_programs_are_off_by_default, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write");
    let dest = create_destination(&s, &tok, json!({"url": "http://127.0.0.1:9/x"})).await;
    let sub = only_subscription(&s, &tok, &dest).await;
    let before = subscriptions(&s, &tok, &dest).await;
    for (query, vars, field) in [
        (
            UPDATE_SUB,
            json!({"id": sub, "input": {"filter": PAID}}),
            "filter",
        ),
        (
            CREATE_SUB,
            json!({"input": {"destinationId": dest, "eventTypes": ["*"], "filter": PAID}}),
            "filter",
        ),
        (
            CREATE_DEST,
            json!({"input": {"name": "y", "url": "http://127.0.0.1:9/", "transform": "{text: .type}"}}),
            "transform",
        ),
    ] {
        let (code, e) = s.err_code(Some(&tok), query, vars).await;
        assert_eq!(code, "BAD_USER_INPUT", "{e}");
        assert_eq!(e["extensions"]["field"], field, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("HOOKLINE_JQ_PROGRAMS"),
            "{e}"
        );
    }
    // Nothing was written: the subscription and the destination list are as they were.
    assert_eq!(subscriptions(&s, &tok, &dest).await, before);
    let all = s
        .ok(
            &tok,
            "{ destinations(first: 10) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(all["destinations"]["totalCount"], 1, "{all}");
    // Removing a program (null) is always allowed.
    s.ok(
        &tok,
        UPDATE_SUB,
        json!({"id": sub, "input": {"filter": null}}),
    )
    .await;
});

both!(filter_delivers_only_matching_events, |backend| async move {
    let s = jq_server(backend).await;
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
    let s = jq_server(backend).await;
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
    let s = jq_server(backend).await;
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

const PAID_TEXT: &str = r#"{text: "Paid: \(.data.amount)", event: .id, kind: .type}"#;

both!(transform_builds_the_signed_body, |backend| async move {
    let s = jq_server(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(&s, &tok, json!({"url": rx.url(), "transform": PAID_TEXT})).await;
    let q = "query($id: ID!) { destination(id: $id) { transform signingSecret } }";
    let d = s.ok(&tok, q, json!({"id": dest})).await["destination"].clone();
    assert_eq!(d["transform"], PAID_TEXT);
    let secret = d["signingSecret"].as_str().unwrap().to_string();
    let ev = publish(&s, &tok, "order.paid", json!({"amount": 150})).await;
    let got = rx.wait_for(1, T).await;
    let body = std::str::from_utf8(&got[0].body).unwrap();
    assert_eq!(
        body,
        format!(r#"{{"text":"Paid: 150","event":"{ev}","kind":"order.paid"}}"#)
    );
    // The signature covers the body actually sent.
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("the transformed body verifies");
    assert_eq!(got[0].header("webhook-id").as_deref(), Some(ev.as_str()));
    // Removing the transform brings the envelope back.
    s.ok(
        &tok,
        "mutation($id: ID!) { updateDestination(id: $id, input: {transform: null}) { transform } }",
        json!({"id": dest}),
    )
    .await;
    publish(&s, &tok, "order.paid", json!({"amount": 7})).await;
    let got = rx.wait_for(2, T).await;
    assert_eq!(got[1].json()["data"], json!({"amount": 7}));
});

both!(
    transform_failure_fails_only_that_delivery,
    |backend| async move {
        let s = jq_server(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let program =
            r#"if .data.amount then {amount: .data.amount} else error("amount missing") end"#;
        let dest = create_destination(
            &s,
            &tok,
            json!({"url": rx.url(), "transform": program, "maxAttempts": 1}),
        )
        .await;
        let bad = publish(&s, &tok, "order.paid", json!({"currency": "EUR"})).await;
        let good = publish(&s, &tok, "order.paid", json!({"amount": 3})).await;
        let got = rx.wait_for(1, T).await;
        assert_eq!(got[0].header("webhook-id").as_deref(), Some(good.as_str()));
        assert_eq!(
            std::str::from_utf8(&got[0].body).unwrap(),
            r#"{"amount":3}"#
        );
        let ds = wait_deliveries(&s, &tok, &dest, 2, T, |d| {
            d["status"] == "SUCCEEDED" || d["status"] == "FAILED"
        })
        .await;
        let failed: Vec<&Value> = ds.iter().filter(|d| d["eventId"] == bad.as_str()).collect();
        assert_eq!(failed.len(), 1, "{ds:#?}");
        let f = failed[0];
        assert_eq!(f["status"], "FAILED", "{f:#}");
        let last_error = f["lastError"].as_str().unwrap_or_default();
        assert!(last_error.contains("amount missing"), "{f:#}");
        assert_eq!(f["attempts"][0]["errorKind"], "TRANSFORM", "{f:#}");
        assert!(
            f["attempts"][0]["errorMessage"]
                .as_str()
                .unwrap_or_default()
                .starts_with("transform failed: "),
            "{f:#}"
        );
        // Nothing was sent for it.
        assert_eq!(rx.count(), 1);
        // The dispatcher carries on.
        publish(&s, &tok, "order.paid", json!({"amount": 4})).await;
        rx.wait_for(2, T).await;
    }
);

both!(transform_is_validated, |backend| async move {
    let s = jq_server(backend).await;
    let tok = token("t1", "read write");
    let update = "mutation($id: ID!, $input: UpdateDestinationInput!) {
      updateDestination(id: $id, input: $input) { version transform batchSize } }";
    let (code, e) = s
        .err_code(
            Some(&tok),
            CREATE_DEST,
            json!({"input": {"name": "x", "url": "http://127.0.0.1:9/", "transform": "{text: }"}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{e}");
    assert_eq!(e["extensions"]["field"], "transform", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("line 1, column"),
        "{e}"
    );
    // A transform builds one event's body, so it does not combine with batches.
    let (code, e) = s
        .err_code(
            Some(&tok),
            CREATE_DEST,
            json!({"input": {"name": "x", "url": "http://127.0.0.1:9/", "transform": ".data",
                   "batchSize": 10}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{e}");
    assert_eq!(e["extensions"]["field"], "batchSize", "{e}");
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": "http://127.0.0.1:9/", "batchSize": 5}),
    )
    .await;
    let (code, e) = s
        .err_code(
            Some(&tok),
            update,
            json!({"id": dest, "input": {"transform": ".data"}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{e}");
    assert_eq!(e["extensions"]["field"], "transform", "{e}");
    // Nothing was written by the refusals.
    let q = "query { destinations(first: 10) { nodes { name version transform } } }";
    let all = s.ok(&tok, q, json!({})).await["destinations"]["nodes"].clone();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all:#}");
    assert_eq!(all[0]["version"], 1, "{all:#}");
    assert!(all[0]["transform"].is_null(), "{all:#}");
    // Together in one update (batchSize back to 1) is fine.
    let r = s
        .ok(
            &tok,
            update,
            json!({"id": dest, "input": {"transform": ".data", "batchSize": 1}}),
        )
        .await;
    assert_eq!(r["updateDestination"]["transform"], ".data");
});

const PREVIEW: &str = "query($id: ID!, $event: PreviewEventInput!) {
  previewDelivery(destinationId: $id, event: $event) {
    matched reason url headers { name value } body signature } }";

both!(preview_shows_the_exact_request, |backend| async move {
    let s = jq_server(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let dest = create_destination(
        &s,
        &tok,
        json!({"url": rx.url(), "eventTypes": ["order.*"], "transform": PAID_TEXT,
               "headers": [{"name": "X-Api-Key", "value": "key-sekrit-1"}],
               "httpAuth": {"bearer": {"token": "bearer-sekrit-2"}}}),
    )
    .await;
    let sub = only_subscription(&s, &tok, &dest).await;
    s.ok(
        &tok,
        UPDATE_SUB,
        json!({"id": sub, "input": {"filter": PAID}}),
    )
    .await;
    let secret = destination_state(&s, &tok, &dest).await["signingSecret"]
        .as_str()
        .unwrap()
        .to_string();
    let preview = |event: Value| {
        let s = &s;
        let tok = &tok;
        let dest = &dest;
        async move {
            s.ok(tok, PREVIEW, json!({"id": dest, "event": event}))
                .await["previewDelivery"]
                .clone()
        }
    };

    let p =
        preview(json!({"type": "order.paid", "payload": {"amount": 150, "currency": "EUR"}})).await;
    assert_eq!(p["matched"], true, "{p:#}");
    assert!(p["reason"].as_str().unwrap().contains(&sub), "{p:#}");
    assert_eq!(p["url"], rx.url());
    let body: Value = serde_json::from_str(p["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["text"], "Paid: 150");
    assert_eq!(body["kind"], "order.paid");
    // Secrets are masked; nothing of them is anywhere in the answer.
    let text = p.to_string();
    assert!(!text.contains("sekrit"), "{p:#}");
    let header = |name: &str| {
        p["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["value"].as_str().unwrap().to_string())
    };
    assert_eq!(header("x-api-key").as_deref(), Some("***"));
    assert_eq!(header("authorization").as_deref(), Some("Bearer ***"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        header("webhook-signature"),
        p["signature"].as_str().map(String::from)
    );
    // The signature is the one a receiver checks, over this very body.
    let mut hm = axum::http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        hm.insert(name, header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(p["body"].as_str().unwrap().as_bytes(), &hm)
        .expect("the previewed signature verifies");

    // Refusals say which check refused.
    let p =
        preview(json!({"type": "order.paid", "payload": {"amount": 5, "currency": "EUR"}})).await;
    assert_eq!(p["matched"], false, "{p:#}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("filter did not output true"),
        "{p:#}"
    );
    let p = preview(json!({"type": "user.created", "payload": {}, "level": "ERROR"})).await;
    assert_eq!(p["matched"], false, "{p:#}");
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("event type is not subscribed"),
        "{p:#}"
    );
    // A transform failing on the event: no body, and the reason says why.
    s.ok(
        &tok,
        "mutation($id: ID!) { updateDestination(id: $id, input: {transform: \"error(\\\"boom\\\")\"}) { id } }",
        json!({"id": dest}),
    )
    .await;
    let p =
        preview(json!({"type": "order.paid", "payload": {"amount": 150, "currency": "EUR"}})).await;
    assert!(p["body"].is_null(), "{p:#}");
    assert!(p["reason"].as_str().unwrap().contains("boom"), "{p:#}");

    // Scope and tenancy.
    let read_only = token("t1", "read");
    let (code, _) = s
        .err_code(
            Some(&read_only),
            PREVIEW,
            json!({"id": dest, "event": {"type": "a", "payload": 1}}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let other = token("t2", "read write");
    let (code, _) = s
        .err_code(
            Some(&other),
            PREVIEW,
            json!({"id": dest, "event": {"type": "a", "payload": 1}}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, e) = s
        .err_code(
            Some(&tok),
            PREVIEW,
            json!({"id": dest, "event": {"type": "", "payload": 1}}),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT", "{e}");

    // Nothing was sent or stored: the first delivery and request are a real publish's.
    assert!(deliveries_of(&s, &tok, &dest).await.is_empty());
    s.ok(
        &tok,
        "mutation($id: ID!) { updateDestination(id: $id, input: {transform: null}) { id } }",
        json!({"id": dest}),
    )
    .await;
    let ev = publish(
        &s,
        &tok,
        "order.paid",
        json!({"amount": 150, "currency": "EUR"}),
    )
    .await;
    let got = rx.wait_for(1, T).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id").as_deref(), Some(ev.as_str()));
    let events = s
        .ok(
            &tok,
            "query { events(first: 10) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(events["events"]["totalCount"], 1, "{events:#}");
});
