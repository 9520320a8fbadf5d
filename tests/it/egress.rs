//! Where deliveries go out: never through a proxy the environment names (it would resolve the
//! target out of the guard's sight), and through the configured egress proxy only after the
//! guard has judged the target.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline::config::EgressProxy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A stand-in HTTP proxy on 127.0.0.1: records the head of every request and answers 200
/// `via-proxy` itself (a `CONNECT` gets 403, so no tunnel ever opens and nothing leaves the
/// machine).
struct ProxyStub {
    addr: std::net::SocketAddr,
    /// The head of each request received, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl ProxyStub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(answer(sock, log.clone()));
            }
        });
        ProxyStub { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines received, in order.
    fn seen(&self) -> Vec<String> {
        let heads = self.seen.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_string())
            .collect()
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(mut sock: tokio::net::TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    seen.lock().unwrap().push(head.clone());
    if head.starts_with("CONNECT ") {
        let _ = sock
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    // Read the body before answering, so the client never meets a reset mid-send.
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = sock
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nvia-proxy")
        .await;
}

const ATTEMPTS: &str = "query($f: DeliveryFilter) { deliveries(first: 10, filter: $f) { nodes {
  status attempts { outcome responseStatus responseBody errorKind errorMessage } } } }";

/// The first attempt of the destination's only delivery, once there is one.
async fn first_attempt(gql: impl AsyncFn(&str, Value) -> Value, dest: &str, what: &str) -> Value {
    eventually(Duration::from_secs(20), what, || async {
        let r = gql(ATTEMPTS, json!({"f": {"destinationId": dest}})).await;
        let a = &r["data"]["deliveries"]["nodes"][0]["attempts"][0];
        (!a.is_null()).then(|| a.clone())
    })
    .await
}

const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// The real binary with every proxy variable pointing at a recording proxy: with private
/// targets refused, a destination on `localhost` fails `BLOCKED_TARGET`; with them allowed, the
/// receiver gets the request directly. The proxy is never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_proxies_are_never_used() {
    let proxy = ProxyStub::start().await;
    let rx = Receiver::start().await;
    let tok = token("envp", "admin");
    hookline::server::install_crypto();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let target = format!("http://localhost:{}/hook", rx.addr.port());
    for allow_private in [false, true] {
        let db = TestDb::new(Backend::Sqlite).await;
        let child = Child::spawn_with(&db, 1, |cmd| {
            for var in PROXY_VARS {
                cmd.env(var, proxy.url());
            }
            cmd.env_remove("NO_PROXY")
                .env_remove("no_proxy")
                .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", allow_private.to_string());
        })
        .await;
        let gql = async |q: &str, v: Value| child.gql(&http, &tok, q, v).await;
        let made = gql(
            CREATE_DEST,
            json!({"input": {"name": "local", "url": target,
                   "retrySchedule": [3600], "maxAttempts": 2}}),
        )
        .await;
        let dest = made["data"]["createDestination"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{made:#}"))
            .to_string();
        let published = gql(
            PUBLISH,
            json!({"input": {"type": "env.proxy", "payload": {"a": 1}}}),
        )
        .await;
        assert!(published.get("errors").is_none(), "{published:#}");
        let attempt = first_attempt(gql, &dest, "the first attempt").await;
        // `sendTestEvent` sends outside the queue, through the same client.
        let tested = gql(
            "mutation($id: ID!) { sendTestEvent(destinationId: $id) { outcome errorKind } }",
            json!({"id": dest}),
        )
        .await;
        let tested = &tested["data"]["sendTestEvent"];
        if allow_private {
            assert_eq!(attempt["outcome"], "SUCCESS", "{attempt:#}");
            assert_eq!(attempt["responseBody"], "ok", "{attempt:#}");
            assert_eq!(tested["outcome"], "SUCCESS", "{tested:#}");
            assert_eq!(rx.count(), 2);
        } else {
            assert_eq!(attempt["errorKind"], "BLOCKED_TARGET", "{attempt:#}");
            assert_eq!(tested["errorKind"], "BLOCKED_TARGET", "{tested:#}");
            assert_eq!(rx.count(), 0);
        }
        assert_eq!(
            proxy.seen(),
            Vec::<String>::new(),
            "the environment's proxy was contacted:\n{}",
            read_log(&child.log)
        );
        child.kill().await;
    }
}

/// With `HOOKLINE_EGRESS_PROXY`, deliveries go through the proxy (plain HTTP in absolute form,
/// HTTPS as a `CONNECT` tunnel), and only after the guard has judged the target here: a name
/// that resolves to loopback and a loopback literal are refused without the proxy hearing of
/// them. The proxy's credentials, given in its URL, go along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_through_the_egress_proxy_after_the_guard() {
    let proxy = ProxyStub::start().await;
    let rx = Receiver::start().await;
    let s = Server::start_with(Backend::Sqlite, |c| {
        c.allow_private_targets = false;
        let url = format!("http://relay:pw-relay@{}", proxy.addr);
        c.egress_proxy = Some(EgressProxy::parse(&url).unwrap());
    })
    .await;
    let tok = s.token("egress", "admin");
    let port = rx.addr.port();
    let mut dests = Vec::new();
    // Public literals only appear in request lines: the stub answers them itself.
    for url in [
        "http://8.8.8.8/hook".to_string(),
        "https://8.8.4.4/hook".to_string(),
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
    ] {
        let input = json!({"url": url, "retrySchedule": [3600], "maxAttempts": 2});
        dests.push(create_destination(&s, &tok, input).await);
    }
    publish(&s, &tok, "via.proxy", json!({"a": 1})).await;
    let gql = async |q: &str, v: Value| s.gql(Some(&tok), q, v).await;
    let plain = first_attempt(gql, &dests[0], "the proxied attempt").await;
    assert_eq!(plain["outcome"], "SUCCESS", "{plain:#}");
    assert_eq!(plain["responseBody"], "via-proxy", "{plain:#}");
    let tls = first_attempt(gql, &dests[1], "the tunnelled attempt").await;
    assert_eq!(tls["outcome"], "FAILURE", "{tls:#}");
    for dest in &dests[2..] {
        let blocked = first_attempt(gql, dest, "the refused attempt").await;
        assert_eq!(blocked["errorKind"], "BLOCKED_TARGET", "{blocked:#}");
    }
    let mut seen = proxy.seen();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "CONNECT 8.8.4.4:443 HTTP/1.1".to_string(),
            "POST http://8.8.8.8/hook HTTP/1.1".to_string(),
        ]
    );
    assert_eq!(rx.count(), 0);
    // relay:pw-relay
    let auth = "proxy-authorization: basic cmvsyxk6chctcmvsyxk=";
    for head in proxy.heads() {
        assert!(head.to_ascii_lowercase().contains(auth), "{head}");
    }
}
