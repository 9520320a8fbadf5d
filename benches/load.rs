//! Load benchmark: the real `hookline` release binary as a child process on a fresh
//! database, a fast receiver in this process on 127.0.0.1, publishers over GraphQL.
//!
//! ```text
//! cargo bench --bench load -- [--database sqlite|postgres] [--scenario NAME[,NAME...]]
//!     [--events N] [--concurrency C] [--runs R] [--rate R] [--duration S]
//!     [--dead 500|refuse] [--timeout S] [--pg-url URL]
//! ```
//!
//! Scenarios: `single`, `fanout`, `steady`, `backlog`, `fanout-1000`, `live` (default: all of them);
//! `ceilings` (only when named) measures the machine instead of Hookline; `idle-subs` (only
//! when named) measures another tenant's 10 000 idle subscriptions.
//! Every run starts a new server on a new database (a SQLite file in a temp dir, or a
//! PostgreSQL database `bench_<uuid>` that is dropped afterwards). All traffic stays on
//! 127.0.0.1; every loop is bounded in count and in time.
//!
//! Diagnostics: `HOOKLINE_BENCH_KEEP_DB=1` keeps the PostgreSQL databases (to inspect what a
//! run wrote); `HOOKLINE_BENCH_SAMPLES=DIR` writes every publish of each phase to a CSV.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hookline::auth::{JwtKeys, Scopes};
use serde_json::{Value, json};
use uuid::Uuid;

#[path = "load/backlog.rs"]
mod backlog;
#[path = "load/ceilings.rs"]
mod ceilings;
#[path = "load/idle_subs.rs"]
mod idle_subs;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Single,
    Fanout,
    Steady,
    Backlog,
    Fanout1000,
    Live,
    /// Not Hookline: the machine's ceilings (see `load/ceilings.rs`). Only when named.
    Ceilings,
    /// Another tenant's 10 000 idle subscriptions (see `load/idle_subs.rs`). Only when named.
    IdleSubs,
}

const ALL: [Scenario; 6] = [
    Scenario::Single,
    Scenario::Fanout,
    Scenario::Steady,
    Scenario::Backlog,
    Scenario::Fanout1000,
    Scenario::Live,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Single => "single",
            Scenario::Fanout => "fanout",
            Scenario::Steady => "steady",
            Scenario::Backlog => "backlog",
            Scenario::Fanout1000 => "fanout-1000",
            Scenario::Live => "live",
            Scenario::Ceilings => "ceilings",
            Scenario::IdleSubs => "idle-subs",
        }
    }

    fn parse(s: &str) -> Res<Self> {
        ALL.into_iter()
            .chain([Scenario::Ceilings, Scenario::IdleSubs])
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown scenario {s:?}; expected one of single, fanout, steady, backlog, fanout-1000, live, ceilings, idle-subs"))
    }
}

/// `backlog`: the length of each steady phase, the same as `steady`'s. The criterion is a p99:
/// over 10 s at 500/s that is the 50th slowest publish, and one stall of the machine's disk
/// decides it. With a 1-event fill, i.e. no backlog at all, 10-s phases move the second
/// phase's p99 by tens of per cent against the first (−17 %, −10 % and +68 % in three runs).
const BACKLOG_PHASE_SECS: f64 = 30.0;

/// How long the bench waits for deliveries while none arrives before it gives up.
const STALL: Duration = Duration::from_secs(30);

/// `backlog`: what is written back before each steady phase (see [`writeback`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writeback {
    /// The page cache (`sync`): the default.
    Sync,
    /// On PostgreSQL, its shared buffers first (`CHECKPOINT`), then the page cache.
    Checkpoint,
    /// Nothing.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeadMode {
    /// The dead destination answers 500 to everything.
    Status500,
    /// The dead destination's port refuses connections.
    Refuse,
    /// Control: the "dead" destination answers 204, and the second phase starts once all of
    /// its deliveries arrived. The database grows by as much as with a backlog, but no
    /// backlog is left: what moves the healthy latency then is not the backlog.
    Control,
}

#[derive(Clone, Debug)]
struct Args {
    databases: Vec<DbKind>,
    scenarios: Vec<Scenario>,
    events: Option<usize>,
    concurrency: usize,
    runs: usize,
    rate: Option<f64>,
    duration: Option<f64>,
    dead: DeadMode,
    timeout: Duration,
    pg_url: String,
    destinations: Option<usize>,
    /// `backlog`: seconds to wait between the fill and the second steady phase.
    settle: Option<f64>,
    /// `backlog`: what is written back before each steady phase.
    writeback: Writeback,
    /// `backlog`: the two phases one after the other on one server, instead of interleaved
    /// on two.
    sequential: bool,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--database sqlite|postgres|both] \
[--scenario single|fanout|steady|backlog|fanout-1000|live|ceilings|idle-subs[,..]] [--events N] [--concurrency C] \
[--runs R] [--rate EVENTS_PER_SEC] [--duration SECS] [--destinations N] [--dead 500|refuse|control] \
[--settle SECS] [--writeback sync|checkpoint|none] [--sequential] [--timeout SECS] [--pg-url URL]";

