//! The GraphQL API: schema, resolvers, input translation, DataLoaders and error mapping.
//! Resolvers call the service layer; they never run SQL themselves.

mod connection;
mod delivery_types;
mod error_codes;
mod inputs;
pub mod limits;
mod loaders;
mod mutation;
mod preview;
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
        .data(loaders::Loaders::new(
            state.db.clone(),
            limits.max_page_size,
        ))
        .extension(loaders::HoldBatches)
        .extension(RulesChanged(state.hub.clone()))
        .data(state)
        // Depth and cost are enforced by this extension rather than by `limit_depth` and
        // `limit_complexity`, which would count introspection as user data (see `limits`).
        .extension(limits::QueryLimits {
            max_depth: limits.max_query_depth,
            max_cost: limits.max_query_complexity,
        })
        .limit_recursive_depth(32)
        .limit_directives(16)
        .finish()
}

/// Tells the publisher's rules cache ([`crate::dispatch::hub::Hub::rules_generation`]) that
/// rules may have changed, once a mutation other than publishing has finished (its writes are
/// committed by then). Decided from the document, conservatively: any top-level mutation
/// field but `publishEvent` and `sendTestEvent`, or one hidden in a fragment, counts.
struct RulesChanged(std::sync::Arc<crate::dispatch::hub::Hub>);

impl async_graphql::extensions::ExtensionFactory for RulesChanged {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(RulesChangedRequest {
            hub: self.0.clone(),
            changes: Default::default(),
        })
    }
}

struct RulesChangedRequest {
    hub: std::sync::Arc<crate::dispatch::hub::Hub>,
    changes: std::sync::atomic::AtomicBool,
}

#[async_graphql::async_trait::async_trait]
impl async_graphql::extensions::Extension for RulesChangedRequest {
    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<async_graphql::parser::types::ExecutableDocument> {
        use async_graphql::parser::types::{OperationType, Selection};
        let doc = next.run(ctx, query, variables).await?;
        let changes = doc.operations.iter().any(|(_, op)| {
            op.node.ty == OperationType::Mutation
                && op
                    .node
                    .selection_set
                    .node
                    .items
                    .iter()
                    .any(|item| match &item.node {
                        Selection::Field(f) => {
                            !matches!(f.node.name.node.as_str(), "publishEvent" | "sendTestEvent")
                        }
                        _ => true,
                    })
        });
        self.changes
            .store(changes, std::sync::atomic::Ordering::Relaxed);
        Ok(doc)
    }

    async fn execute(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: async_graphql::extensions::NextExecute<'_>,
    ) -> async_graphql::Response {
        let resp = next.run(ctx, operation_name).await;
        if self.changes.load(std::sync::atomic::Ordering::Relaxed) {
            self.hub.rules_changed();
        }
        resp
    }
}

/// The SDL of the schema, as `hookline print-schema` prints it and `schema.graphql` holds it.
/// `@specifiedBy` is included so the file says what introspection says (`DateTime` is RFC 3339).
pub fn sdl() -> String {
    Schema::build(Query, Mutation, Subscription)
        .finish()
        .sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
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

/// Parsed documents by query text. Clients send the same few documents over and over
/// (`publishEvent` above all), and parsing them is a measurable share of the server's CPU
/// (BENCHMARKS.md, "Parsed GraphQL documents are cached"); a cached document is cloned
/// instead. Depth and complexity limits and
/// validation still run on every request. Bounded: at most [`DocCache::ENTRIES`] documents
/// of at most [`DocCache::MAX_QUERY_BYTES`] each; when full it starts over, so many distinct
/// queries cost no more than without the cache.
#[derive(Default)]
pub struct DocCache {
    docs: std::sync::Mutex<
        std::collections::HashMap<String, async_graphql::parser::types::ExecutableDocument>,
    >,
}

impl DocCache {
    pub const ENTRIES: usize = 256;
    pub const MAX_QUERY_BYTES: usize = 16 * 1024;

    /// Gives the request its parsed document when the query is known or parses; a query
    /// that does not parse is left for the schema to report.
    pub fn prepare(&self, req: &mut async_graphql::Request) {
        if req.query.len() > Self::MAX_QUERY_BYTES {
            return;
        }
        let lock = || self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(doc) = lock().get(&req.query).cloned() {
            req.set_parsed_query(doc);
            return;
        }
        let Ok(doc) = async_graphql::parser::parse_query(&req.query) else {
            return;
        };
        let mut docs = lock();
        if docs.len() >= Self::ENTRIES {
            docs.clear();
        }
        docs.insert(req.query.clone(), doc.clone());
        drop(docs);
        req.set_parsed_query(doc);
    }
}

#[cfg(test)]
mod doc_cache_tests {
    use super::DocCache;

    #[test]
    fn parses_once_and_stays_bounded() {
        let cache = DocCache::default();
        let q = "query { __typename }";
        let mut a = async_graphql::Request::new(q);
        cache.prepare(&mut a);
        assert_eq!(cache.docs.lock().unwrap().len(), 1);
        let mut b = async_graphql::Request::new(q);
        cache.prepare(&mut b);
        assert_eq!(cache.docs.lock().unwrap().len(), 1, "same text, one entry");
        // A query that does not parse is left alone (the schema reports it) and not cached.
        let mut bad = async_graphql::Request::new("query {");
        cache.prepare(&mut bad);
        assert_eq!(cache.docs.lock().unwrap().len(), 1);
        // Too long to cache.
        let long = format!(
            "query {{ __typename }} #{}",
            "x".repeat(DocCache::MAX_QUERY_BYTES)
        );
        cache.prepare(&mut async_graphql::Request::new(long));
        assert_eq!(cache.docs.lock().unwrap().len(), 1);
        // Full: starts over instead of growing.
        for i in 0..DocCache::ENTRIES + 10 {
            let q = format!("query Q{i} {{ __typename }}");
            cache.prepare(&mut async_graphql::Request::new(q));
        }
        assert!(cache.docs.lock().unwrap().len() <= DocCache::ENTRIES);
    }
}
