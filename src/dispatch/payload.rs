//! Request bodies: the JSON envelope, raw payloads, and batches, built without re-parsing payloads.

use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    Envelope,
    Raw,
}

impl PayloadFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Envelope => "ENVELOPE",
            Self::Raw => "RAW",
        }
    }

    /// Case-insensitive so hand-written config values are accepted too.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Envelope, Self::Raw]
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub level: &'a str,
    pub created_at: DateTime<Utc>,
    /// The payload JSON text exactly as stored (validated when the event was accepted).
    pub payload_json: &'a str,
}

/// ENVELOPE: `{"id","type","timestamp" (RFC 3339, millis, Z),"level","data": <payload>}`;
/// RAW: the payload text byte-for-byte.
pub fn single_body(format: PayloadFormat, ev: &EventRef) -> Vec<u8> {
    match format {
        PayloadFormat::Raw => ev.payload_json.as_bytes().to_vec(),
        PayloadFormat::Envelope => {
            let mut out = Vec::with_capacity(ev.payload_json.len() + 160);
            out.extend_from_slice(b"{\"id\":");
            push_json_str(&mut out, ev.id);
            out.extend_from_slice(b",\"type\":");
            push_json_str(&mut out, ev.event_type);
            out.extend_from_slice(b",\"timestamp\":");
            push_json_str(&mut out, &timestamp(ev.created_at));
            out.extend_from_slice(b",\"level\":");
            push_json_str(&mut out, ev.level);
            out.extend_from_slice(b",\"data\":");
            push_raw_json(&mut out, ev.payload_json);
            out.push(b'}');
            out
        }
    }
}

/// Batch (batchSize > 1): `{"events":[{"id","createdAt","type","data"}...]}` in the given order.
pub fn batch_body(events: &[EventRef]) -> Vec<u8> {
    let payload_bytes: usize = events.iter().map(|e| e.payload_json.len() + 120).sum();
    let mut out = Vec::with_capacity(payload_bytes + 16);
    out.extend_from_slice(b"{\"events\":[");
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_json_str(&mut out, ev.id);
        out.extend_from_slice(b",\"createdAt\":");
        push_json_str(&mut out, &timestamp(ev.created_at));
        out.extend_from_slice(b",\"type\":");
        push_json_str(&mut out, ev.event_type);
        out.extend_from_slice(b",\"data\":");
        push_raw_json(&mut out, ev.payload_json);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Value's Display is infallible, unlike to_writer's Result, and escapes exactly as
    // serde_json does everywhere else.
    out.extend_from_slice(serde_json::Value::from(s).to_string().as_bytes());
}

/// Embeds stored JSON verbatim. An empty payload would make the whole body invalid JSON,
/// so it becomes `null` instead.
fn push_raw_json(out: &mut Vec<u8>, json: &str) {
    if json.trim().is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(json.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    fn ev<'a>(id: &'a str, ty: &'a str, payload: &'a str, created_ms: i64) -> EventRef<'a> {
        EventRef {
            id,
            event_type: ty,
            level: "INFO",
            created_at: at(created_ms),
            payload_json: payload,
        }
    }

    #[test]
    fn format_strings_round_trip() {
        for (f, s) in [
            (PayloadFormat::Envelope, "ENVELOPE"),
            (PayloadFormat::Raw, "RAW"),
        ] {
            assert_eq!(f.as_str(), s);
            assert_eq!(PayloadFormat::parse(s), Some(f));
            assert_eq!(PayloadFormat::parse(&s.to_lowercase()), Some(f));
        }
        assert_eq!(PayloadFormat::parse("JSON"), None);
        assert_eq!(PayloadFormat::parse(""), None);
    }

    #[test]
    fn envelope_table() {
        // 1_700_000_000_123 ms = 2023-11-14T22:13:20.123Z
        let cases: &[(EventRef, Value)] = &[
            (
                ev(
                    "evt_1",
                    "order.created",
                    r#"{"order":42,"items":[1,2]}"#,
                    1_700_000_000_123,
                ),
                json!({"id":"evt_1","type":"order.created","timestamp":"2023-11-14T22:13:20.123Z",
                       "level":"INFO","data":{"order":42,"items":[1,2]}}),
            ),
            (
                ev("evt_2", "ping", "[]", 0),
                json!({"id":"evt_2","type":"ping","timestamp":"1970-01-01T00:00:00.000Z",
                       "level":"INFO","data":[]}),
            ),
            (
                ev("e\"3\\", "we\u{0007}ird\n", r#""just a string""#, 1),
                json!({"id":"e\"3\\","type":"we\u{0007}ird\n","timestamp":"1970-01-01T00:00:00.001Z",
                       "level":"INFO","data":"just a string"}),
            ),
            (
                ev("evt_4", "n", "  ", 0),
                json!({"id":"evt_4","type":"n","timestamp":"1970-01-01T00:00:00.000Z",
                       "level":"INFO","data":null}),
            ),
            (
                ev("evt_5", "ü.ñ", r#"{"emoji":"🎉","n":1.50}"#, 0),
                json!({"id":"evt_5","type":"ü.ñ","timestamp":"1970-01-01T00:00:00.000Z",
                       "level":"INFO","data":{"emoji":"🎉","n":1.5}}),
            ),
        ];
        for (event, want) in cases {
            let body = single_body(PayloadFormat::Envelope, event);
            let got: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn envelope_keeps_payload_bytes_verbatim() {
        // Key order, whitespace and number spelling would all change under a re-serialize.
        let payload = "{ \"z\": 1.50,\n  \"a\": [1e3, -0.0] }";
        let body = single_body(PayloadFormat::Envelope, &ev("e", "t", payload, 0));
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with(&format!(",\"data\":{payload}}}")), "{text}");
    }

    #[test]
    fn raw_is_byte_for_byte() {
        let cases = [r#"{"a":1}"#, " { \"b\" : [ 1.0 ] } \n", "null", "\"ünï\""];
        for payload in cases {
            let body = single_body(PayloadFormat::Raw, &ev("x", "y", payload, 0));
            assert_eq!(body, payload.as_bytes());
        }
    }

    #[test]
    fn batch_table() {
        let a = ev("a", "t.one", r#"{"n":1}"#, 1_700_000_000_000);
        let b = ev("b", "t.two", "[true]", 1_700_000_000_999);
        let c = ev("c", "t.three", "", 5);
        let cases: &[(&[EventRef], Value)] = &[
            (&[], json!({"events": []})),
            (
                &[a],
                json!({"events":[{"id":"a","createdAt":"2023-11-14T22:13:20.000Z","type":"t.one","data":{"n":1}}]}),
            ),
            (
                &[b, a, c],
                json!({"events":[
                    {"id":"b","createdAt":"2023-11-14T22:13:20.999Z","type":"t.two","data":[true]},
                    {"id":"a","createdAt":"2023-11-14T22:13:20.000Z","type":"t.one","data":{"n":1}},
                    {"id":"c","createdAt":"1970-01-01T00:00:00.005Z","type":"t.three","data":null}
                ]}),
            ),
        ];
        for (events, want) in cases {
            let body = batch_body(events);
            let got: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(&body));
            // Batch items carry exactly these four keys (no level, no timestamp).
            for item in got["events"].as_array().unwrap() {
                let mut keys: Vec<&String> = item.as_object().unwrap().keys().collect();
                keys.sort();
                assert_eq!(keys, ["createdAt", "data", "id", "type"]);
            }
        }
    }
}
