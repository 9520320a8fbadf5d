//! What one request may cost: the depth of user data it reaches, the rows it can return, and
//! a separate, fixed bound on introspection.
//!
//! async-graphql's own depth limit counts introspection fields, and the introspection query
//! every standard tool sends (graphql-js' `getIntrospectionQuery()`) follows type references
//! nine `ofType`s deep: it would be refused. So the depth limit here measures user data only,
//! leaving out the `__schema` and `__type` subtrees, and those get graphql-js' own
//! `MaxIntrospectionDepthRule`: `fields`, `inputFields`, `interfaces` and `possibleTypes`
//! nest at most two deep (a chain of `ofType` returns one row per level; those lists are what
//! can multiply), within [`INTROSPECTION_MAX_DEPTH`] levels.
//!
//! The cost is async-graphql's complexity, with paged fields multiplying their children by
//! the page they can return ([`page_cost`]), enforced here so the refusal can name the cost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe,
    NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Pos, Response, ServerError, ServerResult, ValidationResult, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::error_codes::{self, VALIDATION_FAILED};

/// The page a paged field returns when neither `first` nor `last` is given
/// ([`crate::service::page`] uses the same).
pub const DEFAULT_PAGE: usize = 20;

/// The largest page ([`crate::config::Limits::max_page_size`]).
const PAGE_LIMIT: usize = 100;

/// `Delivery.attempts` returns at most this many attempts when `first` is not given.
pub const DEFAULT_ATTEMPTS: usize = 10;

/// What `Event.payload` counts toward a query's cost: payloads (up to 256 KiB) are by far the
/// largest values a query returns, so a request holds at most `max cost / 100` of them.
pub const PAYLOAD_COST: usize = 100;

/// Levels an introspection subtree may reach (the standard query needs 14).
pub const INTROSPECTION_MAX_DEPTH: usize = 32;

/// Nesting of introspection's multiplying lists at which a query is refused.
const INTROSPECTION_MAX_LISTS: usize = 3;

/// No field costs more than this, so that adding up siblings can never overflow.
const FIELD_COST_CAP: usize = 1 << 32;

/// The cost of a paged field: one for the field, plus its children once per row it can
/// return (`first` or `last`, [`DEFAULT_PAGE`] when absent). A negative size costs as zero
/// rows (the resolver refuses it anyway).
pub fn page_cost(first: Option<i32>, last: Option<i32>, child: usize) -> usize {
    rows_cost(first.or(last), DEFAULT_PAGE, child)
}

/// [`page_cost`] for a bounded list whose size argument is `first`, `default` when absent.
/// A size past the page limit counts as the limit: the resolver refuses it, naming the
/// argument, which says more than a refusal for cost would.
pub fn rows_cost(n: Option<i32>, default: usize, child: usize) -> usize {
    let rows = n
        .map_or(default, |n| usize::try_from(n).unwrap_or(0))
        .min(PAGE_LIMIT);
    rows.saturating_mul(child)
        .saturating_add(1)
        .min(FIELD_COST_CAP)
}

/// The limits of [`crate::config::Limits`] that the schema enforces.
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_cost: usize,
}

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard {
            limits: *self,
            shape: Mutex::new(None),
        })
    }
}

/// One request's guard: measures the document as it is parsed, refuses it after validation
/// if it is too deep or too costly, and gives every error an `extensions.code`.
struct Guard {
    limits: QueryLimits,
    shape: Mutex<Option<Result<usize, ServerError>>>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for Guard {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut resp = next.run(ctx).await;
        error_codes::complete(&mut resp.errors);
        resp
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut resp| {
                error_codes::complete(&mut resp.errors);
                resp
            })
            .boxed()
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next
            .run(ctx, query, variables)
            .await
            .map_err(error_codes::parse_failed)?;
        let shape = user_depth(&doc);
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = Some(shape);
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await.map_err(|mut errors| {
            error_codes::validation_failed(&mut errors);
            errors
        })?;
        let shape = self.shape.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(shape) = shape {
            let depth = shape.map_err(|e| vec![e])?;
            if depth > self.limits.max_depth {
                return Err(vec![refusal(
                    format!(
                        "Query is nested too deep: {depth} levels of fields, the limit is {}.",
                        self.limits.max_depth
                    ),
                    &[("depth", depth), ("maxDepth", self.limits.max_depth)],
                )]);
            }
        }
        if result.complexity > self.limits.max_cost {
            return Err(vec![refusal(
                format!(
                    "Query costs {}, more than the limit of {}: every field counts once per row \
                     it can return, and `first`/`last` (default {DEFAULT_PAGE}) multiply what \
                     they page; ask for smaller pages or fewer nested lists.",
                    result.complexity, self.limits.max_cost
                ),
                &[
                    ("cost", result.complexity),
                    ("maxCost", self.limits.max_cost),
                ],
            )]);
        }
        Ok(result)
    }
}

fn refusal(message: String, numbers: &[(&str, usize)]) -> ServerError {
    let mut e = ServerError::new(message, None);
    let ext = e.extensions.get_or_insert_with(Default::default);
    ext.set("code", VALIDATION_FAILED);
    for (k, v) in numbers {
        ext.set(*k, *v as u64);
    }
    e
}

/// The depth of user data the document reaches (its deepest operation), or the error of an
/// introspection subtree past its bounds. Fragments are measured once each, so a document
/// that spreads the same fragments many times costs no more to measure than it is long.
/// Fragment cycles count as nothing here: validation refuses them before this is read.
fn user_depth(doc: &ExecutableDocument) -> Result<usize, ServerError> {
    let mut m = Measure {
        doc,
        shapes: HashMap::new(),
        open: HashSet::new(),
    };
    let mut depth = 0;
    for (_, op) in doc.operations.iter() {
        let mut seen = HashSet::new();
        depth = depth.max(m.root(&op.node.selection_set.node, &mut seen)?);
    }
    Ok(depth)
}

