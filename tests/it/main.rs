//! One integration-test binary: real servers, real receivers, real databases.

mod api_auth;
mod api_destinations;
mod api_http;
mod api_tenancy;
mod api_validation;
mod delivery_crash;
mod delivery_features;
mod delivery_retry;
mod delivery_signing;
mod faults;
mod fuzz;
mod harness;
mod indexes;
mod keys;
mod limits;
mod live_backpressure;
mod live_loaders;
mod live_stats;
mod live_ws;
mod notify_split;
mod ops;
mod parked;
mod plans;
mod retention;
mod schema;
mod ws;
