//! The HTTP face: axum router, GraphQL over HTTP and WebSocket, GraphiQL, health and metrics,
//! and the start/stop sequence shared by the binary and the tests.

use std::future::Future;
use std::sync::Arc;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{JwtKeys, KeySource};
use crate::config::Config;
use crate::dispatch::sender::HttpSender;
use crate::dispatch::writer::Writer;
use crate::graphql::{AppSchema, Caller, build_schema};
use crate::live::LiveBus;
use crate::service::events::Publisher;
use crate::state::AppState;
use crate::{db, dispatch};

/// The router's state, cloned into every request: one reference count, not the dozen of
/// [`AppState`]'s fields, whose clones and drops on every request show in a profile of the
/// `single` benchmark.
#[derive(Clone)]
struct Http(Arc<HttpParts>);

struct HttpParts {
    app: AppState,
    schema: AppSchema,
    docs: crate::graphql::DocCache,
}

impl std::ops::Deref for Http {
    type Target = HttpParts;

    fn deref(&self) -> &HttpParts {
        &self.0
    }
}

/// Installs the process-wide TLS crypto provider (reqwest is built without one). Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Everything `run` prepared, for the caller to announce (the binary prints it).
pub struct Started {
    pub key_source: KeySource,
    pub keys: Arc<JwtKeys>,
}

/// Connects, migrates, loads keys. Separate from [`serve`] so the binary can print a token
/// before serving.
pub async fn prepare(config: Config) -> anyhow::Result<(AppState, Started)> {
    install_crypto();
    crate::metrics::init();
    let db = db::connect(&config).await?;
    db::migrate(&db).await?;
    let (keys, key_source) = JwtKeys::from_config(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
        &config.data_dir,
    )
    .map_err(anyhow::Error::msg)?;
    let keys = Arc::new(keys);
    let cipher = Arc::new(
        crate::crypto::from_config(
            config.encryption_key.as_deref(),
            &config.encryption_keys_previous,
            &config.data_dir,
        )
        .map_err(anyhow::Error::msg)?,
    );
    // Refuse before touching a secret when the database has one this instance cannot open.
    crate::crypto::check_keys(&db.write, &cipher, &config.data_dir, false)
        .await
        .map_err(anyhow::Error::msg)?;
    let resealed = crate::service::destinations::reseal_all(&db.write, &cipher)
        .await
        .map_err(|e| anyhow::anyhow!("re-sealing secrets: {}", e.detail()))?;
    // Checked again under a lock as the key is registered: instances starting together.
    crate::crypto::check_keys(&db.write, &cipher, &config.data_dir, true)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::crypto::retire_old_keys(&db.write, &cipher)
        .await
        .map_err(anyhow::Error::msg)?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            key = cipher.key_id(),
            "secrets re-sealed under the current key"
        );
    }
    let live = LiveBus::new(4096);
    let delivery_rt = Arc::new(crate::dispatch::threads::DeliveryRuntime::new()?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let instance_id: Arc<str> = uuid::Uuid::now_v7().to_string().into();
    let sender = HttpSender::new(config.allow_private_targets, config.egress_proxy.as_ref())?;
    if let Some(p) = &config.egress_proxy {
        tracing::info!(proxy = %p.origin(), "deliveries go through the egress proxy");
    }
    let hub = Arc::new(crate::dispatch::hub::Hub::new(
        config.dispatch.max_concurrency * 128,
        crate::dispatch::hub::WINDOW_BYTES,
        config.dispatch.lease,
        instance_id.clone(),
    ));
    let state = AppState {
        cipher,
        publish_limiter: Arc::new(crate::ratelimit::TenantLimiter::new(
            config.limits.publish_rate_per_tenant,
        )),
        ws_slots: Arc::new(crate::ws::Slots::new(&config.limits)),
        publisher: Publisher::start(db.clone(), wake.clone(), hub.clone()),
        hub: hub.clone(),
        writer: Writer::start(
            delivery_rt.handle(),
            db.write.clone(),
            live.clone(),
            instance_id.clone(),
            hub.clone(),
        ),
        delivery_rt,
        sender,
        db,
        config: Arc::new(config),
        keys: keys.clone(),
        live,
        wake,
        shutdown: CancellationToken::new(),
        instance_id,
    };
    Ok((state, Started { key_source, keys }))
}

