//! Parked deliveries (a failing or disabled destination's, waiting with no time): how they are
//! found again — the recovery sweep, the probe's claim, releases, discards and pending counts —
//! on both databases, and on SQLite from each destination's mark (`service::parked`, migration 7).

use std::time::Duration;

use serde_json::json;

use crate::both;
use crate::harness::*;
use crate::plans::{Plan, count_nodes, explain, rows_read};

const T: Duration = Duration::from_secs(15);

/// A migrated database with one destination and no server running, and a connection to it.
async fn one_destination_stopped(backend: Backend) -> (TestDb, hookline::db::Db, uuid::Uuid) {
    let s = Server::start(backend).await;
    let tok = s.token("acme", "admin");
    let dest = create_destination(&s, &tok, json!({"url": "http://127.0.0.1:9/"}))
        .await
        .parse()
        .unwrap();
    let db = s.stop().await;
    let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
    (db, conn, dest)
}

// The sweep that catches parks racing a circuit's recovery: it makes due the parked deliveries
// of a destination that is no longer failing, and of an ordered one; it leaves a failing
// destination's parked deliveries alone, and deliveries that merely wait for a retry. It runs
// every 5 s beside a failing destination's backlog, so on PostgreSQL it must read at most one
// parked delivery per destination that has any, with statistics or without (a correlated
// `EXISTS` form reads a failing destination's whole parked backlog on every sweep once the
// planner's statistics are stale). The probe's claim of one parked delivery is held to the same.
both!(
    sweep_unparks_only_recovered_destinations,
    |backend| async move {
        use hookline::dispatch::claim;
        use sea_orm::{ConnectionTrait, DbBackend};

        let s = Server::start(backend).await;
        let tok = s.token("acme", "admin");
        let rx = Receiver::start().await;
        rx.status(500);
        let mut dests = Vec::new();
        for ordered in [false, false, false, true] {
            let input = json!({"url": rx.url(), "retrySchedule": [3600], "maxAttempts": 5,
                           "ordered": ordered});
            dests.push(create_destination(&s, &tok, input).await);
        }
        for i in 0..3 {
            publish(&s, &tok, "job.done", json!({"i": i})).await;
        }
        for d in &dests[..3] {
            wait_status(&s, &tok, d, 3, "AWAITING_RETRY", T).await;
        }
        // The ordered destination's head waits for its retry; the two behind it wait their turn.
        wait_deliveries(&s, &tok, &dests[3], 3, T, |d| {
            d["status"] == "PENDING" || (d["status"] == "AWAITING_RETRY" && d["attemptCount"] == 1)
        })
        .await;
        let db = s.stop().await;
        let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
        let w = &conn.write;
        let be = w.get_database_backend();
        let id = |i: usize| -> uuid::Uuid { dests[i].parse().unwrap() };
        let exec = |sql: &'static str, values: Vec<sea_orm::Value>| async move {
            w.execute_raw(hookline::db::raw(be, sql, values))
                .await
                .unwrap();
        };
        // 0: recovered (ACTIVE) with parked deliveries; 1: failing, parked; 2: ACTIVE, waiting for
        // retries an hour away; 3: ordered and failing, parked.
        for (i, status) in [(0, "ACTIVE"), (1, "FAILING"), (2, "ACTIVE"), (3, "FAILING")] {
            exec(
                "UPDATE destination SET status = $1 WHERE id = $2",
                vec![status.into(), id(i).into()],
            )
            .await;
        }
        for i in [0, 1, 3] {
            exec(
                "UPDATE delivery SET next_attempt_at = NULL WHERE destination_id = $1",
                vec![id(i).into()],
            )
            .await;
        }
        if be == DbBackend::Sqlite {
            // What parks on SQLite also lowers the destination's mark (`service::parked`).
            exec(
                "UPDATE destination SET parked_from = (SELECT MIN(p.id) FROM delivery AS p \
                 WHERE p.destination_id = destination.id AND p.next_attempt_at IS NULL \
                 AND p.completed_at IS NULL)",
                vec![],
            )
            .await;
        }
        if be == DbBackend::Postgres {
            // History stored before the backlog: finished deliveries of another destination.
            exec(
                "INSERT INTO delivery (id, tenant_id, event_id, destination_id, event_type, \
                 status, attempt_count, created_at, completed_at) SELECT gen_random_uuid(), \
                 tenant_id, event_id, destination_id, event_type, 'SUCCEEDED', 1, created_at, \
                 CURRENT_TIMESTAMP FROM delivery, generate_series(1, 2000) \
                 WHERE destination_id = $1",
                vec![id(2).into()],
            )
            .await;
            // A failing destination with a backlog worth the name.
            exec(
            "INSERT INTO delivery (id, tenant_id, event_id, destination_id, event_type, status, \
             attempt_count, created_at) SELECT gen_random_uuid(), tenant_id, event_id, \
             destination_id, event_type, 'PENDING', 0, created_at FROM delivery, \
             generate_series(1, 2000) WHERE destination_id = $1",
            vec![id(1).into()],
        )
        .await;
        }
        let sql = claim::parked_destinations_sql(be);
        let check_plan = |parked_dests: f64| {
            let sql = sql.clone();
            async move {
                match explain(w, &sql, vec![]).await {
                    Plan::Pg(plan) => {
                        // One probe per such destination and a last one that finds none; each
                        // yields at most one row (PostgreSQL rounds rows per loop up to 1).
                        let read = rows_read(&plan, "delivery");
                        assert!(
                            read <= parked_dests + 1.0,
                            "the sweep read {read} delivery rows for {parked_dests} destinations \
                             with parked deliveries: {plan:#}"
                        );
                    }
                    // The marked destinations only, through their partial index; no delivery
                    // row read at all.
                    Plan::Sqlite(steps) => assert_eq!(
                        steps,
                        ["SCAN d USING INDEX idx_destination_parked"],
                        "{steps:?}"
                    ),
                }
            }
        };
        // Statistics from when the table was small (none at all on a fresh database), then fresh.
        check_plan(3.0).await;
        if be == DbBackend::Postgres {
            exec("ANALYZE delivery", vec![]).await;
            check_plan(3.0).await;
        }

        assert_eq!(claim::unpark_recovered(w).await.unwrap(), 6);
        let count = |sql: &'static str, values: Vec<sea_orm::Value>| async move {
            let row = w
                .query_one_raw(hookline::db::raw(be, sql, values))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        };
        let parked = "SELECT COUNT(*) FROM delivery WHERE destination_id = $1 \
                  AND next_attempt_at IS NULL AND completed_at IS NULL";
        let failing_backlog = if be == DbBackend::Postgres { 6003 } else { 3 };
        let parked_of = |i: usize| count(parked, vec![id(i).into()]);
        assert_eq!(parked_of(0).await, 0, "recovered: unparked");
        assert_eq!(parked_of(1).await, failing_backlog, "failing: still parked");
        assert_eq!(parked_of(3).await, 0, "ordered: unparked");
        let later =
            "SELECT COUNT(*) FROM delivery WHERE destination_id = $1 AND next_attempt_at > $2";
        let in_half_an_hour = chrono::Utc::now() + chrono::TimeDelta::minutes(30);
        assert_eq!(
            count(later, vec![id(2).into(), in_half_an_hour.into()]).await,
            3,
            "waiting deliveries keep their retry time"
        );
        // Nothing left to unpark; the failing destination's backlog is still not read.
        check_plan(1.0).await;
        assert_eq!(claim::unpark_recovered(w).await.unwrap(), 0);

        // The probe's claim takes one parked delivery of its destination through
        // `idx_delivery_parked` (on SQLite, from the destination's mark). With statistics showing the failing destination's rows as
        // many, a plain `LIMIT 1` form becomes a sequential scan, which reads whatever history
        // is stored before the first parked row.
        let lease = chrono::Utc::now() + chrono::TimeDelta::minutes(1);
        let claim_sql = claim::claim_parked_sql(be);
        match explain(
            w,
            &claim_sql,
            vec![lease.into(), "test".into(), id(1).into()],
        )
        .await
        {
            Plan::Pg(plan) => {
                // The update, the row it updates, the parked row found: one each. (Where a
                // sequential scan meets a parked row depends on the heap's order; here it
                // meets one early, so the scan itself is what the check looks for.)
                let read = rows_read(&plan, "delivery");
                let seq = count_nodes(&plan, "Seq Scan", Some("delivery"));
                assert!(
                    read <= 3.0 && seq == 0,
                    "the probe's claim read {read} delivery rows, {seq} by sequential scan: \
                     {plan:#}"
                );
            }
            // From the destination's mark in the index of its deliveries by id.
            Plan::Sqlite(steps) => assert!(
                steps.iter().any(|d| d.contains(
                    "SEARCH x USING INDEX idx_delivery_tenant_dest_id \
                     (tenant_id=? AND destination_id=? AND id>?)"
                )),
                "{steps:?}"
            ),
        }
        let c = claim::claim_parked(w, "test", id(1), lease).await.unwrap();
        assert_eq!(c.map(|c| c.destination_id), Some(id(1)));
        for i in [0, 2, 3] {
            let c = claim::claim_parked(w, "test", id(i), lease).await.unwrap();
            assert!(c.is_none(), "destination {i} has nothing parked: {c:?}");
        }
    }
);

