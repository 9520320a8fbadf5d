//! The GraphQL API: schema, resolvers, input translation, DataLoaders and error mapping.
//! Resolvers call the service layer; they never run SQL themselves.

mod connection;
mod delivery_types;
mod inputs;
mod loaders;
mod mutation;
mod query;
mod subscription;
mod types;

use async_graphql::{Context, Schema};

use crate::auth::{Principal, Scope};
use crate::error::AppError;
use crate::state::AppState;

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The caller as the transport established it: a principal, or why there is none. Stored per
/// request (HTTP) or per connection (WebSocket).
#[derive(Clone, Debug)]
pub struct Caller(pub Result<Principal, String>);

/// How many more subscriptions one WebSocket connection may open.
#[derive(Clone, Debug)]
pub struct SubscriptionBudget {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

impl SubscriptionBudget {
    pub fn new(max: usize) -> Self {
        Self {
            open: Default::default(),
            max,
        }
    }

    /// A slot for one subscription, released when the guard drops with its stream.
    pub(crate) fn take(&self) -> Result<BudgetGuard, AppError> {
        use std::sync::atomic::Ordering;
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(AppError::bad_input(
                "subscription",
                format!("at most {} subscriptions per connection", self.max),
            ));
        }
        Ok(BudgetGuard(Some(self.open.clone())))
    }
}

pub(crate) struct BudgetGuard(Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Builds the schema once at start-up; requests only add their [`Caller`].
pub fn build_schema(state: AppState) -> AppSchema {
    let limits = state.config.limits.clone();
    Schema::build(Query, Mutation, Subscription)
        .data(loaders::Loaders::new(state.db.clone()))
        .extension(loaders::HoldBatches)
        .data(state)
        .limit_depth(limits.max_query_depth)
        .limit_complexity(limits.max_query_complexity)
        .limit_recursive_depth(32)
        .limit_directives(16)
        .finish()
}

/// The SDL of the schema, as `hookline print-schema` prints it and `schema.graphql` holds it.
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription).finish().sdl()
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>()
        .map_err(|_| AppError::Internal("schema built without state".into()).into())
}

/// The authenticated caller, or UNAUTHENTICATED.
pub(crate) fn principal<'a>(ctx: &Context<'a>) -> Result<&'a Principal, AppError> {
    match ctx.data_opt::<Caller>() {
        Some(Caller(Ok(p))) => Ok(p),
        Some(Caller(Err(why))) => Err(AppError::Unauthenticated(why.clone())),
        None => Err(AppError::Unauthenticated(
            "missing Authorization: Bearer token".into(),
        )),
    }
}

/// The authenticated caller holding `scope`, or UNAUTHENTICATED / FORBIDDEN.
pub(crate) fn require<'a>(ctx: &Context<'a>, scope: Scope) -> Result<&'a Principal, AppError> {
    let p = principal(ctx)?;
    p.require(scope)?;
    Ok(p)
}

pub(crate) fn parse_id(
    field: &'static str,
    id: &async_graphql::ID,
) -> Result<uuid::Uuid, AppError> {
    uuid::Uuid::parse_str(id.as_str())
        .map_err(|_| AppError::bad_input(field, format!("{:?} is not a UUID", id.as_str())))
}
