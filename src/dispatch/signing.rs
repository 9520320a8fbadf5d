//! Request signing: Standard Webhooks and plain HMAC-SHA256 (hex / base64) schemes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const WHSEC_PREFIX: &str = "whsec_";
const MIN_CHARS: usize = 8;
const MAX_CHARS: usize = 256;
const WHSEC_MIN_KEY_BYTES: usize = 24;
const WHSEC_MAX_KEY_BYTES: usize = 64;
const GENERATED_KEY_BYTES: usize = 24;
const SCHEMES: [SigningScheme; 3] = [
    SigningScheme::StandardWebhooks,
    SigningScheme::HmacSha256Hex,
    SigningScheme::HmacSha256Base64,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningScheme {
    StandardWebhooks,
    HmacSha256Hex,
    HmacSha256Base64,
}

impl SigningScheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::StandardWebhooks => "STANDARD_WEBHOOKS",
            Self::HmacSha256Hex => "HMAC_SHA256_HEX",
            Self::HmacSha256Base64 => "HMAC_SHA256_BASE64",
        }
    }

    /// Case-insensitive so hand-written config values are accepted too.
    pub fn parse(s: &str) -> Option<Self> {
        SCHEMES
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn default_header(&self) -> &'static str {
        match self {
            Self::StandardWebhooks => "webhook-signature",
            Self::HmacSha256Hex => "X-OM-Signature",
            Self::HmacSha256Base64 => "X-Signature",
        }
    }
}

/// A signing secret that never prints itself: Debug and Display show "***".
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A fresh secret in Standard Webhooks format, usable by every scheme.
pub fn generate_secret() -> String {
    let bytes: [u8; GENERATED_KEY_BYTES] = rand::random();
    format!("{WHSEC_PREFIX}{}", B64.encode(bytes))
}

/// Checked when a secret is stored, so that signing cannot fail on it later.
pub fn validate_secret(scheme: SigningScheme, secret: &str) -> Result<(), String> {
    let chars = secret.chars().count();
    if !(MIN_CHARS..=MAX_CHARS).contains(&chars) {
        let problem = if chars < MIN_CHARS { "short" } else { "long" };
        return Err(format!(
            "secret is too {problem}: {chars} characters, {MIN_CHARS}..={MAX_CHARS} allowed"
        ));
    }
    if scheme == SigningScheme::StandardWebhooks {
        let key = decode_whsec(secret)?;
        if !(WHSEC_MIN_KEY_BYTES..=WHSEC_MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "secret must decode to {WHSEC_MIN_KEY_BYTES}..={WHSEC_MAX_KEY_BYTES} bytes, not {}",
                key.len()
            ));
        }
    }
    Ok(())
}

/// Key bytes: for StandardWebhooks the base64-decoded part after "whsec_"; for the HMAC
/// schemes the UTF-8 bytes of the secret as given (as OpenMetadata / Stalwart do).
pub fn key_bytes(scheme: SigningScheme, secret: &str) -> Result<Vec<u8>, String> {
    match scheme {
        SigningScheme::StandardWebhooks => decode_whsec(secret),
        SigningScheme::HmacSha256Hex | SigningScheme::HmacSha256Base64 => {
            if secret.is_empty() {
                return Err("secret is empty".to_owned());
            }
            Ok(secret.as_bytes().to_vec())
        }
    }
}

