//! Seeded random inputs over the GraphQL surface and the pure parsers: no panic, no 5xx, no
//! INTERNAL error, and a refused mutation writes nothing. The seed is printed, so a failure
//! reproduces with `HOOKLINE_FUZZ_SEED=<seed>`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::harness::*;

fn seed() -> u64 {
    std::env::var("HOOKLINE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// Strings that tend to break parsers: empty, huge, control characters, unicode, dots,
/// wildcards, schemes, header syntax.
fn nasty_string(r: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "",
        "a",
        ".",
        "*",
        "..",
        "user.*",
        "http://",
        "https://",
        "127.0.0.1",
        "[::1]",
        ":",
        "\r\n",
        "\0",
        "é",
        "💥",
        "%00",
        " ",
        "\t",
        "whsec_",
        "====",
        "@",
        "/",
        "?",
        "#",
        "x-hdr",
        "host",
        "a.b.c",
        "**",
        "javascript:",
        "ftp://x",
        "\u{202e}",
        "''",
        "\"",
    ];
    let n = r.random_range(0..8);
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(PIECES[r.random_range(0..PIECES.len())]);
    }
    if r.random_ratio(1, 20) {
        s.push_str(&"x".repeat(r.random_range(100..5000)));
    }
    s
}

fn nasty_value(r: &mut StdRng, depth: u32) -> Value {
    match r.random_range(0..8) {
        0 => Value::Null,
        1 => json!(r.random::<bool>()),
        2 => json!(r.random_range(-2_000_000_000i64..2_000_000_000)),
        3 => json!([r.random_range(-5i32..100_000), r.random_range(-5i32..10)]),
        4 if depth < 2 => {
            let mut m = serde_json::Map::new();
            for _ in 0..r.random_range(0..4) {
                m.insert(nasty_string(r), nasty_value(r, depth + 1));
            }
            Value::Object(m)
        }
        _ => json!(nasty_string(r)),
    }
}

fn random_input(r: &mut StdRng) -> Value {
    let fields = [
        "name",
        "url",
        "displayName",
        "timeoutMs",
        "batchSize",
        "batchWindowMs",
        "retrySchedule",
        "maxAttempts",
        "rateLimitPerSec",
        "maxInFlight",
        "signingSecret",
        "signatureHeader",
        "eventTypes",
        "headers",
        "discardAfterSecs",
    ];
    let mut input =
        json!({"name": format!("f{}", r.random::<u32>()), "url": "https://example.com/h"});
    for _ in 0..r.random_range(1..4) {
        let f = fields[r.random_range(0..fields.len())];
        let v = match f {
            "headers" => json!([{"name": nasty_string(r), "value": nasty_string(r)}]),
            "eventTypes" => json!([nasty_string(r)]),
            _ => nasty_value(r, 0),
        };
        input[f] = v;
    }
    input
}

/// Sends one operation; asserts no 5xx and no INTERNAL among its errors; returns the body.
async fn post_checked(s: &Server, t: &str, query: &str, input: &Value, seed: u64) -> Value {
    let resp = s
        .http
        .post(s.url("/graphql"))
        .bearer_auth(t)
        .json(&json!({"query": query, "variables": {"input": input}}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().as_u16() < 500,
        "5xx for {input:#} (seed {seed})"
    );
    let body: Value = resp.json().await.unwrap();
    for e in body["errors"].as_array().into_iter().flatten() {
        assert_ne!(
            e["extensions"]["code"], "INTERNAL",
            "internal error for {input:#}: {e:#} (seed {seed})"
        );
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_mutations_never_crash_or_half_write() {
    let seed = seed();
    eprintln!("fuzz seed {seed} (HOOKLINE_FUZZ_SEED)");
    let mut r = StdRng::seed_from_u64(seed);
    let s = Server::start(Backend::Sqlite).await;
    let t = token("fuzz", "admin");
    async fn count(s: &Server, t: &str) -> i64 {
        s.ok(t, "{ destinations(first: 1) { totalCount } }", json!({}))
            .await["destinations"]["totalCount"]
            .as_i64()
            .unwrap()
    }
    let mut expected = count(&s, &t).await;
    for _ in 0..150 {
        let input = random_input(&mut r);
        let body = post_checked(&s, &t, CREATE_DEST, &input, seed).await;
        if body.get("errors").is_none() {
            expected += 1;
        }
        assert_eq!(
            count(&s, &t).await,
            expected,
            "partial write for {input:#} (seed {seed})"
        );
    }
    // Random publishes too: types, levels and payload shapes.
    for _ in 0..100 {
        let input = json!({"type": nasty_string(&mut r), "payload": nasty_value(&mut r, 0)});
        post_checked(&s, &t, PUBLISH, &input, seed).await;
    }
    // Garbage bodies and queries.
    for _ in 0..50 {
        let q = nasty_string(&mut r);
        let resp = s
            .http
            .post(s.url("/graphql"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(if r.random() {
                q.clone()
            } else {
                json!({"query": q}).to_string()
            })
            .send()
            .await
            .unwrap();
        assert!(resp.status().as_u16() < 500, "5xx for {q:?} (seed {seed})");
    }
}

#[test]
fn pure_parsers_never_panic() {
    use hookline::dispatch::{guard, retry, signing};
    use hookline::service::{matching, validate};
    let seed = seed();
    eprintln!("fuzz seed {seed} (HOOKLINE_FUZZ_SEED)");
    let mut r = StdRng::seed_from_u64(seed);
    let now = chrono::Utc::now();
    for _ in 0..5000 {
        let a = nasty_string(&mut r);
        let b = nasty_string(&mut r);
        let _ = matching::pattern_matches(&a, &b);
        let _ = validate::event_type_pattern(&a);
        let _ = validate::event_type(&a);
        let _ = validate::url(&a);
        let _ = validate::header(&a, &b);
        let _ = validate::name(&a);
        let _ = retry::parse_retry_after(&a, now);
        if let Ok(u) = url::Url::parse(&a) {
            let _ = guard::check_url(&u, false);
        }
        for scheme in [
            signing::SigningScheme::StandardWebhooks,
            signing::SigningScheme::HmacSha256Hex,
            signing::SigningScheme::HmacSha256Base64,
        ] {
            let _ = signing::validate_secret(scheme, &a);
            let secret = signing::Secret::new(a.clone());
            let _ = signing::sign(scheme, Some(&b), &[&secret], &b, 0, a.as_bytes());
        }
        let v = nasty_value(&mut r, 0);
        let _ = matching::validate_payload_filter(&v);
        let _ = matching::payload_filter_accepts(Some(&v), &nasty_value(&mut r, 0));
    }
}
