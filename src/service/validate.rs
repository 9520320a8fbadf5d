//! Pure checks for management-API input; every failure names the GraphQL field it concerns.

use std::collections::HashSet;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_HEADERS: usize = 20;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_RETRY_ENTRIES: usize = 20;
pub const MIN_TIMEOUT_MS: i32 = 1000;
pub const MAX_TIMEOUT_MS: i32 = 60_000;
pub const MAX_BATCH_SIZE: i32 = 1000;
pub const MAX_BATCH_WINDOW_MS: i32 = 300_000;
pub const MAX_EVENT_TYPE_LEN: usize = 256;
pub const MAX_EVENT_TYPE_PATTERNS: usize = 100;
pub const MAX_RETRY_ENTRY_SECS: i32 = 7 * 86_400;
pub const MAX_ATTEMPTS: i32 = 100;
pub const MAX_RATE_LIMIT_PER_SEC: i32 = 100_000;
pub const MAX_IN_FLIGHT: i32 = 1000;
pub const MAX_DISCARD_AFTER_SECS: i64 = 30 * 86_400;
pub const MAX_DISPLAY_NAME_LEN: usize = 256;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
pub const MAX_HEADER_NAME_LEN: usize = 256;
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
pub const MAX_AUTH_FIELD_LEN: usize = 256;
pub const MAX_BEARER_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        FieldError { field, message }
    }
}

/// `ensure!(cond, field, "format", args..)` returns a `FieldError` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $field:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(FieldError::new($field, format!($($msg)+)));
        }
    };
}

/// Non-empty, at most `max` characters (not bytes: limits are stated to users in characters),
/// and free of control characters.
fn text(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    let n = s.chars().count();
    ensure!(n > 0, field, "must not be empty");
    ensure!(n <= max, field, "must be at most {max} characters, got {n}");
    let clean = !s.chars().any(char::is_control);
    ensure!(clean, field, "must not contain control characters");
    Ok(())
}

/// Integer checks hand back the value as unsigned so callers need no further casts. `unit`
/// carries its own leading space so unitless counts read naturally.
fn int_in(field: &'static str, v: i32, min: i32, max: i32, unit: &str) -> Result<u32, FieldError> {
    let ok = (min..=max).contains(&v);
    ensure!(ok, field, "must be between {min} and {max}{unit}, got {v}");
    // Non-negative after the range check, so this conversion is lossless.
    Ok(v.unsigned_abs())
}

pub fn url(s: &str) -> Result<::url::Url, FieldError> {
    const F: &str = "url";
    // Rejected rather than trimmed, so what is stored is exactly what the caller sent.
    ensure!(s.trim() == s, F, "must not start or end with whitespace");
    // Also refuses embedded tabs and newlines, which the url crate would silently drop.
    text(F, s, MAX_URL_LEN)?;
    let parsed = ::url::Url::parse(s).map_err(|e| format!("is not a valid URL: {e}"));
    let u = parsed.map_err(|m| FieldError::new(F, m))?;
    let scheme = u.scheme();
    let web = matches!(scheme, "http" | "https");
    ensure!(web, F, "must be http or https, got {scheme:?}");
    ensure!(u.host_str().is_some(), F, "must include a host");
    // Credentials in URLs leak into logs and delivery records.
    let creds = !u.username().is_empty() || u.password().is_some();
    ensure!(!creds, F, "must not contain credentials; use httpAuth");
    // Fragments are never sent over HTTP, so one here is almost certainly a mistake.
    ensure!(u.fragment().is_none(), F, "must not contain a fragment");
    Ok(u)
}

pub fn name(s: &str) -> Result<(), FieldError> {
    text("name", s, MAX_NAME_LEN)?;
    ensure!(!s.trim().is_empty(), "name", "must not be blank");
    Ok(())
}

/// Free text such as displayName or description: absent and empty are both fine. Line breaks
/// and tabs are allowed because descriptions are multi-line; other control characters are not.
pub fn optional_text(field: &'static str, s: Option<&str>, max: usize) -> Result<(), FieldError> {
    let Some(s) = s else { return Ok(()) };
    let n = s.chars().count();
    ensure!(n <= max, field, "must be at most {max} characters, got {n}");
    let bad = s.chars().any(|c| c.is_control() && !"\n\r\t".contains(c));
    let msg = "must not contain control characters other than line breaks and tabs";
    ensure!(!bad, field, "{msg}");
    Ok(())
}

