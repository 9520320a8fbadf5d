//! Use cases over SeaORM, every one scoped to a tenant. Knows nothing of GraphQL or HTTP.

pub mod bulk;
pub mod deliveries;
mod destination_secrets;
mod destination_settings;
pub mod destinations;
pub mod events;
pub mod matching;
pub mod page;
pub mod parked;
pub mod publisher;
pub mod stats;
pub mod subscriptions;
pub mod validate;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use sea_orm::{ColumnTrait, Condition};
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

/// The smallest UUIDv7 of a millisecond: every id created before `t` sorts below it, so an
/// index keyed by id finds rows by creation time without a timestamp index. Times before
/// 1970 or after the year 10889 (the 48 bits of milliseconds a v7 id holds) are clamped.
pub fn uuid_floor(t: DateTime<Utc>) -> Uuid {
    floor_of_ms(t.timestamp_millis().clamp(0, V7_MS_END - 1))
}

/// One past the last millisecond a UUIDv7 can hold.
const V7_MS_END: i64 = 1 << 48;

fn floor_of_ms(ms: i64) -> Uuid {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&(ms as u64).to_be_bytes()[2..]);
    b[6] = 0x70;
    b[8] = 0x80;
    Uuid::from_bytes(b)
}

/// How far the time in a row's id may lie from its `created_at`. The instance that writes a
/// row takes both from its own clock, moments apart ([`new_id`], [`now`]); a minute is room
/// to spare, and costs a listing at most a minute of rows read outside its window.
const ID_TIME_SLACK: TimeDelta = TimeDelta::minutes(1);

/// The range of `id` (UUIDv7) that holds every row with `since <= created_at < until`,
/// widened by [`ID_TIME_SLACK`]. Added beside the `created_at` filters (which stay, and decide),
/// it makes a time window a range of an index keyed `(…, id)` — the keys listings read in —
/// instead of a filter over everything before or after it. A bound a v7 id cannot express
/// (before 1970, after the year 10889) is left out.
pub fn id_window(
    id: impl ColumnTrait,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Condition {
    let floor = |t: DateTime<Utc>, d: TimeDelta| {
        let ms = t.checked_add_signed(d)?.timestamp_millis();
        (0..V7_MS_END).contains(&ms).then(|| floor_of_ms(ms))
    };
    let mut c = Condition::all();
    if let Some(lo) = since.and_then(|t| floor(t, -ID_TIME_SLACK)) {
        c = c.add(id.gte(lo));
    }
    if let Some(hi) = until.and_then(|t| floor(t, ID_TIME_SLACK)) {
        c = c.add(id.lt(hi));
    }
    c
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use entity::event;
    use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};

    #[test]
    fn floor_orders_below_later_ids_and_above_earlier_ones() {
        let t = Utc::now();
        let floor = uuid_floor(t);
        let later = Uuid::now_v7();
        assert!(floor <= later);
        let earlier = uuid_floor(t - TimeDelta::seconds(1));
        assert!(earlier < floor);
        assert_eq!(floor.get_version_num(), 7);
        // Out of a v7 id's range: clamped, not wrapped around.
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(uuid_floor(far) > later);
        assert_eq!(uuid_floor(DateTime::<Utc>::MIN_UTC), floor_of_ms(0));
    }

    fn window_sql(since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> String {
        event::Entity::find()
            .filter(id_window(event::Column::Id, since, until))
            .build(DbBackend::Postgres)
            .to_string()
    }

    #[test]
    fn id_window_holds_the_ids_of_the_window_with_slack() {
        let t = Utc::now();
        let (since, until) = (t - TimeDelta::hours(1), t);
        let sql = window_sql(Some(since), Some(until));
        let lo = uuid_floor(since - ID_TIME_SLACK);
        let hi = uuid_floor(until + ID_TIME_SLACK);
        assert!(sql.contains(&format!(r#""id" >= '{lo}'"#)), "{sql}");
        assert!(sql.contains(&format!(r#""id" < '{hi}'"#)), "{sql}");
        // An id made at either end of the window lies inside the range.
        let at = |t: DateTime<Utc>| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                t.timestamp() as u64,
                t.timestamp_subsec_nanos(),
            );
            Uuid::new_v7(ts)
        };
        for id in [
            at(since),
            at(until - TimeDelta::microseconds(1)),
            Uuid::now_v7(),
        ] {
            assert!(lo <= id && id < hi, "{id}");
        }
        assert!(at(since - TimeDelta::minutes(2)) < lo);
        assert!(at(until + TimeDelta::minutes(2)) >= hi);
    }

    #[test]
    fn id_window_leaves_out_bounds_a_v7_id_cannot_hold() {
        let bounded = |sql: &str| sql.contains(r#""id" >="#) || sql.contains(r#""id" <"#);
        let plain = window_sql(None, None);
        assert!(!bounded(&plain), "{plain}");
        for (since, until) in [
            (
                Some(DateTime::<Utc>::MIN_UTC),
                Some(DateTime::<Utc>::MAX_UTC),
            ),
            (None, DateTime::from_timestamp(1 << 39, 0)),
            (DateTime::from_timestamp(-86_400, 0), None),
        ] {
            let sql = window_sql(since, until);
            assert!(!bounded(&sql), "{since:?} {until:?}: {sql}");
        }
    }
}
