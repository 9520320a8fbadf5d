//! The live plane over a real WebSocket: attempts and status changes as they commit, their
//! filters, tenant isolation, authentication from `connection_init`, token expiry, the legacy
//! protocol, and two instances sharing one PostgreSQL database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;
use crate::ws::{Incoming, Proto, WsClient};

pub const ATTEMPTS: &str = "subscription($d: ID, $t: String, $o: AttemptOutcome) {
  deliveryAttempts(destinationId: $d, eventType: $t, outcome: $o) {
    id deliveryId destinationId eventId eventType attemptNumber outcome
    responseStatus durationMs startedAt errorKind
    delivery { id status }
  }
}";

pub const STATUS: &str = "subscription($d: ID) {
  destinationStatusChanged(destinationId: $d) { destinationId status enabled at }
}";

const WAIT: Duration = Duration::from_secs(20);

/// A connection with one subscription (id "1") that is live on the server when this returns.
pub async fn subscribe(
    addr: std::net::SocketAddr,
    proto: Proto,
    token: &str,
    query: &str,
    vars: Value,
) -> WsClient {
    let mut c = WsClient::connect(addr, proto, token).await;
    c.subscribe("1", query, vars).await;
    c.sync().await;
    c
}

fn attempts(items: Vec<Value>) -> Vec<Value> {
    items
        .into_iter()
        .map(|d| d["deliveryAttempts"].clone())
        .collect()
}

fn field<'a>(items: &'a [Value], name: &str) -> Vec<&'a str> {
    items.iter().map(|a| a[name].as_str().unwrap()).collect()
}

/// The attempt is already committed when it reaches a subscriber: its delivery lists it.
async fn assert_committed(s: &Server, token: &str, a: &Value) {
    let d = s
        .ok(
            token,
            "query($id: ID!) { delivery(id: $id) { attempts { id } } }",
            json!({"id": a["deliveryId"]}),
        )
        .await;
    let ids: Vec<&Value> = d["delivery"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["id"])
        .collect();
    assert!(ids.contains(&&a["id"]), "attempt {a} not in {d}");
}

// 1. Attempts arrive in order with the right fields; each filter narrows the stream.
both!(
    attempts_stream_in_order_with_filters,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let bad = Receiver::start().await;
        bad.status(500);
        // FIFO destinations, so the order of attempts is the order of publishing.
        let a = create_destination(
            &s,
            &tok,
            json!({"url": ok.url(), "ordered": true, "eventTypes": ["order.*"]}),
        )
        .await;
        let f = create_destination(
            &s,
            &tok,
            json!({"url": bad.url(), "ordered": true, "maxAttempts": 1,
               "eventTypes": ["order.created"]}),
        )
        .await;
        let mut by_dest =
            subscribe(s.addr, Proto::Transport, &tok, ATTEMPTS, json!({"d": a})).await;
        let mut failures = subscribe(
            s.addr,
            Proto::Transport,
            &tok,
            ATTEMPTS,
            json!({"o": "FAILURE"}),
        )
        .await;
        let mut by_type = subscribe(
            s.addr,
            Proto::Transport,
            &tok,
            ATTEMPTS,
            json!({"t": "order.cancelled"}),
        )
        .await;
        let mut all = subscribe(s.addr, Proto::Transport, &tok, ATTEMPTS, json!({})).await;

        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(publish(&s, &tok, "order.created", json!({"n": i})).await);
        }
        ids.push(publish(&s, &tok, "order.cancelled", json!({"n": 4})).await);

        // destinationId filter: A's five successes, in publishing order.
        let got = attempts(by_dest.take("1", 5, WAIT).await);
        assert_eq!(field(&got, "eventId"), ids);
        assert_eq!(
            field(&got, "eventType"),
            [
                "order.created",
                "order.created",
                "order.created",
                "order.created",
                "order.cancelled"
            ]
        );
        for at in &got {
            assert_eq!(at["destinationId"], a.as_str());
            assert_eq!(at["attemptNumber"], 1);
            assert_eq!(at["outcome"], "SUCCESS");
            assert_eq!(at["responseStatus"], 200);
            assert!(at["durationMs"].as_i64().unwrap() >= 0, "{at}");
            assert!(at["startedAt"].is_string(), "{at}");
            assert!(at["errorKind"].is_null(), "{at}");
            assert_eq!(at["delivery"]["id"], at["deliveryId"]);
            assert_eq!(at["delivery"]["status"], "SUCCEEDED");
            assert_committed(&s, &tok, at).await;
        }

        // outcome filter: only F's failures, each final (maxAttempts 1).
        let got = attempts(failures.take("1", 4, WAIT).await);
        assert_eq!(field(&got, "eventId"), ids[..4]);
        for at in &got {
            assert_eq!(at["destinationId"], f.as_str());
            assert_eq!(at["outcome"], "FAILURE");
            assert_eq!(at["responseStatus"], 500);
            assert_eq!(at["errorKind"], "HTTP_STATUS");
            assert_eq!(at["delivery"]["id"], at["deliveryId"]);
            assert_eq!(at["delivery"]["status"], "FAILED");
        }

        // eventType filter.
        let got = attempts(by_type.take("1", 1, WAIT).await);
        assert_eq!(got[0]["eventId"], ids[4].as_str());
        assert_eq!(got[0]["destinationId"], a.as_str());

        // No filter: all nine, A's still in order among them.
        let got = attempts(all.take("1", 9, WAIT).await);
        let of = |d: &str| -> Vec<&str> {
            got.iter()
                .filter(|x| x["destinationId"] == d)
                .map(|x| x["eventId"].as_str().unwrap())
                .collect()
        };
        assert_eq!(of(&a), ids);
        assert_eq!(of(&f), ids[..4]);

        // Nothing more, on any of them: no duplicates, nothing outside the filters.
        tokio::join!(
            by_dest.expect_silence(Duration::from_millis(300)),
            failures.expect_silence(Duration::from_millis(300)),
            by_type.expect_silence(Duration::from_millis(300)),
            all.expect_silence(Duration::from_millis(300)),
        );
        assert_eq!(ok.count(), 5);
        assert_eq!(bad.count(), 4);
    }
);

