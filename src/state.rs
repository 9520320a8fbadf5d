//! The one state value handed to handlers, resolvers and background tasks. Nothing global.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::JwtKeys;
use crate::config::Config;
use crate::db::Db;
use crate::dispatch::sender::HttpSender;
use crate::dispatch::writer::Writer;
use crate::live::LiveBus;
use crate::ratelimit::TenantLimiter;
use crate::service::events::Publisher;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub keys: Arc<JwtKeys>,
    pub live: LiveBus,
    /// Wakes the dispatcher at once when work arrives (publish, retry, enable).
    pub wake: Arc<Notify>,
    /// Cancelled when the process begins shutting down.
    pub shutdown: CancellationToken,
    /// Identifies this process in delivery leases.
    pub instance_id: Arc<str>,
    /// Group-commit writer for published events.
    pub publisher: Publisher,
    /// What the publisher and the dispatcher share (runtimes, hand-over of new deliveries).
    pub hub: Arc<crate::dispatch::hub::Hub>,
    /// Batched writer for attempts, delivery states and destination health.
    pub writer: Writer,
    /// The runtime the dispatcher and the completion writer run on (see
    /// [`crate::dispatch::threads`]).
    pub delivery_rt: Arc<crate::dispatch::threads::DeliveryRuntime>,
    /// The guarded HTTP clients deliveries go out through.
    pub sender: HttpSender,
    /// Publish rate per tenant.
    pub publish_limiter: Arc<TenantLimiter>,
    /// Seals and opens secrets at rest.
    pub cipher: Arc<crate::crypto::Cipher>,
    /// WebSocket connection slots of this process, before and after authentication.
    pub ws_slots: Arc<crate::ws::Slots>,
}
