//! Cross-instance transport over PostgreSQL LISTEN/NOTIFY. A NOTIFY sent inside a
//! transaction is delivered only if that transaction commits, which is exactly the "after its
//! row commits" rule; payloads carry ids, and each receiving instance loads the rows.

use std::sync::Arc;
use std::time::Duration;

use entity::delivery_attempt;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    Statement,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{LiveAttempt, LiveBus, LiveEvent, StatusChange};

pub const WAKE: &str = "hookline_wake";
pub const LIVE: &str = "hookline_live";
/// PostgreSQL refuses a NOTIFY payload of this many bytes or more.
const PAYLOAD_LIMIT: usize = 8000;

#[derive(Serialize, Deserialize)]
struct Message {
    /// The sending instance, which already published locally.
    o: String,
    #[serde(default)]
    a: Vec<Uuid>,
    #[serde(default)]
    s: Vec<Status>,
}

#[derive(Serialize, Deserialize)]
struct Status {
    t: String,
    d: Uuid,
    s: String,
    e: bool,
    at: chrono::DateTime<chrono::Utc>,
}

/// Inside the publishing transaction: wake the other instances' dispatchers on commit.
pub async fn wake_others(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, '')",
        [WAKE.into()],
    ))
    .await
    .map(|_| ())
}

/// Announces attempts and status changes to the other instances: inside a transaction
/// they go out on its commit, outside one at once. However many there are, every
/// payload fits PostgreSQL's limit ([`messages`]), and all of them go in one statement.
/// A failure is counted (`hookline_live_notify_failures_total`).
pub async fn announce(
    db: &impl ConnectionTrait,
    instance: &str,
    attempts: &[Uuid],
    statuses: &[StatusChange],
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres
        || (attempts.is_empty() && statuses.is_empty())
    {
        return Ok(());
    }
    let texts = messages(instance, attempts, statuses);
    let all = serde_json::to_string(&texts).map_err(|e| DbErr::Custom(e.to_string()))?;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, m) FROM json_array_elements_text($2::json) AS m",
        [LIVE.into(), all.into()],
    ))
    .await
    .map(|_| ())
    .inspect_err(|_| metrics::counter!("hookline_live_notify_failures_total").increment(1))
}

/// [`announce`] of rows already committed, best effort: a failure costs the other
/// instances' subscribers these items and is logged; the rows stay as they are.
pub async fn announce_committed(
    db: &impl ConnectionTrait,
    instance: &str,
    attempts: &[Uuid],
    statuses: &[StatusChange],
) {
    if let Err(e) = announce(db, instance, attempts, statuses).await {
        tracing::warn!(error = %e, "could not announce to other instances");
    }
}

/// The payloads announcing `attempts` and `statuses`: as few as fit, each below
/// [`PAYLOAD_LIMIT`] bytes. Attempts come first; status changes fill up the last of
/// their payloads and spread over more as needed. Each payload is a [`Message`] in JSON,
/// put together from its items' own JSON so that its size is known before it is sent.
fn messages(instance: &str, attempts: &[Uuid], statuses: &[StatusChange]) -> Vec<String> {
    let o = serde_json::Value::from(instance).to_string();
    let (head, mid, tail) = (format!("{{\"o\":{o},\"a\":["), "],\"s\":[", "]}");
    let empty = head.len() + mid.len() + tail.len();
    let mut out = Vec::new();
    let (mut a, mut s) = (Vec::<String>::new(), Vec::<String>::new());
    let mut size = empty;
    let items =
        attempts
            .iter()
            .map(|id| (true, format!("\"{id}\"")))
            .chain(statuses.iter().filter_map(|c| {
                let st = Status {
                    t: c.tenant_id.clone(),
                    d: c.destination_id,
                    s: c.status.clone(),
                    e: c.enabled,
                    at: c.at,
                };
                serde_json::to_string(&st).ok().map(|j| (false, j))
            }));
    for (is_attempt, item) in items {
        // An item after the first of its list needs a comma.
        let cost = |a: &[String], s: &[String]| {
            let list = if is_attempt { a } else { s };
            item.len() + usize::from(!list.is_empty())
        };
        if empty + item.len() >= PAYLOAD_LIMIT {
            // Only a tenant name thousands of bytes long could do this; tokens allow 128.
            tracing::warn!(bytes = item.len(), "a live item too large to announce");
            continue;
        }
        if size + cost(&a, &s) >= PAYLOAD_LIMIT {
            out.push(format!("{head}{}{mid}{}{tail}", a.join(","), s.join(",")));
            (a, s, size) = (Vec::new(), Vec::new(), empty);
        }
        size += cost(&a, &s);
        if is_attempt {
            a.push(item)
        } else {
            s.push(item)
        }
    }
    if !a.is_empty() || !s.is_empty() {
        out.push(format!("{head}{}{mid}{}{tail}", a.join(","), s.join(",")));
    }
    out
}

