//! Input validation: every refusal is BAD_USER_INPUT naming the field (CONFLICT for a taken
//! name), and a refused request writes nothing.

use serde_json::{Value, json};

use crate::both;
use crate::harness::{CREATE_DEST, Server, token};

/// `harness::create_destination`, with a URL (a closed local port) when the input has none.
async fn create_destination(s: &Server, token: &str, mut input: Value) -> String {
    if input.get("url").is_none() {
        input["url"] = json!("http://127.0.0.1:9/hook");
    }
    crate::harness::create_destination(s, token, input).await
}

const COUNT: &str = "{ destinations { totalCount } }";

const SNAPSHOT: &str = "query($id: ID!) { destination(id: $id) {
  id name displayName description url enabled status signingScheme signatureHeader signingSecret
  previousSecretExpiresAt httpAuth headers { name value } timeoutMs payloadFormat batchSize
  batchWindowMs rateLimitPerSec maxInFlight ordered retrySchedule maxAttempts discardAfterSecs
  lossy tlsVerify version createdAt updatedAt updatedBy
  eventSubscriptions { id eventTypes eventsPolicy minLevel enabled updatedAt } } }";

const UPDATE: &str = "mutation($id: ID!, $input: UpdateDestinationInput!) {
  updateDestination(id: $id, input: $input) { id version } }";

async fn count(s: &Server, t: &str) -> i64 {
    s.ok(t, COUNT, json!({})).await["destinations"]["totalCount"]
        .as_i64()
        .unwrap()
}

async fn snapshot(s: &Server, t: &str, id: &str) -> Value {
    let d = s.ok(t, SNAPSHOT, json!({"id": id})).await["destination"].clone();
    assert!(!d.is_null());
    d
}

