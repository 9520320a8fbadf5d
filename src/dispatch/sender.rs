//! The HTTP side of one attempt: build the signed request, send it with the destination's
//! timeout through the guarded client, read at most 4 KiB of the answer, classify the outcome.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use entity::destination;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::guard::{self, GuardedResolver};
use super::retry;
use super::signing::{self, Secret, SigningScheme};
use crate::config::EgressProxy;
use crate::service::destinations::{HttpAuth, headers_of, http_auth_of};

/// Sent with every request.
pub const USER_AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));

/// How much of a response body is kept.
pub const MAX_RESPONSE_BODY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    Tls,
    Dns,
    HttpStatus,
    BlockedTarget,
    InvalidResponse,
    /// The destination's transform failed on the event: no request was made.
    Transform,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::Connect => "CONNECT",
            ErrorKind::Tls => "TLS",
            ErrorKind::Dns => "DNS",
            ErrorKind::HttpStatus => "HTTP_STATUS",
            ErrorKind::BlockedTarget => "BLOCKED_TARGET",
            ErrorKind::InvalidResponse => "INVALID_RESPONSE",
            ErrorKind::Transform => "TRANSFORM",
        }
    }
}

/// What one request did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<(ErrorKind, String)>,
    /// A 429/503 `Retry-After`, capped.
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.error.is_none()
    }

    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }

    pub fn failed(kind: ErrorKind, msg: impl Into<String>, started: Instant) -> Self {
        Outcome {
            status: None,
            body: None,
            error: Some((kind, msg.into())),
            retry_after: None,
            duration: started.elapsed(),
        }
    }
}

/// Two pooled clients (certificate checks on and off). Without an egress proxy both connect
/// directly and resolve through the guard; the environment's proxy variables are never read,
/// since a proxy resolves the target itself, out of the guard's sight.
#[derive(Clone)]
pub struct HttpSender {
    verifying: reqwest::Client,
    insecure: reqwest::Client,
    allow_private: bool,
    /// Deliveries go through the configured egress proxy: target names are resolved and
    /// judged before each request (see [`guard::check_name_for_proxy`]).
    via_proxy: bool,
}