pub fn timeout_ms(v: i32) -> Result<u32, FieldError> {
    const F: &str = "timeoutMs";
    int_in(F, v, MIN_TIMEOUT_MS, MAX_TIMEOUT_MS, " milliseconds")
}
pub fn batch_size(v: i32) -> Result<u32, FieldError> {
    int_in("batchSize", v, 1, MAX_BATCH_SIZE, " events")
}
pub fn batch_window_ms(v: i32) -> Result<u32, FieldError> {
    const F: &str = "batchWindowMs";
    int_in(F, v, 0, MAX_BATCH_WINDOW_MS, " milliseconds")
}
pub fn max_attempts(v: i32) -> Result<u32, FieldError> {
    int_in("maxAttempts", v, 1, MAX_ATTEMPTS, " attempts")
}
pub fn rate_limit_per_sec(v: i32) -> Result<u32, FieldError> {
    const F: &str = "rateLimitPerSec";
    int_in(F, v, 1, MAX_RATE_LIMIT_PER_SEC, " requests per second")
}
pub fn max_in_flight(v: i32) -> Result<u32, FieldError> {
    int_in("maxInFlight", v, 1, MAX_IN_FLIGHT, " requests")
}

pub fn discard_after_secs(v: i64) -> Result<u64, FieldError> {
    const F: &str = "discardAfterSecs";
    let (max, unit) = (MAX_DISCARD_AFTER_SECS, "seconds (30 days)");
    let ok = (1..=max).contains(&v);
    ensure!(ok, F, "must be between 1 and {max} {unit}, got {v}");
    Ok(v.unsigned_abs())
}

/// Delays in seconds before each retry. Order is not enforced: a schedule that backs off and
/// then retries sooner is unusual but harmless.
pub fn retry_schedule(v: &[i32]) -> Result<Vec<u32>, FieldError> {
    const F: &str = "retrySchedule";
    let (n, max) = (v.len(), MAX_RETRY_ENTRIES);
    ensure!(n > 0, F, "must contain at least one entry");
    ensure!(n <= max, F, "must have at most {max} entries, got {n}");
    let max = MAX_RETRY_ENTRY_SECS;
    let mut out = Vec::with_capacity(n);
    for (i, &secs) in v.iter().enumerate() {
        let (ok, at, unit) = ((0..=max).contains(&secs), i + 1, "seconds (7 days)");
        ensure!(ok, F, "entry {at} must be 0 to {max} {unit}, got {secs}");
        out.push(secs.unsigned_abs());
    }
    Ok(out)
}

/// Why a subscriber may not set this header, or `None` if they may.
fn reserved_reason(name: &str) -> Option<&'static str> {
    const HOP: &str = "it is a hop-by-hop header";
    const SIGNING: &str = "it is set by Hookline when signing deliveries";
    // Allocates, but this runs when subscriptions are saved, never when events are published.
    Some(match name.to_ascii_lowercase().as_str() {
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade" => HOP,
        "proxy-authenticate" | "proxy-authorization" | "transfer-encoding" => HOP,
        "content-length" | "host" => "it is set by the HTTP client",
        "content-type" => "deliveries are always application/json",
        "authorization" => "configure authentication through httpAuth",
        "webhook-id" | "webhook-timestamp" | "webhook-signature" => SIGNING,
        _ => return None,
    })
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(field: &'static str, name: &str) -> Result<(), FieldError> {
    let (n, max) = (name.len(), MAX_HEADER_NAME_LEN);
    ensure!(n > 0, field, "header name must not be empty");
    let ok = name.bytes().all(is_tchar);
    let rule = "letters, digits and !#$%&'*+-.^_`|~ only";
    ensure!(ok, field, "header name {name:?} is invalid ({rule})");
    ensure!(n <= max, field, "header name is over {max} characters");
    Ok(())
}

pub fn header(name: &str, value: &str) -> Result<(), FieldError> {
    const F: &str = "headers";
    header_name(F, name)?;
    let why = reserved_reason(name).unwrap_or_default();
    ensure!(why.is_empty(), F, "header {name:?} cannot be set: {why}");
    let (n, max) = (value.len(), MAX_HEADER_VALUE_LEN);
    ensure!(n <= max, F, "header {name:?} value is over {max} bytes");
    // CR/LF would allow header injection; other controls and non-ASCII upset many servers.
    let bad = value.bytes().find(|&b| !matches!(b, b'\t' | b' '..=b'~'));
    let (ok, b) = (bad.is_none(), bad.unwrap_or_default());
    let rule = "only visible ASCII, space and tab are allowed";
    ensure!(ok, F, "header {name:?} has byte 0x{b:02X}; {rule}");
    Ok(())
}

