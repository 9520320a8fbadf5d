//! Faults survived: hostile receivers (resets, hangs, slow and huge bodies, redirects),
//! database connections killed under load, graceful hand-over between instances, and
//! secrets that never reach the logs.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::both;
use crate::harness::*;

/// A raw TCP "receiver" that reads each request's head and then does `act` with the socket.
async fn raw_receiver<F, Fut>(act: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let act = std::sync::Arc::new(act);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let act = act.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read until the end of the headers (the body is small and follows at once).
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                act(sock).await;
            });
        }
    });
    format!("http://{addr}/hook")
}

async fn one_attempt(s: &Server, t: &str, url: &str, extra: Value) -> Value {
    let mut input = json!({"url": url, "retrySchedule": [3600], "maxAttempts": 2});
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    let dest = create_destination(s, t, input).await;
    publish(s, t, "fault.test", json!({"x": 1})).await;
    let ds = wait_deliveries(s, t, &dest, 1, Duration::from_secs(20), |d| {
        d["attemptCount"].as_i64() == Some(1) && d["status"] != "DELIVERING"
    })
    .await;
    ds[0]["attempts"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_classified_and_survived() {
    let s = Server::start(Backend::Sqlite).await;
    let t = token("faults", "admin");

    // Connection reset before any answer: a failure to retry, not a crash.
    let url = raw_receiver(|sock| async move {
        // SO_LINGER 0 turns the close into a reset (blocking on drop is harmless here).
        #[allow(deprecated)]
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(sock);
    })
    .await;
    let a = one_attempt(&s, &t, &url, json!({})).await;
    assert_eq!(a["outcome"], "FAILURE", "{a:#}");
    assert!(
        matches!(
            a["errorKind"].as_str(),
            Some("CONNECT" | "INVALID_RESPONSE")
        ),
        "{a:#}"
    );

    // A receiver that never answers: TIMEOUT after timeoutMs.
    let url = raw_receiver(|sock| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(sock);
    })
    .await;
    let a = one_attempt(&s, &t, &url, json!({"timeoutMs": 1000})).await;
    assert_eq!(a["errorKind"], "TIMEOUT", "{a:#}");

    // Headers at once, then a body that trickles past the timeout: also TIMEOUT.
    let url = raw_receiver(|mut sock| async move {
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            .await;
        for _ in 0..40 {
            if sock.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let a = one_attempt(&s, &t, &url, json!({"timeoutMs": 1000})).await;
    assert_eq!(a["errorKind"], "TIMEOUT", "{a:#}");

    // A 64 MiB answer: success, and only the first 4 KiB is kept.
    let url = raw_receiver(|mut sock| async move {
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n")
            .await;
        let chunk = vec![b'y'; 65536];
        for _ in 0..1024 {
            if sock.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let dest = create_destination(&s, &t, json!({"url": url})).await;
    publish(&s, &t, "fault.big", json!({})).await;
    let ds = wait_status(&s, &t, &dest, 1, "SUCCEEDED", Duration::from_secs(20)).await;
    let body = s
        .ok(
            &t,
            "query($id: ID!) { delivery(id: $id) { attempts { responseBody } } }",
            json!({"id": ds[0]["id"]}),
        )
        .await;
    let kept = body["delivery"]["attempts"][0]["responseBody"]
        .as_str()
        .unwrap()
        .len();
    assert!(kept <= 4096 && kept > 0, "kept {kept} bytes");

    // A redirect is not followed: the attempt fails with its status and the target of the
    // redirect hears nothing.
    let target = Receiver::start().await;
    let location = target.url();
    let url = raw_receiver(move |mut sock| {
        let location = location.clone();
        async move {
            let resp =
                format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    })
    .await;
    let a = one_attempt(&s, &t, &url, json!({})).await;
    assert_eq!(a["responseStatus"], 302, "{a:#}");
    assert_eq!(a["errorKind"], "HTTP_STATUS", "{a:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.count(), 0, "redirect was followed");

    // After all that the server is healthy and delivers normally.
    let ok = Receiver::start().await;
    let dest = create_destination(&s, &t, json!({"url": ok.url()})).await;
    publish(&s, &t, "fault.after", json!({})).await;
    wait_status(&s, &t, &dest, 1, "SUCCEEDED", Duration::from_secs(10)).await;
    let ready = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert!(ready.status().is_success());
}

// A receiver answering with NUL bytes and invalid UTF-8: PostgreSQL text cannot hold NUL, and
// an attempt it refused would block every later completion (the writer retries a failed
// flush). The attempt is recorded with the bytes replaced, and deliveries go on.
both!(
    nul_bytes_in_a_response_body_are_recorded,
    |backend| async move {
        let s = Server::start(backend).await;
        let t = token("faults-nul", "admin");
        let url = raw_receiver(|mut sock| async move {
            let body = b"ok\0then\xffend";
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body).await;
        })
        .await;
        let dest = create_destination(&s, &t, json!({"url": url})).await;
        publish(&s, &t, "fault.nul", json!({})).await;
        let ds = wait_status(&s, &t, &dest, 1, "SUCCEEDED", Duration::from_secs(20)).await;
        let got = s
            .ok(
                &t,
                "query($id: ID!) { delivery(id: $id) { attempts { responseBody } } }",
                json!({"id": ds[0]["id"]}),
            )
            .await;
        assert_eq!(
            got["delivery"]["attempts"][0]["responseBody"], "ok\u{FFFD}then\u{FFFD}end",
            "{got:#}"
        );
        // The writer is not stuck: a later delivery completes too.
        let ok = Receiver::start().await;
        let dest = create_destination(&s, &t, json!({"url": ok.url()})).await;
        publish(&s, &t, "fault.after", json!({})).await;
        wait_status(&s, &t, &dest, 1, "SUCCEEDED", Duration::from_secs(10)).await;
    }
);

// 5xx bursts: a receiver failing for a while then recovering gets everything, once per
// success.
both!(five_xx_burst_then_recovery, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("burst", "admin");
    let r = Receiver::start().await;
    r.status(503);
    let dest = create_destination(
        &s,
        &t,
        json!({"url": r.url(), "retrySchedule": [1], "maxAttempts": 20}),
    )
    .await;
    for i in 0..20 {
        publish(&s, &t, "burst.e", json!({"i": i})).await;
    }
    // Five failures in a row open the circuit; the rest wait for its probe.
    r.wait_for(5, Duration::from_secs(10)).await;
    r.status(200);
    wait_status(&s, &t, &dest, 20, "SUCCEEDED", Duration::from_secs(30)).await;
    let ok: std::collections::HashSet<String> = r
        .received()
        .iter()
        .skip(5)
        .filter_map(|x| x.header("webhook-id"))
        .collect();
    assert_eq!(ok.len(), 20, "every event arrived after the recovery");
});

/// Killing every database connection mid-run: the service recovers on its own and every
/// accepted event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_run() {
    if pg_available().is_none() {
        return;
    }
    // A claim whose answer dies with its connection stays leased until the lease runs out:
    // a short lease keeps that recovery inside the test's patience.
    let s = Server::start_with(Backend::Postgres, |c| {
        c.dispatch.lease = Duration::from_secs(5);
    })
    .await;
    let t = token("pgkill", "admin");
    let r = Receiver::start().await;
    let dest = create_destination(&s, &t, json!({"url": r.url(), "retrySchedule": [1]})).await;
    let name =
        s.db.url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string();
    let admin = sea_orm::Database::connect(std::env::var("HOOKLINE_TEST_PG_URL").unwrap())
        .await
        .unwrap();
    let mut accepted = 0;
    for round in 0..3 {
        for i in 0..20 {
            let r = s
                .gql(
                    Some(&t),
                    PUBLISH,
                    json!({"input": {"type": "pg.kill", "payload": {"round": round, "i": i}}}),
                )
                .await;
            if r.get("errors").is_none() {
                accepted += 1;
            }
        }
        use sea_orm::ConnectionTrait;
        admin
            .execute_unprepared(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
            .unwrap();
    }
    assert!(accepted > 0);
    // An outage of this database alone (new connections refused, existing ones killed):
    // /readyz says so, then recovers by itself once the database is back.
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();
    let unready = eventually(
        Duration::from_secs(30),
        "readyz 503 during the outage",
        || async {
            let r = s.http.get(s.url("/readyz")).send().await.ok()?;
            (r.status().as_u16() == 503).then_some(r.text().await.ok()?)
        },
    )
    .await;
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .unwrap();
    assert!(unready.contains("\"ready\":false"), "{unready}");
    // Ready again without anyone's help.
    eventually(Duration::from_secs(20), "readyz after the kill", || async {
        let r = s.http.get(s.url("/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // Every accepted event is delivered (at least once).
    eventually(
        Duration::from_secs(30),
        "all accepted events delivered",
        || async {
            let ids: std::collections::HashSet<String> = r
                .received()
                .iter()
                .filter_map(|x| x.header("webhook-id"))
                .collect();
            (ids.len() >= accepted).then_some(())
        },
    )
    .await;
    let all = s
        .ok(
            &t,
            "query($f: DeliveryFilter) { deliveries(first: 100, filter: $f) { totalCount } }",
            json!({"f": {"destinationId": dest}}),
        )
        .await;
    assert_eq!(all["deliveries"]["totalCount"], accepted);
}

/// Graceful shutdown of one instance hands its claimed-but-unsent deliveries to the other at
/// once, not after the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_leases_to_a_peer() {
    if pg_available().is_none() {
        return;
    }
    let a = Server::start_with(Backend::Postgres, |c| {
        c.dispatch.lease = Duration::from_secs(120);
    })
    .await;
    let t = token("handover", "admin");
    let r = Receiver::start().await;
    r.set(Behavior {
        delay: Duration::from_millis(500),
        ..Default::default()
    });
    let dest = create_destination(&a, &t, json!({"url": r.url(), "maxInFlight": 2})).await;
    for i in 0..30 {
        publish(&a, &t, "handover.e", json!({"i": i})).await;
    }
    // A has claimed work and is sending slowly; B starts, then A stops gracefully.
    r.wait_for(2, Duration::from_secs(10)).await;
    let b = a
        .start_peer(|c| c.dispatch.lease = Duration::from_secs(120))
        .await;
    let started = std::time::Instant::now();
    // The stopped server hands back its database, which b still uses: keep it to the end.
    let db = a.stop().await;
    wait_status(&b, &t, &dest, 30, "SUCCEEDED", Duration::from_secs(40)).await;
    // With 120 s leases, finishing well before that proves the release.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    drop(b);
    drop(db);
}

/// Signing secrets, passwords and bearer tokens never appear in logs, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
        .arg("serve")
        .env("HOOKLINE_DATA_DIR", dir.path())
        .env("HOOKLINE_JWT_SECRET", SECRET)
        .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
        .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true")
        .env("HOOKLINE_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "child ready", || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let t = token("logs", "admin");
    let gql = |q: &'static str, v: Value| {
        let http = http.clone();
        let t = t.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/graphql"))
                .bearer_auth(t)
                .json(&json!({"query": q, "variables": v}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let r = Receiver::start().await;
    r.status(500);
    let secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTI0Ynl0ZXM=";
    let made = gql(
        "mutation($i: CreateDestinationInput!) { createDestination(input: $i) { id } }",
        json!({"i": {"name": "logged", "url": r.url(), "signingSecret": secret,
                     "httpAuth": {"basic": {"username": "u", "password": "pw-hunter2-xyz"}},
                     "retrySchedule": [1], "maxAttempts": 2}}),
    )
    .await;
    assert!(made.get("errors").is_none(), "{made:#}");
    let bearer = gql(
        "mutation($i: CreateDestinationInput!) { createDestination(input: $i) { id } }",
        json!({"i": {"name": "bearer", "url": r.url(),
                     "httpAuth": {"bearer": {"token": "tok-sekrit-98765"}},
                     "retrySchedule": [1], "maxAttempts": 2}}),
    )
    .await;
    assert!(bearer.get("errors").is_none(), "{bearer:#}");
    // A refused input carrying a secret must not echo it either.
    let refused = gql(
        "mutation($i: CreateDestinationInput!) { createDestination(input: $i) { id } }",
        json!({"i": {"name": "bad", "url": r.url(), "signingSecret": "whsec_!!not-base64-pw-777"}}),
    )
    .await;
    assert!(refused.get("errors").is_some());
    assert!(!refused.to_string().contains("not-base64-pw-777"));
    gql(
        "mutation { publishEvent(input: {type: \"log.test\", payload: {a: 1}}) { id } }",
        json!({}),
    )
    .await;
    r.wait_for(4, Duration::from_secs(15)).await;
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.contains("attempt"), "debug logs were captured: {text}");
    for needle in [
        secret,
        "c2VjcmV0LXNpZ25pbmcta2V5LTI0Ynl0ZXM",
        "pw-hunter2-xyz",
        "tok-sekrit-98765",
        "not-base64-pw-777",
        SECRET,
    ] {
        assert!(!text.contains(needle), "log leaks {needle:?}");
    }
}

/// SQLite under concurrent publishers and readers never shows "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrency_never_surfaces_locks() {
    let s = std::sync::Arc::new(Server::start(Backend::Sqlite).await);
    let t = token("locks", "admin");
    let r = Receiver::start().await;
    create_destination(&s, &t, json!({"url": r.url()})).await;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (s, t) = (s.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let p = s
                    .gql(
                        Some(&t),
                        PUBLISH,
                        json!({"input": {"type": "lock.e", "payload": {"w": w, "i": i}}}),
                    )
                    .await;
                assert!(p.get("errors").is_none(), "{p:#}");
                let q = s
                    .gql(
                        Some(&t),
                        "{ deliveries(first: 20) { totalCount nodes { status attempts { id } } } }",
                        json!({}),
                    )
                    .await;
                assert!(q.get("errors").is_none(), "{q:#}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    r.wait_for(400, Duration::from_secs(30)).await;
}
