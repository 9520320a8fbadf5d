//! Use cases over SeaORM, every one scoped to a tenant. Knows nothing of GraphQL or HTTP.

pub mod bulk;
pub mod deliveries;
mod destination_settings;
pub mod destinations;
pub mod events;
pub mod matching;
pub mod page;
pub mod publisher;
pub mod stats;
pub mod subscriptions;
pub mod validate;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

/// Now, at the microsecond precision both databases store, so a value written and read back
/// compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Time-ordered ids: ordering by id is ordering by creation, which keyset pagination relies on.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// A destination row as `createDestination` would make it with its defaults, for unit tests.
#[cfg(test)]
pub(crate) fn test_destination() -> entity::destination::Model {
    let p = crate::auth::Principal {
        tenant: "t".into(),
        subject: "test".into(),
        scopes: crate::auth::Scopes::parse("admin"),
        expires_at: i64::MAX,
    };
    destination_settings::defaults(&p, "d".into(), "http://127.0.0.1:9/hook".into())
}
