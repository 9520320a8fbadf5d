//! Hookline: a self-hosted webhook delivery service with a GraphQL management plane.
//!
//! A map of the rooms:
//! - [`config`]: every setting (defaults, TOML file, `HOOKLINE_*` env, flags).
//! - [`auth`]: JWT verification into a [`auth::Principal`]; token minting.
//! - [`crypto`]: secrets sealed at rest (AES-256-GCM) and key rotation.
//! - [`db`]: connections (SQLite single writer + readers, or a PostgreSQL pool) and migrations.
//! - [`service`]: the use cases, tenant-scoped, over SeaORM; no GraphQL or HTTP here.
//! - [`graphql`]: schema, resolvers, inputs, DataLoaders, error mapping.
//! - [`dispatch`]: the delivery engine: queue claims, HTTP sending, signing, retries,
//!   circuit breaker, target guard.
//! - [`live`]: the bus of attempts and status changes behind GraphQL subscriptions.
//! - [`server`]: the axum router, start-up and graceful shutdown.
//! - [`ws`]: the WebSocket endpoint (graphql-transport-ws and legacy graphql-ws).
//! - [`metrics`]: the Prometheus recorder and `/metrics`.
//! - [`error`]: the one error type and its client-facing codes.
//! - [`jq`]: compiled jq programs for subscription filters and destination transforms.

pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod dispatch;
pub mod doctor;
pub mod error;
pub mod graphql;
pub mod jq;
pub mod live;
pub mod metrics;
pub mod ratelimit;
pub mod retention;
pub mod server;
pub mod service;
pub mod state;
pub mod ui;
pub mod ws;