fn merge(mut base: Value, over: &Value) -> Value {
    for (k, v) in over.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn headers(n: usize) -> Value {
    (0..n)
        .map(|i| json!({"name": format!("X-H{i}"), "value": "v"}))
        .collect()
}

/// The `https://example.com/…` URL of exactly `len` characters.
fn url_of_len(len: usize) -> String {
    let base = "https://example.com/";
    format!("{base}{}", "a".repeat(len - base.len()))
}

/// Refusals shared by create and update: (what, input fields, field named by the error).
fn setting_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        ("unparsable URL", json!({"url": "not a url"}), "url"),
        ("relative URL", json!({"url": "/hook"}), "url"),
        ("ftp URL", json!({"url": "ftp://example.com/x"}), "url"),
        (
            "javascript URL",
            json!({"url": "javascript:alert(1)"}),
            "url",
        ),
        ("URL of 2049 chars", json!({"url": url_of_len(2049)}), "url"),
        ("empty name", json!({"name": ""}), "name"),
        ("blank name", json!({"name": "   "}), "name"),
        ("129-char name", json!({"name": "n".repeat(129)}), "name"),
        ("timeout 999", json!({"timeoutMs": 999}), "timeoutMs"),
        ("timeout 60001", json!({"timeoutMs": 60_001}), "timeoutMs"),
        ("batch size 0", json!({"batchSize": 0}), "batchSize"),
        ("batch size 1001", json!({"batchSize": 1001}), "batchSize"),
        (
            "21 retries",
            json!({"retrySchedule": vec![1; 21]}),
            "retrySchedule",
        ),
        (
            "negative retry",
            json!({"retrySchedule": [5, -1]}),
            "retrySchedule",
        ),
        (
            "header name with a space",
            json!({"headers": [{"name": "Bad Name", "value": "v"}]}),
            "headers",
        ),
        (
            "header name with a colon",
            json!({"headers": [{"name": "X:Y", "value": "v"}]}),
            "headers",
        ),
        (
            "CR LF in a header value",
            json!({"headers": [{"name": "X-A", "value": "a\r\nX-Evil: 1"}]}),
            "headers",
        ),
        (
            "LF in a header value",
            json!({"headers": [{"name": "X-A", "value": "a\nb"}]}),
            "headers",
        ),
        ("21 headers", json!({"headers": headers(21)}), "headers"),
        (
            "host header",
            json!({"headers": [{"name": "host", "value": "evil.example"}]}),
            "headers",
        ),
        (
            "Host header",
            json!({"headers": [{"name": "Host", "value": "evil.example"}]}),
            "headers",
        ),
        (
            "content-length header",
            json!({"headers": [{"name": "content-length", "value": "1"}]}),
            "headers",
        ),
        (
            "connection header",
            json!({"headers": [{"name": "connection", "value": "close"}]}),
            "headers",
        ),
        (
            "transfer-encoding header",
            json!({"headers": [{"name": "Transfer-Encoding", "value": "chunked"}]}),
            "headers",
        ),
        (
            "7-char HMAC secret",
            json!({"signingScheme": "HMAC_SHA256_HEX", "signingSecret": "1234567"}),
            "signingSecret",
        ),
        (
            "short default-scheme secret",
            json!({"signingSecret": "short"}),
            "signingSecret",
        ),
        (
            "Standard Webhooks secret without whsec_",
            json!({"signingScheme": "STANDARD_WEBHOOKS",
                   "signingSecret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
            "signingSecret",
        ),
        (
            "whsec_ secret that is not base64",
            json!({"signingSecret": "whsec_not*base64!!"}),
            "signingSecret",
        ),
        (
            "whsec_ secret too short a key",
            json!({"signingSecret": "whsec_AAAA"}),
            "signingSecret",
        ),
        (
            "reserved signature header",
            json!({"signingScheme": "HMAC_SHA256_HEX", "signatureHeader": "webhook-id"}),
            "signatureHeader",
        ),
        (
            "colon in a basic-auth username",
            json!({"httpAuth": {"basic": {"username": "a:b", "password": "p"}}}),
            "httpAuth",
        ),
        (
            "bearer token with its scheme",
            json!({"httpAuth": {"bearer": {"token": "Bearer abc"}}}),
            "httpAuth",
        ),
        (
            "batch window -1",
            json!({"batchWindowMs": -1}),
            "batchWindowMs",
        ),
        (
            "rate limit 0",
            json!({"rateLimitPerSec": 0}),
            "rateLimitPerSec",
        ),
        ("max in flight 0", json!({"maxInFlight": 0}), "maxInFlight"),
        ("max attempts 0", json!({"maxAttempts": 0}), "maxAttempts"),
        (
            "discard after 0",
            json!({"discardAfterSecs": 0}),
            "discardAfterSecs",
        ),
        (
            "257-char display name",
            json!({"displayName": "d".repeat(257)}),
            "displayName",
        ),
        (
            // Valid on its own; the invalid field must refuse the whole request.
            "valid change next to an invalid one",
            json!({"description": "changed", "enabled": false, "timeoutMs": 999}),
            "timeoutMs",
        ),
    ]
}

fn create_only_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "pattern user*",
            json!({"eventTypes": ["user*"]}),
            "eventTypes",
        ),
        (
            "pattern a..b",
            json!({"eventTypes": ["a..b"]}),
            "eventTypes",
        ),
        (
            "pattern a.*b",
            json!({"eventTypes": ["a.*b"]}),
            "eventTypes",
        ),
        ("no patterns", json!({"eventTypes": []}), "eventTypes"),
        (
            "duplicate pattern",
            json!({"eventTypes": ["a", "a"]}),
            "eventTypes",
        ),
    ]
}

both!(validation_create_refusals, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    create_destination(&s, &t, json!({"name": "existing"})).await;
    let mut cases = setting_cases();
    cases.extend(create_only_cases());
    for (i, (what, over, field)) in cases.into_iter().enumerate() {
        let input = merge(
            json!({"name": format!("v-{i}"), "url": "https://example.com/hook"}),
            &over,
        );
        let r = s.gql(Some(&t), CREATE_DEST, json!({"input": input})).await;
        let e = &r["errors"][0];
        assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{what}: {r:#}");
        assert_eq!(e["extensions"]["field"], field, "{what}: {r:#}");
        assert!(r["data"].is_null(), "{what}: {r:#}");
        assert_eq!(count(&s, &t).await, 1, "{what}: something was written");
    }
    // No refused creation took its name.
    create_destination(&s, &t, json!({"name": "v-0"})).await;
    assert_eq!(count(&s, &t).await, 2);
});

