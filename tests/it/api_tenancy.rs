//! Tenant isolation: another tenant's objects are invisible to every query and untouchable by
//! every mutation, and look exactly like objects that do not exist.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Receiver, Server, eventually, publish, token};

/// `harness::create_destination`, with a URL (a closed local port) when the input has none.
async fn create_destination(s: &Server, token: &str, mut input: Value) -> String {
    if input.get("url").is_none() {
        input["url"] = json!("http://127.0.0.1:9/hook");
    }
    crate::harness::create_destination(s, token, input).await
}

/// Tenant A with a destination, its subscription, an event and a finished delivery.
struct World {
    s: Server,
    rx: Receiver,
    a: String,
    b: String,
    dest: String,
    sub: String,
    event: String,
    delivery: String,
}

async fn world(backend: Backend) -> World {
    let s = Server::start(backend).await;
    let rx = Receiver::start().await;
    let a = token("tenant-a", "admin");
    let b = token("tenant-b", "admin");
    let dest = create_destination(
        &s,
        &a,
        json!({"name": "shared-name", "url": rx.url(),
               "headers": [{"name": "X-A", "value": "a-only"}]}),
    )
    .await;
    let r = s
        .ok(
            &a,
            "query($id: ID!) { eventSubscriptions(destinationId: $id) { id } }",
            json!({"id": dest}),
        )
        .await;
    let sub = r["eventSubscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let event = publish(&s, &a, "order.created", json!({"n": 1})).await;
    let delivery = eventually(Duration::from_secs(5), "A's delivery succeeds", || async {
        let r = s
            .ok(
                &a,
                "query($id: ID!) { deliveries(filter: {destinationId: $id}) { nodes { id status } } }",
                json!({"id": dest}),
            )
            .await;
        let n = &r["deliveries"]["nodes"][0];
        (n["status"] == "SUCCEEDED").then(|| n["id"].as_str().unwrap().to_string())
    })
    .await;
    World {
        s,
        rx,
        a,
        b,
        dest,
        sub,
        event,
        delivery,
    }
}

const SNAPSHOT: &str = "query($id: ID!, $d: ID!, $e: ID!) {
  destination(id: $id) { id name url enabled status version createdAt updatedAt updatedBy
    signingSecret previousSecretExpiresAt headers { name value } timeoutMs retrySchedule deletedAt
    eventSubscriptions { id eventTypes eventsPolicy minLevel enabled updatedAt } }
  eventSubscriptions(destinationId: $id) { id eventTypes }
  delivery(id: $d) { id status attemptCount nextAttemptAt completedAt }
  event(id: $e) { id type payload }
  deliveries { totalCount }
  events { totalCount }
  destinations { totalCount }
}";

impl World {
    /// Everything tenant A can see of its objects.
    async fn snapshot(&self) -> Value {
        let d = self
            .s
            .ok(
                &self.a,
                SNAPSHOT,
                json!({"id": self.dest, "d": self.delivery, "e": self.event}),
            )
            .await;
        assert!(!d["destination"].is_null() && !d["delivery"].is_null());
        d
    }
}

fn random_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

