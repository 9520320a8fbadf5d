//! JWT verification into a [`Principal`] (tenant, subject, scopes), and token minting for the
//! CLI. Knows nothing about the database.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::AppError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Publish,
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Publish => 4,
            Scope::Admin => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Publish => "publish",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "publish" => Some(Scope::Publish),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A set of scopes. `admin` grants every other scope (inside its own tenant only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Parses a space-separated scope claim; unknown scopes are ignored so that tokens minted
    /// for other services' scopes still work here.
    pub fn parse(claim: &str) -> Self {
        Scopes(
            claim
                .split_ascii_whitespace()
                .filter_map(Scope::parse)
                .fold(0, |acc, s| acc | s.bit()),
        )
    }

    /// Like [`Scopes::parse`] but refuses unknown names (for the CLI).
    pub fn parse_strict(claim: &str) -> Result<Self, String> {
        for word in claim.split_ascii_whitespace() {
            if Scope::parse(word).is_none() {
                return Err(format!(
                    "unknown scope {word:?} (expected read, write, publish, admin)"
                ));
            }
        }
        Ok(Self::parse(claim))
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        [Scope::Read, Scope::Write, Scope::Publish, Scope::Admin]
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::as_str)
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub subject: String,
    pub scopes: Scopes,
    /// Token expiry (unix seconds); live streams end when it passes.
    pub expires_at: i64,
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this operation needs the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    #[serde(default)]
    scope: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

/// Verification (and, for HS256, signing) keys.
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    verified: Verified,
}

/// Tokens verified already, by their exact text, with the principal each gave. A client sends
/// the same token with every request, and checking its signature and decoding its claims each
/// time is a measurable share of the server's CPU (BENCHMARKS.md, "Verified tokens are
/// cached"). The keys never
/// change while the process runs, so the same text verifies the same way, except for its
/// expiry, which is checked again on every use. Bounded: at most [`Verified::ENTRIES`] tokens
/// of at most [`Verified::MAX_TOKEN_BYTES`]; when full it starts over.
#[derive(Default)]
struct Verified(std::sync::Mutex<std::collections::HashMap<Box<str>, Principal>>);

impl Verified {
    const ENTRIES: usize = 1024;
    const MAX_TOKEN_BYTES: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, Principal>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal of `token` if it was verified before and has not expired since (with
    /// the leeway decoding allows).
    fn get(&self, token: &str, now: i64) -> Option<Principal> {
        self.lock()
            .get(token)
            .filter(|p| p.expires_at >= now - LEEWAY_SECS as i64)
            .cloned()
    }

    fn put(&self, token: &str, p: &Principal) {
        if token.len() > Self::MAX_TOKEN_BYTES {
            return;
        }
        let mut map = self.lock();
        if map.len() >= Self::ENTRIES {
            map.clear();
        }
        map.insert(token.into(), p.clone());
    }
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

impl JwtKeys {
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
            validation: validation(Algorithm::HS256),
            verified: Verified::default(),
        }
    }

    /// RS256 or ES256 public key (PEM). Such a server verifies tokens but cannot mint them.
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                decoding: key,
                encoding: None,
                validation: validation(Algorithm::RS256),
                verified: Verified::default(),
            });
        }
        DecodingKey::from_ec_pem(pem)
            .map(|key| Self {
                decoding: key,
                encoding: None,
                validation: validation(Algorithm::ES256),
                verified: Verified::default(),
            })
            .map_err(|e| format!("not an RSA or EC public key in PEM form: {e}"))
    }

    /// Keys from configuration: a public key file, a secret, or a secret generated on first
    /// start and kept in `data_dir/jwt-secret` so that tokens survive restarts.
    pub fn from_config(
        secret: Option<&str>,
        public_key: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(Self, KeySource), String> {
        if let Some(path) = public_key {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read JWT public key {}: {e}", path.display()))?;
            return Ok((Self::from_public_pem(&pem)?, KeySource::PublicKey));
        }
        if let Some(secret) = secret {
            // HMAC keys shorter than the hash's output make tokens guessable offline
            // (RFC 7518 §3.2). The development secret generated below is 64 bytes.
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "HOOKLINE_JWT_SECRET is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                     (e.g. `openssl rand -hex 32`), or leave it unset for development to use a \
                     generated one",
                    secret.len()
                ));
            }
            return Ok((Self::hs256(secret.as_bytes()), KeySource::Configured));
        }
        let path = data_dir.join("jwt-secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => {
                Ok((Self::hs256(s.trim().as_bytes()), KeySource::Stored(path)))
            }
            _ => {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let secret = hex::encode(bytes);
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
                write_private(&path, &secret)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok((Self::hs256(secret.as_bytes()), KeySource::Generated(path)))
            }
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AppError> {
        if let Some(p) = self.verified.get(token, chrono::Utc::now().timestamp()) {
            return Ok(p);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "token signature invalid",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "token invalid",
                };
                AppError::Unauthenticated(why.into())
            })?;
        let c = data.claims;
        if c.tenant.is_empty() || c.tenant.len() > 128 {
            return Err(AppError::Unauthenticated(
                "token has no valid tenant claim".into(),
            ));
        }
        let p = Principal {
            tenant: c.tenant,
            subject: c.sub,
            scopes: Scopes::parse(&c.scope),
            expires_at: c.exp,
        };
        self.verified.put(token, &p);
        Ok(p)
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, value: Option<&str>) -> Result<Principal, AppError> {
        let value = value.ok_or_else(|| {
            AppError::Unauthenticated("missing Authorization: Bearer token".into())
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                AppError::Unauthenticated("Authorization header must be `Bearer <token>`".into())
            })?;
        self.verify(token.trim())
    }

    pub fn mint(
        &self,
        tenant: &str,
        subject: &str,
        scopes: Scopes,
        ttl: std::time::Duration,
    ) -> Result<String, String> {
        let key = self.encoding.as_ref().ok_or(
            "this server verifies tokens with a public key; mint them with the private key holder",
        )?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_string(),
            tenant: tenant.to_string(),
            scope: scopes.names().join(" "),
            exp: now + ttl.as_secs() as i64,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| format!("cannot sign token: {e}"))
    }
}