both!(validation_update_refusals, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let id = create_destination(
        &s,
        &t,
        json!({"name": "target", "description": "orig", "timeoutMs": 5000,
               "headers": [{"name": "X-Keep", "value": "1"}], "retrySchedule": [1, 2]}),
    )
    .await;
    let before = snapshot(&s, &t, &id).await;
    for (what, over, field) in setting_cases() {
        let r = s
            .gql(Some(&t), UPDATE, json!({"id": id, "input": over}))
            .await;
        let e = &r["errors"][0];
        assert_eq!(e["extensions"]["code"], "BAD_USER_INPUT", "{what}: {r:#}");
        assert_eq!(e["extensions"]["field"], field, "{what}: {r:#}");
        assert_eq!(snapshot(&s, &t, &id).await, before, "{what}: changed");
    }
    // With the current expectedVersion the refusal is the same and the version stays.
    let r = s
        .gql(
            Some(&t),
            UPDATE,
            json!({"id": id, "input": {"batchSize": 0, "expectedVersion": 1}}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["field"], "batchSize", "{r:#}");
    assert_eq!(snapshot(&s, &t, &id).await, before);

    // Switching scheme re-checks the stored secret: an HMAC secret is no whsec_ key.
    let hmac = create_destination(
        &s,
        &t,
        json!({"signingScheme": "HMAC_SHA256_HEX", "signingSecret": "plain-secret-123"}),
    )
    .await;
    let hmac_before = snapshot(&s, &t, &hmac).await;
    let r = s
        .gql(
            Some(&t),
            UPDATE,
            json!({"id": hmac, "input": {"signingScheme": "STANDARD_WEBHOOKS"}}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "signingSecret");
    assert_eq!(snapshot(&s, &t, &hmac).await, hmac_before);
});

both!(validation_limits_accepted, |backend| async move {
    // The edges of every range are accepted and stored as given, so each refusal above is
    // about its own limit.
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cases = [
        json!({"url": url_of_len(2048)}),
        json!({"url": "http://127.0.0.1:9/plain-http"}),
        json!({"name": "n".repeat(128)}),
        json!({"name": "é".repeat(128)}),
        json!({"timeoutMs": 1000, "batchSize": 1}),
        json!({"timeoutMs": 60_000, "batchSize": 1000}),
        json!({"retrySchedule": vec![1; 20]}),
        json!({"retrySchedule": [0]}),
        json!({"headers": headers(20)}),
        json!({"headers": [{"name": "X-Tab", "value": "a\tb ~!"}]}),
        json!({"signingScheme": "HMAC_SHA256_HEX", "signingSecret": "12345678"}),
        json!({"signingScheme": "HMAC_SHA256_BASE64", "signingSecret": "ünïcödé!"}),
        json!({"signingSecret": whsec}),
        json!({"eventTypes": ["user.*", "a.*.c", "order.created"]}),
    ];
    let q = "mutation($input: CreateDestinationInput!) { createDestination(input: $input) {
      id name url timeoutMs batchSize retrySchedule headers { name value } signingScheme
      signingSecret eventSubscriptions { eventTypes } } }";
    for (i, over) in cases.iter().enumerate() {
        let input = merge(
            json!({"name": format!("ok-{i}"), "url": "https://example.com/hook"}),
            over,
        );
        let r = s.gql(Some(&t), q, json!({"input": input})).await;
        assert!(r.get("errors").is_none(), "{over}: {r:#}");
        let d = &r["data"]["createDestination"];
        for (k, v) in over.as_object().unwrap() {
            if k == "headers" {
                // Values are write-only: the names come back.
                let names = |h: &Value| {
                    let h = h.as_array().unwrap().iter();
                    h.map(|x| x["name"].clone()).collect::<Vec<_>>()
                };
                assert_eq!(names(&d[k]), names(v), "{k}");
                continue;
            }
            let got = if k == "eventTypes" {
                &d["eventSubscriptions"][0]["eventTypes"]
            } else {
                &d[k]
            };
            assert_eq!(got, v, "{k}");
        }
    }
    assert_eq!(count(&s, &t).await, cases.len() as i64);
});

