//! Live streams over `/graphql/ws`, filtered by the caller's tenant and the arguments.

use async_graphql::{Context, ID, Result, SimpleObject, Subscription as SubscriptionDerive};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use super::delivery_types::{AttemptOutcome, DeliveryAttempt};
use super::types::DestinationStatus;
use super::{BudgetGuard, SubscriptionBudget, parse_id, require, state};
use crate::auth::Scope;
use crate::error::AppError;
use crate::live::LiveEvent;

pub struct Subscription;

#[derive(SimpleObject, Clone, Debug)]
pub struct DestinationStatusChange {
    pub destination_id: ID,
    pub status: DestinationStatus,
    pub enabled: bool,
    pub at: DateTime<Utc>,
}

/// Turns the bus into a stream of the items `pick` selects for this caller. Ends with an
/// error when the token expires, or when the subscriber fell too far behind to be complete
/// (it is told how many items it missed rather than silently skipping them).
fn live_stream<T: Send + 'static>(
    budget: Option<BudgetGuard>,
    rx: broadcast::Receiver<LiveEvent>,
    tenant: String,
    expires_at: i64,
    pick: impl Fn(&LiveEvent) -> Option<T> + Send + 'static,
) -> impl Stream<Item = Result<T>> {
    struct St<F> {
        _budget: Option<BudgetGuard>,
        rx: broadcast::Receiver<LiveEvent>,
        tenant: String,
        expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
        pick: F,
        done: bool,
    }
    let st = St {
        _budget: budget,
        rx,
        tenant,
        expiry: Box::pin(tokio::time::sleep(expiry_in(expires_at))),
        pick,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            tokio::select! {
                _ = &mut st.expiry => {
                    st.done = true;
                    let e = AppError::Unauthenticated("token expired".into());
                    return Some((Err(e.into()), st));
                }
                msg = st.rx.recv() => match msg {
                    Ok(ev) => {
                        if ev.tenant() != st.tenant {
                            continue;
                        }
                        if let Some(item) = (st.pick)(&ev) {
                            return Some((Ok(item), st));
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        st.done = true;
                        let e = AppError::Unavailable(format!(
                            "subscriber fell behind and missed {n} items; resubscribe and query to catch up"
                        ));
                        return Some((Err(e.into()), st));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// Over WebSocket, each subscription takes a slot of the connection's budget.
fn budget(ctx: &Context<'_>) -> Result<Option<BudgetGuard>, AppError> {
    ctx.data_opt::<SubscriptionBudget>()
        .map(|b| b.take())
        .transpose()
}

fn expiry_in(expires_at: i64) -> std::time::Duration {
    let secs = expires_at - chrono::Utc::now().timestamp();
    std::time::Duration::from_secs(secs.clamp(0, 10 * 365 * 86400) as u64)
}

#[SubscriptionDerive]
impl Subscription {
    /// Every finished attempt in your tenant as it commits, optionally narrowed.
    async fn delivery_attempts(
        &self,
        ctx: &Context<'_>,
        destination_id: Option<ID>,
        event_type: Option<String>,
        outcome: Option<AttemptOutcome>,
    ) -> Result<impl Stream<Item = Result<DeliveryAttempt>>> {
        let p = require(ctx, Scope::Read)?;
        let only = destination_id
            .map(|id| parse_id("destinationId", &id))
            .transpose()?;
        let want = outcome.map(|o| match o {
            AttemptOutcome::Success => "SUCCESS",
            AttemptOutcome::Failure => "FAILURE",
        });
        let budget = budget(ctx)?;
        let rx = state(ctx)?.live.subscribe();
        Ok(live_stream(
            budget,
            rx,
            p.tenant.clone(),
            p.expires_at,
            move |ev| match ev {
                LiveEvent::Attempt(a)
                    if only.is_none_or(|id| id == a.destination_id)
                        && event_type.as_deref().is_none_or(|t| t == a.event_type)
                        && want.is_none_or(|o| o == a.outcome) =>
                {
                    Some(DeliveryAttempt((**a).clone()))
                }
                _ => None,
            },
        ))
    }

    /// Every health or enabled change of your destinations (or of one).
    async fn destination_status_changed(
        &self,
        ctx: &Context<'_>,
        destination_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<DestinationStatusChange>>> {
        let p = require(ctx, Scope::Read)?;
        let only = destination_id
            .map(|id| parse_id("destinationId", &id))
            .transpose()?;
        let budget = budget(ctx)?;
        let rx = state(ctx)?.live.subscribe();
        Ok(live_stream(
            budget,
            rx,
            p.tenant.clone(),
            p.expires_at,
            move |ev| match ev {
                LiveEvent::Status(s) if only.is_none_or(|id| id == s.destination_id) => {
                    Some(DestinationStatusChange {
                        destination_id: ID(s.destination_id.to_string()),
                        status: DestinationStatus::from_stored(&s.status),
                        enabled: s.enabled,
                        at: s.at,
                    })
                }
                _ => None,
            },
        ))
    }
}
