//! `sendTestEvent`: one synchronous attempt outside the queue, recorded like any other.

use chrono::TimeDelta;
use entity::{delivery, delivery_attempt, event};
use uuid::Uuid;

use super::claim::Claimed;
use super::sender::{ErrorKind, Outcome};
use super::unit::{build_body, settle};
use super::writer::{Finished, WriterMsg};
use crate::auth::Principal;
use crate::error::{AppError, AppResult};
use crate::service::{bulk, new_id, now};

/// `sendTestEvent`: a `hookline.test` event for this destination only, attempted now and
/// recorded like any other attempt (it does not move the destination's health), returned
/// once committed.
pub async fn send_test_event(
    st: &crate::state::AppState,
    p: &Principal,
    destination_id: Uuid,
) -> AppResult<delivery_attempt::Model> {
    use sea_orm::TransactionTrait;
    let mut d = crate::service::destinations::get_required(&st.db.read, p, destination_id).await?;
    crate::service::destinations::unseal(&mut d, &st.cipher)?;
    let t = now();
    let ev = event::Model {
        id: new_id(),
        tenant_id: p.tenant.clone(),
        event_type: "hookline.test".into(),
        level: "INFO".into(),
        payload: serde_json::json!({
            "test": true,
            "destinationId": d.id.to_string(),
            "sentAt": t.to_rfc3339(),
        })
        .to_string(),
        idempotency_key: None,
        created_at: t,
    };
    let mut dl = crate::service::events::new_delivery(&ev, d.id, t);
    // Leased like a claim: if this process dies mid-request the dispatcher finishes it.
    let lease = t + TimeDelta::from_std(st.config.dispatch.lease).unwrap_or(TimeDelta::seconds(30));
    dl.status = "DELIVERING".into();
    dl.next_attempt_at = Some(lease);
    dl.lease_until = Some(lease);
    dl.lease_owner = Some(st.instance_id.to_string());
    let txn = st.db.write.begin().await?;
    bulk::insert::<_, event::ActiveModel>(&txn, vec![ev.clone()]).await?;
    bulk::insert::<_, delivery::ActiveModel>(&txn, vec![dl.clone()]).await?;
    txn.commit().await?;
    let claimed = Claimed::of(&dl);
    let unit = vec![(claimed.clone(), Some(std::sync::Arc::new(ev)))];
    let request_id = new_id();
    let transform = d.transform.as_deref().map(crate::jq::compile_stored);
    let started_at = now();
    let outcome = match build_body(&d, transform.as_ref(), &unit, request_id) {
        Ok((msg_id, body)) => st.sender.send(&d, &msg_id, body).await,
        Err(reason) => Outcome::failed(ErrorKind::Transform, reason, std::time::Instant::now()),
    };
    let (update, attempt) = settle(&d, &claimed, &outcome, request_id, started_at, now());
    let event = unit.into_iter().next().and_then(|(_, e)| e);
    st.writer.send(WriterMsg::Attempt(Box::new(Finished {
        attempt: attempt.clone(),
        update,
        claimed,
        event,
    })));
    if !st.writer.barrier().await {
        return Err(AppError::Unavailable("the server is shutting down".into()));
    }
    if attempt.next_attempt_at.is_some() {
        st.wake.notify_one();
    }
    Ok(attempt)
}
