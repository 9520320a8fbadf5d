//! Every setting in one place: defaults, an optional TOML file, `HOOKLINE_*` environment
//! variables and command-line flags (later ones win). Nothing else reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Flags and environment variables shared by every subcommand that needs configuration.
/// Each is optional so that the TOML file and the defaults can fill the gaps.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Optional TOML file with the same keys as the flags (snake_case).
    #[arg(long, env = "HOOKLINE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "HOOKLINE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Database URL: `sqlite://path?mode=rwc` or `postgres://...`. Default: SQLite in the data dir.
    #[arg(long, env = "HOOKLINE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Directory for the SQLite database and the generated JWT key.
    #[arg(long, env = "HOOKLINE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// HS256 secret for JWTs. Without it (and without a public key) a key is generated and kept in the data dir.
    #[arg(
        long,
        env = "HOOKLINE_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 tokens (verification only).
    #[arg(long, env = "HOOKLINE_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,
    /// Allow deliveries to loopback, private and link-local addresses.
    #[arg(long, env = "HOOKLINE_ALLOW_PRIVATE_TARGETS", global = true)]
    pub allow_private_targets: Option<bool>,
    /// Accept jq programs (subscription `filter`, destination `transform`). A jq run cannot
    /// be interrupted, so enable it only where every `write` token is trusted.
    #[arg(long, env = "HOOKLINE_JQ_PROGRAMS", global = true)]
    pub jq_programs: Option<bool>,
    /// Send deliveries through this HTTP proxy (`http://host:port`, optionally with
    /// `user:password@`). The environment's `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are ignored.
    #[arg(
        long,
        env = "HOOKLINE_EGRESS_PROXY",
        global = true,
        hide_env_values = true
    )]
    pub egress_proxy: Option<String>,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "HOOKLINE_LOG", global = true)]
    pub log: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// SQLite `synchronous` pragma: `NORMAL` (default, WAL) or `FULL`.
    #[arg(long, env = "HOOKLINE_SQLITE_SYNCHRONOUS", global = true)]
    pub sqlite_synchronous: Option<String>,
    /// Maximum event payload size in bytes.
    #[arg(long, env = "HOOKLINE_MAX_PAYLOAD_BYTES", global = true)]
    pub max_payload_bytes: Option<usize>,
    /// Maximum HTTP request body size in bytes.
    #[arg(long, env = "HOOKLINE_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,
    /// Concurrent outgoing requests across all destinations.
    #[arg(long, env = "HOOKLINE_MAX_CONCURRENCY", global = true)]
    pub max_concurrency: Option<usize>,
    /// PostgreSQL connections this process may open (default 2 × cores + 2).
    #[arg(long, env = "HOOKLINE_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<u32>,
    /// Run the delivery dispatcher in this process (default true).
    #[arg(long, env = "HOOKLINE_DISPATCHER", global = true)]
    pub dispatcher: Option<bool>,
    /// Seconds a claimed delivery stays leased to this instance (renewed while it works); a
    /// crashed instance's deliveries come back after this.
    #[arg(long, env = "HOOKLINE_LEASE_SECS", global = true)]
    pub lease_secs: Option<u64>,
    /// Publishes per second per tenant (0 = unlimited).
    #[arg(long, env = "HOOKLINE_PUBLISH_RATE_PER_TENANT", global = true)]
    pub publish_rate_per_tenant: Option<f64>,
    /// Live destinations per tenant.
    #[arg(long, env = "HOOKLINE_MAX_DESTINATIONS_PER_TENANT", global = true)]
    pub max_destinations_per_tenant: Option<u64>,
    /// Concurrent WebSocket connections per process.
    #[arg(long, env = "HOOKLINE_MAX_WS_CONNECTIONS", global = true)]
    pub max_ws_connections: Option<usize>,
    /// Milliseconds a WebSocket may take to send `connection_init` before it is closed (4408).
    #[arg(long, env = "HOOKLINE_WS_INIT_TIMEOUT_MS", global = true)]
    pub ws_init_timeout_ms: Option<u64>,
    /// WebSockets per process that have not yet completed `connection_init`.
    #[arg(long, env = "HOOKLINE_WS_MAX_PRE_AUTH", global = true)]
    pub ws_max_pre_auth: Option<usize>,
    /// WebSockets per client address that have not yet completed `connection_init`.
    #[arg(long, env = "HOOKLINE_WS_MAX_PRE_AUTH_PER_ADDRESS", global = true)]
    pub ws_max_pre_auth_per_address: Option<usize>,
    /// Largest WebSocket message (and frame) in bytes; a larger one closes the socket (1009).
    #[arg(long, env = "HOOKLINE_WS_MAX_MESSAGE_BYTES", global = true)]
    pub ws_max_message_bytes: Option<usize>,
    /// Seconds between the server's WebSocket pings; a peer silent for two intervals is
    /// dropped (0 = no pings).
    #[arg(long, env = "HOOKLINE_WS_PING_INTERVAL_SECS", global = true)]
    pub ws_ping_interval_secs: Option<u64>,
    /// 32-byte key (64 hex digits or base64) sealing secrets at rest. Default: generated into the data dir.
    #[arg(
        long,
        env = "HOOKLINE_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true
    )]
    pub encryption_key: Option<String>,
    /// Older keys, comma separated, still accepted while rows are re-sealed under the new one.
    #[arg(
        long,
        env = "HOOKLINE_ENCRYPTION_KEYS_PREVIOUS",
        global = true,
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub encryption_keys_previous: Option<Vec<String>>,
    /// Days to keep finished deliveries, attempts and events (0 keeps everything).
    #[arg(long, env = "HOOKLINE_RETENTION_DAYS", global = true)]
    pub retention_days: Option<u64>,
    /// Days to keep event payloads (at most the retention).
    #[arg(long, env = "HOOKLINE_PAYLOAD_RETENTION_DAYS", global = true)]
    pub payload_retention_days: Option<u64>,
}