// 2. Another tenant's subscribers see nothing, not even when they guess a destination id.
both!(other_tenant_receives_nothing, |backend| async move {
    let s = Server::start(backend).await;
    let acme = s.token("acme", "read write publish");
    let rival = s.token("rival", "read write publish");
    let ok = Receiver::start().await;
    let gone = Receiver::start().await;
    gone.status(410);
    let a = create_destination(&s, &acme, json!({"url": ok.url()})).await;
    let g = create_destination(
        &s,
        &acme,
        json!({"url": gone.url(), "eventTypes": ["user.deleted"]}),
    )
    .await;
    // The rival has a destination of its own, so its stream is not trivially empty.
    create_destination(&s, &rival, json!({"url": ok.url()})).await;

    let mut mine = subscribe(s.addr, Proto::Transport, &acme, ATTEMPTS, json!({})).await;
    let mut mine_status = subscribe(s.addr, Proto::Transport, &acme, STATUS, json!({})).await;
    let mut theirs = subscribe(s.addr, Proto::Transport, &rival, ATTEMPTS, json!({})).await;
    let mut theirs_guess =
        subscribe(s.addr, Proto::Transport, &rival, ATTEMPTS, json!({"d": a})).await;
    let mut theirs_status = subscribe(s.addr, Proto::Legacy, &rival, STATUS, json!({})).await;

    for i in 0..3 {
        publish(&s, &acme, "user.created", json!({"n": i})).await;
    }
    publish(&s, &acme, "user.deleted", json!({})).await;

    let got = attempts(mine.take("1", 5, WAIT).await);
    assert_eq!(got.iter().filter(|x| x["destinationId"] == a).count(), 4);
    assert_eq!(got.iter().filter(|x| x["destinationId"] == g).count(), 1);
    let st = mine_status.take("1", 1, WAIT).await;
    assert_eq!(
        st[0]["destinationStatusChanged"]["destinationId"],
        g.as_str()
    );
    assert_eq!(st[0]["destinationStatusChanged"]["status"], "DISABLED");

    let window = Duration::from_secs(1);
    tokio::join!(
        theirs.expect_silence(window),
        theirs_guess.expect_silence(window),
        theirs_status.expect_silence(window),
    );
});

