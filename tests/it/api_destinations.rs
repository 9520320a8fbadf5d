//! Destinations and event subscriptions through the API: pagination and filters, soft delete,
//! optimistic concurrency, secret rotation, subscription CRUD.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Receiver, Server, eventually, publish, token, token_as};

/// `harness::create_destination`, with a URL (a closed local port) when the input has none.
async fn create_destination(s: &Server, token: &str, mut input: Value) -> String {
    if input.get("url").is_none() {
        input["url"] = json!("http://127.0.0.1:9/hook");
    }
    crate::harness::create_destination(s, token, input).await
}

const PAGE: &str = "query($first: Int, $after: String, $last: Int, $before: String,
                         $filter: DestinationFilter) {
  destinations(first: $first, after: $after, last: $last, before: $before, filter: $filter) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id name enabled status createdAt } }
  }
}";

fn ids(conn: &Value) -> Vec<String> {
    conn["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Walks the whole filtered listing forwards with `first = n`; returns the ids in order.
async fn walk_forwards(s: &Server, t: &str, n: i64, filter: Value, total: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = Value::Null;
    for page in 0.. {
        assert!(page < 100, "forward walk does not end");
        let r = s
            .ok(
                t,
                PAGE,
                json!({"first": n, "after": after, "filter": filter}),
            )
            .await;
        let c = &r["destinations"];
        assert_eq!(c["totalCount"], total);
        let got = ids(c);
        let more = c["pageInfo"]["hasNextPage"].as_bool().unwrap();
        if more {
            assert_eq!(got.len() as i64, n, "a non-final page is full");
        }
        if let (Some(first), Some(last)) = (got.first(), got.last()) {
            assert_eq!(c["pageInfo"]["startCursor"], first.as_str());
            assert_eq!(c["pageInfo"]["endCursor"], last.as_str());
        }
        for e in c["edges"].as_array().unwrap() {
            assert_eq!(e["cursor"], e["node"]["id"]);
        }
        out.extend(got);
        if !more {
            break;
        }
        after = c["pageInfo"]["endCursor"].clone();
    }
    out
}

/// Walks backwards with `last = n` from the end; returns the ids in listing order.
async fn walk_backwards(s: &Server, t: &str, n: i64, filter: Value, total: i64) -> Vec<String> {
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut before = Value::Null;
    for page in 0.. {
        assert!(page < 100, "backward walk does not end");
        let r = s
            .ok(
                t,
                PAGE,
                json!({"last": n, "before": before, "filter": filter}),
            )
            .await;
        let c = &r["destinations"];
        assert_eq!(c["totalCount"], total);
        let got = ids(c);
        let more = c["pageInfo"]["hasPreviousPage"].as_bool().unwrap();
        if more {
            assert_eq!(got.len() as i64, n, "a non-final page is full");
        }
        pages.push(got);
        if !more {
            break;
        }
        before = c["pageInfo"]["startCursor"].clone();
    }
    pages.into_iter().rev().flatten().collect()
}

fn assert_each_once(walk: &[String], expected: &[String], what: &str) {
    let unique: HashSet<&String> = walk.iter().collect();
    assert_eq!(unique.len(), walk.len(), "{what}: a destination came twice");
    assert_eq!(walk, expected, "{what}");
}

/// 23 destinations: every 4th disabled, every 3rd named "alpha-…".
async fn seed(s: &Server, t: &str) -> Vec<Value> {
    let mut created = Vec::new();
    for i in 0..23 {
        let name = if i % 3 == 0 {
            format!("alpha-{i:02}")
        } else {
            format!("beta-{i:02}")
        };
        let d = s
            .ok(
                t,
                "mutation($input: CreateDestinationInput!) { createDestination(input: $input) {
                   id name enabled status createdAt } }",
                json!({"input": {"name": name, "url": "https://example.com/h", "enabled": i % 4 != 0}}),
            )
            .await;
        created.push(d["createDestination"].clone());
    }
    created
}

fn id_list<'a>(v: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    v.into_iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

