//! A destination's settings: the patch every create and update goes through (one validation
//! path) and the JSON columns' decoding. Sealing at rest is in `destination_secrets`.

use chrono::{DateTime, Utc};
use entity::destination;
use serde::{Deserialize, Serialize};

use super::matching::{EventsPolicy, Level};
use super::validate::{self, FieldError};
use super::{new_id, now};
use crate::auth::Principal;
use crate::dispatch::circuit::Health;
use crate::dispatch::payload::PayloadFormat;
use crate::dispatch::retry;
use crate::dispatch::signing::{self, SigningScheme};

pub const DEFAULT_TIMEOUT_MS: i32 = 10_000;
pub const DEFAULT_MAX_IN_FLIGHT: i32 = 32;
pub const DEFAULT_ROTATION_GRACE_SECS: i64 = 24 * 3600;
pub const MAX_ROTATION_GRACE_SECS: i64 = 7 * 24 * 3600;

/// Credentials the destination's receiver expects. Never returned by the API, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            HttpAuth::Bearer { .. } => f.write_str("Bearer(***)"),
        }
    }
}

impl HttpAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpAuth::Basic { .. } => "BASIC",
            HttpAuth::Bearer { .. } => "BEARER",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Every destination setting, each optional: creation applies it over the defaults, an update
/// over the stored row. One validation path for both.
#[derive(Clone, Debug, Default)]
pub struct DestinationPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub display_name: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub signing_scheme: Option<SigningScheme>,
    pub signature_header: Option<Option<String>>,
    pub signing_secret: Option<String>,
    /// `Some(None)` removes authentication.
    pub http_auth: Option<Option<HttpAuth>>,
    pub headers: Option<Vec<Header>>,
    pub timeout_ms: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    /// jq program whose output is the body; `Some(None)` removes it.
    pub transform: Option<Option<String>>,
    pub batch_size: Option<i32>,
    pub batch_window_ms: Option<i32>,
    pub rate_limit_per_sec: Option<Option<i32>>,
    pub max_in_flight: Option<i32>,
    pub ordered: Option<bool>,
    pub retry_schedule: Option<Vec<i32>>,
    pub max_attempts: Option<i32>,
    pub discard_after_secs: Option<Option<i64>>,
    pub lossy: Option<bool>,
    pub tls_verify: Option<bool>,
}

/// The first subscription, created inline with the destination.
#[derive(Clone, Debug, Default)]
pub struct InitialSubscription {
    pub event_types: Option<Vec<String>>,
    pub events_policy: Option<EventsPolicy>,
    pub min_level: Option<Level>,
}

#[derive(Clone, Debug, Default)]
pub struct DestinationFilter {
    pub enabled: Option<bool>,
    pub status: Option<Health>,
    pub name_contains: Option<String>,
    pub created_since: Option<DateTime<Utc>>,
    pub created_until: Option<DateTime<Utc>>,
}

/// Decoded JSON columns of a destination row.
pub fn headers_of(m: &destination::Model) -> Vec<Header> {
    serde_json::from_str(&m.headers).unwrap_or_default()
}

