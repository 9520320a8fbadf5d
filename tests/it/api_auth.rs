//! Authentication, scopes, secret visibility and the first-run signing key.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::both;
use crate::harness::{
    CREATE_DEST, Receiver, SECRET, Server, TestDb, eventually, publish, test_config, token,
    token_as,
};

/// `harness::create_destination`, with a URL (a closed local port) when the input has none.
async fn create_destination(s: &Server, token: &str, mut input: Value) -> String {
    if input.get("url").is_none() {
        input["url"] = json!("http://127.0.0.1:9/hook");
    }
    crate::harness::create_destination(s, token, input).await
}

const VIEWER: &str = "{ viewer { tenant subject scopes } }";
const COUNT: &str = "{ destinations { totalCount } }";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 JWT with exactly these claims, signed with `secret`.
fn jwt(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

fn claims(tenant: &str, scope: &str, exp: i64) -> Value {
    json!({"sub": "mallory", "tenant": tenant, "scope": scope, "exp": exp})
}

/// POSTs `query` with a raw `Authorization` header value (or none).
async fn raw_auth(s: &Server, authorization: Option<&str>, query: &str) -> Value {
    let mut req = s
        .http
        .post(s.url("/graphql"))
        .json(&json!({"query": query}));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap().json().await.unwrap()
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

async fn count(s: &Server, tenant: &str) -> i64 {
    s.ok(&token(tenant, "read"), COUNT, json!({})).await["destinations"]["totalCount"]
        .as_i64()
        .unwrap()
}

fn dest_input(name: &str) -> Value {
    json!({"input": {"name": name, "url": "https://example.com/hook"}})
}

both!(auth_missing_token, |backend| async move {
    let s = Server::start(backend).await;
    for q in [
        VIEWER,
        COUNT,
        "{ deliveries { totalCount } }",
        "{ events { totalCount } }",
    ] {
        let (c, e) = s.err_code(None, q, json!({})).await;
        assert_eq!(c, "UNAUTHENTICATED", "{q}: {e}");
    }
    let (c, _) = s.err_code(None, CREATE_DEST, dest_input("x")).await;
    assert_eq!(c, "UNAUTHENTICATED");
    let (c, _) = s
        .err_code(
            None,
            "mutation { publishEvent(input: {type: \"a.b\", payload: {}}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(c, "UNAUTHENTICATED");
    // Not a Bearer token, or not a JWT at all.
    let basic = format!("Basic {}", B64.encode("admin:admin"));
    for auth in [basic.as_str(), "Bearer", "Bearer not-a-jwt", "Bearer a.b.c"] {
        let r = raw_auth(&s, Some(auth), VIEWER).await;
        assert_eq!(code(&r), "UNAUTHENTICATED", "{auth}: {r}");
        assert!(r["data"].is_null(), "{r}");
    }
    // Nothing was written, and a good token works against the same server.
    assert_eq!(count(&s, "acme").await, 0);
    let v = s.ok(&token("acme", "read"), VIEWER, json!({})).await;
    assert_eq!(v["viewer"]["tenant"], "acme");
    // The raw header path accepts a proper one too (lower-case scheme as well).
    let t = token("acme", "read");
    for auth in [format!("Bearer {t}"), format!("bearer {t}")] {
        let r = raw_auth(&s, Some(&auth), VIEWER).await;
        assert_eq!(r["data"]["viewer"]["tenant"], "acme", "{r}");
    }
});

both!(auth_expired_token, |backend| async move {
    let s = Server::start(backend).await;
    // The hand-built token is accepted while valid, so only `exp` differs below.
    let good = jwt(SECRET, claims("acme", "read write", now() + 600));
    let v = s.ok(&good, VIEWER, json!({})).await;
    assert_eq!(v["viewer"]["subject"], "mallory");
    assert_eq!(v["viewer"]["tenant"], "acme");
    // Past the 5 s leeway.
    for age in [60, 3600, 86_400] {
        let expired = jwt(SECRET, claims("acme", "read write", now() - age));
        let (c, e) = s.err_code(Some(&expired), VIEWER, json!({})).await;
        assert_eq!(c, "UNAUTHENTICATED", "{e}");
        let (c, _) = s
            .err_code(Some(&expired), CREATE_DEST, dest_input("late"))
            .await;
        assert_eq!(c, "UNAUTHENTICATED");
    }
    assert_eq!(count(&s, "acme").await, 0, "an expired token wrote");
});

/// A token is refused before its `nbf` (past the same 5 s leeway as `exp`), accepted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_not_valid_yet() {
    let s = Server::start(crate::harness::Backend::Sqlite).await;
    let mut early = claims("acme", "read write", now() + 3600);
    early["nbf"] = json!(now() + 600);
    let early = jwt(SECRET, early);
    for _ in 0..2 {
        let (c, e) = s.err_code(Some(&early), VIEWER, json!({})).await;
        assert_eq!(c, "UNAUTHENTICATED", "{e}");
        assert!(e["message"].as_str().unwrap().contains("nbf"), "{e}");
    }
    let (c, _) = s
        .err_code(Some(&early), CREATE_DEST, dest_input("early"))
        .await;
    assert_eq!(c, "UNAUTHENTICATED");
    assert_eq!(count(&s, "acme").await, 0, "a token not valid yet wrote");
    // Already valid, or valid within the leeway: accepted.
    for nbf in [now() - 60, now() + 2] {
        let mut c = claims("acme", "read", now() + 3600);
        c["nbf"] = json!(nbf);
        let v = s.ok(&jwt(SECRET, c), VIEWER, json!({})).await;
        assert_eq!(v["viewer"]["tenant"], "acme");
    }
}

/// A configured HS256 secret shorter than 32 bytes stops the server before it serves, with
/// a message naming the setting and the minimum; 32 bytes are enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_jwt_secret_refused_at_start() {
    let db = TestDb::new(crate::harness::Backend::Sqlite).await;
    let mut cfg = test_config(&db);
    cfg.jwt_secret = Some("x".repeat(31));
    let err = match hookline::server::prepare(cfg.clone()).await {
        Ok(_) => panic!("a 31-byte JWT secret was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("HOOKLINE_JWT_SECRET") && err.contains("31 bytes") && err.contains("32"),
        "{err}"
    );
    assert!(
        !err.contains(&"x".repeat(31)),
        "the secret is in the message: {err}"
    );
    cfg.jwt_secret = Some("x".repeat(32));
    let s = Server::start_on(db, cfg).await;
    let t = hookline::auth::JwtKeys::hs256("x".repeat(32).as_bytes())
        .mint(
            "acme",
            "ops",
            hookline::auth::Scopes::parse("read"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        s.ok(&t, VIEWER, json!({})).await["viewer"]["tenant"],
        "acme"
    );
}

both!(auth_forged_token, |backend| async move {
    let s = Server::start(backend).await;
    let exp = now() + 600;
    // Signed with another key.
    let other = jwt(
        "another-secret-another-secret-12345",
        claims("acme", "admin", exp),
    );
    // A valid token whose payload was edited afterwards (tenant and scope changed).
    let valid = jwt(SECRET, claims("acme", "read", exp));
    assert!(s.gql(Some(&valid), VIEWER, json!({})).await["errors"].is_null());
    let parts: Vec<&str> = valid.split('.').collect();
    let mut body: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    body["tenant"] = json!("victim");
    body["scope"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(body.to_string()),
        parts[2]
    );
    // An unsigned token ("alg": "none").
    let none_header = B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let none_body = B64URL.encode(claims("acme", "admin", exp).to_string());
    let unsigned = format!("{none_header}.{none_body}.");
    // Correctly signed but without a tenant, or with an empty one.
    let no_tenant = jwt(SECRET, json!({"sub": "x", "scope": "admin", "exp": exp}));
    let empty_tenant = jwt(SECRET, claims("", "admin", exp));
    // Correctly signed but never expiring, or with another HMAC algorithm than HS256.
    let no_exp = jwt(
        SECRET,
        json!({"sub": "x", "tenant": "acme", "scope": "admin"}),
    );
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims("acme", "admin", exp),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (what, t) in [
        ("other key", &other),
        ("tampered", &tampered),
        ("alg none", &unsigned),
        ("no tenant", &no_tenant),
        ("empty tenant", &empty_tenant),
        ("no exp", &no_exp),
        ("HS384", &hs384),
    ] {
        let (c, e) = s.err_code(Some(t), VIEWER, json!({})).await;
        assert_eq!(c, "UNAUTHENTICATED", "{what}: {e}");
        let (c, e) = s.err_code(Some(t), CREATE_DEST, dest_input(what)).await;
        assert_eq!(c, "UNAUTHENTICATED", "{what}: {e}");
    }
    assert_eq!(count(&s, "acme").await, 0);
    assert_eq!(count(&s, "victim").await, 0);
});

both!(auth_wrong_scope, |backend| async move {
    let s = Server::start(backend).await;
    let (read, publish_only, write) = (
        token("acme", "read"),
        token("acme", "publish"),
        token("acme", "read write"),
    );
    let id = create_destination(&s, &write, json!({"name": "existing"})).await;
    // read cannot write.
    let (c, e) = s
        .err_code(Some(&read), CREATE_DEST, dest_input("new"))
        .await;
    assert_eq!(c, "FORBIDDEN", "{e}");
    for (q, vars) in [
        (
            "mutation($id: ID!) { updateDestination(id: $id, input: {name: \"renamed\"}) { id } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { deleteDestination(id: $id) }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { disableDestination(id: $id) { id } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { rotateDestinationSecret(id: $id) { id } }",
            json!({"id": id}),
        ),
        (
            "mutation($id: ID!) { createEventSubscription(input: {destinationId: $id, eventTypes: [\"a.b\"]}) { id } }",
            json!({"id": id}),
        ),
        (
            "mutation { publishEvent(input: {type: \"a.b\", payload: {}}) { id } }",
            json!({}),
        ),
    ] {
        let (c, e) = s.err_code(Some(&read), q, vars).await;
        assert_eq!(c, "FORBIDDEN", "{q}: {e}");
    }
    // publish cannot read.
    for (q, vars) in [
        (COUNT, json!({})),
        (
            "query($id: ID!) { destination(id: $id) { id } }",
            json!({"id": id}),
        ),
        (
            "query($id: ID!) { eventSubscriptions(destinationId: $id) { id } }",
            json!({"id": id}),
        ),
        ("{ events { totalCount } }", json!({})),
        ("{ deliveries { totalCount } }", json!({})),
    ] {
        let (c, e) = s.err_code(Some(&publish_only), q, vars).await;
        assert_eq!(c, "FORBIDDEN", "{q}: {e}");
    }
    // ...but can publish; read can read.
    publish(&s, &publish_only, "a.b", json!({})).await;
    let d = s
        .ok(
            &read,
            "query($id: ID!) { destination(id: $id) { name version enabled eventSubscriptions { eventTypes } } }",
            json!({"id": id}),
        )
        .await;
    // None of the refused mutations changed anything.
    assert_eq!(
        d["destination"],
        json!({"name": "existing", "version": 1, "enabled": true,
               "eventSubscriptions": [{"eventTypes": ["*"]}]})
    );
    assert_eq!(count(&s, "acme").await, 1);
});

both!(auth_admin_implies_all, |backend| async move {
    let s = Server::start(backend).await;
    let admin = token("acme", "admin");
    let v = s.ok(&admin, VIEWER, json!({})).await;
    assert_eq!(
        v["viewer"],
        json!({"tenant": "acme", "subject": "tester", "scopes": ["admin"]})
    );
    let d = s
        .ok(
            &admin,
            CREATE_DEST,
            json!({"input": {"name": "a", "url": "https://example.com/h",
                   "headers": [{"name": "X-Key", "value": "k1"}]}}),
        )
        .await;
    let id = d["createDestination"]["id"].as_str().unwrap();
    assert!(
        d["createDestination"]["signingSecret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let r = s
        .ok(
            &admin,
            "query($id: ID!) { destination(id: $id) { signingSecret headers { name value } }
               destinations { totalCount } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(r["destinations"]["totalCount"], 1);
    // Header values are write-only, even for admin.
    assert_eq!(
        r["destination"]["headers"],
        json!([{"name": "X-Key", "value": null}])
    );
    publish(&s, &admin, "a.b", json!({"n": 1})).await;
    let r = s.ok(&admin, "{ events { totalCount } }", json!({})).await;
    assert_eq!(r["events"]["totalCount"], 1);
    let r = s
        .ok(
            &admin,
            "mutation($id: ID!) { updateDestination(id: $id, input: {name: \"b\"}) { name version } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(r["updateDestination"], json!({"name": "b", "version": 2}));
    // Admin is admin of its own tenant only.
    let other = token("other", "admin");
    let r = s
        .ok(
            &other,
            "query($id: ID!) { destination(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert!(r["destination"].is_null());
});

const EVERYTHING: &str =
    "query($id: ID!) { destination(id: $id) { ...All } destinations { nodes { ...All } } }
fragment All on Destination {
  id name displayName description url enabled status signingScheme signatureHeader
  previousSecretExpiresAt httpAuth headers { name value } timeoutMs payloadFormat batchSize
  batchWindowMs rateLimitPerSec maxInFlight ordered retrySchedule maxAttempts discardAfterSecs
  lossy tlsVerify version createdAt updatedAt updatedBy deletedAt
  failureDetails { consecutiveFailures lastSuccessfulAt lastFailedAt lastFailedStatusCode
                   lastFailedReason nextAttemptAt }
  eventSubscriptions { id destinationId eventTypes eventsPolicy minLevel payloadFilter enabled
                       createdAt updatedAt }
  stats { totalAttempts successfulAttempts failedAttempts successRate averageResponseTimeMs
          p95ResponseTimeMs p50ResponseTimeMs pendingDeliveries lastSuccessAt lastFailureAt }
  deliveries(first: 10) { totalCount edges { node { id status lastError lastStatusCode
      attempts { id responseStatus responseBody errorKind errorMessage } } } }
}";

/// The full response text of [`EVERYTHING`] (plus `signingSecret` when `with_secret`).
async fn everything(s: &Server, token: &str, id: &str, with_secret: bool) -> String {
    let q = if with_secret {
        EVERYTHING.replace("signatureHeader", "signatureHeader signingSecret")
    } else {
        EVERYTHING.to_string()
    };
    let r = s.gql(Some(token), &q, json!({"id": id})).await;
    assert!(r.get("errors").is_none(), "{r:#}");
    assert_eq!(r["data"]["destination"]["id"], id, "{r:#}");
    r.to_string()
}

both!(secret_visibility, |backend| async move {
    let s = Server::start(backend).await;
    let rx = Receiver::start().await;
    let (write, read) = (token("acme", "read write"), token("acme", "read"));
    const PASSWORD: &str = "hunter2-secret";
    const BEARER: &str = "tok-very-secret-123";
    let created = s
        .gql(
            Some(&write),
            "mutation($input: CreateDestinationInput!) { createDestination(input: $input) {
               id signingSecret httpAuth headers { name value } } }",
            json!({"input": {"name": "creds", "url": rx.url(),
                   "httpAuth": {"basic": {"username": "alice", "password": PASSWORD}},
                   "headers": [{"name": "X-Api-Key", "value": "key-123"}]}}),
        )
        .await;
    assert!(created.get("errors").is_none(), "{created:#}");
    assert!(!created.to_string().contains(PASSWORD));
    let d = &created["data"]["createDestination"];
    let id = d["id"].as_str().unwrap().to_string();
    let secret = d["signingSecret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(d["httpAuth"], "BASIC");
    assert_eq!(d["headers"], json!([{"name": "X-Api-Key", "value": null}]));
    assert!(!created.to_string().contains("key-123"));

    // The password is stored and used: the receiver gets it...
    publish(&s, &token("acme", "publish"), "a.b", json!({})).await;
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    let basic = format!("Basic {}", B64.encode(format!("alice:{PASSWORD}")));
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some(basic.as_str())
    );
    // ...wait for the attempt to be recorded so its fields are part of the check.
    eventually(Duration::from_secs(5), "delivery recorded", || async {
        let r = s
            .ok(
                &read,
                "query($id: ID!) { destination(id: $id) { deliveries { nodes { status } } } }",
                json!({"id": id}),
            )
            .await;
        (r["destination"]["deliveries"]["nodes"][0]["status"] == "SUCCEEDED").then_some(())
    })
    .await;

    // ...but never returned, whoever asks and however.
    let b64_password = B64.encode(format!("alice:{PASSWORD}"));
    for (t, with_secret) in [(&write, true), (&read, false), (&write, false)] {
        let text = everything(&s, t, &id, with_secret).await;
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
        assert!(!text.contains(&b64_password), "password leaked: {text}");
        assert!(text.contains("\"httpAuth\":\"BASIC\""), "{text}");
        assert_eq!(text.contains(&secret), with_secret, "{text}");
    }

    // signingSecret needs write: FORBIDDEN on that field for read.
    let r = s
        .gql(
            Some(&read),
            "query($id: ID!) { destination(id: $id) { id signingSecret } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r:#}");
    assert_eq!(
        r["errors"][0]["path"],
        json!(["destination", "signingSecret"])
    );
    assert!(!r.to_string().contains(&secret));
    let r = s
        .gql(
            Some(&read),
            "{ destinations { nodes { signingSecret } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r:#}");
    assert!(!r.to_string().contains(&secret));

    // Header values are write-only: null whatever the scope.
    let q = "query($id: ID!) { destination(id: $id) { headers { name value } } }";
    for t in [&read, &write] {
        let r = s.ok(t, q, json!({"id": id})).await;
        assert_eq!(
            r["destination"]["headers"],
            json!([{"name": "X-Api-Key", "value": null}])
        );
    }

    // Bearer tokens are as hidden as passwords, including in the mutation's own answer.
    let r = s
        .gql(
            Some(&write),
            "mutation($id: ID!, $input: UpdateDestinationInput!) {
               updateDestination(id: $id, input: $input) { httpAuth version } }",
            json!({"id": id, "input": {"httpAuth": {"bearer": {"token": BEARER}}}}),
        )
        .await;
    assert!(!r.to_string().contains(BEARER), "{r}");
    assert_eq!(r["data"]["updateDestination"]["httpAuth"], "BEARER", "{r}");
    for t in [&write, &read] {
        let text = everything(&s, t, &id, false).await;
        assert!(!text.contains(BEARER), "bearer token leaked: {text}");
        assert!(!text.contains(PASSWORD), "old password leaked: {text}");
        assert!(text.contains("\"httpAuth\":\"BEARER\""), "{text}");
    }
    // `null` removes authentication.
    let r = s
        .ok(
            &write,
            "mutation($id: ID!) { updateDestination(id: $id, input: {httpAuth: null}) { httpAuth } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(r["updateDestination"]["httpAuth"], "NONE");
});

both!(first_run_key_persists, |backend| async move {
    let db = TestDb::new(backend).await;
    let dir = db.dir.path().to_path_buf();
    let key_path = dir.join("jwt-secret");
    assert!(!key_path.exists());
    let mut cfg = test_config(&db);
    cfg.jwt_secret = None;
    let s = Server::start_on(db, cfg.clone()).await;

    let key = std::fs::read_to_string(&key_path).expect("generated key file");
    assert!(key.trim().len() >= 32, "key too short: {key:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {:o}", mode & 0o777);
    }
    let t = hookline::auth::JwtKeys::hs256(key.trim().as_bytes())
        .mint(
            "acme",
            "ops",
            hookline::auth::Scopes::parse("admin"),
            Duration::from_secs(600),
        )
        .unwrap();
    let v = s.ok(&t, VIEWER, json!({})).await;
    assert_eq!(v["viewer"]["subject"], "ops");
    // The generated key is the one in use, not the harness secret.
    let (c, _) = s
        .err_code(Some(&token_as("acme", "ops", "admin")), VIEWER, json!({}))
        .await;
    assert_eq!(c, "UNAUTHENTICATED");
    create_destination(&s, &t, json!({"name": "survives"})).await;

    let db = s.stop().await;
    let s = Server::start_on(db, cfg).await;
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        key,
        "key regenerated"
    );
    let v = s.ok(&t, VIEWER, json!({})).await;
    assert_eq!(v["viewer"]["tenant"], "acme");
    let r = s
        .ok(&t, "{ destinations { nodes { name } } }", json!({}))
        .await;
    assert_eq!(r["destinations"]["nodes"], json!([{"name": "survives"}]));
});
