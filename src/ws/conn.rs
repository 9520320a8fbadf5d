//! One WebSocket connection: `connection_init` within the deadline, then operations until
//! the client leaves, the token expires or the server stops.
//!
//! Everything runs in the connection's task: messages are handled in order, and the
//! operations' streams are polled between them. While a send waits for a slow client nothing
//! else of this connection runs, so its subscriptions fall behind on the live bus (and are
//! told so) instead of buffering without bound here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Data, Executor, Response};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures_util::{StreamExt, future};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::PreAuth;
use super::protocol::{self, Incoming, Protocol, close};
use crate::auth::{JwtKeys, Principal};
use crate::config::WsLimits;
use crate::graphql::{AppSchema, Caller, SubscriptionBudget};

/// What a connection needs from the server.
pub struct Connection {
    pub schema: AppSchema,
    pub keys: Arc<JwtKeys>,
    pub proto: Protocol,
    pub limits: WsLimits,
    pub subscriptions_per_connection: usize,
    pub shutdown: CancellationToken,
}

/// An operation's results, tagged with its id and generation; `None` marks its end.
type Ops = SelectAll<BoxStream<'static, (String, u64, Option<Response>)>>;

struct Op {
    generation: u64,
    /// Whether a result went out already (a first result without data is an `error`).
    answered: bool,
    abort: AbortHandle,
}

/// How the loop ends.
enum End {
    /// Send this close frame.
    Close(u16, String),
    /// The peer is gone or silent: nothing to say.
    Drop,
}

/// The authenticated state of a connection.
struct Session {
    data: Arc<Data>,
    expires_at: i64,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    pub async fn serve(self, mut socket: WebSocket, pre_auth: PreAuth) {
        let end = Loop {
            conn: &self,
            pre_auth: Some(pre_auth),
            session: None,
            ops: SelectAll::new(),
            active: HashMap::new(),
            generation: 0,
        }
        .run(&mut socket)
        .await;
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: protocol::reason(&reason).into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
    }
}

struct Loop<'a> {
    conn: &'a Connection,
    pre_auth: Option<PreAuth>,
    session: Option<Session>,
    ops: Ops,
    active: HashMap<String, Op>,
    generation: u64,
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Expired,
    InitTimeout,
    PingDue,
    Socket(Option<Result<Message, axum::Error>>),
    Result(String, u64, Option<Box<Response>>),
}

