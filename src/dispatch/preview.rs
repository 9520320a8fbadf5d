//! `previewDelivery`: what a destination would do with an event — whether a subscription lets
//! it through, and the exact request — built by the same code that matches and sends, with
//! nothing sent or stored.

use std::sync::Arc;

use entity::{event, subscription};
use uuid::Uuid;

use super::claim::Claimed;
use super::sender::{USER_AGENT, request_headers};
use super::unit::build_body;
use crate::auth::Principal;
use crate::error::AppResult;
use crate::jq;
use crate::service::destinations::{self, HttpAuth, headers_of, http_auth_of};
use crate::service::events::{self, NewEvent};
use crate::service::subscriptions::{self, Rule};
use crate::service::{new_id, now};

/// Shown instead of a secret header value.
pub const MASK: &str = "***";

pub struct Preview {
    pub matched: bool,
    pub reason: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Null when the transform fails on the event (the reason says why).
    pub body: Option<String>,
    pub signature: Option<String>,
}

pub async fn preview_delivery(
    st: &crate::state::AppState,
    p: &Principal,
    destination_id: Uuid,
    ev: NewEvent,
) -> AppResult<Preview> {
    events::validate(&ev, st.config.limits.max_payload_bytes)?;
    let mut d = destinations::get_required(&st.db.read, p, destination_id).await?;
    destinations::unseal(&mut d, &st.cipher)?;
    let subs = subscriptions::list_for_destination(&st.db.read, p, destination_id).await?;
    let event = event::Model {
        id: new_id(),
        tenant_id: p.tenant.clone(),
        event_type: ev.event_type,
        level: ev.level.as_str().to_string(),
        payload: ev.payload,
        idempotency_key: None,
        created_at: now(),
    };
    let (matched, mut reason) = decide(&d, &subs, &event, ev.level);

    let dl = events::new_delivery(&event, d.id, event.created_at);
    let unit = vec![(Claimed::of(&dl), Some(Arc::new(event)))];
    let transform = d.transform.as_deref().map(jq::compile_stored);
    let (body, mut headers, signature) = match build_body(&d, transform.as_ref(), &unit, new_id()) {
        Ok((msg_id, body)) => match request_headers(&d, &msg_id, &body) {
            Ok((h, signature)) => {
                let headers = h
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                (Some(body), headers, Some(signature))
            }
            Err(e) => {
                reason = format!("{reason}; the request cannot be signed: {e}");
                (Some(body), Vec::new(), None)
            }
        },
        Err(e) => {
            reason = format!("{reason}; {e}");
            (None, Vec::new(), None)
        }
    };
    // The destination's own header values may carry credentials: shown masked, as is auth.
    let custom: Vec<String> = headers_of(&d)
        .into_iter()
        .map(|h| h.name.to_ascii_lowercase())
        .collect();
    for (name, value) in &mut headers {
        if custom.contains(name) {
            *value = MASK.to_string();
        }
    }
    headers.push(("user-agent".into(), USER_AGENT.into()));
    match http_auth_of(&d) {
        Some(HttpAuth::Basic { .. }) => {
            headers.push(("authorization".into(), format!("Basic {MASK}")))
        }
        Some(HttpAuth::Bearer { .. }) => {
            headers.push(("authorization".into(), format!("Bearer {MASK}")))
        }
        None => {}
    }
    Ok(Preview {
        matched,
        reason,
        url: d.url,
        headers,
        body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
        signature,
    })
}

/// Whether the destination would get the event, and which subscription (or which check of
/// each) decided, by the publisher's own rules.
fn decide(
    d: &entity::destination::Model,
    subs: &[subscription::Model],
    ev: &event::Model,
    level: crate::service::matching::Level,
) -> (bool, String) {
    if !d.enabled {
        return (false, "the destination is disabled".into());
    }
    if subs.is_empty() {
        return (false, "the destination has no subscriptions".into());
    }
    let payload = || serde_json::from_str(&ev.payload).ok();
    let input = || jq::event_of(ev);
    let mut refusals = Vec::new();
    for s in subs {
        if !s.enabled {
            refusals.push(format!("subscription {}: disabled", s.id));
            continue;
        }
        match Rule::from_model(s).verdict(&ev.event_type, level, payload, input) {
            Ok(()) => {
                let how = if s.filter.is_some() {
                    " (its filter output true)"
                } else {
                    ""
                };
                return (true, format!("subscription {} matches{how}", s.id));
            }
            Err(r) => refusals.push(format!("subscription {}: {}", s.id, r.as_str())),
        }
    }
    (
        false,
        format!("no subscription matches: {}", refusals.join("; ")),
    )
}
