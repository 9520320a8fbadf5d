//! A small GraphQL-over-WebSocket client for the tests: `graphql-transport-ws` (the current
//! protocol) and the legacy `graphql-ws` (subscriptions-transport-ws), over tokio-tungstenite.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `graphql-transport-ws`: connection_init / subscribe / next / error / complete.
    Transport,
    /// Legacy `graphql-ws`: connection_init / start / data / error / complete.
    Legacy,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Transport => "graphql-transport-ws",
            Proto::Legacy => "graphql-ws",
        }
    }
}

/// What the server said.
#[derive(Debug, Clone)]
pub enum Incoming {
    Ack,
    /// `next` (or legacy `data`): a response, which may carry `errors`.
    Next {
        id: String,
        payload: Value,
    },
    /// `error`: the operation failed before it started streaming.
    Error {
        id: String,
        payload: Value,
    },
    Complete {
        id: String,
    },
    /// Legacy `connection_error`.
    ConnectionError(Value),
    /// A close frame (code, reason) or the connection ending.
    Closed(Option<(u16, String)>),
    Pong,
}

pub struct WsClient {
    pub ws: WebSocketStream<TcpStream>,
    pub proto: Proto,
    /// WebSocket ping frames received from the server (answered by tungstenite).
    pub pings: usize,
    /// Messages that arrived while [`WsClient::sync`] waited for its pongs.
    backlog: VecDeque<Incoming>,
}

impl WsClient {
    /// Opens the socket (no `connection_init` yet). `recv_buffer` shrinks the client's TCP
    /// receive buffer, so a client that stops reading really pushes back on the server.
    pub async fn open(addr: SocketAddr, proto: Proto, recv_buffer: Option<u32>) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        Self::handshake(addr, proto, sock)
            .await
            .expect("websocket handshake")
    }

    /// Opens from the local address `from` (any of 127.0.0.0/8), so a test can be several
    /// clients; `Err` carries the HTTP status of a refused upgrade.
    pub async fn open_from(
        addr: SocketAddr,
        proto: Proto,
        from: std::net::IpAddr,
    ) -> Result<Self, u16> {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(from, 0)).expect("bind");
        Self::handshake(addr, proto, sock).await
    }

    async fn handshake(
        addr: SocketAddr,
        proto: Proto,
        sock: tokio::net::TcpSocket,
    ) -> Result<Self, u16> {
        let stream = sock.connect(addr).await.expect("connect");
        let mut req = format!("ws://{addr}/graphql/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(proto.name()),
        );
        let (ws, resp) = match tokio_tungstenite::client_async(req, stream).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16());
            }
            Err(e) => panic!("websocket handshake: {e}"),
        };
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(proto.name()),
            "server must echo the subprotocol"
        );
        Ok(WsClient {
            ws,
            proto,
            pings: 0,
            backlog: VecDeque::new(),
        })
    }

    /// Opens and authenticates with `Authorization: Bearer <token>`; panics unless acked.
    pub async fn connect(addr: SocketAddr, proto: Proto, token: &str) -> Self {
        let mut c = Self::open(addr, proto, None).await;
        c.authenticate(token).await;
        c
    }

    /// `connection_init` with `Authorization: Bearer <token>`; panics unless acked.
    pub async fn authenticate(&mut self, token: &str) {
        self.init(json!({"Authorization": format!("Bearer {token}")}))
            .await;
        match self.recv(Duration::from_secs(10)).await {
            Some(Incoming::Ack) => {}
            other => panic!("expected connection_ack, got {other:?}"),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn init(&mut self, payload: Value) {
        self.send_json(json!({"type": "connection_init", "payload": payload}))
            .await;
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = match self.proto {
            Proto::Transport => "subscribe",
            Proto::Legacy => "start",
        };
        self.send_json(json!({
            "type": kind,
            "id": id,
            "payload": {"query": query, "variables": variables},
        }))
        .await;
    }

    /// Returns once the server has started every subscription sent before: the server
    /// handles a connection's messages in order and polls its streams (which is when a
    /// subscription joins the live bus) between answering two pings.
    pub async fn sync(&mut self) {
        for _ in 0..2 {
            self.send_json(json!({"type": "ping"})).await;
            loop {
                match self.recv_wire(Duration::from_secs(10)).await {
                    Some(Incoming::Pong) => break,
                    Some(other) => self.backlog.push_back(other),
                    None => panic!("no pong from the server"),
                }
            }
        }
    }

    /// The next protocol message within `timeout`, or None. Pings are answered.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        loop {
            let m = match self.backlog.pop_front() {
                Some(m) => Some(m),
                None => self.recv_wire(timeout).await,
            };
            if !matches!(m, Some(Incoming::Pong)) {
                return m;
            }
        }
    }

    async fn recv_wire(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Incoming::Closed(None)),
                Ok(Some(Err(_))) => return Some(Incoming::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Ping(_) => {
                    self.pings += 1;
                    continue;
                }
                Message::Close(f) => {
                    return Some(Incoming::Closed(
                        f.map(|f| (u16::from(f.code), f.reason.to_string())),
                    ));
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("server sent JSON");
            let id = v["id"].as_str().unwrap_or("").to_string();
            match v["type"].as_str().unwrap_or("") {
                "connection_ack" => return Some(Incoming::Ack),
                "next" | "data" => {
                    return Some(Incoming::Next {
                        id,
                        payload: v["payload"].clone(),
                    });
                }
                "error" => {
                    return Some(Incoming::Error {
                        id,
                        payload: v["payload"].clone(),
                    });
                }
                "complete" => return Some(Incoming::Complete { id }),
                "connection_error" => {
                    return Some(Incoming::ConnectionError(v["payload"].clone()));
                }
                "ping" => {
                    self.send_json(json!({"type": "pong"})).await;
                }
                "pong" => return Some(Incoming::Pong),
                // Legacy keep-alives and pongs.
                _ => {}
            }
        }
    }

    /// The `data` of the next `n` items of subscription `id`, panicking on an error, an
    /// early end, or when `timeout` passes first.
    pub async fn take(&mut self, id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(Incoming::Next { id: got, payload }) if got == id => {
                    assert!(
                        payload.get("errors").is_none(),
                        "subscription {id} failed after {} items: {payload:#}",
                        out.len()
                    );
                    out.push(payload["data"].clone());
                }
                Some(Incoming::Next { .. }) => {}
                None => panic!(
                    "subscription {id}: got {} of {n} items before the timeout",
                    out.len()
                ),
                Some(other) => panic!(
                    "subscription {id}: {other:?} after {} of {n} items",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts that nothing arrives for `window`.
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Some(m) = self.recv(window).await {
            panic!("expected no message, got {m:?}");
        }
    }
}
