//! The real binary, SIGKILLed while it delivers, restarted on the same database: every event
//! whose publish was answered is delivered in the end.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

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
