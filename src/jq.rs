//! jq programs for subscription filters and destination transforms, run by the `jaq` crates.
//!
//! A program is compiled once (when it is saved, and again when the publisher or dispatcher
//! loads it) and then run many times. Every run is bounded: only the first output is taken,
//! a transform's output is at most [`MAX_OUTPUT_BYTES`], and the program text is at most
//! [`MAX_PROGRAM_BYTES`]. jaq cannot interrupt a run, so a program that computes forever
//! before its first output (`[range(1e12)]`) is not cut off by a clock; operators who let
//! untrusted users write filters should know this.

use std::fmt;
use std::sync::Arc;

use entity::event;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Native, Vars, data};
use jaq_json::Val;

use crate::dispatch::payload::{self, EventRef};

/// Longest program text accepted.
pub const MAX_PROGRAM_BYTES: usize = 4096;
/// Largest body a transform may produce (the size of a request body Hookline accepts).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

type D = data::JustLut<Val>;

/// A compiled jq program.
pub struct Program {
    filter: jaq_core::compile::Filter<Native<D>>,
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Program")
    }
}

/// Compiles `code`. The error names what is wrong and where (`line L, column C`), fit for a
/// `BAD_USER_INPUT` message.
pub fn compile(code: &str) -> Result<Program, String> {
    if code.len() > MAX_PROGRAM_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_PROGRAM_BYTES}",
            code.len()
        ));
    }
    if code.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let loader = Loader::new(defs);
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let Some((_, e)) = errs.into_iter().next() else {
                return "cannot be parsed".to_string();
            };
            // The lexer's and the parser's errors differ in type, not in what they say.
            let first = match e {
                jaq_core::load::Error::Io(_) => return "imports are not supported".to_string(),
                jaq_core::load::Error::Lex(es) => es.first().map(|(x, at)| (x.as_str(), *at)),
                jaq_core::load::Error::Parse(es) => es.first().map(|(x, at)| (x.as_str(), *at)),
            };
            match first {
                Some((expect, at)) => {
                    locate("syntax error", code, at, &format!("expected {expect}"))
                }
                None => "cannot be parsed".to_string(),
            }
        })?;
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let first = errs
                .into_iter()
                .next()
                .and_then(|(_, es)| es.into_iter().next());
            match first {
                Some((name, undefined)) => locate(
                    "error",
                    code,
                    name,
                    &format!("undefined {} {name:?}", undefined.as_str()),
                ),
                None => "cannot be compiled".to_string(),
            }
        })?;
    Ok(Program { filter })
}

/// A stored program, compiled: saved programs compiled when they were saved, so an error
/// here means the jq implementation changed under them; it is kept as the reason.
pub type Compiled = Result<Arc<Program>, String>;

pub fn compile_stored(code: &str) -> Compiled {
    compile(code)
        .map(Arc::new)
        .map_err(|e| format!("the stored program no longer compiles: {e}"))
}

/// `"<kind> at line L, column C (at …): what"`, locating `at` (a slice of `code`).
fn locate(kind: &str, code: &str, at: &str, what: &str) -> String {
    let offset = (at.as_ptr() as usize)
        .checked_sub(code.as_ptr() as usize)
        .filter(|o| *o <= code.len())
        .unwrap_or(code.len());
    let before = code.get(..offset).unwrap_or(code);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let found = if at.is_empty() {
        "end of input".to_string()
    } else {
        format!("{:?}", at.chars().take(20).collect::<String>())
    };
    format!("{kind} at line {line}, column {column} (at {found}): {what}")
}

/// The input programs see: `{id, type, level, createdAt, data}` with `data` the payload and
/// `createdAt` as the request bodies write it. The payload is stored, validated JSON;
/// anything unparsable becomes `data: null`.
pub fn event_input(ev: &EventRef) -> Val {
    let data = jaq_json::read::parse_single(ev.payload_json.as_bytes()).unwrap_or(Val::Null);
    let entries = [
        ("id", Val::from(ev.id.to_string())),
        ("type", Val::from(ev.event_type.to_string())),
        ("level", Val::from(ev.level.to_string())),
        ("createdAt", Val::from(payload::timestamp(ev.created_at))),
        ("data", data),
    ];
    Val::obj(
        entries
            .into_iter()
            .map(|(k, v)| (Val::from(k.to_string()), v))
            .collect(),
    )
}