#[derive(Debug)]
pub enum KeySource {
    PublicKey,
    Configured,
    Stored(std::path::PathBuf),
    Generated(std::path::PathBuf),
}

/// Seconds a token is still accepted after its `exp`, and already before its `nbf` (clock
/// skew between issuer and server).
const LEEWAY_SECS: u64 = 5;

/// The shortest configured HS256 secret accepted: the size of the SHA-256 output.
pub const MIN_SECRET_BYTES: usize = 32;

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    // A token verified once is cached and only its `exp` is checked again: one refused for
    // its `nbf` is never cached, and one accepted stays valid as time moves forward.
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

/// Creates `path` readable by the owner only and writes `contents` (fails if it exists).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn scopes() {
        let s = Scopes::parse("read publish bogus");
        assert!(s.has(Scope::Read) && s.has(Scope::Publish));
        assert!(!s.has(Scope::Write) && !s.has(Scope::Admin));
        let admin = Scopes::parse("admin");
        assert!(admin.has(Scope::Write) && admin.has(Scope::Read));
        assert!(Scopes::parse_strict("read wrte").is_err());
    }

    /// A token verified before is answered from the cache, but not once it has expired: the
    /// expiry is checked on every use, with the decoder's leeway; a tampered token is not the
    /// same text and is verified (and refused) in full.
    #[test]
    fn verified_tokens_are_cached_until_they_expire() {
        let keys = JwtKeys::hs256(b"0123456789abcdef0123456789abcdef");
        let t = keys
            .mint(
                "acme",
                "alice",
                Scopes::parse("read"),
                Duration::from_secs(60),
            )
            .unwrap();
        let first = keys.verify(&t).unwrap();
        assert_eq!(keys.verified.lock().len(), 1);
        assert_eq!(keys.verify(&t).unwrap(), first, "the cached principal");
        // Age the cached entry past its expiry and the leeway: refused, as decoding would.
        let now = chrono::Utc::now().timestamp();
        keys.verified.lock().get_mut(t.as_str()).unwrap().expires_at = now - 6;
        assert!(keys.verified.get(&t, now).is_none());
        // (The token itself is still valid, so a full verification accepts it again.)
        assert_eq!(keys.verify(&t).unwrap().expires_at, first.expires_at);
        let mut tampered = t.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
        // Bounded: full, it starts over.
        for i in 0..Verified::ENTRIES {
            keys.verified.put(&format!("t{i}"), &first);
        }
        assert!(keys.verified.lock().len() <= Verified::ENTRIES);
    }

    #[test]
    fn mint_and_verify_round_trip() {
        let keys = JwtKeys::hs256(b"0123456789abcdef0123456789abcdef");
        let t = keys
            .mint(
                "acme",
                "alice",
                Scopes::parse("read write"),
                Duration::from_secs(60),
            )
            .unwrap();
        let p = keys.verify_header(Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.subject, "alice");
        assert!(p.scopes.has(Scope::Write));
        let other = JwtKeys::hs256(b"another-secret-another-secret!!!");
        assert!(matches!(
            other.verify(&t),
            Err(AppError::Unauthenticated(m)) if m.contains("signature")
        ));
        assert!(keys.verify_header(Some("Basic abc")).is_err());
        assert!(keys.verify_header(None).is_err());
    }

    #[test]
    fn generated_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, src1) = JwtKeys::from_config(None, None, dir.path()).unwrap();
        assert!(matches!(src1, KeySource::Generated(_)));
        let t = k1
            .mint("t", "s", Scopes::parse("read"), Duration::from_secs(60))
            .unwrap();
        let (k2, src2) = JwtKeys::from_config(None, None, dir.path()).unwrap();
        assert!(matches!(src2, KeySource::Stored(_)));
        assert_eq!(k2.verify(&t).unwrap().tenant, "t");
    }
}