/// Serves on `listener` until `shutdown` resolves, then drains: stops accepting, finishes
/// in-flight requests and deliveries, releases leases.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let schema = build_schema(state.clone());
    crate::live::pg::spawn_bridge(
        state.db.read.clone(),
        state.instance_id.clone(),
        state.live.clone(),
        state.wake.clone(),
        state.shutdown.clone(),
    );
    let dispatcher = dispatch::spawn(state.clone());
    crate::retention::spawn(state.clone());
    crate::db::spawn_sqlite_checkpointer(&state.db, state.shutdown.clone());
    let token = state.shutdown.clone();
    let app = router(Http(Arc::new(HttpParts {
        app: state.clone(),
        schema,
        docs: Default::default(),
    })));
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    // Without TCP_NODELAY a live stream's small frames wait for the client's delayed ACK
    // (up to 40 ms) whenever one is still unacknowledged.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    });
    // The peer address bounds unauthenticated WebSockets per client (see `crate::ws::Slots`).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await?;
    dispatcher.stopped().await;
    state.db.close(std::time::Duration::from_secs(2)).await;
    Ok(())
}

/// [`prepare`] then [`serve`]: what tests call with a listener bound to port 0.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (state, _) = prepare(config).await?;
    serve(state, listener, shutdown).await
}

fn router(http: Http) -> Router {
    let max_body = http.app.config.limits.max_body_bytes;
    Router::new()
        .route("/graphql", get(crate::ui::graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(crate::ui::router())
        .layer(DefaultBodyLimit::max(max_body))
        // The GraphQL extractor streams the body itself, past DefaultBodyLimit: this layer
        // answers 413 to any request larger than the limit.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::map_response(close_when_too_large))
        .with_state(http)
}

/// A 413 is answered before the body is read, so the connection cannot carry another request:
/// `Connection: close` says so. Without it a pooled client may send its next request on the
/// connection the server is closing and see it cut off (`IncompleteMessage`).
async fn close_when_too_large(mut res: Response) -> Response {
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE {
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    res
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn graphql(State(http): State<Http>, headers: HeaderMap, req: GraphQLRequest) -> Response {
    let caller = Caller(
        http.app
            .keys
            .verify_header(authorization(&headers))
            .map_err(|e| e.public_message()),
    );
    let started = std::time::Instant::now();
    let mut req = req.into_inner().data(caller);
    http.docs.prepare(&mut req);
    let resp = http.schema.execute(req).await;
    metrics::histogram!("hookline_graphql_request_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    for e in &resp.errors {
        let code = e
            .extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_else(|| "GRAPHQL_VALIDATION".into());
        metrics::counter!("hookline_graphql_errors_total", "code" => code).increment(1);
    }
    GraphQLResponse::from(resp).into_response()
}

/// `graphql-transport-ws` and legacy `graphql-ws`; the JWT comes in `connection_init`. The
/// connection itself is [`crate::ws::Connection`].
async fn graphql_ws(
    State(http): State<Http>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols(ALL_WEBSOCKET_PROTOCOLS);
    let Some(proto) = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(crate::ws::Protocol::from_subprotocol)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let pre_auth = match http.app.ws_slots.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    let limits = &http.app.config.limits;
    let conn = crate::ws::Connection {
        schema: http.schema.clone(),
        keys: http.app.keys.clone(),
        proto,
        limits: limits.ws.clone(),
        subscriptions_per_connection: limits.max_subscriptions_per_connection,
        shutdown: http.app.shutdown.clone(),
    };
    // Both bounds: a frame's header announces its length, so an oversized message is refused
    // before its bytes are buffered.
    ws.max_message_size(limits.ws.max_message_bytes)
        .max_frame_size(limits.ws.max_message_bytes)
        .on_upgrade(move |socket| conn.serve(socket, pre_auth))
        .into_response()
}

async fn metrics_text(State(http): State<Http>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&http.app).await,
    )
        .into_response()
}

/// Ready when the database is reachable and migrated; the body lists every check (queue
/// lag, abandoned leases...) for operators.
async fn readyz(State(http): State<Http>) -> Response {
    let checks = crate::doctor::run(&http.app.db).await;
    let ok = !checks.iter().any(|c| c.level == crate::doctor::Level::Fail);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ok, "checks": checks })),
    )
        .into_response()
}