fn token_with_exp(tenant: &str, scope: &str, exp: i64, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "tester", "tenant": tenant, "scope": scope, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Expects the server to refuse the connection after `connection_init`.
async fn expect_refused(c: &mut WsClient, what: &str) {
    match c.recv(Duration::from_secs(10)).await {
        Some(Incoming::Closed(Some((code, reason)))) => {
            assert_ne!(code, 1000, "{what}: closed normally");
            assert!(reason.contains("token"), "{what}: close reason {reason:?}");
        }
        Some(Incoming::ConnectionError(p)) => {
            assert!(p.to_string().contains("token"), "{what}: {p}");
        }
        other => panic!("{what}: expected the connection to be refused, got {other:?}"),
    }
}

// 3. connection_init must carry a valid token; an expiring token ends the connection.
both!(
    connection_init_authenticates_and_expiry_ends_the_stream,
    |backend| async move {
        let s = Server::start(backend).await;
        let now = chrono::Utc::now().timestamp();
        let cases = [
            ("no token", json!({})),
            ("not a bearer value", json!({"Authorization": "Basic abc"})),
            ("garbage", json!({"Authorization": "Bearer not-a-jwt"})),
            (
                "wrong key",
                json!({"authorization": format!("Bearer {}",
                token_with_exp("acme", "read", now + 600, "another-secret-another-secret-xx"))}),
            ),
            (
                "expired",
                json!({"Authorization": format!("Bearer {}",
                token_with_exp("acme", "read", now - 600, SECRET))}),
            ),
        ];
        for proto in [Proto::Transport, Proto::Legacy] {
            for (what, payload) in &cases {
                let mut c = WsClient::open(s.addr, proto, None).await;
                c.init(payload.clone()).await;
                expect_refused(&mut c, &format!("{proto:?} {what}")).await;
            }
        }
        // Subscribing without connection_init is refused too.
        let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
        c.subscribe("1", ATTEMPTS, json!({})).await;
        assert!(
            matches!(
                c.recv(Duration::from_secs(10)).await,
                Some(Incoming::Closed(_))
            ),
            "subscribe before connection_init must close the connection"
        );

        // The lower-case key works, and a token valid for 4 more seconds streams until then.
        let tok = s.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let d = create_destination(&s, &tok, json!({"url": ok.url()})).await;
        let short = token_with_exp("acme", "read", chrono::Utc::now().timestamp() + 4, SECRET);
        let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
        c.init(json!({"authorization": format!("Bearer {short}")}))
            .await;
        assert!(matches!(
            c.recv(Duration::from_secs(10)).await,
            Some(Incoming::Ack)
        ));
        c.subscribe("1", ATTEMPTS, json!({"d": d})).await;
        c.sync().await;
        let started = Instant::now();
        let ev = publish(&s, &tok, "user.created", json!({})).await;
        let got = attempts(c.take("1", 1, Duration::from_secs(10)).await);
        assert_eq!(got[0]["eventId"], ev.as_str());
        // At expiry the whole connection ends: 4403, for subscriptions and everything else.
        match c.recv(Duration::from_secs(10)).await {
            Some(Incoming::Closed(Some((code, reason)))) => {
                assert_eq!(code, 4403, "{reason}");
                assert!(reason.contains("expired"), "{reason}");
            }
            other => panic!("expected the connection to close at expiry, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "ended late: {:?}",
            started.elapsed()
        );
    }
);

// 4. destinationStatusChanged: five consecutive failures open the circuit; 410 disables.
both!(status_changes_when_failing_or_gone, |backend| async move {
    let s = Server::start(backend).await;
    let tok = s.token("acme", "read write publish");
    let failing = Receiver::start().await;
    failing.status(500);
    let gone = Receiver::start().await;
    gone.status(410);
    let f = create_destination(
        &s,
        &tok,
        json!({"url": failing.url(), "retrySchedule": [0], "maxAttempts": 20}),
    )
    .await;
    let g = create_destination(&s, &tok, json!({"url": gone.url()})).await;
    let mut sub_f = subscribe(s.addr, Proto::Transport, &tok, STATUS, json!({"d": f})).await;
    let mut sub_g = subscribe(s.addr, Proto::Transport, &tok, STATUS, json!({"d": g})).await;
    let mut sub_all = subscribe(s.addr, Proto::Transport, &tok, STATUS, json!({})).await;

    publish(&s, &tok, "user.created", json!({})).await;

    // F: AWAITING_RETRY after the first failure, FAILING after the fifth.
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.last().map(String::as_str) != Some("FAILING") {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = sub_f.take("1", 1, left).await[0]["destinationStatusChanged"].clone();
        assert_eq!(c["destinationId"], f.as_str());
        assert_eq!(c["enabled"], true);
        assert!(c["at"].is_string());
        seen.push(c["status"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["AWAITING_RETRY", "FAILING"]);
    assert!(failing.count() >= 5, "{} requests", failing.count());

    // G: one 410 and it is off.
    let c = sub_g.take("1", 1, WAIT).await[0]["destinationStatusChanged"].clone();
    assert_eq!(c["destinationId"], g.as_str());
    assert_eq!(c["status"], "DISABLED");
    assert_eq!(c["enabled"], false);

    // The unfiltered subscriber saw all three changes; G's in its place.
    let got = sub_all.take("1", 3, WAIT).await;
    let mut by_dest: HashMap<String, Vec<String>> = HashMap::new();
    for c in &got {
        let c = &c["destinationStatusChanged"];
        by_dest
            .entry(c["destinationId"].as_str().unwrap().into())
            .or_default()
            .push(c["status"].as_str().unwrap().into());
    }
    assert_eq!(by_dest[&f], ["AWAITING_RETRY", "FAILING"]);
    assert_eq!(by_dest[&g], ["DISABLED"]);

    // The stream matches what the API reports.
    let q = "query($f: ID!, $g: ID!) {
      f: destination(id: $f) { status enabled failureDetails { consecutiveFailures } }
      g: destination(id: $g) { status enabled }
    }";
    let d = s.ok(&tok, q, json!({"f": f, "g": g})).await;
    assert_eq!(d["f"]["status"], "FAILING");
    assert!(
        d["f"]["failureDetails"]["consecutiveFailures"]
            .as_i64()
            .unwrap()
            >= 5
    );
    assert_eq!(d["g"]["status"], "DISABLED");
    assert_eq!(d["g"]["enabled"], false);
});

// A user switching a destination off and on is a status change too.
both!(
    status_changes_when_switched_by_a_user,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let d = create_destination(&s, &tok, json!({"url": ok.url()})).await;
        let mut sub = subscribe(s.addr, Proto::Transport, &tok, STATUS, json!({"d": d})).await;
        let rival = s.token("rival", "read");
        let mut theirs = subscribe(s.addr, Proto::Transport, &rival, STATUS, json!({})).await;
        let id = json!({"id": d});
        s.ok(
            &tok,
            "mutation($id: ID!) { disableDestination(id: $id) { id } }",
            id.clone(),
        )
        .await;
        s.ok(
            &tok,
            "mutation($id: ID!) { enableDestination(id: $id) { id } }",
            id.clone(),
        )
        .await;
        s.ok(
            &tok,
            "mutation($id: ID!) { updateDestination(id: $id, input: {enabled: false}) { id } }",
            id.clone(),
        )
        .await;
        let got: Vec<(Value, Value)> = sub
            .take("1", 3, WAIT)
            .await
            .into_iter()
            .map(|c| {
                let c = &c["destinationStatusChanged"];
                assert_eq!(c["destinationId"], d.as_str());
                (c["enabled"].clone(), c["status"].clone())
            })
            .collect();
        assert_eq!(
            got,
            [
                (json!(false), json!("DISABLED")),
                (json!(true), json!("ACTIVE")),
                (json!(false), json!("DISABLED")),
            ]
        );
        theirs.expect_silence(Duration::from_millis(300)).await;
    }
);

// 5. The legacy `graphql-ws` protocol: connection_init / start / data / stop.
both!(legacy_graphql_ws_protocol, |backend| async move {
    let s = Server::start(backend).await;
    let tok = s.token("acme", "read write publish");
    let ok = Receiver::start().await;
    let d = create_destination(&s, &tok, json!({"url": ok.url()})).await;
    let mut c = subscribe(s.addr, Proto::Legacy, &tok, ATTEMPTS, json!({"d": d})).await;
    let e1 = publish(&s, &tok, "user.created", json!({"n": 1})).await;
    let e2 = publish(&s, &tok, "user.created", json!({"n": 2})).await;
    let got = attempts(c.take("1", 2, WAIT).await);
    let mut events: Vec<&str> = field(&got, "eventId");
    events.sort();
    let mut want = [e1.as_str(), e2.as_str()];
    want.sort();
    assert_eq!(events, want);
    for at in &got {
        assert_eq!(at["destinationId"], d.as_str());
        assert_eq!(at["outcome"], "SUCCESS");
        assert_eq!(at["delivery"]["status"], "SUCCEEDED");
    }
    c.send_json(json!({"type": "stop", "id": "1"})).await;
    match c.recv(Duration::from_secs(10)).await {
        Some(Incoming::Complete { id }) => assert_eq!(id, "1"),
        other => panic!("expected complete after stop, got {other:?}"),
    }
    publish(&s, &tok, "user.created", json!({"n": 3})).await;
    ok.wait_for(3, WAIT).await;
    c.expect_silence(Duration::from_millis(300)).await;
});

// 6. Two instances on one PostgreSQL database: what one instance delivers reaches the other
// instance's subscribers.
mod two_instances_share_the_live_stream {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if pg_available().is_none() {
            return;
        }
        let a = Server::start(Backend::Postgres).await;
        // B never dispatches: every attempt and status change it streams crossed over.
        let b = a.start_peer(|c| c.dispatch.enabled = false).await;
        let tok = a.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let gone = Receiver::start().await;
        gone.status(410);
        let d =
            create_destination(&a, &tok, json!({"url": ok.url(), "eventTypes": ["user.*"]})).await;
        let g =
            create_destination(&a, &tok, json!({"url": gone.url(), "eventTypes": ["x.*"]})).await;
        let mut on_b = subscribe(
            b.addr,
            Proto::Transport,
            &tok,
            &attempts_with_relations(),
            json!({}),
        )
        .await;
        let mut status_b = subscribe(b.addr, Proto::Transport, &tok, STATUS, json!({})).await;
        let rival = b.token("rival", "read");
        let mut rival_b = subscribe(b.addr, Proto::Transport, &rival, ATTEMPTS, json!({})).await;

        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(publish(&a, &tok, "user.created", json!({"n": i})).await);
        }
        ids.push(publish(&a, &tok, "x.gone", json!({})).await);
        let got = attempts(on_b.take("1", 4, WAIT).await);
        let mut seen: Vec<&str> = field(&got, "eventId");
        seen.sort();
        ids.sort();
        assert_eq!(seen, ids);
        for at in &got {
            // Resolved on B from the shared database (B made none of these attempts).
            assert_eq!(at["delivery"]["id"], at["deliveryId"]);
            assert_eq!(at["delivery"]["event"]["id"], at["eventId"]);
            assert_eq!(at["delivery"]["destination"]["id"], at["destinationId"]);
            if at["destinationId"] == d {
                assert_eq!(at["outcome"], "SUCCESS");
                assert_eq!(at["delivery"]["status"], "SUCCEEDED");
            } else {
                assert_eq!(at["destinationId"], g.as_str());
                assert_eq!(at["responseStatus"], 410);
            }
        }
        let c = status_b.take("1", 1, WAIT).await[0]["destinationStatusChanged"].clone();
        assert_eq!(c["destinationId"], g.as_str());
        assert_eq!(c["status"], "DISABLED");
        assert_eq!(c["enabled"], false);
        rival_b.expect_silence(Duration::from_millis(500)).await;
        // A user's switch made through A reaches B too.
        a.ok(
            &tok,
            "mutation($id: ID!) { disableDestination(id: $id) { id } }",
            json!({"id": d}),
        )
        .await;
        let c = status_b.take("1", 1, WAIT).await[0]["destinationStatusChanged"].clone();
        assert_eq!(c["destinationId"], d.as_str());
        assert_eq!(c["enabled"], false);
        a.ok(
            &tok,
            "mutation($id: ID!) { enableDestination(id: $id) { id } }",
            json!({"id": d}),
        )
        .await;
        let c = status_b.take("1", 1, WAIT).await[0]["destinationStatusChanged"].clone();
        assert_eq!(c["enabled"], true);
        assert_eq!(c["status"], "ACTIVE");

        // With two dispatching instances, a subscriber on either sees every attempt,
        // whichever instance made it.
        let c2 = a.start_peer(|_| {}).await;
        let mut on_c = subscribe(c2.addr, Proto::Transport, &tok, ATTEMPTS, json!({"d": d})).await;
        let mut on_a = subscribe(a.addr, Proto::Transport, &tok, ATTEMPTS, json!({"d": d})).await;
        let mut more = Vec::new();
        for i in 0..20 {
            let via = if i % 2 == 0 { &a } else { &c2 };
            more.push(publish(via, &tok, "user.updated", json!({"n": i})).await);
        }
        more.sort();
        for sub in [&mut on_c, &mut on_a] {
            let got = attempts(sub.take("1", 20, WAIT).await);
            let mut seen: Vec<&str> = field(&got, "eventId");
            seen.sort();
            assert_eq!(seen, more);
            sub.expect_silence(Duration::from_millis(200)).await;
        }
        ok.wait_for(23, WAIT).await;
    }
}

