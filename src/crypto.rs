//! Secrets at rest: signing secrets and HTTP-auth credentials are stored sealed with
//! AES-256-GCM under a configured key. Stored form: `enc:v1:<key id>:<base64(nonce‖ciphertext)>`.
//! Older keys can stay configured for decryption while a background pass re-seals every row
//! under the current key; unsealed (plaintext) values are read as they are and re-sealed too.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        Key {
            id: hex::encode(&digest[..4]),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// The current sealing key plus older keys still accepted for opening.
pub struct Cipher {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cipher(key {}, {} previous)",
            self.current.id,
            self.previous.len()
        )
    }
}

/// Parses a 32-byte key given as 64 hex digits or standard base64.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| e.to_string())?
    } else {
        B64.decode(text)
            .map_err(|_| "expected 64 hex digits or base64 of 32 bytes".to_string())?
    };
    bytes
        .try_into()
        .map_err(|_| "the key must be exactly 32 bytes".to_string())
}

impl Cipher {
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> Self {
        Cipher {
            current: Key::new(current),
            previous: previous.iter().map(Key::new).collect(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        // Encryption with a valid key and a 12-byte nonce cannot fail.
        let ct = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{PREFIX}{}:{}", self.current.id, B64.encode(blob))
    }

    /// The plaintext of a stored value. Values stored before sealing existed pass through.
    pub fn open(&self, stored: &str) -> Result<String, String> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, b64) = rest.split_once(':').ok_or("malformed sealed value")?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                format!(
                    "sealed with key {id}, which this instance lacks (configure it as \
                     HOOKLINE_ENCRYPTION_KEY, or in HOOKLINE_ENCRYPTION_KEYS_PREVIOUS)"
                )
            })?;
        let blob = B64.decode(b64).map_err(|_| "malformed sealed value")?;
        if blob.len() < 12 {
            return Err("malformed sealed value".into());
        }
        let (nonce, ct) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| "malformed sealed value")?;
        let pt = key
            .cipher
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| "sealed value failed authentication")?;
        String::from_utf8(pt).map_err(|_| "sealed value is not UTF-8".to_string())
    }

    /// Whether a stored value should be re-sealed under the current key.
    pub fn needs_reseal(&self, stored: &str) -> bool {
        match stored.strip_prefix(PREFIX) {
            None => true,
            Some(rest) => !rest.starts_with(&format!("{}:", self.current.id)),
        }
    }
}

/// The cipher from configuration: a configured key (plus previous ones), or a key generated
/// on first start into `data_dir/encryption-key` and reused afterwards.
pub fn from_config(
    key: Option<&str>,
    previous: &[String],
    data_dir: &std::path::Path,
) -> Result<Cipher, String> {
    let previous = previous
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| parse_key(k).map_err(|e| format!("HOOKLINE_ENCRYPTION_KEYS_PREVIOUS: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(k) = key {
        let k = parse_key(k).map_err(|e| format!("HOOKLINE_ENCRYPTION_KEY: {e}"))?;
        return Ok(Cipher::new(&k, &previous));
    }
    let path = data_dir.join("encryption-key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let k = parse_key(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Cipher::new(&k, &previous));
    }
    let mut k = [0u8; 32];
    rand::fill(&mut k);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    crate::auth::write_private(&path, &hex::encode(k))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Cipher::new(&k, &previous))
}

/// What a `key_check` row seals (see [`check_keys`]).
const CHECK_TEXT: &str = "hookline key check";

