//! Dashboard numbers: `Destination.stats` and `deliveryMetrics` agree with the attempts that
//! were actually made.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use hookline::dispatch::rollup::Histogram;
use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a DateTime"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap()
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

const STATS: &str = "query($d: ID!, $p: ID!, $before: DateTime!) {
  d: destination(id: $d) {
    stats { totalAttempts successfulAttempts failedAttempts successRate averageResponseTimeMs
            p50ResponseTimeMs p95ResponseTimeMs pendingDeliveries lastSuccessAt lastFailureAt }
    before: stats(until: $before) { totalAttempts successRate averageResponseTimeMs p95ResponseTimeMs }
  }
  p: destination(id: $p) {
    stats { totalAttempts failedAttempts successRate pendingDeliveries lastFailureAt }
  }
  deliveries(first: 100, filter: {destinationId: $d}) {
    edges { node { status attempts { outcome durationMs startedAt } } }
  }
}";

const METRICS: &str = "query($d: ID!, $since: DateTime!, $until: DateTime) {
  now: deliveryMetrics(destinationId: $d, since: $since, bucket: MINUTE) { ...P }
  bounded: deliveryMetrics(destinationId: $d, since: $since, until: $until, bucket: MINUTE) { ...P }
  hourly: deliveryMetrics(destinationId: $d, since: $since, until: $until, bucket: HOUR) { ...P }
}
fragment P on MetricsPoint { start attempts successes failures p50LatencyMs p95LatencyMs }";

