//! Decides whether a subscription receives an event: type patterns, severity and payload filters.

use std::fmt;

use serde_json::Value;

pub const MAX_PAYLOAD_FILTER_KEYS: usize = 20;

/// Event severity; the derived order (Debug lowest) is what `min_level` compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    /// Case-insensitive, so "warn" from configuration parses like the stored "WARN".
    pub fn parse(s: &str) -> Option<Level> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a subscription's patterns list the event types it wants or the ones it does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsPolicy {
    Include,
    Exclude,
}

impl EventsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EventsPolicy::Include => "INCLUDE",
            EventsPolicy::Exclude => "EXCLUDE",
        }
    }

    /// Case-insensitive, like [`Level::parse`].
    pub fn parse(s: &str) -> Option<EventsPolicy> {
        [EventsPolicy::Include, EventsPolicy::Exclude]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for EventsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pattern semantics as described for `validate::event_type_pattern`: segments compare exactly
/// (case-sensitive); a `*` segment matches exactly one segment, except in last position, where
/// it matches one or more (so `"*"` alone matches every event type). Empty segments never
/// match, so malformed types or patterns fail closed.
///
/// Runs for every subscription on every publish, so it walks both strings with `split`
/// iterators and never allocates.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    let mut pattern = pattern.split('.').peekable();
    let mut event = event_type.split('.');
    while let Some(p) = pattern.next() {
        let Some(e) = event.next() else {
            return false;
        };
        if p.is_empty() || e.is_empty() {
            return false;
        }
        if p == "*" {
            if pattern.peek().is_none() {
                // Trailing wildcard: `e` was the first of the remaining segments; take the rest.
                return event.all(|e| !e.is_empty());
            }
        } else if p != e {
            return false;
        }
    }
    event.next().is_none()
}

pub fn any_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, event_type))
}

/// Whether a subscription lets an event through: the event's level must be at least
/// `min_level`, and with `Include` some pattern must match while with `Exclude` none may.
/// An empty pattern list therefore means "nothing" under `Include` and "everything" under
/// `Exclude`.
pub fn subscription_accepts(
    patterns: &[String],
    policy: EventsPolicy,
    min_level: Level,
    event_type: &str,
    level: Level,
) -> bool {
    // The level test is cheap, so it goes first.
    level >= min_level
        && match policy {
            EventsPolicy::Include => any_matches(patterns, event_type),
            EventsPolicy::Exclude => !any_matches(patterns, event_type),
        }
}

/// Optional payload filter: a JSON object whose keys are dot-paths into the payload and whose
/// values are required there, e.g. `{"data.severity": "high"}`; every entry must match. Path
/// segments index objects by key and arrays by decimal position (`"data.items.0.id"`). A
/// missing path never matches, not even `null`. Numbers compare by value, so `1` equals `1.0`.
///
/// `None` accepts everything. A filter that is not an object cannot have passed
/// [`validate_payload_filter`], so it rejects everything rather than silently matching all.
pub fn payload_filter_accepts(filter: Option<&Value>, payload: &Value) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    let Some(rules) = filter.as_object() else {
        return false;
    };
    rules
        .iter()
        .all(|(path, want)| lookup(payload, path).is_some_and(|got| json_eq(got, want)))
}