// A user switching a destination off and on is a status change; saying "off" to a destination
// that is already off (disableDestination again, or updateDestination with an unchanged
// `enabled`) is not, and the stream stays quiet.
both!(
    status_changes_only_when_enabled_changes,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("acme", "read write publish");
        let rx = Receiver::start().await;
        let d = create_destination(&s, &tok, json!({"url": rx.url()})).await;
        let mut status = subscribe(s.addr, Proto::Transport, &tok, STATUS, json!({"d": d})).await;
        let disable = "mutation($id: ID!) { disableDestination(id: $id) { enabled } }";
        let enable = "mutation($id: ID!) { enableDestination(id: $id) { enabled } }";
        let update = "mutation($id: ID!, $e: Boolean) {
      updateDestination(id: $id, input: {enabled: $e}) { enabled } }";

        s.ok(&tok, disable, json!({"id": d})).await;
        let got = status.take("1", 1, WAIT).await;
        assert_eq!(got[0]["destinationStatusChanged"]["enabled"], false);
        s.ok(&tok, disable, json!({"id": d})).await;
        s.ok(&tok, update, json!({"id": d, "e": false})).await;
        status.expect_silence(Duration::from_secs(1)).await;

        s.ok(&tok, update, json!({"id": d, "e": true})).await;
        let got = status.take("1", 1, WAIT).await;
        assert_eq!(got[0]["destinationStatusChanged"]["enabled"], true);
        s.ok(&tok, enable, json!({"id": d})).await;
        status.expect_silence(Duration::from_secs(1)).await;
    }
);