/// Listens for the other instances until shutdown, reconnecting when the connection
/// drops. Wake-ups go to `wake`; attempts and status changes onto the local bus.
pub fn spawn_bridge(
    db: DatabaseConnection,
    instance: Arc<str>,
    bus: LiveBus,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let res = tokio::select! {
                r = listen(&db, &instance, &bus, &wake) => r,
                _ = shutdown.cancelled() => return,
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "live bridge lost its connection; reconnecting");
                // Wake the dispatcher: notifications may have been missed meanwhile.
                wake.notify_one();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    });
}

async fn listen(
    db: &DatabaseConnection,
    instance: &str,
    bus: &LiveBus,
    wake: &Notify,
) -> Result<(), sea_orm::sqlx::Error> {
    let pool = db.get_postgres_connection_pool();
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen_all([WAKE, LIVE]).await?;
    loop {
        // `try_recv` reports a lost connection (None) instead of silently reconnecting,
        // so the loop above can wake the dispatcher for anything missed.
        let Some(n) = listener.try_recv().await? else {
            return Err(sea_orm::sqlx::Error::Protocol(
                "listener connection lost".into(),
            ));
        };
        if n.channel() == WAKE {
            wake.notify_one();
            continue;
        }
        let Ok(msg) = serde_json::from_str::<Message>(n.payload()) else {
            continue;
        };
        if msg.o == instance {
            continue;
        }
        if !msg.a.is_empty() {
            match delivery_attempt::Entity::find()
                .filter(delivery_attempt::Column::Id.is_in(msg.a.iter().copied()))
                .all(db)
                .await
            {
                Ok(mut rows) => {
                    rows.sort_by_key(|r| r.id);
                    for r in rows {
                        bus.publish(LiveEvent::Attempt(Arc::new(LiveAttempt::bare(r))));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not load announced attempts"),
            }
        }
        for s in msg.s {
            bus.publish(LiveEvent::Status(Arc::new(StatusChange {
                tenant_id: s.t,
                destination_id: s.d,
                status: s.s,
                enabled: s.e,
                at: s.at,
            })));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(tenant: &str) -> StatusChange {
        StatusChange {
            tenant_id: tenant.to_string(),
            destination_id: Uuid::now_v7(),
            status: "RETRY_LIMIT_REACHED".into(),
            enabled: true,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn every_payload_fits_and_together_they_carry_everything_once() {
        // The longest tenant a token may name, and one that JSON must escape.
        for tenant in ["t".repeat(128), "\"é\\\n".repeat(32)] {
            for (na, ns) in [(0, 1), (1, 0), (500, 0), (0, 300), (200, 200), (3, 2)] {
                let ids: Vec<Uuid> = (0..na).map(|_| Uuid::now_v7()).collect();
                let changes: Vec<StatusChange> = (0..ns).map(|_| change(&tenant)).collect();
                let texts = messages("instance-1", &ids, &changes);
                let (mut a, mut s) = (Vec::new(), Vec::new());
                for t in &texts {
                    assert!(t.len() < PAYLOAD_LIMIT, "{} bytes", t.len());
                    let m: Message = serde_json::from_str(t).expect("a Message");
                    assert_eq!(m.o, "instance-1");
                    assert!(!m.a.is_empty() || !m.s.is_empty(), "an empty payload");
                    a.extend(m.a);
                    s.extend(m.s.into_iter().map(|x| (x.d, x.t, x.s, x.e, x.at)));
                }
                assert_eq!(a, ids);
                let want: Vec<_> = changes
                    .iter()
                    .map(|c| {
                        (
                            c.destination_id,
                            c.tenant_id.clone(),
                            c.status.clone(),
                            c.enabled,
                            c.at,
                        )
                    })
                    .collect();
                assert_eq!(s, want);
                // Filled, not split by a count: all but the last payload are nearly full.
                let total: usize = texts.iter().map(String::len).sum();
                assert!(
                    texts.len() <= total / (PAYLOAD_LIMIT - 400) + 1,
                    "{} payloads",
                    texts.len()
                );
            }
        }
    }
}