both!(pagination_walks, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let created = seed(&s, &t).await;
    // Another tenant's destinations never show up in the walk.
    create_destination(&s, &token("other", "write"), json!({})).await;
    let all = id_list(&created);

    // Oldest first, i.e. creation order, forwards and backwards, each exactly once.
    let fwd = walk_forwards(&s, &t, 5, Value::Null, 23).await;
    assert_each_once(&fwd, &all, "forwards");
    let back = walk_backwards(&s, &t, 5, Value::Null, 23).await;
    assert_each_once(&back, &all, "backwards");
    // Other page sizes, including one that divides 23 evenly into 1-element pages.
    for n in [1, 7, 23, 100] {
        assert_each_once(
            &walk_forwards(&s, &t, n, Value::Null, 23).await,
            &all,
            "fwd",
        );
        assert_each_once(
            &walk_backwards(&s, &t, n, Value::Null, 23).await,
            &all,
            "back",
        );
    }
    // A filtered walk visits exactly the matches.
    let alpha: Vec<String> = id_list(
        created
            .iter()
            .filter(|d| d["name"].as_str().unwrap().contains("alpha")),
    );
    assert_eq!(alpha.len(), 8);
    let f = json!({"nameContains": "alpha"});
    assert_each_once(
        &walk_forwards(&s, &t, 3, f.clone(), 8).await,
        &alpha,
        "alpha fwd",
    );
    assert_each_once(&walk_backwards(&s, &t, 3, f, 8).await, &alpha, "alpha back");
    // Default page (no first/last) starts at the beginning.
    let r = s.ok(&t, PAGE, json!({})).await;
    assert_eq!(ids(&r["destinations"]), all[..20].to_vec());
    assert_eq!(r["destinations"]["pageInfo"]["hasNextPage"], true);
});

both!(pagination_limits, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    create_destination(&s, &t, json!({})).await;
    for (vars, field) in [
        (json!({"first": 101}), "first"),
        (json!({"first": 1000}), "first"),
        (json!({"first": -1}), "first"),
        (json!({"last": 101}), "last"),
        (json!({"first": 1, "last": 1}), "last"),
        (json!({"first": 1, "after": "not-a-cursor"}), "after"),
        (json!({"last": 1, "before": "not-a-cursor"}), "before"),
    ] {
        let (c, e) = s.err_code(Some(&t), PAGE, vars.clone()).await;
        assert_eq!(c, "BAD_USER_INPUT", "{vars}: {e}");
        assert_eq!(e["extensions"]["field"], field, "{vars}: {e}");
    }
    for q in [
        "{ events(first: 101) { totalCount } }",
        "{ deliveries(first: 101) { totalCount } }",
    ] {
        let (c, e) = s.err_code(Some(&t), q, json!({})).await;
        assert_eq!(
            (c.as_str(), &e["extensions"]["field"]),
            ("BAD_USER_INPUT", &json!("first"))
        );
    }
    // The maximum itself is fine.
    let r = s.ok(&t, PAGE, json!({"first": 100})).await;
    assert_eq!(r["destinations"]["totalCount"], 1);
});

both!(destination_filters, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let created = seed(&s, &t).await;
    let select = |f: &dyn Fn(&Value) -> bool| id_list(created.iter().filter(|d| f(d)));
    let at = |i: usize| time(&created[i]["createdAt"]);
    let (t7, t15) = (at(7), at(15));
    let cases: Vec<(Value, Vec<String>)> = vec![
        (
            json!({"enabled": false}),
            select(&|d| d["enabled"] == false),
        ),
        (json!({"enabled": true}), select(&|d| d["enabled"] == true)),
        (
            json!({"status": "DISABLED"}),
            select(&|d| d["enabled"] == false),
        ),
        (
            json!({"status": "ACTIVE"}),
            select(&|d| d["enabled"] == true),
        ),
        (json!({"status": "FAILING"}), vec![]),
        (
            json!({"nameContains": "alpha"}),
            select(&|d| d["name"].as_str().unwrap().contains("alpha")),
        ),
        (
            json!({"nameContains": "-1"}),
            select(&|d| d["name"].as_str().unwrap().contains("-1")),
        ),
        (json!({"nameContains": "gamma"}), vec![]),
        (
            json!({"createdSince": created[15]["createdAt"]}),
            select(&|d| time(&d["createdAt"]) >= t15),
        ),
        (
            json!({"createdUntil": created[7]["createdAt"]}),
            select(&|d| time(&d["createdAt"]) < t7),
        ),
        (
            json!({"createdSince": created[7]["createdAt"], "createdUntil": created[15]["createdAt"]}),
            select(&|d| (t7..t15).contains(&time(&d["createdAt"]))),
        ),
        (
            json!({"enabled": true, "nameContains": "alpha"}),
            select(&|d| d["enabled"] == true && d["name"].as_str().unwrap().contains("alpha")),
        ),
    ];
    for (filter, want) in cases {
        let r = s
            .ok(&t, PAGE, json!({"first": 100, "filter": filter}))
            .await;
        let c = &r["destinations"];
        assert_eq!(ids(c), want, "{filter}");
        assert_eq!(c["totalCount"], want.len(), "{filter}");
        assert!(want.len() < 23, "{filter} narrows nothing");
    }
    // Sanity on the seed: the filters above are not trivially empty or full.
    assert_eq!(select(&|d| d["enabled"] == false).len(), 6);
    assert_eq!(
        created
            .iter()
            .filter(|d| time(&d["createdAt"]) < t7)
            .count(),
        7
    );
});

