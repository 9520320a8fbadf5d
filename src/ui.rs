//! The dashboard (`/`, `/ui/...`) and the offline GraphiQL page (`GET /graphql`): static files
//! from `ui/`, compiled into the binary so that the server needs no files beside it and no
//! internet access (no CDN). There is no front-end build step: `ui/` holds plain ES modules,
//! CSS and, under `ui/vendor/`, GraphiQL and React exactly as the npm registry publishes them.
//!
//! Responses carry an `ETag` (a hash of the bytes) and answer `If-None-Match` with 304. The
//! vendored files have their version in their path and are cached for a year; the dashboard's
//! own files are revalidated on every load (`no-cache`), so an upgrade is seen at once.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

struct Asset {
    /// Path under `ui/`, which is also its URL path under `/ui/`.
    path: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(Asset {
            path: $path,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $path)),
        }),*]
    };
}

/// Every file served. A test checks that this list and the `ui/` directory agree.
static ASSETS: &[Asset] = assets![
    "index.html",
    "graphiql.html",
    "graphiql.js",
    "graphiql.css",
    "style.css",
    "favicon.svg",
    "js/app.js",
    "js/api.js",
    "js/dom.js",
    "js/chart.js",
    "js/form.js",
    "js/pages/signin.js",
    "js/pages/destinations.js",
    "js/pages/destination.js",
    "js/pages/edit.js",
    "js/pages/live.js",
    "vendor/README.md",
    "vendor/graphiql-4.1.2/graphiql.min.js",
    "vendor/graphiql-4.1.2/graphiql.min.css",
    "vendor/graphiql-4.1.2/LICENSE",
    "vendor/react-18.3.1/react.production.min.js",
    "vendor/react-18.3.1/LICENSE",
    "vendor/react-dom-18.3.1/react-dom.production.min.js",
    "vendor/react-dom-18.3.1/LICENSE",
];

/// Files in `ui/` that are documentation for the repository, not for the browser.
#[cfg(test)]
const NOT_SERVED: &[&str] = &["README-section.md", "vendor/update.sh"];

/// The dashboard's own pages may run only their own scripts and talk only to this origin
/// (`'self'` covers the same-origin WebSocket).
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// GraphiQL's editor (CodeMirror) and its popovers set inline styles.
const GRAPHIQL_CSP: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

struct Prepared {
    body: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
    cache_control: &'static str,
}

static PREPARED: LazyLock<HashMap<&'static str, Prepared>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let etag = format!("\"{:016x}\"", fnv1a(a.body));
            let cache_control = if a.path.starts_with("vendor/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            (
                a.path,
                Prepared {
                    body: a.body,
                    content_type: content_type(a.path),
                    etag: HeaderValue::from_str(&etag).expect("hex etag"),
                    cache_control,
                },
            )
        })
        .collect()
});

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("md") => "text/markdown; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

/// `/` (the dashboard) and `/ui/{path}` (its assets). Merge into the server's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, Some(DASHBOARD_CSP))
}

/// `GET /graphql`: GraphiQL from the embedded bundle, configured for `/graphql` and
/// `/graphql/ws` and for the dashboard's token (see `ui/graphiql.js`).
pub async fn graphiql(headers: HeaderMap) -> Response {
    serve("graphiql.html", &headers, Some(GRAPHIQL_CSP))
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // The HTML pages have their own URLs; everything else under /ui/ is a plain file.
    if path.ends_with(".html") {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve(&path, &headers, None)
}

fn serve(path: &str, req: &HeaderMap, csp: Option<&'static str>) -> Response {
    let Some(a) = PREPARED.get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, a.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(a.cache_control),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(csp) = csp {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(csp),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path as FsPath, PathBuf};

    fn files_under(root: &FsPath, dir: &FsPath, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read ui dir") {
            let p: PathBuf = entry.expect("entry").path();
            if p.is_dir() {
                files_under(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_ui_file_is_embedded_and_nothing_else() {
        let root = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = vec![];
        files_under(&root, &root, &mut on_disk);
        on_disk.retain(|f| !NOT_SERVED.contains(&f.as_str()));
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "update ASSETS in src/ui.rs");
    }

    #[test]
    fn pages_reference_only_embedded_files() {
        for page in ["index.html", "graphiql.html"] {
            let text = std::str::from_utf8(PREPARED[page].body).unwrap();
            for part in text.split("/ui/").skip(1) {
                let path: String = part
                    .chars()
                    .take_while(|c| !matches!(c, '"' | '\'' | '`' | ')' | ' '))
                    .collect();
                assert!(
                    PREPARED.contains_key(path.as_str()),
                    "{page} links /ui/{path}"
                );
            }
        }
    }

    #[test]
    fn etag_answers_304() {
        let etag = PREPARED["style.css"].etag.clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("style.css", &h, None).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve("style.css", &HeaderMap::new(), None).status(),
            StatusCode::OK
        );
        assert_eq!(
            serve("nope.js", &HeaderMap::new(), None).status(),
            StatusCode::NOT_FOUND
        );
    }
}
