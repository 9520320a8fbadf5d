//! The WebSocket endpoint (`/graphql/ws`): `graphql-transport-ws` as its protocol document
//! defines it, and the legacy `graphql-ws`.
//!
//! The server side of both protocols is written here over `Executor::execute_stream` rather
//! than taken from async-graphql's `WebSocket`, which has no `connection_init` deadline
//! (4408), sends no keep-alive pings, cannot end a connection when its token expires (4403:
//! only subscription streams would stop, queries and mutations would keep running), replaces
//! an operation whose id is reused instead of refusing it (4409), and closes with codes the
//! protocol does not define (1002, 1011) for bad messages and early subscribes.
//!
//! - [`Slots`]: admission. Sockets that have not authenticated yet are bounded per process
//!   and per client address, apart from authenticated ones.
//! - [`conn`]: one connection's loop.
//! - [`protocol`]: the messages and close codes.

pub mod conn;
pub mod protocol;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use conn::Connection;
pub use protocol::Protocol;

use crate::config::Limits;

/// The connection slots of one process.
pub struct Slots {
    /// Authenticated connections (`HOOKLINE_MAX_WS_CONNECTIONS`).
    authenticated: Arc<Semaphore>,
    /// Connections that have not completed `connection_init` (`HOOKLINE_WS_MAX_PRE_AUTH`).
    pre_auth: Arc<Semaphore>,
    /// The same, per client address: one client cannot take every pre-auth slot.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    per_address_max: usize,
}

/// Why a socket was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    PreAuthFull,
    AddressFull,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Refused::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many WebSocket connections (HOOKLINE_MAX_WS_CONNECTIONS)",
            ),
            Refused::PreAuthFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many WebSocket connections awaiting connection_init (HOOKLINE_WS_MAX_PRE_AUTH)",
            ),
            Refused::AddressFull => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many WebSocket connections awaiting connection_init from this address \
                 (HOOKLINE_WS_MAX_PRE_AUTH_PER_ADDRESS)",
            ),
        };
        (status, text).into_response()
    }
}

impl Slots {
    pub fn new(limits: &Limits) -> Self {
        Slots {
            authenticated: Arc::new(Semaphore::new(limits.max_ws_connections)),
            pre_auth: Arc::new(Semaphore::new(limits.ws.max_pre_auth)),
            per_address: Mutex::new(HashMap::new()),
            per_address_max: limits.ws.max_pre_auth_per_address,
        }
    }

    /// A pre-auth slot for a socket from `peer`. Refused at once when no authenticated slot
    /// is free either, so a client hears 503 before upgrading rather than a close after
    /// `connection_init`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<PreAuth, Refused> {
        if self.authenticated.available_permits() == 0 {
            return Err(Refused::Full);
        }
        let key = address_key(peer);
        let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.per_address_max {
            if *n == 0 {
                counts.remove(&key);
            }
            return Err(Refused::AddressFull);
        }
        let Ok(permit) = self.pre_auth.clone().try_acquire_owned() else {
            if *n == 0 {
                counts.remove(&key);
            }
            return Err(Refused::PreAuthFull);
        };
        *n += 1;
        Ok(PreAuth {
            _permit: permit,
            slots: self.clone(),
            key,
        })
    }
}

/// Per-address accounting: an IPv6 client usually holds a whole /64, so that is one address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// A socket's pre-auth slot, released when it authenticates or goes.
pub struct PreAuth {
    _permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
    key: IpAddr,
}

impl PreAuth {
    /// Trades this slot for an authenticated one; None when those are all taken.
    pub fn authenticate(self) -> Option<OwnedSemaphorePermit> {
        self.slots.authenticated.clone().try_acquire_owned().ok()
    }
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(authenticated: usize, pre_auth: usize, per_address: usize) -> Arc<Slots> {
        let mut limits = Limits {
            max_ws_connections: authenticated,
            ..Default::default()
        };
        limits.ws.max_pre_auth = pre_auth;
        limits.ws.max_pre_auth_per_address = per_address;
        Arc::new(Slots::new(&limits))
    }

    #[test]
    fn pre_auth_slots_are_bounded_per_address_and_in_total() {
        let s = slots(10, 3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.admit(a).unwrap();
        let _a2 = s.admit(a).unwrap();
        assert_eq!(s.admit(a).err(), Some(Refused::AddressFull));
        let _b1 = s.admit(b).unwrap();
        assert_eq!(s.admit(b).err(), Some(Refused::PreAuthFull));
        // Authenticating frees the pre-auth slot, for this address too.
        let held = a1.authenticate().expect("authenticated slot");
        let _a3 = s.admit(a).unwrap();
        drop(held);
        assert!(s.per_address.lock().unwrap().len() == 2);
    }

    #[test]
    fn no_authenticated_slot_refuses_at_once() {
        let s = slots(1, 5, 5);
        let ip: IpAddr = "::1".parse().unwrap();
        let held = s.admit(ip).unwrap().authenticate().unwrap();
        assert_eq!(s.admit(ip).err(), Some(Refused::Full));
        drop(held);
        assert!(s.admit(ip).is_ok());
        assert!(s.per_address.lock().unwrap().is_empty(), "released on drop");
    }

    #[test]
    fn an_ipv6_64_is_one_address() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