const DELIVERY: &str = "query($id: ID!) { delivery(id: $id) { id status completedAt lastError
  destination { id deletedAt } } }";

async fn only_delivery(s: &Server, t: &str, dest: &str, status: &str) -> String {
    eventually(Duration::from_secs(5), status, || async {
        let r = s
            .ok(
                t,
                "query($id: ID!) { deliveries(filter: {destinationId: $id}) { nodes { id status } } }",
                json!({"id": dest}),
            )
            .await;
        let n = &r["deliveries"]["nodes"][0];
        (n["status"] == status).then(|| n["id"].as_str().unwrap().to_string())
    })
    .await
}

both!(soft_delete, |backend| async move {
    let s = Server::start(backend).await;
    let rx = Receiver::start().await;
    rx.status(500);
    let t = token("acme", "read write publish");
    // Two failing destinations with a long retry schedule; only one is deleted.
    let input = |name: &str| json!({"name": name, "url": rx.url(), "retrySchedule": [600]});
    let gone = create_destination(&s, &t, input("doomed")).await;
    let kept = create_destination(&s, &t, input("kept")).await;
    let sub = s
        .ok(
            &t,
            "query($id: ID!) { eventSubscriptions(destinationId: $id) { id } }",
            json!({"id": gone}),
        )
        .await["eventSubscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    publish(&s, &t, "order.created", json!({})).await;
    let gone_delivery = only_delivery(&s, &t, &gone, "AWAITING_RETRY").await;
    let kept_delivery = only_delivery(&s, &t, &kept, "AWAITING_RETRY").await;

    let r = s
        .ok(
            &t,
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": gone}),
        )
        .await;
    assert_eq!(r["deleteDestination"], gone.as_str());

    // Gone from every read.
    let r = s
        .ok(
            &t,
            "query($id: ID!) { destination(id: $id) { id } eventSubscriptions(destinationId: $id) { id }
               destinations { totalCount nodes { id } } }",
            json!({"id": gone}),
        )
        .await;
    assert_eq!(
        r,
        json!({"destination": null, "eventSubscriptions": [],
               "destinations": {"totalCount": 1, "nodes": [{"id": kept}]}})
    );
    // Its pending delivery is discarded; the delivery still shows where it was going.
    let d = s.ok(&t, DELIVERY, json!({"id": gone_delivery})).await["delivery"].clone();
    assert_eq!(d["status"], "DISCARDED", "{d}");
    assert!(!d["completedAt"].is_null(), "{d}");
    assert_eq!(d["destination"]["id"], gone.as_str());
    assert!(!d["destination"]["deletedAt"].is_null(), "{d}");
    // The other destination's delivery is untouched.
    let d = s.ok(&t, DELIVERY, json!({"id": kept_delivery})).await["delivery"].clone();
    assert_eq!(d["status"], "AWAITING_RETRY", "{d}");

    // Every mutation on it is NOT_FOUND now, the second delete included.
    for (q, id) in [
        ("mutation($id: ID!) { deleteDestination(id: $id) }", &gone),
        (
            "mutation($id: ID!) { updateDestination(id: $id, input: {name: \"x\"}) { id } }",
            &gone,
        ),
        (
            "mutation($id: ID!) { enableDestination(id: $id) { id } }",
            &gone,
        ),
        (
            "mutation($id: ID!) { rotateDestinationSecret(id: $id) { id } }",
            &gone,
        ),
        (
            "mutation($id: ID!) { createEventSubscription(input: {destinationId: $id, eventTypes: [\"*\"]}) { id } }",
            &gone,
        ),
        (
            "mutation($id: ID!) { updateEventSubscription(id: $id, input: {enabled: false}) { id } }",
            &sub,
        ),
        (
            "mutation($id: ID!) { deleteEventSubscription(id: $id) }",
            &sub,
        ),
        (
            "mutation($id: ID!) { sendTestEvent(destinationId: $id) { id } }",
            &gone,
        ),
    ] {
        let (c, e) = s.err_code(Some(&t), q, json!({"id": id})).await;
        assert_eq!(c, "NOT_FOUND", "{q}: {e}");
    }
    // Retrying the discarded delivery cannot resurrect it.
    let (c, _) = s
        .err_code(
            Some(&t),
            "mutation($id: ID!) { retryDelivery(id: $id) { id } }",
            json!({"id": gone_delivery}),
        )
        .await;
    assert_ne!(c, "");
    let d = s.ok(&t, DELIVERY, json!({"id": gone_delivery})).await["delivery"].clone();
    assert_eq!(d["status"], "DISCARDED");

    // The name is free again; new events reach the new destination, not the deleted one.
    let reborn = create_destination(&s, &t, input("doomed")).await;
    assert_ne!(reborn, gone);
    let ev = publish(&s, &t, "order.created", json!({})).await;
    let r = s
        .ok(
            &t,
            "query($id: ID!) { event(id: $id) { deliveries { nodes { destinationId } } } }",
            json!({"id": ev}),
        )
        .await;
    let mut to: Vec<&str> = r["event"]["deliveries"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["destinationId"].as_str().unwrap())
        .collect();
    to.sort();
    let mut want = vec![kept.as_str(), reborn.as_str()];
    want.sort();
    assert_eq!(to, want);
});