// A delivery the writer parks (given back while its destination could not take it) may be
// older than every delivery parked before it: on SQLite, where parked deliveries are found from
// their destination's mark (`service::parked`), the writer's flush must lower the mark to it.
// Two are parked in two flushes, the later one older: both count as pending, the recovery sweep
// makes both due again (the destination is not failing), and both are sent again; the third,
// waiting for a retry an hour away, is left alone.
both!(
    writer_parks_below_the_mark_and_the_sweep_finds_it,
    |backend| async move {
        use hookline::dispatch::writer::{DeliveryUpdate, WriterMsg};

        let Waiting {
            s,
            tok,
            rx,
            dest,
            mut ids,
        } = Waiting::three(backend).await;
        ids.sort(); // time-ordered ids: oldest first
        let db = s.stop().await;
        let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
        let writer = test_writer(&conn, &hookline::live::LiveBus::new(16));
        let park = |id| {
            WriterMsg::Delivery(DeliveryUpdate {
                id,
                status: "AWAITING_RETRY",
                attempt_count: None,
                next_attempt_at: None,
                last_status_code: None,
                last_error: None,
                completed: false,
            })
        };
        for id in [ids[2], ids[0]] {
            writer.send(park(id));
            let flushed = tokio::time::timeout(T, writer.barrier()).await;
            assert!(matches!(flushed, Ok(true)), "the flush never committed");
        }
        writer.close().await;
        drop(conn);

        let cfg = test_config(&db);
        let s = Server::start_on(db, cfg).await;
        let d = s
            .ok(
                &tok,
                "query($id: ID!) { destination(id: $id) { stats { pendingDeliveries } } }",
                json!({"id": dest}),
            )
            .await;
        assert_eq!(d["destination"]["stats"]["pendingDeliveries"], 3, "{d}");
        // The sweep (every 5 s) unparks both; each is attempted again and waits for its next
        // retry, an hour away.
        eventually(
            Duration::from_secs(30),
            "both parked deliveries sent again",
            || async {
                let ds = deliveries_of(&s, &tok, &dest).await;
                let attempts: Vec<Option<i64>> = ids
                    .iter()
                    .map(|id| {
                        ds.iter()
                            .find(|d| d["id"] == id.to_string() && d["status"] == "AWAITING_RETRY")
                            .and_then(|d| d["attemptCount"].as_i64())
                    })
                    .collect();
                (attempts == [Some(2), Some(1), Some(2)]).then_some(())
            },
        )
        .await;
        assert_eq!(rx.count(), 5, "three first attempts, two after the unpark");
        s.stop().await;
    }
);

