//! The messages of `graphql-transport-ws` and of the legacy `graphql-ws`
//! (subscriptions-transport-ws), and the close codes the current protocol defines.

use serde::Deserialize;
use serde_json::{Value, json};

/// The subprotocol a socket speaks, as negotiated in the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`: subscribe / next / error / complete, ping / pong.
    Transport,
    /// `graphql-ws` (subscriptions-transport-ws): start / data / error / stop.
    Legacy,
}

impl Protocol {
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name {
            "graphql-transport-ws" => Some(Protocol::Transport),
            "graphql-ws" => Some(Protocol::Legacy),
            _ => None,
        }
    }
}

/// Close codes (the 44xx ones are graphql-transport-ws's; the legacy protocol has none of
/// its own and gets the same).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const BAD_MESSAGE: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const DUPLICATE_ID: u16 = 4409;
    pub const TOO_MANY_INITS: u16 = 4429;
}

/// What a client may send. Which types are valid depends on the protocol
/// ([`Incoming::parse`] refuses the other protocol's names).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: Box<async_graphql::Request>,
    },
    Start {
        id: String,
        payload: Box<async_graphql::Request>,
    },
    Complete {
        id: String,
    },
    Stop {
        id: String,
    },
    ConnectionTerminate,
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {},
}

/// A client message, the same for both protocols.
pub enum Incoming {
    Init(Value),
    Subscribe(String, Box<async_graphql::Request>),
    Complete(String),
    Terminate,
    Ping(Option<Value>),
    Pong,
}

impl Incoming {
    /// Parses one text (or binary) message; the error says what is wrong with it.
    pub fn parse(bytes: &[u8], proto: Protocol) -> Result<Self, String> {
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid message: {e}"))?;
        let legacy = proto == Protocol::Legacy;
        Ok(match wire {
            Wire::ConnectionInit { payload } => match payload {
                None | Some(Value::Null) => Incoming::Init(Value::Object(Default::default())),
                Some(p @ Value::Object(_)) => Incoming::Init(p),
                Some(_) => return Err("connection_init payload must be an object".into()),
            },
            Wire::Subscribe { id, payload } if !legacy => Incoming::Subscribe(id, payload),
            Wire::Start { id, payload } if legacy => Incoming::Subscribe(id, payload),
            Wire::Complete { id } if !legacy => Incoming::Complete(id),
            Wire::Stop { id } if legacy => Incoming::Complete(id),
            Wire::ConnectionTerminate if legacy => Incoming::Terminate,
            Wire::Ping { payload } => Incoming::Ping(payload),
            Wire::Pong {} => Incoming::Pong,
            _ => return Err("message type not part of this subprotocol".into()),
        })
    }
}

pub fn ack() -> String {
    json!({"type": "connection_ack"}).to_string()
}

pub fn pong(payload: Option<Value>) -> String {
    match payload {
        Some(p) => json!({"type": "pong", "payload": p}).to_string(),
        None => json!({"type": "pong"}).to_string(),
    }
}

/// A result of operation `id`.
pub fn next(proto: Protocol, id: &str, resp: &async_graphql::Response) -> String {
    let kind = match proto {
        Protocol::Transport => "next",
        Protocol::Legacy => "data",
    };
    json!({"type": kind, "id": id, "payload": resp}).to_string()
}

/// `error`: the operation failed before it ran (graphql-transport-ws only); no `complete`
/// follows.
pub fn error(id: &str, errors: &[async_graphql::ServerError]) -> String {
    json!({"type": "error", "id": id, "payload": errors}).to_string()
}

pub fn complete(id: &str) -> String {
    json!({"type": "complete", "id": id}).to_string()
}

/// The legacy protocol's refusal of `connection_init`, sent before the socket closes.
pub fn connection_error(message: &str) -> String {
    json!({"type": "connection_error", "payload": {"message": message}}).to_string()
}

/// A close reason within the 123 bytes a close frame can carry.
pub fn reason(text: &str) -> String {
    const MAX: usize = 123;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_protocols_names_only() {
        let sub = br#"{"type":"subscribe","id":"1","payload":{"query":"{ viewer { tenant } }"}}"#;
        assert!(matches!(
            Incoming::parse(sub, Protocol::Transport),
            Ok(Incoming::Subscribe(id, _)) if id == "1"
        ));
        assert!(Incoming::parse(sub, Protocol::Legacy).is_err());
        let start = br#"{"type":"start","id":"1","payload":{"query":"{ viewer { tenant } }"}}"#;
        assert!(Incoming::parse(start, Protocol::Transport).is_err());
        assert!(matches!(
            Incoming::parse(start, Protocol::Legacy),
            Ok(Incoming::Subscribe(..))
        ));
        for bad in [
            &b"not json"[..],
            br#"{"id":"1"}"#,
            br#"{"type":"subscribe","id":"1"}"#,
            br#"{"type":"connection_init","payload":[1]}"#,
            br#"{"type":"nope"}"#,
        ] {
            assert!(Incoming::parse(bad, Protocol::Transport).is_err());
        }
        assert!(matches!(
            Incoming::parse(br#"{"type":"connection_init"}"#, Protocol::Transport),
            Ok(Incoming::Init(Value::Object(_)))
        ));
    }

    #[test]
    fn close_reasons_fit_a_frame() {
        let long = "é".repeat(100);
        let r = reason(&long);
        assert!(r.len() <= 123 && long.starts_with(&r));
        assert_eq!(reason("short"), "short");
    }
}