const UPDATE: &str = "mutation($id: ID!, $input: UpdateDestinationInput!) {
  updateDestination(id: $id, input: $input) { id name description displayName version updatedBy updatedAt createdAt enabled status }
}";
const GET: &str = "query($id: ID!) { destination(id: $id) { id name description displayName version updatedBy updatedAt createdAt enabled status } }";

// A destination deleted while one of its attempts is in flight: the attempt is recorded, but
// its failure does not reopen the delivery the deletion discarded (it would come back to the
// queue, due for a retry, with `completedAt` still set).
both!(
    attempt_in_flight_at_delete_does_not_reopen_the_delivery,
    |backend| async move {
        let s = Server::start(backend).await;
        let rx = Receiver::start().await;
        rx.set(crate::harness::Behavior {
            status: 500,
            delay: Duration::from_millis(1500),
            ..Default::default()
        });
        let t = token("acme", "read write publish");
        let dest = crate::harness::create_destination(
            &s,
            &t,
            json!({"url": rx.url(), "retrySchedule": [5], "maxAttempts": 5}),
        )
        .await;
        publish(&s, &t, "order.created", json!({})).await;
        let id = only_delivery(&s, &t, &dest, "DELIVERING").await;
        s.ok(
            &t,
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": dest}),
        )
        .await;
        rx.wait_for(1, Duration::from_secs(10)).await;
        let q = "query($id: ID!) { delivery(id: $id) { status completedAt lastError nextAttemptAt
               attempts { outcome responseStatus } } }";
        let d = eventually(Duration::from_secs(10), "the attempt recorded", || async {
            let d = s.ok(&t, q, json!({"id": id})).await["delivery"].clone();
            (d["attempts"].as_array().map(Vec::len) == Some(1)).then_some(d)
        })
        .await;
        assert_eq!(d["attempts"][0]["responseStatus"], 500, "{d}");
        // The completion flush that recorded the attempt wrote the delivery in the same
        // transaction: it must still be as the deletion left it (its retry would be due only
        // in 5 s, when the dispatcher would discard it again), and stay so.
        assert_eq!(d["status"], "DISCARDED", "{d}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let d = s.ok(&t, q, json!({"id": id})).await["delivery"].clone();
        assert_eq!(d["status"], "DISCARDED", "{d}");
        assert_eq!(d["lastError"], "destination deleted", "{d}");
        assert!(d["completedAt"].is_string(), "{d}");
        assert!(d["nextAttemptAt"].is_null(), "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
        assert_eq!(
            rx.count(),
            1,
            "sent again after its destination was deleted"
        );
    }
);