both!(tenant_isolation_queries, |backend| async move {
    let w = world(backend).await;
    let (s, b) = (&w.s, &w.b);
    // B may use the same name: names are unique per tenant.
    let b_dest = create_destination(s, b, json!({"name": "shared-name"})).await;

    let r = s
        .ok(
            b,
            "query($id: ID!, $d: ID!, $e: ID!) {
               destination(id: $id) { id }
               eventSubscriptions(destinationId: $id) { id }
               delivery(id: $d) { id }
               event(id: $e) { id }
             }",
            json!({"id": w.dest, "d": w.delivery, "e": w.event}),
        )
        .await;
    assert_eq!(
        r,
        json!({"destination": null, "eventSubscriptions": [], "delivery": null, "event": null})
    );

    let r = s
        .ok(
            b,
            "query($id: ID!, $e: ID!) {
               all: destinations { totalCount nodes { id } }
               named: destinations(filter: {nameContains: \"shared\"}) { totalCount nodes { id } }
               deliveries { totalCount nodes { id } }
               toA: deliveries(filter: {destinationId: $id}) { totalCount nodes { id } }
               ofA: deliveries(filter: {eventId: $e}) { totalCount nodes { id } }
               events { totalCount nodes { id } }
               typed: events(filter: {type: \"order.created\"}) { totalCount nodes { id } }
             }",
            json!({"id": w.dest, "e": w.event}),
        )
        .await;
    let only_b = json!({"totalCount": 1, "nodes": [{"id": b_dest}]});
    let empty = json!({"totalCount": 0, "nodes": []});
    assert_eq!(r["all"], only_b);
    assert_eq!(r["named"], only_b);
    for k in ["deliveries", "toA", "ofA", "events", "typed"] {
        assert_eq!(r[k], empty, "{k}");
    }

    // deliveryMetrics answers for A's destination exactly as for one that does not exist.
    let q = "query($id: ID!, $since: DateTime!) { deliveryMetrics(destinationId: $id, since: $since) { attempts } }";
    let since = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let foreign = s
        .gql(Some(b), q, json!({"id": w.dest, "since": since}))
        .await;
    let missing = s
        .gql(Some(b), q, json!({"id": random_id(), "since": since}))
        .await;
    assert_eq!(code(&foreign), "NOT_FOUND", "{foreign:#}");
    assert_eq!(foreign, missing);
    assert!(!foreign.to_string().contains(&w.dest));
    // ...while A sees its attempt there.
    let r = s.ok(&w.a, q, json!({"id": w.dest, "since": since})).await;
    let attempts: i64 = r["deliveryMetrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attempts"].as_i64().unwrap())
        .sum();
    assert_eq!(attempts, 1, "{r}");

    // The same queries from A do see everything (so the nulls above mean something).
    let snap = w.snapshot().await;
    assert_eq!(snap["deliveries"]["totalCount"], 1);
    assert_eq!(snap["events"]["totalCount"], 1);
    assert_eq!(snap["destinations"]["totalCount"], 1);
    assert_eq!(snap["eventSubscriptions"][0]["id"], w.sub.as_str());
});

both!(tenant_isolation_mutations, |backend| async move {
    let w = world(backend).await;
    let (s, b) = (&w.s, &w.b);
    let before = w.snapshot().await;
    let (dest, sub, delivery) = (w.dest.as_str(), w.sub.as_str(), w.delivery.as_str());

    let cases: [(&str, &str, Value, Value); 11] = [
        (
            "updateDestination",
            "mutation($id: ID!) { updateDestination(id: $id, input: {name: \"pwned\", url: \"https://evil.example/\"}) { id } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "deleteDestination",
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "disableDestination",
            "mutation($id: ID!) { disableDestination(id: $id) { id } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "enableDestination",
            "mutation($id: ID!) { enableDestination(id: $id) { id } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "rotateDestinationSecret",
            "mutation($id: ID!) { rotateDestinationSecret(id: $id, graceSeconds: 0) { signingSecret } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "createEventSubscription",
            "mutation($id: ID!) { createEventSubscription(input: {destinationId: $id, eventTypes: [\"x.y\"]}) { id } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "updateEventSubscription",
            "mutation($id: ID!) { updateEventSubscription(id: $id, input: {eventTypes: [\"x.y\"], enabled: false}) { id } }",
            json!({"id": sub}),
            json!({"id": random_id()}),
        ),
        (
            "deleteEventSubscription",
            "mutation($id: ID!) { deleteEventSubscription(id: $id) }",
            json!({"id": sub}),
            json!({"id": random_id()}),
        ),
        (
            "retryDelivery",
            "mutation($id: ID!) { retryDelivery(id: $id) { id status } }",
            json!({"id": delivery}),
            json!({"id": random_id()}),
        ),
        (
            "replayDeliveries",
            "mutation($id: ID!) { replayDeliveries(destinationId: $id, since: \"2000-01-01T00:00:00Z\", statuses: [SUCCEEDED]) }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
        (
            "sendTestEvent",
            "mutation($id: ID!) { sendTestEvent(destinationId: $id) { id outcome } }",
            json!({"id": dest}),
            json!({"id": random_id()}),
        ),
    ];
    for (name, q, foreign_vars, missing_vars) in cases {
        let foreign = s.gql(Some(b), q, foreign_vars).await;
        assert_eq!(code(&foreign), "NOT_FOUND", "{name}: {foreign:#}");
        assert!(foreign["data"].is_null(), "{name}: {foreign:#}");
        // Indistinguishable from an id that does not exist.
        let missing = s.gql(Some(b), q, missing_vars).await;
        assert_eq!(
            foreign["errors"][0]["message"], missing["errors"][0]["message"],
            "{name}"
        );
        assert_eq!(code(&missing), "NOT_FOUND", "{name}: {missing:#}");
    }

    // Nothing of A's changed, and A's receiver heard nothing more (no test event, no retry).
    assert_eq!(w.snapshot().await, before);
    assert_eq!(w.rx.count(), 1);
    // B's own listings stayed empty too (nothing was created on B's side either).
    let r = s
        .ok(
            b,
            "{ destinations { totalCount } events { totalCount } deliveries { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r,
        json!({"destinations": {"totalCount": 0}, "events": {"totalCount": 0},
               "deliveries": {"totalCount": 0}})
    );
});

both!(tenant_publish_stays_in_tenant, |backend| async move {
    let w = world(backend).await;
    let (s, b) = (&w.s, &w.b);
    let rx_b = Receiver::start().await;
    let b_dest = create_destination(s, b, json!({"name": "b-dest", "url": rx_b.url()})).await;
    let before = w.snapshot().await;

    // Same event type A's destination subscribes to (everything).
    let ev = publish(s, b, "order.created", json!({"n": 2})).await;
    let r = s
        .ok(
            b,
            "query($id: ID!) { event(id: $id) { deliveries { totalCount nodes { destinationId } } } }",
            json!({"id": ev}),
        )
        .await;
    assert_eq!(
        r["event"]["deliveries"],
        json!({"totalCount": 1, "nodes": [{"destinationId": b_dest}]})
    );
    rx_b.wait_for(1, Duration::from_secs(5)).await;
    // A's view is what it was: one event, one delivery, one request received.
    let after = w.snapshot().await;
    assert_eq!(after["deliveries"], before["deliveries"]);
    assert_eq!(after["events"], before["events"]);
    assert_eq!(
        after["deliveries"]["totalCount"], 1,
        "B's event reached A's destination"
    );
    let r = s
        .ok(
            &w.a,
            "query($id: ID!) { event(id: $id) { id } }",
            json!({"id": ev}),
        )
        .await;
    assert!(r["event"].is_null());
    assert_eq!(w.rx.count(), 1);
    assert!(rx_b.received()[0].json().to_string().contains(&ev));
});

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}
