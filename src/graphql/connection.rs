//! Relay connections over the service layer's keyset pages, with a lazy `totalCount`.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, OutputType, Result};
use entity::{delivery, destination, event};
use sea_orm::Select;
use uuid::Uuid;

use super::state;
use crate::error::AppError;
use crate::service::page::{self, Page, PageRequest};

/// The filtered query behind a connection, kept so `totalCount` costs a query only when asked.
pub enum CountQuery {
    Destinations(Select<destination::Entity>),
    Events(Select<event::Entity>),
    Deliveries(Select<delivery::Entity>),
}

pub struct Counted(pub CountQuery);

#[Object]
impl Counted {
    /// Items matching the filter, across all pages.
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let db = &state(ctx)?.db.read;
        let n = match &self.0 {
            CountQuery::Destinations(q) => page::count(db, q.clone()).await?,
            CountQuery::Events(q) => page::count(db, q.clone()).await?,
            CountQuery::Deliveries(q) => page::count(db, q.clone()).await?,
        };
        Ok(n)
    }
}

pub type Conn<N> = Connection<String, N, Counted, EmptyFields>;

pub fn page_request(
    first: Option<i32>,
    after: Option<String>,
    last: Option<i32>,
    before: Option<String>,
) -> Result<PageRequest, AppError> {
    let cursor = |field: &'static str, v: Option<String>| {
        v.map(|s| {
            Uuid::parse_str(&s)
                .map_err(|_| AppError::bad_input(field, format!("{s:?} is not a valid cursor")))
        })
        .transpose()
    };
    Ok(PageRequest {
        first,
        after: cursor("after", after)?,
        last,
        before: cursor("before", before)?,
    })
}

pub fn build<M, N: OutputType>(
    page: Page<M>,
    count: CountQuery,
    id: impl Fn(&M) -> Uuid,
    wrap: impl Fn(M) -> N,
) -> Conn<N> {
    let mut c =
        Connection::with_additional_fields(page.has_previous, page.has_next, Counted(count));
    c.edges = page
        .items
        .into_iter()
        .map(|m| Edge::new(id(&m).to_string(), wrap(m)))
        .collect();
    c
}