both!(optimistic_concurrency, |backend| async move {
    let s = Server::start(backend).await;
    let tester = token("acme", "read write");
    let alice = token_as("acme", "alice", "read write");
    let id = create_destination(&s, &tester, json!({"name": "v"})).await;
    let d0 = s.ok(&tester, GET, json!({"id": id})).await["destination"].clone();
    assert_eq!(
        (d0["version"].as_i64(), d0["updatedBy"].as_str()),
        (Some(1), Some("tester"))
    );

    // Current version: applied, version bumped, updatedBy is the caller's `sub`.
    let d1 = s
        .ok(
            &alice,
            UPDATE,
            json!({"id": id, "input": {"displayName": "Orders", "expectedVersion": 1}}),
        )
        .await["updateDestination"]
        .clone();
    assert_eq!(d1["version"], 2);
    assert_eq!(d1["displayName"], "Orders");
    assert_eq!(d1["updatedBy"], "alice");
    assert!(time(&d1["updatedAt"]) >= time(&d0["updatedAt"]));
    assert_eq!(d1["createdAt"], d0["createdAt"]);

    // Stale version: CONFLICT, nothing changes.
    let (c, e) = s
        .err_code(
            Some(&tester),
            UPDATE,
            json!({"id": id, "input": {"displayName": "Stale", "name": "stale", "expectedVersion": 1}}),
        )
        .await;
    assert_eq!(c, "CONFLICT", "{e}");
    let now = s.ok(&tester, GET, json!({"id": id})).await["destination"].clone();
    assert_eq!(now, d1);
    // A version from the future is just as stale.
    let (c, _) = s
        .err_code(
            Some(&tester),
            UPDATE,
            json!({"id": id, "input": {"displayName": "Future", "expectedVersion": 7}}),
        )
        .await;
    assert_eq!(c, "CONFLICT");
    assert_eq!(
        s.ok(&tester, GET, json!({"id": id})).await["destination"],
        d1
    );

    // Without expectedVersion the write goes through; every change bumps the version.
    let d2 = s
        .ok(
            &tester,
            UPDATE,
            json!({"id": id, "input": {"description": "d"}}),
        )
        .await["updateDestination"]
        .clone();
    assert_eq!(
        (d2["version"].as_i64(), d2["updatedBy"].as_str()),
        (Some(3), Some("tester"))
    );
    assert_eq!(
        d2["displayName"], "Orders",
        "untouched fields keep their value"
    );
    let r = s
        .ok(
            &alice,
            "mutation($id: ID!) { disableDestination(id: $id) { version enabled status updatedBy } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        r["disableDestination"],
        json!({"version": 4, "enabled": false, "status": "DISABLED", "updatedBy": "alice"})
    );
    let r = s
        .ok(
            &tester,
            "mutation($id: ID!) { enableDestination(id: $id) { version enabled status updatedBy } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        r["enableDestination"],
        json!({"version": 5, "enabled": true, "status": "ACTIVE", "updatedBy": "tester"})
    );
    // `null` clears a nullable field.
    let r = s
        .ok(
            &tester,
            UPDATE,
            json!({"id": id, "input": {"displayName": null}}),
        )
        .await;
    assert!(r["updateDestination"]["displayName"].is_null());
    assert_eq!(r["updateDestination"]["version"], 6);
});

both!(concurrent_updates_one_wins, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let id = create_destination(&s, &t, json!({})).await;
    let tries = (0..6).map(|i| {
        let (s, t, id) = (&s, &t, &id);
        async move {
            let vars = json!({"id": id, "input": {"description": format!("writer-{i}"), "expectedVersion": 1}});
            (i, s.gql(Some(t), UPDATE, vars).await)
        }
    });
    let results = futures_util::future::join_all(tries).await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.get("errors").is_none())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:#?}");
    for (_, r) in &results {
        if r.get("errors").is_some() {
            assert_eq!(code(r), "CONFLICT", "{r:#}");
        }
    }
    let d = s.ok(&t, GET, json!({"id": id})).await["destination"].clone();
    assert_eq!(d["version"], 2);
    assert_eq!(d["description"], format!("writer-{}", winners[0]));
});

const ROTATE: &str = "mutation($id: ID!, $grace: Int, $secret: String) {
  rotateDestinationSecret(id: $id, graceSeconds: $grace, secret: $secret) {
    signingSecret previousSecretExpiresAt version } }";
const SECRET_Q: &str =
    "query($id: ID!) { destination(id: $id) { signingSecret previousSecretExpiresAt version } }";

both!(rotate_secret, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let id = create_destination(&s, &t, json!({})).await;
    let before = s.ok(&t, SECRET_Q, json!({"id": id})).await["destination"].clone();
    assert!(before["previousSecretExpiresAt"].is_null());
    let s1 = before["signingSecret"].as_str().unwrap().to_string();

    let r =
        s.ok(&t, ROTATE, json!({"id": id, "grace": 3600})).await["rotateDestinationSecret"].clone();
    let s2 = r["signingSecret"].as_str().unwrap().to_string();
    assert_ne!(s2, s1);
    assert!(s2.starts_with("whsec_"), "{s2}");
    let expires = time(&r["previousSecretExpiresAt"]);
    let ahead = (expires - Utc::now()).num_seconds();
    assert!((3590..=3600).contains(&ahead), "expires {ahead} s ahead");
    assert_eq!(r["version"], 2);
    assert_eq!(
        s.ok(&t, SECRET_Q, json!({"id": id})).await["destination"],
        r
    );

    // Out-of-range grace, or a malformed secret: refused, nothing changes.
    for (vars, field) in [
        (json!({"id": id, "grace": -1}), "graceSeconds"),
        (json!({"id": id, "grace": 7 * 86_400 + 1}), "graceSeconds"),
        (json!({"id": id, "secret": "short"}), "secret"),
        (
            json!({"id": id, "secret": "not-a-whsec-secret-but-long"}),
            "secret",
        ),
    ] {
        let (c, e) = s.err_code(Some(&t), ROTATE, vars.clone()).await;
        assert_eq!(c, "BAD_USER_INPUT", "{vars}: {e}");
        assert_eq!(e["extensions"]["field"], field, "{vars}: {e}");
        assert_eq!(
            s.ok(&t, SECRET_Q, json!({"id": id})).await["destination"],
            r
        );
    }
    // The maximum grace is accepted; the default is a day.
    let r = s
        .ok(&t, ROTATE, json!({"id": id, "grace": 7 * 86_400}))
        .await["rotateDestinationSecret"]
        .clone();
    let ahead = (time(&r["previousSecretExpiresAt"]) - Utc::now()).num_seconds();
    assert!((7 * 86_400 - 10..=7 * 86_400).contains(&ahead), "{ahead}");
    let r = s.ok(&t, ROTATE, json!({"id": id})).await["rotateDestinationSecret"].clone();
    let ahead = (time(&r["previousSecretExpiresAt"]) - Utc::now()).num_seconds();
    assert!((86_390..=86_400).contains(&ahead), "{ahead}");
    // Zero grace: the old secret stops at once. A given secret is used as is.
    let mine = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let r = s
        .ok(&t, ROTATE, json!({"id": id, "grace": 0, "secret": mine}))
        .await["rotateDestinationSecret"]
        .clone();
    assert_eq!(r["signingSecret"], mine);
    assert!(r["previousSecretExpiresAt"].is_null());
    assert_eq!(r["version"], 5);
});