// 3 successes and 2 failures: the statistics and the chart buckets say exactly that.
both!(stats_and_metrics_match_the_attempts, |backend| async move {
    let s = Server::start(backend).await;
    let tok = s.token("acme", "read write publish");
    let before = Utc::now() - TimeDelta::minutes(2);
    let r = Receiver::start().await;
    let d = create_destination(
        &s,
        &tok,
        json!({"url": r.url(), "maxAttempts": 1, "eventTypes": ["work.*"]}),
    )
    .await;
    // A destination with a delivery still waiting for its retry.
    let waiting = Receiver::start().await;
    waiting.status(503);
    let p = create_destination(
        &s,
        &tok,
        json!({"url": waiting.url(), "retrySchedule": [3600], "eventTypes": ["later.*"]}),
    )
    .await;

    r.set(Behavior {
        delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    for i in 0..3 {
        publish(&s, &tok, "work.done", json!({"n": i})).await;
        r.wait_for(i + 1, Duration::from_secs(20)).await;
    }
    r.set(Behavior {
        status: 500,
        delay: Duration::from_millis(5),
        ..Behavior::default()
    });
    for i in 3..5 {
        publish(&s, &tok, "work.done", json!({"n": i})).await;
        r.wait_for(i + 1, Duration::from_secs(20)).await;
    }
    publish(&s, &tok, "later.maybe", json!({})).await;
    waiting.wait_for(1, Duration::from_secs(20)).await;

    let vars = json!({"d": d, "p": p, "before": before.to_rfc3339()});
    let data = eventually(
        Duration::from_secs(20),
        "five finished attempts",
        || async {
            let data = s.ok(&tok, STATS, vars.clone()).await;
            let edges = data["deliveries"]["edges"].as_array().unwrap();
            let finished = edges.len() == 5
                && edges.iter().all(|e| {
                    e["node"]["attempts"].as_array().unwrap().len() == 1
                        && ["SUCCEEDED", "FAILED"].contains(&e["node"]["status"].as_str().unwrap())
                })
                && data["p"]["stats"]["totalAttempts"] == 1
            // The destination's health is written just after its attempts.
            && data["p"]["stats"]["lastFailureAt"].is_string()
            && data["d"]["stats"]["lastFailureAt"].is_string();
            finished.then_some(data)
        },
    )
    .await;

    let attempts: Vec<Value> = data["deliveries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["attempts"][0].clone())
        .collect();
    let durations: Vec<i64> = attempts
        .iter()
        .map(|a| a["durationMs"].as_i64().unwrap())
        .collect();
    let successes = attempts
        .iter()
        .filter(|a| a["outcome"] == "SUCCESS")
        .count();
    assert_eq!(successes, 3);

    let st = &data["d"]["stats"];
    assert_eq!(st["totalAttempts"], 5, "{st}");
    assert_eq!(st["successfulAttempts"], 3, "{st}");
    assert_eq!(st["failedAttempts"], 2, "{st}");
    assert!(close(&st["successRate"], 0.6), "{st}");
    let mean = durations.iter().sum::<i64>() as f64 / 5.0;
    assert!(
        close(&st["averageResponseTimeMs"], mean),
        "{st} vs {durations:?}"
    );
    let mut h = Histogram::default();
    for ms in &durations {
        h.add(*ms);
    }
    assert!(
        close(&st["p95ResponseTimeMs"], h.quantile(0.95).unwrap()),
        "{st} vs {durations:?}"
    );
    assert!(
        close(&st["p50ResponseTimeMs"], h.quantile(0.5).unwrap()),
        "{st} vs {durations:?}"
    );
    // The successes waited 30 ms at the receiver: the slowest attempt bounds the p95 below.
    assert!(st["p95ResponseTimeMs"].as_f64().unwrap() >= 25.0, "{st}");
    assert_eq!(st["pendingDeliveries"], 0, "{st}");
    assert!(
        time(&st["lastFailureAt"]) >= time(&st["lastSuccessAt"]),
        "{st}"
    );

    // A window before anything happened is empty, with no rates invented.
    let b = &data["d"]["before"];
    assert_eq!(b["totalAttempts"], 0, "{b}");
    assert!(
        b["successRate"].is_null() && b["averageResponseTimeMs"].is_null(),
        "{b}"
    );
    assert!(b["p95ResponseTimeMs"].is_null(), "{b}");

    // The waiting destination: one failure, its delivery still pending.
    let ps = &data["p"]["stats"];
    assert_eq!(ps["totalAttempts"], 1, "{ps}");
    assert_eq!(ps["failedAttempts"], 1, "{ps}");
    assert!(close(&ps["successRate"], 0.0), "{ps}");
    assert_eq!(ps["pendingDeliveries"], 1, "{ps}");
    assert!(ps["lastFailureAt"].is_string(), "{ps}");

    // Chart buckets: per minute they hold exactly the attempts started in that minute.
    let mut per_minute: BTreeMap<DateTime<Utc>, (i64, i64)> = BTreeMap::new();
    for a in &attempts {
        let e = per_minute.entry(minute(time(&a["startedAt"]))).or_default();
        if a["outcome"] == "SUCCESS" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let until = Utc::now() + TimeDelta::minutes(2);
    let m = s
        .ok(
            &tok,
            METRICS,
            json!({"d": d, "since": before.to_rfc3339(), "until": until.to_rfc3339()}),
        )
        .await;
    for name in ["now", "bounded", "hourly"] {
        let points = m[name].as_array().unwrap();
        assert!(!points.is_empty(), "{name}: {m}");
        let (mut n, mut ok, mut bad) = (0, 0, 0);
        for pt in points {
            let (a, sc, f) = (
                pt["attempts"].as_i64().unwrap(),
                pt["successes"].as_i64().unwrap(),
                pt["failures"].as_i64().unwrap(),
            );
            assert_eq!(a, sc + f, "{name}: {pt}");
            assert_eq!(pt["p95LatencyMs"].is_null(), a == 0, "{name}: {pt}");
            assert_eq!(pt["p50LatencyMs"].is_null(), a == 0, "{name}: {pt}");
            (n, ok, bad) = (n + a, ok + sc, bad + f);
        }
        assert_eq!((n, ok, bad), (5, 3, 2), "{name}: {points:#?}");
        if name == "hourly" {
            continue;
        }
        // Consecutive whole minutes from the start of the window, none missing.
        let starts: Vec<DateTime<Utc>> = points.iter().map(|p| time(&p["start"])).collect();
        assert_eq!(starts[0], minute(before), "{name}");
        for w in starts.windows(2) {
            assert_eq!(w[1] - w[0], TimeDelta::minutes(1), "{name}: {starts:?}");
        }
        for pt in points {
            let want = per_minute
                .get(&time(&pt["start"]))
                .copied()
                .unwrap_or_default();
            let got = (
                pt["successes"].as_i64().unwrap(),
                pt["failures"].as_i64().unwrap(),
            );
            assert_eq!(got, want, "{name}: bucket {pt}");
        }
    }
});
