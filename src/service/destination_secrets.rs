//! A destination's secrets at rest: signing secrets, HTTP-auth credentials and header values
//! are stored sealed (see `crate::crypto`) and opened only where a request is built or a
//! caller with the right scope reads them.

use entity::destination;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::destination_settings::{headers_of, json};
use crate::crypto::Cipher;
use crate::error::{AppError, AppResult};

/// Opens the sealed columns in place (signing secrets, HTTP auth, header values).
pub fn unseal(m: &mut destination::Model, c: &Cipher) -> AppResult<()> {
    let open = |v: &str| {
        c.open(v)
            .map_err(|e| AppError::internal("open destination secret", e))
    };
    m.signing_secret = open(&m.signing_secret)?;
    if let Some(v) = &m.previous_secret {
        m.previous_secret = Some(open(v)?);
    }
    if let Some(v) = &m.http_auth {
        m.http_auth = Some(open(v)?);
    }
    let mut headers = headers_of(m);
    for h in &mut headers {
        h.value = open(&h.value)?;
    }
    m.headers = json(&headers);
    Ok(())
}

/// Seals the secret columns for storage. Header values are sealed one by one, so their names
/// stay readable in the row.
pub fn seal(m: &mut destination::Model, c: &Cipher) {
    m.signing_secret = c.seal(&m.signing_secret);
    m.previous_secret = m.previous_secret.as_deref().map(|v| c.seal(v));
    m.http_auth = m.http_auth.as_deref().map(|v| c.seal(v));
    let mut headers = headers_of(m);
    for h in &mut headers {
        h.value = c.seal(&h.value);
    }
    m.headers = json(&headers);
}

/// Re-seals, under the current key, every destination row sealed with an older key (or not
/// at all: rows from before header values were sealed hold them in the clear). Runs at
/// start-up, after migrating, because sealing needs the key, which migrations never see;
/// touches neither `version` nor `updated_at`.
pub async fn reseal_all(db: &DatabaseConnection, c: &Cipher) -> AppResult<u64> {
    let mut done = 0;
    let rows = destination::Entity::find().all(db).await?;
    for mut m in rows {
        let stale = c.needs_reseal(&m.signing_secret)
            || m.previous_secret
                .as_deref()
                .is_some_and(|v| c.needs_reseal(v))
            || m.http_auth.as_deref().is_some_and(|v| c.needs_reseal(v))
            || headers_of(&m).iter().any(|h| c.needs_reseal(&h.value));
        if !stale {
            continue;
        }
        unseal(&mut m, c)?;
        seal(&mut m, c);
        destination::Entity::update_many()
            .col_expr(
                destination::Column::SigningSecret,
                Expr::value(m.signing_secret),
            )
            .col_expr(
                destination::Column::PreviousSecret,
                Expr::value(m.previous_secret),
            )
            .col_expr(destination::Column::HttpAuth, Expr::value(m.http_auth))
            .col_expr(destination::Column::Headers, Expr::value(m.headers))
            .filter(destination::Column::Id.eq(m.id))
            .exec(db)
            .await?;
        done += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::destination_settings::Header;

    #[test]
    fn header_values_are_sealed_and_names_stay_readable() {
        let c = Cipher::new(&[9u8; 32], &[]);
        let mut m = crate::service::test_destination();
        m.headers = json(&[Header {
            name: "X-Api-Key".into(),
            value: "key-123-secret".into(),
        }]);
        seal(&mut m, &c);
        assert!(m.headers.contains("X-Api-Key"), "{}", m.headers);
        assert!(!m.headers.contains("key-123-secret"), "{}", m.headers);
        assert!(headers_of(&m)[0].value.starts_with("enc:v1:"));
        unseal(&mut m, &c).unwrap();
        assert_eq!(headers_of(&m)[0].value, "key-123-secret");
    }
}
