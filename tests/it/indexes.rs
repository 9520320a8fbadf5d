//! Listings and lookups read what they return. A page of events or deliveries, newest first,
//! with or without a time window, is an index range read in id order: it does not read and
//! sort a tenant's or a destination's history, nor walk past other tenants' rows, whatever
//! the tables hold and whatever the planner's statistics say. The idempotency index holds
//! keyed events only, and still refuses a second event with a tenant's key.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use entity::{delivery, event};
use hookline::auth::{Principal, Scopes};
use hookline::service::page::{Direction, PageRequest, page_query};
use hookline::service::{deliveries, events, publisher};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, QueryTrait, Select, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use crate::both;
use crate::harness::*;
use crate::plans::{Plan, count_nodes, explain_stmt, indexes_used, rows_read, scalar};

const T: Duration = Duration::from_secs(15);

/// A UUIDv7 of the moment `t`, as the service makes them (`new_id`) when `t` is now.
fn id_at(t: DateTime<Utc>) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        t.timestamp() as u64,
        t.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts)
}

fn principal(tenant: &str) -> Principal {
    Principal {
        tenant: tenant.into(),
        subject: "test".into(),
        scopes: Scopes::parse("admin"),
        expires_at: i64::MAX,
    }
}

/// One finished delivery per event, to `dest`, created when its event was.
fn rows(
    tenant: &str,
    dest: Uuid,
    at: &[DateTime<Utc>],
) -> (Vec<event::Model>, Vec<delivery::Model>) {
    let evs: Vec<event::Model> = at
        .iter()
        .map(|t| event::Model {
            id: id_at(*t),
            tenant_id: tenant.into(),
            event_type: "order.created".into(),
            level: "INFO".into(),
            payload: "{}".into(),
            idempotency_key: None,
            created_at: *t,
        })
        .collect();
    let dls = evs
        .iter()
        .map(|e| delivery::Model {
            id: id_at(e.created_at),
            tenant_id: tenant.into(),
            event_id: e.id,
            destination_id: dest,
            event_type: e.event_type.clone(),
            status: "SUCCEEDED".into(),
            attempt_count: 1,
            next_attempt_at: None,
            lease_until: None,
            lease_owner: None,
            last_status_code: Some(204),
            last_error: None,
            created_at: e.created_at,
            completed_at: Some(e.created_at),
        })
        .collect();
    (evs, dls)
}

/// The statement of a listing's first page of 20, newest first, as `paginate` runs it.
fn first_page<E: EntityTrait>(q: Select<E>, id: E::Column, be: DbBackend) -> sea_orm::Statement {
    let first20 = PageRequest {
        first: Some(20),
        ..Default::default()
    };
    let (q, _, _) = page_query(q, id, Direction::NewestFirst, &first20, 100).unwrap();
    q.build(be)
}

async fn insert(db: &impl ConnectionTrait, evs: Vec<event::Model>, dls: Vec<delivery::Model>) {
    use sea_orm::IntoActiveModel;
    for chunk in evs.chunks(500) {
        let am = chunk
            .iter()
            .cloned()
            .map(IntoActiveModel::into_active_model);
        event::Entity::insert_many(am).exec(db).await.unwrap();
    }
    for chunk in dls.chunks(500) {
        let am = chunk
            .iter()
            .cloned()
            .map(IntoActiveModel::into_active_model);
        delivery::Entity::insert_many(am).exec(db).await.unwrap();
    }
}

