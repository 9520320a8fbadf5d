//! `/graphql/ws` as graphql-transport-ws defines it: the `connection_init` deadline (4408),
//! bad messages (4400), subscribe before the ack (4401), duplicate ids (4409), a second init
//! (4429), token expiry for every operation type (4403), message size (1009), pre-auth slots
//! per process and per client address, and keep-alive pings.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::*;
use crate::live_ws::ATTEMPTS;
use crate::ws::{Incoming, Proto, WsClient};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Expects a close frame with `code` within `within`; returns its reason.
async fn expect_close(c: &mut WsClient, code: u16, within: Duration) -> String {
    loop {
        match c.recv(within).await {
            Some(Incoming::Closed(Some((got, reason)))) => {
                assert_eq!(got, code, "closed with {got} {reason:?}, expected {code}");
                return reason;
            }
            // Results of operations that finished before the close are fine.
            Some(Incoming::Next { .. }) | Some(Incoming::Complete { .. }) => continue,
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// Runs one operation as `id`; returns its messages up to `complete` (or `error`).
async fn operation(c: &mut WsClient, id: &str, query: &str, vars: Value) -> Vec<Incoming> {
    c.subscribe(id, query, vars).await;
    let mut got = Vec::new();
    loop {
        let m = c
            .recv(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("operation {id}: no answer; so far {got:?}"));
        let done = match &m {
            Incoming::Complete { id: i } | Incoming::Error { id: i, .. } => i == id,
            Incoming::Closed(_) => panic!("operation {id}: connection closed: {m:?}"),
            _ => false,
        };
        got.push(m);
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_connection_init_is_closed_after_the_wait() {
    let wait = Duration::from_millis(400);
    let s = Server::start_with(Backend::Sqlite, |c| c.limits.ws.init_timeout = wait).await;
    for proto in [Proto::Transport, Proto::Legacy] {
        let started = Instant::now();
        let mut c = WsClient::open(s.addr, proto, None).await;
        // Pings are answered but do not count as initialising.
        c.sync().await;
        let reason = expect_close(&mut c, 4408, Duration::from_secs(5)).await;
        assert_eq!(reason, "Connection initialisation timeout");
        assert!(
            started.elapsed() >= wait,
            "{proto:?}: closed before the wait"
        );
    }
    // A socket that does initialise in time stays open past the wait.
    let tok = s.token("acme", "read");
    let mut c = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    c.expect_silence(wait * 2).await;
    let got = operation(&mut c, "q", "{ viewer { tenant } }", json!({})).await;
    assert!(
        matches!(&got[0], Incoming::Next { payload, .. } if payload["data"]["viewer"]["tenant"] == "acme"),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_the_codes_the_protocol_names() {
    let s = Server::start(Backend::Sqlite).await;
    let tok = s.token("acme", "read write");

    let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "{not json".into(),
    ))
    .await
    .unwrap();
    expect_close(&mut c, 4400, Duration::from_secs(5)).await;

    // The legacy protocol's `start` is not a graphql-transport-ws message.
    let mut c = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    c.send_json(json!({"type": "start", "id": "1", "payload": {"query": "{ viewer { tenant } }"}}))
        .await;
    expect_close(&mut c, 4400, Duration::from_secs(5)).await;

    let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
    c.subscribe("1", "{ viewer { tenant } }", json!({})).await;
    assert_eq!(
        expect_close(&mut c, 4401, Duration::from_secs(5)).await,
        "Unauthorized"
    );

    let mut c = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    c.init(json!({"Authorization": format!("Bearer {tok}")}))
        .await;
    expect_close(&mut c, 4429, Duration::from_secs(5)).await;

    // A bad token: 4403, and the reason says why.
    let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
    c.init(json!({"Authorization": "Bearer nope"})).await;
    let reason = expect_close(&mut c, 4403, Duration::from_secs(5)).await;
    assert!(reason.starts_with("Forbidden"), "{reason}");

    // Operations: a query answers next + complete; a document that does not validate answers
    // `error` and nothing else; a reused id of a live subscription closes with 4409.
    let mut c = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    let got = operation(&mut c, "q", "{ viewer { tenant } }", json!({})).await;
    assert!(
        matches!(&got[..], [Incoming::Next { .. }, Incoming::Complete { .. }]),
        "{got:?}"
    );
    let got = operation(&mut c, "bad", "{ nope }", json!({})).await;
    match &got[..] {
        [Incoming::Error { payload, .. }] => {
            assert!(
                payload[0]["message"].as_str().unwrap().contains("nope"),
                "{payload}"
            )
        }
        other => panic!("expected one error message, got {other:?}"),
    }
    c.subscribe("live", ATTEMPTS, json!({})).await;
    c.sync().await;
    // The client completes it: no answer; the id is free again.
    c.send_json(json!({"type": "complete", "id": "live"})).await;
    c.expect_silence(Duration::from_millis(300)).await;
    c.subscribe("live", ATTEMPTS, json!({})).await;
    c.sync().await;
    c.subscribe("live", ATTEMPTS, json!({})).await;
    assert_eq!(
        expect_close(&mut c, 4409, Duration::from_secs(5)).await,
        "Subscriber for live already exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_before_it_is_read() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.ws.max_message_bytes = 64 * 1024
    })
    .await;
    let mut c = WsClient::open(s.addr, Proto::Transport, None).await;
    // A masked text frame announcing a 48 MiB connection_init, of which only the header is
    // sent: a server that waited for the message (or buffered it) would never answer.
    let len: u64 = 48 * 1024 * 1024;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    c.ws.get_mut().write_all(&header).await.unwrap();
    c.ws.get_mut().flush().await.unwrap();
    expect_close(&mut c, 1009, Duration::from_secs(5)).await;

    // A message under the limit is read; one over it (sent whole) is refused too.
    let tok = s.token("acme", "read");
    let mut c = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    let padded = format!("{{ viewer {{ tenant }} }} #{}", "x".repeat(60 * 1024));
    let got = operation(&mut c, "1", &padded, json!({})).await;
    assert!(
        matches!(&got[..], [Incoming::Next { .. }, Incoming::Complete { .. }]),
        "{got:?}"
    );
    let over = format!("{{ viewer {{ tenant }} }} #{}", "x".repeat(70 * 1024));
    c.subscribe("2", &over, json!({})).await;
    expect_close(&mut c, 1009, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_cannot_take_every_slot() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.ws.max_pre_auth = 3;
        c.limits.ws.max_pre_auth_per_address = 2;
        c.limits.ws.init_timeout = Duration::from_secs(60);
    })
    .await;
    let tok = s.token("acme", "read");
    let open = |from: &str| WsClient::open_from(s.addr, Proto::Transport, ip(from));
    // An authenticated socket from before.
    let mut authed = open("127.0.0.1").await.expect("admitted");
    authed.authenticate(&tok).await;

    // One address holds at most two unauthenticated sockets...
    let _a1 = open("127.0.0.1").await.expect("first");
    let mut a2 = open("127.0.0.1").await.expect("second");
    assert_eq!(open("127.0.0.1").await.err(), Some(429));
    // ... and the process three, whatever the addresses.
    let _b1 = open("127.0.0.2").await.expect("another address");
    assert_eq!(open("127.0.0.3").await.err(), Some(503));

    // The authenticated socket keeps working meanwhile.
    let got = operation(&mut authed, "q", "{ viewer { tenant } }", json!({})).await;
    assert!(matches!(&got[0], Incoming::Next { .. }), "{got:?}");

    // Authenticating frees a pre-auth slot; a new client gets in and authenticates.
    a2.authenticate(&tok).await;
    let mut c = open("127.0.0.3").await.expect("a slot was freed");
    c.authenticate(&tok).await;
    // Closing an unauthenticated socket frees its slot too.
    drop(_b1);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = open("127.0.0.2").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again.expect("the closed socket's slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_drops_a_silent_peer() {
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.limits.ws.ping_interval = Some(Duration::from_secs(1))
    })
    .await;
    let tok = s.token("acme", "read");
    let mut live = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    let mut silent = WsClient::connect(s.addr, Proto::Transport, &tok).await;
    // Reading answers the server's pings (tungstenite sends the pongs): still open after
    // three intervals.
    live.expect_silence(Duration::from_millis(3500)).await;
    assert!(live.pings >= 2, "{} pings", live.pings);
    let got = operation(&mut live, "q", "{ viewer { tenant } }", json!({})).await;
    assert!(matches!(&got[0], Incoming::Next { .. }), "{got:?}");
    // The silent one read nothing meanwhile, so it answered no ping: dropped.
    match silent.recv(Duration::from_secs(5)).await {
        Some(Incoming::Closed(_)) => {}
        other => panic!("expected the silent peer to be dropped, got {other:?}"),
    }
    assert!(silent.pings >= 1);
}

fn short_token(tenant: &str, scope: &str, secs: i64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "tester", "tenant": tenant, "scope": scope,
                "exp": chrono::Utc::now().timestamp() + secs}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

const CREATE: &str = "mutation($n: String!) {
  createDestination(input: {name: $n, url: \"http://127.0.0.1:9/x\"}) { id } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_socket_for_every_operation() {
    let s = Server::start(Backend::Sqlite).await;
    let admin = s.token("acme", "read write");
    let run = |proto: Proto| {
        let addr = s.addr;
        async move {
            let short = short_token("acme", "read write", 3);
            let expires = Instant::now() + Duration::from_secs(3);
            let mut c = WsClient::connect(addr, proto, &short).await;
            let tag = format!("{proto:?}").to_lowercase();
            // Before expiry: a query, a mutation and a subscription run.
            let got = operation(&mut c, "q", "{ viewer { tenant } }", json!({})).await;
            assert!(
                matches!(&got[0], Incoming::Next { payload, .. }
                if payload["data"]["viewer"]["tenant"] == "acme"),
                "{got:?}"
            );
            let got = operation(&mut c, "m", CREATE, json!({"n": format!("before-{tag}")})).await;
            assert!(
                matches!(&got[0], Incoming::Next { payload, .. }
                if payload.get("errors").is_none()),
                "{got:?}"
            );
            c.subscribe("s", ATTEMPTS, json!({})).await;
            c.sync().await;
            // Idle until the token runs out: closed at expiry.
            let reason = expect_close(&mut c, 4403, Duration::from_secs(8)).await;
            assert!(reason.contains("expired"), "{reason}");
            assert!(
                Instant::now() + Duration::from_millis(1100) >= expires,
                "closed early"
            );
            // A mutation sent after that does not run.
            let _ =
                c.ws.send(tokio_tungstenite::tungstenite::Message::Text(
                    json!({"type": if proto == Proto::Transport { "subscribe" } else { "start" },
                       "id": "late", "payload": {"query": CREATE,
                       "variables": {"n": format!("after-{tag}")}}})
                    .to_string()
                    .into(),
                ))
                .await;
            tag
        }
    };
    let (a, b) = tokio::join!(run(Proto::Transport), run(Proto::Legacy));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = s
        .ok(
            &admin,
            "{ destinations(first: 50) { nodes { name } } }",
            json!({}),
        )
        .await;
    let mut names: Vec<&str> = d["destinations"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want = [format!("before-{a}"), format!("before-{b}")];
    want.sort();
    assert_eq!(names, want);
}
