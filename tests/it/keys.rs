//! Keys that seal secrets at rest: instances on one database with different keys refuse to
//! start, naming the key they lack; a rotation through the previous keys is accepted; and a
//! delivery whose destination secrets cannot be opened ends as a failure with the reason.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;

use crate::both;
use crate::harness::*;

const OTHER_KEY: &str = "a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8c1c2c3c4c5c6c7c8d1d2d3d4d5d6d7d8";

/// The id a key is named by in sealed values and messages.
fn key_id(key: &str) -> String {
    let k = hookline::crypto::parse_key(key).unwrap();
    hookline::crypto::Cipher::new(&k, &[]).key_id().to_string()
}

/// Prepares an instance on `db` (its own data dir) with `key` (None: generated) and
/// `previous`; the error text when it refuses.
async fn start_error(db: &TestDb, key: Option<&str>, previous: &[&str]) -> Option<String> {
    let peer = TestDb {
        url: db.url.clone(),
        dir: tempfile::tempdir().unwrap(),
        owned: None,
    };
    let mut cfg = test_config(&peer);
    cfg.encryption_key = key.map(String::from);
    cfg.encryption_keys_previous = previous.iter().map(|k| k.to_string()).collect();
    hookline::server::prepare(cfg)
        .await
        .err()
        .map(|e| e.to_string())
}

both!(
    an_instance_lacking_the_key_refuses_to_start,
    |backend| async move {
        let a = Server::start(backend).await;
        let (ours, theirs) = (key_id(ENCRYPTION_KEY), key_id(OTHER_KEY));
        // Before any secret exists: the first instance's key is on record all the same.
        for key in [Some(OTHER_KEY), None] {
            let err = start_error(&a.db, key, &[])
                .await
                .expect("started with another key");
            assert!(err.contains(&format!("encryption key {ours}")), "{err}");
            assert!(err.contains("HOOKLINE_ENCRYPTION_KEY"), "{err}");
            assert!(
                !err.contains(ENCRYPTION_KEY) && !err.contains(OTHER_KEY),
                "{err}"
            );
        }
        assert!(
            start_error(&a.db, Some(OTHER_KEY), &[])
                .await
                .unwrap()
                .contains(&format!("current key is {theirs}"))
        );
        // With secrets sealed, the same; the instance with the right key starts.
        let tok = a.token("acme", "admin");
        create_destination(&a, &tok, json!({"url": "http://127.0.0.1:9/hook"})).await;
        let err = start_error(&a.db, Some(OTHER_KEY), &[]).await.unwrap();
        assert!(err.contains(&format!("encryption key {ours}")), "{err}");
        assert!(
            start_error(&a.db, Some(ENCRYPTION_KEY), &[])
                .await
                .is_none()
        );
        // Rotation: the new key with the old one among the previous keys starts and re-seals;
        // from then on the old key alone is the one missing a key.
        let db = a.stop().await;
        assert!(
            start_error(&db, Some(OTHER_KEY), &[ENCRYPTION_KEY])
                .await
                .is_none()
        );
        let err = start_error(&db, Some(ENCRYPTION_KEY), &[]).await.unwrap();
        assert!(err.contains(&format!("encryption key {theirs}")), "{err}");
        assert!(start_error(&db, Some(OTHER_KEY), &[]).await.is_none());
    }
);

/// PostgreSQL: two instances with different keys starting together on an empty database —
/// exactly one of them serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_agree_on_one_key() {
    if pg_available().is_none() {
        return;
    }
    for _ in 0..2 {
        let db = TestDb::new(Backend::Postgres).await;
        // Migrated first, so that the two starts race on the key check, not on migrations.
        let migrated = hookline::db::connect(&test_config(&db)).await.unwrap();
        hookline::db::migrate(&migrated).await.unwrap();
        migrated.close(Duration::from_secs(1)).await;
        let (x, y) = tokio::join!(
            start_error(&db, Some(ENCRYPTION_KEY), &[]),
            start_error(&db, Some(OTHER_KEY), &[])
        );
        assert!(x.is_none() != y.is_none(), "{x:?} / {y:?}");
    }
}

both!(
    unopenable_destination_secret_fails_the_delivery,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "admin");
        let rx = Receiver::start().await;
        let dest = create_destination(&s, &tok, json!({"url": rx.url()})).await;
        // Sealed with a key no instance has (as when instances generated their own keys).
        let conn = sea_orm::Database::connect(&s.db.url).await.unwrap();
        let backend = conn.get_database_backend();
        let p = if backend == DbBackend::Postgres {
            ("$1", "$2")
        } else {
            ("?", "?")
        };
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE destination SET signing_secret = {} WHERE id = {}",
                p.0, p.1
            ),
            [
                "enc:v1:0badc0de:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                dest.parse::<uuid::Uuid>().unwrap().into(),
            ],
        ))
        .await
        .unwrap();
        conn.close().await.ok();
        publish(&s, &tok, "job.done", json!({"n": 1})).await;
        let d = wait_status(&s, &tok, &dest, 1, "FAILED", Duration::from_secs(15)).await;
        let why = d[0]["lastError"].as_str().unwrap();
        assert!(
            why.contains("key 0badc0de") && why.contains("HOOKLINE_ENCRYPTION_KEY"),
            "{why}"
        );
        assert_eq!(d[0]["attemptCount"], 0);
        assert!(!d[0]["completedAt"].is_null());
        // Failed for good: not claimed again, nothing sent.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let again = deliveries_of(&s, &tok, &dest).await;
        assert_eq!(
            (again[0]["status"].clone(), rx.count()),
            (json!("FAILED"), 0)
        );
    }
);