both!(
    listings_read_one_page_not_the_history,
    |backend| async move {
        let s = Server::start(backend).await;
        let (acme, other) = (s.token("acme", "admin"), s.token("other", "admin"));
        let rx = Receiver::start().await;
        let busy: Uuid = create_destination(&s, &acme, json!({"url": rx.url()}))
            .await
            .parse()
            .unwrap();
        let quiet: Uuid = create_destination(&s, &acme, json!({"url": rx.url()}))
            .await
            .parse()
            .unwrap();
        let theirs: Uuid = create_destination(&s, &other, json!({"url": rx.url()}))
            .await
            .parse()
            .unwrap();
        let db = s.stop().await;
        let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
        let w = &conn.write;
        let be = w.get_database_backend();

        // The quiet destination's five deliveries are three hours old, ten seconds apart; then
        // the busy destination and the other tenant each get 3 000, half an hour ago.
        let t0 = (Utc::now() - TimeDelta::hours(3)).trunc_subsecs(0);
        let old: Vec<_> = (0..5).map(|k| t0 + TimeDelta::seconds(10 * k)).collect();
        let recent = |k: i64| Utc::now() - TimeDelta::minutes(30) + TimeDelta::milliseconds(k);
        let n = 3000;
        let (e1, d1) = rows("acme", quiet, &old);
        let (e2, d2) = rows("acme", busy, &(0..n).map(recent).collect::<Vec<_>>());
        let (e3, d3) = rows("other", theirs, &(0..n).map(recent).collect::<Vec<_>>());
        insert(w, [e1, e2, e3].concat(), [d1, d2, d3].concat()).await;

        let acme_p = principal("acme");
        let window = |since: DateTime<Utc>, until: DateTime<Utc>| deliveries::DeliveryFilter {
            since: Some(since),
            until: Some(until),
            ..Default::default()
        };
        // (what, statement, rows it returns, index it must read)
        let delivery_page = |f: deliveries::DeliveryFilter| {
            first_page(deliveries::filtered(&acme_p, &f), delivery::Column::Id, be)
        };
        let event_page = |f: events::EventFilter| {
            first_page(events::filtered(&acme_p, &f), event::Column::Id, be)
        };
        let cases = [
            (
                "the busy destination's first page",
                delivery_page(deliveries::DeliveryFilter {
                    destination_id: Some(busy),
                    ..Default::default()
                }),
                21.0,
                "idx_delivery_tenant_dest_id",
            ),
            (
                "the quiet destination's deliveries, older than everything else",
                delivery_page(deliveries::DeliveryFilter {
                    destination_id: Some(quiet),
                    ..Default::default()
                }),
                5.0,
                "idx_delivery_tenant_dest_id",
            ),
            (
                "the tenant's first page of deliveries",
                delivery_page(Default::default()),
                21.0,
                "idx_delivery_tenant_id",
            ),
            (
                "the tenant's deliveries in an hour that has none",
                delivery_page(window(t0 + TimeDelta::hours(1), t0 + TimeDelta::hours(2))),
                0.0,
                "idx_delivery_tenant_id",
            ),
            (
                "the tenant's events of three hours ago",
                event_page(events::EventFilter {
                    since: Some(t0 - TimeDelta::minutes(5)),
                    until: Some(t0 + TimeDelta::minutes(5)),
                    ..Default::default()
                }),
                5.0,
                "idx_event_tenant_id",
            ),
            (
                "the tenant's first page of events",
                event_page(Default::default()),
                21.0,
                "idx_event_tenant_id",
            ),
        ];
        let check = || {
            let cases = &cases;
            async move {
                for (what, stmt, rows, index) in cases.iter() {
                    let windowed = stmt.sql.contains("\"created_at\" >=");
                    let table = if index.starts_with("idx_event") {
                        "event"
                    } else {
                        "delivery"
                    };
                    match explain_stmt(w, stmt.clone()).await {
                        Plan::Pg(plan) => {
                            // The rows returned, and at most the one that ends the range.
                            let read = rows_read(&plan, table);
                            let sorts = count_nodes(&plan, "Sort", None)
                                + count_nodes(&plan, "Incremental Sort", None);
                            assert!(
                                read <= rows + 1.0 && sorts == 0,
                                "{what}: {read} rows read, {sorts} sorts: {plan:#}"
                            );
                            assert!(
                                indexes_used(&plan).iter().any(|i| i.as_str() == *index),
                                "{what}: {plan:#}"
                            );
                        }
                        // A time window is a range of ids in the index.
                        Plan::Sqlite(steps) => assert!(
                            steps.iter().any(|d| d.contains(&format!("INDEX {index} "))
                                && (!windowed || d.contains("id>? AND id<?")))
                                && !steps.iter().any(|d| d.contains("TEMP B-TREE")),
                            "{what}: {steps:?}"
                        ),
                    }
                }
            }
        };
        // PostgreSQL with statistics, as autovacuum keeps them (README, "Running on
        // PostgreSQL"); with none, it takes a tenant's rows for a handful and sorts them.
        if be == DbBackend::Postgres {
            w.execute_unprepared("ANALYZE event; ANALYZE delivery")
                .await
                .unwrap();
        }
        check().await;
        drop(conn);

        // The windows select by creation time exactly: `since` counts, `until` does not.
        let cfg = test_config(&db);
        let s = Server::start_on(db, cfg).await;
        let q = "query($f: DeliveryFilter, $e: EventFilter) {
        deliveries(first: 100, filter: $f) { edges { node { createdAt } } }
        events(first: 100, filter: $e) { edges { node { createdAt } } } }";
        let (since, until) = (t0 + TimeDelta::seconds(10), t0 + TimeDelta::seconds(40));
        let r = s
        .ok(
            &acme,
            q,
            json!({"f": {"since": since, "until": until}, "e": {"since": since, "until": until}}),
        )
        .await;
        let times = |v: &serde_json::Value| -> Vec<DateTime<Utc>> {
            v["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"]["createdAt"].as_str().unwrap().parse().unwrap())
                .collect()
        };
        let want: Vec<_> = old[1..4].iter().rev().copied().collect();
        assert_eq!(times(&r["deliveries"]), want, "{r:#}");
        assert_eq!(times(&r["events"]), want, "{r:#}");
        // The other tenant's rows of the same half hour are not the first tenant's.
        let r = s
            .ok(
                &other,
                "{ deliveries(first: 100) { totalCount edges { node { destination { id } } } } }",
                json!({}),
            )
            .await;
        assert_eq!(r["deliveries"]["totalCount"], n);
        let dests: Vec<_> = r["deliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["destination"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(dests.iter().all(|d| *d == theirs.to_string()), "{dests:?}");
    }
);

