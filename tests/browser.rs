//! The dashboard and the GraphiQL page in a real browser: Debian's Chromium, headless, driven
//! by `e2e/dashboard.mjs` (playwright-core) against a real server and a real receiver; and
//! the standard introspection query read back by graphql-js (`e2e/introspection.mjs`).
//!
//! Needs `node`, `/usr/bin/chromium` and `e2e/node_modules` (`npm ci` in `e2e/`); `.ci/run`
//! installs them. Without them a test is skipped with a message, unless `CI` is set, where
//! it fails. `HOOKLINE_UPDATE_SCREENSHOTS=1` writes the screenshots to `docs/screenshots/`
//! (the README's); otherwise they go to `target/e2e-screenshots/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use hookline::auth::{JwtKeys, Scopes};
use hookline::config::Config;
use serde_json::{Value, json};

const SECRET: &str = "browser-test-secret-browser-test-secret";
const TENANT: &str = "acme";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("HOOKLINE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing for a test that runs `node` with `e2e/node_modules/<packages>` (and
/// Chromium when `browser`), if anything.
fn missing_tools(browser: bool, packages: &[&str]) -> Vec<String> {
    let mut missing = vec![];
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (Node.js 20+)".to_string());
    }
    if browser && !chromium().exists() {
        missing.push(format!(
            "{} (apt-get install chromium chromium-driver)",
            chromium().display()
        ));
    }
    for p in packages {
        if !repo()
            .join(format!("e2e/node_modules/{p}/package.json"))
            .exists()
        {
            missing.push(format!("e2e/node_modules/{p} (run `npm ci` in e2e/)"));
        }
    }
    missing
}

/// Whether the test can run; without its tools it is skipped with a message, unless `CI` is
/// set, where it fails.
fn tools_present(test: &str, missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test} needs: {}. .ci/run installs them.",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "CI is set: {msg}");
    // Straight to stderr, past the test harness's capture, so the skip is seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {msg}");
    false
}

/// The real server on a port of its own, over a fresh SQLite file, ready.
struct TestServer {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        hookline::server::install_crypto();
        let data = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::with_data_dir(data.path());
        cfg.jwt_secret = Some(SECRET.into());
        cfg.allow_private_targets = true;
        cfg.dispatch.poll_interval = Duration::from_millis(200);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(hookline::server::run(cfg, listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TestServer {
            base,
            stop,
            task,
            _data: data,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

fn mint(scopes: &str) -> String {
    JwtKeys::hs256(SECRET.as_bytes())
        .mint(
            TENANT,
            "browser-test",
            Scopes::parse(scopes),
            Duration::from_secs(3600),
        )
        .expect("mint token")
}

/// Runs `node e2e/<script> <args>` in `e2e/`, printing its output; asserts it succeeded.
async fn node(script: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("e2e").join(script))
        .args(args)
        .current_dir(repo().join("e2e"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start node");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("e2e/{script} took more than 5 minutes"))
        .expect("node output");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "e2e/{script} failed ({}); its output is above",
        out.status
    );
}

/// A receiver on 127.0.0.1 that answers 200 with a small JSON body and counts requests
/// carrying a Standard Webhooks signature.
async fn start_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            if headers.contains_key("webhook-signature") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                r#"{"received":true,"by":"browser-test receiver"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hooks/browser"), hits)
}

async fn gql(base: &str, token: &str, query: &str, vars: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": vars }))
        .send()
        .await
        .expect("graphql request")
        .json()
        .await
        .expect("graphql json")
}

/// graphql-js' standard introspection query (every option set) is answered, and graphql-js
/// builds from the answer the schema `schema.graphql` describes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_builds_a_client_schema() {
    let test = "introspection_builds_a_client_schema";
    if !tools_present(test, missing_tools(false, &["graphql"])) {
        return;
    }
    let server = TestServer::start().await;
    let schema = repo().join("schema.graphql");
    let schema = schema.to_str().expect("UTF-8 path");
    node(
        "introspection.mjs",
        &[&server.base, &mint("read"), schema],
        &[],
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    if !tools_present(
        "dashboard_in_chromium",
        missing_tools(true, &["playwright-core"]),
    ) {
        return;
    }
    let server = TestServer::start().await;
    let base = server.base.clone();
    let (receiver, hits) = start_receiver().await;
    let token = mint("read write publish");

    let shots = if std::env::var_os("HOOKLINE_UPDATE_SCREENSHOTS").is_some() {
        repo().join("docs/screenshots")
    } else {
        repo().join("target/e2e-screenshots")
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    node(
        "dashboard.mjs",
        &[&base, &token, &receiver],
        &[
            ("SCREENSHOT_DIR", shots.as_os_str()),
            ("CHROMIUM", chromium().as_os_str()),
        ],
    )
    .await;

    // What the browser saw, checked from outside it as well.
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "the receiver got {} signed requests, expected the published event and the test event",
        hits.load(Ordering::SeqCst)
    );
    let list = gql(
        &base,
        &token,
        "{ destinations(first: 10) { nodes { name enabled status } } }",
        json!({}),
    )
    .await;
    let nodes = list["data"]["destinations"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let d = nodes
        .iter()
        .find(|d| d["name"] == "orders-webhook")
        .unwrap_or_else(|| panic!("the browser created no orders-webhook: {list:#}"));
    assert_eq!(d["enabled"], false, "{d:#}");
    assert_eq!(d["status"], "DISABLED", "{d:#}");
    for page in [
        "signin",
        "destinations",
        "destinations-dark",
        "destination-form",
        "destination",
        "live",
        "graphiql",
    ] {
        let png = shots.join(format!("{page}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} missing or blank", png.display());
    }

    server.stop().await;
}