const SUBS: &str = "query($id: ID!) {
  eventSubscriptions(destinationId: $id) { id destinationId eventTypes eventsPolicy minLevel enabled payloadFilter createdAt updatedAt }
  destination(id: $id) { eventSubscriptions { id eventTypes } }
}";
const CREATE_SUB: &str = "mutation($input: CreateEventSubscriptionInput!) {
  createEventSubscription(input: $input) { id destinationId eventTypes eventsPolicy minLevel enabled createdAt updatedAt } }";
const UPDATE_SUB: &str = "mutation($id: ID!, $input: UpdateEventSubscriptionInput!) {
  updateEventSubscription(id: $id, input: $input) { id destinationId eventTypes eventsPolicy minLevel enabled createdAt updatedAt } }";
const DELETE_SUB: &str = "mutation($id: ID!) { deleteEventSubscription(id: $id) }";

async fn subs(s: &Server, t: &str, dest: &str) -> Vec<Value> {
    let r = s.ok(t, SUBS, json!({"id": dest})).await;
    let list = r["eventSubscriptions"].as_array().unwrap().clone();
    // The field on Destination agrees with the query.
    let via_dest: Vec<Value> = list
        .iter()
        .map(|x| json!({"id": x["id"], "eventTypes": x["eventTypes"]}))
        .collect();
    assert_eq!(r["destination"]["eventSubscriptions"], json!(via_dest));
    list
}