// SQLite has no index of parked deliveries. The statements only SQLite runs — moving a
// destination's mark up (after every release) and the pending count of marked destinations —
// read the range from the mark in `idx_delivery_tenant_dest_id`, and none scans a table. (The
// release and the discards are checked on both databases below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mark_statements_read_from_the_mark() {
    use hookline::service::parked;
    use sea_orm::DbBackend;

    let (_db, conn, dest) = one_destination_stopped(Backend::Sqlite).await;
    let release = parked::release(DbBackend::Sqlite, dest, chrono::Utc::now());
    assert_eq!(
        release.last().map(|s| &s.sql),
        Some(&parked::tighten(dest).sql),
        "a release on SQLite ends by moving the mark: {release:?}"
    );
    for (what, stmt) in [
        ("pending count", parked::counts_sqlite(&[dest])),
        ("tighten", parked::tighten(dest)),
    ] {
        let Plan::Sqlite(steps) = crate::plans::explain_stmt(&conn.write, stmt).await else {
            unreachable!("SQLite")
        };
        assert!(
            steps.iter().any(|d| d.contains(MARK_RANGE)),
            "{what}: {steps:?}"
        );
        assert!(
            !steps.iter().any(|d| d.starts_with("SCAN")),
            "{what} scans a table: {steps:?}"
        );
    }
}

