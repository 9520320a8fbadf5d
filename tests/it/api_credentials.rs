//! Credentials stay with the receiver they were given for: moving a destination to another
//! origin needs its HTTP auth and header values given again, and header values are sealed at
//! rest and never returned.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::*;

const T: Duration = Duration::from_secs(15);

const UPDATE: &str = "mutation($id: ID!, $input: UpdateDestinationInput!) {
  updateDestination(id: $id, input: $input) { url version httpAuth headers { name } } }";

const STATE: &str = "query($id: ID!) { destination(id: $id) {
  url version httpAuth signingSecret headers { name } } }";

async fn state(s: &Server, t: &str, id: &str) -> Value {
    s.ok(t, STATE, json!({"id": id})).await["destination"].clone()
}

/// Every header value the receiver got, as one string.
fn all_headers(rx: &Receiver) -> String {
    rx.received()
        .iter()
        .map(|r| format!("{:?}", r.headers))
        .collect()
}

both!(credentials_stay_with_their_origin, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "read write publish");
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let id = create_destination(
        &s,
        &t,
        json!({"url": a.url(),
               "httpAuth": {"basic": {"username": "alice", "password": "pw-old-origin"}},
               "headers": [{"name": "X-Api-Key", "value": "key-old-origin"}]}),
    )
    .await;
    let before = state(&s, &t, &id).await;

    // Another origin without the credentials: refused, naming what is missing, nothing written.
    let b_url = b.url();
    for (input, field) in [
        (json!({"url": b_url}), "httpAuth"),
        (json!({"url": b_url, "httpAuth": null}), "headers"),
        (
            json!({"url": b_url, "headers": [{"name": "X-Api-Key", "value": "k"}]}),
            "httpAuth",
        ),
    ] {
        let r = s
            .gql(Some(&t), UPDATE, json!({"id": id, "input": input}))
            .await;
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{r:#}"
        );
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{r:#}");
        assert!(
            r["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("origin"),
            "{r:#}"
        );
        assert_eq!(state(&s, &t, &id).await, before);
    }

    // Another path on the same origin keeps them.
    let a_other = format!("http://{}/other", a.addr);
    let d = s
        .ok(&t, UPDATE, json!({"id": id, "input": {"url": a_other}}))
        .await;
    assert_eq!(d["updateDestination"]["httpAuth"], "BASIC");
    publish(&s, &t, "cred.same", json!({})).await;
    let got = a.wait_for(1, T).await;
    let basic = "Basic YWxpY2U6cHctb2xkLW9yaWdpbg=="; // alice:pw-old-origin
    assert_eq!(got[0].header("authorization").as_deref(), Some(basic));
    assert_eq!(
        got[0].header("x-api-key").as_deref(),
        Some("key-old-origin")
    );

    // Given again, the move is accepted; the new origin gets only the new credentials, and
    // the signing secret (the receiver's verification key, not a credential) stays.
    let d = s
        .ok(
            &t,
            UPDATE,
            json!({"id": id, "input": {"url": b_url,
                   "httpAuth": {"bearer": {"token": "tok-new-origin"}},
                   "headers": [{"name": "X-Api-Key", "value": "key-new-origin"}]}}),
        )
        .await;
    assert_eq!(d["updateDestination"]["httpAuth"], "BEARER");
    let after = state(&s, &t, &id).await;
    assert_eq!(after["signingSecret"], before["signingSecret"]);
    publish(&s, &t, "cred.moved", json!({})).await;
    let got = b.wait_for(1, T).await;
    assert_eq!(
        got[0].header("authorization").as_deref(),
        Some("Bearer tok-new-origin")
    );
    assert_eq!(
        got[0].header("x-api-key").as_deref(),
        Some("key-new-origin")
    );

    // Removing them explicitly is a move too: the old origin then gets none.
    s.ok(
        &t,
        UPDATE,
        json!({"id": id, "input": {"url": a.url(), "httpAuth": null, "headers": []}}),
    )
    .await;
    publish(&s, &t, "cred.bare", json!({})).await;
    let got = a.wait_for(2, T).await;
    assert!(
        got[1].header("authorization").is_none(),
        "{:?}",
        got[1].headers
    );
    assert!(got[1].header("x-api-key").is_none(), "{:?}", got[1].headers);
    let seen_by_b = all_headers(&b);
    assert!(
        !seen_by_b.contains("YWxpY2U6cHctb2xkLW9yaWdpbg"),
        "{seen_by_b}"
    );
    assert!(!seen_by_b.contains("key-old-origin"), "{seen_by_b}");
});

/// The destination's `headers` column as stored.
async fn stored_headers(db: &TestDb) -> String {
    use sea_orm::ConnectionTrait;
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT headers FROM destination",
        ))
        .await
        .unwrap()
        .unwrap();
    let v = row.try_get("", "headers").unwrap();
    conn.close().await.ok();
    v
}

both!(header_values_are_sealed_at_rest, |backend| async move {
    let s = Server::start(backend).await;
    let t = token("acme", "admin");
    let rx = Receiver::start().await;
    const VALUE: &str = "key-at-rest-123";
    create_destination(
        &s,
        &t,
        json!({"url": rx.url(), "headers": [{"name": "X-Api-Key", "value": VALUE}]}),
    )
    .await;
    let stored = stored_headers(&s.db).await;
    assert!(
        stored.contains("X-Api-Key"),
        "names stay readable: {stored}"
    );
    assert!(stored.contains("enc:v1:"), "{stored}");
    assert!(!stored.contains(VALUE), "{stored}");
    let r = s
        .ok(
            &t,
            "{ destinations { nodes { headers { name value } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r["destinations"]["nodes"][0]["headers"],
        json!([{"name": "X-Api-Key", "value": null}])
    );

    // A row holding its values in the clear, as rows written before sealing do: sealed at the
    // next start, and still delivered with the same value.
    let db = s.stop().await;
    {
        use sea_orm::ConnectionTrait;
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        conn.execute_unprepared(
            r#"UPDATE destination SET headers = '[{"name":"X-Legacy","value":"legacy-plain-456"}]'"#,
        )
        .await
        .unwrap();
        conn.close().await.ok();
    }
    let cfg = test_config(&db);
    let s = Server::start_on(db, cfg).await;
    let stored = stored_headers(&s.db).await;
    assert!(
        stored.contains("X-Legacy") && stored.contains("enc:v1:"),
        "{stored}"
    );
    assert!(!stored.contains("legacy-plain-456"), "{stored}");
    publish(&s, &t, "legacy.row", json!({})).await;
    let got = rx.wait_for(1, T).await;
    assert_eq!(
        got[0].header("x-legacy").as_deref(),
        Some("legacy-plain-456")
    );
    assert!(got[0].header("x-api-key").is_none());
});
