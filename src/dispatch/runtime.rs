//! What this instance knows about each destination between claims: its health (circuit), the
//! gate before which nothing may be sent, its in-flight limit, its rate limiter and its FIFO
//! lock. The database row stays the source of truth for settings; this is the fast path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use entity::destination;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::circuit::Health;
use crate::jq;
use crate::ratelimit::TokenBucket;

#[derive(Clone, Debug)]
pub struct HealthState {
    pub health: Health,
    pub consecutive_failures: u32,
    /// No attempt before this time (circuit probe time, or an ordered head's retry).
    pub gate: Option<DateTime<Utc>>,
}

pub struct DestRuntime {
    /// The row version this runtime was built from; a user change resets it.
    pub version: i32,
    pub state: Mutex<HealthState>,
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub batch_size: usize,
    /// Held while an ordered destination works through a group, so groups run one by one.
    pub fifo: tokio::sync::Mutex<()>,
    pub rate: Option<TokenBucket>,
    /// A probe of the open circuit is in flight; others wait for `probe_done`.
    pub probing: std::sync::atomic::AtomicBool,
    pub probe_done: tokio::sync::Notify,
    /// Deliveries claimed and not yet finished, for the claim back-pressure.
    pub waiting: std::sync::atomic::AtomicUsize,
    /// End of the current batching window, when the destination batches.
    pub batch_deadline: Mutex<Option<DateTime<Utc>>>,
    /// The destination's transform, compiled once per row version.
    pub transform: Option<jq::Compiled>,
}

impl DestRuntime {
    fn from_row(d: &destination::Model) -> Self {
        let max = d.max_in_flight.max(1) as usize;
        let max = if d.ordered { 1 } else { max };
        Self {
            version: d.version,
            state: Mutex::new(HealthState {
                health: Health::parse(&d.status).unwrap_or(Health::Active),
                consecutive_failures: d.consecutive_failures.max(0) as u32,
                gate: d.next_attempt_at,
            }),
            in_flight: Arc::new(Semaphore::new(max)),
            max_in_flight: max,
            batch_size: d.batch_size.max(1) as usize,
            fifo: tokio::sync::Mutex::new(()),
            rate: d
                .rate_limit_per_sec
                .filter(|r| *r > 0)
                .map(|r| TokenBucket::new(r as f64)),
            probing: Default::default(),
            probe_done: tokio::sync::Notify::new(),
            waiting: Default::default(),
            batch_deadline: Mutex::new(None),
            transform: d.transform.as_deref().map(jq::compile_stored),
        }
    }

    pub fn health(&self) -> HealthState {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_health(&self, h: HealthState) {
        match self.state.lock() {
            Ok(mut s) => *s = h,
            Err(p) => *p.into_inner() = h,
        }
    }

    /// How many claimed deliveries may wait here before claims skip this destination.
    pub fn waiting_cap(&self) -> usize {
        (self.max_in_flight * 64).max(self.batch_size * 2).max(4)
    }
}

#[derive(Default)]
pub struct Runtimes {
    map: Mutex<HashMap<Uuid, Arc<DestRuntime>>>,
}

impl Runtimes {
    /// The runtime for a destination row, rebuilt when the row's version moved on (a user
    /// changed settings, re-enabled it...). Health reported by other instances is taken from
    /// the row then too.
    pub fn get(&self, d: &destination::Model) -> Arc<DestRuntime> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&d.id) {
            Some(rt) if rt.version == d.version => rt.clone(),
            _ => {
                let rt = Arc::new(DestRuntime::from_row(d));
                map.insert(d.id, rt.clone());
                rt
            }
        }
    }

    /// Destinations whose waiting queue is full: the next claim leaves their rows alone.
    pub fn saturated(&self) -> Vec<Uuid> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, rt)| {
                rt.waiting.load(std::sync::atomic::Ordering::Relaxed) >= rt.waiting_cap()
            })
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn total_waiting(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|rt| rt.waiting.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}