/// The TOML file: same keys as [`ConfigArgs`].
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    allow_private_targets: Option<bool>,
    jq_programs: Option<bool>,
    egress_proxy: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    sqlite_synchronous: Option<String>,
    max_payload_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    max_concurrency: Option<usize>,
    db_max_connections: Option<u32>,
    dispatcher: Option<bool>,
    lease_secs: Option<u64>,
    publish_rate_per_tenant: Option<f64>,
    max_destinations_per_tenant: Option<u64>,
    max_ws_connections: Option<usize>,
    ws_init_timeout_ms: Option<u64>,
    ws_max_pre_auth: Option<usize>,
    ws_max_pre_auth_per_address: Option<usize>,
    ws_max_message_bytes: Option<usize>,
    ws_ping_interval_secs: Option<u64>,
    retention_days: Option<u64>,
    payload_retention_days: Option<u64>,
    encryption_key: Option<String>,
    encryption_keys_previous: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_body_bytes: usize,
    pub max_page_size: u64,
    pub max_query_depth: usize,
    pub max_query_complexity: usize,
    /// Publishes per second per tenant (token bucket); 0 = unlimited.
    pub publish_rate_per_tenant: f64,
    pub max_destinations_per_tenant: u64,
    pub max_ws_connections: usize,
    pub max_subscriptions_per_connection: usize,
    pub ws: WsLimits,
}