/// Which of `dests` an event of this type and level reached.
async fn reached(s: &Server, t: &str, event_type: &str, level: &str) -> Vec<String> {
    let r = s
        .ok(
            t,
            "mutation($input: PublishEventInput!) { publishEvent(input: $input) {
               deliveries { nodes { destinationId } } } }",
            json!({"input": {"type": event_type, "payload": {}, "level": level}}),
        )
        .await;
    let mut v: Vec<String> = r["publishEvent"]["deliveries"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["destinationId"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

both!(event_subscriptions_crud, |backend| async move {
    let s = Server::start(backend).await;
    let rx = Receiver::start().await;
    let t = token("acme", "read write publish");
    // Without eventTypes: one subscription to everything.
    let all = create_destination(&s, &t, json!({"url": rx.url()})).await;
    let l = subs(&s, &t, &all).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["eventTypes"], json!(["*"]));
    assert_eq!(l[0]["eventsPolicy"], "INCLUDE");
    assert_eq!(l[0]["enabled"], true);
    assert_eq!(l[0]["destinationId"], all.as_str());
    // With eventTypes, a policy and a level: exactly that.
    let ex = create_destination(
        &s,
        &t,
        json!({"url": rx.url(), "eventTypes": ["user.*", "order.created"],
               "eventsPolicy": "EXCLUDE", "minLevel": "WARN"}),
    )
    .await;
    let l = subs(&s, &t, &ex).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["eventTypes"], json!(["user.*", "order.created"]));
    assert_eq!(l[0]["eventsPolicy"], "EXCLUDE");
    assert_eq!(l[0]["minLevel"], "WARN");
    // ...and it routes that way.
    let mut both_dests = vec![all.clone(), ex.clone()];
    both_dests.sort();
    assert_eq!(
        reached(&s, &t, "user.created", "ERROR").await,
        vec![all.clone()]
    );
    assert_eq!(
        reached(&s, &t, "order.created", "ERROR").await,
        vec![all.clone()]
    );
    assert_eq!(
        reached(&s, &t, "billing.paid", "INFO").await,
        vec![all.clone()]
    );
    assert_eq!(reached(&s, &t, "billing.paid", "WARN").await, both_dests);
    // A disabled destination hears nothing, whatever its subscriptions say.
    s.ok(
        &t,
        "mutation($id: ID!) { disableDestination(id: $id) { id } }",
        json!({"id": ex}),
    )
    .await;
    assert_eq!(
        reached(&s, &t, "billing.paid", "WARN").await,
        vec![all.clone()]
    );

    // A destination that hears nothing yet gets a second subscription.
    let narrow = create_destination(
        &s,
        &t,
        json!({"url": rx.url(), "eventTypes": ["none.ever"]}),
    )
    .await;
    let first_sub = subs(&s, &t, &narrow).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let with_narrow = {
        let mut v = vec![all.clone(), narrow.clone()];
        v.sort();
        v
    };
    assert_eq!(
        reached(&s, &t, "audit.login", "DEBUG").await,
        vec![all.clone()]
    );
    let created = s
        .ok(
            &t,
            CREATE_SUB,
            json!({"input": {"destinationId": narrow, "eventTypes": ["audit.*"]}}),
        )
        .await["createEventSubscription"]
        .clone();
    let sub = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["destinationId"], narrow.as_str());
    assert_eq!(created["eventTypes"], json!(["audit.*"]));
    assert_eq!(created["eventsPolicy"], "INCLUDE");
    assert_eq!(created["minLevel"], "DEBUG");
    assert_eq!(created["enabled"], true);
    let l = subs(&s, &t, &narrow).await;
    assert_eq!(
        l.iter()
            .map(|x| x["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![first_sub.as_str(), sub.as_str()]
    );
    assert_eq!(reached(&s, &t, "audit.login", "DEBUG").await, with_narrow);

    // Update it.
    let updated = s
        .ok(
            &t,
            UPDATE_SUB,
            json!({"id": sub, "input": {"eventTypes": ["audit.login", "audit.logout"],
                   "eventsPolicy": "INCLUDE", "minLevel": "ERROR", "enabled": false}}),
        )
        .await["updateEventSubscription"]
        .clone();
    assert_eq!(
        updated["eventTypes"],
        json!(["audit.login", "audit.logout"])
    );
    assert_eq!(updated["minLevel"], "ERROR");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["createdAt"], created["createdAt"]);
    assert!(time(&updated["updatedAt"]) >= time(&created["updatedAt"]));
    let l = subs(&s, &t, &narrow).await;
    assert_eq!(l[1]["eventTypes"], json!(["audit.login", "audit.logout"]));
    assert_eq!(l[1]["enabled"], false);
    // Disabled: no longer routes.
    assert_eq!(
        reached(&s, &t, "audit.login", "ERROR").await,
        vec![all.clone()]
    );
    // A partial update leaves the rest alone.
    let r = s
        .ok(
            &t,
            UPDATE_SUB,
            json!({"id": sub, "input": {"enabled": true}}),
        )
        .await["updateEventSubscription"]
        .clone();
    assert_eq!(r["eventTypes"], json!(["audit.login", "audit.logout"]));
    assert_eq!(r["minLevel"], "ERROR");
    assert_eq!(reached(&s, &t, "audit.login", "ERROR").await, with_narrow);
    assert_eq!(
        reached(&s, &t, "audit.login", "WARN").await,
        vec![all.clone()]
    );
    assert_eq!(
        reached(&s, &t, "audit.other", "ERROR").await,
        vec![all.clone()]
    );

    // Delete it: returns the id; a second delete or an update is NOT_FOUND.
    let r = s.ok(&t, DELETE_SUB, json!({"id": sub})).await;
    assert_eq!(r["deleteEventSubscription"], sub.as_str());
    let l = subs(&s, &t, &narrow).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["id"], first_sub.as_str());
    assert_eq!(
        reached(&s, &t, "audit.login", "ERROR").await,
        vec![all.clone()]
    );
    let (c, _) = s.err_code(Some(&t), DELETE_SUB, json!({"id": sub})).await;
    assert_eq!(c, "NOT_FOUND");
    let (c, _) = s
        .err_code(
            Some(&t),
            UPDATE_SUB,
            json!({"id": sub, "input": {"enabled": true}}),
        )
        .await;
    assert_eq!(c, "NOT_FOUND");
    // Subscribing an unknown destination is NOT_FOUND.
    let (c, _) = s
        .err_code(
            Some(&t),
            CREATE_SUB,
            json!({"input": {"destinationId": uuid::Uuid::now_v7().to_string(), "eventTypes": ["*"]}}),
        )
        .await;
    assert_eq!(c, "NOT_FOUND");
});

const SETTINGS: &str = "id name displayName description url enabled status signingScheme
  signatureHeader signingSecret httpAuth headers { name value } timeoutMs payloadFormat batchSize
  batchWindowMs rateLimitPerSec maxInFlight ordered retrySchedule maxAttempts discardAfterSecs
  lossy tlsVerify version updatedBy eventSubscriptions { eventTypes eventsPolicy minLevel }";