pub fn headers(list: &[(String, String)]) -> Result<(), FieldError> {
    const F: &str = "headers";
    let (n, max) = (list.len(), MAX_HEADERS);
    ensure!(n <= max, F, "must have at most {max} headers, got {n}");
    for (i, (name, value)) in list.iter().enumerate() {
        header(name, value)?;
        // Quadratic, but the list is capped and this avoids allocating lowercase copies.
        let dup = list[..i].iter().any(|(h, _)| h.eq_ignore_ascii_case(name));
        ensure!(!dup, F, "header {name:?} is listed more than once");
    }
    Ok(())
}

/// Name of the header carrying the signature. `webhook-signature` is the default and so is
/// accepted; other reserved names are not, since they would collide with headers we send.
pub fn signature_header(name: &str) -> Result<(), FieldError> {
    const F: &str = "signatureHeader";
    header_name(F, name)?;
    let why = reserved_reason(name).unwrap_or_default();
    let ok = why.is_empty() || name.eq_ignore_ascii_case("webhook-signature");
    ensure!(ok, F, "header {name:?} cannot be used: {why}");
    Ok(())
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')
}

/// Shared by event types and patterns; patterns may also use `*` as a whole segment.
fn segments(field: &'static str, s: &str, wildcard: bool) -> Result<(), FieldError> {
    text(field, s, MAX_EVENT_TYPE_LEN)?;
    let star = match wildcard {
        true => "'*' must be a whole segment, as in \"user.*\" or \"a.*.c\"",
        false => "publish a concrete type, without '*'",
    };
    let rule = "segments may use only letters, digits, '_', '-' and ':'";
    for seg in s.split('.').filter(|&seg| !(wildcard && seg == "*")) {
        ensure!(!seg.is_empty(), field, "{s:?} has an empty segment");
        ensure!(!seg.contains('*'), field, "{s:?} is invalid: {star}");
        let bad = seg.chars().find(|&c| !is_segment_char(c));
        let c = bad.unwrap_or_default();
        ensure!(bad.is_none(), field, "{s:?} contains {c:?}; {rule}");
    }
    Ok(())
}

pub fn event_type(s: &str) -> Result<(), FieldError> {
    segments("type", s, false)
}

pub fn event_type_pattern(s: &str) -> Result<(), FieldError> {
    segments("eventTypes", s, true)
}

pub fn event_type_patterns(v: &[String]) -> Result<(), FieldError> {
    const F: &str = "eventTypes";
    let (n, max) = (v.len(), MAX_EVENT_TYPE_PATTERNS);
    ensure!(n > 0, F, "must not be empty (use \"*\" for all events)");
    ensure!(n <= max, F, "must have at most {max} patterns, got {n}");
    let mut seen = HashSet::with_capacity(n);
    for p in v {
        event_type_pattern(p)?;
        ensure!(seen.insert(p), F, "{p:?} is listed more than once");
    }
    Ok(())
}

pub fn idempotency_key(s: &str) -> Result<(), FieldError> {
    const F: &str = "idempotencyKey";
    text(F, s, MAX_IDEMPOTENCY_KEY_LEN)?;
    // ASCII only so the key can be echoed in headers and logs unchanged.
    let printable = s.bytes().all(|b| matches!(b, b' '..=b'~'));
    ensure!(printable, F, "must contain only printable ASCII characters");
    // " k" and "k" would be different keys that look identical to a human.
    ensure!(s.trim() == s, F, "must not start or end with whitespace");
    Ok(())
}

pub fn basic_auth(username: &str, password: &str) -> Result<(), FieldError> {
    const F: &str = "httpAuth";
    ensure!(!username.is_empty(), F, "username must not be empty");
    // Basic auth joins the two with ':', so a colon in the username would be ambiguous.
    ensure!(!username.contains(':'), F, "username must not contain ':'");
    for (what, s) in [("username", username), ("password", password)] {
        let (n, max) = (s.chars().count(), MAX_AUTH_FIELD_LEN);
        ensure!(n <= max, F, "{what} is over {max} characters");
        let clean = !s.chars().any(char::is_control);
        ensure!(clean, F, "{what} must not contain control characters");
    }
    Ok(())
}