const DELIVERY_FIELDS: &str = "id status eventId destinationId eventType attemptCount \
    nextAttemptAt lastStatusCode lastError createdAt completedAt \
    event { id type level payload idempotencyKey createdAt }";

fn attempts_with_relations() -> String {
    format!(
        "subscription {{ deliveryAttempts {{ id deliveryId destinationId eventId outcome responseStatus \
           delivery {{ {DELIVERY_FIELDS} destination {{ ...D }} }} }} }}
         fragment D on Destination {{ id name }}"
    )
}

// A burst of attempts whose subscriber asks for the delivery, its event and its destination.
// Attempts made here bring their delivery and event along; the stream loads destinations
// (and anything missing) for whole batches. Each attempt must get exactly what a query of
// the same objects returns afterwards, successes and retries alike.
both!(
    relations_resolve_per_attempt_in_a_burst,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let ok = Receiver::start().await;
        let bad = Receiver::start().await;
        bad.status(503);
        let mut names = HashMap::new();
        // Three events for the failing one: its circuit opens only after five failures.
        for (name, url, types) in [
            ("first", ok.url(), json!(["*"])),
            (
                "second",
                bad.url(),
                json!(["order.n0", "order.n1", "order.n2"]),
            ),
        ] {
            let id = create_destination(
                &s,
                &tok,
                json!({"name": name, "url": url, "retrySchedule": [3600], "eventTypes": types}),
            )
            .await;
            names.insert(id, name);
        }
        let mut sub = subscribe(
            s.addr,
            Proto::Transport,
            &tok,
            &attempts_with_relations(),
            json!({}),
        )
        .await;
        let n = 40;
        let types: Vec<String> = (0..n).map(|i| format!("order.n{i}")).collect();
        let published = futures_util::future::join_all(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| publish(&s, &tok, t, json!({"n": i}))),
        )
        .await;
        let by_event: HashMap<String, usize> = published
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let got = attempts(sub.take("1", n + 3, WAIT).await);
        let mut seen = std::collections::HashSet::new();
        for a in &got {
            let d = &a["delivery"];
            let dest = a["destinationId"].as_str().unwrap();
            let i = by_event[a["eventId"].as_str().unwrap()];
            assert_eq!(d["id"], a["deliveryId"], "{a}");
            assert_eq!(d["event"]["id"], a["eventId"], "{a}");
            assert_eq!(d["event"]["payload"], json!({"n": i}), "{a}");
            assert_eq!(d["event"]["type"], format!("order.n{i}"), "{a}");
            assert_eq!(d["destination"]["id"], dest, "{a}");
            assert_eq!(d["destination"]["name"], names[dest], "{a}");
            let expected = if names[dest] == "first" {
                "SUCCEEDED"
            } else {
                "AWAITING_RETRY"
            };
            assert_eq!(d["status"], expected, "{a}");
            assert!(seen.insert((i, dest.to_string())), "twice: {a}");
            // What a query returns now is what the stream said.
            let q = s
                .ok(
                    &tok,
                    &format!("query($id: ID!) {{ delivery(id: $id) {{ {DELIVERY_FIELDS} }} }}"),
                    json!({"id": a["deliveryId"]}),
                )
                .await;
            let mut live = d.clone();
            live.as_object_mut().unwrap().remove("destination");
            assert_eq!(q["delivery"], live, "stream and query differ");
        }
        assert_eq!(seen.len(), n + 3);
    }
);

