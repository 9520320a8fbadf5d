//! `publishEvent`'s answer to an idempotent retry: the stored event, marked `replayed`, and
//! to a caller without `read` nothing of it beyond its id and type.

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

const PUBLISH_ALL: &str = "mutation($input: PublishEventInput!) {
  publishEvent(input: $input) { id type level payload idempotencyKey createdAt replayed } }";

async fn publish_all(s: &Server, token: &str, input: Value) -> Value {
    let r = s
        .gql(Some(token), PUBLISH_ALL, json!({"input": input}))
        .await;
    assert!(r.get("errors").is_none(), "{r:#}");
    r["data"]["publishEvent"].clone()
}

both!(
    replay_shows_a_publisher_only_id_and_type,
    |backend| async move {
        let s = Server::start(backend).await;
        let publisher = token("acme", "publish");
        let reader = token("acme", "read publish");
        const STORED: &str = "card-4242-stored";
        let first_input = json!({"type": "order.paid", "level": "ERROR", "idempotencyKey": "k1",
                             "payload": {"card": STORED}});

        // A first publish answers in full, whatever the scope: the caller sent all of it.
        let first = publish_all(&s, &publisher, first_input.clone()).await;
        assert_eq!(first["replayed"], false);
        assert_eq!(first["type"], "order.paid");
        assert_eq!(first["level"], "ERROR");
        assert_eq!(first["payload"], json!({"card": STORED}));
        assert_eq!(first["idempotencyKey"], "k1");
        assert!(first["createdAt"].is_string(), "{first:#}");

        // The same key again, with a payload of its own: the stored event's id and type, and
        // nothing else of what was stored.
        let again = json!({"type": "order.paid", "idempotencyKey": "k1", "payload": {"probe": 1}});
        let r = s
            .gql(Some(&publisher), PUBLISH_ALL, json!({"input": again}))
            .await;
        assert!(r.get("errors").is_none(), "{r:#}");
        assert!(!r.to_string().contains(STORED), "{r:#}");
        assert_eq!(
            r["data"]["publishEvent"],
            json!({"id": first["id"], "type": "order.paid", "level": null, "payload": null,
               "idempotencyKey": "k1", "createdAt": null, "replayed": true})
        );

        // With `read`, a replay shows the stored event.
        let full = publish_all(&s, &reader, again.clone()).await;
        assert_eq!(full["replayed"], true);
        let mut want = first.clone();
        want["replayed"] = json!(true);
        assert_eq!(full, want);

        // Nothing new was stored by the replays; a publish without a key is never one.
        let plain = publish_all(&s, &publisher, json!({"type": "a.b", "payload": {}})).await;
        assert_eq!(plain["replayed"], false);
        let n = s.ok(&reader, "{ events { totalCount } }", json!({})).await;
        assert_eq!(n["events"]["totalCount"], 2);
    }
);