/// `got` has every key of `want` with the same value.
fn assert_has(got: &Value, want: &Value) {
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&got[k], v, "{k} in {got:#}");
    }
}

both!(every_setting_round_trips, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let create = format!(
        "mutation($input: CreateDestinationInput!) {{ createDestination(input: $input) {{ {SETTINGS} }} }}"
    );
    let update = format!(
        "mutation($id: ID!, $input: UpdateDestinationInput!) {{
           updateDestination(id: $id, input: $input) {{ {SETTINGS} }} }}"
    );
    let get = format!("query($id: ID!) {{ destination(id: $id) {{ {SETTINGS} }} }}");

    // Every setting, none at its default.
    let input = json!({
        "name": "every", "url": "https://example.com/every", "displayName": "Every",
        "description": "all of them", "enabled": false,
        "eventTypes": ["a.*"], "eventsPolicy": "EXCLUDE", "minLevel": "ERROR",
        "signingScheme": "HMAC_SHA256_HEX", "signatureHeader": "X-Sig",
        "signingSecret": "hex-secret-1",
        "httpAuth": {"bearer": {"token": "tok-1"}},
        "headers": [{"name": "X-One", "value": "1"}, {"name": "X-Two", "value": "2"}],
        "timeoutMs": 2500, "payloadFormat": "RAW", "batchSize": 10, "batchWindowMs": 500,
        "rateLimitPerSec": 50, "maxInFlight": 4, "ordered": true, "retrySchedule": [1, 2, 3],
        "maxAttempts": 4, "discardAfterSecs": 3600, "lossy": true, "tlsVerify": false,
    });
    let d = s.ok(&t, &create, json!({"input": input})).await["createDestination"].clone();
    let id = d["id"].as_str().unwrap().to_string();
    let mut want = input.clone();
    for k in ["eventTypes", "eventsPolicy", "minLevel"] {
        want.as_object_mut().unwrap().remove(k);
    }
    want["httpAuth"] = json!("BEARER");
    // Header values are write-only.
    want["headers"] = json!([{"name": "X-One", "value": null}, {"name": "X-Two", "value": null}]);
    want["status"] = json!("DISABLED");
    want["version"] = json!(1);
    assert_has(&d, &want);
    assert_eq!(
        d["eventSubscriptions"],
        json!([{"eventTypes": ["a.*"], "eventsPolicy": "EXCLUDE", "minLevel": "ERROR"}])
    );
    assert_eq!(s.ok(&t, &get, json!({"id": id})).await["destination"], d);

    // Every setting changed in one update.
    let change = json!({
        "name": "every-2", "url": "http://example.org/other", "displayName": "Every 2",
        "description": "changed", "enabled": true,
        "signingScheme": "HMAC_SHA256_BASE64", "signatureHeader": "X-Sig-2",
        "signingSecret": "b64-secret-2",
        "httpAuth": {"basic": {"username": "u", "password": "p"}},
        "headers": [{"name": "X-Three", "value": "3"}],
        "timeoutMs": 60000, "payloadFormat": "ENVELOPE", "batchSize": 1, "batchWindowMs": 0,
        "rateLimitPerSec": 7, "maxInFlight": 1, "ordered": false, "retrySchedule": [0],
        "maxAttempts": 1, "discardAfterSecs": 60, "lossy": false, "tlsVerify": true,
    });
    let d2 =
        s.ok(&t, &update, json!({"id": id, "input": change})).await["updateDestination"].clone();
    let mut want = change.clone();
    want["httpAuth"] = json!("BASIC");
    want["headers"] = json!([{"name": "X-Three", "value": null}]);
    want["status"] = json!("ACTIVE");
    want["version"] = json!(2);
    assert_has(&d2, &want);
    assert_eq!(d2["eventSubscriptions"], d["eventSubscriptions"]);
    assert_eq!(s.ok(&t, &get, json!({"id": id})).await["destination"], d2);

    // `null` clears every nullable setting; nothing else moves.
    let clear = json!({"displayName": null, "description": null, "signatureHeader": null,
                       "httpAuth": null, "rateLimitPerSec": null, "discardAfterSecs": null});
    let d3 =
        s.ok(&t, &update, json!({"id": id, "input": clear})).await["updateDestination"].clone();
    let mut want = d2.clone();
    for k in [
        "displayName",
        "description",
        "signatureHeader",
        "rateLimitPerSec",
        "discardAfterSecs",
    ] {
        want[k] = Value::Null;
    }
    want["httpAuth"] = json!("NONE");
    want["version"] = json!(3);
    assert_eq!(d3, want);
});

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}
