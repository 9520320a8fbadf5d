//! The test bench: real servers on 127.0.0.1 port 0 over real SQLite files or a fresh
//! PostgreSQL database per test, real HTTP receivers whose answers a test can change, and a
//! small GraphQL client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hookline::auth::{JwtKeys, Scopes};
use hookline::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-test-secret-test-secret";
pub const ENCRYPTION_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `body` once per backend as two tests: `$name::sqlite` and `$name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::harness::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(()) = $crate::harness::pg_available() {
                    ($body)($crate::harness::Backend::Postgres).await;
                }
            }
        }
    };
}

/// `Some` when PostgreSQL tests should run. Without `HOOKLINE_TEST_PG_URL` they are skipped
/// on a developer machine but fail under CI, where skipping would hide a broken setup.
pub fn pg_available() -> Option<()> {
    match std::env::var("HOOKLINE_TEST_PG_URL") {
        Ok(_) => Some(()),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but HOOKLINE_TEST_PG_URL is not: PostgreSQL tests must run in CI"
            );
            eprintln!("HOOKLINE_TEST_PG_URL not set; skipping the PostgreSQL variant");
            None
        }
    }
}

/// A database of the test's own: a SQLite file in a temp dir (removed with the dir), or a
/// fresh PostgreSQL database, dropped when the value that created it is dropped (a peer's
/// copy of the URL owns nothing). Left behind, they pile up in the developer's cluster, and
/// autovacuum visits every one of them.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    /// PostgreSQL: (admin URL, database name) of a database this value created.
    pub owned: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.owned.take() else {
            return;
        };
        // Drop cannot await: a thread with its own runtime does it; FORCE ends the
        // connections a stopping server may still hold.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                use sea_orm::ConnectionTrait;
                let Ok(conn) = sea_orm::Database::connect(&admin).await else {
                    return;
                };
                if let Err(e) = conn
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                {
                    eprintln!("could not drop test database {name}: {e}");
                }
                conn.close().await.ok();
            })
        });
        let _ = done.join();
    }
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut owned = None;
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
            Backend::Postgres => {
                let admin = std::env::var("HOOKLINE_TEST_PG_URL").expect("HOOKLINE_TEST_PG_URL");
                let name = format!("hl_{}", uuid::Uuid::new_v4().simple());
                let conn = sea_orm::Database::connect(&admin)
                    .await
                    .expect("PostgreSQL reachable at HOOKLINE_TEST_PG_URL");
                use sea_orm::ConnectionTrait;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                let url = replace_db_name(&admin, &name);
                owned = Some((admin, name));
                url
            }
        };
        TestDb { url, dir, owned }
    }
}

fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A config for tests: private targets allowed (receivers are on 127.0.0.1), fast polling.
pub fn test_config(db: &TestDb) -> Config {
    let mut cfg = Config::with_data_dir(db.dir.path());
    cfg.database_url = db.url.clone();
    cfg.jwt_secret = Some(SECRET.into());
    // Instances sharing a database must share the key that seals secrets at rest.
    cfg.encryption_key = Some(ENCRYPTION_KEY.into());
    cfg.allow_private_targets = true;
    cfg.dispatch.poll_interval = Duration::from_millis(200);
    cfg
}

pub struct Server {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new(backend).await;
        let mut cfg = test_config(&db);
        tweak(&mut cfg);
        Self::start_on(db, cfg).await
    }

    pub async fn start_on(db: TestDb, cfg: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(hookline::server::run(cfg, listener, async {
            let _ = rx.await;
        }));
        // The server installs the TLS provider as it starts; the client may be built first.
        hookline::server::install_crypto();
        let http = reqwest::Client::new();
        let s = Server {
            addr,
            http,
            db,
            stop: Some(stop),
            task: Some(task),
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server result");
        }
        // Move the database out (with its ownership) so a test can restart on it.
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                dir: tempfile::tempdir().expect("tempdir"),
                owned: None,
            },
        )
    }

    pub fn token(&self, tenant: &str, scopes: &str) -> String {
        token(tenant, scopes)
    }

    /// The raw GraphQL response.
    pub async fn gql(&self, token: Option<&str>, query: &str, vars: Value) -> Value {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": vars}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("graphql request");
        resp.json().await.expect("graphql json")
    }

    /// `data`, asserting there were no errors.
    pub async fn ok(&self, token: &str, query: &str, vars: Value) -> Value {
        let r = self.gql(Some(token), query, vars).await;
        assert!(r.get("errors").is_none(), "unexpected errors: {r:#}");
        r["data"].clone()
    }

    /// The first error's `extensions.code`, asserting there was one.
    pub async fn err_code(&self, token: Option<&str>, query: &str, vars: Value) -> (String, Value) {
        let r = self.gql(token, query, vars).await;
        let e = r["errors"][0].clone();
        assert!(!e.is_null(), "expected an error: {r:#}");
        (
            e["extensions"]["code"].as_str().unwrap_or("").to_string(),
            e,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn token(tenant: &str, scopes: &str) -> String {
    JwtKeys::hs256(SECRET.as_bytes())
        .mint(
            tenant,
            "tester",
            Scopes::parse(scopes),
            Duration::from_secs(3600),
        )
        .expect("mint")
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}

/// How the receiver answers; change it mid-test with [`Receiver::set`].
#[derive(Clone, Debug)]
pub struct Behavior {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            delay: Duration::ZERO,
            headers: vec![],
            body: "ok".into(),
        }
    }
}

#[derive(Default)]
struct RecvState {
    got: Mutex<Vec<Received>>,
    behavior: Mutex<Behavior>,
    notify: tokio::sync::Notify,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<RecvState>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(RecvState::default());
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set(&self, b: Behavior) {
        *self.state.behavior.lock().unwrap() = b;
    }

    pub fn status(&self, status: u16) {
        self.state.behavior.lock().unwrap().status = status;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.got.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            if self.count() >= n {
                return self.received();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "receiver got {} requests, expected {n}",
                self.count()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

async fn receive(State(st): State<Arc<RecvState>>, headers: HeaderMap, body: Bytes) -> Response {
    let b = st.behavior.lock().unwrap().clone();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    st.got.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    st.notify.notify_waiters();
    let mut resp = (
        StatusCode::from_u16(b.status).unwrap_or(StatusCode::OK),
        b.body,
    )
        .into_response();
    for (k, v) in b.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const CREATE_DEST: &str = "mutation($input: CreateDestinationInput!) {
  createDestination(input: $input) { id name url status enabled version signingSecret }
}";

/// Creates a destination with `input` merged over a name and URL; returns its id.
pub async fn create_destination(s: &Server, token: &str, mut input: Value) -> String {
    if input.get("name").is_none() {
        input["name"] = json!(format!("d-{}", uuid::Uuid::new_v4().simple()));
    }
    let d = s.ok(token, CREATE_DEST, json!({"input": input})).await;
    d["createDestination"]["id"].as_str().unwrap().to_string()
}

pub const PUBLISH: &str = "mutation($input: PublishEventInput!) {
  publishEvent(input: $input) { id type idempotencyKey }
}";

pub async fn publish(s: &Server, token: &str, event_type: &str, payload: Value) -> String {
    let d = s
        .ok(
            token,
            PUBLISH,
            json!({"input": {"type": event_type, "payload": payload}}),
        )
        .await;
    d["publishEvent"]["id"].as_str().unwrap().to_string()
}

// ---- Delivery-test helpers -------------------------------------------------------------------

/// A destination's state as the API shows it.
pub async fn destination_state(s: &Server, token: &str, id: &str) -> Value {
    let d = s
        .ok(
            token,
            "query($id: ID!) { destination(id: $id) { id status enabled signingSecret
               failureDetails { consecutiveFailures lastSuccessfulAt lastFailedAt
                 lastFailedStatusCode lastFailedReason nextAttemptAt } } }",
            json!({"id": id}),
        )
        .await;
    d["destination"].clone()
}

/// The destination's deliveries (at most 100, newest first) with their attempts, oldest
/// attempt first.
pub async fn deliveries_of(s: &Server, token: &str, destination_id: &str) -> Vec<Value> {
    let d = s
        .ok(
            token,
            "query($f: DeliveryFilter) { deliveries(first: 100, filter: $f) { nodes {
               id status eventId attemptCount lastStatusCode lastError completedAt
               attempts { attemptNumber outcome responseStatus errorKind errorMessage
                          requestId nextAttemptAt } } } }",
            json!({"f": {"destinationId": destination_id}}),
        )
        .await;
    d["deliveries"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the destination has `n` deliveries that all satisfy `done`; returns them.
pub async fn wait_deliveries(
    s: &Server,
    token: &str,
    destination_id: &str,
    n: usize,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = deliveries_of(s, token, destination_id).await;
        if last.len() == n && last.iter().all(&done) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never reached the expected state: {:#}",
            Value::from(last)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every delivery of the destination (`n` of them) has `status`.
pub async fn wait_status(
    s: &Server,
    token: &str,
    destination_id: &str,
    n: usize,
    status: &str,
    timeout: Duration,
) -> Vec<Value> {
    wait_deliveries(s, token, destination_id, n, timeout, |d| {
        d["status"] == status
    })
    .await
}

/// Publishes with an explicit input (idempotency key, level...); returns `publishEvent`.
pub async fn publish_input(s: &Server, token: &str, input: Value) -> Value {
    s.ok(token, PUBLISH, json!({"input": input})).await["publishEvent"].clone()
}

// ---- API-test helpers ------------------------------------------------------------------------

/// Like [`token`], but with `sub` = `subject` (the harness's token always says "tester").
pub fn token_as(tenant: &str, subject: &str, scopes: &str) -> String {
    JwtKeys::hs256(SECRET.as_bytes())
        .mint(
            tenant,
            subject,
            Scopes::parse(scopes),
            Duration::from_secs(3600),
        )
        .expect("mint")
}

impl Server {
    /// Another instance on this server's database with its own data dir, as a second
    /// process behind a load balancer would be (meaningful for PostgreSQL).
    pub async fn start_peer(&self, tweak: impl FnOnce(&mut Config)) -> Server {
        let db = TestDb {
            url: self.db.url.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
            owned: None,
        };
        let mut cfg = test_config(&db);
        tweak(&mut cfg);
        Server::start_on(db, cfg).await
    }
}

/// A destination whose receiver answers 500, and three deliveries to it that failed once and
/// wait for a retry an hour away.
pub struct Waiting {
    pub s: Server,
    pub tok: String,
    pub rx: Receiver,
    pub dest: String,
    pub ids: Vec<uuid::Uuid>,
}

impl Waiting {
    pub async fn three(backend: Backend) -> Self {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "admin");
        let rx = Receiver::start().await;
        rx.status(500);
        let dest = create_destination(
            &s,
            &tok,
            serde_json::json!({"url": rx.url(), "retrySchedule": [3600], "maxAttempts": 5}),
        )
        .await;
        for i in 0..3 {
            publish(&s, &tok, "job.done", serde_json::json!({"i": i})).await;
        }
        let ds = wait_status(
            &s,
            &tok,
            &dest,
            3,
            "AWAITING_RETRY",
            Duration::from_secs(15),
        )
        .await;
        let ids = ds
            .iter()
            .map(|d| d["id"].as_str().unwrap().parse().unwrap())
            .collect();
        Waiting {
            s,
            tok,
            rx,
            dest,
            ids,
        }
    }
}

/// A completion writer on `conn`, outside any server, publishing to `live`.
pub fn test_writer(
    conn: &hookline::db::Db,
    live: &hookline::live::LiveBus,
) -> hookline::dispatch::writer::Writer {
    use std::sync::Arc;
    hookline::dispatch::writer::Writer::start(
        &tokio::runtime::Handle::current(),
        conn.write.clone(),
        live.clone(),
        Arc::from("writer-test"),
        Arc::new(hookline::dispatch::hub::Hub::new(
            100,
            hookline::dispatch::hub::WINDOW_BYTES,
            Duration::from_secs(30),
            Arc::from("writer-test"),
        )),
    )
}

// ---- The real binary as a child process --------------------------------------------------

/// The `hookline` binary serving on `db`, for what an in-process server cannot show: a crash,
/// or the process environment it reads.
pub struct Child {
    proc: tokio::process::Child,
    pub base: String,
    pub log: std::path::PathBuf,
}

impl Child {
    pub async fn spawn(db: &TestDb, n: usize) -> Child {
        Self::spawn_with(db, n, |_| {}).await
    }

    /// `tweak` can add to (or override) the child's environment before it starts.
    pub async fn spawn_with(
        db: &TestDb,
        n: usize,
        tweak: impl FnOnce(&mut tokio::process::Command),
    ) -> Child {
        // A free port: bound, read, released for the child to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = db.dir.path().join(format!("child-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookline"));
        cmd.arg("serve")
            .env("HOOKLINE_DATABASE_URL", &db.url)
            .env("HOOKLINE_DATA_DIR", db.dir.path())
            .env("HOOKLINE_JWT_SECRET", SECRET)
            .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
            .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true")
            // PostgreSQL: a dead instance's leases must lapse quickly for the test.
            .env("HOOKLINE_LEASE_SECS", "2")
            .env("HOOKLINE_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        tweak(&mut cmd);
        let proc = cmd.spawn().expect("spawn hookline");
        let child = Child {
            proc,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        child.wait_ready().await;
        child
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child never became ready:\n{}",
                read_log(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn gql(
        &self,
        http: &reqwest::Client,
        token: &str,
        query: &str,
        vars: Value,
    ) -> Value {
        let resp = http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .json(&json!({"query": query, "variables": vars}))
            .send()
            .await
            .expect("graphql request");
        resp.json().await.expect("graphql json")
    }

    /// SIGKILL: no graceful shutdown, leases stay as they were.
    pub async fn kill(mut self) {
        self.proc.kill().await.expect("kill child");
    }
}

pub fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