fn decode_whsec(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(WHSEC_PREFIX)
        .ok_or_else(|| format!("Standard Webhooks secret must start with \"{WHSEC_PREFIX}\""))?;
    let key = B64
        .decode(encoded)
        .map_err(|e| format!("secret after \"{WHSEC_PREFIX}\" is not valid base64: {e}"))?;
    if key.is_empty() {
        return Err(format!("secret after \"{WHSEC_PREFIX}\" is empty"));
    }
    Ok(key)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], String> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|e| format!("invalid HMAC key: {e}"))?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The signature headers for one request. `secrets` is current first then (during rotation
/// grace) previous. `header_name` only applies to the HMAC schemes: Standard Webhooks fixes
/// its header names and receivers' libraries look for exactly those.
///
/// StandardWebhooks: `webhook-id`, `webhook-timestamp`, and `webhook-signature` carrying one
/// space-separated `v1,<b64>` per secret. The HMAC schemes sign with the current secret only,
/// since their receivers expect exactly one value. The signature header comes last.
pub fn sign(
    scheme: SigningScheme,
    header_name: Option<&str>,
    secrets: &[&Secret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let current = secrets.first().ok_or("no signing secret configured")?;
    match scheme {
        SigningScheme::StandardWebhooks => {
            let ts = timestamp.to_string();
            let mut signatures = Vec::with_capacity(secrets.len());
            for secret in secrets {
                let key = key_bytes(scheme, secret.expose())?;
                let mac = hmac_sha256(&key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body])?;
                signatures.push(format!("v1,{}", B64.encode(mac)));
            }
            Ok(vec![
                ("webhook-id".to_owned(), msg_id.to_owned()),
                ("webhook-timestamp".to_owned(), ts),
                (scheme.default_header().to_owned(), signatures.join(" ")),
            ])
        }
        SigningScheme::HmacSha256Hex | SigningScheme::HmacSha256Base64 => {
            let name = match header_name.map(str::trim) {
                None | Some("") => scheme.default_header(),
                Some(n) if is_header_token(n) => n,
                Some(n) => return Err(format!("invalid signature header name {n:?}")),
            };
            let key = key_bytes(scheme, current.expose())?;
            let mac = hmac_sha256(&key, &[body])?;
            let value = if scheme == SigningScheme::HmacSha256Hex {
                format!("sha256={}", hex::encode(mac))
            } else {
                B64.encode(mac)
            };
            Ok(vec![(name.to_owned(), value)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SigningScheme::*;
    use super::*;
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    use standardwebhooks::Webhook;

    // The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// (scheme, custom header, key, body, expected header name, expected header value)
    #[rustfmt::skip]
    type VectorCase<'a> = (SigningScheme, Option<&'a str>, &'a str, &'a [u8], &'a str, &'a str);

    fn header_map(headers: &[(String, String)]) -> HeaderMap {
        let pair = |(k, v): &(String, String)| {
            let name = HeaderName::from_bytes(k.as_bytes()).unwrap();
            (name, HeaderValue::from_str(v).unwrap())
        };
        headers.iter().map(pair).collect()
    }

    #[test]
    fn scheme_strings_round_trip() {
        #[rustfmt::skip]
        let cases = [
            (StandardWebhooks, "STANDARD_WEBHOOKS",  "webhook-signature"),
            (HmacSha256Hex,    "HMAC_SHA256_HEX",    "X-OM-Signature"),
            (HmacSha256Base64, "HMAC_SHA256_BASE64", "X-Signature"),
        ];
        for (scheme, s, header) in cases {
            assert_eq!(scheme.as_str(), s);
            assert_eq!(SigningScheme::parse(s), Some(scheme));
            assert_eq!(SigningScheme::parse(&s.to_lowercase()), Some(scheme));
            assert_eq!(scheme.default_header(), header);
        }
        let bad = ["", "HMAC", "SHA256", "STANDARD-WEBHOOKS"];
        assert!(bad.iter().all(|b| SigningScheme::parse(b).is_none()));
    }

    #[test]
    fn secret_never_prints_itself() {
        let s = Secret::new("super-secret-value");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "super-secret-value");
    }

    #[test]
    fn generated_secret_is_valid_for_every_scheme() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert_eq!(key_bytes(StandardWebhooks, &a).unwrap().len(), 24);
        for scheme in SCHEMES {
            assert_eq!(validate_secret(scheme, &a), Ok(()), "{scheme:?}");
        }
    }

    #[test]
    fn validate_secret_table() {
        let (max, long) = ("a".repeat(256), "a".repeat(257));
        let whsec = |n: usize| format!("whsec_{}", B64.encode(vec![7u8; n]));
        let (key23, key64, key65) = (whsec(23), whsec(64), whsec(65));
        #[rustfmt::skip]
        let cases: &[(SigningScheme, &str, Option<&str>)] = &[ // None: valid
            (HmacSha256Hex,    "12345678", None),
            (HmacSha256Hex,    "1234567", Some("too short")),
            (HmacSha256Hex,    "ünïcödé!", None), // 8 chars, more bytes
            (HmacSha256Base64, &max, None),
            (HmacSha256Base64, &long, Some("too long")),
            (StandardWebhooks, SECRET, None),
            (StandardWebhooks, &key64, None),
            (StandardWebhooks, &key65, Some("24..=64 bytes")),
            (StandardWebhooks, &key23, Some("24..=64 bytes")),
            (StandardWebhooks, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Some("whsec_")),
            (StandardWebhooks, "whsec_not*base64!!", Some("not valid base64")),
            (StandardWebhooks, "whsec_", Some("too short")),
        ];
        for (scheme, secret, want_err) in cases {
            match (validate_secret(*scheme, secret), want_err) {
                (Ok(()), None) => {}
                (Err(e), Some(fragment)) => assert!(e.contains(fragment), "{secret}: {e}"),
                (got, _) => panic!("{scheme:?} {secret}: got {got:?}, want {want_err:?}"),
            }
        }
    }

    #[test]
    fn key_bytes_table() {
        #[rustfmt::skip]
        let cases: &[(SigningScheme, &str, Option<&[u8]>)] = &[
            (HmacSha256Hex,    "key", Some(b"key")),
            // The HMAC schemes use the text as given, even when it looks like a whsec_ secret.
            (HmacSha256Base64, "whsec_AAAA", Some(b"whsec_AAAA")),
            (HmacSha256Hex,    "", None),
            (StandardWebhooks, "whsec_AAECAw==", Some(&[0, 1, 2, 3])),
            (StandardWebhooks, "AAECAw==", None),
            (StandardWebhooks, "whsec_", None),
            (StandardWebhooks, "whsec_%%%", None),
        ];
        for (scheme, secret, want) in cases {
            let got = key_bytes(*scheme, secret).ok();
            assert_eq!(got.as_deref(), *want, "{secret}");
        }
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let want = [
            ("webhook-id", ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", EXPECTED),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let secrets = [&Secret::new(SECRET)];
        // A custom header name does not rename the standard headers.
        for header in [None, Some("X-Sig")] {
            let h = sign(StandardWebhooks, header, &secrets, ID, TS, BODY);
            assert_eq!(h.unwrap(), want, "{header:?}");
        }
        let reference = Webhook::new(SECRET).unwrap();
        assert_eq!(reference.sign(ID, TS, BODY).unwrap(), EXPECTED);
    }

    #[test]
    fn standard_webhooks_verified_by_reference_crate() {
        let now = chrono::Utc::now().timestamp();
        let current = Secret::new(generate_secret());
        let previous = Secret::new(SECRET);
        let stranger = Webhook::new(&generate_secret()).unwrap();
        let body = br#"{"event":"order.created","n":1}"#;
        let cases: &[(&[&Secret], usize)] = &[(&[&current], 1), (&[&current, &previous], 2)];
        for (secrets, n_sigs) in cases {
            let h = sign(StandardWebhooks, None, secrets, "msg_1", now, body).unwrap();
            let sig = &h.iter().find(|(k, _)| k == "webhook-signature").unwrap().1;
            assert_eq!(sig.split(' ').count(), *n_sigs, "{sig}");
            assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
            let map = header_map(&h);
            for s in *secrets {
                let wh = Webhook::new(s.expose()).unwrap();
                wh.verify(body, &map).unwrap();
            }
            assert!(stranger.verify(body, &map).is_err());
            let current_wh = Webhook::new(current.expose()).unwrap();
            assert!(current_wh.verify(b"tampered", &map).is_err());
        }
    }

    #[test]
    fn hmac_schemes_known_vectors() {
        const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";
        const JEFE: &[u8] = b"what do ya want for nothing?"; // RFC 4231 test case 2
        #[rustfmt::skip]
        let cases: &[VectorCase] = &[
            (HmacSha256Hex, None, "key", FOX, "X-OM-Signature",
             "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"),
            (HmacSha256Hex, Some("X-Hub-Sig"), "Jefe", JEFE, "X-Hub-Sig",
             "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (HmacSha256Hex, Some(""), "whsec_notbase64-but-used-raw", br#"{"a":1}"#, "X-OM-Signature",
             "sha256=a6322266c0b5e148f0981f6a718bd2f986747e713a61d48dfe1835e42b0fd97f"),
            (HmacSha256Base64, None, "key", FOX, "X-Signature",
             "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="),
            (HmacSha256Base64, Some("X-Custom"), "Jefe", JEFE, "X-Custom",
             "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="),
        ];
        let previous = Secret::new("previous-secret");
        for (scheme, header, key, body, want_name, want_value) in cases {
            let current = Secret::new(*key);
            // Only the current secret signs for the HMAC schemes, even during rotation.
            let h = sign(*scheme, *header, &[&current, &previous], "id", 0, body).unwrap();
            let want = vec![(want_name.to_string(), want_value.to_string())];
            assert_eq!(h, want, "{scheme:?} {key}");
        }
    }

    #[test]
    fn sign_errors() {
        let ok = Secret::new(SECRET);
        let bad_sw = Secret::new("not-a-whsec-secret");
        #[rustfmt::skip]
        let cases: &[(SigningScheme, Option<&str>, &[&Secret], &str)] = &[
            (StandardWebhooks, None, &[], "no signing secret"),
            (HmacSha256Hex,    None, &[], "no signing secret"),
            (StandardWebhooks, None, &[&bad_sw], "whsec_"),
            // A broken previous secret is an error too, rather than silently dropped.
            (StandardWebhooks, None, &[&ok, &bad_sw], "whsec_"),
            (HmacSha256Hex,    Some("Bad Header:"), &[&ok], "invalid signature header name"),
            (HmacSha256Base64, Some("X-Ünï"), &[&ok], "invalid signature header name"),
        ];
        for (scheme, header, secrets, fragment) in cases {
            let err = sign(*scheme, *header, secrets, "m", 1, b"{}").unwrap_err();
            assert!(err.contains(fragment), "{err}");
        }
    }
}
