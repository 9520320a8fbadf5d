//! The plain HTTP endpoints: health, readiness, GraphiQL.

use serde_json::Value;

use crate::both;
use crate::harness::Server;

both!(health_and_readiness, |backend| async move {
    let s = Server::start(backend).await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ready"], true, "{body}");
    // Unknown paths are not swallowed by a fallback.
    let r = s.http.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
});

both!(graphiql_page, |backend| async move {
    let s = Server::start(backend).await;
    let r = s
        .http
        .get(s.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().await.unwrap();
    assert!(html.to_lowercase().contains("graphiql"), "{html}");
    // The page and the same-origin scripts it loads configure the WebSocket endpoint for
    // subscriptions; every one of those scripts is served.
    let mut text = html.clone();
    for src in html.split("<script src=\"").skip(1) {
        let src = src.split('"').next().unwrap();
        if !src.starts_with('/') || src.starts_with("//") {
            continue;
        }
        let r = s.http.get(s.url(src)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{src}");
        text.push_str(&r.text().await.unwrap());
    }
    assert!(
        text.contains("/graphql/ws"),
        "no subscription endpoint in the page or its scripts: {html}"
    );
});