// Events published without an idempotency key leave the unique index alone; keys still
// deduplicate a publish, and the database refuses a second event with a tenant's key.
both!(
    idempotency_index_holds_keyed_events_only,
    |backend| async move {
        let s = Server::start(backend).await;
        let tok = s.token("acme", "admin");
        let rx = Receiver::start().await;
        create_destination(&s, &tok, json!({"url": rx.url()})).await;
        for i in 0..3 {
            publish(&s, &tok, "order.created", json!({"i": i})).await;
        }
        let input = json!({"type": "order.created", "payload": {}, "idempotencyKey": "ord-9"});
        let first = publish_input(&s, &tok, input.clone()).await;
        assert_eq!(publish_input(&s, &tok, input).await["id"], first["id"]);
        rx.wait_for(4, T).await;
        let db = s.stop().await;
        let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
        let w = &conn.write;
        let be = w.get_database_backend();

        let entries = match be {
            // ANALYZE counts a partial index's entries (the rows that meet its condition) into
            // `pg_class.reltuples`; the table is small enough to be read whole.
            DbBackend::Postgres => {
                w.execute_unprepared("ANALYZE event").await.unwrap();
                let sql = "SELECT reltuples::int8 AS n FROM pg_class \
                           WHERE relname = 'ux_event_tenant_idem'";
                scalar(w, sql).await
            }
            // SQLite keeps no count of an index's entries; its catalog says whether the index
            // is partial.
            _ => {
                let sql = "SELECT \"partial\" AS n FROM pragma_index_list('event') \
                           WHERE name = 'ux_event_tenant_idem'";
                assert_eq!(scalar(w, sql).await, 1, "partial");
                scalar(
                    w,
                    "SELECT count(*) AS n FROM event WHERE idempotency_key IS NOT NULL",
                )
                .await
            }
        };
        assert_eq!(entries, 1, "one keyed event of four");

        // The publisher's lookup can go through the index. On a table this small PostgreSQL
        // would rightly read the table; Hookline's sessions price that out
        // (`db::SESSION_SETTINGS`), and the transaction says so again so that this check does
        // not depend on them.
        let stmt =
            publisher::events_with_keys("acme", &["ord-9".into(), "ord-10".into()]).build(be);
        let txn = w.begin().await.unwrap();
        if be == DbBackend::Postgres {
            txn.execute_unprepared("SET LOCAL enable_seqscan = off")
                .await
                .unwrap();
        }
        match explain_stmt(&txn, stmt).await {
            Plan::Pg(plan) => assert!(
                indexes_used(&plan)
                    .iter()
                    .any(|i| i == "ux_event_tenant_idem")
                    && count_nodes(&plan, "Seq Scan", None) == 0,
                "{plan:#}"
            ),
            Plan::Sqlite(steps) => assert!(
                steps
                    .iter()
                    .any(|d| d.contains("INDEX ux_event_tenant_idem")),
                "{steps:?}"
            ),
        }
        txn.rollback().await.unwrap();
        // A second event with the key is refused by the database itself; keyless ones are not.
        let (mut evs, _) = rows("acme", Uuid::now_v7(), &[Utc::now(), Utc::now()]);
        evs[0].idempotency_key = Some("ord-9".into());
        let dup =
            event::Entity::insert(sea_orm::IntoActiveModel::into_active_model(evs[0].clone()))
                .exec(w)
                .await;
        assert!(dup.is_err(), "a second event with key ord-9 was stored");
        event::Entity::insert(sea_orm::IntoActiveModel::into_active_model(evs[1].clone()))
            .exec(w)
            .await
            .unwrap();
    }
);