/// Start-up check that this instance holds every key the database's secrets may be sealed
/// with. Each key that has been current on this database left a `key_check` row (its id and
/// a known text sealed with it); this instance must open all of them, or it refuses to start
/// with a message naming the missing key by its id (never the key). Instances that each
/// generated their own key would otherwise seal secrets the others cannot open, and leave
/// those deliveries unsendable. With `register`, the current key then gets its row — once
/// every secret is sealed under it, so that a failed start leaves no row behind.
///
/// PostgreSQL: the table is locked for the check, so instances starting together on an empty
/// database see each other's rows.
pub async fn check_keys(
    db: &sea_orm::DatabaseConnection,
    cipher: &Cipher,
    data_dir: &std::path::Path,
    register: bool,
) -> Result<(), String> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    let backend = db.get_database_backend();
    let fail = |e: sea_orm::DbErr| format!("checking the encryption key: {e}");
    let txn = db.begin().await.map_err(fail)?;
    if backend == DbBackend::Postgres {
        txn.execute_unprepared("LOCK TABLE key_check IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(fail)?;
    }
    let rows = txn
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT key_id, sealed FROM key_check ORDER BY key_id",
        ))
        .await
        .map_err(fail)?;
    let mut have_current = false;
    for r in rows {
        let id: String = r.try_get("", "key_id").map_err(fail)?;
        let sealed: String = r.try_get("", "sealed").map_err(fail)?;
        if cipher.open(&sealed).as_deref() != Ok(CHECK_TEXT) {
            return Err(missing_key(&id, cipher, data_dir));
        }
        have_current |= id == cipher.current.id;
    }
    if register && !have_current {
        let (p1, p2) = match backend {
            DbBackend::Postgres => ("$1", "$2"),
            _ => ("?", "?"),
        };
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            format!("INSERT INTO key_check (key_id, sealed) VALUES ({p1}, {p2})"),
            [
                cipher.current.id.clone().into(),
                cipher.seal(CHECK_TEXT).into(),
            ],
        ))
        .await
        .map_err(fail)?;
    }
    txn.commit().await.map_err(fail)
}

fn missing_key(id: &str, cipher: &Cipher, data_dir: &std::path::Path) -> String {
    let known = std::iter::once(&cipher.current)
        .chain(&cipher.previous)
        .any(|k| k.id == id);
    let what = if known {
        format!("encryption key {id}, and this instance's key with that id does not open them")
    } else {
        format!("encryption key {id}, which this instance lacks")
    };
    format!(
        "the database holds secrets sealed with {what} (a key id is the first 4 bytes of the \
         key's SHA-256; this instance's current key is {}). Every instance on one database \
         needs the same key: set HOOKLINE_ENCRYPTION_KEY to key {id} on every instance (or, \
         while rotating to a new key, list key {id} in HOOKLINE_ENCRYPTION_KEYS_PREVIOUS). \
         Without HOOKLINE_ENCRYPTION_KEY an instance generates its own key into its data \
         directory ({}).",
        cipher.current.id,
        data_dir.join("encryption-key").display()
    )
}

/// After every secret is sealed under the current key: the `key_check` rows of older keys
/// go, so that they may be dropped from the configuration.
pub async fn retire_old_keys(
    db: &sea_orm::DatabaseConnection,
    cipher: &Cipher,
) -> Result<(), String> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let backend = db.get_database_backend();
    let p = if backend == DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        format!("DELETE FROM key_check WHERE key_id <> {p}"),
        [cipher.current.id.clone().into()],
    ))
    .await
    .map(|_| ())
    .map_err(|e| format!("retiring old encryption keys: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_rotate() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let c1 = Cipher::new(&k1, &[]);
        let sealed = c1.seal("whsec_secret");
        assert!(sealed.starts_with("enc:v1:"));
        assert!(!sealed.contains("whsec_secret"));
        assert_eq!(c1.open(&sealed).unwrap(), "whsec_secret");
        assert_ne!(c1.seal("x"), c1.seal("x"), "nonces differ");
        // Rotation: the new key opens old values through the previous list and reseals.
        let c2 = Cipher::new(&k2, &[k1]);
        assert!(c2.needs_reseal(&sealed));
        assert_eq!(c2.open(&sealed).unwrap(), "whsec_secret");
        let resealed = c2.seal(&c2.open(&sealed).unwrap());
        assert!(!c2.needs_reseal(&resealed));
        // Without the old key the value cannot be read, and says why.
        let c3 = Cipher::new(&k2, &[]);
        let why = c3.open(&sealed).unwrap_err();
        assert!(why.contains(&format!("key {}", c1.key_id())), "{why}");
        assert!(
            why.contains("lacks") && why.contains("HOOKLINE_ENCRYPTION_KEY"),
            "{why}"
        );
        // Plaintext from before sealing passes through and is marked for sealing.
        assert_eq!(c1.open("plain").unwrap(), "plain");
        assert!(c1.needs_reseal("plain"));
        // Tampering is detected.
        let mut bad = sealed.clone();
        bad.pop();
        bad.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(c1.open(&bad).is_err());
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex_key = "00".repeat(32);
        assert_eq!(parse_key(&hex_key).unwrap(), [0u8; 32]);
        let b64 = B64.encode([7u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [7u8; 32]);
        assert!(parse_key("short").is_err());
        assert!(format!("{:?}", Cipher::new(&[3u8; 32], &[])).starts_with("Cipher(key "));
    }
}