fn lookup<'a>(mut value: &'a Value, path: &str) -> Option<&'a Value> {
    for segment in path.split('.') {
        value = match value {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// JSON equality where numbers compare by value. Integers compare exactly; only when a float is
/// involved do both sides go through `f64`, so large integers never collide by rounding.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

/// Checks a filter before it is stored. The message suits a `FieldError` on the filter field.
pub fn validate_payload_filter(filter: &Value) -> Result<(), String> {
    let Some(rules) = filter.as_object() else {
        return Err(format!("must be a JSON object, got {}", kind(filter)));
    };
    let (n, max) = (rules.len(), MAX_PAYLOAD_FILTER_KEYS);
    if n > max {
        return Err(format!("must have at most {max} keys, got {n}"));
    }
    for path in rules.keys() {
        if path.is_empty() {
            return Err("keys must not be empty".to_string());
        }
        if path.split('.').any(str::is_empty) {
            return Err(format!("key {path:?} has an empty path segment"));
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns() {
        let cases = [
            ("*", "user", true),
            ("*", "user.created", true),
            ("*", "a.b.c.d", true),
            ("user.created", "user.created", true),
            ("user.created", "user.deleted", false),
            ("user.created", "user", false),
            ("user.created", "user.created.v2", false),
            ("user.created", "User.created", false),
            ("user", "user.created", false),
            ("user.*", "user.created", true),
            ("user.*", "user.profile.updated", true),
            ("user.*", "user", false),
            ("user.*", "users.created", false),
            ("user.*", "order.user.created", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.c", false),
            ("a.*.c", "a.b.x.c", false),
            ("a.*.c", "a.b.c.d", false),
            ("*.created", "user.created", true),
            ("*.created", "user.profile.created", false),
            ("*.*", "a", false),
            ("*.*", "a.b.c", true),
            // Malformed input on either side fails closed.
            ("*", "", false),
            ("user.*", "user.", false),
            ("user.*", "user.a..b", false),
            ("a..b", "a..b", false),
            ("", "", false),
        ];
        for (pattern, event, want) in cases {
            assert_eq!(
                pattern_matches(pattern, event),
                want,
                "{pattern} vs {event}"
            );
        }
        let list = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(any_matches(
            &list(&["order.*", "user.created"]),
            "user.created"
        ));
        assert!(!any_matches(
            &list(&["order.*", "user.created"]),
            "user.deleted"
        ));
        assert!(!any_matches(&[], "user.created"));
    }

    #[test]
    fn levels_and_policies() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
            assert_eq!(level.to_string(), level.as_str());
        }
        assert!(Level::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("WARNING"), None);
        assert_eq!(Level::parse(""), None);
        for policy in [EventsPolicy::Include, EventsPolicy::Exclude] {
            assert_eq!(EventsPolicy::parse(policy.as_str()), Some(policy));
            assert_eq!(policy.to_string(), policy.as_str());
        }
        assert_eq!(EventsPolicy::parse("exclude"), Some(EventsPolicy::Exclude));
        assert_eq!(EventsPolicy::parse("ALL"), None);
    }

    #[test]
    fn subscriptions() {
        use EventsPolicy::{Exclude, Include};
        use Level::{Critical, Debug, Error, Info, Warn};
        // Patterns are space-separated; "" is an empty list.
        let cases = [
            ("user.*", Include, Debug, "user.created", Debug, true),
            ("user.*", Include, Debug, "order.created", Critical, false),
            ("user.*", Include, Warn, "user.created", Info, false),
            ("user.*", Include, Warn, "user.created", Warn, true),
            ("user.*", Include, Warn, "user.created", Error, true),
            (
                "order.* user.*",
                Include,
                Debug,
                "user.created",
                Debug,
                true,
            ),
            ("user.*", Exclude, Debug, "user.created", Critical, false),
            ("user.*", Exclude, Debug, "order.created", Debug, true),
            ("user.*", Exclude, Error, "order.created", Warn, false),
            (
                "order.* user.*",
                Exclude,
                Debug,
                "user.created",
                Debug,
                false,
            ),
            ("", Include, Debug, "user.created", Critical, false),
            ("", Exclude, Debug, "user.created", Debug, true),
        ];
        for (patterns, policy, min, event, level, want) in cases {
            let list: Vec<String> = patterns.split_whitespace().map(String::from).collect();
            let got = subscription_accepts(&list, policy, min, event, level);
            assert_eq!(got, want, "{patterns:?} {policy} {min} {event} {level}");
        }
    }

    #[test]
    fn payload_filters() {
        let payload = json!({
            "type": "user.created",
            "data": {"severity": "high", "count": 3, "ratio": 0.5, "tags": ["a", "b"],
                     "items": [{"id": 7}], "flag": false, "none": null, "big": 9007199254740993u64},
            "dotted.key": 1
        });
        let cases = [
            (json!({}), true),
            (json!({"data.severity": "high"}), true),
            (json!({"data.severity": "low"}), false),
            (json!({"data.severity": "high", "data.count": 3}), true),
            (json!({"data.severity": "high", "data.count": 4}), false),
            (json!({"data.count": 3.0}), true),
            (json!({"data.ratio": 0.5}), true),
            (json!({"data.count": "3"}), false),
            (json!({"data.big": 9007199254740992u64}), false),
            (json!({"data.big": 9007199254740993u64}), true),
            (json!({"data.tags": ["a", "b"]}), true),
            (json!({"data.tags": ["b", "a"]}), false),
            (json!({"data.tags.1": "b"}), true),
            (json!({"data.items.0.id": 7}), true),
            (json!({"data.items.1.id": 7}), false),
            (json!({"data.items.x": 7}), false),
            (json!({"data": {"flag": false}}), false),
            (json!({"data.flag": false}), true),
            (json!({"data.none": null}), true),
            (json!({"data.missing": null}), false),
            (json!({"type.x": "user.created"}), false),
            // Keys containing dots cannot be addressed: the path splits on every dot.
            (json!({"dotted.key": 1}), false),
            // Not an object: cannot have been validated, so it rejects.
            (json!(["data.severity"]), false),
            (json!(null), false),
        ];
        for (filter, want) in cases {
            assert_eq!(
                payload_filter_accepts(Some(&filter), &payload),
                want,
                "{filter}"
            );
        }
        assert!(payload_filter_accepts(None, &payload));
        assert!(payload_filter_accepts(None, &json!(null)));
        assert!(!payload_filter_accepts(
            Some(&json!({"a": 1})),
            &json!(null)
        ));
        assert!(payload_filter_accepts(
            Some(&json!({"a": {"b": 1}})),
            &json!({"a": {"b": 1.0}})
        ));
    }

    #[test]
    fn payload_filter_validation() {
        let many: serde_json::Map<String, Value> = (0..=MAX_PAYLOAD_FILTER_KEYS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let mut twenty = many.clone();
        twenty.remove("k0");
        let cases = [
            (json!({}), Ok(())),
            (
                json!({"data.severity": "high", "a": [1], "b": null}),
                Ok(()),
            ),
            (Value::Object(twenty), Ok(())),
            (
                Value::Object(many),
                Err("must have at most 20 keys, got 21"),
            ),
            (json!([]), Err("must be a JSON object, got an array")),
            (json!("x"), Err("must be a JSON object, got a string")),
            (json!(null), Err("must be a JSON object, got null")),
            (json!({"": 1}), Err("keys must not be empty")),
            (
                json!({"a..b": 1}),
                Err("key \"a..b\" has an empty path segment"),
            ),
            (
                json!({".a": 1}),
                Err("key \".a\" has an empty path segment"),
            ),
            (
                json!({"a.": 1}),
                Err("key \"a.\" has an empty path segment"),
            ),
        ];
        for (filter, want) in cases {
            let want = want.map_err(String::from);
            assert_eq!(validate_payload_filter(&filter), want, "{filter}");
        }
    }
}