impl Loop<'_> {
    async fn run(&mut self, socket: &mut WebSocket) -> End {
        let limits = &self.conn.limits;
        let init_deadline = sleep_until(Instant::now() + limits.init_timeout);
        tokio::pin!(init_deadline);
        // Armed at `connection_init` with the token's expiry.
        let mut expiry: std::pin::Pin<Box<Sleep>> = Box::pin(sleep_until(far_future()));
        let mut armed = false;
        let mut ping = limits.ping_interval.map(|every| {
            let mut i = tokio::time::interval_at(Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // Anything received since the last ping; a peer that says nothing for a whole
        // interval after a ping (not even the pong every WebSocket stack sends) is gone.
        let mut heard = true;
        loop {
            let wake = tokio::select! {
                biased;
                _ = self.conn.shutdown.cancelled() => Wake::Shutdown,
                _ = &mut expiry, if self.session.is_some() => Wake::Expired,
                _ = &mut init_deadline, if self.session.is_none() => Wake::InitTimeout,
                _ = async { match ping.as_mut() {
                    Some(i) => { i.tick().await; }
                    None => future::pending::<()>().await,
                } } => Wake::PingDue,
                m = socket.recv() => Wake::Socket(m),
                Some((id, generation, item)) = self.ops.next(), if !self.ops.is_empty() => {
                    Wake::Result(id, generation, item.map(Box::new))
                }
            };
            let step = match wake {
                Wake::Shutdown => Err(End::Close(close::GOING_AWAY, "server shutting down".into())),
                Wake::Expired => Err(forbidden("token expired")),
                Wake::InitTimeout => Err(End::Close(
                    close::INIT_TIMEOUT,
                    "Connection initialisation timeout".into(),
                )),
                Wake::PingDue => {
                    if !heard {
                        tracing::debug!("WebSocket peer did not answer a ping; dropping it");
                        return End::Drop;
                    }
                    heard = false;
                    send(socket, Message::Ping(Default::default())).await
                }
                Wake::Socket(m) => {
                    heard = true;
                    match m {
                        None => return End::Drop,
                        Some(Err(e)) => return read_error(e),
                        Some(Ok(Message::Text(t))) => self.message(socket, t.as_bytes()).await,
                        Some(Ok(Message::Binary(b))) => self.message(socket, &b).await,
                        Some(Ok(Message::Close(_))) => return End::Drop,
                        // Pings are answered by the WebSocket layer; pongs only count as heard.
                        Some(Ok(_)) => Ok(()),
                    }
                }
                Wake::Result(id, generation, item) => {
                    self.result(socket, id, generation, item.map(|r| *r)).await
                }
            };
            if let Err(end) = step {
                return end;
            }
            if !armed && let Some(s) = &self.session {
                expiry.as_mut().reset(deadline_of(s.expires_at));
                armed = true;
            }
        }
    }

    async fn message(&mut self, socket: &mut WebSocket, bytes: &[u8]) -> Result<(), End> {
        let proto = self.conn.proto;
        let msg = Incoming::parse(bytes, proto).map_err(|e| End::Close(close::BAD_MESSAGE, e))?;
        match msg {
            Incoming::Init(payload) => self.init(socket, payload).await,
            Incoming::Subscribe(id, req) => self.subscribe(socket, id, *req).await,
            Incoming::Complete(id) => {
                if let Some(op) = self.active.remove(&id) {
                    op.abort.abort();
                    // The legacy protocol confirms a `stop`; graphql-transport-ws sends nothing
                    // more for an operation the client completed.
                    if proto == Protocol::Legacy {
                        return send_text(socket, protocol::complete(&id)).await;
                    }
                }
                Ok(())
            }
            Incoming::Terminate => Err(End::Close(close::NORMAL, String::new())),
            Incoming::Ping(payload) => send_text(socket, protocol::pong(payload)).await,
            Incoming::Pong => Ok(()),
        }
    }

    async fn init(
        &mut self,
        socket: &mut WebSocket,
        payload: serde_json::Value,
    ) -> Result<(), End> {
        let Some(pre_auth) = self.pre_auth.take() else {
            return Err(End::Close(
                close::TOO_MANY_INITS,
                "Too many initialisation requests".into(),
            ));
        };
        let header = ["Authorization", "authorization"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
        let principal = match self.conn.keys.verify_header(header) {
            Ok(p) if p.expires_at > now_secs() => p,
            Ok(_) => return refuse(socket, self.conn.proto, "token expired").await,
            Err(e) => return refuse(socket, self.conn.proto, &e.public_message()).await,
        };
        let Some(slot) = pre_auth.authenticate() else {
            return Err(End::Close(
                close::TRY_AGAIN_LATER,
                "too many WebSocket connections (HOOKLINE_MAX_WS_CONNECTIONS)".into(),
            ));
        };
        self.session = Some(Session {
            expires_at: principal.expires_at,
            data: Arc::new(self.session_data(principal)),
            _slot: slot,
        });
        send_text(socket, protocol::ack()).await
    }

    fn session_data(&self, principal: Principal) -> Data {
        let mut data = Data::default();
        data.insert(Caller(Ok(principal)));
        data.insert(SubscriptionBudget::new(
            self.conn.subscriptions_per_connection,
        ));
        data
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        id: String,
        req: async_graphql::Request,
    ) -> Result<(), End> {
        let Some(session) = &self.session else {
            return Err(End::Close(close::UNAUTHORIZED, "Unauthorized".into()));
        };
        // The expiry timer closes the socket on time; this covers a message that arrived in
        // the same instant.
        if session.expires_at <= now_secs() {
            return Err(forbidden("token expired"));
        }
        if self.active.contains_key(&id) {
            return Err(End::Close(
                close::DUPLICATE_ID,
                format!("Subscriber for {id} already exists"),
            ));
        }
        self.generation += 1;
        let generation = self.generation;
        let (abort, registration) = AbortHandle::new_pair();
        let results = Executor::execute_stream(&self.conn.schema, req, Some(session.data.clone()))
            .map(Some)
            .chain(futures_util::stream::once(future::ready(None)));
        let tag = id.clone();
        let mut stream = Abortable::new(results, registration)
            .map(move |item| (tag.clone(), generation, item))
            .boxed();
        self.active.insert(
            id,
            Op {
                generation,
                answered: false,
                abort,
            },
        );
        // Started here, before the next message is read: a subscription has joined the live
        // bus by the time the client's following ping is answered.
        let first = futures_util::poll!(stream.next());
        self.ops.push(stream);
        match first {
            std::task::Poll::Ready(Some((id, generation, item))) => {
                self.result(socket, id, generation, item).await
            }
            _ => Ok(()),
        }
    }

    async fn result(
        &mut self,
        socket: &mut WebSocket,
        id: String,
        generation: u64,
        item: Option<Response>,
    ) -> Result<(), End> {
        let Some(op) = self
            .active
            .get_mut(&id)
            .filter(|o| o.generation == generation)
        else {
            return Ok(()); // completed by the client meanwhile
        };
        let Some(resp) = item else {
            self.active.remove(&id);
            return send_text(socket, protocol::complete(&id)).await;
        };
        // A first result with errors and no data is a request that never ran (a parse or
        // validation error, or a subscription refused before it started): graphql-transport-ws
        // answers that with `error`, and nothing follows.
        if self.conn.proto == Protocol::Transport
            && !op.answered
            && resp.data == async_graphql::Value::Null
            && !resp.errors.is_empty()
        {
            op.abort.abort();
            self.active.remove(&id);
            return send_text(socket, protocol::error(&id, &resp.errors)).await;
        }
        op.answered = true;
        send_text(socket, protocol::next(self.conn.proto, &id, &resp)).await
    }
}

/// 4403; the legacy protocol hears why in a `connection_error` first, as it always has.
async fn refuse(socket: &mut WebSocket, proto: Protocol, why: &str) -> Result<(), End> {
    if proto == Protocol::Legacy {
        send_text(socket, protocol::connection_error(why)).await?;
    }
    Err(forbidden(why))
}

fn forbidden(why: &str) -> End {
    End::Close(close::FORBIDDEN, format!("Forbidden: {why}"))
}

/// A read that failed: a message over the size limit is refused (1009) before it is read
/// whole; anything else means the peer is gone or broke the WebSocket protocol.
fn read_error(e: axum::Error) -> End {
    let source = std::error::Error::source(&e);
    if let Some(tungstenite::Error::Capacity(c)) =
        source.and_then(|s| s.downcast_ref::<tungstenite::Error>())
    {
        tracing::debug!(error = %c, "WebSocket message over the limit");
        return End::Close(close::TOO_BIG, "message too big".into());
    }
    tracing::debug!(error = %e, "WebSocket read failed");
    End::Drop
}

async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), End> {
    socket.send(msg).await.map_err(|_| End::Drop)
}

async fn send_text(socket: &mut WebSocket, text: String) -> Result<(), End> {
    send(socket, Message::Text(text.into())).await
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// When a token whose `exp` is `expires_at` (Unix seconds) runs out, on tokio's clock.
fn deadline_of(expires_at: i64) -> Instant {
    let left_ms = expires_at.saturating_mul(1000) - chrono::Utc::now().timestamp_millis();
    Instant::now() + Duration::from_millis(left_ms.clamp(0, 10 * 365 * 86_400_000) as u64)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(10 * 365 * 86_400)
}