// PostgreSQL keeps the generic plan a connection settles on after five executions of a
// prepared statement. Planned while `delivery` holds a few hundred rows, the completion
// writer's update and the claim's lookup of the rows it picked would be sequential scans, kept
// as the table grows (150–200 ms a flush at 100 000 rows). On Hookline's sessions their generic
// plans use the primary key whatever the table's size when they are made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_plans_of_hot_statements_use_the_primary_key() {
    if pg_available().is_none() {
        return;
    }
    let db = TestDb::new(Backend::Postgres).await;
    let conn = hookline::db::connect(&test_config(&db)).await.unwrap();
    hookline::db::migrate(&conn).await.unwrap();
    let w = &conn.write;
    // 400 deliveries (a size at which both plans were sequential scans), one in twenty due.
    w.execute_unprepared(
        "INSERT INTO event (id, tenant_id, event_type, level, payload, created_at) \
         SELECT gen_random_uuid(), 't', 'x', 'INFO', '{}', now() FROM generate_series(1, 400); \
         INSERT INTO delivery (id, tenant_id, event_id, destination_id, event_type, status, \
           attempt_count, created_at, next_attempt_at) \
         SELECT gen_random_uuid(), 't', id, gen_random_uuid(), 'x', 'PENDING', 0, now(), \
           CASE WHEN random() < 0.05 THEN now() END FROM event",
    )
    .await
    .unwrap();
    let claim = hookline::dispatch::claim::claim_sql(DbBackend::Postgres, 0);
    let statements = [
        (
            "completion",
            hookline::dispatch::update_json_sql(),
            "(json, timestamptz, text)",
            "('[]', now(), '')",
        ),
        (
            "claim",
            claim.as_str(),
            "(timestamptz, text, timestamptz, int8)",
            "(now(), 'x', now(), 100)",
        ),
    ];
    let txn = w.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    for (name, sql, types, args) in statements {
        txn.execute_unprepared(&format!("PREPARE {name}{types} AS {sql}"))
            .await
            .unwrap();
        let row = txn
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{args}"),
            ))
            .await
            .unwrap()
            .unwrap();
        let plan: serde_json::Value = row.try_get("", "QUERY PLAN").unwrap();
        let plan = &plan[0]["Plan"];
        assert_eq!(
            count_nodes(plan, "Seq Scan", Some("delivery")),
            0,
            "{name}: {plan:#}"
        );
        assert!(
            indexes_used(plan).iter().any(|i| i == "delivery_pkey"),
            "{name}: {plan:#}"
        );
    }
    txn.rollback().await.unwrap();
}