/// [`event_input`] of a stored event.
pub fn event_of(ev: &event::Model) -> Val {
    let id = ev.id.to_string();
    event_input(&EventRef {
        id: &id,
        event_type: &ev.event_type,
        level: &ev.level,
        created_at: ev.created_at,
        payload_json: &ev.payload,
    })
}

impl Program {
    /// The first output, or the error that stopped the program before producing one.
    fn first(&self, input: Val) -> Result<Option<Val>, String> {
        let ctx = Ctx::<D>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(jaq_core::unwrap_valr);
        match out.next() {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    /// Filter semantics: delivered only when the first output is `true`. No output, any
    /// other value, and errors all mean "not matched".
    pub fn accepts(&self, input: Val) -> bool {
        matches!(self.first(input), Ok(Some(Val::Bool(true))))
    }

    /// Transform semantics: the first output, as JSON text, is the body. An error, no output,
    /// output that is not JSON, or output over [`MAX_OUTPUT_BYTES`] is a failure with its reason.
    pub fn transform(&self, input: Val) -> Result<Vec<u8>, String> {
        let Some(v) = self
            .first(input)
            .map_err(|e| format!("transform failed: {e}"))?
        else {
            return Err("transform failed: the program produced no output".to_string());
        };
        let text = v.to_string();
        if text.len() > MAX_OUTPUT_BYTES {
            return Err(format!(
                "transform failed: its output is {} bytes; the limit is {MAX_OUTPUT_BYTES}",
                text.len()
            ));
        }
        // Values jq has but JSON does not (NaN, byte strings) must not reach a receiver.
        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
            return Err("transform failed: its output is not valid JSON".to_string());
        }
        Ok(text.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(data: &str) -> Val {
        event_input(&EventRef {
            id: "e1",
            event_type: "order.paid",
            level: "INFO",
            created_at: chrono::DateTime::UNIX_EPOCH,
            payload_json: data,
        })
    }

    #[test]
    fn filters() {
        let p = compile(r#".data.amount >= 100 and .data.currency == "EUR""#).unwrap();
        assert!(p.accepts(input(r#"{"amount": 150, "currency": "EUR"}"#)));
        assert!(!p.accepts(input(r#"{"amount": 50, "currency": "EUR"}"#)));
        assert!(!p.accepts(input(r#"{"amount": 150, "currency": "USD"}"#)));
        // Not a boolean, no output, an error: not matched.
        assert!(!compile(".data").unwrap().accepts(input("1")));
        assert!(!compile("empty").unwrap().accepts(input("1")));
        assert!(!compile("error(\"x\")").unwrap().accepts(input("1")));
        assert!(
            compile(r#".type == "order.paid" and .level == "INFO" and .id == "e1""#)
                .unwrap()
                .accepts(input("null"))
        );
        assert!(
            compile(r#".createdAt == "1970-01-01T00:00:00.000Z""#)
                .unwrap()
                .accepts(input("null"))
        );
    }

    #[test]
    fn transforms() {
        let p = compile(r#"{text: "Paid: \(.data.amount)"}"#).unwrap();
        let body = p.transform(input(r#"{"amount": 7}"#)).unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), r#"{"text":"Paid: 7"}"#);
        let e = compile(".data.x.y")
            .unwrap()
            .transform(input("[1]"))
            .unwrap_err();
        assert!(e.starts_with("transform failed: "), "{e}");
        let e = compile("empty").unwrap().transform(input("1")).unwrap_err();
        assert!(e.contains("no output"), "{e}");
        let e = compile(r#"[range(200000) | "0123456789"] | join("")"#)
            .unwrap()
            .transform(input("1"))
            .unwrap_err();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_position() {
        let e = compile(".data.amount >=").unwrap_err();
        assert!(e.starts_with("syntax error at line 1, column 16"), "{e}");
        let e = compile(".a |\n  nosuchfn(1)").unwrap_err();
        assert!(e.contains("line 2, column 3"), "{e}");
        assert!(e.contains("nosuchfn"), "{e}");
        assert!(compile("  ").is_err());
        assert!(compile(&"a".repeat(MAX_PROGRAM_BYTES + 1)).is_err());
    }

    #[test]
    fn programs_are_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Program>();
    }
}
