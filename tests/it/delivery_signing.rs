//! What a receiver sees: signatures (checked with independent code), payload formats,
//! authentication and custom headers.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::both;
use crate::harness::*;

const T: Duration = Duration::from_secs(15);

fn hmac_sha256(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn verify_sw(secret: &str, r: &Received) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)?.verify(&r.body, &r.headers)
}

both!(standard_webhooks_signature, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let rx = Receiver::start().await;
    let created = s
        .ok(
            &tok,
            CREATE_DEST,
            json!({"input": {"name": "sw", "url": rx.url()}}),
        )
        .await;
    let dest = created["createDestination"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The secret as a client reads it back through the API.
    let secret = destination_state(&s, &tok, &dest).await["signingSecret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");

    let payload = json!({"user": {"id": 42, "email": "a@example.com"}, "tags": ["x", "ü"]});
    let ev = publish_input(
        &s,
        &tok,
        json!({"type": "user.created", "payload": payload, "level": "WARN"}),
    )
    .await;
    let ev_id = ev["id"].as_str().unwrap();
    let got = rx.wait_for(1, T).await;
    let r = &got[0];

    verify_sw(&secret, r).expect("signature verifies with the destination's secret");
    // A different secret must not verify: the check above means something.
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(verify_sw(other, r).is_err());
    assert_eq!(r.header("webhook-id").as_deref(), Some(ev_id));
    let sig = r.header("webhook-signature").unwrap();
    assert_eq!(sig.split(' ').count(), 1, "{sig}");
    assert!(sig.starts_with("v1,"), "{sig}");
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let ua = r.header("user-agent").unwrap();
    assert!(ua.starts_with("hookline/"), "{ua}");

    let body = r.json();
    assert_eq!(body["id"], ev_id);
    assert_eq!(body["type"], "user.created");
    assert_eq!(body["level"], "WARN");
    assert_eq!(body["data"], payload);
    let stamp = body["timestamp"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(stamp).expect("RFC 3339 timestamp");
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["data", "id", "level", "timestamp", "type"]);
});

both!(
    standard_webhooks_rotation_signs_with_both,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = token("t1", "read write publish");
        let rx = Receiver::start().await;
        let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
        let old = destination_state(&s, &tok, &dest).await["signingSecret"]
            .as_str()
            .unwrap()
            .to_string();
        let rotated = s
            .ok(
                &tok,
                "mutation($id: ID!) { rotateDestinationSecret(id: $id, graceSeconds: 3600) {
               signingSecret previousSecretExpiresAt } }",
                json!({"id": dest}),
            )
            .await;
        let new = rotated["rotateDestinationSecret"]["signingSecret"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(new, old);
        assert!(!rotated["rotateDestinationSecret"]["previousSecretExpiresAt"].is_null());

        let ev = publish(&s, &tok, "order.paid", json!({"n": 1})).await;
        let got = rx.wait_for(1, T).await;
        let r = &got[0];
        assert_eq!(r.header("webhook-id").as_deref(), Some(ev.as_str()));
        let sig = r.header("webhook-signature").unwrap();
        assert_eq!(
            sig.split(' ').count(),
            2,
            "two signatures during grace: {sig}"
        );
        verify_sw(&new, r).expect("verifies with the new secret");
        verify_sw(&old, r).expect("verifies with the old secret during the grace");
    }
);

both!(hmac_schemes_and_raw_format, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let (rx_hex, rx_b64, rx_raw) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let hex_secret = "om-secret-0123456789";
    let b64_secret = "stalwart-secret-abcdef";
    create_destination(
        &s,
        &tok,
        json!({"url": rx_hex.url(), "signingScheme": "HMAC_SHA256_HEX",
               "signatureHeader": "X-OM-Signature", "signingSecret": hex_secret}),
    )
    .await;
    create_destination(
        &s,
        &tok,
        json!({"url": rx_b64.url(), "signingScheme": "HMAC_SHA256_BASE64",
               "signatureHeader": "X-Signature", "signingSecret": b64_secret}),
    )
    .await;
    create_destination(
        &s,
        &tok,
        json!({"url": rx_raw.url(), "payloadFormat": "RAW"}),
    )
    .await;

    // A Highlight-style alert: what the receiver must get back verbatim in RAW.
    let payload = json!({
        "Event": "ERROR_ALERT", "ProjectId": "1", "Count": 3,
        "Nested": {"a": [1, 2.5, null, true], "s": "quote \" and ü"}
    });
    let ev = publish(&s, &tok, "alert.fired", payload.clone()).await;

    let r = rx_hex.wait_for(1, T).await.remove(0);
    let want = format!(
        "sha256={}",
        hex::encode(hmac_sha256(hex_secret.as_bytes(), &r.body))
    );
    assert_eq!(r.header("x-om-signature"), Some(want));
    assert!(r.header("webhook-signature").is_none());
    assert_eq!(r.json()["id"], ev.as_str());

    let r = rx_b64.wait_for(1, T).await.remove(0);
    let want = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha256(b64_secret.as_bytes(), &r.body));
    assert_eq!(r.header("x-signature"), Some(want));
    assert_eq!(r.json()["data"], payload);

    let r = rx_raw.wait_for(1, T).await.remove(0);
    let body: Value = r.json();
    assert_eq!(body, payload, "RAW sends the payload itself, no envelope");
    assert!(body.get("data").is_none() && body.get("id").is_none());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    // Still signed (Standard Webhooks by default), over the raw bytes.
    assert_eq!(r.header("webhook-id").as_deref(), Some(ev.as_str()));
});

both!(http_auth_and_custom_headers, |backend| async move {
    let s = Server::start(backend).await;
    let tok = token("t1", "read write publish");
    let (rx_basic, rx_bearer) = (Receiver::start().await, Receiver::start().await);
    create_destination(
        &s,
        &tok,
        json!({"url": rx_basic.url(),
               "httpAuth": {"basic": {"username": "alice", "password": "s3cret:pw"}},
               "headers": [{"name": "X-Tenant", "value": "acme"},
                           {"name": "X-Api-Key", "value": "k-123"}]}),
    )
    .await;
    create_destination(
        &s,
        &tok,
        json!({"url": rx_bearer.url(), "httpAuth": {"bearer": {"token": "tok-xyz"}}}),
    )
    .await;
    publish(&s, &tok, "user.updated", json!({})).await;

    let r = rx_basic.wait_for(1, T).await.remove(0);
    let creds = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:pw");
    assert_eq!(r.header("authorization"), Some(format!("Basic {creds}")));
    assert_eq!(r.header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(r.header("x-api-key").as_deref(), Some("k-123"));

    let r = rx_bearer.wait_for(1, T).await.remove(0);
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer tok-xyz"));
    assert!(r.header("x-tenant").is_none());
});