pub fn bearer_token(token: &str) -> Result<(), FieldError> {
    const F: &str = "httpAuth";
    let (n, max) = (token.len(), MAX_BEARER_TOKEN_LEN);
    ensure!(n > 0, F, "bearer token must not be empty");
    // The hint covers the usual paste mistake; the scheme is added when the header is built.
    let ok = token.bytes().all(|b| b.is_ascii_graphic());
    let hint = "omit the \"Bearer \" prefix";
    ensure!(ok, F, "bearer token must be visible ASCII ({hint})");
    ensure!(n <= max, F, "bearer token is over {max} characters");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list<T>(s: &str, f: impl Fn(&str) -> T) -> Vec<T> {
        s.split_whitespace().map(f).collect()
    }

    /// Runs the check for `key`: the field its errors name, plus a `/variant` where one field
    /// has several checks. `a=b` cases are pairs; `/list` and retrySchedule cases are word lists.
    fn run(key: &str, s: &str) -> Result<(), FieldError> {
        let pair = s.split_once('=').unwrap_or((s, "v"));
        match key {
            "url" => url(s).map(drop),
            "name" => name(s),
            "description" => optional_text("description", Some(s), 10),
            "type" => event_type(s),
            "eventTypes" => event_type_pattern(s),
            "eventTypes/list" => event_type_patterns(&list(s, |p| p.to_string())),
            "signatureHeader" => signature_header(s),
            "idempotencyKey" => idempotency_key(s),
            "httpAuth" => bearer_token(s),
            "httpAuth/basic" => basic_auth(pair.0, pair.1),
            "headers" => header(pair.0, pair.1),
            "headers/list" => headers(&list(s, |n| (n.into(), "v".into()))),
            "retrySchedule" => retry_schedule(&list(s, |w| w.parse().unwrap())).map(drop),
            "timeoutMs" => timeout_ms(s.parse().unwrap()).map(drop),
            _ => panic!("no check for {key}"),
        }
    }

    /// Rows of `key: case|case|…`; every case must pass.
    const ACCEPTED: &[&str] = &[
        "url: https://example.com/hook|http://localhost:8080/a?b=c|https://[::1]/x",
        "name: a|Orders hook| padded |é",
        "description: |line\nline|tab\there|0123456789",
        "type: user|user.created|a.b.c.d|Order_Paid|v1:ns.x-y|0.1",
        "eventTypes: *|user.*|user.created|a.*.c|*.created|*.*|a.b-c:d_e",
        "eventTypes/list: *|* user.* a.b",
        "signatureHeader: X-Signature|webhook-signature|Webhook-Signature|X-Sig-256",
        "idempotencyKey: k|order-42:v1|a b|~!@#$%^&*()",
        "httpAuth: abc.def-ghi_jkl~+/=|x",
        "httpAuth/basic: alice=s3cret|bob=|ünï=pa:ss word",
        "headers: X-Api-Key=abc|x-tenant=|X_Odd!~=a b\tc|X-A=~!",
        "headers/list: |X-A X-B",
        "retrySchedule: 0|0 5 604800|1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    ];

    /// Rows of `key: case|case|…`; every case must fail, naming the field before any '/'.
    /// A case may end in ` => message` to pin the full error text.
    const REJECTED: &[&str] = &[
        "url: | https://a.com|https://a.com |https://a.com\n|https://a.\tcom|a.com/x|https://",
        "url: mailto:a@b.com|file:///etc|ftp://a.com|https://u@a.com|https://a.com/#top|https://a.com/#",
        "url: https://u:p@a.com => url: must not contain credentials; use httpAuth",
        "name: |   |a\nb|\u{85}|a\u{7}b => name: must not contain control characters",
        "description: 01234567890|a\0b|\u{1b}[31m",
        "type: *|user*|a..b|.a|a.|a.b.|a/b|a.b$|é|a b",
        "type: user.* => type: \"user.*\" is invalid: publish a concrete type, without '*'",
        "eventTypes: |user*|**|.a|a.|*a|a.*b|.*|*.|*..|a/b|a b|a..b",
        "eventTypes/list:  => eventTypes: must not be empty (use \"*\" for all events)",
        "eventTypes/list: a.b a.b => eventTypes: \"a.b\" is listed more than once",
        "eventTypes/list: a user* => eventTypes: \"user*\" is invalid: '*' must be a whole segment, as in \"user.*\" or \"a.*.c\"",
        "signatureHeader: |webhook-id|Webhook-Timestamp|content-type|host|Bad:Name",
        "idempotencyKey: | k|k |k\n|é",
        "httpAuth: |Bearer abc|bearer abc|a b|é|a\tb",
        "httpAuth/basic: =pw|a:b=pw|a\n=p|a=p\0",
        "headers: =v|X Space=v|X:Colon=v|Über=v|X-Inject=a\r\nHost: evil|X-Nul=a\0|X-U=é",
        "headers: Connection|KEEP-ALIVE|te|Trailer|Upgrade|Content-Length|Content-Type|Host",
        "headers: Proxy-Authorization|Webhook-Id|webhook-timestamp|Webhook-Signature",
        "headers: Authorization => headers: header \"Authorization\" cannot be set: configure authentication through httpAuth",
        "headers/list: X-A x-a => headers: header \"x-a\" is listed more than once",
        "retrySchedule: |-1|604801|1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
        "retrySchedule: 5 -1 => retrySchedule: entry 2 must be 0 to 604800 seconds (7 days), got -1",
        "timeoutMs: 500 => timeoutMs: must be between 1000 and 60000 milliseconds, got 500",
    ];

    #[test]
    fn string_tables() {
        for (ok, rows) in [(true, ACCEPTED), (false, REJECTED)] {
            for row in rows {
                let (key, cases) = row.split_once(": ").unwrap();
                let field = key.split('/').next().unwrap();
                for case in cases.split('|') {
                    let (case, message) = case.split_once(" => ").unwrap_or((case, ""));
                    let got = run(key, case);
                    let want = if ok { Ok(()) } else { Err(field) };
                    assert_eq!(got.clone().map_err(|e| e.field), want, "{key} {case:?}");
                    let text = got.err().map(|e| e.to_string()).unwrap_or_default();
                    assert!(message.is_empty() || text == message, "{text}");
                }
            }
        }
    }

    #[test]
    fn length_limits() {
        let rows = [
            ("url", "https://example.com/", MAX_URL_LEN),
            ("name", "", MAX_NAME_LEN),
            ("eventTypes", "a.", MAX_EVENT_TYPE_LEN),
            ("idempotencyKey", "", MAX_IDEMPOTENCY_KEY_LEN),
            ("httpAuth", "", MAX_BEARER_TOKEN_LEN),
            ("headers", "X-Long=", MAX_HEADER_VALUE_LEN + 7),
            ("headers", "", MAX_HEADER_NAME_LEN),
            ("httpAuth/basic", "a=", MAX_AUTH_FIELD_LEN + 2),
        ];
        for (key, prefix, max) in rows {
            // 'é' is one character but two bytes: limits stated in characters must hold.
            let fill = if key == "name" { "é" } else { "a" };
            let at_max = format!("{prefix}{}", fill.repeat(max - prefix.len()));
            assert_eq!(run(key, &at_max), Ok(()), "{key} at limit");
            assert!(run(key, &format!("{at_max}a")).is_err(), "{key} over limit");
        }
        let items = |n: usize| (0..n).map(|i| format!("X-{i} ")).collect::<String>();
        let (h, p) = (MAX_HEADERS, MAX_EVENT_TYPE_PATTERNS);
        assert_eq!(run("headers/list", &items(h)), Ok(()));
        assert!(run("headers/list", &items(h + 1)).is_err());
        assert_eq!(run("eventTypes/list", &items(p)), Ok(()));
        assert!(run("eventTypes/list", &items(p + 1)).is_err());
    }

    #[test]
    fn integer_ranges() {
        type Check = fn(i32) -> Result<u32, FieldError>;
        let discard: Check = |v| discard_after_secs(v.into()).map(|s| s as u32);
        let rows: [(Check, &str, i32, i32); 7] = [
            (timeout_ms, "timeoutMs", 1000, 60_000),
            (batch_size, "batchSize", 1, 1000),
            (batch_window_ms, "batchWindowMs", 0, 300_000),
            (max_attempts, "maxAttempts", 1, 100),
            (rate_limit_per_sec, "rateLimitPerSec", 1, 100_000),
            (max_in_flight, "maxInFlight", 1, 1000),
            (discard, "discardAfterSecs", 1, 2_592_000),
        ];
        for (f, field, min, max) in rows {
            assert_eq!((f(min), f(max)), (Ok(min as u32), Ok(max as u32)));
            for v in [min - 1, max + 1, i32::MIN, i32::MAX] {
                assert_eq!(f(v).map_err(|e| e.field), Err(field), "{field} {v}");
            }
        }
        assert!(discard_after_secs(i64::MAX).is_err());
    }
}
