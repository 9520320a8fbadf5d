//! The real binary, SIGKILLed while it delivers, restarted on the same database: every event
//! whose publish was answered is delivered in the end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

struct Child {
    proc: tokio::process::Child,
    base: String,
    log: PathBuf,
}

impl Child {
    async fn spawn(db: &TestDb, n: usize) -> Child {
        // A free port: bound, read, released for the child to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = db.dir.path().join(format!("child-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let proc = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .arg("serve")
            .env("HOOKLINE_DATABASE_URL", &db.url)
            .env("HOOKLINE_DATA_DIR", db.dir.path())
            .env("HOOKLINE_JWT_SECRET", SECRET)
            .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
            .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true")
            // PostgreSQL: a dead instance's leases must lapse quickly for the test.
            .env("HOOKLINE_LEASE_SECS", "2")
            .env("HOOKLINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn hookline");
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

    async fn gql(&self, http: &reqwest::Client, token: &str, query: &str, vars: Value) -> Value {
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
    async fn kill(mut self) {
        self.proc.kill().await.expect("kill child");
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

both!(sigkill_mid_delivery_loses_nothing, |backend| async move {
    let db = TestDb::new(backend).await;
    let tok = token("t1", "read write publish");
    hookline::server::install_crypto();
    let http = reqwest::Client::new();
    let rx = Receiver::start().await;
    rx.set(Behavior {
        delay: Duration::from_millis(300),
        ..Behavior::default()
    });

    let child = Child::spawn(&db, 1).await;
    let created = child
        .gql(
            &http,
            &tok,
            CREATE_DEST,
            json!({"input": {"name": "crash", "url": rx.url(), "maxInFlight": 10,
                             "retrySchedule": [1]}}),
        )
        .await;
    assert!(created.get("errors").is_none(), "{created:#}");

    const N: usize = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (http, tok, url) = (http.clone(), tok.clone(), format!("{}/graphql", child.base));
        tasks.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(tok)
                .json(&json!({"query": PUBLISH,
                              "variables": {"input": {"type": "crash.item", "payload": {"i": i}}}}))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["data"]["publishEvent"]["id"].as_str().map(String::from)
        });
    }
    // Kill once deliveries are well under way (about 10 are in flight at any time).
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.count() < 15 {
        assert!(
            Instant::now() < deadline,
            "deliveries never started:\n{}",
            read_log(&child.log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log1 = child.log.clone();
    child.kill().await;
    let at_kill = rx.count();
    let mut accepted = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(id) = r.unwrap() {
            accepted.insert(id);
        }
    }
    assert!(
        accepted.len() >= N / 2,
        "only {} publishes answered",
        accepted.len()
    );
    assert!(
        at_kill < accepted.len(),
        "the kill came after everything was delivered ({at_kill})"
    );

    let child = Child::spawn(&db, 2).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let got: HashSet<String> = rx
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .collect();
        let missing: Vec<&String> = accepted.difference(&got).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted events never delivered (e.g. {:?}); killed at {at_kill}\n\
             first run:\n{}\nsecond run:\n{}",
            missing.len(),
            missing.first(),
            read_log(&log1),
            read_log(&child.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await;
});