// An attempt of an event larger than `LIVE_EVENT_INLINE_MAX` goes on the live bus without its
// event (the bus keeps its last 4 096 messages; `delivery_retry::one_flush_updating_a_delivery_
// twice_applies_in_order` checks what rides along); a subscriber that asks for the event gets
// it loaded, whole, like one whose event was carried along.
both!(
    large_and_small_events_reach_subscribers_whole,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let rx = Receiver::start().await;
        create_destination(&s, &tok, json!({"url": rx.url()})).await;
        let q = "subscription { deliveryAttempts { eventId delivery { event { id payload } } } }";
        let mut sub = subscribe(s.addr, Proto::Transport, &tok, q, json!({})).await;
        let big = "x".repeat(hookline::dispatch::writer::LIVE_EVENT_INLINE_MAX + 1);
        let small = json!({"s": "tiny"});
        let large = json!({ "s": big });
        let small_id = publish(&s, &tok, "t.small", small.clone()).await;
        let large_id = publish(&s, &tok, "t.large", large.clone()).await;
        let got = attempts(sub.take("1", 2, WAIT).await);
        for (id, payload) in [(small_id, small), (large_id, large)] {
            let a = got
                .iter()
                .find(|a| a["eventId"] == id.as_str())
                .unwrap_or_else(|| panic!("no attempt for {id} in {got:?}"));
            assert_eq!(a["delivery"]["event"]["id"], id.as_str());
            assert_eq!(a["delivery"]["event"]["payload"], payload);
        }
    }
);