/// The WebSocket endpoint's bounds (see [`crate::ws`]).
#[derive(Clone, Debug)]
pub struct WsLimits {
    /// How long a socket may stay without `connection_init`.
    pub init_timeout: Duration,
    /// Sockets not yet authenticated, per process and per client address: kept apart from
    /// authenticated ones so that sockets that never authenticate cannot lock everyone out.
    pub max_pre_auth: usize,
    pub max_pre_auth_per_address: usize,
    pub max_message_bytes: usize,
    /// None: no server pings.
    pub ping_interval: Option<Duration>,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(5),
            max_pre_auth: 100,
            max_pre_auth_per_address: 10,
            max_message_bytes: 1024 * 1024,
            ping_interval: Some(Duration::from_secs(15)),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_body_bytes: 1024 * 1024,
            max_page_size: 100,
            max_query_depth: 12,
            max_query_complexity: 20_000,
            publish_rate_per_tenant: 20_000.0,
            max_destinations_per_tenant: 10_000,
            max_ws_connections: 1_000,
            max_subscriptions_per_connection: 100,
            ws: WsLimits::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub enabled: bool,
    pub max_concurrency: usize,
    /// How many due deliveries one claim statement takes.
    pub claim_batch: u64,
    /// How long a claim is valid; an instance that dies loses its claims after this.
    pub lease: Duration,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrency: 512,
            claim_batch: 500,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(1000),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Finished deliveries, attempts and events older than this are deleted; None keeps all.
    pub keep: Option<Duration>,
    /// Payloads are blanked after this (at most `keep`).
    pub keep_payloads: Option<Duration>,
    pub every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep: Some(Duration::from_secs(30 * 86400)),
            keep_payloads: None,
            every: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub allow_private_targets: bool,
    /// Whether subscriptions and destinations may be given jq programs. Off by default: jaq
    /// has no way to stop a run, so a program that computes forever would hold the publisher
    /// (filters) or a dispatcher task (transforms).
    pub jq_programs: bool,
    /// The proxy every delivery goes through; None sends directly.
    pub egress_proxy: Option<EgressProxy>,
    pub log: String,
    pub log_format: LogFormat,
    /// `NORMAL` or `FULL`.
    pub sqlite_synchronous: String,
    /// The PostgreSQL pool's size limit (see [`default_db_max_connections`]).
    pub db_max_connections: u32,
    pub limits: Limits,
    pub dispatch: DispatchConfig,
    pub retention: RetentionConfig,
    pub encryption_key: Option<String>,
    pub encryption_keys_previous: Vec<String>,
}

/// Two connections per core, plus two: one the live bridge holds for `LISTEN`, one spare.
///
/// The pool opens a connection whenever a statement finds none idle, and then hands its
/// idle connections out in turn, so a pool that a burst has grown keeps every connection in
/// use afterwards and never lets one reach its idle timeout. A steady load spread over more
/// backends than there are cores runs each statement in a backend whose caches have gone
/// cold. Measured: with the `backlog` benchmark's fill growing the pool to 11, PostgreSQL
/// spends a median 11 % more CPU on the same 500 events/s than before the fill; capped at 6
/// (this default on 2 cores), 3 %, with `single` and `fanout` unchanged (BENCHMARKS.md, "The
/// PostgreSQL pool is sized by the cores").
pub fn default_db_max_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(2 * cores + 2).unwrap_or(u32::MAX).min(1000)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