pub fn http_auth_of(m: &destination::Model) -> Option<HttpAuth> {
    m.http_auth
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

pub fn retry_schedule_of(m: &destination::Model) -> Vec<u32> {
    serde_json::from_str(&m.retry_schedule).unwrap_or_else(|_| retry::DEFAULT_SCHEDULE.to_vec())
}

pub(super) fn defaults(p: &Principal, name: String, url: String) -> destination::Model {
    let t = now();
    destination::Model {
        id: new_id(),
        tenant_id: p.tenant.clone(),
        name,
        display_name: None,
        description: None,
        url,
        enabled: true,
        status: Health::Active.as_str().to_string(),
        signing_scheme: SigningScheme::StandardWebhooks.as_str().to_string(),
        signature_header: None,
        signing_secret: String::new(),
        previous_secret: None,
        previous_secret_expires_at: None,
        http_auth: None,
        headers: "[]".into(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        payload_format: PayloadFormat::Envelope.as_str().to_string(),
        transform: None,
        batch_size: 1,
        batch_window_ms: 0,
        rate_limit_per_sec: None,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        ordered: false,
        retry_schedule: json(&retry::DEFAULT_SCHEDULE),
        max_attempts: retry::DEFAULT_MAX_ATTEMPTS as i32,
        discard_after_secs: None,
        lossy: false,
        tls_verify: true,
        consecutive_failures: 0,
        last_success_at: None,
        last_failure_at: None,
        last_failed_status_code: None,
        last_failed_reason: None,
        next_attempt_at: None,
        version: 1,
        created_at: t,
        updated_at: t,
        updated_by: p.subject.clone(),
        deleted_at: None,
    }
}

pub(crate) fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Validates every present field of `patch` and writes it into `m`. Secrets are checked
/// against the scheme that will be in force after the patch.
pub(super) fn apply(m: &mut destination::Model, patch: DestinationPatch) -> Result<(), FieldError> {
    let patch_sets_batch = patch.batch_size.is_some();
    if let Some(name) = patch.name {
        validate::name(&name)?;
        m.name = name;
    }
    if let Some(url) = patch.url {
        let to = validate::url(&url)?;
        // Credentials belong to the receiver they were given for. Moving to another origin
        // needs them given again (or removed): otherwise a token that may change the URL
        // could have them sent to a server of its choosing.
        let moves = !::url::Url::parse(&m.url).is_ok_and(|from| from.origin() == to.origin());
        if moves {
            let to = to.origin().ascii_serialization();
            let again = |field: &'static str, what: &str| FieldError {
                field,
                message: format!(
                    "the url moves to another origin ({to}): give {field} again, or {what} to \
                     send none there"
                ),
            };
            if m.http_auth.is_some() && patch.http_auth.is_none() {
                return Err(again("httpAuth", "null"));
            }
            if !headers_of(m).is_empty() && patch.headers.is_none() {
                return Err(again("headers", "[]"));
            }
        }
        m.url = url;
    }
    if let Some(v) = patch.display_name {
        validate::optional_text("displayName", v.as_deref(), validate::MAX_DISPLAY_NAME_LEN)?;
        m.display_name = v;
    }
    if let Some(v) = patch.description {
        validate::optional_text("description", v.as_deref(), validate::MAX_DESCRIPTION_LEN)?;
        m.description = v;
    }
    if let Some(v) = patch.enabled {
        m.enabled = v;
        m.status = if v {
            Health::Active.as_str().into()
        } else {
            Health::Disabled.as_str().into()
        };
    }
    let scheme_changed = patch
        .signing_scheme
        .is_some_and(|s| s.as_str() != m.signing_scheme);
    if let Some(s) = patch.signing_scheme {
        m.signing_scheme = s.as_str().into();
    }
    if let Some(h) = patch.signature_header {
        if let Some(h) = &h {
            validate::signature_header(h)?;
        }
        m.signature_header = h;
    }
    let scheme = SigningScheme::parse(&m.signing_scheme).unwrap_or(SigningScheme::StandardWebhooks);
    match patch.signing_secret {
        Some(secret) => {
            signing::validate_secret(scheme, &secret).map_err(|message| FieldError {
                field: "signingSecret",
                message,
            })?;
            m.signing_secret = secret;
        }
        None if m.signing_secret.is_empty() => m.signing_secret = signing::generate_secret(),
        None if scheme_changed => {
            // A secret made for one scheme may be malformed for another: Standard Webhooks
            // needs a `whsec_` key.
            signing::validate_secret(scheme, &m.signing_secret).map_err(|message| FieldError {
                field: "signingSecret",
                message: format!("the current secret does not suit the new scheme: {message}"),
            })?;
        }
        None => {}
    }
    if let Some(auth) = patch.http_auth {
        match &auth {
            Some(HttpAuth::Basic { username, password }) => {
                validate::basic_auth(username, password)?
            }
            Some(HttpAuth::Bearer { token }) => validate::bearer_token(token)?,
            None => {}
        }
        m.http_auth = auth.as_ref().map(json);
    }
    if let Some(headers) = patch.headers {
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        validate::headers(&pairs)?;
        m.headers = json(&headers);
    }
    if let Some(v) = patch.timeout_ms {
        validate::timeout_ms(v)?;
        m.timeout_ms = v;
    }
    if let Some(v) = patch.payload_format {
        m.payload_format = v.as_str().into();
    }
    if let Some(v) = patch.transform {
        if let Some(code) = &v {
            crate::jq::compile(code).map_err(|e| FieldError::new("transform", e))?;
        }
        m.transform = v;
    }
    if let Some(v) = patch.batch_size {
        validate::batch_size(v)?;
        m.batch_size = v;
    }
    // A transform builds one event's body; a batch body holds many events, so the two do
    // not combine (the field named is the one this patch set, else `transform`).
    if m.transform.is_some() && m.batch_size > 1 {
        let field = if patch_sets_batch {
            "batchSize"
        } else {
            "transform"
        };
        return Err(FieldError::new(
            field,
            "a destination with a transform sends one event per request; batchSize must be 1",
        ));
    }
    if let Some(v) = patch.batch_window_ms {
        validate::batch_window_ms(v)?;
        m.batch_window_ms = v;
    }
    if let Some(v) = patch.rate_limit_per_sec {
        if let Some(v) = v {
            validate::rate_limit_per_sec(v)?;
        }
        m.rate_limit_per_sec = v;
    }
    if let Some(v) = patch.max_in_flight {
        validate::max_in_flight(v)?;
        m.max_in_flight = v;
    }
    if let Some(v) = patch.ordered {
        m.ordered = v;
    }
    if let Some(v) = patch.retry_schedule {
        m.retry_schedule = json(&validate::retry_schedule(&v)?);
    }
    if let Some(v) = patch.max_attempts {
        validate::max_attempts(v)?;
        m.max_attempts = v;
    }
    if let Some(v) = patch.discard_after_secs {
        if let Some(v) = v {
            validate::discard_after_secs(v)?;
        }
        m.discard_after_secs = v;
    }
    if let Some(v) = patch.lossy {
        m.lossy = v;
    }
    if let Some(v) = patch.tls_verify {
        m.tls_verify = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;

    fn principal() -> Principal {
        Principal {
            tenant: "t".into(),
            subject: "s".into(),
            scopes: Scopes::parse("admin"),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn apply_validates_and_generates_secret() {
        let mut m = defaults(&principal(), "n".into(), "https://example.com/h".into());
        apply(&mut m, DestinationPatch::default()).unwrap();
        assert!(m.signing_secret.starts_with("whsec_"));
        let err = apply(
            &mut m,
            DestinationPatch {
                timeout_ms: Some(10),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.field, "timeoutMs");
        let err = apply(
            &mut m,
            DestinationPatch {
                signing_secret: Some("short".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.field, "signingSecret");
    }

    #[test]
    fn credentials_do_not_follow_the_url_to_another_origin() {
        let with_creds = || {
            let mut m = defaults(&principal(), "n".into(), "https://a.example/h".into());
            let patch = DestinationPatch {
                http_auth: Some(Some(HttpAuth::Bearer { token: "t".into() })),
                headers: Some(vec![Header {
                    name: "X-Key".into(),
                    value: "k".into(),
                }]),
                ..Default::default()
            };
            apply(&mut m, patch).unwrap();
            m
        };
        let to = |url: &str| DestinationPatch {
            url: Some(url.into()),
            ..Default::default()
        };
        // Same origin (default port spelled out, other path): credentials stay.
        for url in ["https://a.example:443/other", "https://A.example/h?x=1"] {
            let mut m = with_creds();
            apply(&mut m, to(url)).unwrap();
            assert!(m.http_auth.is_some() && headers_of(&m).len() == 1, "{url}");
        }
        // Another scheme, host or port: refused until the credentials are given again.
        for url in [
            "http://a.example/h",
            "https://b.example/h",
            "https://a.example:8443/h",
        ] {
            let mut m = with_creds();
            let err = apply(&mut m, to(url)).unwrap_err();
            assert_eq!(err.field, "httpAuth", "{url}");
            let mut patch = to(url);
            patch.http_auth = Some(None);
            assert_eq!(apply(&mut m, patch).unwrap_err().field, "headers", "{url}");
            let mut patch = to(url);
            patch.http_auth = Some(None);
            patch.headers = Some(vec![]);
            apply(&mut m, patch).unwrap();
            assert_eq!(m.url, url);
            assert!(m.http_auth.is_none() && headers_of(&m).is_empty());
        }
        // Without credentials, a move needs nothing.
        let mut m = defaults(&principal(), "n".into(), "https://a.example/h".into());
        apply(&mut m, to("https://b.example/h")).unwrap();
    }

    #[test]
    fn http_auth_debug_is_redacted() {
        let a = HttpAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let b = HttpAuth::Bearer {
            token: "tok-secret".into(),
        };
        assert!(!format!("{b:?}").contains("tok-secret"));
    }
}