/// How deep a selection set goes, and how deeply introspection's lists nest in it.
#[derive(Clone, Copy, Default)]
struct Shape {
    depth: usize,
    lists: usize,
}

struct Measure<'a> {
    doc: &'a ExecutableDocument,
    shapes: HashMap<&'a str, Shape>,
    open: HashSet<&'a str>,
}

impl<'a> Measure<'a> {
    /// Root fields: introspection is checked on its own bounds, the rest is user depth.
    fn root(
        &mut self,
        set: &'a SelectionSet,
        seen: &mut HashSet<&'a str>,
    ) -> Result<usize, ServerError> {
        let mut depth = 0;
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => {
                    let inner = self.shape(&f.node.selection_set.node);
                    match f.node.name.node.as_str() {
                        "__schema" | "__type" => introspection(inner, f.pos)?,
                        _ => depth = depth.max(inner.depth + 1),
                    }
                }
                Selection::InlineFragment(i) => {
                    depth = depth.max(self.root(&i.node.selection_set.node, seen)?)
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    // Each root fragment once: a second visit finds nothing new.
                    if let Some(frag) = self.doc.fragments.get(name)
                        && seen.insert(name)
                    {
                        depth = depth.max(self.root(&frag.node.selection_set.node, seen)?);
                    }
                }
            }
        }
        Ok(depth)
    }

    fn shape(&mut self, set: &'a SelectionSet) -> Shape {
        let mut out = Shape::default();
        for sel in &set.items {
            let s = match &sel.node {
                Selection::Field(f) => {
                    let inner = self.shape(&f.node.selection_set.node);
                    let list = matches!(
                        f.node.name.node.as_str(),
                        "fields" | "inputFields" | "interfaces" | "possibleTypes"
                    );
                    Shape {
                        depth: inner.depth + 1,
                        lists: inner.lists + usize::from(list),
                    }
                }
                Selection::InlineFragment(i) => self.shape(&i.node.selection_set.node),
                Selection::FragmentSpread(s) => self.fragment(s.node.fragment_name.node.as_str()),
            };
            out.depth = out.depth.max(s.depth);
            out.lists = out.lists.max(s.lists);
        }
        out
    }

    fn fragment(&mut self, name: &'a str) -> Shape {
        if let Some(s) = self.shapes.get(name) {
            return *s;
        }
        let Some(frag) = self.doc.fragments.get(name) else {
            return Shape::default();
        };
        if !self.open.insert(name) {
            return Shape::default();
        }
        let s = self.shape(&frag.node.selection_set.node);
        self.open.remove(name);
        self.shapes.insert(name, s);
        s
    }
}

fn introspection(inner: Shape, pos: Pos) -> Result<(), ServerError> {
    if inner.lists >= INTROSPECTION_MAX_LISTS || inner.depth + 1 > INTROSPECTION_MAX_DEPTH {
        let mut e = refusal(
            format!(
                "Maximum introspection depth exceeded: `fields`, `inputFields`, `interfaces` \
                 and `possibleTypes` may nest at most {} deep, within {INTROSPECTION_MAX_DEPTH} \
                 levels.",
                INTROSPECTION_MAX_LISTS - 1
            ),
            &[],
        );
        e.locations = vec![pos];
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(q: &str) -> Result<usize, ServerError> {
        user_depth(&async_graphql::parser::parse_query(q).unwrap())
    }

    #[test]
    fn introspection_is_not_user_depth() {
        let q = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { \
                 ofType { ofType { ofType { name } } } } } } } } } } } viewer { tenant } }";
        assert_eq!(depth(q).unwrap(), 2);
        let q = "query { ...A } fragment A on Query { __type(name: \"X\") { name } a { b { c } } }";
        assert_eq!(depth(q).unwrap(), 3);
    }

    #[test]
    fn introspection_lists_nest_at_most_two_deep() {
        let ok = "{ __type(name: \"Query\") { fields { type { fields { name } } } } }";
        assert!(depth(ok).is_ok());
        let bad = "{ __type(name: \"Query\") { fields { type { fields { type { fields { name } } } } } } }";
        assert!(depth(bad).is_err());
        let hidden = "{ __schema { types { ...F } } } fragment F on __Type { fields { type { \
                      interfaces { possibleTypes { name } } } } }";
        let e = depth(hidden).unwrap_err();
        assert!(e.message.contains("introspection depth"), "{}", e.message);
    }

    #[test]
    fn fragments_count_where_they_are_spread_and_cycles_end() {
        let q = "{ a { ...F } } fragment F on A { b { ...G } } fragment G on B { c { d } }";
        assert_eq!(depth(q).unwrap(), 4);
        let cyc = "{ a { ...F } } fragment F on A { b { ...F } }";
        assert_eq!(depth(cyc).unwrap(), 2);
    }

    #[test]
    fn page_cost_multiplies_and_saturates() {
        assert_eq!(page_cost(Some(10), None, 3), 31);
        assert_eq!(page_cost(None, Some(5), 2), 11);
        assert_eq!(page_cost(None, None, 1), DEFAULT_PAGE + 1);
        assert_eq!(page_cost(Some(-5), None, 100), 1);
        assert_eq!(
            page_cost(Some(i32::MAX), None, FIELD_COST_CAP),
            FIELD_COST_CAP
        );
    }
}
