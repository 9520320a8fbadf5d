//! One destination's share of a claim: the gates it passes, the requests it becomes (single
//! deliveries or batches), and what each outcome means for the deliveries and the destination.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{delivery_attempt, destination, event};
use uuid::Uuid;

use super::Engine;
use super::circuit::{self, AttemptResult, Health};
use super::claim::Claimed;
use super::payload::{self, EventRef, PayloadFormat};
use super::retry;
use super::runtime::{DestRuntime, HealthState};
use super::sender::{ErrorKind, Outcome};
use super::writer::{DeliveryUpdate, Finished, HealthUpdate, WriterMsg};
use crate::jq;
use crate::service::destinations::retry_schedule_of;
use crate::service::{new_id, now};

pub(super) type Item = (Claimed, Option<Arc<event::Model>>);

/// How long a probe of an open circuit reserves the destination.
pub(super) const PROBE_RESERVATION: TimeDelta = TimeDelta::seconds(60);

pub(super) async fn handle_group(
    engine: Arc<Engine>,
    rt: Arc<DestRuntime>,
    mut d: destination::Model,
    items: Vec<Item>,
) {
    let n = items.len();
    let bytes = super::hub::cost_of(&items);
    // Secrets are opened once per group; the sender gets them in the clear. Secrets this
    // instance cannot open (sealed with a key it lacks, or damaged) stay so however often it
    // tries: the deliveries end `FAILED` with the reason, to be retried once the key is
    // configured, instead of going back to the queue to fail again.
    if let Err(e) = crate::service::destinations::unseal(&mut d, &engine.state.cipher) {
        let why = match &e {
            crate::error::AppError::Internal(m) => {
                m.strip_prefix("open destination secret: ").unwrap_or(m)
            }
            _ => "unknown error",
        };
        tracing::error!(destination = %d.id, deliveries = n, error = %why, "cannot open destination secrets; deliveries failed");
        let reason = format!("destination secrets cannot be opened: {why}");
        for (c, _) in &items {
            engine.fail(c, &reason);
        }
        engine.done(&rt, n, bytes);
        return;
    }
    let t = now();
    let mut live: Vec<Item> = Vec::with_capacity(n);
    for (c, ev) in items {
        if d.deleted_at.is_some() {
            engine.discard(&c, "destination deleted");
        } else if !d.enabled {
            engine.release(&c, None);
        } else if ev.is_none() {
            engine.discard(&c, "event no longer exists");
        } else if expired(&d, &c, t) {
            engine.discard(&c, "older than discardAfterSecs");
        } else {
            live.push((c, ev));
        }
    }
    if live.is_empty() {
        engine.done(&rt, n, bytes);
        return;
    }
    let h = rt.health();
    // While a probe is in flight its answer comes within a timeout: the units wait for it in
    // memory (see `admit_or_wait`) instead of going back to the queue for the reservation.
    let probing = rt.probing.load(std::sync::atomic::Ordering::Acquire);
    if let Some(gate) = h.gate.filter(|g| *g > t && !probing) {
        for (c, _) in &live {
            if d.lossy && h.health == Health::Failing {
                engine.discard(c, "lossy destination is failing");
            } else {
                hold_back(&engine, &rt, &d, c, gate);
            }
        }
        engine.done(&rt, n, bytes);
        return;
    }
    if let Some(deadline) = batch_deadline(&rt, &d, &live, t) {
        for (c, _) in &live {
            engine.release(c, Some(deadline));
        }
        engine.done(&rt, n, bytes);
        return;
    }
    engine.done(&rt, n - live.len(), bytes - super::hub::cost_of(&live));
    let size = d.batch_size.max(1) as usize;
    let mut units: Vec<Vec<Item>> = Vec::new();
    let mut it = live.into_iter().peekable();
    while it.peek().is_some() {
        units.push(it.by_ref().take(size).collect());
    }
    let d = Arc::new(d);
    if d.ordered {
        let _fifo = rt.fifo.lock().await;
        for unit in units {
            send_unit(&engine, &rt, &d, unit).await;
        }
    } else {
        let mut set = tokio::task::JoinSet::new();
        for unit in units {
            let (engine, rt, d) = (engine.clone(), rt.clone(), d.clone());
            set.spawn(async move { send_unit(&engine, &rt, &d, unit).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Gives a delivery back until `gate`. While the circuit is open it is parked instead (due
/// again when a probe closes the circuit), so a dead destination's backlog is not claimed and
/// given back again at every probe time. Ordered destinations keep their head waiting; lossy
/// ones are not parked (what they are sent while failing is discarded).
fn hold_back(
    engine: &Engine,
    rt: &DestRuntime,
    d: &destination::Model,
    c: &Claimed,
    gate: DateTime<Utc>,
) {
    if !d.ordered && !d.lossy && rt.health().health == Health::Failing {
        engine.release(c, None);
    } else {
        engine.release(c, Some(gate));
    }
}

fn expired(d: &destination::Model, c: &Claimed, t: DateTime<Utc>) -> bool {
    d.discard_after_secs
        .is_some_and(|s| c.created_at + TimeDelta::seconds(s) < t)
}

/// With batching, a group smaller than a batch waits for the window to close (the window
/// opens with the first delivery seen). Returns the time to wait until.
fn batch_deadline(
    rt: &DestRuntime,
    d: &destination::Model,
    live: &[Item],
    t: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if d.batch_size <= 1 || d.batch_window_ms <= 0 {
        return None;
    }
    let mut slot = rt.batch_deadline.lock().unwrap_or_else(|p| p.into_inner());
    let oldest = live.iter().map(|(c, _)| c.created_at).min().unwrap_or(t);
    let deadline = *slot.get_or_insert(oldest + TimeDelta::milliseconds(d.batch_window_ms as i64));
    if live.len() < d.batch_size as usize && deadline > t {
        Some(deadline)
    } else {
        *slot = None;
        None
    }
}

enum Admit {
    Go {
        probe: bool,
    },
    Wait(DateTime<Utc>),
    /// A probe is in flight: its outcome decides, in moments, whether this may go.
    AwaitProbe,
}

/// Whether a request may go now. An open circuit past its probe time lets exactly one
/// request through (it reserves the gate) and holds the rest in memory until it answers.
fn admit(rt: &DestRuntime) -> Admit {
    use std::sync::atomic::Ordering;
    let mut s = rt.state.lock().unwrap_or_else(|p| p.into_inner());
    let t = now();
    if let Some(g) = s.gate.filter(|g| *g > t) {
        if rt.probing.load(Ordering::Acquire) {
            return Admit::AwaitProbe;
        }
        return Admit::Wait(g);
    }
    if s.health == Health::Failing {
        s.gate = Some(t + PROBE_RESERVATION);
        rt.probing.store(true, Ordering::Release);
        return Admit::Go { probe: true };
    }
    Admit::Go { probe: false }
}

/// Admission, waiting out an in-flight probe. `None` when the unit must go back to the
/// queue (until the given time) instead.
async fn admit_or_wait(
    rt: &DestRuntime,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<bool, DateTime<Utc>> {
    loop {
        let notified = rt.probe_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match admit(rt) {
            Admit::Go { probe } => return Ok(probe),
            Admit::Wait(t) => return Err(t),
            Admit::AwaitProbe => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = shutdown.cancelled() => return Err(now()),
                }
            }
        }
    }
}

async fn send_unit(engine: &Engine, rt: &DestRuntime, d: &destination::Model, unit: Vec<Item>) {
    let n = unit.len();
    let bytes = super::hub::cost_of(&unit);
    let st = &engine.state;
    // Permits: the destination's own limit first, so a slow destination queues on itself
    // and never holds global capacity while it waits.
    let permits = async {
        let own = rt.in_flight.acquire().await.ok()?;
        if let Some(rate) = &rt.rate {
            rate.acquire().await;
        }
        let global = engine.global.acquire().await.ok()?;
        Some((own, global))
    };
    let permits = tokio::select! {
        p = permits => p,
        _ = st.shutdown.cancelled() => None,
    };
    let Some(_permits) = permits else {
        for (c, _) in &unit {
            engine.release(c, Some(now()));
        }
        engine.done(rt, n, bytes);
        return;
    };
    let probe = match admit_or_wait(rt, &st.shutdown).await {
        Err(t) => {
            for (c, _) in &unit {
                hold_back(engine, rt, d, c, t);
            }
            engine.done(rt, n, bytes);
            return;
        }
        Ok(probe) => probe,
    };
    let request_id = new_id();
    let started_at = now();
    let built = build_body(d, rt.transform.as_ref(), &unit, request_id);
    metrics::gauge!("hookline_in_flight").increment(1.0);
    // One span per attempt, carrying the ids an operator greps for.
    let span = tracing::info_span!(
        "attempt",
        destination = %d.id,
        delivery = %unit[0].0.id,
        event = %unit[0].0.event_id,
        batch = n,
        request = %request_id,
    );
    let outcome = match built {
        Ok((msg_id, body)) => {
            tracing::Instrument::instrument(st.sender.send(d, &msg_id, body), span.clone()).await
        }
        Err(reason) => Outcome::failed(ErrorKind::Transform, reason, std::time::Instant::now()),
    };
    span.in_scope(|| match &outcome.error {
        None => tracing::debug!(status = ?outcome.status, ms = outcome.duration.as_millis() as u64, "delivered"),
        Some((kind, msg)) => tracing::info!(kind = kind.as_str(), error = %msg, "attempt failed"),
    });
    metrics::gauge!("hookline_in_flight").decrement(1.0);
    metrics::histogram!("hookline_attempt_duration_seconds").record(outcome.duration.as_secs_f64());
    let finished_at = now();
    let mut any_retry = None;
    for (c, event) in unit {
        let (update, attempt) = settle(d, &c, &outcome, request_id, started_at, finished_at);
        if update.status == "AWAITING_RETRY" {
            any_retry = any_retry.max(update.next_attempt_at);
        }
        engine.forget(c.id);
        engine
            .state
            .writer
            .send(WriterMsg::Attempt(Box::new(Finished {
                attempt,
                update,
                claimed: c,
                event,
            })));
    }
    let health = update_health(engine, rt, d, &outcome, any_retry, finished_at, probe);
    if probe {
        if health.health == Health::Active {
            tracing::info!(destination = %d.id, "circuit closed after a successful probe");
        }
        rt.probing
            .store(false, std::sync::atomic::Ordering::Release);
        rt.probe_done.notify_waiters();
    }
    engine.done(rt, n, bytes);
}

/// The message id and body of one request: a single event in the destination's format (or
/// the transform's output, when the destination has one), or a batch envelope (whose id is
/// the request id) for batching destinations. Err is why the transform produced no body.
pub(crate) fn build_body(
    d: &destination::Model,
    transform: Option<&jq::Compiled>,
    unit: &[Item],
    request_id: Uuid,
) -> Result<(String, Vec<u8>), String> {
    let events: Vec<&event::Model> = unit.iter().filter_map(|(_, ev)| ev.as_deref()).collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let refs: Vec<EventRef> = events
        .iter()
        .zip(&ids)
        .map(|(e, id)| EventRef {
            id,
            event_type: &e.event_type,
            level: &e.level,
            created_at: e.created_at,
            payload_json: &e.payload,
        })
        .collect();
    match refs.first() {
        Some(single) if d.batch_size <= 1 => {
            let body = match transform {
                Some(Ok(program)) => program.transform(jq::event_input(single))?,
                Some(Err(reason)) => return Err(reason.clone()),
                None => {
                    let format =
                        PayloadFormat::parse(&d.payload_format).unwrap_or(PayloadFormat::Envelope);
                    payload::single_body(format, single)
                }
            };
            Ok((ids[0].clone(), body))
        }
        // A transform never meets a batch: the settings refuse the combination.
        _ => Ok((request_id.to_string(), payload::batch_body(&refs))),
    }
}

/// What an attempt's outcome means for one delivery: its new state and the attempt row.
pub(super) fn settle(
    d: &destination::Model,
    c: &Claimed,
    o: &Outcome,
    request_id: Uuid,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
) -> (DeliveryUpdate, delivery_attempt::Model) {
    let number = c.attempt_count + 1;
    let status_code = o.status.map(i32::from);
    let (status, next) = if o.success() {
        ("SUCCEEDED", None)
    } else if o.gone() || d.lossy {
        (if o.gone() { "FAILED" } else { "DISCARDED" }, None)
    } else {
        let delay = o.retry_after.or_else(|| {
            retry::next_delay(
                &retry_schedule_of(d),
                d.max_attempts.max(1) as u32,
                number as u32,
                retry::random_jitter(),
            )
        });
        // Retry-After cannot extend past the attempt budget either.
        let delay = if number >= d.max_attempts {
            None
        } else {
            delay
        };
        match delay {
            None => ("FAILED", None),
            Some(delay) => {
                let at = finished_at + TimeDelta::from_std(delay).unwrap_or(TimeDelta::zero());
                if d.discard_after_secs
                    .is_some_and(|s| at > c.created_at + TimeDelta::seconds(s))
                {
                    ("DISCARDED", None)
                } else {
                    ("AWAITING_RETRY", Some(at))
                }
            }
        }
    };
    let error = o.error.as_ref().map(|(_, m)| m.clone());
    let attempt = delivery_attempt::Model {
        id: new_id(),
        tenant_id: c.tenant_id.clone(),
        delivery_id: c.id,
        destination_id: c.destination_id,
        event_id: c.event_id,
        event_type: c.event_type.clone(),
        attempt_number: number,
        request_id,
        started_at,
        duration_ms: o.duration.as_millis().min(i32::MAX as u128) as i32,
        response_status: status_code,
        response_body: o.body.clone(),
        error_kind: o.error.as_ref().map(|(k, _)| k.as_str().to_string()),
        error_message: error.clone(),
        outcome: if o.success() { "SUCCESS" } else { "FAILURE" }.to_string(),
        next_attempt_at: next,
    };
    let update = DeliveryUpdate {
        id: c.id,
        status,
        attempt_count: Some(number),
        next_attempt_at: next,
        last_status_code: status_code,
        last_error: error,
        completed: next.is_none(),
    };
    (update, attempt)
}

/// Applies the circuit transition in memory (so the next request sees it at once) and
/// queues it for the database.
fn update_health(
    engine: &Engine,
    rt: &DestRuntime,
    d: &destination::Model,
    o: &Outcome,
    retry_at: Option<DateTime<Utc>>,
    t: DateTime<Utc>,
    probe: bool,
) -> HealthState {
    let before = rt.health();
    let result = if o.success() {
        AttemptResult::Success
    } else if o.gone() {
        AttemptResult::Gone
    } else {
        AttemptResult::Failure {
            retry_scheduled: retry_at.is_some(),
        }
    };
    // A failure of a request that left before the circuit opened is not a failed probe: it
    // must neither push the probe further out nor climb the probe ladder.
    let stray_failure = before.health == Health::Failing
        && !probe
        && matches!(result, AttemptResult::Failure { .. });
    let tr = if stray_failure {
        circuit::Transition {
            health: Health::Failing,
            consecutive_failures: before.consecutive_failures,
            pause_for: None,
            disable: false,
        }
    } else {
        circuit::after_attempt(before.health, before.consecutive_failures, result)
    };
    let mut gate = if stray_failure {
        before.gate
    } else {
        tr.pause_for
            .and_then(|p| TimeDelta::from_std(p).ok())
            .map(|p| t + p)
    };
    // FIFO: nothing overtakes a head that waits for its retry.
    if d.ordered && gate.is_none() {
        gate = retry_at;
    }
    let after = HealthState {
        health: tr.health,
        consecutive_failures: tr.consecutive_failures,
        gate,
    };
    rt.set_health(after.clone());
    let failed = !o.success();
    engine
        .state
        .writer
        .send(WriterMsg::Health(Box::new(HealthUpdate {
            destination_id: d.id,
            tenant_id: d.tenant_id.clone(),
            health: after.health,
            consecutive_failures: after.consecutive_failures,
            gate: after.gate,
            last_success_at: (!failed).then_some(t),
            last_failure_at: failed.then_some(t),
            last_failed_status_code: if failed {
                o.status.map(i32::from)
            } else {
                None
            },
            last_failed_reason: if failed {
                o.error.as_ref().map(|(_, m)| m.clone())
            } else {
                None
            },
            disable: tr.disable,
            changed: after.health != before.health,
            release_held_until: (before.health == Health::Failing
                && after.health == Health::Active)
                .then(|| t + PROBE_RESERVATION),
        })));
    after
}