/// SQLite's plan of a destination's deliveries from its mark.
const MARK_RANGE: &str =
    "USING INDEX idx_delivery_tenant_dest_id (tenant_id=? AND destination_id=? AND id>?)";

// A destination's unfinished deliveries are read one index at a time (migrations 6 and 7):
// those with a time to be attempted at in `idx_delivery_dest_queued`; the parked ones in
// `idx_delivery_parked` on PostgreSQL, from the destination's mark in
// `idx_delivery_tenant_dest_id` on SQLite. Each statement's conditions must imply its partial
// index's predicate, or the database cannot use the index and reads the table.
both!(
    unfinished_deliveries_are_read_through_their_indexes,
    |backend| async move {
        use entity::delivery;
        use hookline::service::{deliveries, parked};
        use sea_orm::sea_query::Expr;
        use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};

        let (_db, conn, dest) = one_destination_stopped(backend).await;
        let be = conn.write.get_database_backend();
        let discard = |c: sea_orm::Condition| {
            delivery::Entity::update_many()
                .col_expr(delivery::Column::Status, Expr::value("DISCARDED"))
                .filter(c)
                .build(be)
        };
        let [queued, parked_ones] = deliveries::unfinished_of(be, dest);
        let parked_index = if be == DbBackend::Postgres {
            "idx_delivery_parked"
        } else {
            MARK_RANGE.trim_start_matches("USING INDEX ")
        };
        let queued_index = "idx_delivery_dest_queued";
        for (what, stmt, index) in [
            ("discard the queued", discard(queued), queued_index),
            ("discard the parked", discard(parked_ones), parked_index),
            (
                "release the parked",
                parked::release(be, dest, chrono::Utc::now()).remove(0),
                parked_index,
            ),
        ] {
            match crate::plans::explain_stmt(&conn.write, stmt).await {
                Plan::Pg(plan) => {
                    let seq = count_nodes(&plan, "Seq Scan", Some("delivery"));
                    let used = crate::plans::indexes_used(&plan);
                    assert!(
                        seq == 0 && used.iter().any(|i| i == index),
                        "{what}: {seq} sequential scans, indexes {used:?}: {plan:#}"
                    );
                }
                Plan::Sqlite(steps) => {
                    assert!(
                        steps
                            .iter()
                            .any(|d| d.contains(&format!("USING INDEX {index}"))),
                        "{what}: {steps:?}"
                    );
                    assert!(
                        !steps.iter().any(|d| d.starts_with("SCAN")),
                        "{what} scans a table: {steps:?}"
                    );
                }
            }
        }
    }
);
