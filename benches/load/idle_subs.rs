//! `idle-subs`: what another tenant's idle live subscriptions cost while one tenant publishes
//! at full speed. Tenant `idle` holds `SUBS` `deliveryAttempts` subscriptions over `SOCKETS`
//! connections that never receive anything; tenant `bench` publishes closed-loop to one
//! destination. Turns without and with the subscriptions alternate on one server (without,
//! with, with, without, ...) and each reports the server's CPU per 1 000 events; the last
//! row is the with/without ratio of the medians.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

const SUBS: usize = 10_000;
/// 100 per connection: the default `max_subscriptions_per_connection`.
const SOCKETS: usize = 100;
const IDLE: &str = "subscription { deliveryAttempts { id eventId outcome } }";

/// The open subscriber connections; each task reads (and so answers the server's pings)
/// until aborted.
struct Idle(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Idle {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn open_idle(server: &Server) -> Res<Idle> {
    let token = server.mint("idle")?;
    let url = format!("{}/graphql/ws", server.base.replacen("http", "ws", 1));
    let mut tasks = Vec::with_capacity(SOCKETS);
    for s in 0..SOCKETS {
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            axum::http::HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| format!("websocket {s}: {e}"))?;
        let send = |v: Value| Message::Text(v.to_string().into());
        ws.send(send(json!({"type": "connection_init",
            "payload": {"Authorization": format!("Bearer {token}")}})))
            .await
            .map_err(|e| e.to_string())?;
        for i in 0..SUBS / SOCKETS {
            ws.send(send(json!({"type": "subscribe", "id": i.to_string(),
                "payload": {"query": IDLE}})))
                .await
                .map_err(|e| e.to_string())?;
        }
        // The server answers a ping after it has started every subscription sent before it.
        ws.send(send(json!({"type": "ping"})))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"pong\"") => break,
                Ok(Some(Ok(Message::Text(t)))) if t.contains("connection_ack") => {}
                Ok(Some(Ok(Message::Ping(_)))) => {}
                other => return Err(format!("subscriber socket {s}: {other:?}")),
            }
        }
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    eprintln!("idle subscriber got a message: {t}");
                }
            }
        }));
    }
    Ok(Idle(tasks))
}

pub async fn run(
    server: &Server,
    api: &Api,
    recv: &Receiver,
    args: &Args,
    run: &mut Run,
) -> Res<()> {
    let c = args.concurrency;
    let n = n_or(args, 20_000);
    let turns = args.runs.max(2) * 2;
    api.create_many(1, c, |i| recv.url(i), &["*"]).await?;
    let mut per_k: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut delivered = 0;
    for turn in 0..turns {
        // without, with, with, without, ...
        let with = matches!(turn % 4, 1 | 2);
        let idle = if with {
            Some(open_idle(server).await?)
        } else {
            None
        };
        let clocks = Clocks::start(server);
        publish_closed(api, n, c, "order.created", args.timeout).await?;
        delivered += n;
        recv.wait_for(delivered, args.timeout, STALL).await?;
        let spent = clocks.spent(server);
        drop(idle);
        let k = spent.server / n as f64 * 1000.0;
        let name = if with { "with" } else { "without" };
        run.put(
            &format!("turn {} ({name}): server CPU (s)", turn + 1),
            spent.server,
        );
        run.put(
            &format!("turn {} ({name}): events/s", turn + 1),
            n as f64 / spent.wall,
        );
        per_k[usize::from(with)].push(k);
        // Let the closed connections go before the next turn.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let median = |v: &[f64]| {
        let s = sorted(v.to_vec());
        s[s.len() / 2]
    };
    let (without, with) = (median(&per_k[0]), median(&per_k[1]));
    run.put(
        "server CPU per 1 000 events, without (ms)",
        without * 1000.0,
    );
    run.put(
        &format!("server CPU per 1 000 events, with {SUBS} idle subs (ms)"),
        with * 1000.0,
    );
    run.put("ratio with / without", with / without);
    Ok(())
}