impl Config {
    /// Defaults for a data directory; used by tests and as the base of [`Config::load`].
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: sqlite_url(&data_dir),
            data_dir,
            jwt_secret: None,
            jwt_public_key: None,
            allow_private_targets: false,
            jq_programs: false,
            egress_proxy: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            sqlite_synchronous: "NORMAL".into(),
            db_max_connections: default_db_max_connections(),
            limits: Limits::default(),
            dispatch: DispatchConfig::default(),
            retention: RetentionConfig::default(),
            encryption_key: None,
            encryption_keys_previous: Vec::new(),
        }
    }

    /// Defaults, then the TOML file, then environment and flags (clap has merged those two).
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        let data_dir = pick(args.data_dir.clone(), file.data_dir).unwrap_or_else(|| "data".into());
        let mut cfg = Self::with_data_dir(data_dir);
        if let Some(listen) = pick(args.listen.clone(), file.listen) {
            cfg.listen = listen.parse().map_err(|e| ConfigError::Invalid {
                name: "HOOKLINE_LISTEN",
                message: format!("{listen:?} is not a socket address: {e}"),
            })?;
        }
        if let Some(url) = pick(args.database_url.clone(), file.database_url) {
            cfg.database_url = url;
        }
        cfg.jwt_secret = pick(args.jwt_secret.clone(), file.jwt_secret).filter(|s| !s.is_empty());
        cfg.jwt_public_key = pick(args.jwt_public_key.clone(), file.jwt_public_key);
        if let Some(v) = pick(args.allow_private_targets, file.allow_private_targets) {
            cfg.allow_private_targets = v;
        }
        if let Some(v) = pick(args.jq_programs, file.jq_programs) {
            cfg.jq_programs = v;
        }
        if let Some(v) = pick(args.egress_proxy.clone(), file.egress_proxy) {
            cfg.egress_proxy = (!v.is_empty())
                .then(|| EgressProxy::parse(&v))
                .transpose()?;
        }
        if let Some(v) = pick(args.log.clone(), file.log) {
            cfg.log = v;
        }
        if let Some(v) = pick(args.log_format.clone(), file.log_format) {
            cfg.log_format = match v.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "HOOKLINE_LOG_FORMAT",
                        message: format!("{v:?}: expected text or json"),
                    });
                }
            };
        }
        if let Some(v) = pick(args.sqlite_synchronous.clone(), file.sqlite_synchronous) {
            let v = v.to_ascii_uppercase();
            if v != "NORMAL" && v != "FULL" {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_SQLITE_SYNCHRONOUS",
                    message: format!("{v:?}: expected NORMAL or FULL"),
                });
            }
            cfg.sqlite_synchronous = v;
        }
        if let Some(v) = pick(args.max_payload_bytes, file.max_payload_bytes) {
            cfg.limits.max_payload_bytes = v;
        }
        if let Some(v) = pick(args.max_body_bytes, file.max_body_bytes) {
            cfg.limits.max_body_bytes = v;
        }
        if cfg.limits.max_body_bytes < cfg.limits.max_payload_bytes {
            return Err(ConfigError::Invalid {
                name: "HOOKLINE_MAX_BODY_BYTES",
                message: "must be at least HOOKLINE_MAX_PAYLOAD_BYTES".into(),
            });
        }
        if let Some(v) = pick(args.max_concurrency, file.max_concurrency) {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_MAX_CONCURRENCY",
                    message: "must be at least 1".into(),
                });
            }
            cfg.dispatch.max_concurrency = v;
        }
        if let Some(v) = pick(args.db_max_connections, file.db_max_connections) {
            if !(2..=1000).contains(&v) {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_DB_MAX_CONNECTIONS",
                    message: format!(
                        "{v}: must be between 2 and 1000 (the live bridge holds one connection)"
                    ),
                });
            }
            cfg.db_max_connections = v;
        }
        if let Some(v) = pick(args.dispatcher, file.dispatcher) {
            cfg.dispatch.enabled = v;
        }
        if let Some(v) = pick(args.publish_rate_per_tenant, file.publish_rate_per_tenant) {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_PUBLISH_RATE_PER_TENANT",
                    message: format!("{v}: expected 0 (unlimited) or a positive rate"),
                });
            }
            cfg.limits.publish_rate_per_tenant = v;
        }
        if let Some(v) = pick(
            args.max_destinations_per_tenant,
            file.max_destinations_per_tenant,
        ) {
            cfg.limits.max_destinations_per_tenant = v;
        }
        if let Some(v) = pick(args.max_ws_connections, file.max_ws_connections) {
            cfg.limits.max_ws_connections = v;
        }
        let ws = &mut cfg.limits.ws;
        if let Some(v) = pick(args.ws_init_timeout_ms, file.ws_init_timeout_ms) {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_WS_INIT_TIMEOUT_MS",
                    message: "must be at least 1".into(),
                });
            }
            ws.init_timeout = Duration::from_millis(v);
        }
        if let Some(v) = pick(args.ws_max_pre_auth, file.ws_max_pre_auth) {
            ws.max_pre_auth = v;
        }
        if let Some(v) = pick(
            args.ws_max_pre_auth_per_address,
            file.ws_max_pre_auth_per_address,
        ) {
            ws.max_pre_auth_per_address = v;
        }
        if let Some(v) = pick(args.ws_max_message_bytes, file.ws_max_message_bytes) {
            if v < 1024 {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_WS_MAX_MESSAGE_BYTES",
                    message: format!("{v}: must be at least 1024"),
                });
            }
            ws.max_message_bytes = v;
        }
        if let Some(v) = pick(args.ws_ping_interval_secs, file.ws_ping_interval_secs) {
            ws.ping_interval = (v > 0).then(|| Duration::from_secs(v));
        }
        if let Some(v) = pick(args.lease_secs, file.lease_secs) {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name: "HOOKLINE_LEASE_SECS",
                    message: "must be at least 1".into(),
                });
            }
            cfg.dispatch.lease = Duration::from_secs(v);
        }
        cfg.encryption_key =
            pick(args.encryption_key.clone(), file.encryption_key).filter(|k| !k.is_empty());
        cfg.encryption_keys_previous = pick(
            args.encryption_keys_previous.clone(),
            file.encryption_keys_previous,
        )
        .unwrap_or_default();
        if let Some(d) = pick(args.retention_days, file.retention_days) {
            cfg.retention.keep = (d > 0).then(|| Duration::from_secs(d * 86400));
        }
        if let Some(d) = pick(args.payload_retention_days, file.payload_retention_days) {
            cfg.retention.keep_payloads = Some(Duration::from_secs(d.max(1) * 86400));
        }
        Ok(cfg)
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }
}

