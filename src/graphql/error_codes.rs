//! Every error leaves with an `extensions.code`. The resolvers' own errors carry theirs
//! ([`crate::error::AppError`]); async-graphql's (syntax, validation, coercion of arguments
//! and variables) carry none, so they get one here, by the stage that produced them:
//! `GRAPHQL_PARSE_FAILED` for syntax, `BAD_USER_INPUT` (with `extensions.field`) for a value
//! that does not fit its type, `GRAPHQL_VALIDATION_FAILED` for the rest of validation.

use async_graphql::ServerError;

pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
const INTERNAL: &str = "INTERNAL";

fn has_code(e: &ServerError) -> bool {
    e.extensions.as_ref().and_then(|x| x.get("code")).is_some()
}

fn set_code(e: &mut ServerError, code: &str) {
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

pub fn parse_failed(mut e: ServerError) -> ServerError {
    if !has_code(&e) {
        set_code(&mut e, PARSE_FAILED);
    }
    e
}

/// Errors of the validation stage.
pub fn validation_failed(errors: &mut [ServerError]) {
    for e in errors.iter_mut().filter(|e| !has_code(e)) {
        if !bad_input(e) {
            set_code(e, VALIDATION_FAILED);
        }
    }
}

/// Any error still without a code once the request is answered: a value refused while a
/// resolver read its arguments is bad input; one outside any field (an unknown operation
/// name) is the request's; anything else is the server's.
pub fn complete(errors: &mut [ServerError]) {
    for e in errors.iter_mut().filter(|e| !has_code(e)) {
        if bad_input(e) {
            continue;
        }
        let code = if e.path.is_empty() {
            VALIDATION_FAILED
        } else {
            tracing::error!(error = %e.message, path = ?e.path, "unclassified GraphQL error");
            INTERNAL
        };
        set_code(e, code);
    }
}

/// Marks `e` as BAD_USER_INPUT, naming the argument or input field, when it is about a value
/// that does not fit its type: async-graphql words those `Invalid value for argument "…"`
/// (validation) or `Failed to parse "<Type>": …` (execution).
fn bad_input(e: &mut ServerError) -> bool {
    let m = &e.message;
    let argument = m
        .strip_prefix("Invalid value for argument ")
        .and_then(|rest| rest.strip_prefix('"'))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string);
    let coercion = m.starts_with("Failed to parse ")
        || (m.starts_with("Variable \"") && m.contains("invalid value"));
    if argument.is_none() && !coercion {
        return false;
    }
    let ext = e.extensions.get_or_insert_with(Default::default);
    ext.set("code", BAD_USER_INPUT);
    if let Some(path) = argument {
        // An input field that does not exist is what is wrong, not the argument holding it.
        let unknown = m
            .split_once("unknown field \"")
            .and_then(|(_, rest)| rest.split('"').next())
            .map(str::to_string);
        ext.set("field", unknown.unwrap_or_else(|| field_of(&path)));
        ext.set("path", path);
    }
    true
}

/// The field a dotted argument path names: the input object's field for the `input`
/// argument every mutation takes (`input.timeoutMs` → `timeoutMs`), the argument otherwise.
fn field_of(path: &str) -> String {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or(path);
    match (first, parts.next()) {
        ("input", Some(next)) => next.to_string(),
        _ => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(message: &str) -> ServerError {
        let mut errors = vec![ServerError::new(message, None)];
        validation_failed(&mut errors);
        errors.remove(0)
    }

    fn ext(e: &ServerError, k: &str) -> String {
        e.extensions.as_ref().unwrap().get(k).unwrap().to_string()
    }

    #[test]
    fn values_are_bad_input_naming_the_field() {
        let e = classify(r#"Invalid value for argument "input.timeoutMs", expected type "Int""#);
        assert_eq!(ext(&e, "code"), "\"BAD_USER_INPUT\"");
        assert_eq!(ext(&e, "field"), "\"timeoutMs\"");
        let e = classify(r#"Invalid value for argument "first", expected type "Int""#);
        assert_eq!(ext(&e, "field"), "\"first\"");
        let e = classify(
            r#"Invalid value for argument "filter", unknown field "bogus" of type "DeliveryFilter""#,
        );
        assert_eq!(ext(&e, "field"), "\"bogus\"");
        let e = classify(r#"Unknown field "nope" on type "Query"."#);
        assert_eq!(ext(&e, "code"), "\"GRAPHQL_VALIDATION_FAILED\"");
    }
}