both!(validation_duplicate_name, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    create_destination(&s, &t, json!({"name": "dup"})).await;
    let other = create_destination(&s, &t, json!({"name": "other"})).await;
    let (c, e) = s
        .err_code(
            Some(&t),
            CREATE_DEST,
            json!({"input": {"name": "dup", "url": "https://example.com/2"}}),
        )
        .await;
    assert_eq!(c, "CONFLICT", "{e}");
    assert_eq!(count(&s, &t).await, 2);
    let before = snapshot(&s, &t, &other).await;
    let (c, e) = s
        .err_code(
            Some(&t),
            UPDATE,
            json!({"id": other, "input": {"name": "dup"}}),
        )
        .await;
    assert_eq!(c, "CONFLICT", "{e}");
    assert_eq!(snapshot(&s, &t, &other).await, before);
    // Renaming to its own name is no conflict.
    let r = s
        .ok(&t, UPDATE, json!({"id": other, "input": {"name": "other"}}))
        .await;
    assert_eq!(r["updateDestination"]["version"], 2);

    // Racing creations of one name: exactly one wins, the others are CONFLICT (not INTERNAL).
    let tries = (0..5).map(|i| {
        let (s, t) = (&s, &t);
        async move {
            let input = json!({"name": "raced", "url": format!("https://example.com/{i}")});
            s.gql(Some(t), CREATE_DEST, json!({"input": input})).await
        }
    });
    let results = futures_util::future::join_all(tries).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    assert_eq!(ok, 1, "{results:#?}");
    for r in results.iter().filter(|r| r.get("errors").is_some()) {
        assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT", "{r:#}");
    }
    assert_eq!(count(&s, &t).await, 3);
});

both!(validation_subscription_refusals, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write");
    let id = create_destination(&s, &t, json!({})).await;
    let list = "query($id: ID!) { eventSubscriptions(destinationId: $id) { id eventTypes enabled updatedAt } }";
    let before = s.ok(&t, list, json!({"id": id})).await;
    let sub = before["eventSubscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let create = "mutation($input: CreateEventSubscriptionInput!) { createEventSubscription(input: $input) { id } }";
    let update = "mutation($id: ID!, $input: UpdateEventSubscriptionInput!) {
      updateEventSubscription(id: $id, input: $input) { id } }";
    for bad in [
        json!(["user*"]),
        json!(["a..b"]),
        json!(["*a"]),
        json!([".user"]),
        json!(["user."]),
        json!(["a b"]),
        json!([]),
        json!(["x", "x"]),
    ] {
        let (c, e) = s
            .err_code(
                Some(&t),
                create,
                json!({"input": {"destinationId": id, "eventTypes": bad}}),
            )
            .await;
        assert_eq!(c, "BAD_USER_INPUT", "{bad}: {e}");
        assert_eq!(e["extensions"]["field"], "eventTypes", "{bad}: {e}");
        let (c, e) = s
            .err_code(
                Some(&t),
                update,
                json!({"id": sub, "input": {"eventTypes": bad, "enabled": false}}),
            )
            .await;
        assert_eq!(c, "BAD_USER_INPUT", "{bad}: {e}");
        assert_eq!(e["extensions"]["field"], "eventTypes", "{bad}: {e}");
        assert_eq!(s.ok(&t, list, json!({"id": id})).await, before, "{bad}");
    }
    // Ids that are not UUIDs are bad input too, naming the argument.
    let (c, e) = s
        .err_code(
            Some(&t),
            create,
            json!({"input": {"destinationId": "nope", "eventTypes": ["*"]}}),
        )
        .await;
    assert_eq!(
        (c.as_str(), &e["extensions"]["field"]),
        ("BAD_USER_INPUT", &json!("destinationId"))
    );
    let (c, e) = s
        .err_code(Some(&t), "{ destination(id: \"nope\") { id } }", json!({}))
        .await;
    assert_eq!(
        (c.as_str(), &e["extensions"]["field"]),
        ("BAD_USER_INPUT", &json!("id"))
    );
});

both!(validation_publish_refusals, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write publish");
    create_destination(&s, &t, json!({"url": "https://example.com/h"})).await;
    let q = "mutation($input: PublishEventInput!) { publishEvent(input: $input) { id } }";
    let big = "x".repeat(256 * 1024);
    for (input, field) in [
        (json!({"type": "user*", "payload": {}}), "type"),
        (json!({"type": "user.*", "payload": {}}), "type"),
        (json!({"type": "a..b", "payload": {}}), "type"),
        (json!({"type": "", "payload": {}}), "type"),
        (json!({"type": "a.b", "payload": {"big": big}}), "payload"),
        (
            json!({"type": "a.b", "payload": {}, "idempotencyKey": " padded"}),
            "idempotencyKey",
        ),
    ] {
        let (c, e) = s.err_code(Some(&t), q, json!({"input": input})).await;
        assert_eq!(c, "BAD_USER_INPUT", "{field}: {e}");
        assert_eq!(e["extensions"]["field"], field, "{e}");
    }
    let r = s
        .ok(
            &t,
            "{ events { totalCount } deliveries { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r,
        json!({"events": {"totalCount": 0}, "deliveries": {"totalCount": 0}})
    );
});