impl HttpSender {
    pub fn new(
        allow_private: bool,
        egress_proxy: Option<&EgressProxy>,
    ) -> Result<Self, reqwest::Error> {
        let build = |verify: bool| {
            let builder = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(60))
                // No cap of its own: the dispatcher's global semaphore already bounds the
                // requests in flight, hence the connections. A cap below that closes and
                // reopens a connection for every request beyond it when many destinations
                // share a host, which dominates the CPU of the fan-out benchmark.
                .pool_max_idle_per_host(usize::MAX)
                .tcp_nodelay(true)
                .tls_danger_accept_invalid_certs(!verify);
            let builder = match egress_proxy {
                None => builder
                    .no_proxy()
                    .dns_resolver(Arc::new(GuardedResolver { allow_private })),
                // The resolver then only ever looks up the proxy's own host, which the
                // operator chose and may well be private.
                Some(p) => builder.proxy(reqwest::Proxy::all(p.url())?),
            };
            builder.build()
        };
        Ok(Self {
            verifying: build(true)?,
            insecure: build(false)?,
            allow_private,
            via_proxy: egress_proxy.is_some(),
        })
    }

    /// Sends `body` to the destination, signed with `msg_id` (the event id, or the request id
    /// of a batch).
    pub async fn send(&self, d: &destination::Model, msg_id: &str, body: Vec<u8>) -> Outcome {
        let started = Instant::now();
        let url = match reqwest::Url::parse(&d.url) {
            Ok(u) => u,
            Err(e) => return Outcome::failed(ErrorKind::Connect, format!("bad URL: {e}"), started),
        };
        if let Err(e) = guard::check_url(&url, self.allow_private) {
            return Outcome::failed(ErrorKind::BlockedTarget, e.to_string(), started);
        }
        if self.via_proxy
            && let Err(e) = guard::check_name_for_proxy(&url, self.allow_private).await
        {
            let kind = match e {
                guard::GuardError::Dns(_) => ErrorKind::Dns,
                _ => ErrorKind::BlockedTarget,
            };
            return Outcome::failed(kind, e.to_string(), started);
        }
        let headers = match request_headers(d, msg_id, &body) {
            Ok((h, _)) => h,
            Err(e) => return Outcome::failed(ErrorKind::InvalidResponse, e, started),
        };
        let client = if d.tls_verify {
            &self.verifying
        } else {
            &self.insecure
        };
        let timeout = Duration::from_millis(d.timeout_ms.clamp(1, 120_000) as u64);
        let mut req = client
            .post(url)
            .timeout(timeout)
            .headers(headers)
            .body(body);
        match http_auth_of(d) {
            Some(HttpAuth::Basic { username, password }) => {
                req = req.basic_auth(username, Some(password))
            }
            Some(HttpAuth::Bearer { token }) => req = req.bearer_auth(token),
            None => {}
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let (kind, msg) = classify(&e);
                return Outcome::failed(kind, msg, started);
            }
        };
        let status = resp.status();
        let retry_after = if status.as_u16() == 429 || status.as_u16() == 503 {
            resp.headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, Utc::now()))
        } else {
            None
        };
        // Bounded read: a huge answer costs at most 4 KiB of memory and is then dropped.
        let mut buf: Vec<u8> = Vec::new();
        let mut body_error = None;
        while buf.len() < MAX_RESPONSE_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BODY - buf.len();
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    body_error = Some(classify(&e));
                    break;
                }
            }
        }
        let duration = started.elapsed();
        // PostgreSQL text cannot hold NUL: a receiver answering with one must not make the
        // attempt unrecordable (the completion writer would retry that flush forever).
        let body =
            (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).replace('\0', "\u{FFFD}"));
        let error = if !status.is_success() {
            let reason = status.canonical_reason().unwrap_or("");
            Some((
                ErrorKind::HttpStatus,
                format!("HTTP {} {reason}", status.as_u16())
                    .trim_end()
                    .to_string(),
            ))
        } else {
            // A 2xx whose body broke off still reached the receiver; only a timeout while
            // reading counts against it.
            body_error.filter(|(k, _)| *k == ErrorKind::Timeout)
        };
        Outcome {
            status: Some(status.as_u16()),
            body,
            error,
            retry_after,
            duration,
        }
    }
}

/// Content type, the destination's own headers and the signature headers; also the signature
/// itself (the value of the signature header).
pub(crate) fn request_headers(
    d: &destination::Model,
    msg_id: &str,
    body: &[u8],
) -> Result<(HeaderMap, String), String> {
    let mut h = HeaderMap::new();
    h.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for header in headers_of(d) {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|e| format!("header {:?}: {e}", header.name))?;
        let value = HeaderValue::from_str(&header.value)
            .map_err(|e| format!("header {:?}: {e}", header.name))?;
        h.insert(name, value);
    }
    let scheme = SigningScheme::parse(&d.signing_scheme).unwrap_or(SigningScheme::StandardWebhooks);
    let current = Secret::new(d.signing_secret.clone());
    let previous = d
        .previous_secret
        .as_ref()
        .filter(|_| d.previous_secret_expires_at.is_some_and(|t| t > Utc::now()))
        .map(|s| Secret::new(s.clone()));
    let mut secrets = vec![&current];
    if let Some(p) = &previous {
        secrets.push(p);
    }
    let signed = signing::sign(
        scheme,
        d.signature_header.as_deref(),
        &secrets,
        msg_id,
        Utc::now().timestamp(),
        body,
    )?;
    // `sign` puts the signature header last.
    let signature = signed.last().map(|(_, v)| v.clone()).unwrap_or_default();
    for (name, value) in signed {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        h.insert(name, value);
    }
    Ok((h, signature))
}

/// Maps a reqwest error to an error kind by walking its cause chain.
fn classify(e: &reqwest::Error) -> (ErrorKind, String) {
    let mut chain = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if lower.contains("blocked target") {
        ErrorKind::BlockedTarget
    } else if lower.contains("dns") || lower.contains("failed to lookup") {
        ErrorKind::Dns
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
    {
        ErrorKind::Tls
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::InvalidResponse
    };
    (kind, chain)
}
