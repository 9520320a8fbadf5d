//! One integration-test binary: real servers, real receivers, real databases.

mod harness;
mod schema;