// An attempt whose delivery was finished while it was in flight (its destination deleted): the
// completion guard keeps the attempt's update out, and the stream shows the delivery as the
// database has it — discarded — not as the attempt would have left it (awaiting a retry).
both!(
    stream_shows_the_delivery_the_guard_kept,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "read write publish");
        let rx = Receiver::start().await;
        rx.set(Behavior {
            status: 500,
            delay: Duration::from_millis(1500),
            ..Default::default()
        });
        let dest = create_destination(
            &s,
            &tok,
            json!({"url": rx.url(), "retrySchedule": [5], "maxAttempts": 5}),
        )
        .await;
        let q = "subscription { deliveryAttempts { deliveryId responseStatus
          delivery { id status lastError completedAt } } }";
        let mut sub = subscribe(s.addr, Proto::Transport, &tok, q, json!({})).await;
        publish(&s, &tok, "order.created", json!({})).await;
        wait_status(&s, &tok, &dest, 1, "DELIVERING", WAIT).await;
        s.ok(
            &tok,
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": dest}),
        )
        .await;
        let got = attempts(sub.take("1", 1, WAIT).await);
        let a = &got[0];
        assert_eq!(a["responseStatus"], 500, "{a}");
        assert_eq!(a["delivery"]["id"], a["deliveryId"], "{a}");
        assert_eq!(a["delivery"]["status"], "DISCARDED", "{a}");
        assert_eq!(a["delivery"]["lastError"], "destination deleted", "{a}");
        assert!(a["delivery"]["completedAt"].is_string(), "{a}");
    }
);
