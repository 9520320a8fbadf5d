//! `previewDelivery`'s input and answer.

use async_graphql::{InputObject, SimpleObject};

use super::types::Level;
use crate::dispatch::Preview;
use crate::error::AppError;
use crate::service::events::NewEvent;

/// An event as `publishEvent` would take it, for a preview.
#[derive(InputObject)]
pub struct PreviewEventInput {
    #[graphql(name = "type")]
    pub event_type: String,
    pub payload: async_graphql::Json<serde_json::Value>,
    #[graphql(default_with = "Level::Info")]
    pub level: Level,
}

impl PreviewEventInput {
    pub fn into_event(self) -> Result<NewEvent, AppError> {
        let payload = serde_json::to_string(&self.payload.0)
            .map_err(|e| AppError::bad_input("payload", e.to_string()))?;
        Ok(NewEvent {
            event_type: self.event_type,
            level: self.level.into(),
            payload,
            idempotency_key: None,
        })
    }
}

#[derive(SimpleObject)]
pub struct PreviewHeader {
    pub name: String,
    /// Custom header values and credentials are shown as `***`.
    pub value: String,
}

/// What a destination would do with an event; nothing was sent or stored.
#[derive(SimpleObject)]
pub struct DeliveryPreview {
    /// Whether the destination would receive the event.
    pub matched: bool,
    /// Which subscription let it through, or why each refused it; also why no body could be
    /// built (a failing transform).
    pub reason: String,
    pub url: String,
    /// The request headers as they would be sent, secrets masked.
    pub headers: Vec<PreviewHeader>,
    /// The exact body (after the transform); null when the transform fails.
    pub body: Option<String>,
    /// The signature header's value over this body.
    pub signature: Option<String>,
}

impl From<Preview> for DeliveryPreview {
    fn from(p: Preview) -> Self {
        DeliveryPreview {
            matched: p.matched,
            reason: p.reason,
            url: p.url,
            headers: p
                .headers
                .into_iter()
                .map(|(name, value)| PreviewHeader { name, value })
                .collect(),
            body: p.body,
            signature: p.signature,
        }
    }
}
