//! The dashboard and the GraphiQL page in a real browser: Debian's Chromium, headless, driven
//! by `e2e/dashboard.mjs` (playwright-core) against a real server and a real receiver.
//!
//! Needs `node`, `/usr/bin/chromium` and `e2e/node_modules` (`npm ci` in `e2e/`); `.ci/run`
//! installs them. Without them the test is skipped with a message, unless `CI` is set, where
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

/// What is missing for the browser test, if anything.
fn missing_tools() -> Vec<String> {
    let mut missing = vec![];
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (Node.js 20+)".to_string());
    }
    if !chromium().exists() {
        missing.push(format!(
            "{} (apt-get install chromium chromium-driver)",
            chromium().display()
        ));
    }
    if !repo()
        .join("e2e/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("e2e/node_modules/playwright-core (run `npm ci` in e2e/)".to_string());
    }
    missing
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let msg = format!(
            "browser test needs: {}. .ci/run installs them.",
            missing.join(", ")
        );
        assert!(std::env::var_os("CI").is_none(), "CI is set: {msg}");
        // Straight to stderr, past the test harness's capture, so the skip is seen.
        let _ = writeln!(std::io::stderr(), "SKIPPED dashboard_in_chromium: {msg}");
        return;
    }
    hookline::server::install_crypto();

    // The real server on a port of its own, over a fresh SQLite file.
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
    let server = tokio::spawn(hookline::server::run(cfg, listener, async {
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

    let (receiver, hits) = start_receiver().await;
    let token = JwtKeys::hs256(SECRET.as_bytes())
        .mint(
            TENANT,
            "browser-test",
            Scopes::parse("read write publish"),
            Duration::from_secs(3600),
        )
        .expect("mint token");

    let shots = if std::env::var_os("HOOKLINE_UPDATE_SCREENSHOTS").is_some() {
        repo().join("docs/screenshots")
    } else {
        repo().join("target/e2e-screenshots")
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let child = tokio::process::Command::new("node")
        .arg(repo().join("e2e/dashboard.mjs"))
        .arg(&base)
        .arg(&token)
        .arg(&receiver)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", chromium())
        .current_dir(repo().join("e2e"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the browser test took more than 5 minutes")
        .expect("node output");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "e2e/dashboard.mjs failed ({}); its output is above",
        out.status
    );

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

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}