/// An egress proxy URL. `Debug` hides it: it may carry the proxy's password.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy(String);

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EgressProxy(***)")
    }
}

impl EgressProxy {
    /// The error never repeats the value, which may hold a password.
    pub fn parse(v: &str) -> Result<Self, ConfigError> {
        let invalid = |message: &str| ConfigError::Invalid {
            name: "HOOKLINE_EGRESS_PROXY",
            message: message.into(),
        };
        let u = url::Url::parse(v).map_err(|_| invalid("is not a URL"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid("must be an http:// or https:// URL"));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(invalid("must name the proxy's host"));
        }
        Ok(Self(v.to_string()))
    }

    pub fn url(&self) -> &str {
        &self.0
    }

    /// Scheme, host and port only, for logs.
    pub fn origin(&self) -> String {
        url::Url::parse(&self.0).map_or_else(|_| "?".into(), |u| u.origin().ascii_serialization())
    }
}

fn pick<T>(flag_or_env: Option<T>, file: Option<T>) -> Option<T> {
    flag_or_env.or(file)
}

fn sqlite_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("hookline.db").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_put_sqlite_in_data_dir() {
        let cfg = Config::load(&ConfigArgs::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.database_url, "sqlite://data/hookline.db?mode=rwc");
        assert!(!cfg.allow_private_targets);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nallow_private_targets = true\nlog = \"debug\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path),
            log: Some("warn".into()),
            ..Default::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.listen.port(), 9999);
        assert!(cfg.allow_private_targets);
        assert_eq!(cfg.log, "warn");
    }

    #[test]
    fn the_database_pool_limit_defaults_to_the_cores_and_is_checked() {
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let cfg = Config::load(&ConfigArgs::default()).unwrap();
        assert_eq!(cfg.db_max_connections, 2 * cores + 2);
        let args = ConfigArgs {
            db_max_connections: Some(3),
            ..Default::default()
        };
        assert_eq!(Config::load(&args).unwrap().db_max_connections, 3);
        for bad in [0, 1, 1001] {
            let args = ConfigArgs {
                db_max_connections: Some(bad),
                ..Default::default()
            };
            let err = Config::load(&args).unwrap_err().to_string();
            assert!(err.contains("HOOKLINE_DB_MAX_CONNECTIONS"), "{err}");
        }
    }

    #[test]
    fn egress_proxy_is_checked_and_never_echoed() {
        let args = ConfigArgs {
            egress_proxy: Some("http://user:pw-secret@127.0.0.1:3128".into()),
            ..Default::default()
        };
        let cfg = Config::load(&args).unwrap();
        let proxy = cfg.egress_proxy.unwrap();
        assert_eq!(proxy.url(), "http://user:pw-secret@127.0.0.1:3128");
        assert!(!format!("{proxy:?}").contains("pw-secret"));
        assert_eq!(proxy.origin(), "http://127.0.0.1:3128");
        for bad in ["socks5://u:pw-secret@h:1080", "pw-secret", "http://"] {
            let args = ConfigArgs {
                egress_proxy: Some(bad.into()),
                ..Default::default()
            };
            let err = Config::load(&args).unwrap_err().to_string();
            assert!(err.contains("HOOKLINE_EGRESS_PROXY"), "{err}");
            assert!(!err.contains("pw-secret"), "{err}");
        }
        let args = ConfigArgs {
            egress_proxy: Some(String::new()),
            ..Default::default()
        };
        assert!(Config::load(&args).unwrap().egress_proxy.is_none());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let args = ConfigArgs {
            listen: Some("nope".into()),
            ..Default::default()
        };
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(err.contains("HOOKLINE_LISTEN"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let args = ConfigArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(
            Config::load(&args)
                .unwrap_err()
                .to_string()
                .contains("lisen")
        );
    }
}