/// Errors async-graphql raises itself (syntax, validation, coercion of arguments and
/// variables) carry `extensions.code` like the resolvers' own, on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_a_code() {
    let s = Server::start(crate::harness::Backend::Sqlite).await;
    let t = token("acme", "read write");
    let created = "mutation($i: CreateDestinationInput!) { createDestination(input: $i) { id } }";
    let cases: Vec<(&str, &str, Value, &str, Option<&str>)> = vec![
        (
            "syntax",
            "{ events(",
            json!({}),
            "GRAPHQL_PARSE_FAILED",
            None,
        ),
        (
            "unknown field",
            "{ nope }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            None,
        ),
        (
            "unknown argument",
            "{ events(nope: 1) { totalCount } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            None,
        ),
        (
            "operation name missing",
            "query A { viewer { tenant } } query B { viewer { tenant } }",
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
            None,
        ),
        (
            "Int out of range",
            "{ events(first: 99999999999) { totalCount } }",
            json!({}),
            "BAD_USER_INPUT",
            None,
        ),
        (
            "Int variable out of range",
            "query($n: Int) { events(first: $n) { totalCount } }",
            json!({"n": 99_999_999_999_i64}),
            "BAD_USER_INPUT",
            None,
        ),
        (
            "Int out of range in an input",
            created,
            json!({"i": {"name": "x", "url": "http://127.0.0.1:9/h", "timeoutMs": 99_999_999_999_i64}}),
            "BAD_USER_INPUT",
            None,
        ),
        (
            "bad enum value",
            "{ deliveries(filter: {status: [NOPE]}) { totalCount } }",
            json!({}),
            "BAD_USER_INPUT",
            Some("filter"),
        ),
        (
            "bad enum variable",
            "query($s: [DeliveryStatus!]) { deliveries(filter: {status: $s}) { totalCount } }",
            json!({"s": ["NOPE"]}),
            "BAD_USER_INPUT",
            Some("filter"),
        ),
        (
            "unknown input field",
            created,
            json!({"i": {"name": "x", "url": "http://127.0.0.1:9/h", "bogus": 1}}),
            "BAD_USER_INPUT",
            Some("bogus"),
        ),
        (
            "wrong type in an input",
            created,
            json!({"i": {"name": "x", "url": "http://127.0.0.1:9/h", "batchSize": "many"}}),
            "BAD_USER_INPUT",
            Some("batchSize"),
        ),
    ];
    let mut ws = crate::ws::WsClient::connect(s.addr, crate::ws::Proto::Transport, &t).await;
    for (i, (what, q, vars, code, field)) in cases.into_iter().enumerate() {
        let r = s.gql(Some(&t), q, vars.clone()).await;
        let errors = r["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {r:#}"));
        for e in errors {
            assert_eq!(e["extensions"]["code"], code, "{what}: {r:#}");
            if let Some(f) = field {
                assert_eq!(e["extensions"]["field"], f, "{what}: {r:#}");
            }
        }
        // The same over the WebSocket.
        let id = format!("q{i}");
        ws.subscribe(&id, q, vars).await;
        let payload = loop {
            match ws.recv(std::time::Duration::from_secs(5)).await {
                Some(crate::ws::Incoming::Error { payload, .. }) => break payload,
                Some(crate::ws::Incoming::Next { payload, .. })
                    if payload.get("errors").is_some() =>
                {
                    break payload["errors"].clone();
                }
                None => panic!("{what}: no error over the WebSocket"),
                _ => continue,
            }
        };
        for e in payload
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {payload:#}"))
        {
            assert_eq!(e["extensions"]["code"], code, "{what} (ws): {payload:#}");
        }
    }
    // Nothing was created by the refused inputs.
    assert_eq!(count(&s, &t).await, 0);
}