fn parse_args() -> Res<Args> {
    let mut a = Args {
        databases: vec![DbKind::Sqlite],
        scenarios: ALL.to_vec(),
        events: None,
        concurrency: 32,
        runs: 3,
        rate: None,
        duration: None,
        dead: DeadMode::Status500,
        timeout: Duration::from_secs(300),
        pg_url: std::env::var("HOOKLINE_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        destinations: None,
        settle: None,
        writeback: Writeback::Sync,
        sequential: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        // `cargo bench` adds `--bench`; libtest-style filters are ignored too.
        if key == "--bench" {
            continue;
        }
        if key == "--sequential" {
            a.sequential = true;
            continue;
        }
        if key == "-h" || key == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut val = || -> Res<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{key} needs a value\n{USAGE}"))
        };
        let num = |v: String| -> Res<f64> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{key}: {v:?} is not a positive number"))
        };
        match key.as_str() {
            "--database" | "--db" => {
                a.databases = match val()?.as_str() {
                    "sqlite" => vec![DbKind::Sqlite],
                    "postgres" | "postgresql" | "pg" => vec![DbKind::Postgres],
                    "both" | "all" => vec![DbKind::Sqlite, DbKind::Postgres],
                    v => {
                        return Err(format!(
                            "--database {v:?}: expected sqlite, postgres or both"
                        ));
                    }
                }
            }
            "--scenario" => {
                let v = val()?;
                a.scenarios = if v == "all" {
                    ALL.to_vec()
                } else {
                    v.split(',').map(Scenario::parse).collect::<Res<_>>()?
                };
            }
            "--events" => a.events = Some(num(val()?)? as usize),
            "--concurrency" => a.concurrency = (num(val()?)? as usize).clamp(1, 1024),
            "--runs" => a.runs = (num(val()?)? as usize).clamp(1, 20),
            "--rate" => a.rate = Some(num(val()?)?.min(100_000.0)),
            "--duration" => a.duration = Some(num(val()?)?.min(3600.0)),
            "--destinations" => a.destinations = Some((num(val()?)? as usize).clamp(1, 5000)),
            "--settle" => a.settle = Some(num(val()?)?.min(600.0)),
            "--writeback" => {
                a.writeback = match val()?.as_str() {
                    "sync" => Writeback::Sync,
                    "checkpoint" => Writeback::Checkpoint,
                    "none" => Writeback::None,
                    v => {
                        return Err(format!(
                            "--writeback {v:?}: expected sync, checkpoint or none"
                        ));
                    }
                }
            }
            "--timeout" => a.timeout = Duration::from_secs_f64(num(val()?)?.min(7200.0)),
            "--pg-url" => a.pg_url = val()?,
            "--dead" => {
                a.dead = match val()?.as_str() {
                    "500" => DeadMode::Status500,
                    "refuse" => DeadMode::Refuse,
                    "control" => DeadMode::Control,
                    v => return Err(format!("--dead {v:?}: expected 500, refuse or control")),
                }
            }
            other if other.starts_with('-') => {
                return Err(format!("unknown flag {other}\n{USAGE}"));
            }
            _ => {}
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a process, in seconds (None when it is gone).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// A `/proc/<pid>/status` field in MiB (VmHWM, VmRSS).
fn status_mib(pid: &str, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU of the PostgreSQL processes that work for one benchmark database: its backends
/// (their process title names the database) and the cluster's shared helpers (WAL writer,
/// checkpointer, background writer, autovacuum). Sampled every 200 ms, per pid, so the CPU
/// of backends that exit between samples is kept up to their last sample.
struct PgCpu {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl PgCpu {
    fn start(db_name: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            // pid -> (value when first seen, last value)
            let mut seen: HashMap<String, (f64, f64)> = HashMap::new();
            let mut first = true;
            let deadline = Instant::now() + Duration::from_secs(4 * 3600);
            loop {
                let done = s.load(Ordering::Relaxed) || Instant::now() > deadline;
                for (pid, cpu) in pg_processes(&db_name) {
                    let e = seen
                        .entry(pid)
                        .or_insert((if first { cpu } else { 0.0 }, cpu));
                    e.1 = cpu;
                }
                first = false;
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen.values().map(|(a, b)| (b - a).max(0.0)).sum()
        });
        Self { stop, task }
    }

    async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(f64::NAN)
    }
}

fn pg_processes(db_name: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.trim() != "postgres" {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ours = cmd.contains(db_name);
        let helper = [
            "walwriter",
            "checkpointer",
            "background writer",
            "autovacuum",
        ]
        .iter()
        .any(|h| cmd.contains(h));
        if (ours || helper)
            && let Some(c) = cpu_secs(&pid)
        {
            out.push((pid, c));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The receiver

struct Hit {
    id: Uuid,
    dest: u32,
    at: Instant,
}

#[derive(Default)]
struct Book {
    hits: Vec<Hit>,
    seen: HashSet<(Uuid, u32)>,
    duplicates: usize,
    bad: usize,
}

struct RecvState {
    status: StatusCode,
    book: Mutex<Book>,
    unique: AtomicUsize,
    requests: AtomicUsize,
}

struct Receiver {
    port: u16,
    state: Arc<RecvState>,
    task: tokio::task::JoinHandle<()>,
}

async fn hook(
    State(s): State<Arc<RecvState>>,
    Path(dest): Path<u32>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> StatusCode {
    let at = Instant::now();
    s.requests.fetch_add(1, Ordering::Relaxed);
    if s.status != StatusCode::NO_CONTENT {
        return s.status;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    let mut b = s.book.lock().unwrap();
    match id {
        Some(id) => {
            if b.seen.insert((id, dest)) {
                b.hits.push(Hit { id, dest, at });
                s.unique.fetch_add(1, Ordering::Relaxed);
            } else {
                b.duplicates += 1;
            }
        }
        None => b.bad += 1,
    }
    s.status
}

impl Receiver {
    async fn start(status: StatusCode) -> Res<Self> {
        let state = Arc::new(RecvState {
            status,
            book: Mutex::new(Book::default()),
            unique: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/d/{dest}", axum::routing::post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("receiver bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { port, state, task })
    }

    fn url(&self, dest: usize) -> String {
        format!("http://127.0.0.1:{}/d/{dest}", self.port)
    }

    /// Waits until `n` distinct (event, destination) deliveries have arrived. Gives up after
    /// `timeout`, or when nothing new arrived for `stall`.
    async fn wait_for(&self, n: usize, timeout: Duration, stall: Duration) -> Res<()> {
        let start = Instant::now();
        let mut last = self.state.unique.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        loop {
            let got = self.state.unique.load(Ordering::Relaxed);
            if got >= n {
                return Ok(());
            }
            if got != last {
                last = got;
                last_change = Instant::now();
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "gave up after {:.0} s: {got} of {n} deliveries arrived",
                    timeout.as_secs_f64()
                ));
            }
            if last_change.elapsed() > stall {
                return Err(format!(
                    "gave up: no delivery for {:.0} s; {got} of {n} arrived",
                    stall.as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test

struct Server {
    child: Child,
    pid: String,
    base: String,
    token: String,
    /// Signs tokens of other tenants ([`Server::mint`]).
    secret: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
    pg: Option<(String, String)>, // (admin url, database name)
}

/// The server binary: the one cargo built for this bench, or `HOOKLINE_BENCH_BIN` (to compare
/// two builds with the same load generator).
fn server_bin() -> String {
    std::env::var("HOOKLINE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookline").to_string())
}

fn free_port() -> Res<u16> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The URL of database `name` on the cluster of `admin` (a URL ending in a database name).
fn db_url(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{name}")
}

/// `Dirty` in `/proc/meminfo`, in MB.
fn dirty_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Dirty:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Writes the database's dirty pages back: on PostgreSQL a `CHECKPOINT` (its shared buffers
/// to the files), then `sync` (the page cache to the disk). Records how much was dirty in the
/// page cache and how long it took.
async fn writeback(how: Writeback, run: &mut Run, phase: &str, server: &Server) -> Res<()> {
    if how == Writeback::None {
        return Ok(());
    }
    let dirty = dirty_mb();
    let t = Instant::now();
    if let (Writeback::Checkpoint, Some((admin, _))) = (how, &server.pg) {
        pg_exec(admin, "CHECKPOINT").await?;
    }
    let status = tokio::process::Command::new("sync")
        .status()
        .await
        .map_err(|e| format!("sync: {e}"))?;
    if !status.success() {
        return Err(format!("sync: {status}"));
    }
    run.put(&format!("{phase}page cache dirty before (MB)"), dirty);
    run.put(
        &format!("{phase}writeback took (s)"),
        t.elapsed().as_secs_f64(),
    );
    Ok(())
}

async fn pg_exec(admin: &str, sql: &str) -> Res<()> {
    use sea_orm::ConnectionTrait;
    let mut opts = sea_orm::ConnectOptions::new(admin.to_string());
    opts.max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let conn = sea_orm::Database::connect(opts)
        .await
        .map_err(|e| format!("PostgreSQL at {admin}: {e}"))?;
    conn.execute_unprepared(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let _ = conn.close().await;
    Ok(())
}

impl Server {
    async fn start(kind: DbKind, args: &Args) -> Res<Self> {
        Self::start_bin(kind, args, &server_bin()).await
    }

    /// [`Server::start`] of the binary at `bin`.
    async fn start_bin(kind: DbKind, args: &Args, bin: &str) -> Res<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hookline-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let (url, pg) = match kind {
            DbKind::Sqlite => (
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("hookline.db").display()
                ),
                None,
            ),
            DbKind::Postgres => {
                let name = format!("bench_{}", Uuid::new_v4().simple());
                pg_exec(&args.pg_url, &format!("CREATE DATABASE {name}")).await?;
                (
                    db_url(&args.pg_url, &name),
                    Some((args.pg_url.clone(), name)),
                )
            }
        };
        let port = free_port()?;
        let secret = Uuid::new_v4().simple().to_string();
        let token = JwtKeys::hs256(secret.as_bytes())
            .mint(
                "bench",
                "bench",
                Scopes::parse("read write publish"),
                Duration::from_secs(24 * 3600),
            )
            .map_err(|e| format!("mint token: {e}"))?;
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .env("HOOKLINE_DATABASE_URL", &url)
            .env("HOOKLINE_DATA_DIR", dir.path())
            .env("HOOKLINE_JWT_SECRET", &secret)
            .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
            .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true")
            .env("HOOKLINE_LOG", "warn")
            // The per-tenant publish limit (default 20 000/s) would turn the first burst of 32
            // concurrent publishes into RATE_LIMITED errors; a load test measures without it.
            .env("HOOKLINE_PUBLISH_RATE_PER_TENANT", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let mut s = Server {
            pid: child.id().to_string(),
            child,
            base: format!("http://127.0.0.1:{port}"),
            token,
            secret,
            _dir: dir,
            log,
            pg,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("server exited at start ({st}):\n{}", s.log_tail()));
            }
            let ok = client
                .get(format!("{}/readyz", s.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let tail = s.log_tail();
                s.stop().await;
                return Err(format!("server not ready within 60 s:\n{tail}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A day-long read token of `tenant`.
    fn mint(&self, tenant: &str) -> Res<String> {
        JwtKeys::hs256(self.secret.as_bytes())
            .mint(
                tenant,
                "bench",
                Scopes::parse("read"),
                Duration::from_secs(24 * 3600),
            )
            .map_err(|e| format!("mint token: {e}"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn cpu(&self) -> f64 {
        cpu_secs(&self.pid).unwrap_or(f64::NAN)
    }

    fn hwm(&self) -> f64 {
        status_mib(&self.pid, "VmHWM:").unwrap_or(f64::NAN)
    }

    fn rss(&self) -> f64 {
        status_mib(&self.pid, "VmRSS:").unwrap_or(f64::NAN)
    }

    /// SIGTERM, up to 15 s for a graceful stop, then SIGKILL; drops the PostgreSQL database.
    async fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-TERM", &self.pid]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some((admin, name)) = self.pg.take()
            && std::env::var_os("HOOKLINE_BENCH_KEEP_DB").is_none()
            && let Err(e) = pg_exec(
                &admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await
        {
            eprintln!("warning: could not drop {name}: {e}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((_, name)) = &self.pg {
            eprintln!("warning: database {name} was not dropped");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GraphQL client

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    url: String,
    auth: String,
}

const PUBLISH: &str = "mutation($input: PublishEventInput!) { publishEvent(input: $input) { id } }";
const CREATE: &str =
    "mutation($input: CreateDestinationInput!) { createDestination(input: $input) { id } }";

struct Pub {
    id: Uuid,
    sent: Instant,
    latency: Duration,
}

impl Api {
    fn new(s: &Server, concurrency: usize) -> Res<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency.max(8))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: format!("{}/graphql", s.base),
            auth: format!("Bearer {}", s.token),
        })
    }

    async fn gql(&self, query: &str, variables: Value) -> Res<Value> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        self.raw(body).await
    }

    async fn raw(&self, body: String) -> Res<Value> {
        let resp = self
            .client
            .post(&self.url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST /graphql: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("HTTP {status}: {e}: {}", String::from_utf8_lossy(&bytes)))?;
        if let Some(errs) = v.get("errors") {
            return Err(format!("GraphQL errors: {errs}"));
        }
        Ok(v["data"].clone())
    }

    async fn create_destination(&self, name: &str, url: &str, types: &[&str]) -> Res<Uuid> {
        let d = self
            .gql(
                CREATE,
                json!({"input": {"name": name, "url": url, "eventTypes": types}}),
            )
            .await?;
        d["createDestination"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| format!("createDestination answered {d}"))
    }

    /// Creates `n` destinations named `dest-<i>` posting to `url(i)`, `concurrency` at a time.
    async fn create_many(
        &self,
        n: usize,
        concurrency: usize,
        url: impl Fn(usize) -> String,
        types: &'static [&'static str],
    ) -> Res<()> {
        let next = Arc::new(AtomicUsize::new(0));
        let urls: Arc<Vec<String>> = Arc::new((0..n).map(url).collect());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency.min(n) {
            let (api, next, urls) = (self.clone(), next.clone(), urls.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= urls.len() {
                        return Ok::<(), String>(());
                    }
                    api.create_destination(&format!("dest-{i}"), &urls[i], types)
                        .await?;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    async fn publish(&self, i: usize, event_type: &str) -> Res<Pub> {
        let body = publish_body(i, event_type);
        let sent = Instant::now();
        let d = self.raw(body).await?;
        let latency = sent.elapsed();
        let id = d["publishEvent"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| format!("publishEvent answered {d}"))?;
        Ok(Pub { id, sent, latency })
    }
}

/// A GraphQL publish request whose event payload is about 300 bytes of JSON.
fn publish_body(i: usize, event_type: &str) -> String {
    let payload = json!({
        "orderId": format!("ord_{i:010}"),
        "customer": {"id": format!("cus_{:08}", i % 100_000), "email": format!("customer{}@example.com", i % 100_000), "name": "Ada Lovelace"},
        "items": [
            {"sku": "SKU-RED-SHIRT-M", "qty": 2, "unitPrice": 1999},
            {"sku": "SKU-BLUE-JEANS-32", "qty": 1, "unitPrice": 4999}
        ],
        "total": 8997,
        "currency": "EUR",
        "shipping": {"method": "express", "country": "DE", "postcode": "10115"},
        "createdAt": "2025-01-01T12:00:00Z"
    });
    json!({"query": PUBLISH, "variables": {"input": {"type": event_type, "payload": payload}}})
        .to_string()
}

/// Publishes `n` events from `concurrency` closed-loop clients. Gives up on the first error
/// or after `timeout`.
async fn publish_closed(
    api: &Api,
    n: usize,
    concurrency: usize,
    event_type: &'static str,
    timeout: Duration,
) -> Res<Vec<Pub>> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + timeout;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n).max(1) {
        let (api, next, failed) = (api.clone(), next.clone(), failed.clone());
        set.spawn(async move {
            let mut out = Vec::with_capacity(n / concurrency + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return Ok(out);
                }
                if Instant::now() > deadline {
                    failed.store(true, Ordering::Relaxed);
                    return Err(format!("publishing took longer than {timeout:?}"));
                }
                match api.publish(i, event_type).await {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(format!("publish {i}: {e}"));
                    }
                }
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut err = None;
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|x| x) {
            Ok(v) => all.extend(v),
            Err(e) => err = err.or(Some(e)),
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

/// Publishes at a fixed rate (open loop: event i is sent at start + i/rate whether or not
/// earlier ones have been answered) for `secs`. At most 1 024 requests in flight.
async fn publish_paced(
    api: &Api,
    rate: f64,
    secs: f64,
    event_type: &'static str,
) -> Res<(Vec<Pub>, usize)> {
    let n = (rate * secs).round() as usize;
    let start = tokio::time::Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(1024));
    let mut set = tokio::task::JoinSet::new();
    let mut late = 0usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        if tokio::time::Instant::now() > at + Duration::from_millis(5) {
            late += 1;
        }
        let permit = limit.clone().try_acquire_owned().map_err(|_| {
            format!("more than 1024 publishes in flight at {rate}/s: the server is not keeping up")
        })?;
        let api = api.clone();
        set.spawn(async move {
            let r = api.publish(i, event_type).await;
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            out.push(r.map_err(|e| e.to_string())??);
        }
    }
    let drain = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = set.join_next().await {
            out.push(r.map_err(|e| e.to_string())??);
        }
        Ok::<(), String>(())
    });
    drain
        .await
        .map_err(|_| "paced publishes not answered within 120 s".to_string())??;
    Ok((out, late))
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// What one run measured, as named rows (kept in order for printing), and each phase's
/// publish→receive latencies (ms, sorted), so that several runs' phases can be pooled.
#[derive(Default)]
struct Run {
    rows: Vec<(String, f64)>,
    e2e: HashMap<String, Vec<f64>>,
    /// Interleaved `backlog`: per pair of adjacent turns, the second server's p99 against the
    /// first's (%), to be pooled over runs too.
    turn_rises: Vec<f64>,
}

impl Run {
    fn put(&mut self, name: &str, v: f64) {
        self.rows.push((name.to_string(), v));
    }
}

/// Publish and publish→receive figures for one phase.
fn phase_rows(
    run: &mut Run,
    prefix: &str,
    pubs: &[Pub],
    recv: &Receiver,
    dests: Option<&HashSet<u32>>,
) -> Res<()> {
    phase_rows_at(run, prefix, pubs, recv, dests, None)
}

/// What the receiver got of `pubs` (only from `dests`, when given).
struct Received {
    /// Publish→receive latencies (ms), sorted.
    e2e: Vec<f64>,
    first_hit: HashMap<Uuid, Instant>,
    /// The last arrival, if any.
    last: Option<Instant>,
}

fn received(pubs: &[Pub], recv: &Receiver, dests: Option<&HashSet<u32>>) -> Received {
    let sent: HashMap<Uuid, Instant> = pubs.iter().map(|p| (p.id, p.sent)).collect();
    let book = recv.state.book.lock().unwrap();
    let mut e2e = Vec::with_capacity(pubs.len());
    let mut first_hit: HashMap<Uuid, Instant> = HashMap::new();
    let mut last: Option<Instant> = None;
    for h in &book.hits {
        if dests.is_some_and(|d| !d.contains(&h.dest)) {
            continue;
        }
        if let Some(s) = sent.get(&h.id) {
            e2e.push(h.at.saturating_duration_since(*s).as_secs_f64() * 1e3);
            last = Some(last.map_or(h.at, |l| l.max(h.at)));
            first_hit.entry(h.id).or_insert(h.at);
        }
    }
    Received {
        e2e: sorted(e2e),
        first_hit,
        last,
    }
}

/// [`phase_rows`]; the rates over `wall` seconds when given (a phase spread over several
/// turns), else from the first publish to the last answer or delivery.
fn phase_rows_at(
    run: &mut Run,
    prefix: &str,
    pubs: &[Pub],
    recv: &Receiver,
    dests: Option<&HashSet<u32>>,
    wall: Option<f64>,
) -> Res<()> {
    let first_sent = pubs
        .iter()
        .map(|p| p.sent)
        .min()
        .ok_or("nothing published")?;
    let last_answer = pubs.iter().map(|p| p.sent + p.latency).max().unwrap();
    let pub_lat = sorted(pubs.iter().map(|p| p.latency.as_secs_f64() * 1e3).collect());
    let Received {
        e2e,
        first_hit,
        last,
    } = received(pubs, recv, dests);
    let last = last.unwrap_or(first_sent);
    dump_samples(prefix, pubs, &first_hit);
    let pub_wall = wall.unwrap_or((last_answer - first_sent).as_secs_f64());
    let e2e_wall = wall.unwrap_or((last - first_sent).as_secs_f64());
    run.put(&format!("{prefix}events published"), pubs.len() as f64);
    run.put(
        &format!("{prefix}events published/s"),
        pubs.len() as f64 / pub_wall,
    );
    run.put(
        &format!("{prefix}publish latency p50 (ms)"),
        pct(&pub_lat, 50.0),
    );
    run.put(
        &format!("{prefix}publish latency p99 (ms)"),
        pct(&pub_lat, 99.0),
    );
    run.put(&format!("{prefix}deliveries received"), e2e.len() as f64);
    run.put(
        &format!("{prefix}events/s end to end"),
        pubs.len() as f64 / e2e_wall,
    );
    run.put(
        &format!("{prefix}deliveries/s end to end"),
        e2e.len() as f64 / e2e_wall,
    );
    run.put(
        &format!("{prefix}publish→receive p50 (ms)"),
        pct(&e2e, 50.0),
    );
    run.put(
        &format!("{prefix}publish→receive p90 (ms)"),
        pct(&e2e, 90.0),
    );
    run.put(
        &format!("{prefix}publish→receive p99 (ms)"),
        pct(&e2e, 99.0),
    );
    run.put(
        &format!("{prefix}publish→receive max (ms)"),
        e2e.last().copied().unwrap_or(f64::NAN),
    );
    run.e2e.insert(prefix.to_string(), e2e);
    Ok(())
}

/// The prefixes of `backlog`'s two steady phases.
const BASELINE: &str = "baseline: ";
const WITH_BACKLOG: &str = "with backlog: ";

/// `backlog`'s healthy p99 beside the backlog against its baseline, in per cent.
fn rise(base: &[f64], with: &[f64]) -> f64 {
    (pct(with, 99.0) / pct(base, 99.0) - 1.0) * 100.0
}

/// `backlog` over several runs: the p99 of every run's baseline samples together against the
/// p99 of every run's samples beside the backlog. One run's 30-s p99 is the 150th slowest of
/// 15 000 publishes, and this machine moves it by tens of per cent between runs with no
/// backlog at all (the A/A control, `--events 1`); the pooled figure is the same
/// quantity measured on R times as many publishes.
fn print_pooled(runs: &[Run]) {
    let pool = |phase: &str| {
        sorted(
            runs.iter()
                .filter_map(|r| r.e2e.get(phase))
                .flatten()
                .copied()
                .collect(),
        )
    };
    // `HOOKLINE_BENCH_BIN_B`: two builds, each beside a backlog (see `backlog.rs`).
    let (a, b) = if runs.iter().any(|r| r.e2e.contains_key(backlog::ARM_A)) {
        (backlog::ARM_A, backlog::ARM_B)
    } else {
        (BASELINE, WITH_BACKLOG)
    };
    let (base, with) = (pool(a), pool(b));
    if runs.len() < 2 || base.is_empty() || with.is_empty() {
        return;
    }
    println!();
    println!(
        "pooled over {} runs: healthy publish→receive p99 {} ms ({} publishes, {}) → {} ms \
         ({} publishes, {}): {:+.0} %; p50 {} → {} ms",
        runs.len(),
        fmt(pct(&base, 99.0)),
        base.len(),
        a.trim_end_matches([':', ' ']),
        fmt(pct(&with, 99.0)),
        with.len(),
        b.trim_end_matches([':', ' ']),
        rise(&base, &with),
        fmt(pct(&base, 50.0)),
        fmt(pct(&with, 50.0)),
    );
    let pairs = sorted(
        runs.iter()
            .flat_map(|r| r.turn_rises.iter().copied())
            .collect(),
    );
    if !pairs.is_empty() {
        println!(
            "per pair of adjacent 5-s turns, over {} pairs: median {:+.0} %, {} of {} with {} slower",
            pairs.len(),
            pct(&pairs, 50.0),
            pairs.iter().filter(|r| **r > 0.0).count(),
            pairs.len(),
            b.trim_end_matches([':', ' ']),
        );
    }
}

/// Diagnostics: with `HOOKLINE_BENCH_SAMPLES=DIR`, every publish of a phase as
/// `unix time sent (ms),publish latency (ms),publish→first receipt (ms)` lines in
/// `DIR/<phase>.csv` (the last empty if nothing arrived), to line slow publishes up with what
/// the machine and the database did at that moment.
fn dump_samples(prefix: &str, pubs: &[Pub], first_hit: &HashMap<Uuid, Instant>) {
    let Some(dir) = std::env::var_os("HOOKLINE_BENCH_SAMPLES") else {
        return;
    };
    let (now_i, now_s) = (Instant::now(), std::time::SystemTime::now());
    let unix_ms = |at: Instant| {
        let t = now_s - now_i.saturating_duration_since(at);
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    let mut out = String::new();
    for p in pubs {
        let e2e = first_hit.get(&p.id).map_or(String::new(), |at| {
            format!(
                "{:.3}",
                at.saturating_duration_since(p.sent).as_secs_f64() * 1e3
            )
        });
        out += &format!(
            "{:.1},{:.3},{e2e}\n",
            unix_ms(p.sent),
            p.latency.as_secs_f64() * 1e3
        );
    }
    let name = prefix.trim_end_matches([':', ' ']).replace(' ', "_");
    let name = if name.is_empty() {
        "all"
    } else {
        name.as_str()
    };
    let path = PathBuf::from(dir).join(format!("{name}.csv"));
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!("samples: {}: {e}", path.display());
    }
}

const LIVE_FLAT: &str =
    "subscription { deliveryAttempts { id eventId outcome responseStatus durationMs } }";
const LIVE_DEEP: &str = "subscription { deliveryAttempts { id eventId outcome responseStatus durationMs \
     delivery { status attemptCount event { type payload } destination { name url } } } }";

/// A `graphql-transport-ws` subscriber that records when each attempt's event arrived.
struct Watcher {
    task: tokio::task::JoinHandle<Res<Vec<(Uuid, Instant)>>>,
    stop: Arc<tokio::sync::Notify>,
    count: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

impl Watcher {
    async fn start(server: &Server, query: &str) -> Res<Self> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/graphql/ws", server.base.replacen("http", "ws", 1));
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            axum::http::HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| format!("websocket: {e}"))?;
        let send = |v: Value| Message::Text(v.to_string().into());
        ws.send(send(json!({"type": "connection_init",
            "payload": {"Authorization": format!("Bearer {}", server.token)}})))
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("connection_ack") => {}
            other => return Err(format!("expected connection_ack, got {other:?}")),
        }
        ws.send(send(
            json!({"type": "subscribe", "id": "1", "payload": {"query": query}}),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let count = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicBool::new(false));
        let (stop2, count2, lagged2) = (stop.clone(), count.clone(), lagged.clone());
        let task = tokio::spawn(async move {
            let lagged = lagged2;
            let mut seen = Vec::new();
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = stop2.notified() => break,
                };
                let at = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(p))) => {
                        let _ = ws.send(Message::Pong(p)).await;
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("subscriber: {e}")),
                    None => break,
                };
                let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                match v["type"].as_str() {
                    Some("next") => {
                        let a = &v["payload"]["data"]["deliveryAttempts"];
                        if let Some(errors) = v["payload"].get("errors") {
                            // The server ends a stream that fell too far behind; that is a
                            // result (the subscriber could not keep up), not a bench failure.
                            if errors.to_string().contains("fell behind") {
                                lagged.store(true, Ordering::Relaxed);
                                break;
                            }
                            return Err(format!("subscriber got errors: {errors}"));
                        }
                        let id = a["eventId"]
                            .as_str()
                            .and_then(|s| Uuid::parse_str(s).ok())
                            .ok_or_else(|| format!("attempt without eventId: {v}"))?;
                        seen.push((id, at));
                        count2.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("ping") => {
                        let _ = ws
                            .send(Message::Text(json!({"type": "pong"}).to_string().into()))
                            .await;
                    }
                    Some("error") | Some("complete") => {
                        return Err(format!("subscription ended: {v}"));
                    }
                    _ => {}
                }
            }
            Ok(seen)
        });
        Ok(Watcher {
            task,
            stop,
            count,
            lagged,
        })
    }

    /// Waits until `n` attempts arrived, the server ended the stream as fallen behind, or
    /// none arrived for `idle`. Returns the arrivals and whether it fell behind.
    async fn finish(self, n: usize, idle: Duration) -> Res<(Vec<(Uuid, Instant)>, bool)> {
        let mut last = self.count.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while last < n && since.elapsed() < idle && !self.lagged.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.count.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        self.stop.notify_one();
        let seen = self.task.await.map_err(|e| e.to_string())??;
        Ok((seen, self.lagged.load(Ordering::Relaxed)))
    }
}

/// The server's and this process's CPU seconds and the wall clock, taken at a phase's start.
struct Clocks {
    server: f64,
    me: f64,
    wall: Instant,
}

/// What a phase spent since its [`Clocks`] were taken, in seconds.
struct Spent {
    wall: f64,
    server: f64,
    me: f64,
}

impl Clocks {
    fn start(s: &Server) -> Self {
        Clocks {
            server: s.cpu(),
            me: cpu_secs("self").unwrap_or(f64::NAN),
            wall: Instant::now(),
        }
    }

    fn spent(&self, s: &Server) -> Spent {
        Spent {
            wall: self.wall.elapsed().as_secs_f64(),
            server: s.cpu() - self.server,
            me: cpu_secs("self").unwrap_or(f64::NAN) - self.me,
        }
    }
}

/// CPU counters taken at a phase's start, PostgreSQL's included.
struct Cpu {
    clocks: Clocks,
    pg: Option<PgCpu>,
}

impl Cpu {
    fn start(s: &Server) -> Self {
        Cpu {
            clocks: Clocks::start(s),
            pg: s.pg.as_ref().map(|(_, name)| PgCpu::start(name.clone())),
        }
    }

    async fn finish(self, s: &Server, run: &mut Run) {
        self.finish_as("", s, run).await;
        run.put("server peak RSS VmHWM (MiB)", s.hwm());
    }

    /// The CPU rows, each name prefixed by `phase`.
    async fn finish_as(self, phase: &str, s: &Server, run: &mut Run) {
        let spent = self.clocks.spent(s);
        run.put(&format!("{phase}wall time (s)"), spent.wall);
        run.put(&format!("{phase}server CPU (s)"), spent.server);
        match self.pg {
            Some(pg) => run.put(&format!("{phase}PostgreSQL CPU (s)"), pg.finish().await),
            None => run.put(&format!("{phase}SQLite CPU (s, inside server)"), f64::NAN),
        }
        run.put(
            &format!("{phase}bench CPU: load gen + receiver (s)"),
            spent.me,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

fn n_or(args: &Args, default: usize) -> usize {
    args.events.unwrap_or(default).max(1)
}

async fn run_once(sc: Scenario, kind: DbKind, args: &Args) -> Res<Run> {
    if sc == Scenario::Ceilings {
        return ceilings::run(kind, args).await;
    }
    if sc == Scenario::Backlog && !args.sequential {
        return backlog::run(kind, args).await;
    }
    let mut server = Server::start(kind, args).await?;
    let r = run_on(sc, &server, args).await;
    let r = r.map_err(|e| format!("{e}\n--- server log (tail) ---\n{}", server.log_tail()));
    server.stop().await;
    r
}

async fn run_on(sc: Scenario, server: &Server, args: &Args) -> Res<Run> {
    let c = args.concurrency;
    let api = Api::new(server, c)?;
    let recv = Receiver::start(StatusCode::NO_CONTENT).await?;
    let mut run = Run::default();
    let stall = STALL;
    match sc {
        Scenario::Single | Scenario::Fanout => {
            let (n, dests) = match sc {
                Scenario::Single => (n_or(args, 20_000), args.destinations.unwrap_or(1)),
                _ => (n_or(args, 2_000), args.destinations.unwrap_or(50)),
            };
            api.create_many(dests, c, |i| recv.url(i), &["*"]).await?;
            let cpu = Cpu::start(server);
            let pubs = publish_closed(&api, n, c, "order.created", args.timeout).await?;
            recv.wait_for(n * dests, args.timeout, stall).await?;
            cpu.finish(server, &mut run).await;
            phase_rows(&mut run, "", &pubs, &recv, None)?;
        }
        Scenario::Steady => {
            let rate = args.rate.unwrap_or(500.0);
            let secs = args.duration.unwrap_or(30.0);
            let dests = args.destinations.unwrap_or(1);
            api.create_many(dests, c, |i| recv.url(i), &["*"]).await?;
            let cpu = Cpu::start(server);
            let (pubs, late) = publish_paced(&api, rate, secs, "order.created").await?;
            recv.wait_for(pubs.len() * dests, args.timeout, stall)
                .await?;
            cpu.finish(server, &mut run).await;
            phase_rows(&mut run, "", &pubs, &recv, None)?;
            run.put("publishes sent > 5 ms late (pacer)", late as f64);
        }
        Scenario::Backlog => backlog::sequential(server, &api, &recv, args, &mut run).await?,
        Scenario::Ceilings => return Err("`ceilings` runs without a server".into()),
        Scenario::IdleSubs => idle_subs::run(server, &api, &recv, args, &mut run).await?,
        Scenario::Live => {
            // `single`'s load, watched by two `deliveryAttempts` subscribers: one asking for
            // the attempt's own fields, one also for its delivery, event and destination.
            let n = n_or(args, 20_000);
            api.create_many(1, c, |i| recv.url(i), &["*"]).await?;
            let flat = Watcher::start(server, LIVE_FLAT).await?;
            let deep = Watcher::start(server, LIVE_DEEP).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cpu = Cpu::start(server);
            let pubs = publish_closed(&api, n, c, "order.created", args.timeout).await?;
            recv.wait_for(n, args.timeout, stall).await?;
            cpu.finish(server, &mut run).await;
            phase_rows(&mut run, "", &pubs, &recv, None)?;
            let sent: HashMap<Uuid, Instant> = pubs.iter().map(|p| (p.id, p.sent)).collect();
            for (name, w) in [("own fields", flat), ("with relations", deep)] {
                let (seen, lagged) = w.finish(n, Duration::from_secs(20)).await?;
                run.put(
                    &format!("subscriber ({name}): fell behind, stream ended (1 = yes)"),
                    if lagged { 1.0 } else { 0.0 },
                );
                let lat = sorted(
                    seen.iter()
                        .filter_map(|(id, at)| sent.get(id).map(|s| (*at - *s).as_secs_f64() * 1e3))
                        .collect(),
                );
                run.put(
                    &format!("subscriber ({name}): attempts received"),
                    lat.len() as f64,
                );
                run.put(
                    &format!("subscriber ({name}): publish→subscriber p50 (ms)"),
                    pct(&lat, 50.0),
                );
                run.put(
                    &format!("subscriber ({name}): publish→subscriber p99 (ms)"),
                    pct(&lat, 99.0),
                );
            }
        }
        Scenario::Fanout1000 => {
            let dests = args.destinations.unwrap_or(1000);
            api.create_many(dests, c, |i| recv.url(i), &["*"]).await?;
            // Let the server settle after the creations.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = Cpu::start(server);
            let p = api.publish(0, "order.created").await?;
            recv.wait_for(dests, args.timeout.min(Duration::from_secs(120)), stall)
                .await?;
            cpu.finish(server, &mut run).await;
            let book = recv.state.book.lock().unwrap();
            let first = book.hits.iter().map(|h| h.at).min().unwrap();
            let last = book.hits.iter().map(|h| h.at).max().unwrap();
            run.put("publish latency (ms)", p.latency.as_secs_f64() * 1e3);
            run.put("deliveries received", book.hits.len() as f64);
            run.put(
                "publish → first received (ms)",
                (first - p.sent).as_secs_f64() * 1e3,
            );
            run.put(
                "publish → all received (ms)",
                (last - p.sent).as_secs_f64() * 1e3,
            );
        }
    }
    let book = recv.state.book.lock().unwrap();
    run.put("duplicate deliveries", book.duplicates as f64);
    if book.bad > 0 {
        return Err(format!("{} requests without a valid webhook-id", book.bad));
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn describe(sc: Scenario, args: &Args) -> String {
    let c = args.concurrency;
    match sc {
        Scenario::Single => format!(
            "{} events, {} destination(s), {c} concurrent publishers",
            n_or(args, 20_000),
            args.destinations.unwrap_or(1)
        ),
        Scenario::Fanout => format!(
            "{} events × {} destinations, {c} concurrent publishers",
            n_or(args, 2_000),
            args.destinations.unwrap_or(50)
        ),
        Scenario::Steady => format!(
            "{} events/s for {} s (open loop)",
            args.rate.unwrap_or(500.0),
            args.duration.unwrap_or(30.0)
        ),
        Scenario::Backlog => {
            let dead = match args.dead {
                DeadMode::Status500 => "answers 500",
                DeadMode::Refuse => "refuses connections",
                DeadMode::Control => "control: answers 204, all delivered before the load",
            };
            let settle = match args.settle {
                Some(s) => format!(" after {s} s"),
                None => String::new(),
            };
            let (rate, secs, fill) = (
                args.rate.unwrap_or(500.0),
                args.duration.unwrap_or(BACKLOG_PHASE_SECS),
                n_or(args, 100_000),
            );
            let order = if args.sequential {
                format!(
                    "healthy at {rate}/s for {secs} s, then a dead destination ({dead}) filled \
                     with {fill} events, then{settle} the same load again"
                )
            } else {
                format!(
                    "two servers, healthy at {rate}/s on each for {secs} s in 5-s turns, A B B A …; \
                     the second also has a dead destination ({dead}) filled with {fill} events \
                     before the turns{settle}"
                )
            };
            order
                + match args.writeback {
                    Writeback::Checkpoint => "; loads start after a checkpoint and `sync`",
                    Writeback::Sync => "; loads start after `sync`",
                    Writeback::None => "; nothing written back before the loads",
                }
        }
        Scenario::Live => format!(
            "{} events, 1 destination, {} concurrent publishers, 2 deliveryAttempts subscribers",
            n_or(args, 20_000),
            args.concurrency
        ),
        Scenario::Fanout1000 => format!(
            "one event to {} destinations",
            args.destinations.unwrap_or(1000)
        ),
        Scenario::Ceilings => format!(
            "the machine's ceilings, no Hookline code, {} s each",
            args.duration.unwrap_or(5.0)
        ),
        Scenario::IdleSubs => format!(
            "{} events per turn, 1 destination, {} concurrent publishers; turns without and \
             with 10 000 idle deliveryAttempts subscriptions of another tenant ({} pairs)",
            n_or(args, 20_000),
            args.concurrency,
            args.runs.max(2)
        ),
    }
}

fn print_table(sc: Scenario, kind: DbKind, args: &Args, runs: &[Run]) {
    println!();
    println!(
        "### {} · {} · {} · median of {} run(s)",
        sc.name(),
        kind.name(),
        describe(sc, args),
        runs.len()
    );
    println!();
    let mut head = format!(
        "| {:<44} | {:>9} | {:>9} | {:>9} |",
        "metric", "median", "min", "max"
    );
    for i in 0..runs.len() {
        head.push_str(&format!(" {:>9} |", format!("run {}", i + 1)));
    }
    println!("{head}");
    let mut sep = format!("|{:-<46}|{:->11}|{:->11}|{:->11}|", "", ":", ":", ":");
    for _ in 0..runs.len() {
        sep.push_str(&format!("{:->11}|", ":"));
    }
    println!("{sep}");
    for (i, (name, _)) in runs[0].rows.iter().enumerate() {
        let vals: Vec<f64> = runs
            .iter()
            .map(|r| r.rows.get(i).map(|x| x.1).unwrap_or(f64::NAN))
            .collect();
        let s = sorted(vals.iter().copied().filter(|v| !v.is_nan()).collect());
        let (med, min, max) = if s.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            let mid = s.len() / 2;
            let med = if s.len() % 2 == 1 {
                s[mid]
            } else {
                (s[mid - 1] + s[mid]) / 2.0
            };
            (med, s[0], s[s.len() - 1])
        };
        let mut line = format!(
            "| {:<44} | {:>9} | {:>9} | {:>9} |",
            name,
            fmt(med),
            fmt(min),
            fmt(max)
        );
        for v in &vals {
            line.push_str(&format!(" {:>9} |", fmt(*v)));
        }
        println!("{line}");
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn main_async(args: Args) -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!(
        "hookline load benchmark · binary {} · {} cores · load average {}",
        server_bin(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg()
    );
    let mut failures = Vec::new();
    for &kind in &args.databases {
        for &sc in &args.scenarios {
            let mut runs = Vec::new();
            for i in 0..args.runs {
                eprintln!(
                    "[{} · {}] run {}/{} …",
                    sc.name(),
                    kind.name(),
                    i + 1,
                    args.runs
                );
                let started = Instant::now();
                match run_once(sc, kind, &args).await {
                    Ok(r) => {
                        eprintln!(
                            "  done in {:.1} s (load average {})",
                            started.elapsed().as_secs_f64(),
                            loadavg()
                        );
                        runs.push(r)
                    }
                    Err(e) => {
                        eprintln!("  FAILED: {e}");
                        failures.push(format!(
                            "{} · {} run {}: {}",
                            sc.name(),
                            kind.name(),
                            i + 1,
                            e.lines().next().unwrap_or("")
                        ));
                    }
                }
            }
            if !runs.is_empty() {
                print_table(sc, kind, &args, &runs);
                print_pooled(&runs);
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} run(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        ))
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(main_async(args)) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
